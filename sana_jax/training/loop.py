"""The training loop behind `python -m sana_jax.train`: data -> sharded step -> logs, samples, checkpoints.

  summary = train_and_evaluate(cfg, workdir)

What a run leaves in `workdir`: config.json, checkpoints/<step>/ (state, config, data position),
tensorboard/ (scalars: loss, learning_rate, grad_norm, step_time, images_per_sec,
tflops_per_device, mfu), metrics.jsonl (the same scalars, one JSON line per logged step),
samples/step_<N>.png (sample grids from fixed prompts) and, on the shapes data, eval.json (the
evaluator's score of samples drawn for held-out prompts). Running again with the same workdir
resumes from the newest readable checkpoint; SIGTERM (TPU preemption) saves one before exiting.
"""
import contextlib
import json
import math
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from etils import epath
from flax import nnx
from PIL import Image

from sana_jax.data import cache, pipeline, shapes, shapes_eval
from sana_jax.models.simple_codecs import SpaceToDepthAutoencoder, WordEmbeddingTextEncoder
from sana_jax.optim.registry import build_optimizer, make_schedule
from sana_jax.sampling.denoise import sample_loop
from sana_jax.sampling.schedulers import scheduler_config, scheduler_from_config
from sana_jax.training import checkpointing, metrics, sharding, step, train_state


class TrainingDiverged(RuntimeError):
  """The loss became NaN or Inf; the newest checkpoint on disk is the last good state."""


def build_codecs(cfg):
  """The autoencoder and text encoder named by cfg.codecs, checked against the model's channels."""
  c = cfg.codecs
  if c.autoencoder != "space_to_depth":
    raise ValueError(f"codecs.autoencoder {c.autoencoder!r} is not supported by the training loop; "
                     "built in: 'space_to_depth' (real DC-AE latents come from a preprocessed cache)")
  if c.text_encoder != "word_embedding":
    raise ValueError(f"codecs.text_encoder {c.text_encoder!r} is not supported by the training loop; "
                     "built in: 'word_embedding'")
  autoencoder = SpaceToDepthAutoencoder(c.autoencoder_factor)
  if autoencoder.latent_channels != cfg.model.in_channels:
    raise ValueError(f"the autoencoder makes {autoencoder.latent_channels} latent channels but "
                     f"model.in_channels is {cfg.model.in_channels}")
  text_encoder = WordEmbeddingTextEncoder(shapes.vocabulary(), cfg.model.caption_channels,
                                          c.max_text_length)
  return autoencoder, text_encoder


def encode_batch(host_batch, autoencoder, text_encoder) -> dict:
  """Pipeline batch (images in [-1, 1], captions) -> model inputs as numpy arrays.

  Batches from a preprocessed cache already hold latents and caption features: passed through.
  """
  if "latents" in host_batch:
    return {"latents": np.asarray(host_batch["latents"], np.float32),
            "text": np.asarray(host_batch["text"], np.float32),
            "text_mask": np.asarray(host_batch["text_mask"], np.int32)}
  latents = autoencoder.encode(host_batch["images"]) * autoencoder.scaling_factor
  text, mask = text_encoder.encode([str(c) for c in host_batch["captions"]])
  return {"latents": np.asarray(latents, np.float32), "text": np.asarray(text, np.float32),
          "text_mask": np.asarray(mask, np.int32)}


def make_scheduler(sampling_cfg):
  return scheduler_from_config(scheduler_config(sampling_cfg.sampler, sampling_cfg.flow_shift), sampling_cfg.num_steps)


def make_sampler(graphdef, autoencoder, text_encoder, sampling_cfg, mesh=None):
  """(params, prompts, seed, latent_shape) -> images float [B, H, W, 3] in [-1, 1], CFG with "".

  mesh: traced under it (`jax.set_mesh`), which a sequence-parallel model needs.
  """
  scheduler = make_scheduler(sampling_cfg)
  null_text, null_mask = text_encoder.null_embedding()

  @jax.jit
  def denoise(params, noise, text, mask):
    model = nnx.merge(graphdef, params)
    return sample_loop(model, noise, scheduler, sampling_cfg.guidance_scale, text, mask,
                       null_text, null_mask)

  def sample(params, prompts, seed, latent_shape):
    text, mask = text_encoder.encode(list(prompts))
    noise = jax.random.normal(jax.random.key(seed), (len(prompts),) + tuple(latent_shape), jnp.float32)
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
      latents = np.asarray(denoise(params, noise, text, mask))
    return np.clip(autoencoder.decode(latents / autoencoder.scaling_factor), -1.0, 1.0)

  return sample


def save_grid(images, path, columns: int = 4):
  """Tiles float images in [-1, 1] into one PNG."""
  images = np.stack([shapes_eval.to_uint8(image) for image in images])
  rows = math.ceil(len(images) / columns)
  h, w = images.shape[1:3]
  grid = np.full((rows * (h + 2), columns * (w + 2), 3), 255, np.uint8)
  for i, image in enumerate(images):
    r, c = divmod(i, columns)
    grid[r * (h + 2) + 1:r * (h + 2) + 1 + h, c * (w + 2) + 1:c * (w + 2) + 1 + w] = image
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST).save(path)


def heldout_shapes(cfg, count: int):
  """Prompts and specs the model was not trained on: the shapes generator with another seed."""
  source = shapes.ShapesSource(count, cfg.data.image_size, cfg.data.shapes_seed + 1,
                               tuple(cfg.data.shapes_tasks))
  specs = [source.spec(i) for i in range(count)]
  return [s.caption for s in specs], specs


class _Preemption:
  """Records SIGTERM so the loop can save a checkpoint and stop between two steps."""

  def __init__(self):
    self.requested = False

  def __enter__(self):
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    signal.signal(signal.SIGTERM, self._previous)


def train_and_evaluate(cfg, workdir) -> dict:
  """Trains `cfg` in `workdir` (resuming if it holds checkpoints); returns a summary dict."""
  sharding.maybe_initialize_distributed()
  workdir = epath.Path(workdir)
  is_main = jax.process_index() == 0
  if is_main:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(cfg.to_json(indent=2))

  mesh = sharding.create_mesh(cfg.mesh)
  rules = sharding.axis_rules(cfg.mesh)
  batch_shards = sharding.batch_shard_count(mesh, rules, cfg.model)
  if cfg.train.batch_size % (batch_shards * cfg.train.grad_accum_steps):
    raise ValueError(f"train.batch_size {cfg.train.batch_size} must be a multiple of the {batch_shards} "
                     f"batch shards (the mesh axes of the batch) x {cfg.train.grad_accum_steps} micro-batches")
  batch_sharding = sharding.batch_sharding(mesh, rules, cfg.model)
  # Each host reads the rows its devices hold (hosts that share rows read the same samples).
  host_shard, host_shards = sharding.process_batch_shard(batch_sharding, cfg.train.batch_size)
  tx = build_optimizer(cfg.optimizer)
  from_cache = cfg.data.name == "cache"
  if from_cache:  # the cache holds encoder outputs; codecs are only needed for sample grids
    cache_source = cache.CacheSource(cfg.data.path)
    cache_source.check_model(cfg.model)
    try:
      autoencoder, text_encoder = build_codecs(cfg)
    except ValueError as err:
      print(f"training from the cache without sample grids: {err}", flush=True)
      autoencoder = text_encoder = None
  else:
    autoencoder, text_encoder = build_codecs(cfg)
  graphdef = train_state.model_graphdef(cfg.model)
  abstract = train_state.abstract_train_state(cfg, tx)
  shardings = train_state.state_shardings(abstract, mesh, rules)
  ckpt = checkpointing.Checkpointer(workdir / "checkpoints", cfg.train.keep_checkpoints)
  data = pipeline.make_dataset(cfg.data, cfg.train.batch_size, cfg.seed, host_shard, host_shards)

  restored = ckpt.restore_latest(checkpointing.abstract_with_shardings(abstract, shardings))
  if restored is None:
    _, state, _ = train_state.create_train_state(cfg, tx, mesh)
  else:
    start, state, data_state = restored
    data.set_state(data_state)
    print(f"resumed from {ckpt.directory} at step {start}", flush=True)
  first_step = int(state.step)

  if from_cache:
    null_text = jnp.asarray(cache_source.null_embedding()[0][0])  # [L, C]
    first = cache_source[0]
    latent_hw, text_tokens = first["latents"].shape[0], first["text"].shape[0]
  else:
    null_text = jnp.asarray(text_encoder.null_embedding()[0][0])  # [L, C]
    latent_hw, text_tokens = cfg.data.image_size // autoencoder.spatial_compression, text_encoder.max_length
  update = step.jit_train_step(
      step.make_train_step(graphdef, tx, cfg.train, null_text=null_text, seed=cfg.seed,
                           learning_rate_fn=make_schedule(cfg.optimizer), param_shardings=shardings.params),
      mesh, shardings, batch_sharding, rules)
  sampler = None
  if autoencoder:
    sampler = make_sampler(graphdef, autoencoder, text_encoder, cfg.sampling,
                           mesh if cfg.model.get("seq_parallel_axis") else None)
  grid_prompts, _ = heldout_shapes(cfg, cfg.sampling.num_images)
  latent_shape = (latent_hw, latent_hw, cfg.model.in_channels)
  flops_per_image = metrics.train_flops_per_image(cfg.model, latent_hw, latent_hw, text_tokens)
  peak = metrics.peak_flops()

  writer = None
  if is_main:
    from tensorboardX import SummaryWriter
    writer = SummaryWriter(str(workdir / "tensorboard"))
  num_steps = cfg.train.num_steps
  last_saved = first_step if restored is not None else None

  def save(at_step):
    nonlocal last_saved
    if at_step != last_saved:
      ckpt.save(at_step, state, cfg, data.get_state())
      last_saved = at_step

  def draw_grid(at_step):
    if sampler is None:
      return
    params = state.ema_params if state.ema_params is not None else state.params
    images = sampler(params, grid_prompts, cfg.seed, latent_shape)
    if is_main:
      save_grid(images, workdir / "samples" / f"step_{at_step:07d}.png")

  window, window_start = [], time.perf_counter()
  bar = tqdm.tqdm(total=num_steps, initial=first_step, disable=not is_main, desc="train",
                  dynamic_ncols=True)
  with _Preemption() as preemption:
    for current in range(first_step, num_steps):
      if preemption.requested:
        save(current)
        ckpt.wait()
        print(f"SIGTERM: saved a checkpoint at step {current} in {ckpt.directory}; exiting.")
        return {"step": current, "preempted": True}
      batch = sharding.global_batch(encode_batch(next(data), autoencoder, text_encoder), batch_sharding,
                                    cfg.train.batch_size)
      state, step_metrics = update(state, batch)
      loss = float(step_metrics["loss"])
      if not math.isfinite(loss):
        ckpt.wait()
        kept = ckpt.latest_step()
        raise TrainingDiverged(
            f"loss is {loss} at step {current + 1}; stopping without saving. " +
            (f"The last good checkpoint is step {kept} in {ckpt.directory}." if kept is not None
             else "No checkpoint was written before it."))
      done = current + 1
      bar.update(1)
      bar.set_postfix(loss=f"{loss:.4f}")
      window.append({k: float(v) for k, v in step_metrics.items()})
      if done % cfg.train.log_every == 0 or done == num_steps:
        now = time.perf_counter()
        scalars = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
        # The first window of a run includes compilation: its step time is not representative.
        scalars["step_time"] = (now - window_start) / len(window)
        scalars.update(metrics.throughput(scalars["step_time"], cfg.train.batch_size,
                                          flops_per_image, jax.device_count(), peak))
        if is_main:
          for k, v in scalars.items():
            writer.add_scalar(k, v, done)
          with (workdir / "metrics.jsonl").open("a") as f:
            f.write(json.dumps({"step": done, **scalars}) + "\n")
        window, window_start = [], now
      if done % cfg.train.checkpoint_every == 0 or done == num_steps:
        save(done)
      if cfg.train.sample_every and done % cfg.train.sample_every == 0 and done != num_steps:
        draw_grid(done)
  bar.close()
  draw_grid(num_steps)
  summary = {"step": num_steps, "workdir": str(workdir)}
  if sampler is not None and cfg.data.name == "shapes" and cfg.sampling.num_eval_images:
    prompts, specs = heldout_shapes(cfg, cfg.sampling.num_eval_images)
    params = state.ema_params if state.ema_params is not None else state.params
    images = sampler(params, prompts, cfg.seed + 1, latent_shape)
    summary["shapes_score"] = shapes_eval.score(list(images), specs)
    if is_main:
      (workdir / "eval.json").write_text(json.dumps(summary["shapes_score"], indent=2))
      for k, v in summary["shapes_score"].items():
        writer.add_scalar(f"shapes_eval/{k}", v, num_steps)
  ckpt.wait()
  ckpt.close()
  if writer is not None:
    writer.close()
  return summary

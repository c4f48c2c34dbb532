"""The training loop behind `python -m sana_jax.train`: data -> sharded step -> logs, samples, checkpoints.

  summary = train_and_evaluate(cfg, workdir)

What a run leaves in `workdir`: config.json, checkpoints/<step>/ (state, config, data position),
tensorboard/ (scalars: loss, learning_rate, grad_norm, step_time, images_per_sec,
tflops_per_device, mfu), metrics.jsonl (the same scalars, one JSON line per logged step),
samples/step_<N>.png (sample grids from fixed prompts, each image with its prompt) and, on the
shapes data, eval.json and samples/eval_step_<N>.png (the evaluator's score of samples drawn for
held-out prompts, and each image with its prompt and verdict). train.lock holds the run's host and
pid while it runs: one run per workdir. With codecs.autoencoder = "conv_fit" (the default job) the
run first fits its autoencoder and keeps it in autoencoder/ (training/autoencoder_fit.py).

Running again with the same workdir resumes from the newest readable checkpoint, after checking
that the stored config allows it (training/resume.py, docs/training.md). SIGTERM (TPU preemption)
or Ctrl-C save a checkpoint between two steps and return {"stopped": signal, "saved": step}.

The loop never waits on the device per step: the next batch is read, its captions encoded and
the batch sharded on a background thread (host.Prefetcher); its images are encoded by the
autoencoder inside the compiled train step (so the encoder does not compete with the step for the
host's cores); metrics are read back at log and checkpoint steps only, where a NaN / Inf loss or
gradient norm stops the run naming its step. Checkpoints are written
only from finite parameters.

A config with a `lora` section trains only an adapter on the frozen base `train.init_from`
(training/adapter.py); its checkpoints hold the adapter and a pointer to the base. DreamBooth
options (an instance prompt, prior preservation with class images our sampler draws from the base)
are described in training/dreambooth.py.
"""
import contextlib
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from etils import epath
from flax import nnx

from sana_jax.data import cache, pipeline, shapes, shapes_eval
from sana_jax.models.simple_codecs import SpaceToDepthAutoencoder, WordEmbeddingTextEncoder
from sana_jax.optim.registry import build_optimizer, make_schedule
from sana_jax.sampling.denoise import sample_loop
from sana_jax.sampling import grid
from sana_jax.sampling.schedulers import scheduler_config, scheduler_from_config
from sana_jax.training import (adapter, autoencoder_fit, checkpointing, distributed, dreambooth, host,
                               metrics, resume, sharding, step, train_state)


class TrainingDiverged(RuntimeError):
  """The loss, a gradient or the parameters became NaN or Inf; names the last good checkpoint."""


class Interrupted(RuntimeError):
  """A second Ctrl-C stopped the run mid-step; names the newest checkpoint on disk."""


def build_codecs(cfg, workdir=None, progress: bool = True, allow_fit: bool = True):
  """The autoencoder and text encoder named by cfg.codecs, checked against the model's channels.

  codecs.autoencoder "conv_fit": the run's fitted autoencoder, read from <workdir>/autoencoder, or
  fitted now when that folder is absent (and saved there; without a workdir it stays in memory;
  allow_fit=False: a missing folder raises instead, for reading a finished run).
  """
  c = cfg.codecs
  if c.autoencoder == autoencoder_fit.KIND:
    latent_channels = autoencoder_fit.autoencoder_config(c).latent_channels
  elif c.autoencoder == "space_to_depth":
    autoencoder = SpaceToDepthAutoencoder(c.autoencoder_factor, scaling_factor=c.scaling_factor)
    latent_channels = autoencoder.latent_channels
  else:
    raise ValueError(f"codecs.autoencoder {c.autoencoder!r} is not supported by the training loop; "
                     f"built in: 'space_to_depth', {autoencoder_fit.KIND!r} (real DC-AE latents come from a "
                     "preprocessed cache)")
  if c.text_encoder != "word_embedding":
    raise ValueError(f"codecs.text_encoder {c.text_encoder!r} is not supported by the training loop; "
                     "built in: 'word_embedding'")
  if latent_channels != cfg.model.in_channels:
    raise ValueError(f"the autoencoder makes {latent_channels} latent channels but "
                     f"model.in_channels is {cfg.model.in_channels}")
  if c.autoencoder == autoencoder_fit.KIND:  # checked first: a fit takes a minute
    autoencoder = autoencoder_fit.load_or_fit(cfg, workdir, progress=progress, allow_fit=allow_fit)
  text_encoder = WordEmbeddingTextEncoder(shapes.vocabulary(), cfg.model.caption_channels,
                                          c.max_text_length, context=c.text_context)
  return autoencoder, text_encoder


def single_device_training(cfg, codecs=None):
  """The default job's codecs, fresh train state and jitted step on one device, unsharded (for
  benchmarks and tests that drive the step themselves; `train_and_evaluate` shards its own).

  -> (autoencoder, text_encoder, graphdef, state, update, null_text [L, C]); update(state, batch)
  takes batches of `encode_batch` with or without `in_step` (images encoded in the step or before).
  codecs: (autoencoder, text_encoder) to use instead of building them (a fitted one is fitted anew).
  With cfg.lora, `state` is the adapter's and `update` passes the frozen base (train.init_from).
  """
  tx = build_optimizer(cfg.optimizer)
  autoencoder, text_encoder = codecs or build_codecs(cfg)
  graphdef, state, _ = train_state.create_train_state(cfg, tx)
  null_text, null_mask = (jnp.asarray(a[0]) for a in text_encoder.null_embedding())  # [L, C], [L]
  jitted = step.jit_train_step(step.make_train_step(
      graphdef, tx, cfg.train, null_text=null_text, null_mask=null_mask, seed=cfg.seed,
      learning_rate_fn=make_schedule(cfg.optimizer), adapter_dropout=adapter.has_dropout(cfg),
      encode_images=image_encoder(autoencoder)))
  update = adapter.with_base(jitted, adapter.load_base(cfg).params if adapter.enabled(cfg) else None)
  return autoencoder, text_encoder, graphdef, state, update, null_text


def image_encoder(autoencoder):
  """images [B, H, W, 3] in [-1, 1] -> model latents (encoded and scaled), a function the train
  step traces (`step.make_train_step(encode_images=...)`); the autoencoder's weights are constants."""
  return lambda images: autoencoder.encode(images) * autoencoder.scaling_factor


def encode_batch(host_batch, autoencoder, text_encoder, in_step: bool = False) -> dict:
  """Pipeline batch (images in [-1, 1], captions) -> model inputs as numpy arrays.

  in_step: keep the images (float32 "images" instead of "latents") for the train step to encode
  with `image_encoder(autoencoder)`; the training loop does this, so the host only renders images
  and looks up caption vectors.
  Batches from a preprocessed cache already hold latents and caption features: passed through.
  Prior preservation batches (training/dreambooth.py) keep their "prior" row marks [B].
  """
  extra = {"prior": np.asarray(host_batch["prior"], np.int32)} if "prior" in host_batch else {}
  if "latents" in host_batch:
    return {"latents": np.asarray(host_batch["latents"], np.float32),
            "text": np.asarray(host_batch["text"], np.float32),
            "text_mask": np.asarray(host_batch["text_mask"], np.int32), **extra}
  if in_step:
    pixels = {"images": np.asarray(host_batch["images"], np.float32)}
  else:
    pixels = {"latents": np.asarray(image_encoder(autoencoder)(host_batch["images"]), np.float32)}
  text, mask = text_encoder.encode([str(c) for c in host_batch["captions"]])
  return {**pixels, "text": np.asarray(text, np.float32), "text_mask": np.asarray(mask, np.int32), **extra}


def make_scheduler(sampling_cfg):
  return scheduler_from_config(scheduler_config(sampling_cfg.sampler, sampling_cfg.flow_shift), sampling_cfg.num_steps)


def make_sampler(graphdef, autoencoder, text_encoder, sampling_cfg, mesh=None):
  """(params, prompts, seed, latent_shape) -> images float [B, H, W, 3] in [-1, 1], CFG with "".

  params: the model's state, or a tuple of states to merge (LoRA: (adapter, base)).
  mesh: traced under it (`jax.set_mesh`), which a sequence-parallel model needs.
  """
  scheduler = make_scheduler(sampling_cfg)
  null_text, null_mask = text_encoder.null_embedding()

  @jax.jit
  def denoise(params, noise, text, mask):
    model = nnx.merge(graphdef, *params) if isinstance(params, tuple) else nnx.merge(graphdef, params)
    return sample_loop(model, noise, scheduler, sampling_cfg.guidance_scale, text, mask,
                       null_text, null_mask, guidance_interval=tuple(sampling_cfg.guidance_interval))

  def sample(params, prompts, seed, latent_shape):
    text, mask = text_encoder.encode(list(prompts))
    noise = jax.random.normal(jax.random.key(seed), (len(prompts),) + tuple(latent_shape), jnp.float32)
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
      latents = distributed.to_host(denoise(params, noise, text, mask))  # tokens may span hosts
    return np.clip(autoencoder.decode(latents / autoencoder.scaling_factor), -1.0, 1.0)

  return sample


def heldout_shapes(cfg, count: int):
  """Prompts and specs the model was not trained on: `shapes.heldout_source` of the run's data
  (another seed; each task of data.shapes_tasks once, however often training draws it)."""
  source = shapes.heldout_source(count, cfg.data.image_size, cfg.data.shapes_seed, cfg.data.shapes_tasks)
  specs = [source.spec(i) for i in range(count)]
  return [s.caption for s in specs], specs




def _restore_or_init(cfg, tx, ckpt, abstract, shardings, mesh, workdir, base):
  """-> (state, data_state or None, notices). Compares the stored config first (ResumeError),
  and for a LoRA run (base: FrozenBase) the base the adapter was trained on."""
  stored = ckpt.stored_config()
  if stored is None and ckpt.steps() and (workdir / "config.json").exists():
    stored = ckpt.steps()[-1], json.loads((workdir / "config.json").read_text())
  if stored is None:
    _, state, _ = train_state.create_train_state(cfg, tx, mesh)
    return state, None, []
  step_of_config, stored_cfg = stored
  try:
    saved_cfg = ml_collections.ConfigDict(stored_cfg)
    saved_abstract = train_state.abstract_train_state(saved_cfg, build_optimizer(saved_cfg.optimizer))
    layout = resume.describe_layout_difference(saved_abstract, abstract)
  except Exception:  # noqa: BLE001 - a config from another version: the field rules still apply
    layout = ""
  notices = resume.check_resume(stored_cfg, json.loads(cfg.to_json()), workdir, step_of_config, layout)
  if base is not None:
    resume.check_base(ckpt.stored_base(step_of_config), base.info, workdir, step_of_config)
  restored = ckpt.restore_latest(checkpointing.abstract_with_shardings(abstract, shardings))
  if restored is None:
    _, state, _ = train_state.create_train_state(cfg, tx, mesh)
    return state, None, notices
  _, state, data_state = restored
  return state, data_state, notices


class _Run:
  """The mutable state of one training run between steps: what was saved, what is pending."""

  def __init__(self, cfg, ckpt, state, saved_step, base=None):
    self.cfg, self.ckpt, self.state, self.base = cfg, ckpt, state, base
    self.saved_step = saved_step      # newest step this run restored or wrote (None: none)
    self.pending = []                 # (step, device metrics) not yet read back
    self.window = []                  # metrics read back since the last log step
    self.data_state = None            # iterator position after the last consumed batch

  def take_window(self) -> list[dict]:
    """All metrics since the last call (reading back what is pending)."""
    self.drain()
    window, self.window = self.window, []
    return window

  def drain(self):
    """Reads back the pending metrics (one transfer) into the window; raises TrainingDiverged at
    the first non-finite loss or gradient norm."""
    steps = [s for s, _ in self.pending]
    fetched = jax.device_get([m for _, m in self.pending])
    self.pending = []
    for at, record in zip(steps, fetched):
      for key in ("loss", "grad_norm"):
        if key in record and not math.isfinite(float(record[key])):
          self.diverged(f"{key} is {float(record[key])} at step {at}", at)
    self.window += [dict(step=at, **{k: float(v) for k, v in r.items()}) for at, r in zip(steps, fetched)]

  def diverged(self, what: str, at: int):
    """Stops the run: moves a checkpoint whose weights produced the bad step aside and names the
    last checkpoint that is finite and gave a finite loss."""
    self.ckpt.wait()
    moved = ""
    if at - 1 in self.ckpt.steps():
      where = self.ckpt.move_aside(at - 1, checkpointing.NONFINITE)
      moved = f"The weights saved at step {at - 1} produced it; they were moved to {where}. "
    steps = self.ckpt.steps()
    kept = (f"The last good checkpoint is step {steps[-1]} in {self.ckpt.directory}: a rerun resumes "
            f"there; lower --config.optimizer.learning_rate (or clip harder) to get past step {at}."
            if steps else "No good checkpoint was written before it.")
    raise TrainingDiverged(f"{what}; stopping. {moved}{kept}")

  def save(self, at: int):
    """Writes step `at` unless it is on disk: only from finite losses and parameters."""
    if at == self.saved_step:
      return
    self.drain()
    if not checkpointing.all_finite((self.state.params, self.state.ema_params)):
      self.diverged(f"the parameters are not finite after step {at}", at + 1)
    self.ckpt.save(at, self.state, self.cfg, distributed.gather_host_states(self.data_state),
                   None if self.base is None else self.base.info)
    self.saved_step = at


def train_and_evaluate(cfg, workdir) -> dict:
  """Trains `cfg` in `workdir` (resuming if it holds checkpoints); returns a summary dict.

  Raises resume.ResumeError (the workdir is in use, or its run cannot take this config),
  checkpointing.CheckpointError (a save failed, or no checkpoint reads) or TrainingDiverged.
  """
  sharding.maybe_initialize_distributed()
  workdir = epath.Path(workdir)
  is_main = jax.process_index() == 0

  def lock():
    workdir.mkdir(parents=True, exist_ok=True)
    held = resume.WorkdirLock(workdir).acquire()
    if held.notice:
      print(held.notice, flush=True)
    return held

  held = host.on_main(lock, resume.ResumeError)
  try:
    return _train(cfg, workdir, is_main)
  finally:
    if held is not None:
      held.release()


def _train(cfg, workdir, is_main) -> dict:
  mesh = sharding.create_mesh(cfg.mesh)
  rules = sharding.axis_rules(cfg.mesh)
  batch_shards = sharding.batch_shard_count(mesh, rules, cfg.model)
  if cfg.train.batch_size % (batch_shards * cfg.train.grad_accum_steps):
    raise ValueError(f"train.batch_size {cfg.train.batch_size} must be a multiple of the {batch_shards} "
                     f"batch shards (the mesh axes of the batch) x {cfg.train.grad_accum_steps} micro-batches")
  batch_sharding = sharding.batch_sharding(mesh, rules, cfg.model)
  # Each host reads the rows its devices hold (hosts that share rows read the same samples).
  host_shard, host_shards = sharding.process_batch_shard(batch_sharding, cfg.train.batch_size)
  if dreambooth.prior_preservation(cfg) and cfg.train.batch_size % (2 * host_shards):
    raise ValueError(f"with prior preservation train.batch_size {cfg.train.batch_size} is half instance, half "
                     f"class images: it must be a multiple of 2 x {host_shards} hosts reading the data")
  tx = build_optimizer(cfg.optimizer)
  from_cache = cfg.data.name == "cache"
  if from_cache:  # the cache holds encoder outputs; codecs are only needed for sample grids
    cache_source = cache.CacheSource(cfg.data.path)
    cache_source.check_model(cfg.model)
    try:
      autoencoder, text_encoder = build_codecs(cfg, workdir)
    except ValueError as err:
      print(f"training from the cache without sample grids: {err}", flush=True)
      autoencoder = text_encoder = None
    if autoencoder is not None:  # its grids, and samples of this run later, decode with its scale
      cache_source.check_autoencoder(autoencoder)
  else:
    # A fitted autoencoder is fitted and saved once, by process 0, before any process reads it.
    fitted = host.on_main(lambda: build_codecs(cfg, workdir)) if cfg.codecs.autoencoder == autoencoder_fit.KIND else None
    autoencoder, text_encoder = fitted or build_codecs(cfg, workdir)
  graphdef = train_state.train_graphdef(cfg)
  abstract = train_state.abstract_train_state(cfg, tx)
  shardings = train_state.state_shardings(abstract, mesh, rules)
  base = adapter.load_base(cfg, mesh) if adapter.enabled(cfg) else None
  if base is not None:
    print(f"LoRA: training the adapter only ({_size(abstract.params)}) on the frozen base "
          f"{base.info['path']} ({_size(base.params)}, fingerprint {base.info['fingerprint']})", flush=True)
  ckpt = checkpointing.Checkpointer(workdir / "checkpoints", cfg.train.keep_checkpoints, owner=True)
  try:
    return _run_steps(cfg, workdir, is_main, ckpt, tx, abstract, shardings, mesh, rules, graphdef,
                      batch_sharding, host_shard, host_shards, autoencoder, text_encoder,
                      cache_source if from_cache else None, base)
  finally:
    ckpt.close()


def _size(params) -> str:
  leaves = jax.tree.leaves(params)
  count = sum(int(np.prod(x.shape)) for x in leaves)
  return f"{count:,} parameters, {sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in leaves) / 2**20:.1f} MiB"


def _run_steps(cfg, workdir, is_main, ckpt, tx, abstract, shardings, mesh, rules, graphdef,
               batch_sharding, host_shard, host_shards, autoencoder, text_encoder, cache_source, base):
  if ckpt.removed_partial:
    print(f"removed partial checkpoint folders of an interrupted save: {ckpt.removed_partial}", flush=True)
  state, data_state, notices = _restore_or_init(cfg, tx, ckpt, abstract, shardings, mesh, workdir, base)
  for line in notices:
    print(line, flush=True)
  first_step = int(state.step)
  weights = (lambda s: s) if base is None else (lambda s: (s, base.params))  # what the sampler merges
  prior = dreambooth.prior_preservation(cfg)
  data = pipeline.make_dataset(cfg.data, cfg.train.batch_size // (2 if prior else 1), cfg.seed, host_shard,
                               host_shards)
  if data_state is not None:
    data_state = distributed.own_host_state(data_state)  # this host's iterator
    if not prior:  # prior preservation: set on the joined data below
      data.set_state(data_state)
    print(f"resumed from {ckpt.directory} at step {first_step}", flush=True)

  def write_start():
    dropped = resume.cut_metrics(os.fspath(workdir / "metrics.jsonl"), first_step)
    if dropped:
      print(f"metrics.jsonl: dropped {dropped} lines after step {first_step}", flush=True)
    (workdir / "config.json").write_text(cfg.to_json(indent=2))
  host.on_main(write_start)

  null_source = cache_source if cache_source is not None else text_encoder
  null_text, null_mask = (jnp.asarray(a[0]) for a in null_source.null_embedding())  # [L, C], [L]
  if cache_source is not None:
    first = cache_source[0]
    latent_hw, text_tokens = first["latents"].shape[0], first["text"].shape[0]
  else:
    latent_hw, text_tokens = cfg.data.image_size // autoencoder.spatial_compression_ratio, text_encoder.max_length
  jitted = step.jit_train_step(
      step.make_train_step(graphdef, tx, cfg.train, null_text=null_text, null_mask=null_mask,
                           seed=cfg.seed,
                           learning_rate_fn=make_schedule(cfg.optimizer), param_shardings=shardings.params,
                           prior_loss_weight=cfg.dreambooth.prior_loss_weight if prior else 1.0,
                           adapter_dropout=adapter.has_dropout(cfg),
                           encode_images=image_encoder(autoencoder) if cache_source is None else None),
      mesh, shardings, batch_sharding, rules, None if base is None else base.shardings)
  update = adapter.with_base(jitted, None if base is None else base.params)
  sampler = None
  if autoencoder:
    sampler = make_sampler(graphdef, autoencoder, text_encoder, cfg.sampling,
                           mesh if cfg.model.get("seq_parallel_axis") else None)
  grid_prompts = _grid_prompts(cfg)
  latent_shape = (latent_hw, latent_hw, cfg.model.in_channels)
  if prior:
    base_only = weights(jax.tree.map(jnp.zeros_like, state.params)) if base is not None else state.params
    data = _with_class_images(cfg, workdir, data, data_state, sampler, base_only, latent_shape,
                              host_shard, host_shards, is_main)
  flops_per_image = metrics.train_flops_per_image(cfg.model, latent_hw, latent_hw, text_tokens)
  peak = metrics.peak_flops()

  writer = None
  if is_main:
    from tensorboardX import SummaryWriter
    writer = SummaryWriter(str(workdir / "tensorboard"))
  num_steps = cfg.train.num_steps
  run = _Run(cfg, ckpt, state, first_step if data_state is not None else None, base)
  run.data_state = data_state if data_state is not None else data.get_state()

  def draw_grid(at_step):
    if sampler is None or not grid_prompts:
      return
    params = run.state.ema_params if run.state.ema_params is not None else run.state.params
    images = sampler(weights(params), grid_prompts, cfg.seed, latent_shape)
    if is_main:
      grid.save_grid(images, grid_prompts, workdir / "samples" / f"step_{at_step:07d}.png")

  def prepare(host_batch):  # -> (global batch, the example indices this host read or None)
    return (sharding.global_batch(encode_batch(host_batch, autoencoder, text_encoder, in_step=True),
                                  batch_sharding, cfg.train.batch_size), host_batch.get("indices"))

  window_start = time.perf_counter()
  window_steps = 0
  log_every, single_process = cfg.train.log_every, jax.process_count() == 1
  bar = tqdm.tqdm(total=num_steps, initial=first_step, disable=not is_main, desc="train",
                  dynamic_ncols=True)
  current = first_step
  try:
    prefetcher = host.Prefetcher(data, prepare, depth=2, thread_priority=cfg.data.thread_priority)
    with host.StopSignals() as stop, prefetcher as batches:
      for current in range(first_step, num_steps):
        at_log = current % log_every == 0
        if (single_process or at_log) and distributed.any_process(stop.requested):
          run.save(current)
          ckpt.wait()
          bar.close()
          return {"step": current, "stopped": stop.requested or "another process", "saved": run.saved_step,
                  "workdir": str(workdir)}
        try:
          (batch, indices), batch_data_state = next(batches)
        except StopIteration:
          raise ValueError(f"the data ran out after step {current} (data.num_epochs="
                           f"{cfg.data.num_epochs}); raise it, or lower train.num_steps") from None
        run.state, step_metrics = update(run.state, batch)
        run.data_state = batch_data_state
        distributed.log_example_indices(current, indices)
        done = current + 1
        run.pending.append((done, step_metrics))
        window_steps += 1
        bar.update(1)
        if done % log_every == 0 or done == num_steps:
          records = run.take_window()
          ckpt.check()
          now = time.perf_counter()
          scalars = {k: float(np.mean([r[k] for r in records])) for k in records[0] if k != "step"}
          # The first window of a run includes compilation: its step time is not representative.
          scalars["step_time"] = (now - window_start) / window_steps
          scalars.update(metrics.throughput(scalars["step_time"], cfg.train.batch_size,
                                            flops_per_image, jax.device_count(), peak))
          bar.set_postfix(loss=f"{scalars['loss']:.4f}")
          if is_main:
            for k, v in scalars.items():
              writer.add_scalar(k, v, done)
            with (workdir / "metrics.jsonl").open("a") as f:
              f.write(json.dumps({"step": done, **scalars}) + "\n")
          window_start, window_steps = now, 0
        if done % cfg.train.checkpoint_every == 0 or done == num_steps:
          run.save(done)
        if cfg.train.sample_every and done % cfg.train.sample_every == 0 and done != num_steps:
          draw_grid(done)
      current = num_steps
  except KeyboardInterrupt:
    bar.close()
    _wait_quietly(ckpt)
    steps = ckpt.steps()
    raise Interrupted(f"interrupted during step {current + 1}; the newest checkpoint is step "
                      f"{steps[-1]} in {ckpt.directory}" if steps else
                      f"interrupted during step {current + 1}; no checkpoint was written") from None
  finally:
    if writer is not None:
      writer.flush()
  bar.close()
  final = max(num_steps, first_step)  # a run resumed past train.num_steps trains no further
  if first_step > num_steps:
    print(f"the run is at step {first_step}, past train.num_steps={num_steps}: nothing to train", flush=True)
  run.save(final)
  draw_grid(final)
  summary = {"step": final, "workdir": str(workdir), "saved": final}
  if sampler is not None and cfg.data.name == "shapes" and cfg.sampling.num_eval_images:
    summary.update(_final_evaluation(cfg, run.state, sampler, latent_shape, workdir, is_main, writer, final,
                                     weights))
  ckpt.wait()
  if writer is not None:
    writer.close()
  return summary


def _final_evaluation(cfg, state, sampler, latent_shape, workdir, is_main, writer, at, weights) -> dict:
  """Scores samples for held-out prompts; writes eval.json and samples/eval_step_N.png (each
  image with its prompt and the evaluator's verdict). With sampling.eval_best_of = N > 1, also
  best-of-N as SANA 1.5 scales inference (N candidates per prompt, the run's contrastive judge
  keeps one): eval_best_of.json and samples/eval_best_of_N_step_M.png, under "best_of"."""
  prompts, specs = heldout_shapes(cfg, cfg.sampling.num_eval_images)
  params = state.ema_params if state.ema_params is not None else state.params
  images = sampler(weights(params), prompts, cfg.seed + 1, latent_shape)
  out = _score_held_out(images, prompts, specs, workdir / "eval.json",
                        workdir / "samples" / f"eval_step_{at:07d}.png", is_main, writer, "shapes_eval", at)
  n = int(cfg.sampling.eval_best_of)
  if n > 1:  # every process draws (the sampler is one program over all devices); process 0 judges
    candidates = [images] + [sampler(weights(params), prompts, cfg.seed + 1 + j, latent_shape) for j in range(1, n)]
    if is_main:
      judge = load_or_fit_judge(cfg, workdir)
      picks = np.stack([group[judge.select(group, prompt).winners[0]]
                        for group, prompt in zip(np.stack(candidates, 1), prompts)])
      best = _score_held_out(picks, prompts, specs, workdir / "eval_best_of.json",
                             workdir / "samples" / f"eval_best_of_{n}_step_{at:07d}.png", is_main, writer,
                             f"shapes_eval_best_of_{n}", at)
      out["best_of"] = {"n": n, **best}
  return out


def load_or_fit_judge(cfg, workdir):
  """The run's contrastive best-of-N judge (sana_jax.scaling.contrastive: a CLIP-style scorer fitted
  on shapes renders of the run's image size, never on the evaluator): read from <workdir>/judge, or
  fitted now (cfg.sampling.eval_judge_steps) and saved there."""
  from sana_jax.scaling import contrastive  # training -> scaling, only here: the judge is optional
  folder = workdir / "judge"
  if folder.exists():
    judge = contrastive.load(folder)
    if judge.scorer.config.image_size != cfg.data.image_size:
      raise ValueError(f"{folder} judges {judge.scorer.config.image_size}px images but the run draws "
                       f"{cfg.data.image_size}px ones; move that folder away to fit a new judge")
    return judge
  judge = contrastive.fit(steps=int(cfg.sampling.eval_judge_steps),
                          config=contrastive.ContrastiveConfig(image_size=cfg.data.image_size))
  print(f"best-of-N judge fitted: {judge.report} -> {judge.save(folder)}", flush=True)
  return judge


def _score_held_out(images, prompts, specs, json_path, grid_path, is_main, writer, tag, at) -> dict:
  """The evaluator's scores of one image per held-out prompt; on process 0 also the JSON, the grid
  (each image with its prompt and verdict) and the TensorBoard scalars under `tag`."""
  per_image = shapes_eval.verdicts(list(images), specs)
  scores = shapes_eval.score_verdicts(per_image)
  counts = {}
  for task, _ in per_image:
    counts[task] = counts.get(task, 0) + 1
  out = {"shapes_score": scores, "shapes_counts": counts}
  if is_main:
    json_path.write_text(json.dumps(scores, indent=2))
    notes = [f"{'✓' if ok else '✗'} {task}" for task, ok in per_image]
    out["eval_grid"] = grid.save_grid(images, prompts, grid_path, notes, columns=8)
    for k, v in scores.items():
      writer.add_scalar(f"{tag}/{k}", v, at)
  return out


def _grid_prompts(cfg) -> list[str]:
  """The sample grid's prompts: held-out shapes captions, or a DreamBooth run's instance prompt
  (half the grid) and class prompt."""
  count = cfg.sampling.num_images
  instance = cfg.data.get("instance_prompt", "")
  if instance and count:
    classes = cfg.dreambooth.class_prompt if cfg.get("dreambooth") else ""
    return [instance] * (count - count // 2) + [classes or instance] * (count // 2)
  return heldout_shapes(cfg, count)[0] if count else []


def _with_class_images(cfg, workdir, data, data_state, sampler, weights, latent_shape, host_shard,
                       host_shards, is_main):
  """The instance data joined with the class images (drawn first where missing): a
  dreambooth.PriorPreservationData, positioned at data_state when resuming."""
  directory = dreambooth.class_directory(cfg, workdir)
  sample = None if sampler is None else (lambda prompts, seed, shape: sampler(weights, prompts, seed, shape))
  drawn = dreambooth.top_up_class_images(cfg, directory, sample, latent_shape,
                                         max(cfg.sampling.num_images, 8), is_main)
  if drawn:
    print(f"prior preservation: drew {drawn} class images for {cfg.dreambooth.class_prompt!r} into {directory}",
          flush=True)
  distributed.any_process(False)  # every process waits for the images process 0 wrote
  joined = dreambooth.PriorPreservationData(
      data, dreambooth.class_dataset(cfg, directory, cfg.seed, host_shard, host_shards))
  if data_state is not None:
    joined.set_state(data_state)
  return joined


def _wait_quietly(ckpt):
  try:
    ckpt.wait()
  except checkpointing.CheckpointError as e:
    print(f"error: {e}", flush=True)

"""Short training ablations of the default job: train a preset (configs/tiny.py unless --config) with overrides, then score.

  python bench/train_ablation.py --steps=1500 model.hidden_size=128 train.flow_shift=1.0
  python bench/train_ablation.py --config tiny24 --steps 6000 train.flow_shift=3.0 sampling.flow_shift=3.0

Trains in-process with the same pieces as `python -m sana_jax.train` (codecs, data pipeline,
train step, sampler) but without checkpoints or logs, the next batch read on the loop's
prefetch thread while the step runs (its images encoded inside the step, as the loop does) and
the loss read back only every 100 steps. Then samples
`sampling.num_eval_images` held-out prompts and scores them with the shapes evaluator. Prints one
JSON line: overrides, steps, steps/s, final loss (mean of the last 100 steps), train and eval wall
seconds, compile seconds, the per-task scores, where each task's images fail
(`shapes_eval.failure_breakdown`: too few / too many objects, right shapes and colours when the
count is right) and the conditioning check: the velocity loss on one
held-out batch at fixed noise levels with the right captions, the captions shifted by one example
(shuffled) and the null prompt. A model that draws what it is told has right < shuffled; equal
losses mean it ignores the caption's words. And the binding check (`binding_check`): the same on
colour attribution and position renders with the caption's binding swapped (same words). The
figures in docs/training.md's ablation table come from this script.
"""
import argparse
import ast
import dataclasses
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sana_jax import configs
from sana_jax.data import pipeline, shapes, shapes_eval
from sana_jax.sampling import grid
from sana_jax.training import host, loop, objective, train_state


def apply_overrides(cfg, overrides):
  """'a.b=value' strings (value a Python literal, else a string) -> set on cfg."""
  for item in overrides:
    key, _, text = item.partition("=")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    node = cfg
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return cfg


def run(cfg, num_steps, seconds=None, codecs=None):
  """Trains cfg for num_steps (or until `seconds` of wall time, counted after the codecs are
  built: a fitted autoencoder's fit is reported as `codecs_s`), evaluates;
  -> (result dict, images, params, (autoencoder, text_encoder))."""
  t_codecs = time.perf_counter()
  codecs = codecs or loop.build_codecs(cfg)
  t0 = time.perf_counter()
  autoencoder, text_encoder, graphdef, state, update, _ = loop.single_device_training(cfg, codecs)
  data = pipeline.make_dataset(cfg.data, cfg.train.batch_size, cfg.seed)
  prepare = lambda b: jax.device_put(loop.encode_batch(b, autoencoder, text_encoder, in_step=True))
  losses, pending, compile_s = [], [], None
  done = 0
  with host.Prefetcher(data, prepare, depth=3, thread_priority=cfg.data.thread_priority) as batches:
    while done < num_steps:
      batch, _ = next(batches)  # (prepared batch, iterator state)
      state, m = update(state, batch)
      done += 1
      pending.append(m["loss"])
      if done == 1:
        jax.block_until_ready(m["loss"])
        compile_s = time.perf_counter() - t0
        t_start = time.perf_counter()
      if seconds is not None and time.perf_counter() - t0 > seconds:
        break
      if done % 100 == 0:
        losses.extend(float(x) for x in pending)
        pending = []
        print(f"step {done}: loss {np.mean(losses[-100:]):.4f}, "
              f"{(done - 1) / (time.perf_counter() - t_start):.2f} steps/s", file=sys.stderr, flush=True)
  losses.extend(float(x) for x in pending)
  jax.block_until_ready(state.params)
  train_s = time.perf_counter() - t_start
  result = {"steps": done, "steps_per_s": round((done - 1) / train_s, 2),
            "loss": round(float(np.mean(losses[-100:])), 4), "codecs_s": round(t0 - t_codecs, 1),
            "compile_s": round(compile_s, 1), "train_s": round(train_s, 1)}
  params = state.ema_params if state.ema_params is not None else state.params
  t1 = time.perf_counter()
  score, images = evaluate(cfg, graphdef, params, codecs)
  result.update(eval_s=round(time.perf_counter() - t1, 1), total_s=round(time.perf_counter() - t0, 1),
                score=score, failures=failures(cfg, images),
                conditioning=conditioning_check(cfg, graphdef, params, codecs),
                binding=binding_check(cfg, graphdef, params, codecs))
  return result, images, params, codecs


def failures(cfg, images):
  """shapes_eval.failure_breakdown of the held-out images `evaluate` drew."""
  return shapes_eval.failure_breakdown(list(images), loop.heldout_shapes(cfg, len(images))[1])


def conditioning_check(cfg, graphdef, params, codecs, sigmas=(0.5, 0.9, 0.99), batch_size=128):
  """{sigma: [loss with the right captions, shuffled captions, the null prompt]} on one held-out
  batch (data seed + 1), the same noise for all three. codecs: (autoencoder, text_encoder)."""
  autoencoder, text_encoder = codecs
  model = nnx.merge(graphdef, params)
  batch = loop.encode_batch(next(iter(pipeline.make_dataset(cfg.data, batch_size, cfg.seed + 1))),
                            autoencoder, text_encoder)
  x0 = jnp.asarray(batch["latents"])
  noise = jax.random.normal(jax.random.key(cfg.seed + 1), x0.shape)
  null_text, null_mask = text_encoder.null_embedding()
  shifted = np.roll(np.arange(batch_size), 1)
  captions = {"right": (batch["text"], batch["text_mask"]),
              "shuffled": (batch["text"][shifted], batch["text_mask"][shifted]),
              "null": (np.repeat(null_text, batch_size, 0), np.repeat(null_mask, batch_size, 0))}
  out = {}
  for sigma in sigmas:
    s = jnp.full((batch_size,), sigma, jnp.float32)
    x_t = objective.noisy_latents(x0, noise, s)
    out[str(sigma)] = [round(float(jnp.mean(jnp.square(
        model(x_t, s * objective.NUM_TRAIN_TIMESTEPS, jnp.asarray(t), jnp.asarray(m)) - (noise - x0)))), 4)
        for t, m in captions.values()]
  return out


def swapped_caption(spec):
  """The caption with its binding swapped and the same words: colour attribution's two colours
  exchanged ("a blue circle and a red square" for "a red circle and a blue square"), position's two
  groups exchanged around the relation."""
  a, b = spec.groups
  if spec.task == "color_attr":
    return shapes.SceneSpec(spec.task, (dataclasses.replace(a, color=b.color),
                                        dataclasses.replace(b, color=a.color))).caption
  if spec.task == "position":
    return shapes.SceneSpec(spec.task, (b, a), spec.relation).caption
  raise ValueError(f"no binding to swap in a {spec.task} caption")


def binding_check(cfg, graphdef, params, codecs, count=256, sigmas=(0.3, 0.6, 0.9)):
  """Does the model read which attribute goes with which object? On `count` held-out renders of
  colour attribution and of position (data seed + 2), at fixed noise levels and the same noise:
  {task: {sigma: {"loss": [right caption, binding swapped, another caption of the task],
  "dv_swapped": mean squared velocity difference right vs swapped, "dv_other": right vs other}}}.
  A model that binds has dv_swapped of the order of dv_other; one that reads the caption as a bag
  of words has dv_swapped near 0 and equal losses for right and swapped."""
  autoencoder, text_encoder = codecs
  model = nnx.merge(graphdef, params)
  out = {}
  for task in ("color_attr", "position"):
    source = shapes.ShapesSource(count, cfg.data.image_size, cfg.data.shapes_seed + 2, (task,))
    images, specs = source.first(count)
    x0 = jnp.asarray(loop.image_encoder(autoencoder)(images))
    noise = jax.random.normal(jax.random.key(cfg.seed + 2), x0.shape)
    right = [s.caption for s in specs]
    captions = {"right": right, "swapped": [swapped_caption(s) for s in specs], "other": right[1:] + right[:1]}
    out[task] = {}
    for sigma in sigmas:
      s = jnp.full((count,), sigma, jnp.float32)
      x_t = objective.noisy_latents(x0, noise, s)
      v = {name: model(x_t, s * objective.NUM_TRAIN_TIMESTEPS, *text_encoder.encode(c)) for name, c in captions.items()}
      out[task][str(sigma)] = {
          "loss": [round(float(jnp.mean(jnp.square(v[k] - (noise - x0)))), 4) for k in captions],
          "dv_swapped": round(float(jnp.mean(jnp.square(v["right"] - v["swapped"]))), 5),
          "dv_other": round(float(jnp.mean(jnp.square(v["right"] - v["other"]))), 5)}
  return out


def heldout_sampler(cfg, graphdef, codecs):
  """-> (draw, prompts, specs): draw(params, seed) samples images [N, H, W, 3] in [-1, 1] of the
  cfg.sampling.num_eval_images held-out prompts with the loop's sampler (compiled once, whatever
  the seed). codecs: the run's (autoencoder, text_encoder), from `loop.build_codecs`."""
  autoencoder, text_encoder = codecs
  latent_hw = cfg.data.image_size // autoencoder.spatial_compression_ratio
  sampler = loop.make_sampler(graphdef, autoencoder, text_encoder, cfg.sampling)
  prompts, specs = loop.heldout_shapes(cfg, cfg.sampling.num_eval_images)

  def draw(params, seed):
    return sampler(params, prompts, seed, (latent_hw, latent_hw, cfg.model.in_channels))

  return draw, prompts, specs


def make_evaluator(cfg, graphdef, codecs):
  """-> evaluate(params, seed): `heldout_sampler`'s images scored with the shapes evaluator ->
  ({task: accuracy, "overall": mean} unrounded, images [N, H, W, 3]). codecs: the run's
  (autoencoder, text_encoder), from `loop.build_codecs` (a fitted autoencoder is fitted once)."""
  draw, _, specs = heldout_sampler(cfg, graphdef, codecs)

  def evaluate(params, seed):
    images = draw(params, seed)
    return shapes_eval.score(list(images), specs), images

  return evaluate


def evaluate(cfg, graphdef, params, codecs):
  """One scoring with sampling seed cfg.seed + 1 (what the training loop's final evaluation uses)."""
  score, images = make_evaluator(cfg, graphdef, codecs)(params, cfg.seed + 1)
  return {k: round(v, 3) for k, v in score.items()}, images


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="tiny", help="preset to start from: tiny (the rounds of "
                      "docs/training.md up to the tenth) or tiny24 (the default job's since the eleventh)")
  parser.add_argument("--steps", type=int, default=None, help="default: the config's train.num_steps")
  parser.add_argument("--seconds", type=float, default=None, help="stop after this much wall time")
  parser.add_argument("--grid", default="", help="write a sample grid PNG of the first 32 images here")
  parser.add_argument("--sweep", default="", help="also score these sampling settings of the trained "
                      "weights: ';'-separated sets of ','-separated overrides")
  parser.add_argument("overrides", nargs="*", help="config fields: model.hidden_size=128 ...")
  args = parser.parse_args()
  cfg = apply_overrides(configs.get_config(args.config), args.overrides)
  result, images, params, codecs = run(cfg, args.steps or cfg.train.num_steps, args.seconds)
  if args.grid:
    prompts, _ = loop.heldout_shapes(cfg, len(images[:32]))
    grid.save_grid(images[:32], prompts, args.grid)
  print(json.dumps({"config": args.config, "overrides": args.overrides, **result}), flush=True)
  graphdef = train_state.model_graphdef(cfg.model)
  for setting in filter(None, args.sweep.split(";")):
    swept = apply_overrides(cfg.copy_and_resolve_references(), setting.split(","))
    score, images = evaluate(swept, graphdef, params, codecs)
    print(json.dumps({"sampling": setting, "score": score, "failures": failures(swept, images)}), flush=True)


if __name__ == "__main__":
  main()

"""Training-loop overhead: `loop.train_and_evaluate`'s time per step vs the bare jitted step.

  python bench/train_loop_overhead.py [--config=tiny] [--steps=200] [--log_every=50] [field=value ...]

The bare step runs `update(state, batch)` back to back on batches prepared beforehand (the first
`steps` batches of the same pipeline, captions encoded and sharded; the images are encoded inside
the step, as in the loop), blocking at the end of every `log_every` steps to time that window.
The loop runs the real `python -m sana_jax.train` loop for the same number of steps (data read,
captions encoded and sharded on its prefetch thread, metrics read back at log steps, tqdm, TensorBoard,
one checkpoint at the end), its windows' times per step taken from metrics.jsonl's step_time (all
but the first window, which holds the compilation). Each run's figure is the median of its windows'
times per step, the same statistic on both sides, so a window that another process on the machine
slowed does not decide it. Bare and loop alternate (`--rounds` loops, each between two bare runs);
each loop run is divided by the mean of its two neighbours, and the median of those ratios is
printed, so a change of machine load shows as their spread. `data.thread_priority=normal` as an
override measures the loop without idle-priority data threads.
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import train_ablation  # noqa: E402
from timing import add_retain_flag, retain_if_asked  # noqa: E402
from sana_jax import configs  # noqa: E402
from sana_jax.data import pipeline  # noqa: E402
from sana_jax.optim.registry import build_optimizer, make_schedule  # noqa: E402
from sana_jax.training import autoencoder_fit, loop, sharding, step, train_state  # noqa: E402


def bare_step_time(cfg, batches, codecs, window: int) -> float:
  """Seconds per step of the jitted update alone over `batches` (compiled and warmed first): the
  median over windows of `window` steps."""
  mesh = sharding.create_mesh(cfg.mesh)
  rules = sharding.axis_rules(cfg.mesh)
  tx = build_optimizer(cfg.optimizer)
  graphdef, state, shardings = train_state.create_train_state(cfg, tx, mesh)
  autoencoder, text_encoder = codecs
  null_text, null_mask = (jnp.asarray(a[0]) for a in text_encoder.null_embedding())
  update = step.jit_train_step(
      step.make_train_step(graphdef, tx, cfg.train, null_text=null_text, null_mask=null_mask,
                           seed=cfg.seed, learning_rate_fn=make_schedule(cfg.optimizer),
                           param_shardings=shardings.params,
                           encode_images=loop.image_encoder(autoencoder)),
      mesh, shardings, sharding.batch_sharding(mesh, rules, cfg.model), rules)
  for batch in batches[:3]:  # compile + warm up
    state, metrics = update(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for first in range(0, len(batches) - window + 1, window):
    start = time.perf_counter()
    for batch in batches[first:first + window]:
      state, metrics = update(state, batch)
    jax.block_until_ready((state, metrics))
    times.append((time.perf_counter() - start) / window)
  return statistics.median(times)


def prepared_batches(cfg, count, codecs):
  mesh = sharding.create_mesh(cfg.mesh)
  batch_sharding = sharding.batch_sharding(mesh, sharding.axis_rules(cfg.mesh), cfg.model)
  autoencoder, text_encoder = codecs
  data = pipeline.make_dataset(cfg.data, cfg.train.batch_size, cfg.seed)
  return [sharding.global_batch(loop.encode_batch(next(data), autoencoder, text_encoder, in_step=True),
                                batch_sharding, cfg.train.batch_size) for _ in range(count)]


def loop_step_time(cfg, workdir, fitted) -> float:
  """The loop's steady step time in a fresh workdir, the median over its log windows (given the
  fitted autoencoder, if any, so the loop does not fit it again)."""
  autoencoder = os.path.join(fitted, autoencoder_fit.FOLDER)
  if os.path.isdir(autoencoder):
    shutil.copytree(autoencoder, os.path.join(workdir, autoencoder_fit.FOLDER))
  loop.train_and_evaluate(cfg, workdir)
  records = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  steady = records[1:]  # the first window includes compilation
  return statistics.median(r["step_time"] for r in steady)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="tiny")
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--log_every", type=int, default=50)
  parser.add_argument("--rounds", type=int, default=2)
  add_retain_flag(parser)
  parser.add_argument("overrides", nargs="*", help="config fields, as in bench/train_ablation.py")
  args = parser.parse_args()
  retain_if_asked(args)
  cfg = train_ablation.apply_overrides(configs.get_config(args.config), args.overrides)
  cfg.train.update(num_steps=args.steps + args.log_every, log_every=args.log_every,
                   checkpoint_every=10 ** 9, sample_every=0)
  cfg.sampling.update(num_images=0, num_eval_images=0)
  with tempfile.TemporaryDirectory() as tmp:
    fitted = os.path.join(tmp, "fitted")
    codecs = loop.build_codecs(cfg, fitted)  # a fitted autoencoder (the default) is fitted once, here
    batches = prepared_batches(cfg, args.steps, codecs)
    jax.config.update("jax_compilation_cache_dir", os.path.join(tmp, "xla_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    bare = [bare_step_time(cfg, batches, codecs, args.log_every)]
    loops = []
    for r in range(args.rounds):
      loops.append(loop_step_time(cfg, os.path.join(tmp, f"run{r}"), fitted))
      bare.append(bare_step_time(cfg, batches, codecs, args.log_every))
  ratios = [t / ((bare[i] + bare[i + 1]) / 2) for i, t in enumerate(loops)]
  print(f"{cfg.model.name}, batch {cfg.train.batch_size}, {args.steps} steps per run, "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s), data threads "
        f"{pipeline.DataThreads.resolve(cfg.data.thread_priority)} priority; per run the median of "
        f"{args.log_every}-step windows")
  print("bare jitted step: " + ", ".join(f"{t * 1e3:.1f}" for t in bare) + " ms/step")
  print("training loop:    " + ", ".join(f"{t * 1e3:.1f}" for t in loops) + " ms/step")
  print("loop / bare:      " + ", ".join(f"{r:.3f}" for r in ratios) +
        f"  (median {sorted(ratios)[len(ratios) // 2]:.3f}x)")


if __name__ == "__main__":
  main()

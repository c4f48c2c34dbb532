"""LoRA vs full fine-tuning on the same model: train-step time and optimiser-state bytes, side by side.

COMMAND: python bench/lora_step.py [--config SanaMS_600M_P1_D28 --depth 2 --rank 16 --batch 4 --latent 16]

One base model (the config cut to `--depth` blocks, random weights saved once) is trained both ways
with the training loop's own pieces (train_state, step, training/adapter.py), AdamW, fp32 master
weights, on the default device: full fine-tuning (train.init_from = the base) and a rank-`--rank`
LoRA on to_q / to_k / to_v / to_out.0 of both attentions (configs/base.py lora_config). Each
repeat times `--steps` steps of one and then of the other on the same fixed batch; the table shows
the median per step and the ratio. Optimiser-state and trained-parameter bytes are exact (the
state the step carries); the frozen base is shown on its own row.
"""
import argparse
import math
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from sana_jax import configs
from sana_jax.configs.base import lora_config
from sana_jax.convert.checkpoints import save_transformer
from sana_jax.optim.registry import build_optimizer
from sana_jax.training import adapter, step, train_state


def nbytes(tree) -> int:
  return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def build(args, base_dir, lora: bool):
  """-> (name, state, update(state) -> state, frozen bytes) for one way of training."""
  cfg = configs.get_config(args.config)
  cfg.model.update(depth=args.depth, remat_policy="none")
  cfg.optimizer.update(name="adamw", learning_rate=1e-4, warmup_steps=0, grad_clip=1.0)
  cfg.train.update(init_from=base_dir, caption_dropout=0.0)
  if lora:
    cfg.lora = lora_config(rank=args.rank, alpha=float(args.rank))
  tx = build_optimizer(cfg.optimizer)
  graphdef, state, _ = train_state.create_train_state(cfg, tx)
  rng = np.random.default_rng(0)
  batch = {"latents": jnp.asarray(rng.normal(size=(args.batch, args.latent, args.latent, cfg.model.in_channels)), jnp.float32),
           "text": jnp.asarray(rng.normal(size=(args.batch, args.text, cfg.model.caption_channels)), jnp.float32),
           "text_mask": jnp.ones((args.batch, args.text), jnp.int32)}
  null = jnp.zeros((args.text, cfg.model.caption_channels), jnp.float32)
  jitted = step.jit_train_step(step.make_train_step(graphdef, tx, cfg.train, null_text=null, seed=0))
  if lora:
    base = adapter.load_base(cfg)
    return f"LoRA r={args.rank}", state, lambda s: jitted(s, batch, base.params), nbytes(base.params)
  return "full fine-tuning", state, lambda s: jitted(s, batch), 0


def time_steps(state, update, steps):
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = update(state)
  jax.block_until_ready(metrics["loss"])
  return state, (time.perf_counter() - start) / steps


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="SanaMS_600M_P1_D28")
  parser.add_argument("--depth", type=int, default=2)
  parser.add_argument("--rank", type=int, default=16)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--latent", type=int, default=16, help="latent side (tokens = latent^2)")
  parser.add_argument("--text", type=int, default=32, help="caption tokens")
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()

  cfg = configs.get_config(args.config)
  cfg.model.depth = args.depth
  with tempfile.TemporaryDirectory() as tmp:
    base_dir = save_transformer(train_state.build_model(cfg.model, 0), os.path.join(tmp, "base"))
    runs = [list(build(args, base_dir, lora)) for lora in (False, True)]
    for run in runs:  # compile and warm up
      run[1], _ = time_steps(run[1], run[2], 1)
    times = {run[0]: [] for run in runs}
    for _ in range(args.repeats):
      for run in runs:
        run[1], seconds = time_steps(run[1], run[2], args.steps)
        times[run[0]].append(seconds)

  print(f"{args.config} cut to {args.depth} blocks, batch {args.batch} x {args.latent}x{args.latent} latents, "
        f"{args.text} text tokens, AdamW, {jax.devices()[0].platform}; median of {args.repeats} x {args.steps} steps")
  print(f"{'':18s} {'trained params':>15s} {'optimiser state':>16s} {'frozen base':>12s} {'step time':>10s}")
  full = runs[0]
  for name, state, _, frozen in runs:
    median = float(np.median(times[name]))
    print(f"{name:18s} {count(state.params):15,d} {nbytes(state.opt_state) / 2**20:12.2f} MiB "
          f"{frozen / 2**20:8.1f} MiB {median * 1e3:7.0f} ms")
  lora_run = runs[1]
  print(f"LoRA / full: optimiser state {nbytes(lora_run[1].opt_state) / nbytes(full[1].opt_state):.4f}x, "
        f"trained params {count(lora_run[1].params) / count(full[1].params):.4f}x, step time "
        f"{np.median(times[lora_run[0]]) / np.median(times[full[0]]):.2f}x")


if __name__ == "__main__":
  main()

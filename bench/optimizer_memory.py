"""Optimiser-state memory on the SANA 1.5 1.6B / 4.8B models and update-step time vs optax.adamw.

COMMAND: python bench/optimizer_memory.py [--time_config SanaMS_600M_P1_D28 --time_depth 2]

Memory uses abstract shapes only (nnx.eval_shape, jax.eval_shape(opt.init)): nothing is allocated.
Timing runs the jitted update on real random arrays of a smaller model of the same layout (the
600M config cut to `--time_depth` blocks, about 50M parameters) on the default device, the
optimisers in turn within each repeat (ratios within one run are what compare).
"""
import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from sana_jax import configs
from sana_jax.models.transformer import SanaTransformer
from sana_jax.optim import build_optimizer, default_optimizer_config

NAMES = ("adamw", "came", "adamw_8bit", "came_8bit")


def optimizer(name):
  cfg = default_optimizer_config()
  cfg.update(name=name, warmup_steps=0)
  return build_optimizer(cfg)


def abstract_params(model_cfg):
  return nnx.state(nnx.eval_shape(lambda: SanaTransformer(model_cfg, rngs=nnx.Rngs(0))), nnx.Param)


def nbytes(tree):
  return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def memory_table(config_names):
  print("optimiser-state bytes per parameter (abstract shapes)")
  print(f"{'config':26s} {'params':>8s} " + " ".join(f"{n:>11s}" for n in NAMES))
  for name in config_names:
    params = abstract_params(configs.get_config(name).model)
    count = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    per_param = [nbytes(jax.eval_shape(optimizer(n).init, params)) / count for n in NAMES]
    print(f"{name:26s} {count / 1e9:7.3f}B " + " ".join(f"{b:11.3f}" for b in per_param))


def time_updates(config_name, depth, repeats):
  model_cfg = configs.get_config(config_name).model
  model_cfg.depth = depth
  abstract = abstract_params(model_cfg)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape, np.float32) * 0.02),
                        abstract)
  grads = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape, np.float32) * 1e-3),
                       abstract)
  count = sum(x.size for x in jax.tree.leaves(params))
  print(f"\nupdate step ({config_name} cut to depth {depth}: {count / 1e6:.1f}M params, "
        f"{jax.devices()[0].device_kind}, median of {repeats})")
  steps, states, current = {}, {}, {}
  for name in NAMES:
    tx = optimizer(name)

    @jax.jit
    def step(params, state, grads, tx=tx):
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    current[name], states[name] = step(params, tx.init(params), grads)     # compile
    jax.block_until_ready(current[name])
    steps[name] = step
  # Round-robin over the optimisers, so that a change in the machine's load hits all of them.
  samples = {name: [] for name in NAMES}
  for _ in range(repeats):
    for name in NAMES:
      start = time.perf_counter()
      current[name], states[name] = steps[name](current[name], states[name], grads)
      jax.block_until_ready((current[name], states[name]))
      samples[name].append(time.perf_counter() - start)
  times = {name: float(np.median(samples[name])) for name in NAMES}
  for name in NAMES:
    print(f"{name:11s} {times[name] * 1e3:9.1f} ms   {times[name] / times['adamw']:5.2f}x optax.adamw")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", nargs="+", default=["SanaMS1.5_1600M_P1_D20", "SanaMS1.5_4800M_P1_D60"])
  parser.add_argument("--time_config", default="SanaMS_600M_P1_D28")
  parser.add_argument("--time_depth", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=10)
  args = parser.parse_args()
  memory_table(args.configs)
  time_updates(args.time_config, args.time_depth, args.repeats)


if __name__ == "__main__":
  main()

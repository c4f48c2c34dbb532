"""Timing helpers shared by the benchmark scripts (run as `python bench/X.py`, so importable here)."""
import time

import jax
import jax.numpy as jnp
import numpy as np

from sana_jax import host_memory


def best_time(fn, repeats):
  """Minimum wall time of `fn()` over `repeats` calls, after one warm-up (compile) call."""
  fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return min(times)


def matmul_flops_per_s(n=2048, repeats=5):
  """FLOP/s of a plain jitted fp32 n x n matmul: the reference rate MFU figures are quoted against."""
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), dtype=np.float32))
  f = jax.jit(lambda a: a @ a)
  return 2 * n**3 / best_time(lambda: f(a).block_until_ready(), repeats)


def add_retain_flag(parser):
  """--retain_host_memory: what `python -m sana_jax.train` and `.sample` do by default on the CPU."""
  parser.add_argument("--retain_host_memory", action="store_true",
                      help="sana_jax.host_memory.retain() first, as the CLIs do by default on the CPU "
                           "(its malloc settings are process-wide: a PyTorch side's allocations too)")


def retain_if_asked(args):
  """Applies --retain_host_memory; call it before JAX starts its backends."""
  if args.retain_host_memory:
    host_memory.retain()

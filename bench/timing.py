"""Timing helpers shared by the benchmark scripts (run as `python bench/X.py`, so importable here)."""
import time

import jax
import jax.numpy as jnp
import numpy as np


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

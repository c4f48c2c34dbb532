"""On a GPU or TPU: do the compiled Pallas kernels give the reference's numbers? One short run.

The CPU suite checks the kernels in Pallas' interpreter and lowers them for both accelerators; only
real hardware runs Mosaic's and Triton's compilers. This script compiles the kernels on the default
device and compares outputs and q/k/v gradients with the jnp reference (fp32 <= 1e-5 relative to
the largest reference entry, bf16 inputs <= 2e-2) on the SANA head layout with ragged token counts,
then prints PASS / FAIL per case and exits 1 on any failure. Run it before
`bench/linear_attention.py` on a newly lent machine:

  python bench/linear_attention_check.py                 # the default device's backend
  python bench/linear_attention_check.py --small         # CPU smoke test (interpreted, tiny shapes)
"""
import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

from sana_jax.kernels.pallas_attention import relu_linear_attention_pallas
from sana_jax.kernels.reference import relu_linear_attention_reference

CASES = [  # (batch, tokens, heads, head_dim, dtype, eps)
    (1, 1000, 70, 32, jnp.float32, 1e-15),
    (2, 4111, 70, 32, jnp.bfloat16, 1e-15),
    (1, 16384, 70, 32, jnp.bfloat16, 1e-15),
    (2, 1, 36, 32, jnp.float32, 0.5),  # one token: a large eps keeps the q, k gradients non-zero
    (1, 777, 36, 32, jnp.bfloat16, 1e-8),
]
SMALL_CASES = [(2, 37, 5, 8, jnp.float32, 1e-15), (1, 21, 4, 16, jnp.bfloat16, 1e-15)]


def value_and_grads(attention, q, k, v, w):
  def loss(q, k, v):
    out = attention(q, k, v)
    return jnp.sum(out.astype(jnp.float32) * w), out
  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
  return (out, *grads)


def relative_error(actual, expected):
  actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
  return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-30))


def check(case):
  batch, n, heads, head_dim, dtype, eps = case
  keys = jax.random.split(jax.random.PRNGKey(n), 4)
  shape = (batch, n, heads, head_dim)
  q, k, v = (jax.random.normal(key, shape, jnp.float32).astype(dtype) for key in keys[:3])
  w = jax.random.normal(keys[3], shape, jnp.float32)
  ours = value_and_grads(lambda q, k, v: relu_linear_attention_pallas(q, k, v, eps), q, k, v, w)
  f32 = [x.astype(jnp.float32) for x in (q, k, v)]
  ref = value_and_grads(lambda q, k, v: relu_linear_attention_reference(q, k, v, eps), *f32, w)
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  errors = {name: relative_error(a, b) for name, a, b in zip(("out", "dq", "dk", "dv"), ours, ref)}
  return all(e <= tol for e in errors.values()), errors, tol


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--small", action="store_true", help="tiny shapes (for the CPU interpreter)")
  args = parser.parse_args()
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")
  failed = 0
  for case in SMALL_CASES if args.small else CASES:
    batch, n, heads, head_dim, dtype, _ = case
    try:
      ok, errors, tol = check(case)
      shown = " ".join(f"{name} {e:.1e}" for name, e in errors.items())
      print(f"{'PASS' if ok else 'FAIL'}  B={batch} N={n} {heads}x{head_dim} "
            f"{jnp.dtype(dtype).name}: {shown} (tol {tol:.0e})", flush=True)
    except Exception as e:  # a compile error is a result here, not a crash
      ok = False
      print(f"FAIL  B={batch} N={n} {heads}x{head_dim} {jnp.dtype(dtype).name}: "
            f"{type(e).__name__}: {str(e)[:2000]}", flush=True)
    failed += not ok
  print(f"{failed} failed")
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  main()

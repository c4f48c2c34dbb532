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

from sana_jax.kernels.selection import compare_with_reference

CASES = [  # (batch, tokens, heads, head_dim, dtype, eps)
    (1, 1000, 70, 32, jnp.float32, 1e-15),
    (2, 4111, 70, 32, jnp.bfloat16, 1e-15),
    (1, 16384, 70, 32, jnp.bfloat16, 1e-15),
    (2, 1, 36, 32, jnp.float32, 0.5),  # one token: a large eps keeps the q, k gradients non-zero
    (1, 777, 36, 32, jnp.bfloat16, 1e-8),
]
SMALL_CASES = [(2, 37, 5, 8, jnp.float32, 1e-15), (1, 21, 4, 16, jnp.bfloat16, 1e-15)]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--small", action="store_true", help="tiny shapes (for the CPU interpreter)")
  args = parser.parse_args()
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")
  failed = 0
  for case in SMALL_CASES if args.small else CASES:
    batch, n, heads, head_dim, dtype, _ = case
    try:
      ok, errors, tol = compare_with_reference(*case)
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

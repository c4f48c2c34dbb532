"""fp32 and bf16 matmul rates of XLA:CPU under each dot-backend flag, and of torch, side by side.

    python bench/bf16_matmul.py [--n 2048] [--repeats 5]

XLA reads XLA_FLAGS once, when its CPU client starts, so every flag setting runs in a fresh Python
process; torch runs in this one (its thread count set to the number of cores). Prints one row per
setting: GFLOP/s for an n x n x n fp32 and bf16 matmul (best of `repeats`), and the bf16 result's
largest relative error against the fp32 product of the same bf16-rounded inputs. The figures in
docs/benchmarks.md ("bf16 matmuls on XLA:CPU") come from here.
"""
import argparse
import json
import os
import subprocess
import sys

from timing import best_time

SETTINGS = {
    "jax, default flags": "",
    "jax, --xla_cpu_experimental_onednn_fusion_type=dot": "--xla_cpu_experimental_onednn_fusion_type=dot",
    "jax, --xla_cpu_experimental_xnn_fusion_type=dot": "--xla_cpu_experimental_xnn_fusion_type=dot",
    "jax, --xla_cpu_experimental_ynn_fusion_type=dot": "--xla_cpu_experimental_ynn_fusion_type=dot",
    "jax, --xla_cpu_use_onednn=true": "--xla_cpu_use_onednn=true",
}


def jax_child(n, repeats):
  import jax
  import jax.numpy as jnp
  import numpy as np
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  ab, bb = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
  matmul = jax.jit(jnp.matmul)
  out = {}
  for name, (x, y) in (("float32", (a, b)), ("bfloat16", (ab, bb))):
    out[name] = 2 * n**3 / best_time(lambda: matmul(x, y).block_until_ready(), repeats) / 1e9
  exact = np.asarray(ab, np.float32) @ np.asarray(bb, np.float32)
  got = np.asarray(matmul(ab, bb), np.float32)
  out["bf16_rel_err"] = float(np.abs(got - exact).max() / np.abs(exact).max())
  print(json.dumps(out))


def torch_row(n, repeats):
  import torch
  torch.set_num_threads(os.cpu_count())
  a, b = torch.randn(n, n), torch.randn(n, n)
  ab, bb = a.bfloat16(), b.bfloat16()
  out = {name: 2 * n**3 / best_time(lambda: torch.mm(x, y), repeats) / 1e9
         for name, (x, y) in (("float32", (a, b)), ("bfloat16", (ab, bb)))}
  exact = ab.float() @ bb.float()
  out["bf16_rel_err"] = float((torch.mm(ab, bb).float() - exact).abs().max() / exact.abs().max())
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--n", type=int, default=2048)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.child:
    return jax_child(args.n, args.repeats)
  with open("/proc/cpuinfo") as f:
    info = f.read()
  model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
  flags = [f for f in ("amx_bf16", "avx512_bf16", "avx512f") if f" {f}" in info]
  print(f"cpu: {model} ({os.cpu_count()} cores; {', '.join(flags) or 'no AVX-512'}), {args.n}^2 matmul, best of {args.repeats}")
  print(f"{'setting':<56} {'fp32 GFLOP/s':>12} {'bf16 GFLOP/s':>12} {'bf16/fp32':>9} {'bf16 rel. err':>13}")
  rows = {}
  for name, flag in SETTINGS.items():
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + flag).strip())
    done = subprocess.run([sys.executable, __file__, "--child", "--n", str(args.n), "--repeats", str(args.repeats)],
                          env=env, capture_output=True, text=True)
    if done.returncode:
      print(f"{name:<56} failed: {(done.stderr.strip().splitlines() or ['?'])[-1][:80]}")
      continue
    rows[name] = json.loads(done.stdout.strip().splitlines()[-1])
  rows["torch " + __import__("torch").__version__] = torch_row(args.n, args.repeats)
  for name, r in rows.items():
    print(f"{name:<56} {r['float32']:>12.1f} {r['bfloat16']:>12.1f} {r['bfloat16'] / r['float32']:>8.2f}x "
          f"{r['bf16_rel_err']:>13.1e}")


if __name__ == "__main__":
  main()

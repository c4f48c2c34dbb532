"""Benchmark ReLU linear attention against softmax attention: time and compiled peak memory.

For N tokens at H x d heads (default 70 x 32, the 1.6B / 4.8B shape) it measures, forward and
forward+backward: the XLA linear attention (impl="xla", token-chunked: sana_jax/kernels/xla_attention.py),
the whole-array jnp reference it replaced (sana_jax/kernels/reference.py), softmax attention
(`jax.nn.dot_product_attention`) and, on a TPU / GPU, the Pallas kernels. For the linear
attentions it prints the share of a plain fp32 2048^2 matmul's FLOP/s measured right before each N
(useful FLOPs: 4 B N H d^2 forward, 3x that forward+backward; target >= 25% at 4K and 16K). Memory is XLA's compiled estimate
(`jit(f).lower(...).compile().memory_analysis()`: arguments + outputs + temporaries), so it is
reported even where running would not fit. time(4N) / time(N) is printed per column: linear
growth gives about 4, quadratic about 16. A "stream" row (q + k + v: one read of the inputs, one
write) shows what the memory hierarchy alone does to that ratio: where the arrays of N tokens fit
in cache and those of 4N do not, even it grows by more than 4x. On an accelerator the Pallas
speed-up over XLA is printed per N and mode.

  python bench/linear_attention.py                     # N = 1K, 4K, 16K, 64K, float32
  python bench/linear_attention.py --heads 4 --batch 2 --n 4096 16384 --no-softmax
  python bench/linear_attention.py --dtype bfloat16 --n 16384
"""
import argparse
import time

import jax
import jax.numpy as jnp

from sana_jax import kernels
from sana_jax.kernels.reference import relu_linear_attention_reference
from timing import matmul_flops_per_s


def _attention_fns(eps, softmax):
  fns = {
      "stream": lambda q, k, v: q + k + v,
      "xla_linear": lambda q, k, v: kernels.linear_attention(q, k, v, eps=eps, impl="xla"),
      "reference": lambda q, k, v: relu_linear_attention_reference(q, k, v, eps),
  }
  if softmax:
    fns["softmax"] = lambda q, k, v: jax.nn.dot_product_attention(q, k, v)
  if jax.default_backend() in ("tpu", "gpu"):
    fns["pallas_linear"] = lambda q, k, v: kernels.linear_attention(q, k, v, eps=eps,
                                                                    impl="pallas")
  return fns


def _fwd_bwd(fn):
  def loss(q, k, v):
    return jnp.sum(fn(q, k, v).astype(jnp.float32))
  return jax.grad(loss, argnums=(0, 1, 2))


def _peak_bytes(compiled):
  m = compiled.memory_analysis()
  if m is None:
    return None
  return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes


def _time(compiled, args, repeats):
  jax.block_until_ready(compiled(*args))  # warm-up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return sorted(times)[len(times) // 2]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
  parser.add_argument("--heads", type=int, default=70)
  parser.add_argument("--head-dim", type=int, default=32)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--no-softmax", action="store_true", help="skip softmax attention")
  parser.add_argument("--max-run-gib", type=float, default=8.0,
                      help="skip timing (memory is still reported) above this compiled peak")
  args = parser.parse_args()
  dtype = jnp.dtype(args.dtype)
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
        f"B={args.batch}, H x d = {args.heads} x {args.head_dim}, {dtype.name}")
  results = {}  # (impl, mode, n) -> seconds or None
  shares = []
  for n in args.n:
    matmul_rate = matmul_flops_per_s(repeats=args.repeats)
    useful = 4 * args.batch * n * args.heads * args.head_dim ** 2
    shape = (args.batch, n, args.heads, args.head_dim)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    qkv = [jax.random.normal(key, shape, jnp.float32).astype(dtype) for key in keys]
    print(f"N={n:6d} plain fp32 matmul {matmul_rate / 1e9:.1f} GFLOP/s", flush=True)
    for name, fn in _attention_fns(1e-15, not args.no_softmax).items():
      modes = (("fwd", fn),) if name == "stream" else (("fwd", fn), ("fwd+bwd", _fwd_bwd(fn)))
      for mode, f in modes:
        compiled = jax.jit(f).lower(*qkv).compile()
        peak = _peak_bytes(compiled)
        fits = peak is None or peak <= args.max_run_gib * 2**30
        seconds = _time(compiled, qkv, args.repeats) if fits else None
        results[name, mode, n] = seconds
        shown = f"{seconds * 1e3:10.2f} ms" if seconds is not None else "   skipped   "
        mem = f"{peak / 2**20:12.1f} MiB" if peak is not None else "n/a"
        share = ""
        if seconds and name in ("xla_linear", "reference", "pallas_linear"):
          flops = useful * (3 if mode == "fwd+bwd" else 1)
          share = f"  {flops / seconds / 1e9:7.1f} GFLOP/s = {flops / seconds / matmul_rate:5.1%} of matmul"
          shares.append((name, mode, n, flops / seconds / matmul_rate))
        print(f"N={n:6d} {name:14s} {mode:8s} {shown} peak {mem}{share}", flush=True)
  print("\ntime(4N) / time(N):")
  for (name, mode, n), seconds in sorted(results.items()):
    longer = results.get((name, mode, 4 * n))
    if seconds and longer:
      print(f"  {name:14s} {mode:8s} N={n:6d} -> {4 * n:6d}: {longer / seconds:6.2f}")
  print("\nshare of the matmul rate (target >= 25% at 4K and 16K for xla_linear):")
  for name, mode, n, share in shares:
    print(f"  {name:14s} {mode:8s} N={n:6d}: {share:6.1%}")
  speedups = [(mode, n, results["xla_linear", mode, n] / seconds)
              for (name, mode, n), seconds in sorted(results.items())
              if name == "pallas_linear" and seconds and results.get(("xla_linear", mode, n))]
  if speedups:
    print("\nPallas speed-up over XLA linear attention (time XLA / time Pallas):")
    for mode, n, ratio in speedups:
      print(f"  {mode:8s} N={n:6d}: {ratio:5.2f}x")


if __name__ == "__main__":
  main()

"""Which linear-attention implementation a call runs, and the self-check that guards "auto".

"auto" picks the Pallas kernels on a TPU or GPU. Their compilers (Mosaic, Triton) only run on the
hardware, so before the first "auto" call of a process uses them, the kernels are compiled and run
at a small shape with the caller's heads, head size and dtype, forward and backward, and compared
with the jnp reference. On a compile error or a mismatch "auto" falls back to the XLA version for
the rest of the process, with one warning naming the error. impl="pallas" is never checked: it
runs the kernels and fails loudly.

The check runs in a thread of its own, so the caller's trace (the first call is usually being
traced inside a jit, grad or scan) and mesh context (`jax.set_mesh`) do not reach it; it compiles
ahead of time and runs on numpy arrays. It costs one small compile per head layout and dtype.
"""
import concurrent.futures
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from sana_jax.kernels.pallas_attention import relu_linear_attention_pallas
from sana_jax.kernels.reference import relu_linear_attention_reference

IMPLS = ("auto", "pallas", "xla")
CHECK_TOKENS = 300  # ragged against the 128 / 512 token tiles of both kernel structures
_passed = set()     # (platform, heads, head_dim, dtype name) whose self-check passed
_failure = []       # the first failure's text: once set, "auto" means "xla" for the process


def accelerator():
  """The default backend when it is one the kernels compile for ("tpu", "gpu"), else None."""
  backend = jax.default_backend()
  return backend if backend in ("tpu", "gpu") else None


def pallas_backends():
  """Backends "auto" may pick the kernels on: the TPU, and the GPU while jax < 0.11 (the Pallas
  Triton backend is deprecated from 0.11; docs/kernels.md says why the GPU then runs XLA)."""
  return ("tpu", "gpu") if jax.__version_info__ < (0, 11) else ("tpu",)


def tolerance(dtype):
  """Largest accepted error relative to the reference's largest entry: fp32 1e-5, else 2e-2."""
  return 1e-5 if jnp.dtype(dtype) == jnp.float32 else 2e-2


def relative_error(actual, expected):
  """max |actual - expected| / max |expected|, in float32."""
  actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
  return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-30))


def _value_and_grads(attention, q, k, v, w):
  """Output and q/k/v gradients of sum(attention(q, k, v) * w) as numpy arrays."""
  def loss(q, k, v):
    out = attention(q, k, v)
    return jnp.sum(out.astype(jnp.float32) * w), out
  fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
  (_, out), grads = fn.lower(q, k, v).compile()(q, k, v)
  return [np.asarray(x, np.float32) for x in (out, *grads)]


def compare_with_reference(batch, n, heads, head_dim, dtype, eps, kernel=None):
  """Runs `kernel` (default: the Pallas kernels) and the reference, forward and q/k/v gradients.

  Returns (ok, {"out" | "dq" | "dk" | "dv": relative error}, tolerance). Compile errors propagate.
  """
  kernel = kernel or relu_linear_attention_pallas
  rng = np.random.default_rng(n)
  shape = (batch, n, heads, head_dim)
  q, k, v, w = (rng.standard_normal(shape, np.float32) for _ in range(4))
  low = [x.astype(jnp.dtype(dtype)) for x in (q, k, v)]
  ours = _value_and_grads(lambda q, k, v: kernel(q, k, v, eps), *low, w)
  f32 = [x.astype(np.float32) for x in low]
  ref = _value_and_grads(lambda q, k, v: relu_linear_attention_reference(q, k, v, eps), *f32, w)
  tol = tolerance(dtype)
  errors = {name: relative_error(a, b) for name, a, b in zip(("out", "dq", "dk", "dv"), ours, ref)}
  return all(e <= tol for e in errors.values()), errors, tol


def _self_check(heads, head_dim, dtype):
  """None when the kernels compile and match the reference at this layout, else what went wrong."""
  try:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # no outer trace or mesh in there
      ok, errors, tol = pool.submit(compare_with_reference, 1, CHECK_TOKENS, heads, head_dim,
                                    dtype, 1e-15).result()
  except Exception as e:  # any compile or runtime error of the kernels means: do not use them
    return f"{type(e).__name__}: {str(e).strip()[:500]}"
  if ok:
    return None
  shown = ", ".join(f"{name} {e:.1e}" for name, e in errors.items())
  return f"values differ from the jnp reference ({shown}; tolerance {tol:.0e})"


def resolve_impl(impl, heads=None, head_dim=None, dtype=jnp.float32):
  """"auto" -> "pallas" on a TPU (and a GPU with jax < 0.11) once the kernels passed their
  self-check at this head layout and dtype, else "xla"; "pallas" and "xla" pass through.

  Without heads / head_dim (no call to check against), "auto" on an accelerator reports what a
  call would get if its check passes.
  """
  if impl not in IMPLS:
    raise ValueError(f"unknown attention_impl {impl!r}; expected one of {IMPLS}")
  if impl != "auto":
    return impl
  platform = accelerator()
  if platform not in pallas_backends() or _failure:
    return "xla"
  if heads is None:
    return "pallas"
  key = (platform, heads, head_dim, jnp.dtype(dtype).name)
  if key not in _passed:
    failure = _self_check(heads, head_dim, dtype)
    if failure:
      _failure.append(failure)
      warnings.warn(f"the Pallas linear-attention kernels failed their self-check on {platform} "
                    f"({heads} heads x {head_dim}, {key[3]}): {failure}. attention_impl='auto' "
                    "uses the XLA version for the rest of this process.", RuntimeWarning,
                    stacklevel=3)
      return "xla"
    _passed.add(key)
  return "pallas"

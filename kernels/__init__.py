"""Linear-attention kernels and the single entry point the model calls."""
import jax

from sana_jax.kernels.pallas_attention import relu_linear_attention_pallas
from sana_jax.kernels.reference import relu_linear_attention_reference
from sana_jax.kernels.sequence_parallel import sequence_parallel_linear_attention

IMPLS = ("auto", "pallas", "xla")


def resolve_impl(impl):
  """"auto" -> "pallas" on TPU / GPU, "xla" elsewhere; other names pass through once checked."""
  if impl not in IMPLS:
    raise ValueError(f"unknown attention_impl {impl!r}; expected one of {IMPLS}")
  if impl == "auto":
    return "pallas" if jax.default_backend() in ("tpu", "gpu") else "xla"
  return impl


def linear_attention(q, k, v, *, eps=1e-15, impl="xla", mesh=None, seq_axis=None,
                     batch_axis=None):
  """ReLU linear attention over q, k, v [B, N, H, d] (q, k pre-ReLU) -> [B, N, H, d] in v.dtype.

  impl: "xla" (pure jnp), "pallas" (Pallas kernels; interpreted on the CPU) or "auto" (Pallas on
  TPU/GPU, XLA on the CPU). With `mesh` and `seq_axis` the token axis is sharded over that mesh
  axis (batch optionally over `batch_axis`) and the attention state is psum'd across it.
  """
  impl = resolve_impl(impl)
  if (mesh is None) != (seq_axis is None):
    raise ValueError("sequence-parallel attention needs both mesh and seq_axis (got "
                     f"mesh={'set' if mesh is not None else None}, seq_axis={seq_axis!r})")
  if mesh is not None:
    return sequence_parallel_linear_attention(q, k, v, eps=eps, impl=impl, mesh=mesh,
                                              seq_axis=seq_axis, batch_axis=batch_axis)
  if impl == "pallas":
    return relu_linear_attention_pallas(q, k, v, eps)
  return relu_linear_attention_reference(q, k, v, eps)

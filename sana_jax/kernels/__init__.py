"""Linear-attention kernels and the single entry point the model calls."""
from sana_jax.kernels.pallas_attention import relu_linear_attention_pallas
from sana_jax.kernels.reference import relu_linear_attention_reference
from sana_jax.kernels.selection import IMPLS, resolve_impl
from sana_jax.kernels.sequence_parallel import sequence_parallel_linear_attention
from sana_jax.kernels.xla_attention import relu_linear_attention_xla

__all__ = ["IMPLS", "linear_attention", "relu_linear_attention_pallas", "relu_linear_attention_reference",
           "relu_linear_attention_xla", "resolve_impl", "sequence_parallel_linear_attention"]


def linear_attention(q, k, v, *, eps=1e-15, impl="xla", mesh=None, seq_axis=None,
                     batch_axis=None):
  """ReLU linear attention over q, k, v [B, N, H, d] (q, k pre-ReLU) -> [B, N, H, d] in v.dtype.

  impl: "xla" (jnp, token-chunked: xla_attention.py), "pallas" (Pallas kernels; interpreted on the CPU) or "auto" (Pallas on
  TPU/GPU once they passed a self-check at this head layout and dtype, else XLA; see selection.py).
  With `mesh` and `seq_axis` the token axis is sharded over that mesh axis (batch optionally over
  `batch_axis`) and the attention state is psum'd across it.
  """
  impl = resolve_impl(impl, *q.shape[-2:], q.dtype)
  if (mesh is None) != (seq_axis is None):
    raise ValueError("sequence-parallel attention needs both mesh and seq_axis (got "
                     f"mesh={'set' if mesh is not None else None}, seq_axis={seq_axis!r})")
  if mesh is not None:
    return sequence_parallel_linear_attention(q, k, v, eps=eps, impl=impl, mesh=mesh,
                                              seq_axis=seq_axis, batch_axis=batch_axis)
  if impl == "pallas":
    return relu_linear_attention_pallas(q, k, v, eps)
  return relu_linear_attention_xla(q, k, v, eps)

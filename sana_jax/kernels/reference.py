"""Pure-jnp ReLU linear attention: the numerical reference every kernel is tested against.

SANA's self-attention replaces softmax with a ReLU feature map and no scaling:
    out_i = sum_j v_j (k_j . q_i) / (sum_j k_j . q_i + eps)
computed as K^T V (a d x d state per head) then Q (K^T V), so the cost is O(N d^2) and nothing
N x N is ever formed. The accumulation runs in float32 whatever the input dtype, as in both
PyTorch implementations; the result is cast back to the dtype of `v`.

It is written as two stages, the state (a sum over tokens) and its application to q, so that the
sequence-parallel version can psum the state between them.
"""
import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST


def linear_attention_state(k, v):
  """k, v: [B, N, H, d] (k before the ReLU) -> K^T V [B, H, d, d], K^T 1 [B, H, d]; float32."""
  k = jax.nn.relu(k.astype(jnp.float32))
  kv = jnp.einsum("bnhd,bnhe->bhde", k, v.astype(jnp.float32), precision=_HIGHEST)
  return kv, jnp.sum(k, axis=1)


def linear_attention_apply(q, kv, k_sum, eps, out_dtype):
  """q: [B, N, H, d] (before the ReLU) and the state -> [B, N, H, d] in out_dtype."""
  q = jax.nn.relu(q.astype(jnp.float32))
  num = jnp.einsum("bnhd,bhde->bnhe", q, kv, precision=_HIGHEST)  # [B, N, H, d]
  den = jnp.einsum("bnhd,bhd->bnh", q, k_sum, precision=_HIGHEST)[..., None]  # [B, N, H, 1]
  return (num / (den + eps)).astype(out_dtype)


def relu_linear_attention_reference(q, k, v, eps=1e-15):
  """q, k, v: [B, N, H, d] (q and k before the ReLU) -> [B, N, H, d] in v.dtype."""
  return linear_attention_apply(q, *linear_attention_state(k, v), eps, v.dtype)

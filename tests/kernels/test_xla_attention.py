"""The token-chunked XLA linear attention (impl="xla") equals the jnp reference.

Values and q/k/v gradients relative to the largest reference entry: fp32 to 5e-5 (only the
summation order differs; measured <= 7e-7 for out, dk, dv, and for dq of the 8-wide heads 1.6e-5
from the reference, which is itself 1.7e-5 from a float64 evaluation while ours is 3.3e-5), bf16
inputs to 1e-2 (the bf16 rounding of the results).
Each case runs several full chunks and a ragged last one, except where N is below one chunk.
"""
import jax.numpy as jnp
import pytest

from sana_jax.kernels import xla_attention
from sana_jax.kernels.reference import relu_linear_attention_reference
from tests.kernels.test_linear_attention import _assert_close, _qkv, _value_and_grads


def test_chunk_size_keeps_a_chunk_near_a_quarter_mib():
  assert xla_attention.chunk_tokens(16384, 4, 32) == 512     # 512 x 128 lanes x 4 B = 256 KiB
  assert xla_attention.chunk_tokens(16384, 70, 32) == 32     # SANA 1.6B / 4.8B: 2240 lanes
  assert xla_attention.chunk_tokens(16384, 1, 8) == 1024     # capped
  assert xla_attention.chunk_tokens(10, 70, 32) == 10        # one chunk of the whole sequence


@pytest.mark.parametrize("shape, dtype, eps, tol", [
    ((2, 2500, 5, 8), jnp.float32, 1e-15, 5e-5),   # chunks of 1024: two full and a ragged tail
    ((1, 100, 70, 32), jnp.float32, 1e-15, 5e-5),  # chunks of 32, SANA's heads
    ((2, 77, 36, 32), jnp.bfloat16, 1e-8, 1e-2),
    ((1, 5, 3, 16), jnp.float32, 1e-15, 5e-5),     # below one chunk
    ((2, 1, 2, 8), jnp.float32, 0.5, 5e-5),        # one token: a large eps keeps dq, dk non-zero
])
def test_chunked_xla_attention_equals_the_reference(shape, dtype, eps, tol):
  q, k, v = _qkv(shape, dtype, seed=shape[1])
  out, grads = _value_and_grads(xla_attention.relu_linear_attention_xla, q, k, v, eps)
  f32 = [x.astype(jnp.float32) for x in (q, k, v)]
  ref_out, ref_grads = _value_and_grads(relu_linear_attention_reference, *f32, eps)
  assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
  _assert_close(out, ref_out, tol, "out")
  for name, g, r in zip(("dq", "dk", "dv"), grads, ref_grads):
    _assert_close(g, r, tol, name)

"""The compiled (not interpreted) kernels lower for TPU (Mosaic) and GPU (Triton) from the CPU.

`jax.export` with another platform runs the Pallas lowering for that backend without its hardware:
Mosaic's rules for block shapes (multiples of 8 x 128 or the whole axis) and Triton's power-of-2
tensors are checked here, forward and backward, at the SANA head layout (70 x 32, which leaves a
partial 128-lane group on TPU) with a token count that is not a multiple of any tile. What only the
hardware can check (Mosaic's and Triton's own compilers, speed) is not covered.
"""
import warnings

import jax
import jax.numpy as jnp
import pytest
from jax import export

from sana_jax.kernels import pallas_attention

# Pallas Triton calls carry Triton IR, which has no serialisation guarantee; we only lower here.
_TRITON = "__gpu$xla.gpu.triton"
_TARGETS = {"tpu": ("tpu", "tpu_custom_call"), "gpu": ("cuda", _TRITON)}


def _export(fn, platform, shape, dtype):
  x = jax.ShapeDtypeStruct(shape, dtype)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # jax >= 0.11: Triton is deprecated
    return export.export(jax.jit(fn), platforms=[platform],
                         disabled_checks=[export.DisabledSafetyCheck.custom_call(_TRITON)])(
                             x, x, x)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("backend", ["tpu", "gpu"])
@pytest.mark.parametrize("shape", [(2, 1100, 70, 32), (1, 4112, 36, 32)], ids=["70x32", "36x32"])
def test_forward_and_backward_kernels_lower_for_the_accelerator(backend, dtype, shape):
  platform, target = _TARGETS[backend]

  def attention(q, k, v):
    return pallas_attention.relu_linear_attention_pallas(q, k, v, 1e-15, backend=backend,
                                                         interpret=False)

  def grads(q, k, v):
    loss = lambda q, k, v: jnp.sum(attention(q, k, v).astype(jnp.float32))
    return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)

  forward = _export(attention, platform, shape, dtype)
  backward = _export(grads, platform, shape, dtype)
  assert forward.platforms == (platform,)
  # state + apply forward; with the loss kept, the backward adds apply_grad and state_grad.
  assert forward.mlir_module().count(f"@{target}(") == 2
  assert backward.mlir_module().count(f"@{target}(") == 4
  assert forward.out_avals[0].shape == shape and forward.out_avals[0].dtype == dtype
  assert [a.dtype for a in backward.out_avals] == [jnp.float32] + [dtype] * 3


def test_tpu_lowering_refuses_block_shapes_off_the_8_x_128_grid():
  # The check above is meaningful: a 96-lane group (three heads of 32) is not a legal TPU block.
  plan = pallas_attention.Plan("tpu", False, 100, 128, 32, block_tokens=16, lanes=96)

  def state(k, v):
    return pallas_attention.state(pallas_attention.to_channels(k, plan),
                                  pallas_attention.to_channels(v, plan), plan)

  x = jax.ShapeDtypeStruct((1, 100, 4, 32), jnp.float32)
  with pytest.raises(Exception, match="divisible by 8 and 128"):
    export.export(jax.jit(state), platforms=["tpu"])(x, x)

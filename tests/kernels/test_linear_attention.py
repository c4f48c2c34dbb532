"""The Pallas ReLU linear-attention kernels (interpreted on the CPU) equal the jnp reference.

Values and gradients for q, k, v; fp32 to 1e-5 and bf16 inputs to 2e-2 (errors relative to the
largest reference entry). Shapes are small because the Pallas interpreter is slow; each case still
has a ragged last token tile and, where it matters, a partial last head group.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sana_jax import kernels
from sana_jax.kernels import pallas_attention
from sana_jax.kernels.reference import relu_linear_attention_reference


def _qkv(shape, dtype=jnp.float32, seed=0):
  return tuple(jax.random.normal(k, shape, jnp.float32).astype(dtype)
               for k in jax.random.split(jax.random.PRNGKey(seed), 3))


def _value_and_grads(attn, q, k, v, eps):
  """out and d(sum(out * w))/d(q, k, v) for a fixed random cotangent w."""
  w = jax.random.normal(jax.random.PRNGKey(7), q.shape, jnp.float32)

  def loss(q, k, v):
    out = attn(q, k, v, eps)
    return jnp.sum(out.astype(jnp.float32) * w), out

  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
  return out, grads


def _assert_close(actual, expected, tol, what):
  actual = np.asarray(actual, np.float32)
  expected = np.asarray(expected, np.float32)
  err = np.max(np.abs(actual - expected)) / np.max(np.abs(expected))
  assert err <= tol, f"{what}: relative error {err:.2e} > {tol:.0e}"


def _check_against_reference(q, k, v, eps, tol, **pallas_options):
  pallas = lambda q, k, v, eps: pallas_attention.relu_linear_attention_pallas(
      q, k, v, eps, **pallas_options)
  out, grads = _value_and_grads(pallas, q, k, v, eps)
  # The reference sees the same (possibly bf16-rounded) inputs, computed in float32.
  f32 = [x.astype(jnp.float32) for x in (q, k, v)]
  ref_out, ref_grads = _value_and_grads(relu_linear_attention_reference, *f32, eps)
  assert out.dtype == v.dtype and out.shape == q.shape
  _assert_close(out, ref_out, tol, "output")
  for name, g, rg, x in zip("qkv", grads, ref_grads, (q, k, v)):
    assert g.dtype == x.dtype
    _assert_close(g, rg, tol, f"d{name}")


@pytest.mark.parametrize("backend", ["tpu", "gpu"])
def test_fp32_ragged_tokens_and_partial_head_group_match_reference(backend):
  # B=2, N=37 over tiles of 16 (ragged last tile), 5 heads in groups of 2 (partial last group).
  q, k, v = _qkv((2, 37, 5, 8))
  _check_against_reference(q, k, v, 1e-6, 1e-5, backend=backend, block_tokens=16,
                           block_heads=2)


def test_gpu_reductions_split_over_token_chunks_match_reference():
  # 37 tokens = 5 tiles of 8; 3 chunks of 2 tiles: padded to 48 tokens, the last chunk holds the
  # ragged tile and a whole padding tile, and the partial states of the chunks are summed.
  q, k, v = _qkv((2, 37, 4, 8), seed=6)
  plan = pallas_attention.make_plan(37, 4, 8, jnp.float32, batch=2, backend="gpu",
                                    block_tokens=8, token_chunks=3)
  assert (plan.chunks, plan.tiles_per_chunk, plan.n_padded) == (3, 2, 48)
  _check_against_reference(q, k, v, 1e-6, 1e-5, backend="gpu", block_tokens=8, token_chunks=3)


@pytest.mark.slow  # the TPU-semantics interpreter is slow; the generic one also NaN-pads edges
def test_tpu_semantics_interpreter_with_nan_filled_edges_matches_reference():
  # pltpu.InterpretParams returns NaN for the out-of-bounds part of edge blocks: any missing mask
  # would poison the state and every output.
  q, k, v = _qkv((1, 21, 3, 8), seed=1)
  _check_against_reference(q, k, v, 1e-6, 1e-5, backend="tpu", interpret="tpu",
                           block_tokens=8, block_heads=2)


@pytest.mark.parametrize("backend", ["tpu", pytest.param("gpu", marks=pytest.mark.slow)])
def test_bf16_inputs_match_float32_reference(backend):
  q, k, v = _qkv((2, 24, 4, 16), jnp.bfloat16, seed=2)
  _check_against_reference(q, k, v, 1e-6, 2e-2, backend=backend, block_tokens=16)


def test_single_token_matches_reference():
  # With N = 1, out = v (q'.k') / (q'.k' + eps); a large eps keeps the q, k gradients away from 0
  # so that they are compared meaningfully.
  q, k, v = _qkv((2, 1, 3, 8), seed=3)
  q, k = jnp.abs(q), jnp.abs(k)
  _check_against_reference(q, k, v, 0.5, 1e-5)


def test_sana_head_shape_70_heads_of_32_matches_reference():
  # The 1.6B / 4.8B layout: 2240 channels = 17 full groups of 4 heads (128 lanes) + one of 2.
  q, k, v = _qkv((1, 20, 70, 32), seed=4)
  _check_against_reference(q, k, v, 1e-15, 1e-5, backend="tpu", block_tokens=16)


def test_tpu_plan_packs_four_heads_of_32_per_128_lane_group():
  plan = pallas_attention.make_plan(16384, 70, 32, jnp.bfloat16, backend="tpu", interpret=False)
  assert (plan.lanes, plan.groups, plan.block_tokens, plan.tiles) == (128, 18, 512, 32)


def test_gpu_plan_uses_power_of_two_groups_that_divide_the_heads():
  plan = pallas_attention.make_plan(1000, 70, 32, jnp.bfloat16, backend="gpu", interpret=False)
  assert (plan.lanes, plan.groups) == (64, 35)
  assert (plan.block_tokens, plan.n_padded) == (128, 1024)


def test_gpu_plan_splits_long_reductions_until_the_gpu_is_full():
  # 16K tokens at batch 1: 35 head groups alone would leave most of an H100's 132 SMs idle.
  plan = pallas_attention.make_plan(16384, 70, 32, jnp.bfloat16, backend="gpu", interpret=False)
  assert (plan.chunks, plan.tiles_per_chunk, plan.n_padded) == (8, 16, 16384)
  # A big batch already fills it; a ragged count pads by less than one chunk.
  assert pallas_attention.make_plan(16384, 70, 32, jnp.bfloat16, batch=8, backend="gpu").chunks == 1
  ragged = pallas_attention.make_plan(4112, 70, 32, jnp.bfloat16, backend="gpu")  # 33 tiles
  assert (ragged.chunks, ragged.tiles_per_chunk, ragged.n_padded) == (7, 5, 4480)
  assert ragged.n_padded - 4112 < ragged.tiles_per_chunk * ragged.block_tokens


def test_auto_impl_is_xla_on_cpu_and_pallas_impl_runs_interpreted():
  q, k, v = _qkv((1, 10, 2, 8), seed=5)
  ref = relu_linear_attention_reference(q, k, v, 1e-6)
  assert kernels.resolve_impl("auto") == "xla"
  _assert_close(kernels.linear_attention(q, k, v, eps=1e-6, impl="auto"), ref, 1e-6, "xla")
  _assert_close(kernels.linear_attention(q, k, v, eps=1e-6, impl="pallas"), ref, 1e-5, "pallas")


def test_bad_arguments_raise_clear_errors():
  q, k, v = _qkv((1, 8, 2, 8))
  with pytest.raises(ValueError, match="attention_impl"):
    kernels.linear_attention(q, k, v, impl="flash")
  with pytest.raises(ValueError, match="one shape"):
    kernels.linear_attention(q, k[:, :4], v, impl="pallas")
  with pytest.raises(ValueError, match="mesh and seq_axis"):
    kernels.linear_attention(q, k, v, seq_axis="seq")
  with pytest.raises(ValueError, match="multiple of 16"):
    pallas_attention.make_plan(64, 2, 8, jnp.bfloat16, backend="tpu", block_tokens=8)
  with pytest.raises(ValueError, match="token_chunks"):
    pallas_attention.make_plan(64, 2, 8, jnp.float32, backend="tpu", token_chunks=4)

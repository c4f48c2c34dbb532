"""Depth growth: function preservation, the documented layer maps, the NVlabs init of new blocks."""
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sana_jax.scaling.growth import grow, layer_map
from sana_jax.scaling.stack import block_params
from tests.scaling.builders import forward, inputs, tiny_model


@pytest.fixture(scope="module")
def source():
  return tiny_model(depth=2, qk_norm=True)


@pytest.fixture(scope="module")
def plain():
  return tiny_model(depth=2, qk_norm=False)


@pytest.fixture(scope="module")
def batch():
  return tuple(jnp.asarray(a) for a in inputs())


def _grow_quietly(*args, **kwargs):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return grow(*args, **kwargs)


def test_constant_growth_of_a_qk_norm_model_is_function_preserving(source, batch):
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # a function-preserving growth must not warn
    grown = grow(source, 4, "constant")
  assert grown.cfg.depth == 4 and grown.cfg.qk_norm
  np.testing.assert_allclose(forward(grown, *batch), forward(source, *batch), atol=1e-6, rtol=0)


def test_constant_growth_copies_source_blocks_and_initialises_new_ones_as_nvlabs(source):
  grown = block_params(grow(source, 6, "constant", seed=1))
  src = block_params(source)
  for path, value in grown.items():
    np.testing.assert_array_equal(value[:2], src[path], err_msg=str(path))
  new = {p: np.asarray(v[2:]) for p, v in grown.items()}
  for path in [("attn", "to_out", "kernel"), ("attn", "to_out", "bias"), ("cross_attn", "to_out", "kernel"),
               ("cross_attn", "to_out", "bias"), ("ffn", "conv_point", "kernel"), ("cross_attn", "to_q", "bias"),
               ("cross_attn", "to_k", "bias"), ("cross_attn", "to_v", "bias")]:
    assert not new[path].any(), path
  for path in [("attn", "norm_q", "weight"), ("attn", "norm_k", "weight"), ("cross_attn", "norm_q", "weight")]:
    np.testing.assert_array_equal(new[path], 1.0)
  assert new[("ffn", "conv_depth", "kernel")].std() == pytest.approx(0.2, rel=0.15)
  for path in [("attn", "to_q", "kernel"), ("ffn", "conv_inverted", "kernel"), ("scale_shift_table",)]:
    assert new[path].std() == pytest.approx(0.02, rel=0.15), path


@pytest.mark.slow  # compiles a backward pass (46 s measured on the busy shared CPU)
def test_new_identity_blocks_still_receive_gradients(source, batch):
  grown = grow(source, 4, "constant")

  def loss(model):
    return jnp.mean(model(*batch) ** 2)

  grads = nnx.jit(nnx.grad(loss))(grown)
  out_grad = np.asarray(grads.blocks.attn.to_out.kernel[...])[2:]  # the new blocks' zero out-projections
  assert np.abs(out_grad).max(axis=(1, 2)).min() > 0


def test_cyclic_layer_map_repeats_the_source_stack():
  assert layer_map("cyclic", 3, 7) == [0, 1, 2, 0, 1, 2, 0]


def test_block_expand_layer_map_repeats_each_block_in_a_row():
  assert layer_map("block_expand", 3, 6) == [0, 0, 1, 1, 2, 2]
  with pytest.raises(ValueError, match="multiple of the 3 source layers"):
    layer_map("block_expand", 3, 7)


@pytest.mark.parametrize("strategy", ["cyclic", "block_expand"])
def test_copying_strategies_place_source_blocks_by_their_layer_map(source, strategy):
  grown = block_params(_grow_quietly(source, 4, strategy))
  src = block_params(source)
  for target, origin in enumerate(layer_map(strategy, 2, 4)):
    for path in src:
      np.testing.assert_array_equal(grown[path][target], src[path][origin], err_msg=f"{strategy} {target} {path}")


@pytest.mark.parametrize("strategy", ["cyclic", "block_expand"])
def test_zero_gate_makes_repeated_copies_identities(source, batch, strategy):
  grown = grow(source, 4, strategy, zero_gate=True)
  np.testing.assert_allclose(forward(grown, *batch), forward(source, *batch), atol=1e-6, rtol=0)


def test_random_strategy_gives_new_blocks_a_fresh_init_and_warns(source):
  with pytest.warns(UserWarning, match="random strategy"):
    grown = block_params(grow(source, 4, "random", seed=7))
  assert np.abs(np.asarray(grown[("attn", "to_out", "kernel")][2:])).min() > 0
  np.testing.assert_array_equal(grown[("attn", "to_q", "kernel")][:2], block_params(source)[("attn", "to_q", "kernel")])


def test_growing_without_qk_norm_into_qk_norm_warns_it_is_not_function_preserving(plain, batch):
  with pytest.warns(UserWarning, match="not function preserving: q/k RMSNorm is switched on"):
    grown = grow(plain, 4, qk_norm=True)
  assert grown.cfg.qk_norm
  assert float(jnp.abs(forward(grown, *batch) - forward(plain, *batch)).max()) > 1e-3


def test_growing_without_qk_norm_keeping_the_architecture_is_function_preserving(plain, batch):
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    grown = grow(plain, 4)
  np.testing.assert_allclose(forward(grown, *batch), forward(plain, *batch), atol=1e-6, rtol=0)


def test_source_layers_keeps_only_the_leading_blocks_and_warns(source):
  with pytest.warns(UserWarning, match="only the first 1 of the 2 source blocks"):
    grown = block_params(grow(source, 4, source_layers=1))
  src = block_params(source)
  np.testing.assert_array_equal(grown[("ffn", "conv_inverted", "kernel")][:1], src[("ffn", "conv_inverted", "kernel")][:1])
  assert not np.asarray(grown[("ffn", "conv_point", "kernel")][1:]).any()


@pytest.mark.parametrize("kwargs, message", [
    (dict(target_depth=1), "at least the 2 source layers"),
    (dict(target_depth=6, strategy="stack"), "unknown growth strategy"),
    (dict(target_depth=6, source_layers=3), "source_layers must be in 1..2"),
    (dict(target_depth=6, qk_norm=False), "cannot remove"),
    (dict(target_depth=6, zero_gate=True), "zero_gate applies"),
])
def test_bad_growth_requests_name_the_problem(source, kwargs, message):
  with pytest.raises(ValueError, match=message):
    grow(source, **kwargs)

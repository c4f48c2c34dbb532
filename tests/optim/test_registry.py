"""Optimisers by name from the config: schedule, clipping, decay mask, and the real tiny model."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sana_jax.models.transformer import SanaTransformer
from sana_jax.optim import OPTIMIZERS, build_optimizer, decay_mask, default_optimizer_config, make_schedule
from tests.training.helpers import tiny_model_config


def test_default_config_is_sanas_came_setting():
  cfg = default_optimizer_config()
  assert (cfg.name, cfg.learning_rate, cfg.warmup_steps, cfg.grad_clip, cfg.weight_decay) == (
      "came", 1e-4, 2000, 0.1, 0.0)


def test_schedules_warm_up_linearly_then_hold_or_decay():
  cfg = default_optimizer_config()
  cfg.update(learning_rate=1.0, warmup_steps=10)
  constant = make_schedule(cfg)
  assert float(constant(5)) == pytest.approx(0.5) and float(constant(1000)) == pytest.approx(1.0)
  cfg.update(schedule="cosine", decay_steps=110)
  cosine = make_schedule(cfg)
  assert float(cosine(10)) == pytest.approx(1.0)
  assert float(cosine(60)) == pytest.approx(0.5, abs=1e-6) and float(cosine(110)) == pytest.approx(0.0)


def test_decay_mask_skips_biases_norm_scales_and_per_layer_vectors():
  params = {"blocks": {"kernel": jnp.zeros((2, 4, 4)), "bias": jnp.zeros((2, 4)),
                       "norm_q": {"weight": jnp.zeros((2, 4))}, "table": jnp.zeros((2, 6, 4))},
            "proj": {"kernel": jnp.zeros((4, 4)), "bias": jnp.zeros((4,))},
            "final_norm": {"scale": jnp.zeros((4, 4))}}
  mask = decay_mask("^blocks/")(params)
  assert mask == {"blocks": {"kernel": True, "bias": False, "norm_q": {"weight": False}, "table": True},
                  "proj": {"kernel": True, "bias": False}, "final_norm": {"scale": False}}


def test_weight_decay_applies_to_kernels_only():
  cfg = default_optimizer_config()
  cfg.update(name="came", weight_decay=0.5, warmup_steps=0, learning_rate=0.1, grad_clip=0.0)
  tx = build_optimizer(cfg)
  params = {"kernel": jnp.ones((4, 4)), "bias": jnp.ones((4,))}
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  # Zero gradient: CAME's own direction is 0, so only decay (-lr * wd * p) moves the kernel.
  np.testing.assert_allclose(updates["kernel"], -0.05, rtol=1e-6)
  np.testing.assert_array_equal(updates["bias"], 0.0)


def test_gradients_are_clipped_by_global_norm_before_the_optimiser():
  cfg = default_optimizer_config()
  cfg.update(name="adamw", warmup_steps=0, learning_rate=1.0, grad_clip=0.1)
  clipped = build_optimizer(cfg)
  cfg.grad_clip = 0.0
  unclipped = build_optimizer(cfg)
  params = {"w": jnp.zeros((3,))}
  grads = {"w": jnp.array([30.0, 40.0, 0.0])}                       # norm 50 -> 0.1
  u1, _ = clipped.update(grads, clipped.init(params), params)
  u2, _ = unclipped.update({"w": grads["w"] * (0.1 / 50)}, unclipped.init(params), params)
  np.testing.assert_allclose(u1["w"], u2["w"], rtol=1e-6)


def test_bad_config_values_are_named_in_the_error():
  cfg = default_optimizer_config()
  cfg.name = "lamb"
  with pytest.raises(ValueError, match="optimizer.name 'lamb'"):
    build_optimizer(cfg)
  cfg = default_optimizer_config()
  cfg.schedule = "linear"
  with pytest.raises(ValueError, match="optimizer.schedule"):
    build_optimizer(cfg)
  cfg = default_optimizer_config()
  cfg.eps = 1e-8
  with pytest.raises(ValueError, match="optimizer.eps for came is a pair"):
    build_optimizer(cfg)
  cfg = default_optimizer_config()
  cfg.update(schedule="cosine", decay_steps=100)
  with pytest.raises(ValueError, match="decay_steps"):
    build_optimizer(cfg)


@pytest.fixture(scope="module")
def tiny_model_params():
  """The tiny model's parameter State with zeros for values (shapes from nnx.eval_shape)."""
  cfg = tiny_model_config()
  abstract = nnx.state(nnx.eval_shape(lambda: SanaTransformer(cfg, rngs=nnx.Rngs(0))), nnx.Param)
  return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), abstract)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_name_builds_an_optimizer_that_descends(name):
  cfg = default_optimizer_config()
  cfg.update(name=name, warmup_steps=0, learning_rate=0.1, grad_clip=0.0)
  tx = build_optimizer(cfg)
  params = {"w": jnp.ones((4, 3)), "b": jnp.ones((3,))}
  updates, _ = tx.update(params, tx.init(params), params)          # gradient of |p|^2 / 2
  assert all(bool(jnp.all(u < 0)) for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("name", ["came_8bit", "adamw_8bit"])
def test_8bit_optimizers_update_the_tiny_sana_transformer(name, tiny_model_params):
  """The nnx parameter State (Variables, as the training step passes it) in, finite updates of
  the same structure out; stacked block kernels are factored per layer, quantised where large."""
  cfg = default_optimizer_config()
  cfg.update(name=name, warmup_steps=0, weight_decay=0.01, min_8bit_size=1024, block_size=32)
  tx = build_optimizer(cfg)
  params = tiny_model_params
  state = tx.init(params)
  grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.01, p.dtype), params)
  updates, state = jax.jit(tx.update)(grads, state, params)
  assert jax.tree.structure(updates) == jax.tree.structure(params)
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
  inner = state[1]

  def leaf(tree, *path):
    for key in path:
      tree = tree[key]
    return jax.tree.leaves(tree)[0]
  if name == "came_8bit":
    assert leaf(inner.nu_row, "blocks", "attn", "to_q", "kernel").shape == (2, 1, 64)  # per layer
    mu = leaf(inner.mu, "blocks", "ffn", "conv_inverted", "kernel")   # [2, 64, 320]
    assert mu.dtype == jnp.uint8
    depthwise = leaf(inner.nu, "blocks", "ffn", "conv_depth", "kernel")
    assert depthwise.shape == (2, 3, 3, 1, 320)                     # not factored
  if name == "adamw_8bit":
    assert leaf(inner.mu, "blocks", "ffn", "conv_inverted", "kernel").dtype == jnp.uint8
    assert leaf(inner.mu, "proj_out", "bias").dtype == jnp.float32

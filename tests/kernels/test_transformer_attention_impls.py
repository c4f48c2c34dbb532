"""The whole tiny SANA transformer gives the same outputs and gradients with attention_impl "xla"
(jnp reference) and "pallas" (the kernels, interpreted on the CPU), from the same weights."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sana_jax.models.transformer import SanaTransformer
from tests.training.helpers import tiny_model_config


def _model(impl):
  cfg = tiny_model_config()
  cfg.attention_impl = impl
  return SanaTransformer(cfg, rngs=nnx.Rngs(0)), cfg  # same seed -> same weights for both impls


def _loss_and_grads(model, latents, timesteps, text, mask):
  graphdef, params = nnx.split(model, nnx.Param)

  def loss(params):
    out = nnx.merge(graphdef, params)(latents, timesteps, text, mask)
    return jnp.mean(out ** 2), out

  (value, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return value, out, grads


def test_tiny_transformer_outputs_and_grads_agree_between_xla_and_pallas():
  xla_model, cfg = _model("xla")
  pallas_model, _ = _model("pallas")
  rng = np.random.default_rng(0)
  # N = 20 tokens (a non-square latent), two prompts of different lengths.
  latents = jnp.asarray(rng.standard_normal((2, 4, 5, cfg.in_channels)), jnp.float32)
  timesteps = jnp.asarray([10.0, 800.0])
  text = jnp.asarray(rng.standard_normal((2, 6, cfg.caption_channels)), jnp.float32)
  mask = jnp.asarray([[1, 1, 1, 1, 0, 0], [1] * 6])
  xla = _loss_and_grads(xla_model, latents, timesteps, text, mask)
  pallas = _loss_and_grads(pallas_model, latents, timesteps, text, mask)
  np.testing.assert_allclose(pallas[0], xla[0], rtol=1e-5)
  np.testing.assert_allclose(pallas[1], xla[1], rtol=1e-5, atol=1e-5)
  flat_x = jax.tree.leaves(xla[2])
  flat_p = jax.tree.leaves(pallas[2])
  assert len(flat_x) == len(flat_p) > 0
  for gx, gp in zip(flat_x, flat_p):
    scale = float(jnp.max(jnp.abs(gx))) or 1.0
    np.testing.assert_allclose(gp, gx, rtol=1e-4, atol=1e-5 * scale)

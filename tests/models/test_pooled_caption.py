"""model.pooled_caption: the caption's mean token, projected, added to the timestep embedding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sana_jax.convert.tensors import CheckpointError
from sana_jax.convert.transformer import config_to_diffusers
from sana_jax.models.transformer import SanaTransformer
from tests.training.helpers import fixed_batch, tiny_config


def _model(pooled=True):
  cfg = tiny_config()
  cfg.model.pooled_caption = pooled
  return cfg, SanaTransformer(cfg.model, rngs=nnx.Rngs(0))


def _args(cfg, mask=None):
  batch = fixed_batch(cfg)
  return (jnp.asarray(batch["latents"]), jnp.full((8,), 500.0), jnp.asarray(batch["text"]),
          jnp.asarray(batch["text_mask"] if mask is None else mask))


def test_a_new_projection_leaves_the_function_unchanged_and_adds_d_squared_plus_d_parameters():
  cfg, model = _model()
  args = _args(cfg)
  with_pooled = np.asarray(model(*args))
  count = lambda: sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  n_with = count()
  del model.pooled_proj  # the same weights otherwise
  np.testing.assert_array_equal(np.asarray(model(*args)), with_pooled)  # zero-initialised kernel
  d = cfg.model.hidden_size
  assert n_with - count() == d * d + d


def test_the_pooled_caption_is_the_masked_mean_of_the_caption_tokens():
  cfg, model = _model()
  model.pooled_proj.kernel[...] = 0.1 * jax.random.normal(jax.random.key(1), model.pooled_proj.kernel.shape)
  latents, timesteps, text, mask = _args(cfg)
  t = lambda txt, m: np.asarray(model.embed_conditions(timesteps, txt, m)[0])
  base = t(text, mask)
  padded = np.asarray(mask) == 0
  assert padded.any()
  # what padding holds does not matter; a word does, and so does dropping it from the mean
  np.testing.assert_allclose(t(jnp.where(jnp.asarray(padded)[..., None], 9.0, text), mask), base, atol=1e-6)
  assert np.abs(t(text.at[:, 0].multiply(-1.0), mask) - base).max() > 1e-3
  features = np.asarray(model.embed_conditions(timesteps, text, mask)[2], np.float32)
  weights = np.asarray(mask, np.float32)[..., None]
  pooled = (features * weights).sum(1) / weights.sum(1)
  without = _model(pooled=False)[1]  # the same seed: the same timestep MLP weights
  t_plain = np.asarray(without.embed_conditions(timesteps, text, mask)[0])
  want = t_plain + np.asarray(model.pooled_proj(jax.nn.silu(jnp.asarray(pooled))))
  np.testing.assert_allclose(base, want, rtol=1e-5, atol=1e-5)  # float32 rounding of a mean


def test_the_projection_learns():
  cfg, model = _model()
  latents, timesteps, text, mask = _args(cfg)
  noise = jax.random.normal(jax.random.key(3), latents.shape)
  loss = lambda m: jnp.mean(jnp.square(m(0.5 * latents + 0.5 * noise, timesteps, text, mask) - (noise - latents)))
  grads = nnx.grad(loss)(model)
  assert float(jnp.abs(grads.pooled_proj.kernel[...]).max()) > 0


def test_models_with_a_pooled_caption_are_not_exported_for_diffusers():
  cfg, _ = _model()
  cfg.model.prediction = "velocity"
  with pytest.raises(CheckpointError, match="pooled caption.*cannot be exported"):
    config_to_diffusers(cfg.model)
  cfg.model.pooled_caption = False
  assert config_to_diffusers(cfg.model)["num_layers"] == cfg.model.depth


def test_a_base_checkpoint_without_the_pooled_caption_is_refused_by_name():
  from sana_jax.training.adapter import ARCHITECTURE_KEYS, check_architecture
  cfg = tiny_config()  # pooled caption, x-prediction
  older = {k: cfg.model[k] for k in ARCHITECTURE_KEYS if k not in ("pooled_caption", "prediction")}
  with pytest.raises(ValueError, match=r"'pooled_caption': \(False, True\), 'prediction': \('velocity', 'x0'\)"):
    check_architecture(older, cfg.model, "base")  # a config from before both keys: False, velocity
  cfg.model.update(pooled_caption=False, prediction="velocity")
  check_architecture(older, cfg.model, "base")

"""model.prediction="x0": the network's output is read as the clean latent and returned as the velocity."""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sana_jax.convert.tensors import CheckpointError
from sana_jax.convert.transformer import config_to_diffusers
from sana_jax.models.transformer import X0_MIN_SIGMA, SanaTransformer
from tests.training.helpers import fixed_batch, tiny_config


def test_an_x0_model_returns_the_velocity_of_its_clean_latent_guess():
  cfg = tiny_config()
  cfg.model.prediction = "velocity"
  velocity_model = SanaTransformer(cfg.model, rngs=nnx.Rngs(0))
  cfg.model.prediction = "x0"
  x0_model = SanaTransformer(cfg.model, rngs=nnx.Rngs(0))  # the same weights: prediction is not a shape
  batch = fixed_batch(cfg)
  sigma = np.array([1.0, 0.9, 0.5, 0.2, 0.06, 0.05, 0.01, 0.0], np.float32)  # the last three clipped
  args = (jnp.asarray(batch["latents"]), jnp.asarray(sigma * 1000), jnp.asarray(batch["text"]),
          jnp.asarray(batch["text_mask"]))
  guess = np.asarray(velocity_model(*args))  # the same network output, taken as it is
  got = np.asarray(x0_model(*args))
  want = (batch["latents"] - guess) / np.maximum(sigma, X0_MIN_SIGMA)[:, None, None, None]
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)  # float32 rounding of one division
  assert np.isfinite(got).all()


def test_x0_models_are_not_exported_for_diffusers_and_unknown_values_are_refused():
  cfg = tiny_config()
  cfg.model.prediction = "x0"
  with pytest.raises(CheckpointError, match="predicts the clean latent.*cannot be exported"):
    config_to_diffusers(cfg.model)
  cfg.model.prediction = "epsilon"
  with pytest.raises(ValueError, match="unknown model.prediction 'epsilon'"):
    SanaTransformer(cfg.model, rngs=nnx.Rngs(0))

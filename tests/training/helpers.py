"""Small shared builders for the training tests: a tiny config and a fixed batch."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from sana_jax import configs
from sana_jax.training.train_state import TrainState


def tiny_config(**train_overrides):
  """The tiny preset shrunk further (compile time dominates these tests), with the parameter-free
  space-to-depth codec instead of the fitted autoencoder (tests/training/test_autoencoder_fit.py
  covers that one)."""
  cfg = configs.get_config("tiny")
  cfg.model.update(in_channels=4, out_channels=4, hidden_size=64, depth=2, cross_num_heads=2,
                   cross_head_dim=32, caption_channels=32)
  cfg.codecs.update(autoencoder="space_to_depth", scaling_factor=5.75)
  cfg.train.update(batch_size=8, caption_dropout=0.25, **train_overrides)
  return cfg


def tiny_model_config():
  """The tiny preset's model as the 2-block, 48-channel velocity network without the pooled caption
  that the mechanics tests (LoRA layers, attention implementations, optimiser layouts) were written
  for: they count its blocks, and their
  absolute tolerances are for velocity outputs (an x0 model divides by sigma, up to 20x)."""
  cfg = configs.get_config("tiny").model
  # 48 channels: the 4x4 space-to-depth latents these tests were written for
  cfg.update(depth=2, scan_unroll=2, prediction="velocity", pooled_caption=False, in_channels=48,
             out_channels=48)
  return cfg


def fixed_batch(cfg, size=8, height=8, tokens=6, seed=0):
  rng = np.random.default_rng(seed)
  mask = np.ones((size, tokens), np.int32)
  mask[:, tokens // 2:] = rng.random((size, tokens - tokens // 2)) > 0.5
  return {"latents": rng.normal(size=(size, height, height, cfg.model.in_channels)).astype(np.float32),
          "text": rng.normal(size=(size, tokens, cfg.model.caption_channels)).astype(np.float32),
          "text_mask": mask}


def null_text(cfg, tokens=6):
  return np.random.default_rng(99).normal(size=(tokens, cfg.model.caption_channels)).astype(np.float32)


def sgd_momentum():
  """An optimiser whose update is linear in the gradient (Adam's first step, ~sign(g), would turn
  float rounding in near-zero gradients into large parameter differences)."""
  return optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1, momentum=0.9))


class LinearVelocity(nnx.Module):
  """A stand-in with the transformer's call contract, cheap to compile: velocity = a per-pixel
  linear map of (latents, pooled caption, timestep)."""

  def __init__(self, channels, caption_channels, *, rngs):
    self.proj = nnx.Linear(channels + caption_channels + 1, channels, rngs=rngs)

  def __call__(self, latents, timesteps, text, text_mask):
    b, h, w, _ = latents.shape
    pooled = (text * text_mask[..., None]).sum(1) / text_mask.sum(1, keepdims=True)  # [B, C]
    cond = jnp.concatenate([pooled, timesteps[:, None] / 1000.0], -1)[:, None, None]
    return self.proj(jnp.concatenate([latents, jnp.broadcast_to(cond, (b, h, w, cond.shape[-1]))], -1))


def linear_state(cfg, tx, ema=False):
  """(graphdef, TrainState) of a LinearVelocity model."""
  model = LinearVelocity(cfg.model.in_channels, cfg.model.caption_channels, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     ema_params=jax.tree.map(jnp.copy, params) if ema else None)
  return graphdef, state

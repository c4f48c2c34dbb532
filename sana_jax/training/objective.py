"""Rectified-flow training objective of SANA (docs/architecture.md).

A clean latent x0 and noise eps are mixed as x_t = (1 - sigma) x0 + sigma eps; the model sees
timestep sigma * 1000 and must predict the velocity eps - x0. sigma is drawn on the 1000-point
training grid by a logit-normal index and then shifted towards noise by `flow_shift`:
    i = floor(sigmoid(N(mean, std)) * 1000),  sigma = shift(grid[i]),  grid = linspace(0, 0.999, 1000)
    shift(s) = flow_shift * s / (1 + (flow_shift - 1) * s)
The loss is the plain (unweighted) mean squared error. With DreamBooth prior preservation the
batch marks its class-image rows (batch["prior"] = 1) and the loss is, as in diffusers'
train_dreambooth_lora_sana.py, mean(instance rows) + prior_loss_weight * mean(class rows).
Caption dropout swaps a sample's caption embedding for the null-prompt embedding; given the null
prompt's mask too, the mask is swapped with it, so the unconditional branch is trained on exactly
what classifier-free guidance feeds it at sampling time ("" encoded with its own mask, as diffusers'
SanaPipeline and our pipeline do). Without it the caption's mask is kept (NVlabs' dropout).
"""
import jax
import jax.numpy as jnp

from sana_jax.sampling.schedulers import shift_sigma

NUM_TRAIN_TIMESTEPS = 1000


def sample_sigmas(rng, batch_size, *, flow_shift, logit_mean=0.0, logit_std=1.0):
  """Logit-normal index on the training grid, shifted: -> sigma [B] float32 in [0, 0.999]."""
  u = jax.nn.sigmoid(logit_mean + logit_std * jax.random.normal(rng, (batch_size,), jnp.float32))
  index = jnp.clip(jnp.floor(u * NUM_TRAIN_TIMESTEPS), 0, NUM_TRAIN_TIMESTEPS - 1)
  grid = jnp.linspace(0.0, 0.999, NUM_TRAIN_TIMESTEPS, dtype=jnp.float32)
  return shift_sigma(grid[index.astype(jnp.int32)], flow_shift)


def noisy_latents(x0, noise, sigma):
  """x_t = (1 - sigma) x0 + sigma noise, sigma [B] broadcast over [B, H, W, C]."""
  s = sigma.reshape((-1,) + (1,) * (x0.ndim - 1)).astype(x0.dtype)
  return (1.0 - s) * x0 + s * noise


def drop_captions(rng, text, null_text, probability, text_mask=None, null_mask=None):
  """Replaces each sample's caption [B, L, C] by the null prompt [L, C] with `probability`.

  With text_mask [B, L] and null_mask [L] the dropped rows' masks become null_mask too;
  -> (text, text_mask).
  """
  if probability <= 0.0:
    return text, text_mask
  if null_text.shape != text.shape[1:]:
    raise ValueError(f"null-prompt embedding must be [L, C]={text.shape[1:]}, got {null_text.shape}")
  drop = jax.random.uniform(rng, (text.shape[0],)) < probability
  text = jnp.where(drop[:, None, None], null_text[None].astype(text.dtype), text)
  if null_mask is not None and text_mask is not None:
    if null_mask.shape != text_mask.shape[1:]:
      raise ValueError(f"null-prompt mask must be [L]={text_mask.shape[1:]}, got {null_mask.shape}")
    text_mask = jnp.where(drop[:, None], null_mask[None].astype(text_mask.dtype), text_mask)
  return text, text_mask


def flow_matching_loss(model, batch, rng, *, null_text, flow_shift, logit_mean=0.0, logit_std=1.0,
                       caption_dropout=0.0, null_mask=None, prior_loss_weight=1.0):
  """Mean squared velocity error of `model` on one batch.

  batch: "latents" [B, H, W, C] (already scaled), "text" [B, L, C_text], "text_mask" [B, L];
    optional "prior" [B] (1 = a class image of prior preservation, weighted by prior_loss_weight).
  Returns (loss, aux) with aux = {"sigma": [B]} for logging.
  """
  x0 = batch["latents"].astype(jnp.float32)
  rng_sigma, rng_noise, rng_drop = jax.random.split(rng, 3)
  sigma = sample_sigmas(rng_sigma, x0.shape[0], flow_shift=flow_shift, logit_mean=logit_mean,
                        logit_std=logit_std)
  noise = jax.random.normal(rng_noise, x0.shape, jnp.float32)
  text, text_mask = drop_captions(rng_drop, batch["text"], null_text, caption_dropout,
                                  batch["text_mask"], null_mask)
  x_t = noisy_latents(x0, noise, sigma)
  velocity = model(x_t, sigma * NUM_TRAIN_TIMESTEPS, text, text_mask)
  error = jnp.square(velocity.astype(jnp.float32) - (noise - x0))
  if "prior" not in batch:
    return jnp.mean(error), {"sigma": sigma}
  per_sample = jnp.mean(error, axis=tuple(range(1, error.ndim)))  # [B]
  prior = batch["prior"].astype(jnp.float32)
  instance = jnp.sum(per_sample * (1.0 - prior)) / jnp.maximum(jnp.sum(1.0 - prior), 1.0)
  class_term = jnp.sum(per_sample * prior) / jnp.maximum(jnp.sum(prior), 1.0)
  return instance + prior_loss_weight * class_term, {"sigma": sigma}

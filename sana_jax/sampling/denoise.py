"""The denoising loop: noise latents -> clean latents with a flow scheduler and classifier-free guidance.

`sample_loop` is traceable: call it inside `jax.jit` / `nnx.jit` (with the model and the scheduler as
arguments) and the whole loop becomes one compiled `lax.fori_loop`, the velocity function traced
once whatever the number of steps. It follows `diffusers.SanaPipeline`'s loop: latents in float32,
the model's velocity cast to float32, conditional and unconditional halves through the model in one
batched call (unconditional first), v = v_u + g (v_c - v_u).
"""
from typing import Callable

import jax
import jax.numpy as jnp


def uses_guidance(guidance_scale) -> bool:
  """diffusers runs the unconditional branch only for guidance_scale > 1; a traced scale always runs it."""
  try:
    return float(guidance_scale) > 1.0
  except jax.errors.ConcretizationTypeError:
    return True


def sample_loop(velocity_fn: Callable, latents, scheduler, guidance_scale, text, text_mask,
                negative_text=None, negative_text_mask=None, *, timestep_scale: float = 1.0,
                guidance_interval=None, progress_fn: Callable | None = None):
  """Runs every step of `scheduler` from `latents` and returns the final latents [B, H, W, C] float32.

  velocity_fn(latents [b, H, W, C], timesteps [b] in 0..1000, text [b, L, D], text_mask [b, L]) -> [b, H, W, C]
    (the SanaTransformer call contract); b is 2B when guidance runs.
  scheduler: a FlowEulerScheduler or FlowDPMSolverScheduler (schedulers.py).
  guidance_scale: a Python number, or a traced scalar (then guidance always runs).
  text, text_mask: the prompt embedding [B, L, D] and its mask [B, L] (1 = token).
  negative_text, negative_text_mask: the negative-prompt embedding, [B or 1, L, D] / [B or 1, L];
    needed when guidance runs.
  timestep_scale: multiplies the model's timesteps (the diffusers transformer's `timestep_scale`).
  guidance_interval: (low, high) noise levels t / 1000 in [0, 1]: guidance acts only on the steps
    whose level lies in [low, high], the other steps take the conditional velocity (NVlabs Sana's
    `interval_guidance`; None or (0, 1): every step, as diffusers does).
  progress_fn: called on the host with the number of finished steps (1..N), e.g. to drive a progress bar.
  """
  latents = jnp.asarray(latents, jnp.float32)
  if latents.ndim != 4:
    raise ValueError(f"latents must be NHWC [B, H, W, C], got shape {latents.shape}")
  b = latents.shape[0]
  _check_text("text", text, text_mask, b)
  cfg = uses_guidance(guidance_scale)
  if cfg:
    if negative_text is None or negative_text_mask is None:
      raise ValueError(f"guidance_scale={guidance_scale} > 1 needs negative_text and negative_text_mask")
    _check_text("negative_text", negative_text, negative_text_mask, b, like=text)
    negative_text = jnp.broadcast_to(negative_text, text.shape)
    negative_text_mask = jnp.broadcast_to(negative_text_mask, text_mask.shape)
    text = jnp.concatenate([negative_text, text.astype(negative_text.dtype)])     # [2B, L, D]
    text_mask = jnp.concatenate([negative_text_mask, text_mask.astype(negative_text_mask.dtype)])
  model_timesteps = jnp.asarray(scheduler.timesteps, jnp.float32) * timestep_scale  # [N]
  scales = _guidance_scales(scheduler, guidance_scale, guidance_interval) if cfg else None  # [N]

  def velocity(x, i):
    t = jnp.broadcast_to(model_timesteps[i], (b,))
    if not cfg:
      return _checked(velocity_fn(x, t, text, text_mask), x)
    v = _checked(velocity_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), text, text_mask),
                 jnp.concatenate([x, x]))
    v_uncond, v_cond = v[:b], v[b:]
    return v_uncond + scales[i] * (v_cond - v_uncond)

  def body(i, carry):
    x, state = carry
    x, state = scheduler.step(state, velocity(x, i), i, x)
    if progress_fn is not None:
      jax.debug.callback(progress_fn, i + 1, ordered=True)
    return x, state

  x, _ = jax.lax.fori_loop(0, scheduler.num_inference_steps, body, (latents, scheduler.init_state(latents)))
  return x


def _guidance_scales(scheduler, guidance_scale, interval):
  """[N] guidance scale per step: `guidance_scale` inside the interval, 1 (conditional) outside."""
  n = scheduler.num_inference_steps
  scale = jnp.broadcast_to(jnp.asarray(guidance_scale, jnp.float32), (n,))
  if interval is None:
    return scale
  low, high = (float(x) for x in interval)
  if not 0.0 <= low <= high <= 1.0:
    raise ValueError(f"guidance_interval must be (low, high) with 0 <= low <= high <= 1, got {tuple(interval)}")
  level = jnp.asarray(scheduler.timesteps, jnp.float32) / scheduler.num_train_timesteps
  return jnp.where((level >= low) & (level <= high), scale, 1.0)


def _checked(v, x):
  if v.shape != x.shape:
    raise ValueError(f"velocity_fn returned shape {v.shape}, expected the latents' shape {x.shape}")
  return v.astype(jnp.float32)


def _check_text(name, text, mask, batch, like=None):
  if text.ndim != 3 or mask.shape != text.shape[:2]:
    raise ValueError(f"{name} must be [B, L, D] with a [B, L] mask, got {text.shape} and {mask.shape}")
  if text.shape[0] not in ((1, batch) if like is not None else (batch,)):
    raise ValueError(f"{name} has batch {text.shape[0]}, the latents have {batch}")
  if like is not None and text.shape[1:] != like.shape[1:]:
    raise ValueError(f"{name} must have the prompt embedding's [L, D]={like.shape[1:]}, got {text.shape[1:]}")

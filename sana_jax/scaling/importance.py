"""Block importance (SANA 1.5, section 2.3): how much each transformer block changes its input.

BI_i = 1 - E[cos(x_in, x_out)] of block i, the cosine taken per token between the block's input and
output features and averaged over tokens, calibration prompts and timesteps. A block whose output
equals its input scores 0; pruning (pruning.py) removes the lowest scores first.

Calibration inputs come two ways:
  clean latents [P, H, W, C]  each timestep t sees x_t = (1 - t/1000) x0 + (t/1000) noise, the
                              training distribution (use encoded calibration images, or samples);
  a latent shape (H, W)       the model's own sampling trajectory: start from noise and take Euler
                              flow steps through the timesteps (descending, no guidance), scoring the
                              blocks at every visited timestep - no images needed.
"""
import dataclasses
import json
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sana_jax.models.transformer import SanaTransformer

_COS_EPS = 1e-12


@nnx.jit
def _block_cosines(model, latents, timesteps, text, text_mask):
  """-> (mean over tokens of cos(block input, block output) [depth, B], velocity [B, H, W, C])."""
  x, grid = model.embed_latents(latents)
  t, t0, text, text_bias = model.embed_conditions(timesteps, text, text_mask)
  x, (inputs, outputs) = model.run_blocks(x, t0, text, text_bias, grid, collect_block_io=True)
  inputs, outputs = inputs.astype(jnp.float32), outputs.astype(jnp.float32)  # [depth, B, N, D]
  dot = jnp.sum(inputs * outputs, axis=-1)
  norms = jnp.linalg.norm(inputs, axis=-1) * jnp.linalg.norm(outputs, axis=-1)
  cos = dot / jnp.maximum(norms, _COS_EPS)  # [depth, B, N]
  velocity = model.unpatchify(x, t, grid).astype(jnp.float32)
  return jnp.mean(cos, axis=-1), velocity


@dataclasses.dataclass
class BlockImportance:
  """scores [depth] (BI per block), per_timestep [T, depth], the timesteps [T] and the prompt count."""
  scores: np.ndarray
  per_timestep: np.ndarray
  timesteps: np.ndarray
  num_prompts: int
  mode: str

  def order(self) -> list[int]:
    """Block indices from least to most important (the order pruning removes them)."""
    return [int(i) for i in np.argsort(self.scores, kind="stable")]

  def to_json(self) -> dict:
    return {"block_importance": self.scores.tolist(), "least_important_first": self.order(),
            "timesteps": self.timesteps.tolist(), "per_timestep": self.per_timestep.tolist(),
            "num_prompts": self.num_prompts, "mode": self.mode}

  def save(self, json_path, png_path=None) -> None:
    """Writes the JSON report and, with `png_path`, a bar plot of the scores."""
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w") as f:
      json.dump(self.to_json(), f, indent=2)
    if png_path is not None:
      plot_importance(self.scores, png_path)


def load_importance(json_path) -> np.ndarray:
  """The per-block scores [depth] from a JSON report written by `BlockImportance.save`."""
  with open(json_path) as f:
    report = json.load(f)
  if "block_importance" not in report:
    raise ValueError(f"{json_path}: no 'block_importance' list; not a block-importance report")
  return np.asarray(report["block_importance"], np.float64)


def plot_importance(scores, png_path, title="block importance = 1 - mean cos(in, out)") -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  scores = np.asarray(scores)
  fig, ax = plt.subplots(figsize=(max(5.0, 0.25 * len(scores) + 2), 3))
  ax.bar(np.arange(len(scores)), scores, color="tab:blue")
  ax.set_xlabel("block")
  ax.set_ylabel("BI")
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(png_path, dpi=100)
  plt.close(fig)


def block_importance(model: SanaTransformer, text, text_mask, latents_or_shape, timesteps: Sequence[float], *,
                     seed: int = 0, batch_size: int | None = None) -> BlockImportance:
  """Per-block importance of `model` over calibration prompts and timesteps (module docstring).

  text [P, L, caption_channels], text_mask [P, L]: the calibration prompts' embeddings.
  latents_or_shape: clean latents [P, H, W, C_in], or a latent size (H, W) for trajectory mode.
  timesteps: model timesteps in 0..1000 to average over.
  batch_size: prompts per forward pass (default all); bounds the memory of the collected features.
  """
  text, text_mask = np.asarray(text), np.asarray(text_mask)
  if text.ndim != 3 or text_mask.shape != text.shape[:2]:
    raise ValueError(f"text must be [P, L, C] and text_mask [P, L], got {text.shape} and {text_mask.shape}")
  timesteps = np.asarray(timesteps, np.float32).reshape(-1)
  if timesteps.size == 0 or np.any(timesteps < 0) or np.any(timesteps > 1000):
    raise ValueError(f"timesteps must be a non-empty list of values in 0..1000, got {timesteps.tolist()}")
  num_prompts = text.shape[0]
  channels = model.cfg.in_channels
  if isinstance(latents_or_shape, (tuple, list)) and len(latents_or_shape) == 2:
    mode, clean = "trajectory", None
    shape = (num_prompts, *map(int, latents_or_shape), channels)
    timesteps = np.sort(timesteps)[::-1].copy()
  else:
    mode, clean = "noised_latents", np.asarray(latents_or_shape, np.float32)
    if clean.ndim != 4 or clean.shape[0] != num_prompts or clean.shape[-1] != channels:
      raise ValueError(f"latents must be [P={num_prompts}, H, W, {channels}] (or pass a latent size (H, W)), "
                       f"got shape {clean.shape}")
    shape = clean.shape
  noise = np.asarray(jax.random.normal(jax.random.key(seed), (len(timesteps), *shape), jnp.float32))

  batch_size = num_prompts if batch_size is None else int(batch_size)
  cosines = np.zeros((len(timesteps), model.cfg.depth))
  for start in range(0, num_prompts, batch_size):
    part = slice(start, min(start + batch_size, num_prompts))
    b = part.stop - part.start
    x = noise[0, part]  # trajectory mode: the starting noise
    for i, t in enumerate(timesteps):
      sigma = t / 1000.0
      if clean is not None:
        x = (1.0 - sigma) * clean[part] + sigma * noise[i, part]
      cos, velocity = _block_cosines(model, jnp.asarray(x), jnp.full((b,), t, jnp.float32),
                                     jnp.asarray(text[part]), jnp.asarray(text_mask[part]))
      cosines[i] += np.asarray(cos).sum(axis=1)
      if clean is None:
        next_sigma = timesteps[i + 1] / 1000.0 if i + 1 < len(timesteps) else 0.0
        x = np.asarray(x + (next_sigma - sigma) * velocity)  # Euler step along the flow
  per_timestep = 1.0 - cosines / num_prompts  # [T, depth]
  return BlockImportance(scores=per_timestep.mean(axis=0), per_timestep=per_timestep, timesteps=timesteps,
                         num_prompts=num_prompts, mode=mode)

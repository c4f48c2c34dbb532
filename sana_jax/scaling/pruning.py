"""Depth pruning (SANA 1.5, section 2.3): keep a subset of the blocks, in their original order.

Removing a block from the stacked layer axis is a slice: a pruned model computes exactly what a
model built from only the kept blocks computes. Choose the blocks by importance (importance.py)
and fine-tune briefly afterwards (the paper: ~100 steps) to recover quality.
"""
from collections.abc import Sequence

import numpy as np

from sana_jax.models.transformer import SanaTransformer
from sana_jax.scaling.stack import derived_config, rebuild


def most_important_blocks(importance, depth: int) -> list[int]:
  """The `depth` blocks with the highest importance, in layer order (ties keep the earlier block)."""
  scores = np.asarray(importance, np.float64).reshape(-1)
  if not 1 <= depth <= scores.size:
    raise ValueError(f"depth must be in 1..{scores.size} (the number of scored blocks), got {depth}")
  order = np.argsort(-scores, kind="stable")
  return sorted(int(i) for i in order[:depth])


def prune(model: SanaTransformer, depth: int | None = None, blocks: Sequence[int] | None = None,
          importance=None) -> SanaTransformer:
  """A shallower model keeping `blocks` (indices), or the `depth` most important blocks by `importance`
  (a [depth] score array, e.g. `BlockImportance.scores`). Exactly one of depth and blocks."""
  if (depth is None) == (blocks is None):
    raise ValueError("pass exactly one of depth= (with importance=) or blocks=")
  source_depth = model.cfg.depth
  if blocks is None:
    if importance is None:
      raise ValueError("prune(depth=...) needs importance= scores (see block_importance)")
    if np.asarray(importance).size != source_depth:
      raise ValueError(f"importance has {np.asarray(importance).size} scores, the model has {source_depth} blocks")
    blocks = most_important_blocks(importance, int(depth))
  blocks = [int(i) for i in blocks]
  if not blocks or len(set(blocks)) != len(blocks) or not all(0 <= i < source_depth for i in blocks):
    raise ValueError(f"blocks must be distinct indices in 0..{source_depth - 1}, got {blocks}")
  kept = np.asarray(sorted(blocks))

  def block_fn(path, src, shape, dtype):
    return np.asarray(src)[kept]

  return rebuild(model, derived_config(model, depth=len(kept)), block_fn)

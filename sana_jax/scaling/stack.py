"""Rebuilding a SanaTransformer around a new stack of blocks: the step depth growth and pruning share.

Every block parameter is stacked on a leading layer axis (`model.blocks` leaves are `[depth, ...]`),
so changing the depth is a map over those leaves; everything outside the blocks is copied as is.
"""
from collections.abc import Callable

import jax.numpy as jnp
import ml_collections
from flax import nnx

from sana_jax.models.transformer import SanaTransformer, abstract_transformer

# block_fn(path inside the block, source leaf [S, ...] or None when the source has no such parameter,
#          target shape [T, ...], target dtype) -> the new stacked leaf.
BlockFn = Callable[[tuple, jnp.ndarray | None, tuple, jnp.dtype], jnp.ndarray]


def derived_config(model: SanaTransformer, **overrides) -> ml_collections.ConfigDict:
  """A mutable copy of the model's config with `overrides` applied."""
  cfg = ml_collections.ConfigDict(model.cfg.to_dict())
  cfg.update(overrides)
  return cfg


def block_params(model: SanaTransformer) -> dict:
  """{path inside a block: stacked array [depth, ...]} for every block parameter."""
  return {path: var[...] for path, var in nnx.to_flat_state(nnx.state(model.blocks, nnx.Param))}


def rebuild(model: SanaTransformer, cfg: ml_collections.ConfigDict, block_fn: BlockFn) -> SanaTransformer:
  """A new model of architecture `cfg`: non-block parameters copied from `model`, blocks from `block_fn`.

  `cfg` may differ from the model's config only in depth and qk_norm (the non-block parameters must
  keep their shapes). A stored null caption embedding (NVlabs checkpoints) is carried over.
  """
  source = {path: var[...] for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  graphdef, target = nnx.split(abstract_transformer(cfg))
  flat = []
  for path, var in nnx.to_flat_state(target):
    if path[0] == "blocks":
      value = block_fn(path[1:], source.get(path), tuple(var.shape), var.dtype)
    else:
      value = source[path]
    if tuple(value.shape) != tuple(var.shape):
      raise ValueError(f"{'.'.join(map(str, path))}: built shape {value.shape}, the model needs {var.shape}")
    flat.append((path, var.replace(jnp.asarray(value, var.dtype))))
  new = nnx.merge(graphdef, nnx.from_flat_state(flat))
  if hasattr(model, "null_caption_embedding"):
    new.null_caption_embedding = nnx.Variable(model.null_caption_embedding[...])
  return new

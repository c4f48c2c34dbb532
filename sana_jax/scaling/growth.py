"""Depth growth (SANA 1.5, section 2.2): start a deeper model from a trained shallow one.

Strategies, after NVlabs/Sana `diffusion/model/model_growth_utils.py` (our parameter names):
  constant      the paper's "partial preservation" and the 4.8B recipe: target blocks 0..k-1 are
                source blocks 0..k-1, every later block is new and initialised so that it is an
                identity (see `_CONSTANT_INIT`).
  cyclic        target block i is source block i mod k.
  block_expand  each source block is repeated T/k times in a row (block i <- source i // (T/k)).
  random        like constant, but new blocks get the ordinary from-scratch initialisation.
k = `source_layers` (default: the source depth; the 4.8B model kept the first 18 of 20 blocks).
With `zero_gate=True`, the copies made by cyclic / block_expand after a block's first appearance
get zero out-projections, a zero point-conv and a zero modulation table, so they too start as
identities. Non-block parameters (embeddings, caption MLP, output head) are always copied.

Function preservation: a new "constant" block adds gate1*to_out(...) + cross_out(...) +
gate2*conv_point(...) to its input, and all three output maps start at zero, so the block returns its
input exactly - with or without q/k norms. What breaks preservation is changing the copied blocks:
switching q/k RMSNorm on (a SANA 1.0 source grown into the SANA 1.5 architecture, `qk_norm=True`)
inserts a normalisation into every copied block's self- and cross-attention that the trained weights
never saw, so the grown model computes a different function until it is trained again. Keeping
fewer source blocks than the source has, the random strategy, and cyclic / block_expand copies
without `zero_gate` do not preserve the function either. `grow` warns in each of these cases.
"""
import warnings
import zlib

import ml_collections
import numpy as np
from flax import nnx

from sana_jax.models.transformer import SanaTransformer
from sana_jax.scaling.stack import block_params, derived_config, rebuild

STRATEGIES = ("constant", "cyclic", "block_expand", "random")

# Initialisation of a new block in the constant strategy, by parameter path inside the block
# (NVlabs `init_constant`): the three output maps and the cross-attention input biases are zero,
# q/k norm weights one, the depthwise conv N(0, 0.2), everything else N(0, 0.02).
_ZERO = {("attn", "to_out", "kernel"), ("attn", "to_out", "bias"),
         ("cross_attn", "to_out", "kernel"), ("cross_attn", "to_out", "bias"),
         ("ffn", "conv_point", "kernel"),
         ("cross_attn", "to_q", "bias"), ("cross_attn", "to_k", "bias"), ("cross_attn", "to_v", "bias")}
_DEPTHWISE = {("ffn", "conv_depth", "kernel"), ("ffn", "conv_depth", "bias")}
_DEPTHWISE_STD, _OTHER_STD = 0.2, 0.02

# Zeroed in repeated copies with zero_gate (NVlabs `init_cyclic` / `init_block_expand`).
_ZERO_GATE = {("scale_shift_table",), ("attn", "to_out", "kernel"), ("attn", "to_out", "bias"),
              ("cross_attn", "to_out", "kernel"), ("cross_attn", "to_out", "bias"),
              ("ffn", "conv_point", "kernel")}


def _is_norm_weight(path):
  return path[-2:] in (("norm_q", "weight"), ("norm_k", "weight"))


def layer_map(strategy: str, source_layers: int, target_depth: int) -> list:
  """For each target block, the index of the source block it copies, or None for a new block."""
  if strategy not in STRATEGIES:
    raise ValueError(f"unknown growth strategy {strategy!r}; choose from {STRATEGIES}")
  if source_layers < 1 or target_depth < source_layers:
    raise ValueError(f"target depth {target_depth} must be at least the {source_layers} source layers (>= 1)")
  if strategy == "cyclic":
    return [i % source_layers for i in range(target_depth)]
  if strategy == "block_expand":
    if target_depth % source_layers:
      raise ValueError(f"block_expand needs a target depth that is a multiple of the {source_layers} "
                       f"source layers, got {target_depth}")
    ratio = target_depth // source_layers
    return [i // ratio for i in range(target_depth)]
  return list(range(source_layers)) + [None] * (target_depth - source_layers)


def _constant_init(path, seed, shape, dtype):
  if path in _ZERO:
    return np.zeros(shape, dtype)
  if _is_norm_weight(path):
    return np.ones(shape, dtype)
  std = _DEPTHWISE_STD if path in _DEPTHWISE else _OTHER_STD
  rng = np.random.default_rng([seed, zlib.crc32("/".join(path).encode())])  # independent per parameter
  return (std * rng.standard_normal(shape, np.float32)).astype(dtype)


def _not_preserving_reasons(strategy, source_depth, source_layers, target_depth, adds_qk_norm, zero_gate):
  reasons = []
  if adds_qk_norm:
    reasons.append("q/k RMSNorm is switched on, which changes every copied block")
  if source_layers < source_depth:
    reasons.append(f"only the first {source_layers} of the {source_depth} source blocks are kept")
  if strategy == "random" and target_depth > source_layers:
    reasons.append("the random strategy gives new blocks a from-scratch initialisation")
  if strategy in ("cyclic", "block_expand") and not zero_gate and target_depth > source_layers:
    reasons.append(f"{strategy} copies blocks without zero_gate")
  return reasons


def grow(model: SanaTransformer, target_depth: int, strategy: str = "constant", source_layers: int | None = None,
         *, qk_norm: bool | None = None, zero_gate: bool = False, seed: int = 0) -> SanaTransformer:
  """A deeper SanaTransformer started from `model` (see the module docstring for the strategies).

  target_depth: number of blocks of the result.
  source_layers: how many leading source blocks to use (default: all of them).
  qk_norm: the result's q/k-norm setting; None keeps the source's; True on a source without q/k norms
    gives the SANA 1.5 architecture (norm weights start at one) and is not function preserving.
  zero_gate: for cyclic / block_expand, make repeated copies identities.
  seed: for the random numbers of new blocks.
  """
  source_depth = model.cfg.depth
  source_layers = source_depth if source_layers is None else int(source_layers)
  if not 1 <= source_layers <= source_depth:
    raise ValueError(f"source_layers must be in 1..{source_depth} (the source depth), got {source_layers}")
  if zero_gate and strategy not in ("cyclic", "block_expand"):
    raise ValueError(f"zero_gate applies to the cyclic and block_expand strategies, not {strategy!r}")
  mapping = layer_map(strategy, source_layers, int(target_depth))
  source_qk = bool(model.cfg.qk_norm)
  qk_norm = source_qk if qk_norm is None else bool(qk_norm)
  if source_qk and not qk_norm:
    raise ValueError("growing cannot remove the source's q/k norms (qk_norm=False on a qk-norm model)")

  reasons = _not_preserving_reasons(strategy, source_depth, source_layers, target_depth,
                                    qk_norm and not source_qk, zero_gate)
  if reasons:
    warnings.warn("the grown model is not function preserving: " + "; ".join(reasons), stacklevel=2)

  cfg = derived_config(model, depth=int(target_depth), qk_norm=qk_norm)
  num_new = mapping.count(None)
  fresh = _fresh_blocks(cfg, num_new, seed) if strategy == "random" and num_new else None
  repeated = {i for i, s in enumerate(mapping) if s is not None and mapping.index(s) != i}

  def block_fn(path, src, shape, dtype):
    # Assembled in numpy: slicing and stacking host arrays compiles nothing.
    dtype = np.dtype(dtype)
    if fresh is not None:
      new = iter(np.asarray(fresh[path]))
    elif num_new:
      new = iter(_constant_init(path, seed, (num_new, *shape[1:]), dtype))
    src = None if src is None else np.asarray(src)
    rows = []
    for i, s in enumerate(mapping):
      if s is None:
        rows.append(next(new))
      elif src is None:  # a q/k norm the source lacks: the identity norm weight
        rows.append(np.ones(shape[1:], dtype))
      elif zero_gate and i in repeated and path in _ZERO_GATE:
        rows.append(np.zeros(shape[1:], dtype))
      else:
        rows.append(src[s])
    return np.stack(rows).astype(dtype)  # [T, ...]

  return rebuild(model, cfg, block_fn)


def _fresh_blocks(cfg, count, seed):
  """From-scratch block parameters for `count` new blocks (the random strategy)."""
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  cfg.depth = count
  return block_params(SanaTransformer(cfg, rngs=nnx.Rngs(seed)))

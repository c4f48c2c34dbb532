"""Block-wise 8-bit quantisation of optimiser state, laid out along the parameter's own axes.

Two codecs, one per reference optimiser:

* min-max (NVlabs CAME8BitWrapper): each block is mapped affinely onto 0..255 with its own
  minimum and scale = (max - min) / 255. A block is `block_size` output rows of a matrix, i.e.
  `block_size` entries of the last axis of a JAX kernel `[..., in, out]` across all of `in`
  (torch splits `[out, in]` along dim 0). Leading axes (stacked layers, 1x1-conv spatial axes) are
  independent batches.
* dynamic (bitsandbytes blockwise): each block of `block_size` consecutive entries of the last axis
  is normalised by its absolute maximum and rounded to the nearest entry of a 256-value non-linear
  map (`dynamic_map`), as bitsandbytes' CUDA kernel does; its CPU kernel rounds through a
  65536-bin lookup table instead, which can land one or more entries away for values far below
  the block's absmax (tests/optim bound that difference). This is bitsandbytes' layout whenever the last axis is a multiple of the
  block size (or the array is 1-D); otherwise our blocks restart at every row so that they never
  straddle two rows, and so never two shards.

Codes keep the parameter's shape, so they shard exactly like it; the per-block statistics keep its
rank with the blocked axes reduced to 1 or to the number of blocks.
"""
import functools

import jax.numpy as jnp
import numpy as np


def _linspace_f32(start: float, end: float, num: int) -> np.ndarray:
  """float32 linspace rounded as torch's CPU kernel does (a fused multiply-add from the nearer end),
  so that the map below equals bitsandbytes' to the last bit."""
  start32, end32 = np.float32(start), np.float32(end)
  step = np.float64((end32 - start32) / np.float32(num - 1))
  i = np.arange(num, dtype=np.float64)
  from_start = np.float64(start32) + step * i
  from_end = np.float64(end32) - step * (num - 1 - i)
  return np.where(i < num // 2, from_start, from_end).astype(np.float32)


@functools.lru_cache(maxsize=None)
def dynamic_map(signed: bool) -> np.ndarray:
  """bitsandbytes' 256-entry "dynamic tree" map, sorted ascending, float32.

  Each decade 10^-6 .. 10^0 contributes the midpoints of an even split of [0.1, 1] (finer for
  larger decades), mirrored for the signed map, plus 0 and 1 (so the signed map spans
  [-0.99297, 1]).
  """
  values = [0.0, 1.0]
  for decade in range(7):
    pieces = 2 ** decade if signed else 2 ** (decade + 1)
    edges = _linspace_f32(0.1, 1.0, pieces + 1)
    mids = (edges[:-1] + edges[1:]) / np.float32(2.0)
    magnitudes = np.float32(10.0 ** (decade - 6)) * mids
    values += magnitudes.tolist()
    if signed:
      values += (-magnitudes).tolist()
  code = np.sort(np.asarray(values, dtype=np.float32))
  assert code.shape == (256,)
  return code


def _pad_last(x, multiple: int, mode: str):
  pad = -x.shape[-1] % multiple
  if pad == 0:
    return x
  return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)], mode=mode)


def _blocks_of_last(x, block_size: int, mode: str):
  """[..., n] -> [..., blocks, block_size], padding the last block (`mode` as for jnp.pad)."""
  x = _pad_last(x, block_size, mode)
  return x.reshape(*x.shape[:-1], x.shape[-1] // block_size, block_size)


def _per_entry(stat, block_size: int, n: int):
  """Block statistic [..., blocks] -> one value per entry of the last axis [..., n].

  A broadcast and a reshape (not a gather), so a block-sharded statistic stays on its devices.
  """
  wide = jnp.broadcast_to(stat[..., None], stat.shape + (block_size,))
  return wide.reshape(*stat.shape[:-1], stat.shape[-1] * block_size)[..., :n]


def num_blocks(n: int, block_size: int) -> int:
  return -(-n // block_size)


# ---------------------------------------------------------------- min-max (NVlabs CAME-8bit)

def quantize_minmax(x, block_size: int):
  """x [..., in, out] float32 -> (codes uint8 [..., in, out], scale [..., 1, B], minimum [..., 1, B]).

  B = ceil(out / block_size). A block whose entries are all equal has scale 0: its codes are 0 and
  it dequantises to its (exact) minimum instead of dividing by zero.
  """
  if x.ndim < 2:
    raise ValueError(f"min-max blocks span a matrix's input axis; got shape {x.shape}")
  out = x.shape[-1]
  blocks = _blocks_of_last(x, block_size, mode="edge")            # [..., in, B, block]
  lo = blocks.min(axis=(-3, -1))[..., None, :]                     # [..., 1, B]
  hi = blocks.max(axis=(-3, -1))[..., None, :]
  scale = (hi - lo) / 255.0
  lo_e, scale_e = _per_entry(lo, block_size, out), _per_entry(scale, block_size, out)
  safe = jnp.where(scale_e > 0, scale_e, 1.0)
  q = jnp.where(scale_e > 0, jnp.round((x - lo_e) / safe), 0.0)
  return jnp.clip(q, 0, 255).astype(jnp.uint8), scale, lo


def dequantize_minmax(codes, scale, minimum, block_size: int):
  """Inverse of `quantize_minmax`: codes * scale + minimum, per block. -> float32 [..., in, out]."""
  out = codes.shape[-1]
  return (codes.astype(jnp.float32) * _per_entry(scale, block_size, out)
          + _per_entry(minimum, block_size, out))


# ---------------------------------------------------------------- dynamic (bitsandbytes)

def quantize_dynamic(x, code, block_size: int):
  """x [..., n] float32 -> (codes uint8 [..., n], absmax float32 [..., ceil(n / block_size)]).

  Each entry, divided by its block's absmax, goes to the nearest map entry (ties to the lower
  one). An all-zero block has absmax 0 and codes pointing at the map's 0.
  """
  code = jnp.asarray(code, jnp.float32)
  n = x.shape[-1]
  absmax = jnp.abs(_blocks_of_last(x, block_size, mode="constant")).max(axis=-1)   # [..., B]
  absmax_e = _per_entry(absmax, block_size, n)
  normed = jnp.where(absmax_e > 0, x / jnp.where(absmax_e > 0, absmax_e, 1.0), 0.0)
  left = jnp.clip(jnp.searchsorted(code, normed, side="right") - 1, 0, code.shape[0] - 2)
  go_right = jnp.abs(normed - code[left + 1]) < jnp.abs(normed - code[left])
  return (left + go_right).astype(jnp.uint8), absmax


def dequantize_dynamic(codes, absmax, code, block_size: int):
  """Inverse of `quantize_dynamic`: map[codes] * absmax, per block. -> float32 [..., n]."""
  n = codes.shape[-1]
  return jnp.asarray(code, jnp.float32)[codes.astype(jnp.int32)] * _per_entry(absmax, block_size, n)

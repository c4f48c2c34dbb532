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

import jax
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
  # Over the input axis first (a contiguous reduction to one row), then over each block of that
  # row: min and max are exact in any order, and the row is small enough to pad.
  lo = _blocks_of_last(x.min(axis=-2, keepdims=True), block_size, mode="edge").min(axis=-1)
  hi = _blocks_of_last(x.max(axis=-2, keepdims=True), block_size, mode="edge").max(axis=-1)
  scale = (hi - lo) / 255.0                                        # [..., 1, B]
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

def _ordered(f: np.ndarray) -> np.ndarray:
  """float32 -> int64 keys in the same order as the floats (-0.0 and 0.0 share key 0)."""
  bits = np.asarray(f, np.float32).view(np.uint32).astype(np.int64)
  return np.where(bits >= 2 ** 31, -(bits - 2 ** 31), bits)


def _unordered(key: np.ndarray) -> np.ndarray:
  bits = np.where(key < 0, 2 ** 31 - key, key).astype(np.uint32)
  return bits.view(np.float32)


@functools.lru_cache(maxsize=None)
def rounding_thresholds(signed: bool) -> np.ndarray:
  """t [255] float32: t[j] is the smallest float32 x that the nearest-entry rule sends above entry
  j of `dynamic_map(signed)`, the rule being: between entries c[j] <= x < c[j+1], go up iff
  |x - c[j+1]| < |x - c[j]| in float32 (ties to the lower entry), and clamp outside the map.

  That choice is monotone in x, so the rule's index is #{j : x >= t[j]}. Found by bisection over
  the float32 values between c[j] and c[j+1].
  """
  code = dynamic_map(signed)
  lower, upper = code[:-1], code[1:]
  lo, hi = _ordered(lower), _ordered(upper)          # rule says "stay" at lo, "go up" at hi
  while np.any(hi - lo > 1):
    mid = (lo + hi) // 2
    x = _unordered(mid)
    up = np.abs(x - upper) < np.abs(x - lower)
    lo, hi = np.where(up, lo, mid), np.where(up, mid, hi)
  return _unordered(hi)


# Buckets of |x| for the dynamic map: the float32 exponent and the top 8 mantissa bits, i.e. a
# relative width of at most 2^-8 (0.39%), finer than the relative spacing of the map's rounding
# thresholds (at least 0.53%, for the unsigned map near 1), so a bucket holds at most one of them.
# Magnitudes below 2^-24 share bucket 0 (the smallest positive threshold is 1.6e-7); magnitudes of
# 2 and more share the last one (all thresholds are below 1).
_MANTISSA_BITS = 8
_LOWEST_EXPONENT = 127 - 24                       # biased float32 exponent of 2^-24
_BUCKETS = (128 - _LOWEST_EXPONENT) << _MANTISSA_BITS


def _bucket(x):
  """float32 x -> int32 bucket of |x| in [0, _BUCKETS), plus _BUCKETS where x is negative."""
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  key = ((bits & 0x7FFFFFFF) >> (23 - _MANTISSA_BITS)).astype(jnp.int32)
  key = jnp.clip(key - (_LOWEST_EXPONENT << _MANTISSA_BITS), 0, _BUCKETS - 1)
  return key + jnp.where(bits >> 31 == 1, _BUCKETS, 0)


@functools.lru_cache(maxsize=None)
def bucket_floors(signed: bool) -> np.ndarray:
  """uint8 [2 * _BUCKETS]: for the bucket of |x| (second half: x negative), an index r such that
  the nearest-entry index of every x in it is r or r + 1 (r = the number of thresholds below the
  bucket, at most 254). Checked here: no bucket holds two thresholds."""
  thresholds = rounding_thresholds(signed)
  keys = np.arange(_BUCKETS, dtype=np.int64) + (_LOWEST_EXPONENT << _MANTISSA_BITS)
  shift = 23 - _MANTISSA_BITS
  lowest = (keys << shift).astype(np.uint32).view(np.float32).copy()
  lowest[0] = 0.0
  highest = (((keys + 1) << shift) - 1).astype(np.uint32).view(np.float32)

  def count(v):
    return np.searchsorted(thresholds, v, side="right")

  below_pos, below_neg = count(lowest), count(-highest)
  if np.any(count(highest) - below_pos > 1) or np.any(count(-lowest) - below_neg > 1):
    raise AssertionError("a magnitude bucket holds two rounding thresholds of the dynamic map")
  return np.minimum(np.concatenate([below_pos, below_neg]), 254).astype(np.uint8)


def quantize_dynamic(x, signed: bool, block_size: int):
  """x [..., n] float32 -> (codes uint8 [..., n], absmax float32 [..., ceil(n / block_size)]).

  Each entry, divided by its block's absmax, goes to the nearest map entry (ties to the lower
  one) of `dynamic_map(signed)`, without a search: the bucket of the value's exponent and top
  mantissa bits gives r with the answer in {r, r + 1} (`bucket_floors`), one comparison with the
  rounding threshold t[r] picks. An all-zero block has absmax 0 and codes pointing at the map's 0.
  """
  floors = jnp.asarray(bucket_floors(signed))
  thresholds = jnp.asarray(rounding_thresholds(signed))
  n = x.shape[-1]
  absmax = jnp.abs(_blocks_of_last(x, block_size, mode="constant")).max(axis=-1)   # [..., B]
  absmax_e = _per_entry(absmax, block_size, n)
  normed = jnp.where(absmax_e > 0, x / jnp.where(absmax_e > 0, absmax_e, 1.0), 0.0)
  floor = floors.at[_bucket(normed)].get(mode="promise_in_bounds")          # uint8 in [0, 254]
  up = normed >= thresholds.at[floor].get(mode="promise_in_bounds")
  return floor + up.astype(jnp.uint8), absmax


def dequantize_dynamic(codes, absmax, signed: bool, block_size: int):
  """Inverse of `quantize_dynamic`: map[codes] * absmax, per block. -> float32 [..., n]."""
  n = codes.shape[-1]
  code = jnp.asarray(dynamic_map(signed))
  values = code.at[codes.astype(jnp.uint8)].get(mode="promise_in_bounds")   # always in bounds
  return values * _per_entry(absmax, block_size, n)

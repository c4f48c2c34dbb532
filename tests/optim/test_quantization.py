"""The fast quantisers against the plain rules they replace (results must not change).

Dynamic map: the reference takes the largest map entry c[j] <= x by binary search (clamped to
0..254), then moves up to c[j+1] iff it is strictly nearer in float32 (bitsandbytes' CUDA rule and
our first version). The bucket-and-threshold closed form must give the same code for every
float32 input. Min-max: block statistics reduced in another order must be the same floats.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sana_jax.optim import quantization

BLOCK = 256


def _searchsorted_codes(x, code, block_size):
  """The reference: block absmax, normalise, nearest entry by binary search (ties to the lower)."""
  code = jnp.asarray(code, jnp.float32)
  blocks = x.reshape(*x.shape[:-1], -1, block_size)
  absmax = jnp.abs(blocks).max(axis=-1)
  absmax_e = jnp.repeat(absmax, block_size, axis=-1)
  normed = jnp.where(absmax_e > 0, x / jnp.where(absmax_e > 0, absmax_e, 1.0), 0.0)
  left = jnp.clip(jnp.searchsorted(code, normed, side="right") - 1, 0, code.shape[0] - 2)
  go_right = jnp.abs(normed - code[left + 1]) < jnp.abs(normed - code[left])
  return (left + go_right).astype(jnp.uint8), absmax


reference = jax.jit(_searchsorted_codes, static_argnums=2)
quantize = jax.jit(quantization.quantize_dynamic, static_argnums=(1, 2))


def _edge_values(signed):
  """Values in [-1, 1] where rounding is decided: map entries, float32 midpoints between them and
  the exact rounding thresholds, each with its float32 neighbours; decade boundaries 10^-k; zero,
  +-1, tiny normals and denormals."""
  code = quantization.dynamic_map(signed)
  mids = (code[:-1] + code[1:]) / np.float32(2)
  decades = np.float32(10.0) ** -np.arange(1, 9, dtype=np.float32)
  tiny = np.array([1e-45, 3e-45, 1e-40, 1.1754944e-38, 1e-30, 1e-20, 1e-10, 2.75e-7], np.float32)
  points = np.concatenate([code, mids, quantization.rounding_thresholds(signed), decades, tiny,
                           [0.0, 1.0]]).astype(np.float32)
  near, up, down = [points], points, points
  for _ in range(2):                                       # one and two float32 steps away
    up, down = np.nextafter(up, np.float32(2)), np.nextafter(down, np.float32(-2))
    near += [up, down]
  values = np.concatenate(near + [-v for v in near] + [np.array([-0.0], np.float32)])
  return np.unique(values[(values >= -1) & (values <= 1)])


def _with_unit_absmax(values):
  """Rows of BLOCK entries whose first entry is 1.0, so every block's absmax is 1 and the
  normalised values are the values themselves."""
  rows = -(-values.size // (BLOCK - 1))
  body = np.zeros(rows * (BLOCK - 1), np.float32)
  body[:values.size] = values
  return np.concatenate([np.ones((rows, 1), np.float32), body.reshape(rows, BLOCK - 1)], axis=1)


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_closed_form_codes_equal_searchsorted_on_edge_values(signed):
  values = _edge_values(signed)
  if not signed:
    values = np.concatenate([values[values >= 0], -values[values > 0][:50]])   # clamps to 0
  x = jnp.asarray(_with_unit_absmax(values))
  code = quantization.dynamic_map(signed)
  codes, absmax = quantize(x, signed, BLOCK)
  want, want_absmax = reference(x, code, BLOCK)
  np.testing.assert_array_equal(np.asarray(absmax), np.asarray(want_absmax))
  mismatch = np.asarray(codes) != np.asarray(want)
  assert not mismatch.any(), np.asarray(x)[mismatch][:10]
  # Every map entry is hit by itself, and the exact thresholds do switch to the next entry.
  assert np.unique(np.asarray(codes)).size == 256


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_closed_form_codes_equal_searchsorted_on_random_blocks(signed):
  """1M values with magnitudes spread over 1e-12 .. 1e2 and all-zero, constant and one-hot
  blocks, normalised by their real block absmax."""
  rng = np.random.default_rng(0 if signed else 1)
  x = rng.standard_normal((1024, 1024)) * 10.0 ** rng.uniform(-12, 2, (1024, 1024))
  x[0] = 0.0
  x[1, :256] = 0.37
  x[2] = 0.0
  x[2, 300] = -5.0
  x = x.astype(np.float32)
  if not signed:
    x = np.abs(x)
  code = quantization.dynamic_map(signed)
  codes, absmax = quantize(jnp.asarray(x), signed, BLOCK)
  want, want_absmax = reference(jnp.asarray(x), code, BLOCK)
  np.testing.assert_array_equal(np.asarray(absmax), np.asarray(want_absmax))
  np.testing.assert_array_equal(np.asarray(codes), np.asarray(want))


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_closed_form_codes_equal_searchsorted_for_every_float32(signed):
  """Within one magnitude bucket (float32 exponent and top mantissa bits, and the sign) the closed
  form is r + [x >= t[r]] for one r: a non-decreasing step function, as is the reference index
  #{j : x >= t[j]}. So both agree on every float32 once they agree at the first and last float32
  of every bucket and at every threshold and the float32 just below it: 26k points stand for all
  4 billion inputs (NaN aside)."""
  shift = 23 - quantization._MANTISSA_BITS
  keys = np.arange(quantization._BUCKETS + 1, dtype=np.int64)
  keys += quantization._LOWEST_EXPONENT << quantization._MANTISSA_BITS
  edges = (keys << shift).astype(np.uint32).view(np.float32)              # first float of a bucket
  last = np.nextafter(edges, np.float32(0))                               # last of the one below
  thresholds = quantization.rounding_thresholds(signed)
  points = np.concatenate([edges, last, thresholds, np.nextafter(thresholds, np.float32(-np.inf)),
                           [0.0, 1e-45, np.float32(2.0 ** -24), np.inf]]).astype(np.float32)
  points = np.unique(np.concatenate([points, -points]))
  x = jnp.asarray(_with_unit_absmax(points[np.abs(points) <= 1]))          # normalised = itself
  codes, _ = quantize(x, signed, BLOCK)
  want, _ = reference(x, quantization.dynamic_map(signed), BLOCK)
  np.testing.assert_array_equal(np.asarray(codes), np.asarray(want))
  # Beyond [-1, 1] (not reachable after normalising) the index clamps to the end entries.
  big = jnp.asarray(points[np.abs(points) > 1])
  floors = jnp.asarray(quantization.bucket_floors(signed))
  r = np.asarray(floors[quantization._bucket(big)])
  exact = np.searchsorted(thresholds, np.asarray(big), side="right")
  np.testing.assert_array_equal(r + (np.asarray(big) >= thresholds[r]), exact)


def test_thresholds_split_each_pair_of_neighbouring_entries():
  for signed in (True, False):
    code, t = quantization.dynamic_map(signed), quantization.rounding_thresholds(signed)
    assert np.all((code[:-1] < t) & (t <= code[1:]))
    # Just below t[j] the lower entry is at least as near, at t[j] the upper one is nearer.
    below = np.nextafter(t, np.float32(-2))
    assert np.all(np.abs(below - code[1:]) >= np.abs(below - code[:-1]))
    assert np.all(np.abs(t - code[1:]) < np.abs(t - code[:-1]))



def _blockwise_minmax(x, block_size):
  """The reference: pad the output axis to whole blocks, reduce each [in, block] block at once."""
  out = x.shape[-1]
  pad = -out % block_size
  blocks = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)], mode="edge")
  blocks = blocks.reshape(*x.shape[:-1], -1, block_size)                 # [..., in, B, block]
  lo = blocks.min(axis=(-3, -1))[..., None, :]
  scale = (blocks.max(axis=(-3, -1))[..., None, :] - lo) / 255.0
  lo_e = jnp.repeat(lo, block_size, axis=-1)[..., :out]
  scale_e = jnp.repeat(scale, block_size, axis=-1)[..., :out]
  q = jnp.where(scale_e > 0, jnp.round((x - lo_e) / jnp.where(scale_e > 0, scale_e, 1.0)), 0.0)
  return jnp.clip(q, 0, 255).astype(jnp.uint8), scale, lo


def test_minmax_block_statistics_equal_a_blockwise_reference():
  """quantize_minmax reduces over the input axis first, then over each block of the row: the same
  codes, scales and minima as reducing each [in, block] block at once (stacked layers, a partial
  last block, a single block wider than the matrix, a constant block)."""
  rng = np.random.default_rng(3)
  fast = jax.jit(quantization.quantize_minmax, static_argnums=1)
  slow = jax.jit(_blockwise_minmax, static_argnums=1)
  for shape, block in (((3, 40, 100), 32), ((24, 64), 16), ((1, 1, 16, 12), 2048)):
    x = rng.standard_normal(shape).astype(np.float32)
    x[..., :block] = 0.5
    for got, want in zip(fast(x, block), slow(x, block)):
      np.testing.assert_array_equal(np.asarray(got), np.asarray(want))

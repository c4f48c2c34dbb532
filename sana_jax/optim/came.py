"""CAME (Luo et al. 2023) and NVlabs's CAME-8bit as optax transforms (docs/architecture.md).

Per parameter, with u = g^2 + eps1 and no bias correction:
  matrices (Linear [in, out], 1x1 conv [1, 1, in, out]):
    r <- b2 r + (1-b2) mean_in(u)      one per output   (torch's "row" of an [out, in] weight)
    c <- b2 c + (1-b2) mean_out(u)     one per input    (torch's "col")
    U  = g * rsqrt(r / mean(r)) * rsqrt(c)
  anything else (vectors, depthwise / k x k convs): v <- b2 v + (1-b2) u, U = g * rsqrt(v)
  U <- U / max(1, RMS(U) / clip_threshold);  m <- b1 m + (1-b1) U
  matrices: res = (U - m)^2 + eps2, R and C as r and c with b3, update = m * rsqrt(R / mean(R)) * rsqrt(C)
  else:     update = m
The statistics and RMS are per layer for stacked parameters (see layout.py). CAME-8bit keeps m of
matrices with more than `min_8bit_size` entries per layer as min-max uint8 blocks of `block_size`
output rows; each step dequantises it, updates it in float32, uses that float32 value for the
update and requantises it for the next step (as NVlabs's CAME8BitWrapper).
"""
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from sana_jax.optim import layout, quantization


class ScaleByCameState(NamedTuple):
  """Each field is a tree shaped like the params; unused slots hold a rank-preserving [1, ..., 1].

  mu is float32, or uint8 codes where quantised (then mu_scale / mu_min hold per-block
  statistics [..., 1, blocks]). Factored statistics keep the reduced axis: nu_row / res_row are
  [..., 1, out], nu_col / res_col are [..., in, 1]; nu is the unfactored second moment.
  """
  mu: Any
  mu_scale: Any
  mu_min: Any
  nu_row: Any
  nu_col: Any
  nu: Any
  res_row: Any
  res_col: Any


class _Plan(NamedTuple):
  """What CAME does with one parameter; a factored one is seen as matrices over its last two axes."""
  layers: int       # leading layer axes, a batch of independent per-layer tensors
  factored: bool
  quantized: bool


def _plan(path, shape, layer_axis_pattern, min_8bit_size) -> _Plan:
  name = layout.param_name(path)
  layers = layout.layer_axes(name, len(shape), layer_axis_pattern)
  layer_shape = tuple(shape[layers:])
  factored = layout.is_matrix(layer_shape)
  quantized = (factored and min_8bit_size is not None
               and layer_shape[-2] * layer_shape[-1] > min_8bit_size)
  return _Plan(layers, factored, quantized)


def _rms(x, layers: int):
  """||x|| / sqrt(size) per layer, kept broadcastable against x."""
  axes = tuple(range(layers, x.ndim))
  size = 1
  for a in axes:
    size *= x.shape[a]
  return jnp.sqrt(jnp.sum(jnp.square(x), axis=axes, keepdims=True)) / jnp.sqrt(jnp.float32(size))


def _factored_rsqrt(row, col):
  """rsqrt(row_o col_i / mean(row)) for row [..., 1, out], col [..., in, 1] -> [..., in, out]."""
  return jax.lax.rsqrt(row / jnp.mean(row, axis=-1, keepdims=True)) * jax.lax.rsqrt(col)


def _ema(stat, value, decay):
  return stat * decay + value * (1.0 - decay)


def scale_by_came(
    b1: float = 0.9,
    b2: float = 0.999,
    b3: float = 0.9999,
    eps: tuple = (1e-30, 1e-16),
    clip_threshold: float = 1.0,
    min_8bit_size: Optional[int] = None,
    block_size: int = 2048,
    layer_axis_pattern: Optional[str] = None,
) -> optax.GradientTransformation:
  """CAME's update direction (to be scaled by -learning_rate). See the module docstring.

  min_8bit_size: None keeps every first moment in float32 (CAME); an int quantises the first
    moment of factored parameters with more than that many entries per layer (CAME-8bit).
  block_size: output rows per min-max block of a quantised first moment.
  layer_axis_pattern: regex over parameter paths whose leading axis stacks layers (layout.py).
  """
  for beta, label in ((b1, "b1"), (b2, "b2"), (b3, "b3")):
    if not 0.0 <= beta <= 1.0:
      raise ValueError(f"CAME {label} must lie in [0, 1], got {beta}")
  if len(eps) != 2:
    raise ValueError(f"CAME eps is a pair (eps_square_grad, eps_instability), got {eps!r}")
  if block_size < 1:
    raise ValueError(f"block_size must be positive, got {block_size}")
  eps1, eps2 = eps

  def plan(path, x):
    return _plan(path, x.shape, layer_axis_pattern, min_8bit_size)

  def init_leaf(path, p):
    pl = plan(path, p)
    shape = p.shape
    empty = jnp.zeros(layout.placeholder_shape(shape), jnp.float32)
    if pl.quantized:
      blocks = quantization.num_blocks(shape[-1], block_size)
      stat_shape = shape[:-2] + (1, blocks)
      mu = (jnp.zeros(shape, jnp.uint8), jnp.zeros(stat_shape, jnp.float32),
            jnp.zeros(stat_shape, jnp.float32))
    else:
      mu = (jnp.zeros(shape, jnp.float32), empty, empty)
    if pl.factored:
      row = jnp.zeros(shape[:-2] + (1, shape[-1]), jnp.float32)
      col = jnp.zeros(shape[:-1] + (1,), jnp.float32)
      second = (row, col, empty, row, col)
    else:
      second = (empty, empty, jnp.zeros(shape, jnp.float32), empty, empty)
    return mu + second

  def init_fn(params):
    per_leaf = jax.tree_util.tree_map_with_path(init_leaf, params)
    return ScaleByCameState(*_unzip(per_leaf, params, len(ScaleByCameState._fields)))

  def update_leaf(path, g, mu, mu_scale, mu_min, nu_row, nu_col, nu, res_row, res_col):
    pl = plan(path, g)
    dtype, g = g.dtype, g.astype(jnp.float32)
    u = jnp.square(g) + eps1
    if pl.factored:
      nu_row = _ema(nu_row, jnp.mean(u, axis=-2, keepdims=True), b2)
      nu_col = _ema(nu_col, jnp.mean(u, axis=-1, keepdims=True), b2)
      step = _factored_rsqrt(nu_row, nu_col) * g
    else:
      nu = _ema(nu, u, b2)
      step = jax.lax.rsqrt(nu) * g
    step = step / jnp.maximum(_rms(step, pl.layers) / clip_threshold, 1.0)

    m = quantization.dequantize_minmax(mu, mu_scale, mu_min, block_size) if pl.quantized else mu
    m = _ema(m, step, b1)
    if pl.factored:
      res = jnp.square(step - m) + eps2
      res_row = _ema(res_row, jnp.mean(res, axis=-2, keepdims=True), b3)
      res_col = _ema(res_col, jnp.mean(res, axis=-1, keepdims=True), b3)
      direction = _factored_rsqrt(res_row, res_col) * m
    else:
      direction = m
    if pl.quantized:
      mu, mu_scale, mu_min = quantization.quantize_minmax(m, block_size)
    else:
      mu = m
    return direction.astype(dtype), (mu, mu_scale, mu_min, nu_row, nu_col, nu, res_row, res_col)

  def update_fn(updates, state, params=None):
    del params
    out = jax.tree_util.tree_map_with_path(
        lambda path, g, *s: update_leaf(path, g, *s), updates, *state)
    directions = jax.tree.map(lambda g, o: o[0], updates, out)
    fields = jax.tree.map(lambda g, o: o[1], updates, out)
    return directions, ScaleByCameState(*_unzip(fields, updates, len(ScaleByCameState._fields)))

  return optax.GradientTransformation(init_fn, update_fn)


def _unzip(per_leaf, like, n):
  """A tree of n-tuples shaped like `like` -> n trees shaped like `like`."""
  return tuple(jax.tree.map(lambda _, t, i=i: t[i], like, per_leaf) for i in range(n))


def came(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    b3: float = 0.9999,
    eps: tuple = (1e-30, 1e-16),
    clip_threshold: float = 1.0,
    weight_decay: float = 0.0,
    mask: Any = None,
    layer_axis_pattern: Optional[str] = None,
) -> optax.GradientTransformation:
  """CAME with decoupled weight decay: p <- p - lr * (update + weight_decay * p), as came_pytorch.

  mask: as optax.add_decayed_weights (a tree of bools or a callable on params); None decays all.
  """
  return optax.chain(
      scale_by_came(b1, b2, b3, eps, clip_threshold, layer_axis_pattern=layer_axis_pattern),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate),
  )


def came_8bit(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    b3: float = 0.9999,
    eps: tuple = (1e-30, 1e-16),
    clip_threshold: float = 1.0,
    weight_decay: float = 0.0,
    mask: Any = None,
    min_8bit_size: int = 16384,
    block_size: int = 2048,
    layer_axis_pattern: Optional[str] = None,
) -> optax.GradientTransformation:
  """CAME whose first moment of matrices with more than `min_8bit_size` entries (per layer) is
  stored as min-max uint8 in blocks of `block_size` output rows (NVlabs's defaults)."""
  return optax.chain(
      scale_by_came(b1, b2, b3, eps, clip_threshold, min_8bit_size, block_size, layer_axis_pattern),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate),
  )

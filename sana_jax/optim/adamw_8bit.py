"""AdamW with 8-bit block-wise states, as bitsandbytes' AdamW8bit (its CPU path, step for step).

Each step dequantises m (signed dynamic map) and v (unsigned dynamic map), then in float32:
  m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2
  p <- p (1 - lr wd) - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
and requantises m and v (blocks of `block_size` entries with a float32 absmax each). The update
uses the float32 m and v of this step, so quantisation error only reaches the next step.
Parameters with fewer than `min_8bit_size` entries (per layer) keep float32 states.
"""
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from sana_jax.optim import layout, quantization


class ScaleByAdam8bitState(NamedTuple):
  """mu / nu are uint8 codes (parameter-shaped) where quantised, else float32; their absmax trees
  hold one value per block [..., ceil(n / block_size)] there, else a [1, ..., 1] placeholder."""
  count: jax.Array
  mu: Any
  mu_absmax: Any
  nu: Any
  nu_absmax: Any


def scale_by_adam_8bit(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    min_8bit_size: int = 4096,
    block_size: int = 256,
    layer_axis_pattern: Optional[str] = None,
) -> optax.GradientTransformation:
  """Adam's bias-corrected direction with 8-bit states (to be scaled by -learning_rate)."""
  for beta, label in ((b1, "b1"), (b2, "b2")):
    if not 0.0 <= beta < 1.0:
      raise ValueError(f"AdamW {label} must lie in [0, 1), got {beta}")
  if block_size < 1:
    raise ValueError(f"block_size must be positive, got {block_size}")

  def quantized(path, x) -> bool:
    layers = layout.layer_axes(layout.param_name(path), x.ndim, layer_axis_pattern)
    per_layer = 1
    for size in x.shape[layers:]:
      per_layer *= size
    return x.ndim > 0 and per_layer >= min_8bit_size

  def init_leaf(path, p):
    if quantized(path, p):
      codes = jnp.zeros(p.shape, jnp.uint8)
      absmax = jnp.zeros(p.shape[:-1] + (quantization.num_blocks(p.shape[-1], block_size),),
                         jnp.float32)
      return codes, absmax, codes, absmax
    empty = jnp.zeros(layout.placeholder_shape(p.shape), jnp.float32)
    zeros = jnp.zeros(p.shape, jnp.float32)
    return zeros, empty, zeros, empty

  def init_fn(params):
    per_leaf = jax.tree_util.tree_map_with_path(init_leaf, params)
    fields = tuple(jax.tree.map(lambda _, t, i=i: t[i], params, per_leaf) for i in range(4))
    return ScaleByAdam8bitState(jnp.zeros((), jnp.int32), *fields)

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    t = count.astype(jnp.float32)
    correction1 = 1.0 - b1 ** t
    correction2 = jnp.sqrt(1.0 - b2 ** t)

    def leaf(path, g, mu, mu_absmax, nu, nu_absmax):
      q = quantized(path, g)
      dtype, g = g.dtype, g.astype(jnp.float32)
      if q:
        mu = quantization.dequantize_dynamic(mu, mu_absmax, signed=True, block_size=block_size)
        nu = quantization.dequantize_dynamic(nu, nu_absmax, signed=False, block_size=block_size)
      mu = mu * b1 + g * (1.0 - b1)
      nu = nu * b2 + g * g * (1.0 - b2)
      direction = mu / (jnp.sqrt(nu) / correction2 + eps) / correction1
      if q:
        mu, mu_absmax = quantization.quantize_dynamic(mu, signed=True, block_size=block_size)
        nu, nu_absmax = quantization.quantize_dynamic(nu, signed=False, block_size=block_size)
      return direction.astype(dtype), (mu, mu_absmax, nu, nu_absmax)

    out = jax.tree_util.tree_map_with_path(leaf, updates, state.mu, state.mu_absmax, state.nu,
                                           state.nu_absmax)
    directions = jax.tree.map(lambda _, o: o[0], updates, out)
    fields = tuple(jax.tree.map(lambda _, o, i=i: o[1][i], updates, out) for i in range(4))
    return directions, ScaleByAdam8bitState(count, *fields)

  return optax.GradientTransformation(init_fn, update_fn)


def adamw_8bit(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    mask: Any = None,
    min_8bit_size: int = 4096,
    block_size: int = 256,
    layer_axis_pattern: Optional[str] = None,
) -> optax.GradientTransformation:
  """bitsandbytes' AdamW8bit (same defaults): p <- p - lr * (adam_direction + weight_decay * p).

  mask: as optax.add_decayed_weights (a tree of bools or a callable on params); None decays all.
  """
  return optax.chain(
      scale_by_adam_8bit(b1, b2, eps, min_8bit_size, block_size, layer_axis_pattern),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate),
  )

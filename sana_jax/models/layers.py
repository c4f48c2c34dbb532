"""Small building blocks shared by the models: the RMSNorm, embeddings, logical-axis helpers."""
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def partitioned(init, names):
  """An initialiser that records the logical axis names of the parameter it makes.

  The names ("embed", "heads", "mlp", ...) are mapped to mesh axes by the rules in the training
  config, so the model never mentions a mesh.
  """
  return nnx.with_partitioning(init, names, eager_sharding=False)


def dense(in_features, out_features, names, *, use_bias=True, dtype, param_dtype, rngs,
          kernel_init=nnx.initializers.xavier_uniform()):
  """nnx.Linear with logical axis names on kernel [in, out] and bias [out]."""
  return nnx.Linear(
      in_features, out_features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
      kernel_init=partitioned(kernel_init, names),
      bias_init=partitioned(nnx.initializers.zeros_init(), (names[1],)),
      rngs=rngs)


class RMSNorm(nnx.Module):
  """RMSNorm over the last axis: float32 statistics, the result cast back to the input dtype.

  The one norm of every model here: SANA's weight-only norm (diffusers / NVlabs), Gemma's
  zero-centred gain `(1 + w)` (`zero_centered=True`, weight starting at 0) and DC-AE's affine norm
  (`bias=True`). name: the logical axis of the weight for sharding rules, or None.
  """

  def __init__(self, dim, *, eps, param_dtype=jnp.float32, name=None, zero_centered=False, bias=False,
               init_value=None):
    self.eps = eps
    self.zero_centered = zero_centered
    init_value = (0.0 if zero_centered else 1.0) if init_value is None else init_value
    sharding = dict(out_sharding=(name,), eager_sharding=False) if name else {}
    self.weight = nnx.Param(jnp.full((dim,), init_value, param_dtype), **sharding)
    self.bias = nnx.Param(jnp.zeros((dim,), param_dtype), **sharding) if bias else None

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    gain = self.weight[...].astype(jnp.float32)
    y = y * (1.0 + gain if self.zero_centered else gain)
    if self.bias is not None:
      y = y + self.bias[...].astype(jnp.float32)
    return y.astype(x.dtype)


def layer_norm(x, eps):
  """LayerNorm without affine parameters, computed in float32 and cast back."""
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def timestep_sinusoid(timesteps, dim=256, max_period=10000.0):
  """[B] -> [B, dim]: frequencies exp(-ln(max_period) i / (dim/2)), order [cos, sin]."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = timesteps.astype(jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def sincos_pos_embed_2d(dim, height, width, base_size, interpolation_scale):
  """[H*W, dim] float32 sincos position table, row-major tokens, as diffusers' PatchEmbed lays it out.

  The first half of the channels encodes the column coordinate, the second half the row.
  """
  cols = np.arange(width, dtype=np.float64) / (width / base_size) / interpolation_scale
  rows = np.arange(height, dtype=np.float64) / (height / base_size) / interpolation_scale
  col_grid = np.tile(cols[None, :], (height, 1)).reshape(-1)  # [H*W]
  row_grid = np.tile(rows[:, None], (1, width)).reshape(-1)

  def one_d(pos, d):
    omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
    out = pos[:, None] * omega[None]
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  emb = np.concatenate([one_d(col_grid, dim // 2), one_d(row_grid, dim // 2)], axis=1)
  return jnp.asarray(emb, jnp.float32)

"""DC-AE (deep-compression autoencoder, diffusers `AutoencoderDC`) in Flax NNX, NHWC.

SANA's autoencoder: 32x spatial compression to 32 latent channels (Sana f32c32), built from
ResBlocks and EfficientViT blocks (multi-scale ReLU linear attention + GLU MBConv). The module
tree mirrors diffusers' names (`encoder.down_blocks.1.0.attn.to_q`, ...) so the loader (sana_jax/convert/autoencoder.py)
maps a diffusers checkpoint one key to one variable.

  DCAE.encode(images [B, H, W, 3] in [-1, 1]) -> latents [B, H/f, W/f, C]   (raw, not scaled)
  DCAE.decode(latents [B, h, w, C])           -> images [B, h*f, w*f, 3]
  DCAE.decode_tiled / encode_tiled            -> the same, tile by tile with blended seams
  latents for the diffusion model = encode(x) * scaling_factor
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from sana_jax.models.layers import RMSNorm

_ACTIVATIONS = {
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "relu": jax.nn.relu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
}
_BLOCK_TYPES = ("ResBlock", "EfficientViTBlock")
_NORM_TYPES = ("rms_norm", "batch_norm")
_DOWNSAMPLE_TYPES = ("conv", "pixel_unshuffle")
_UPSAMPLE_TYPES = ("interpolate", "pixel_shuffle")


@dataclasses.dataclass(frozen=True)
class DCAEConfig:
  """diffusers `AutoencoderDC` config, same names and defaults; per-stage fields as tuples."""
  in_channels: int = 3
  latent_channels: int = 32
  attention_head_dim: int = 32
  encoder_block_types: str | tuple = "ResBlock"
  decoder_block_types: str | tuple = "ResBlock"
  encoder_block_out_channels: tuple = (128, 256, 512, 512, 1024, 1024)
  decoder_block_out_channels: tuple = (128, 256, 512, 512, 1024, 1024)
  encoder_layers_per_block: tuple = (2, 2, 2, 3, 3, 3)
  decoder_layers_per_block: tuple = (3, 3, 3, 3, 3, 3)
  encoder_qkv_multiscales: tuple = ((), (), (), (5,), (5,), (5,))
  decoder_qkv_multiscales: tuple = ((), (), (), (5,), (5,), (5,))
  upsample_block_type: str = "pixel_shuffle"
  downsample_block_type: str = "pixel_unshuffle"
  decoder_norm_types: str | tuple = "rms_norm"
  decoder_act_fns: str | tuple = "silu"
  encoder_out_shortcut: bool = True
  decoder_in_shortcut: bool = True
  decoder_conv_act_fn: str = "relu"
  scaling_factor: float = 1.0

  @classmethod
  def from_dict(cls, config):
    """From a diffusers config.json dict; keys starting with "_" are metadata and skipped."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(k for k in config if not k.startswith("_") and k not in known)
    if unknown:
      raise ValueError(f"AutoencoderDC config has keys this implementation does not know: {unknown}")
    return cls(**{k: v for k, v in config.items() if k in known})

  def __post_init__(self):
    def stages(value, n):
      return tuple(value) if isinstance(value, (list, tuple)) else (value,) * n

    n_enc, n_dec = len(self.encoder_block_out_channels), len(self.decoder_block_out_channels)
    fix = dict(
        encoder_block_types=stages(self.encoder_block_types, n_enc),
        decoder_block_types=stages(self.decoder_block_types, n_dec),
        decoder_norm_types=stages(self.decoder_norm_types, n_dec),
        decoder_act_fns=stages(self.decoder_act_fns, n_dec),
        encoder_block_out_channels=tuple(self.encoder_block_out_channels),
        decoder_block_out_channels=tuple(self.decoder_block_out_channels),
        encoder_layers_per_block=tuple(self.encoder_layers_per_block),
        decoder_layers_per_block=tuple(self.decoder_layers_per_block),
        encoder_qkv_multiscales=tuple(tuple(k) for k in self.encoder_qkv_multiscales),
        decoder_qkv_multiscales=tuple(tuple(k) for k in self.decoder_qkv_multiscales),
        downsample_block_type=self.downsample_block_type.lower(),
        upsample_block_type=self.upsample_block_type.lower(),
    )
    for name, value in fix.items():
      object.__setattr__(self, name, value)
    for prefix, n in (("encoder", n_enc), ("decoder", n_dec)):
      for field in ("block_types", "layers_per_block", "qkv_multiscales"):
        if len(getattr(self, f"{prefix}_{field}")) != n:
          raise ValueError(f"{prefix}_{field} has {len(getattr(self, f'{prefix}_{field}'))} "
                           f"entries for {n} stages")
    self._check("block type", self.encoder_block_types + self.decoder_block_types, _BLOCK_TYPES)
    self._check("decoder norm type", self.decoder_norm_types, _NORM_TYPES)
    self._check("activation", self.decoder_act_fns + (self.decoder_conv_act_fn,), tuple(_ACTIVATIONS))
    self._check("downsample_block_type", (self.downsample_block_type,), _DOWNSAMPLE_TYPES)
    self._check("upsample_block_type", (self.upsample_block_type,), _UPSAMPLE_TYPES)

  @staticmethod
  def _check(what, values, allowed):
    bad = sorted(set(values) - set(allowed))
    if bad:
      raise ValueError(f"unsupported {what} {bad}; supported: {list(allowed)}")

  @property
  def spatial_compression_ratio(self):
    return 2 ** (len(self.encoder_block_out_channels) - 1)


# ---------------------------------------------------------------------------------------------
# Layout helpers: PyTorch's channel orders, written for NHWC.


def pixel_unshuffle(x, r):
  """[B, H, W, C] -> [B, H/r, W/r, C*r*r]; channel c*r*r + i*r + j holds pixel (r*h+i, r*w+j)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // r, r, w // r, r, c)
  return x.transpose(0, 1, 3, 5, 2, 4).reshape(b, h // r, w // r, c * r * r)


def pixel_shuffle(x, r):
  """[B, H, W, C*r*r] -> [B, H*r, W*r, C]; the inverse of `pixel_unshuffle`."""
  b, h, w, c = x.shape
  x = x.reshape(b, h, w, c // (r * r), r, r)
  return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, h * r, w * r, c // (r * r))


def channel_mean(x, group):
  """Average each run of `group` consecutive channels: [..., C] -> [..., C/group]."""
  return x.reshape(*x.shape[:-1], x.shape[-1] // group, group).mean(-1)


def conv(in_ch, out_ch, kernel, *, stride=1, groups=1, bias=True, dtype=jnp.float32, rngs):
  """nnx.Conv with PyTorch's symmetric `kernel // 2` padding (differs from SAME at stride 2)."""
  pad = kernel // 2
  return nnx.Conv(in_ch, out_ch, (kernel, kernel), strides=stride, padding=((pad, pad), (pad, pad)),
                  feature_group_count=groups, use_bias=bias, dtype=dtype, param_dtype=dtype,
                  rngs=rngs)


class BatchNorm(nnx.Module):
  """Inference-mode BatchNorm2d (running statistics, kept in float32)."""

  def __init__(self, dim, *, eps=1e-5, dtype=jnp.float32):
    self.eps = eps
    self.weight = nnx.Param(jnp.ones((dim,), dtype))
    self.bias = nnx.Param(jnp.zeros((dim,), dtype))
    self.running_mean = nnx.BatchStat(jnp.zeros((dim,), jnp.float32))
    self.running_var = nnx.BatchStat(jnp.ones((dim,), jnp.float32))

  def __call__(self, x):
    scale = self.weight[...].astype(jnp.float32) * jax.lax.rsqrt(self.running_var[...] + self.eps)
    shift = self.bias[...].astype(jnp.float32) - self.running_mean[...] * scale
    return (x.astype(jnp.float32) * scale + shift).astype(x.dtype)


def _rms_norm(dim, dtype):
  """DC-AE's RMSNorm over channels: weight and bias, eps 1e-5."""
  return RMSNorm(dim, eps=1e-5, param_dtype=dtype, bias=True)


def make_norm(norm_type, dim, *, dtype=jnp.float32):
  return _rms_norm(dim, dtype) if norm_type == "rms_norm" else BatchNorm(dim, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Blocks.


class ResBlock(nnx.Module):
  """x + norm(conv3x3_nobias(act(conv3x3(x))))."""

  def __init__(self, channels, *, norm_type, act_fn, dtype=jnp.float32, rngs):
    self.act = _ACTIVATIONS[act_fn]
    self.conv1 = conv(channels, channels, 3, dtype=dtype, rngs=rngs)
    self.conv2 = conv(channels, channels, 3, bias=False, dtype=dtype, rngs=rngs)
    self.norm = make_norm(norm_type, channels, dtype=dtype)

  def __call__(self, x):
    return x + self.norm(self.conv2(self.act(self.conv1(x))))


class MultiscaleProjection(nnx.Module):
  """One extra q|k|v scale: depthwise k x k conv, then a 1x1 conv grouped per (q/k/v, head)."""

  def __init__(self, channels, num_heads, kernel, *, dtype=jnp.float32, rngs):
    self.proj_in = conv(channels, channels, kernel, groups=channels, bias=False, dtype=dtype,
                        rngs=rngs)
    self.proj_out = conv(channels, channels, 1, groups=3 * num_heads, bias=False, dtype=dtype,
                         rngs=rngs)

  def __call__(self, x):
    return self.proj_out(self.proj_in(x))


class MultiscaleLinearAttention(nnx.Module):
  """LiteMLA: ReLU attention over all pixels, on q|k|v and its multi-scale aggregates, + residual.

  The concatenated channels [q | k | v | scale1(q|k|v) | ...] are cut into heads of 3*d
  contiguous channels, each read as (q, k, v) of width d, exactly as diffusers reshapes them.
  Maps with H*W > d use the linear form (float32); smaller ones the quadratic form.
  """

  def __init__(self, channels, head_dim, kernel_sizes, *, norm_type, eps=1e-15, dtype=jnp.float32,
               rngs):
    self.head_dim = head_dim
    self.eps = eps
    num_heads = channels // head_dim
    inner = num_heads * head_dim
    self.to_q = nnx.Linear(channels, inner, use_bias=False, dtype=dtype, param_dtype=dtype,
                           rngs=rngs)
    self.to_k = nnx.Linear(channels, inner, use_bias=False, dtype=dtype, param_dtype=dtype,
                           rngs=rngs)
    self.to_v = nnx.Linear(channels, inner, use_bias=False, dtype=dtype, param_dtype=dtype,
                           rngs=rngs)
    self.to_qkv_multiscale = nnx.List([
        MultiscaleProjection(3 * inner, num_heads, k, dtype=dtype, rngs=rngs) for k in kernel_sizes])
    self.to_out = nnx.Linear(inner * (1 + len(kernel_sizes)), channels, use_bias=False,
                             dtype=dtype, param_dtype=dtype, rngs=rngs)
    self.norm_out = make_norm(norm_type, channels, dtype=dtype)

  def __call__(self, x):
    b, h, w, _ = x.shape
    d = self.head_dim
    qkv = jnp.concatenate([self.to_q(x), self.to_k(x), self.to_v(x)], axis=-1)  # [B, H, W, 3*inner]
    qkv = jnp.concatenate([qkv] + [proj(qkv) for proj in self.to_qkv_multiscale], axis=-1)
    heads = qkv.reshape(b, h * w, -1, 3 * d)  # [B, N, heads, 3d]
    linear = h * w > d
    if linear:
      heads = heads.astype(jnp.float32)
    q = jax.nn.relu(heads[..., :d])
    k = jax.nn.relu(heads[..., d:2 * d])
    v = heads[..., 2 * d:]
    if linear:
      kv = jnp.einsum("bnhe,bnhf->bhef", v, k)  # [B, heads, d_v, d_k]
      num = jnp.einsum("bhef,bnhf->bnhe", kv, q)
      den = jnp.einsum("bhf,bnhf->bnh", k.sum(axis=1), q)[..., None]
      out = (num / (den + self.eps)).astype(x.dtype)
    else:
      scores = jnp.einsum("bmhf,bnhf->bhmn", k, q).astype(jnp.float32)  # [B, heads, keys, queries]
      scores = scores / (scores.sum(axis=2, keepdims=True) + self.eps)
      out = jnp.einsum("bhmn,bmhe->bnhe", scores.astype(v.dtype), v)
    out = self.to_out(out.reshape(b, h, w, -1))
    return x + self.norm_out(out)


class GLUMBConv(nnx.Module):
  """x + rmsnorm(pointwise(value * silu(gate))), value|gate from a depthwise 3x3 over a 1x1 expansion."""

  def __init__(self, channels, *, expand_ratio=4, dtype=jnp.float32, rngs):
    hidden = int(expand_ratio * channels)
    self.conv_inverted = conv(channels, 2 * hidden, 1, dtype=dtype, rngs=rngs)
    self.conv_depth = conv(2 * hidden, 2 * hidden, 3, groups=2 * hidden, dtype=dtype, rngs=rngs)
    self.conv_point = conv(hidden, channels, 1, bias=False, dtype=dtype, rngs=rngs)
    self.norm = _rms_norm(channels, dtype)

  def __call__(self, x):
    y = self.conv_depth(jax.nn.silu(self.conv_inverted(x)))
    value, gate = jnp.split(y, 2, axis=-1)
    return x + self.norm(self.conv_point(value * jax.nn.silu(gate)))


class EfficientViTBlock(nnx.Module):
  """Multi-scale linear attention, then GLU MBConv; both residual."""

  def __init__(self, channels, *, head_dim, kernel_sizes, norm_type, dtype=jnp.float32, rngs):
    self.attn = MultiscaleLinearAttention(channels, head_dim, kernel_sizes, norm_type=norm_type,
                                          dtype=dtype, rngs=rngs)
    self.conv_out = GLUMBConv(channels, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return self.conv_out(self.attn(x))


def make_block(block_type, channels, *, head_dim, kernel_sizes, norm_type, act_fn,
               dtype=jnp.float32, rngs):
  if block_type == "ResBlock":
    return ResBlock(channels, norm_type=norm_type, act_fn=act_fn, dtype=dtype, rngs=rngs)
  return EfficientViTBlock(channels, head_dim=head_dim, kernel_sizes=kernel_sizes,
                           norm_type=norm_type, dtype=dtype, rngs=rngs)


class DownBlock(nnx.Module):
  """Halve H and W: stride-2 conv, or conv + pixel-unshuffle; shortcut = unshuffle + channel mean."""

  def __init__(self, in_ch, out_ch, *, unshuffle, shortcut, dtype=jnp.float32, rngs):
    self.unshuffle = unshuffle
    self.shortcut = shortcut
    self.group = in_ch * 4 // out_ch
    if unshuffle:
      if out_ch % 4:
        raise ValueError(f"pixel_unshuffle downsampling needs out channels divisible by 4, got {out_ch}")
      self.conv = conv(in_ch, out_ch // 4, 3, dtype=dtype, rngs=rngs)
    else:
      self.conv = conv(in_ch, out_ch, 3, stride=2, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    y = self.conv(x)
    if self.unshuffle:
      y = pixel_unshuffle(y, 2)
    if self.shortcut:
      y = y + channel_mean(pixel_unshuffle(x, 2), self.group)
    return y


class UpBlock(nnx.Module):
  """Double H and W: nearest x2 + conv, or conv + pixel-shuffle; shortcut = repeat + shuffle."""

  def __init__(self, in_ch, out_ch, *, interpolate, shortcut, dtype=jnp.float32, rngs):
    self.interpolate = interpolate
    self.shortcut = shortcut
    self.repeats = out_ch * 4 // in_ch
    self.conv = conv(in_ch, out_ch if interpolate else out_ch * 4, 3, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    if self.interpolate:
      y = self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))
    else:
      y = pixel_shuffle(self.conv(x), 2)
    if self.shortcut:
      y = y + pixel_shuffle(jnp.repeat(x, self.repeats, axis=-1), 2)
    return y


# ---------------------------------------------------------------------------------------------
# Encoder, decoder, autoencoder.


class Encoder(nnx.Module):
  """conv_in -> stages of blocks, each but the last ending in a DownBlock -> conv_out (+ mean shortcut)."""

  def __init__(self, cfg, *, dtype=jnp.float32, rngs):
    ch, layers = cfg.encoder_block_out_channels, cfg.encoder_layers_per_block
    unshuffle = cfg.downsample_block_type == "pixel_unshuffle"
    if layers[0] > 0:
      self.conv_in = conv(cfg.in_channels, ch[0], 3, dtype=dtype, rngs=rngs)
    else:
      self.conv_in = DownBlock(cfg.in_channels, ch[1], unshuffle=unshuffle, shortcut=False,
                               dtype=dtype, rngs=rngs)
    stages = []
    for i, (width, depth) in enumerate(zip(ch, layers)):
      stage = [make_block(cfg.encoder_block_types[i], width, head_dim=cfg.attention_head_dim,
                          kernel_sizes=cfg.encoder_qkv_multiscales[i], norm_type="rms_norm",
                          act_fn="silu", dtype=dtype, rngs=rngs) for _ in range(depth)]
      if i < len(ch) - 1 and depth > 0:
        stage.append(DownBlock(width, ch[i + 1], unshuffle=unshuffle, shortcut=True, dtype=dtype,
                               rngs=rngs))
      stages.append(nnx.List(stage))
    self.down_blocks = nnx.List(stages)
    self.conv_out = conv(ch[-1], cfg.latent_channels, 3, dtype=dtype, rngs=rngs)
    self.out_group = ch[-1] // cfg.latent_channels if cfg.encoder_out_shortcut else None

  def __call__(self, x):
    x = self.conv_in(x)
    for stage in self.down_blocks:
      for block in stage:
        x = block(x)
    y = self.conv_out(x)
    if self.out_group is not None:
      y = y + channel_mean(x, self.out_group)
    return y


class Decoder(nnx.Module):
  """conv_in (+ repeat shortcut) -> stages from deepest, each but the last opening with an UpBlock
  -> RMSNorm -> act -> conv_out."""

  def __init__(self, cfg, *, dtype=jnp.float32, rngs):
    ch, layers = cfg.decoder_block_out_channels, cfg.decoder_layers_per_block
    interpolate = cfg.upsample_block_type == "interpolate"
    self.conv_in = conv(cfg.latent_channels, ch[-1], 3, dtype=dtype, rngs=rngs)
    self.in_repeats = ch[-1] // cfg.latent_channels if cfg.decoder_in_shortcut else None
    stages = []
    for i, (width, depth) in enumerate(zip(ch, layers)):
      stage = []
      if i < len(ch) - 1 and depth > 0:
        stage.append(UpBlock(ch[i + 1], width, interpolate=interpolate, shortcut=True, dtype=dtype,
                             rngs=rngs))
      stage += [make_block(cfg.decoder_block_types[i], width, head_dim=cfg.attention_head_dim,
                           kernel_sizes=cfg.decoder_qkv_multiscales[i],
                           norm_type=cfg.decoder_norm_types[i], act_fn=cfg.decoder_act_fns[i],
                           dtype=dtype, rngs=rngs) for _ in range(depth)]
      stages.append(nnx.List(stage))
    self.up_blocks = nnx.List(stages)  # index = stage, run deepest first
    width = ch[0] if layers[0] > 0 else ch[1]
    self.norm_out = _rms_norm(width, dtype)
    self.act = _ACTIVATIONS[cfg.decoder_conv_act_fn]
    if layers[0] > 0:
      self.conv_out = conv(width, cfg.in_channels, 3, dtype=dtype, rngs=rngs)
    else:
      self.conv_out = UpBlock(width, cfg.in_channels, interpolate=interpolate, shortcut=False,
                              dtype=dtype, rngs=rngs)

  def __call__(self, z):
    x = self.conv_in(z)
    if self.in_repeats is not None:
      x = x + jnp.repeat(z, self.in_repeats, axis=-1)
    for stage in reversed(self.up_blocks):
      for block in stage:
        x = block(x)
    return self.conv_out(self.act(self.norm_out(x)))


@functools.partial(jax.jit, static_argnums=0)
def encode_with(graphdef, state, images):
  """An autoencoder's `.encoder` on images, jitted over (graphdef, state) (any module with one)."""
  return nnx.merge(graphdef, state).encoder(images)


@functools.partial(jax.jit, static_argnums=0)
def decode_with(graphdef, state, latents):
  """An autoencoder's `.decoder` on raw latents, jitted over (graphdef, state)."""
  return nnx.merge(graphdef, state).decoder(latents)


def check_nhwc(x, channels: int, multiple: int, what: str) -> None:
  """x must be [B, H, W, channels] with H and W multiples of `multiple`; else one ValueError line."""
  if x.ndim != 4 or x.shape[-1] != channels:
    raise ValueError(f"{what} must be [B, H, W, {channels}] (NHWC), got shape {x.shape}")
  if x.shape[1] % multiple or x.shape[2] % multiple:
    raise ValueError(f"{what} height and width must be multiples of {multiple}, got {x.shape[1:3]}")


@functools.partial(jax.jit, static_argnums=(2, 3))
def _blend(prev, tile, extent, axis):
  """Cross-fade the first `extent` rows/columns of `tile` from the last ones of `prev` (diffusers
  blend_v / blend_h: weight of `tile` = y / extent)."""
  extent = min(prev.shape[axis], tile.shape[axis], extent)
  if extent == 0:
    return tile
  shape = [1] * tile.ndim
  shape[axis] = extent
  w = (jnp.arange(extent, dtype=jnp.float32) / extent).reshape(shape).astype(tile.dtype)
  head = jax.lax.slice_in_dim(tile, 0, extent, axis=axis)
  tail = jax.lax.slice_in_dim(prev, prev.shape[axis] - extent, prev.shape[axis], axis=axis)
  rest = jax.lax.slice_in_dim(tile, extent, tile.shape[axis], axis=axis)
  return jnp.concatenate([tail * (1 - w) + head * w, rest], axis=axis)


def _tiled(x, apply, tile, stride, blend, out_stride):
  """Apply `apply` to overlapping tile x tile windows (step `stride`) of x [B, H, W, C]; blend each
  output tile with the (already blended) ones above and to the left, keep its first out_stride
  rows/columns. Only one row of output tiles is held at a time."""
  height, width = x.shape[1:3]
  above, rows = None, []
  for i in range(0, height, stride):
    row = []
    for n, j in enumerate(range(0, width, stride)):
      out = apply(x[:, i:i + tile, j:j + tile])
      if above is not None:
        out = _blend(above[n], out, blend, axis=1)
      if row:
        out = _blend(row[-1], out, blend, axis=2)
      row.append(out)
    rows.append(jnp.concatenate([t[:, :out_stride, :out_stride] for t in row], axis=2))
    above = row
  return jnp.concatenate(rows, axis=1)


class DCAE(nnx.Module):
  """diffusers `AutoencoderDC` in NHWC. Latents are raw: multiply by `scaling_factor` for the DiT."""

  def __init__(self, config: DCAEConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.config = config
    self.scaling_factor = config.scaling_factor
    self.spatial_compression_ratio = config.spatial_compression_ratio
    self.encoder = Encoder(config, dtype=dtype, rngs=rngs)
    self.decoder = Decoder(config, dtype=dtype, rngs=rngs)
    self.dtype = dtype

  @nnx.jit
  def encode(self, images):
    """[B, H, W, in_channels] in [-1, 1] -> raw latents [B, H/f, W/f, latent_channels]."""
    check_nhwc(images, self.config.in_channels, self.spatial_compression_ratio, "images")
    return self.encoder(images.astype(self.dtype))

  @nnx.jit
  def decode(self, latents):
    """Raw latents [B, h, w, latent_channels] -> images [B, h*f, w*f, in_channels], about [-1, 1]."""
    check_nhwc(latents, self.config.latent_channels, 1, "latents")
    return self.decoder(latents.astype(self.dtype))

  def decode_tiled(self, latents, tile_latent_size=16, overlap=2):
    """`decode` in overlapping latent tiles of tile_latent_size (stride tile - overlap), seams
    cross-faded over overlap*f pixels, as diffusers' `tiled_decode` with tile_sample_min =
    tile_latent_size*f and tile_sample_stride = (tile_latent_size - overlap)*f. One compiled
    decoder per distinct tile shape (at most four); memory is bounded by one tile's activations."""
    check_nhwc(latents, self.config.latent_channels, 1, "latents")
    if not 0 <= overlap < tile_latent_size:
      raise ValueError(f"need 0 <= overlap < tile_latent_size, got {overlap=}, {tile_latent_size=}")
    f = self.spatial_compression_ratio
    graphdef, state = nnx.split(self)
    stride = tile_latent_size - overlap
    apply = functools.partial(decode_with, graphdef, state)
    return _tiled(latents.astype(self.dtype), apply, tile_latent_size, stride, overlap * f, stride * f)

  def encode_tiled(self, images, tile_size=512, overlap=64):
    """`encode` in overlapping pixel tiles, as diffusers' `tiled_encode` with tile_sample_min =
    tile_size and tile_sample_stride = tile_size - overlap (both multiples of f)."""
    f = self.spatial_compression_ratio
    check_nhwc(images, self.config.in_channels, f, "images")
    if tile_size % f or overlap % f or not 0 <= overlap < tile_size:
      raise ValueError(f"tile_size and overlap must be multiples of {f} with 0 <= overlap < "
                       f"tile_size, got {tile_size=}, {overlap=}")
    graphdef, state = nnx.split(self)
    stride = tile_size - overlap
    apply = functools.partial(encode_with, graphdef, state)
    return _tiled(images.astype(self.dtype), apply, tile_size, stride, overlap // f, stride // f)

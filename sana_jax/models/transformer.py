"""The SANA linear diffusion transformer (SANA 1.0 and 1.5) in Flax NNX.

One file, top to bottom as the forward pass runs: patch embedding, timestep and caption
conditioning (optionally with the pooled caption, `pooled_caption`), a stack of `SanaBlock`s
(linear self-attention, softmax cross-attention, Mix-FFN) run as one `lax.scan` over a stacked
layer axis, and the modulated output head.

Call contract (every other part of sana_jax relies on it):
  model(latents [B, H, W, C_in], timesteps [B] in 0..1000, text [B, L, caption_channels],
        text_mask [B, L] with 1 = token, 0 = padding) -> velocity [B, H, W, C_out]
With `prediction="x0"` the network's output is read as the clean latent x0 and returned as the
velocity (latents - x0) / max(sigma, X0_MIN_SIGMA), sigma = timesteps / 1000, so callers see the
same contract (the timesteps must then be sigma * 1000: a pipeline `timestep_scale` of 1).
"""

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from flax.core import spmd as flax_spmd

from sana_jax import kernels
from sana_jax.models.layers import (RMSNorm, dense, layer_norm, partitioned, sincos_pos_embed_2d,
                                    timestep_sinusoid)

# Additive bias on padded text keys; the reference uses -10000 rather than -inf.
_TEXT_MASK_BIAS = -10000.0
PREDICTIONS = ("velocity", "x0")
# x0 models divide by sigma; below this the division is clipped (JiT's t_eps). It also bounds the
# velocity loss's weight on the x0 error, 1 / sigma^2, at 400.
X0_MIN_SIGMA = 0.05

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def constrain(x, names):
  """Pins an activation's sharding by logical axis names, when traced under logical-axis rules
  (`flax.core.spmd.logical_axis_rules`) and a mesh (`jax.sharding.use_abstract_mesh`); else a no-op.

  Without these pins XLA may keep a whole batch of activations on every device of an FSDP mesh.
  """
  rules = flax_spmd.get_logical_axis_rules()
  mesh = jax.sharding.get_abstract_mesh()
  if not rules or mesh.empty:
    return x
  spec = jax.sharding.PartitionSpec(*flax_spmd.from_sharding_rules(names, rules))
  return jax.lax.with_sharding_constraint(x, spec)


def seq_parallel_axes(cfg):
  """(seq_axis, batch_axis) from cfg.seq_parallel_axis / seq_parallel_batch_axis, hashable (a list
  from a JSON config becomes a tuple): what a module keeps to call `sequence_parallel` with."""
  batch_axis = cfg.get("seq_parallel_batch_axis")
  if isinstance(batch_axis, list):
    batch_axis = tuple(batch_axis)
  return cfg.get("seq_parallel_axis") or None, batch_axis


def sequence_parallel(seq_axis, batch_axis):
  """(mesh, seq_axis, batch_axis) when seq_axis is set (sequence parallelism), else None.

  The mesh is the one the model is traced under (`jax.set_mesh`, or the abstract mesh the train
  step sets).
  """
  if not seq_axis:
    return None
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    raise ValueError(f"seq_parallel_axis={seq_axis!r} needs a mesh: call the model under "
                     "jax.set_mesh(mesh)")
  if seq_axis not in mesh.shape:
    raise ValueError(f"seq_parallel_axis={seq_axis!r} is not an axis of the mesh {dict(mesh.shape)}")
  return mesh, seq_axis, batch_axis


def _dtypes(cfg):
  return jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)


class LinearSelfAttention(nnx.Module):
  """ReLU linear attention over image tokens (heads of `linear_head_dim`), optional q/k RMSNorm."""

  def __init__(self, cfg, *, rngs):
    dtype, pdtype = _dtypes(cfg)
    d = cfg.hidden_size
    self.num_heads = d // cfg.linear_head_dim
    self.eps = cfg.linear_attn_eps
    self.impl = cfg.attention_impl
    self.seq_axes = seq_parallel_axes(cfg)
    kw = dict(dtype=dtype, param_dtype=pdtype, rngs=rngs)
    self.to_q = dense(d, d, ("embed", "heads"), use_bias=False, **kw)
    self.to_k = dense(d, d, ("embed", "heads"), use_bias=False, **kw)
    self.to_v = dense(d, d, ("embed", "heads"), use_bias=False, **kw)
    self.to_out = dense(d, d, ("heads", "embed"), **kw)
    if cfg.qk_norm:
      self.norm_q = RMSNorm(d, eps=cfg.qk_norm_eps, name="heads", param_dtype=pdtype)
      self.norm_k = RMSNorm(d, eps=cfg.qk_norm_eps, name="heads", param_dtype=pdtype)
    else:
      self.norm_q = self.norm_k = None

  def __call__(self, x):
    b, n, d = x.shape
    q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
    if self.norm_q is not None:
      q, k = self.norm_q(q), self.norm_k(k)
    split = lambda t: t.reshape(b, n, self.num_heads, d // self.num_heads)  # [B, N, H, d]
    parallel = {}
    seq_split = sequence_parallel(*self.seq_axes)
    if seq_split:
      parallel = dict(zip(("mesh", "seq_axis", "batch_axis"), seq_split))
    out = kernels.linear_attention(split(q), split(k), split(v), eps=self.eps, impl=self.impl, **parallel)
    return self.to_out(out.reshape(b, n, d))


class CrossAttention(nnx.Module):
  """Softmax attention from image tokens to caption tokens, padded keys masked additively."""

  def __init__(self, cfg, *, rngs):
    dtype, pdtype = _dtypes(cfg)
    d = cfg.hidden_size
    inner = cfg.cross_num_heads * cfg.cross_head_dim
    self.num_heads, self.head_dim = cfg.cross_num_heads, cfg.cross_head_dim
    kw = dict(dtype=dtype, param_dtype=pdtype, rngs=rngs)
    self.to_q = dense(d, inner, ("embed", "heads"), **kw)
    self.to_k = dense(d, inner, ("embed", "heads"), **kw)
    self.to_v = dense(d, inner, ("embed", "heads"), **kw)
    self.to_out = dense(inner, d, ("heads", "embed"), **kw)
    if cfg.qk_norm:
      self.norm_q = RMSNorm(inner, eps=cfg.qk_norm_eps, name="heads", param_dtype=pdtype)
      self.norm_k = RMSNorm(inner, eps=cfg.qk_norm_eps, name="heads", param_dtype=pdtype)
    else:
      self.norm_q = self.norm_k = None

  def __call__(self, x, text, text_bias):
    b, n, _ = x.shape
    q, k, v = self.to_q(x), self.to_k(text), self.to_v(text)
    if self.norm_q is not None:
      q, k = self.norm_q(q), self.norm_k(k)
    heads = lambda t: t.reshape(b, t.shape[1], self.num_heads, self.head_dim)  # [B, T, H, d]
    scores = jnp.einsum("bnhd,blhd->bhnl", heads(q), heads(k)) / jnp.sqrt(self.head_dim).astype(q.dtype)
    scores = scores.astype(jnp.float32) + text_bias[:, None, None, :]  # [B, H, N, L]
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhnl,blhd->bnhd", probs, heads(v)).reshape(b, n, -1)
    return self.to_out(out)


class DepthwiseConv3x3(nnx.Module):
  """3x3 depthwise conv, stride 1, zero padding 1, as nine shifted multiply-adds.

  Same parameters as nnx.Conv(feature_group_count=C) (kernel [3, 3, 1, C], bias [C]); written out
  because XLA's grouped convolution is ~20x slower on CPU, while the shifted form fuses everywhere.
  """

  def __init__(self, channels, *, dtype, param_dtype, rngs):
    self.dtype = dtype
    init = partitioned(nnx.initializers.lecun_normal(), (None, None, None, "mlp"))
    self.kernel = nnx.Param(init(rngs.params(), (3, 3, 1, channels), param_dtype))
    self.bias = nnx.Param(partitioned(nnx.initializers.zeros_init(), ("mlp",))(
        rngs.params(), (channels,), param_dtype))

  def __call__(self, x, split=None):  # [B, H, W, C]
    """split: (mesh, seq_axis, batch_axis) when the rows are sharded over seq_axis (sequence
    parallelism): each device then exchanges one edge row with each neighbour (ppermute) instead
    of gathering the image."""
    kernel = self.kernel[...].astype(self.dtype)
    bias = self.bias[...].astype(self.dtype)
    x = x.astype(self.dtype)
    if split is None:
      return _shifted_adds(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), kernel, bias)
    mesh, seq_axis, batch_axis = split
    shards = mesh.shape[seq_axis]
    if x.shape[1] % shards:
      raise ValueError(f"sequence parallelism splits the latent rows: {x.shape[1]} rows (patches) "
                       f"do not divide over the {shards} devices of mesh axis {seq_axis!r}")
    spec = jax.sharding.PartitionSpec(batch_axis, seq_axis, None, None)

    def local(x, kernel, bias):
      rows = _with_halo_rows(x, seq_axis, shards)
      # autodiff's gradient here: it sums the replicated kernel's and bias's gradients over the
      # shards, which the hand-written rule of _shifted_adds does not do inside shard_map.
      return _shifted_sum(jnp.pad(rows, ((0, 0), (0, 0), (1, 1), (0, 0))), kernel) + bias

    return jax.shard_map(local, mesh=mesh, in_specs=(spec, jax.sharding.PartitionSpec(),
                                                     jax.sharding.PartitionSpec()),
                         out_specs=spec)(x, kernel, bias)


def _shifted_sum(padded, kernel):
  """sum over the nine (i, j) of padded[:, i:i + H, j:j + W] * kernel[i, j, 0] (H = rows - 2)."""
  height, width = padded.shape[1] - 2, padded.shape[2] - 2
  out = padded[:, :height, :width, :] * kernel[0, 0, 0]
  for i in range(3):
    for j in range(3):
      if i or j:
        out = out + padded[:, i:i + height, j:j + width, :] * kernel[i, j, 0]
  return out


@jax.custom_vjp
def _shifted_adds(padded, kernel, bias):
  """[B, H + 2, W + 2, C] (one extra row / column on each side) -> the 3x3 depthwise conv.

  Its gradient is written out (`_shifted_adds_bwd`): autodiff's kernel gradient (nine reductions
  of sliced products over batch, rows and columns) ran at ~2 GFLOP/s on XLA:CPU (docs/benchmarks.md).
  """
  return _shifted_sum(padded, kernel) + bias


def _shifted_adds_fwd(padded, kernel, bias):
  return _shifted_adds(padded, kernel, bias), (padded, kernel, bias)


def _shifted_adds_bwd(residuals, g):
  padded, kernel, bias = residuals
  channels = g.shape[3]
  # d padded: the transposed conv, i.e. the same shifted sum over g padded by 2 with the kernel flipped.
  d_padded = _shifted_sum(jnp.pad(g, ((0, 0), (2, 2), (2, 2), (0, 0))), kernel[::-1, ::-1])
  # d kernel[i, j] = sum over batch, rows, columns of window(i, j) * g. Written as nine separate
  # products, XLA:CPU fuses g's producers (the GLU's backward, which recomputes this conv's forward)
  # into each of them, i.e. nine times; a loop over the nine windows takes g as one materialised
  # operand. Each window's sum is a dot with a ones vector (faster than a reduction on XLA:CPU).
  ones = jnp.ones((g.size // channels,), g.dtype)

  def window_gradient(carry, offset):
    window = jax.lax.dynamic_slice(padded, (0, offset // 3, offset % 3, 0), g.shape)
    return carry, jnp.dot(ones, (window * g).reshape(-1, channels))

  _, d_kernel = jax.lax.scan(window_gradient, None, jnp.arange(9))
  d_bias = g.reshape(-1, channels).sum(0)
  return d_padded.astype(padded.dtype), d_kernel.reshape(kernel.shape).astype(kernel.dtype), d_bias.astype(bias.dtype)


_shifted_adds.defvjp(_shifted_adds_fwd, _shifted_adds_bwd)


def _with_halo_rows(x, axis, shards):
  """Local rows [B, r, W, C] of a row-sharded image -> [B, r + 2, W, C]: the previous shard's last
  row on top and the next shard's first row below (zeros at the image border, like the padding)."""
  down = [(i, i + 1) for i in range(shards - 1)]
  up = [(i + 1, i) for i in range(shards - 1)]
  above = jax.lax.ppermute(x[:, -1:], axis, down)  # devices that receive nothing get zeros
  below = jax.lax.ppermute(x[:, :1], axis, up)
  return jnp.concatenate([above, x, below], axis=1)


class MixFFN(nnx.Module):
  """GLUMBConv: 1x1 expand -> SiLU -> 3x3 depthwise -> GLU(value, SiLU(gate)) -> 1x1 project (no bias)."""

  def __init__(self, cfg, *, rngs):
    dtype, pdtype = _dtypes(cfg)
    d = cfg.hidden_size
    hidden = int(cfg.mlp_ratio * d)
    kw = dict(dtype=dtype, param_dtype=pdtype, rngs=rngs)
    self.conv_inverted = dense(d, 2 * hidden, ("embed", "mlp"), **kw)
    self.conv_depth = DepthwiseConv3x3(2 * hidden, dtype=dtype, param_dtype=pdtype, rngs=rngs)
    self.conv_point = dense(hidden, d, ("mlp", "embed"), use_bias=False, **kw)
    self.seq_axes = seq_parallel_axes(cfg)

  def __call__(self, x, height, width):
    b, n, _ = x.shape
    h = jax.nn.silu(self.conv_inverted(x)).reshape(b, height, width, -1)  # [B, H, W, 2h]
    h = self.conv_depth(h, sequence_parallel(*self.seq_axes)).reshape(b, n, -1)
    value, gate = jnp.split(h, 2, axis=-1)
    return self.conv_point(value * jax.nn.silu(gate))


class SanaBlock(nnx.Module):
  """adaLN-single modulated block: x += g1*LinAttn(mod(LN x)); x += CrossAttn(x); x += g2*FFN(mod(LN x))."""

  def __init__(self, cfg, *, rngs):
    _, pdtype = _dtypes(cfg)
    d = cfg.hidden_size
    self.norm_eps = cfg.norm_eps
    self.attn = LinearSelfAttention(cfg, rngs=rngs)
    self.cross_attn = CrossAttention(cfg, rngs=rngs)
    self.ffn = MixFFN(cfg, rngs=rngs)
    table = jax.random.normal(rngs.params(), (6, d), jnp.float32) / d**0.5
    self.scale_shift_table = nnx.Param(table.astype(pdtype), out_sharding=(None, "embed"),
                                    eager_sharding=False)

  def __call__(self, x, t0, text, text_bias, height, width):
    b, _, d = x.shape
    mod = self.scale_shift_table[...][None].astype(t0.dtype) + t0.reshape(b, 6, d)  # [B, 6, D]
    shift1, scale1, gate1, shift2, scale2, gate2 = [mod[:, i:i + 1] for i in range(6)]
    h = layer_norm(x, self.norm_eps) * (1 + scale1) + shift1
    x = x + gate1 * self.attn(h.astype(x.dtype))
    x = x + self.cross_attn(x, text, text_bias)
    h = layer_norm(x, self.norm_eps) * (1 + scale2) + shift2
    return x + gate2 * self.ffn(h.astype(x.dtype), height, width)


class SanaTransformer(nnx.Module):
  """The whole linear DiT; see the module docstring for the call contract."""

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    if cfg.hidden_size % cfg.linear_head_dim:
      raise ValueError(f"hidden_size {cfg.hidden_size} is not a multiple of linear_head_dim "
                       f"{cfg.linear_head_dim}")
    if cfg.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"unknown remat_policy {cfg.remat_policy!r}; choose from {list(REMAT_POLICIES)}")
    if cfg.get("prediction", "velocity") not in PREDICTIONS:
      raise ValueError(f"unknown model.prediction {cfg.prediction!r}; choose from {list(PREDICTIONS)}")
    self.cfg = ml_collections.FrozenConfigDict(cfg)
    self.seq_axes = seq_parallel_axes(cfg)
    dtype, pdtype = _dtypes(cfg)
    self.dtype = dtype
    d, p = cfg.hidden_size, cfg.patch_size
    kw = dict(dtype=dtype, param_dtype=pdtype, rngs=rngs)
    normal = nnx.initializers.normal(0.02)

    self.patch_embed = nnx.Conv(
        cfg.in_channels, d, kernel_size=(p, p), strides=(p, p), padding="VALID",
        kernel_init=partitioned(nnx.initializers.xavier_uniform(in_axis=(0, 1, 2), out_axis=3),
                                (None, None, None, "embed")),
        bias_init=partitioned(nnx.initializers.zeros_init(), ("embed",)), **kw)
    # Timestep: 256-d sinusoid -> MLP = t; t0 = Linear(SiLU(t)) gives the 6 block modulations.
    self.t_embed_1 = dense(256, d, (None, "embed"), kernel_init=normal, **kw)
    self.t_embed_2 = dense(d, d, ("mlp", "embed"), kernel_init=normal, **kw)
    self.t_block = dense(d, 6 * d, ("embed", "mlp"), kernel_init=normal, **kw)
    # Caption: Linear -> GELU(tanh) -> Linear -> RMSNorm.
    self.caption_proj_1 = dense(cfg.caption_channels, d, (None, "embed"), kernel_init=normal, **kw)
    self.caption_proj_2 = dense(d, d, ("mlp", "embed"), kernel_init=normal, **kw)
    self.caption_norm = RMSNorm(d, eps=1e-5, name="embed", param_dtype=pdtype,
                                init_value=cfg.get("caption_norm_init", 1.0))
    if cfg.get("pooled_caption", False):
      # Not in SANA: the caption's mean token, projected and added to the timestep embedding, so
      # that every block's modulation (and every image token) knows the whole caption, as SD3 adds
      # its pooled text embedding. Zero-initialised: a new model is the same function without it.
      self.pooled_proj = dense(d, d, ("embed", "mlp"), kernel_init=nnx.initializers.zeros_init(), **kw)

    @nnx.split_rngs(splits=cfg.depth)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make_blocks(rngs):
      return SanaBlock(cfg, rngs=rngs)

    self.blocks = make_blocks(rngs)  # every leaf [depth, ...]

    table = jax.random.normal(rngs.params(), (2, d), jnp.float32) / d**0.5
    self.final_scale_shift_table = nnx.Param(table.astype(pdtype), out_sharding=(None, "embed"),
                                    eager_sharding=False)
    self.proj_out = dense(d, p * p * cfg.out_channels, ("embed", None), **kw)

  @property
  def depth(self) -> int:
    return self.cfg.depth

  def constrain_tokens(self, x, split_tokens=True):
    """Pins the sharding of [B, N, D] activations between blocks.

    Normally the batch follows the logical "batch" rule (see `constrain`). With sequence
    parallelism (`seq_parallel_axis`) the batch goes over `seq_parallel_batch_axis` and the tokens
    over `seq_parallel_axis` in every layer, not only inside attention, so each device holds 1/P of
    the activations of a long sequence (caption tokens, split_tokens=False, are only batch-split).
    """
    split = sequence_parallel(*self.seq_axes)
    if split is None:
      return constrain(x, ("batch", None, None))
    _, seq_axis, batch_axis = split
    spec = jax.sharding.PartitionSpec(batch_axis, seq_axis if split_tokens else None, None)
    return jax.lax.with_sharding_constraint(x, spec)

  def embed_conditions(self, timesteps, text, text_mask):
    """-> (t [B, D], t0 [B, 6D], caption features [B, L, D], additive key bias [B, L] float32)."""
    t = self.t_embed_2(jax.nn.silu(self.t_embed_1(timestep_sinusoid(timesteps).astype(self.dtype))))
    text = self.caption_proj_2(jax.nn.gelu(self.caption_proj_1(text.astype(self.dtype)), approximate=True))
    text = self.caption_norm(text)
    text_bias = (1.0 - text_mask.astype(jnp.float32)) * _TEXT_MASK_BIAS
    if hasattr(self, "pooled_proj"):  # model.pooled_caption: the mean of the caption's tokens
      w = text_mask.astype(jnp.float32)[..., None]
      pooled = (text.astype(jnp.float32) * w).sum(1) / jnp.maximum(w.sum(1), 1.0)  # [B, D]
      t = t + self.pooled_proj(jax.nn.silu(pooled.astype(t.dtype)))
    t0 = self.t_block(jax.nn.silu(t))
    return t, t0, text, text_bias

  def embed_latents(self, latents):
    """[B, H, W, C] -> tokens [B, N, D] (row-major), plus the patch grid (h, w)."""
    cfg = self.cfg
    b, height, width, c = latents.shape
    p = cfg.patch_size
    if height % p or width % p:
      raise ValueError(f"latent size {height}x{width} is not divisible by patch_size {p}")
    if c != cfg.in_channels:
      raise ValueError(f"latents have {c} channels, the model expects in_channels={cfg.in_channels}")
    h, w = height // p, width // p
    x = self.patch_embed(latents.astype(self.dtype)).reshape(b, h * w, cfg.hidden_size)
    if cfg.use_pe:
      pe = sincos_pos_embed_2d(cfg.hidden_size, h, w, cfg.sample_size // p, cfg.interpolation_scale)
      x = (x.astype(jnp.float32) + pe[None]).astype(self.dtype)
    return x, (h, w)

  def run_blocks(self, x, t0, text, text_bias, grid, *, collect_block_io=False):
    """Runs the stacked blocks with one scan. With collect_block_io also returns every block's
    (input, output) tokens stacked on a leading layer axis (used by block-importance pruning)."""
    graphdef, state = nnx.split(self.blocks)
    h, w = grid

    def body(carry, block_state):
      block = nnx.merge(graphdef, block_state)
      out = self.constrain_tokens(block(carry, t0, text, text_bias, h, w))
      return out, ((carry, out) if collect_block_io else None)

    policy = self.cfg.remat_policy
    if policy != "none":
      body = jax.checkpoint(body, policy=REMAT_POLICIES[policy], prevent_cse=False)
    return jax.lax.scan(body, x, state, unroll=self.cfg.get("scan_unroll", 1))

  def unpatchify(self, x, t, grid):
    """Modulated norm + projection, tokens [B, N, D] -> [B, H, W, C_out]."""
    cfg = self.cfg
    b = x.shape[0]
    h, w = grid
    p = cfg.patch_size
    shift, scale = jnp.split(self.final_scale_shift_table[...][None].astype(t.dtype) + t[:, None], 2, axis=1)
    x = layer_norm(x, cfg.norm_eps) * (1 + scale) + shift
    x = self.proj_out(x.astype(self.dtype))  # [B, N, p*p*C]
    x = x.reshape(b, h, w, p, p, cfg.out_channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * p, w * p, cfg.out_channels)

  def __call__(self, latents, timesteps, text, text_mask):
    _check_inputs(latents, timesteps, text, text_mask, self.cfg.caption_channels)
    x, grid = self.embed_latents(latents)
    x = self.constrain_tokens(x)
    t, t0, text, text_bias = self.embed_conditions(timesteps, text, text_mask)
    text = self.constrain_tokens(text, split_tokens=False)
    x, _ = self.run_blocks(x, t0, text, text_bias, grid)
    out = self.unpatchify(x, t, grid)
    if self.cfg.get("prediction", "velocity") == "x0":
      sigma = (timesteps.astype(jnp.float32) / 1000.0).reshape(-1, 1, 1, 1)
      out = (latents.astype(jnp.float32) - out.astype(jnp.float32)) / jnp.maximum(sigma, X0_MIN_SIGMA)
    return out.astype(latents.dtype)


def _check_inputs(latents, timesteps, text, text_mask, caption_channels):
  if latents.ndim != 4:
    raise ValueError(f"latents must be [B, H, W, C] (NHWC), got shape {latents.shape}")
  b = latents.shape[0]
  if timesteps.shape != (b,):
    raise ValueError(f"timesteps must be [B]=[{b}], got shape {timesteps.shape}")
  if text.ndim != 3 or text.shape[0] != b or text.shape[2] != caption_channels:
    raise ValueError(f"text must be [B, L, {caption_channels}] with B={b}, got shape {text.shape}")
  if text_mask.shape != text.shape[:2]:
    raise ValueError(f"text_mask must be [B, L]={text.shape[:2]}, got shape {text_mask.shape}")


def abstract_transformer(cfg: ml_collections.ConfigDict) -> SanaTransformer:
  """The model with ShapeDtypeStructs instead of arrays: sizes and shardings, nothing allocated."""
  return nnx.eval_shape(lambda: SanaTransformer(cfg, rngs=nnx.Rngs(0)))


def count_params(model_or_cfg) -> int:
  """Number of parameters of a model, or of the model a config describes (computed abstractly)."""
  model = model_or_cfg
  if isinstance(model_or_cfg, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
    model = abstract_transformer(model_or_cfg)
  return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))

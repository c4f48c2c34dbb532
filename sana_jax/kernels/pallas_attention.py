"""Pallas kernels for ReLU linear attention: forward and backward, TPU (Mosaic) and GPU (Triton).

Math (per batch b and head h, q' = relu(q), k' = relu(k), all accumulation in float32):
    S = k'^T v        [d, d]        z = k'^T 1        [d]
    out_i = (q'_i S) / (q'_i . z + eps)
Backward, with g = d out, r_i = 1 / (q'_i . z + eps):
    dq'_i = r_i (g_i S^T - (g_i . out_i) z)             dq = dq' * [q > 0]
    dS    = sum_i q'_i^T (r_i g_i)                        dz = -sum_i r_i (g_i . out_i) q'_i
    dk'_j = v_j dS^T + dz                                 dk = dk' * [k > 0]
    dv_j  = k'_j dS

The work is split into two differentiable stages so a sequence-parallel caller can psum the state
between them (sequence_parallel.py):
    state(k, v) -> (S, z)     a reduction over tokens           backward: dk, dv   (one kernel)
    apply(q, S, z) -> out     independent per token tile        backward: dq, dS, dz (one kernel,
                                                                  dq per tile + a reduction)
Nothing of size N x N or N x d x d is formed: memory is O(N H d + H d^2).

Head packing: q, k, v [B, N, H, d] are viewed as [B, N, H*d] (a free reshape) and cut into lane
groups of W = heads_per_group * d channels (W = 128 on TPU: four heads of d = 32 fill one MXU/vreg
tile). Per group the kernels compute the dense W x W product k'^T v and keep its block diagonal
(`head_mask`), so the state of a group is one W x W matrix; q' S then needs no per-head loop, and the
normaliser (q' * z) @ head_mask comes back already broadcast over each head's lanes. 70 heads x 32
is 2240 lanes = 17.5 groups of 128: the last group is a partial block whose out-of-range lanes are
masked to zero, like the rows past N in the last token tile.

Backends:
- TPU: grid (batch, head group, token tile); the token axis of the reductions is "arbitrary" with
  VMEM scratch accumulators, the rest "parallel"; ragged edges (tokens and lanes) are masked in-kernel.
- GPU: Triton (`pl.pallas_call` with `triton.CompilerParams`; deprecated from jax 0.11, where it
  still runs and warns at each lowering; Mosaic GPU kernels need `plgpu.kernel` and warpgroup code,
  which we cannot test here). Triton programs of one grid run concurrently, with no scratch that
  outlives a program, so a token reduction is split: the tokens are cut into `chunks` runs of
  `tiles_per_chunk` tiles, one program per (batch, head group, chunk) loops over its run and writes a
  partial [W, W] state, and the partials are summed outside the kernel (chunks is chosen so that
  batch x groups x chunks fills the GPU: 70 heads give only 35 groups). Triton needs power-of-2
  tiles, so W is a power of 2 that divides H*d and N is zero-padded up to whole chunks (zero q, k
  rows add nothing to the state and their outputs are sliced off).
- CPU: the same kernels in interpret mode: the generic interpreter by default, or (interpret="tpu")
  `pltpu.InterpretParams`, which models TPU semantics and fills out-of-bounds reads with NaN, so the
  ragged-edge masking is exercised.
"""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

_HIGHEST = jax.lax.Precision.HIGHEST
_BACKENDS = ("tpu", "gpu")


@dataclasses.dataclass(frozen=True)
class Plan:
  """Static tiling of one call: the backend, whether to interpret, token tile and lane group."""
  backend: str       # "tpu" | "gpu": which kernel structure to build
  interpret: object  # False (compile), True (generic interpreter) or "tpu" (TPU-semantics one)
  n: int             # tokens
  channels: int      # H * d
  head_dim: int
  block_tokens: int  # token tile
  lanes: int         # W: channels per head group
  chunks: int = 1    # GPU: programs that share one (batch, head group) token reduction

  @property
  def groups(self):
    return pl.cdiv(self.channels, self.lanes)

  @property
  def tiles_per_chunk(self):
    return pl.cdiv(pl.cdiv(self.n, self.block_tokens), self.chunks)

  @property
  def n_padded(self):
    """Tokens the arrays are padded to (GPU: whole chunks; TPU masks the ragged last tile)."""
    if self.backend == "gpu":
      return self.chunks * self.tiles_per_chunk * self.block_tokens
    return self.n

  @property
  def tiles(self):
    return pl.cdiv(self.n_padded, self.block_tokens)


# GPU reductions are split until batch x groups x chunks reaches this many programs (about two per
# streaming multiprocessor of an H100), keeping at least _MIN_TILES_PER_CHUNK tiles per program.
_GPU_TARGET_PROGRAMS = 256
_MIN_TILES_PER_CHUNK = 4


def make_plan(n, heads, head_dim, dtype, *, batch=1, backend=None, interpret=None,
              block_tokens=None, block_heads=None, token_chunks=None):
  """Choose the tiling for q, k, v [batch, n, heads, head_dim].

  backend defaults to the default device's platform ("tpu", "gpu", else "tpu" kernels interpreted).
  block_tokens / block_heads override the token tile and heads per lane group, token_chunks the
  number of programs a GPU token reduction is split over (tuning and tests).
  """
  platform = jax.default_backend()
  if backend is None:
    backend = "gpu" if platform == "gpu" else "tpu"
  if backend not in _BACKENDS:
    raise ValueError(f"unknown Pallas backend {backend!r}; expected one of {_BACKENDS}")
  if interpret is None:
    interpret = platform not in ("tpu", "gpu")
  if interpret not in (False, True, "tpu"):
    raise ValueError(f"interpret must be False, True or 'tpu', got {interpret!r}")
  if interpret == "tpu" and backend != "tpu":
    raise ValueError("interpret='tpu' runs the TPU kernels; it needs backend='tpu'")
  channels = heads * head_dim
  if block_heads is not None:
    if not 1 <= block_heads <= heads:
      raise ValueError(f"block_heads={block_heads} must be in [1, heads={heads}]")
    lanes = block_heads * head_dim
  elif backend == "tpu":
    # A lane group must be a multiple of 128 lanes or the whole channel axis.
    lcm = math.lcm(head_dim, 128)
    lanes = lcm if lcm < channels else channels
  else:
    lanes = _gpu_lanes(heads, head_dim)
  if block_tokens is None:
    block_tokens = 512 if backend == "tpu" else 128
  if backend == "tpu":
    sublanes = 16 if jnp.dtype(dtype).itemsize < 4 else 8
    if block_tokens % sublanes:
      raise ValueError(f"block_tokens={block_tokens} must be a multiple of {sublanes} for {dtype}")
    block_tokens = min(block_tokens, n)  # a tile equal to the whole axis is always legal
  else:
    if block_tokens & (block_tokens - 1):
      raise ValueError(f"block_tokens={block_tokens} must be a power of 2 on GPU (Triton)")
    block_tokens = min(block_tokens, max(16, pl.next_power_of_2(n)))
  chunks = 1
  if backend == "gpu":
    tiles = pl.cdiv(n, block_tokens)
    if token_chunks is None:
      wanted = pl.cdiv(_GPU_TARGET_PROGRAMS, batch * pl.cdiv(channels, lanes))
      token_chunks = max(1, min(wanted, tiles // _MIN_TILES_PER_CHUNK))
    if token_chunks < 1:
      raise ValueError(f"token_chunks={token_chunks} must be at least 1")
    # As few chunks as give the same tiles per chunk, so that padding stays under one chunk.
    chunks = pl.cdiv(tiles, pl.cdiv(tiles, min(token_chunks, tiles)))
  elif token_chunks not in (None, 1):
    raise ValueError("token_chunks splits the GPU reductions; the TPU kernels accumulate over "
                     "an 'arbitrary' grid axis instead")
  return Plan(backend, interpret, n, channels, head_dim, block_tokens, lanes, chunks)


def _gpu_lanes(heads, head_dim):
  """Largest power-of-2 group of heads, at most 64 lanes wide, that divides the heads exactly."""
  if head_dim & (head_dim - 1):
    raise ValueError(f"the Triton kernels need a power-of-2 head_dim, got {head_dim}")
  per_group = max(1, 64 // head_dim)
  while heads % per_group:
    per_group //= 2
  return per_group * head_dim


# ------------------------------------------------------------------------------------------------
# Tile math shared by both backends (arrays, not refs).

def _dot(a, b, dims):
  """a @ b with float32 accumulation; float32 operands get full precision (no bf16 passes)."""
  if a.dtype == jnp.float32 or b.dtype == jnp.float32:
    a, b, precision = a.astype(jnp.float32), b.astype(jnp.float32), _HIGHEST
  else:
    precision = None
  return jax.lax.dot_general(a, b, (dims, ((), ())), precision=precision,
                             preferred_element_type=jnp.float32)


_NN = ((1,), (0,))  # a @ b
_NT = ((1,), (1,))  # a @ b.T


def _valid(plan, tile, group, rows):
  """[rows, W] mask of the elements of a tile that lie inside [n, channels]."""
  row = tile * plan.block_tokens + jax.lax.broadcasted_iota(jnp.int32, (rows, plan.lanes), 0)
  lane = group * plan.lanes + jax.lax.broadcasted_iota(jnp.int32, (rows, plan.lanes), 1)
  return (row < plan.n) & (lane < plan.channels)


def _load(x, valid):
  return jnp.where(valid, x, jnp.zeros_like(x))


def _state_tile(k, v):
  """Contribution of one tile to (k'^T v [W, W], k'^T 1 [1, W]), both float32."""
  kp = jnp.maximum(k, 0)
  # Transpose in float32 and cast back (exact): the form TPU kernels use for bf16 operands.
  s = _dot(kp.astype(jnp.float32).T.astype(kp.dtype), v, _NN)
  z = jnp.sum(kp.astype(jnp.float32), axis=0, keepdims=True)
  return s, z


def _forward_tile(q, s, z, head_mask, eps):
  """q' [T, W], the normalised output [T, W] and 1 / (den + eps) [T, W], all float32."""
  qp = jnp.maximum(q, 0).astype(jnp.float32)
  num = _dot(qp, s, _NN)
  den = _dot(qp * z, head_mask, _NN)  # per-head q' . z, broadcast over the head's lanes
  r = 1.0 / (den + eps)
  return qp, num * r, r


def _apply_grad_tile(q, g, s, z, head_mask, eps):
  """dq [T, W] and this tile's contributions to dS [W, W] and dz [1, W]."""
  qp, out, r = _forward_tile(q, s, z, head_mask, eps)
  g = g.astype(jnp.float32)
  gr = g * r
  g_out_r = _dot(g * out, head_mask, _NN) * r  # r_i (g_i . out_i), per head
  dqp = _dot(gr, s, _NT) - g_out_r * z
  dq = jnp.where(q > 0, dqp, 0.0)
  ds = _dot(qp.T, gr, _NN)
  dz = -jnp.sum(g_out_r * qp, axis=0, keepdims=True)
  return dq, ds, dz


def _state_grad_tile(k, v, ds, dz):
  """dk, dv [T, W] from the state cotangents."""
  kp = jnp.maximum(k, 0)
  dkp = _dot(v, ds, _NT) + dz
  dk = jnp.where(k > 0, dkp, 0.0)
  dv = _dot(kp, ds, _NN)
  return dk, dv


# ------------------------------------------------------------------------------------------------
# pallas_call builders. Arrays are [B, N, C] (tokens) and [B, G, W, W] / [B, G, 1, W] (state).

def _tile_spec(plan):
  return pl.BlockSpec((None, plan.block_tokens, plan.lanes), lambda b, g, t: (b, t, g))


def _state_specs(plan):
  idx = lambda b, g, t: (b, g, 0, 0)
  return (pl.BlockSpec((None, None, plan.lanes, plan.lanes), idx),
          pl.BlockSpec((None, None, 1, plan.lanes), idx))


def _mask_spec(plan):
  return pl.BlockSpec((plan.lanes, plan.lanes), lambda b, g, t: (0, 0))


def _chunk_spec(plan):
  """GPU: the tokens of one chunk ([tiles_per_chunk * block_tokens, W]) of one head group."""
  return pl.BlockSpec((None, plan.tiles_per_chunk * plan.block_tokens, plan.lanes),
                      lambda b, g, c: (b, c, g))


def _partial_state_specs(plan):
  idx = lambda b, g, c: (b, g, c, 0, 0)
  return (pl.BlockSpec((None, None, None, plan.lanes, plan.lanes), idx),
          pl.BlockSpec((None, None, None, 1, plan.lanes), idx))


def _state_shapes(batch, plan, chunks=None):
  """Shapes of (S, z); with `chunks`, of one partial (S, z) per token chunk."""
  lead = (batch, plan.groups) if chunks is None else (batch, plan.groups, chunks)
  return (jax.ShapeDtypeStruct((*lead, plan.lanes, plan.lanes), jnp.float32),
          jax.ShapeDtypeStruct((*lead, 1, plan.lanes), jnp.float32))


def _chunk_loop(plan, tile_sums):
  """GPU: sum `tile_sums(rows, tile)` -> (a [W, W], b [1, W]) over the tiles of this chunk."""
  c = pl.program_id(2)

  def body(t, carry):
    rows = pl.ds(pl.multiple_of(t * plan.block_tokens, plan.block_tokens), plan.block_tokens)
    a, b = tile_sums(rows, c * plan.tiles_per_chunk + t)
    return carry[0] + a, carry[1] + b

  zeros = (jnp.zeros((plan.lanes, plan.lanes), jnp.float32),
           jnp.zeros((1, plan.lanes), jnp.float32))
  return jax.lax.fori_loop(0, plan.tiles_per_chunk, body, zeros)


def _write_state(sums, out_refs, mask):
  """Writes a token reduction (a [W, W], b [1, W]): a keeps only its per-head diagonal blocks."""
  out_refs[0][...] = sums[0] * mask
  out_refs[1][...] = sums[1]


def _accumulator_scratch(plan):
  """TPU: VMEM accumulators of one token reduction, [W, W] and [1, W] float32."""
  return [pltpu.VMEM((plan.lanes, plan.lanes), jnp.float32),
          pltpu.VMEM((1, plan.lanes), jnp.float32)]


def _accumulate_tiles(sums, acc_refs, out_refs, mask_ref):
  """TPU: adds this token tile's (a, b) to the accumulators (zeroed at the first tile of the
  "arbitrary" token axis) and writes the reduction out after the last tile."""
  t = pl.program_id(2)

  @pl.when(t == 0)
  def _():
    for acc in acc_refs:
      acc[...] = jnp.zeros_like(acc)

  for acc, x in zip(acc_refs, sums):
    acc[...] += x

  @pl.when(t == pl.num_programs(2) - 1)
  def _():
    _write_state([acc[...] for acc in acc_refs], out_refs, mask_ref[...])


def _compiler_params(plan, semantics):
  if plan.interpret:
    return None
  if plan.backend == "tpu":
    return pltpu.CompilerParams(dimension_semantics=semantics)
  from jax.experimental.pallas import triton as pltriton  # GPU only; imports fine elsewhere
  return pltriton.CompilerParams(num_warps=4, num_stages=2)


def _interpret(plan):
  if plan.interpret == "tpu":  # out-of-bounds reads of ragged edge blocks come back as NaN
    return pltpu.InterpretParams(out_of_bounds_reads="uninitialized")
  return plan.interpret


def _call(kernel, plan, *, grid, in_specs, out_specs, out_shape, semantics, scratch_shapes=()):
  return pl.pallas_call(
      kernel, grid=grid, in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
      scratch_shapes=scratch_shapes, compiler_params=_compiler_params(plan, semantics),
      interpret=_interpret(plan))


def head_mask(plan):
  """[W, W] float32, 1 where row and column lanes belong to the same head."""
  head = jnp.arange(plan.lanes) // plan.head_dim
  return (head[:, None] == head[None, :]).astype(jnp.float32)


def state(k, v, plan):
  """k, v [B, N, C] -> S [B, G, W, W] (block diagonal per head), z [B, G, 1, W]; float32."""
  batch = k.shape[0]
  mask = head_mask(plan)
  if plan.backend == "tpu":
    def kernel(k_ref, v_ref, m_ref, s_ref, z_ref, s_acc, z_acc):
      g, t = pl.program_id(1), pl.program_id(2)
      valid = _valid(plan, t, g, plan.block_tokens)
      sums = _state_tile(_load(k_ref[...], valid), _load(v_ref[...], valid))
      _accumulate_tiles(sums, (s_acc, z_acc), (s_ref, z_ref), m_ref)

    return _call(
        kernel, plan, grid=(batch, plan.groups, plan.tiles),
        in_specs=[_tile_spec(plan), _tile_spec(plan), _mask_spec(plan)],
        out_specs=_state_specs(plan), out_shape=_state_shapes(batch, plan),
        semantics=("parallel", "parallel", "arbitrary"),
        scratch_shapes=_accumulator_scratch(plan))(k, v, mask)

  def kernel(k_ref, v_ref, m_ref, s_ref, z_ref):
    g = pl.program_id(1)

    def tile_sums(rows, tile):
      valid = _valid(plan, tile, g, plan.block_tokens)
      return _state_tile(_load(k_ref[rows, :], valid), _load(v_ref[rows, :], valid))

    _write_state(_chunk_loop(plan, tile_sums), (s_ref, z_ref), m_ref[...])

  s, z = _call(
      kernel, plan, grid=(batch, plan.groups, plan.chunks),
      in_specs=[_chunk_spec(plan), _chunk_spec(plan), _mask_spec(plan)],
      out_specs=_partial_state_specs(plan), out_shape=_state_shapes(batch, plan, plan.chunks),
      semantics=None)(k, v, mask)
  return jnp.sum(s, axis=2), jnp.sum(z, axis=2)


def apply(q, s, z, plan, eps, out_dtype):
  """q [B, N, C] with the state -> out [B, N, C] in out_dtype."""
  batch = q.shape[0]

  def kernel(q_ref, s_ref, z_ref, m_ref, o_ref):
    g, t = pl.program_id(1), pl.program_id(2)
    q = _load(q_ref[...], _valid(plan, t, g, plan.block_tokens))
    _, out, _ = _forward_tile(q, s_ref[...], z_ref[...], m_ref[...], eps)
    o_ref[...] = out.astype(o_ref.dtype)

  s_spec, z_spec = _state_specs(plan)
  return _call(
      kernel, plan, grid=(batch, plan.groups, plan.tiles),
      in_specs=[_tile_spec(plan), s_spec, z_spec, _mask_spec(plan)],
      out_specs=_tile_spec(plan),
      out_shape=jax.ShapeDtypeStruct(q.shape, out_dtype),
      semantics=("parallel", "parallel", "parallel"))(q, s, z, head_mask(plan))


def apply_grad(q, s, z, g, plan, eps):
  """Cotangent g [B, N, C] of apply -> dq [B, N, C] (q.dtype), dS [B, G, W, W], dz [B, G, 1, W]."""
  batch = q.shape[0]
  mask = head_mask(plan)
  dq_shape = jax.ShapeDtypeStruct(q.shape, q.dtype)
  if plan.backend == "tpu":
    def kernel(q_ref, g_ref, s_ref, z_ref, m_ref, dq_ref, ds_ref, dz_ref, ds_acc, dz_acc):
      gi, t = pl.program_id(1), pl.program_id(2)
      valid = _valid(plan, t, gi, plan.block_tokens)
      dq, ds, dz = _apply_grad_tile(_load(q_ref[...], valid), _load(g_ref[...], valid),
                                    s_ref[...], z_ref[...], m_ref[...], eps)
      dq_ref[...] = dq.astype(dq_ref.dtype)
      _accumulate_tiles((ds, dz), (ds_acc, dz_acc), (ds_ref, dz_ref), m_ref)

    s_spec, z_spec = _state_specs(plan)
    return _call(
        kernel, plan, grid=(batch, plan.groups, plan.tiles),
        in_specs=[_tile_spec(plan), _tile_spec(plan), s_spec, z_spec, _mask_spec(plan)],
        out_specs=(_tile_spec(plan), s_spec, z_spec),
        out_shape=(dq_shape, *_state_shapes(batch, plan)),
        semantics=("parallel", "parallel", "arbitrary"),
        scratch_shapes=_accumulator_scratch(plan))(q, g, s, z, mask)

  def kernel(q_ref, g_ref, s_ref, z_ref, m_ref, dq_ref, ds_ref, dz_ref):
    gi = pl.program_id(1)
    s, z, m = s_ref[...], z_ref[...], m_ref[...]

    def tile_sums(rows, tile):
      valid = _valid(plan, tile, gi, plan.block_tokens)
      dq, ds, dz = _apply_grad_tile(_load(q_ref[rows, :], valid), _load(g_ref[rows, :], valid),
                                    s, z, m, eps)
      dq_ref[rows, :] = dq.astype(dq_ref.dtype)
      return ds, dz

    _write_state(_chunk_loop(plan, tile_sums), (ds_ref, dz_ref), m)

  s_spec, z_spec = _state_specs(plan)
  dq, ds, dz = _call(
      kernel, plan, grid=(batch, plan.groups, plan.chunks),
      in_specs=[_chunk_spec(plan), _chunk_spec(plan), s_spec, z_spec, _mask_spec(plan)],
      out_specs=(_chunk_spec(plan), *_partial_state_specs(plan)),
      out_shape=(dq_shape, *_state_shapes(batch, plan, plan.chunks)), semantics=None)(
          q, g, s, z, mask)
  return dq, jnp.sum(ds, axis=2), jnp.sum(dz, axis=2)


def state_grad(k, v, ds, dz, plan):
  """Cotangents (dS, dz) of state -> dk, dv [B, N, C] in the dtypes of k and v."""
  batch = k.shape[0]

  def kernel(k_ref, v_ref, ds_ref, dz_ref, dk_ref, dv_ref):
    g, t = pl.program_id(1), pl.program_id(2)
    valid = _valid(plan, t, g, plan.block_tokens)
    dk, dv = _state_grad_tile(_load(k_ref[...], valid), _load(v_ref[...], valid),
                              ds_ref[...], dz_ref[...])
    dk_ref[...] = dk.astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)

  s_spec, z_spec = _state_specs(plan)
  return _call(
      kernel, plan, grid=(batch, plan.groups, plan.tiles),
      in_specs=[_tile_spec(plan), _tile_spec(plan), s_spec, z_spec],
      out_specs=(_tile_spec(plan), _tile_spec(plan)),
      out_shape=(jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)),
      semantics=("parallel", "parallel", "parallel"))(k, v, ds, dz)


# ------------------------------------------------------------------------------------------------
# Differentiable stages on [B, N, C] arrays (already padded to plan.n_padded tokens).

@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def state_stage(k, v, plan):
  return state(k, v, plan)


def _state_stage_fwd(k, v, plan):
  return state(k, v, plan), (k, v)


def _state_stage_bwd(plan, res, cot):
  k, v = res
  return state_grad(k, v, *cot, plan)


state_stage.defvjp(_state_stage_fwd, _state_stage_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def apply_stage(q, s, z, plan, eps, out_dtype):
  return apply(q, s, z, plan, eps, out_dtype)


def _apply_stage_fwd(q, s, z, plan, eps, out_dtype):
  return apply(q, s, z, plan, eps, out_dtype), (q, s, z)


def _apply_stage_bwd(plan, eps, out_dtype, res, g):
  q, s, z = res
  return apply_grad(q, s, z, g.astype(out_dtype), plan, eps)


apply_stage.defvjp(_apply_stage_fwd, _apply_stage_bwd)


def to_channels(x, plan):
  """[B, N, H, d] -> [B, N_padded, H*d] (zero rows appended on GPU only)."""
  b, n, h, d = x.shape
  x = x.reshape(b, n, h * d)
  if plan.n_padded != n:
    x = jnp.pad(x, ((0, 0), (0, plan.n_padded - n), (0, 0)))
  return x


def from_channels(x, plan, heads):
  """[B, N_padded, H*d] -> [B, N, H, d]."""
  b = x.shape[0]
  return x[:, :plan.n].reshape(b, plan.n, heads, plan.head_dim)


def relu_linear_attention_pallas(q, k, v, eps=1e-15, *, backend=None, interpret=None,
                                 block_tokens=None, block_heads=None, token_chunks=None):
  """ReLU linear attention with Pallas kernels; same contract as the jnp reference.

  q, k, v: [B, N, H, d] (q, k before the ReLU) -> [B, N, H, d] in v.dtype. Differentiable in
  q, k, v with a Pallas backward. See make_plan for backend / interpret / block_* / token_chunks.
  """
  _check_qkv(q, k, v)
  batch, n, heads, head_dim = q.shape
  plan = make_plan(n, heads, head_dim, q.dtype, batch=batch, backend=backend,
                   interpret=interpret, block_tokens=block_tokens, block_heads=block_heads,
                   token_chunks=token_chunks)
  s, z = state_stage(to_channels(k, plan), to_channels(v, plan), plan)
  out = apply_stage(to_channels(q, plan), s, z, plan, float(eps), jnp.dtype(v.dtype))
  return from_channels(out, plan, heads)


def _check_qkv(q, k, v):
  if q.ndim != 4 or q.shape != k.shape or q.shape != v.shape:
    raise ValueError("linear attention needs q, k, v of one shape [B, N, H, d]; got "
                     f"{q.shape}, {k.shape}, {v.shape}")
  if q.shape[1] == 0:
    raise ValueError("linear attention needs at least one token (N = 0)")

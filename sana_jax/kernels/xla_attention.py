"""ReLU linear attention for XLA (what impl="xla" runs): token-chunked on the CPU.

Same math and stages as the reference and the Pallas kernels (see pallas_attention.py):
    state(k, v) -> S = k'^T v [B, H, d, d], z = k'^T 1 [B, H, d]     (k' = relu(k), float32)
    apply(q, S, z) -> (q' S) / (q' . z + eps)                        (q' = relu(q))
each a `jax.custom_vjp` with the backward of pallas_attention.py's docstring.

Why chunks: written as whole-array einsums, XLA:CPU transposes every [B, N, H, d] array to a
head-major copy for its batched dots and back (four extra passes over memory) and runs one small
[d, N] x [N, d] matmul per head with poor locality; at 16K tokens that ran at 2-3% of the CPU's
matmul rate. Here a `fori_loop` walks the tokens in chunks of C rows (about 256 KiB of one input
per chunk, so a chunk's transposes and its per-head matmuls stay in the core's L2 cache): each
chunk is read once, transposed in cache, multiplied per head (`dot_general` with the batch and head
axes as batch dimensions) and its output written once. The normaliser rides along the apply matmul
as one more column of the state ([S | z]). A ragged last chunk is one more call at its own size.
On a TPU or GPU (the fallback of "auto", or impl="xla") the reference's whole-array form runs.
"""
import functools
import math

import jax
import jax.numpy as jnp

from sana_jax.kernels import reference

_HIGHEST = jax.lax.Precision.HIGHEST
CHUNK_BYTES = 2**18  # float32 bytes of one input's chunk (C tokens x H x d)


def chunk_tokens(n, heads, head_dim):
  """Tokens per chunk: the power of two nearest CHUNK_BYTES / (4 H d), in [16, 1024], <= n."""
  c = 2 ** round(math.log2(CHUNK_BYTES / (4 * heads * head_dim)))
  return max(1, min(n, max(16, min(1024, c))))


def _bdot(a, b, contract):
  """a [B, H, ., .] . b [B, H, ., .], batched over B and H, contracting `contract` (a, b axes)."""
  return jax.lax.dot_general(a, b, (contract, ((0, 1), (0, 1))), precision=_HIGHEST,
                             preferred_element_type=jnp.float32)


def _heads_major(x):
  """[B, C, H, d] -> [B, H, C, d] float32."""
  return jnp.transpose(x.astype(jnp.float32), (0, 2, 1, 3))


def _tokens_major(x, dtype):
  """[B, H, C, d] -> [B, C, H, d] in dtype."""
  return jnp.transpose(x, (0, 2, 1, 3)).astype(dtype)


def _over_chunks(n, c, body, carry):
  """body(start, size, carry) over the full chunks of c tokens, then the ragged tail. The first
  chunk runs before the fori_loop so that the loop's carry has the types of values computed from
  the inputs (under shard_map: varying over the mesh axes), not those of the zeros it starts from."""
  full = n // c
  if full:
    carry = body(0, c, carry)
  if full > 1:
    carry = jax.lax.fori_loop(1, full, lambda i, cr: body(i * c, c, cr), carry)
  if n % c:
    carry = body(full * c, n % c, carry)
  return carry


def _slice(x, start, size):
  return jax.lax.dynamic_slice_in_dim(x, start, size, axis=1)


def _put(x, chunk, start):
  return jax.lax.dynamic_update_slice_in_dim(x, chunk, start, axis=1)


# ----------------------------------------------------------------------------- state stage
def _state(k, v):
  b, n, h, d = k.shape
  c = chunk_tokens(n, h, d)

  def body(start, size, carry):
    s, z = carry
    kc = jax.nn.relu(_heads_major(_slice(k, start, size)))  # [B, H, C, d]
    vc = _heads_major(_slice(v, start, size))
    return s + _bdot(kc, vc, ((2,), (2,))), z + jnp.sum(kc, axis=2)

  zeros = (jnp.zeros((b, h, d, d), jnp.float32), jnp.zeros((b, h, d), jnp.float32))
  return _over_chunks(n, c, body, zeros)


@jax.custom_vjp
def _chunked_state(k, v):
  return _state(k, v)


def _state_fwd(k, v):
  return _state(k, v), (k, v)


def _state_bwd(res, cot):
  k, v = res
  ds, dz = cot  # [B, H, d, d], [B, H, d]
  b, n, h, d = k.shape
  c = chunk_tokens(n, h, d)

  def body(start, size, carry):
    dk, dv = carry
    kc = _heads_major(_slice(k, start, size))
    vc = _heads_major(_slice(v, start, size))
    dkc = (_bdot(vc, ds, ((3,), (3,))) + dz[:, :, None, :]) * (kc > 0)  # v dS^T + dz
    dvc = _bdot(jax.nn.relu(kc), ds, ((3,), (2,)))                       # k' dS
    return _put(dk, _tokens_major(dkc, k.dtype), start), _put(dv, _tokens_major(dvc, v.dtype), start)

  return _over_chunks(n, c, body, (jnp.zeros_like(k), jnp.zeros_like(v)))


_chunked_state.defvjp(_state_fwd, _state_bwd)


# ----------------------------------------------------------------------------- apply stage
def _numerator_and_scale(qc, s, z, eps):
  """qc [B, H, C, d] (after the ReLU) -> q' S [B, H, C, d] and 1 / (q' . z + eps) [B, H, C, 1]."""
  d = s.shape[-1]
  o = _bdot(qc, jnp.concatenate([s, z[..., None]], axis=-1), ((3,), (2,)))  # [B, H, C, d + 1]
  return o[..., :d], 1.0 / (o[..., d:] + eps)


def _apply(q, s, z, eps, out_dtype):
  b, n, h, d = q.shape
  c = chunk_tokens(n, h, d)

  def body(start, size, out):
    num, r = _numerator_and_scale(jax.nn.relu(_heads_major(_slice(q, start, size))), s, z, eps)
    return _put(out, _tokens_major(num * r, out_dtype), start)

  return _over_chunks(n, c, body, jnp.zeros(q.shape, out_dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _chunked_apply(q, s, z, eps, out_dtype):
  return _apply(q, s, z, eps, jnp.dtype(out_dtype))


def _apply_fwd(q, s, z, eps, out_dtype):
  return _apply(q, s, z, eps, jnp.dtype(out_dtype)), (q, s, z)


def _apply_bwd(eps, out_dtype, res, g):
  q, s, z = res
  b, n, h, d = q.shape
  c = chunk_tokens(n, h, d)

  def body(start, size, carry):
    dq, ds, dz = carry
    qc = _heads_major(_slice(q, start, size))
    qr = jax.nn.relu(qc)
    gc = _heads_major(_slice(g, start, size))
    num, r = _numerator_and_scale(qr, s, z, eps)
    rg = r * gc                                                    # r_i g_i
    rgo = r * jnp.sum(gc * num * r, axis=-1, keepdims=True)        # r_i (g_i . out_i)
    dqc = (_bdot(rg, s, ((3,), (3,))) - rgo * z[:, :, None, :]) * (qc > 0)
    ds = ds + _bdot(qr, rg, ((2,), (2,)))                          # q'^T (r g)
    dz = dz - jnp.sum(rgo * qr, axis=2)
    return _put(dq, _tokens_major(dqc, q.dtype), start), ds, dz

  zeros = (jnp.zeros_like(q), jnp.zeros_like(s), jnp.zeros_like(z))
  return _over_chunks(n, c, body, zeros)


_chunked_apply.defvjp(_apply_fwd, _apply_bwd)


def _chunked():
  """Chunk on the CPU; TPU / GPU compilers fuse the whole-array einsums well and would run a
  loop of small chunks slowly, so there the reference's form is used."""
  return jax.default_backend() == "cpu"


def linear_attention_state(k, v):
  """k, v: [B, N, H, d] (k before the ReLU) -> S = K^T V [B, H, d, d], z = K^T 1 [B, H, d]; float32."""
  return _chunked_state(k, v) if _chunked() else reference.linear_attention_state(k, v)


def linear_attention_apply(q, s, z, eps, out_dtype):
  """q: [B, N, H, d] (before the ReLU) and the state -> [B, N, H, d] in out_dtype."""
  if _chunked():
    return _chunked_apply(q, s, z, float(eps), jnp.dtype(out_dtype))
  return reference.linear_attention_apply(q, s, z, eps, out_dtype)


def relu_linear_attention_xla(q, k, v, eps=1e-15):
  """q, k, v: [B, N, H, d] (q and k before the ReLU) -> [B, N, H, d] in v.dtype."""
  s, z = linear_attention_state(k, v)
  return linear_attention_apply(q, s, z, float(eps), jnp.dtype(v.dtype))

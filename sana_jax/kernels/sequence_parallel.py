"""Linear attention with the token axis sharded over a mesh axis (sequence parallelism).

Each device holds N / P tokens. The attention state is a sum over tokens, so each device computes
the state of its own tokens, one psum over the sequence axis gives every device the global
K^T V (d x d per head) and K^T 1, and each device applies it to its own queries. The only
communication is the state, O(H d^2) per sample, whatever N. In the backward pass the same psum,
transposed by JAX, sums the state cotangents (dS, dz: sums over all tokens of q-side terms) before
each device computes dk, dv for its tokens.
"""
import jax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from sana_jax.kernels import pallas_attention, xla_attention


def sequence_parallel_linear_attention(q, k, v, *, eps=1e-15, impl="xla", mesh, seq_axis,
                                       batch_axis=None, **pallas_options):
  """ReLU linear attention on q, k, v [B, N, H, d] with N sharded over `seq_axis` of `mesh`.

  impl: "xla" (the chunked jnp stages of xla_attention.py) or "pallas" (the Pallas stages; pallas_options go to make_plan).
  batch_axis: mesh axis (or tuple of axes) the batch is sharded over, if any.
  Returns [B, N, H, d] in v.dtype, sharded like q.
  """
  pallas_attention._check_qkv(q, k, v)
  if seq_axis not in mesh.shape:
    raise ValueError(f"seq_axis {seq_axis!r} is not an axis of the mesh {dict(mesh.shape)}")
  shards = mesh.shape[seq_axis]
  if q.shape[1] % shards:
    raise ValueError(f"N = {q.shape[1]} tokens do not split evenly over the {shards} devices of "
                     f"mesh axis {seq_axis!r}")
  if impl not in ("xla", "pallas"):
    raise ValueError(f"unknown impl {impl!r} for sequence-parallel attention; expected 'xla' or "
                     "'pallas'")

  def local(q, k, v):  # [B / b_shards, N / shards, H, d] each
    if impl == "xla":
      state = xla_attention.linear_attention_state(k, v)
      state = jax.lax.psum(state, seq_axis)
      # The apply stage's custom_vjp returns this device's share of dS, dz; marking the state
      # varying over seq makes their transpose the psum over seq that sums those shares.
      state = jax.lax.pcast(state, (seq_axis,), to="varying")
      return xla_attention.linear_attention_apply(q, *state, float(eps), v.dtype)
    batch, n, heads, head_dim = q.shape
    plan = pallas_attention.make_plan(n, heads, head_dim, q.dtype, batch=batch, **pallas_options)
    to = lambda x: pallas_attention.to_channels(x, plan)
    state = pallas_attention.state_stage(to(k), to(v), plan)
    state = jax.lax.psum(state, seq_axis)
    out = pallas_attention.apply_stage(to(q), *state, plan, float(eps), v.dtype)
    return pallas_attention.from_channels(out, plan, heads)

  spec = P(batch_axis, seq_axis, None, None)
  if AxisType.Explicit in mesh.axis_types:  # explicit-sharding meshes do not reshard implicitly
    q, k, v = (jax.reshard(x, NamedSharding(mesh, spec)) for x in (q, k, v))
  return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec,
                       check_vma=impl == "xla")(q, k, v)

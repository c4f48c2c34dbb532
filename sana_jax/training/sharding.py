"""Device mesh, logical-axis rules and input assembly (MaxText style).

The model names the axes of every weight logically ("layers", "embed", "heads", "mlp"); the config
maps those names to the three mesh axes:
  data    pure data parallelism (weights replicated),
  fsdp    data parallelism with weights and optimiser state sharded (ZeRO-3),
  tensor  tensor parallelism over attention heads and the FFN hidden width.
The batch is split over data x fsdp. A dimension whose size a mesh axis does not divide stays
replicated, so every rule set works with every model size.
"""
import math

import jax
from jax.experimental import mesh_utils
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sana_jax.models.transformer import seq_parallel_axes
from sana_jax.training import distributed

MESH_AXES = ("data", "fsdp", "tensor")

def mesh_shape(mesh_cfg, num_devices: int) -> dict:
  """{"data": d, "fsdp": f, "tensor": t} from the config; one axis may be -1 (fills the rest)."""
  sizes = {a: int(mesh_cfg.get(a, 1)) for a in MESH_AXES}
  fill = [a for a, s in sizes.items() if s == -1]
  if len(fill) > 1:
    raise ValueError(f"only one mesh axis may be -1, got {fill}")
  if any(s == 0 or s < -1 for s in sizes.values()):
    raise ValueError(f"mesh axis sizes must be positive or -1, got {sizes}")
  known = math.prod(s for s in sizes.values() if s != -1)
  if fill:
    if num_devices % known:
      raise ValueError(f"{num_devices} devices cannot be split as {sizes}")
    sizes[fill[0]] = num_devices // known
  if math.prod(sizes.values()) != num_devices:
    raise ValueError(f"mesh {sizes} needs {math.prod(sizes.values())} devices, have {num_devices}")
  return sizes


def create_mesh(mesh_cfg, devices=None) -> Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: all), laid out for the interconnect."""
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(mesh_cfg, len(devices))
  dims = tuple(shape[a] for a in MESH_AXES)
  try:
    grid = mesh_utils.create_device_mesh(dims, devices=devices)
  except (ValueError, NotImplementedError, AssertionError):
    grid = np.asarray(devices).reshape(dims)  # simulated or irregular device sets
  return Mesh(grid, MESH_AXES)


def axis_rules(mesh_cfg) -> tuple:
  """The config's rules as a tuple of (logical name, mesh axes) pairs (JSON turns tuples into lists)."""
  out = []
  for name, target in mesh_cfg.axis_rules:
    target = tuple(target) if isinstance(target, (list, tuple)) else target
    for axis in (target if isinstance(target, tuple) else (target,)):
      if axis is not None and axis not in MESH_AXES:
        raise ValueError(f"axis rule {name!r} -> {axis!r}: mesh axes are {MESH_AXES}")
    out.append((name, target))
  return tuple(out)


def logical_to_spec(names, rules, shape=None, mesh=None) -> P:
  """Maps logical axis names to a PartitionSpec. With `shape` and `mesh`, mesh axes that do not
  divide their dimension, or that an earlier dimension already uses, are dropped (replicated)."""
  lookup = dict(rules)
  used, spec = set(), []
  for i, name in enumerate(names):
    target = lookup.get(name) if name is not None else None
    axes = target if isinstance(target, tuple) else ((target,) if target else ())
    axes = tuple(a for a in axes if a not in used)
    if mesh is not None and shape is not None:
      size = math.prod(mesh.shape[a] for a in axes)
      if shape[i] % size:
        axes = ()
    used.update(axes)
    spec.append(axes[0] if len(axes) == 1 else (axes or None))
  return P(*spec)


def _is_variable(x):
  return isinstance(x, nnx.Variable)


def tree_shardings(tree, mesh: Mesh, rules):
  """NamedShardings for a pytree of (abstract) arrays held in nnx Variables, same tree structure.

  A Variable's logical "out_sharding" names give its spec; a leaf without names, or whose names do
  not fit its rank, is replicated.
  """
  def one(x):
    shape = getattr(x, "shape", ())
    names = x.get_metadata().get("out_sharding") if _is_variable(x) else None
    spec = P()
    if names and len(names) == len(shape):
      spec = logical_to_spec(names, rules, shape, mesh)
    return x.replace(NamedSharding(mesh, spec)) if _is_variable(x) else NamedSharding(mesh, spec)
  return jax.tree.map(one, tree, is_leaf=_is_variable)


def _batch_axes(rules, model_cfg=None):
  """Mesh axes of the batch dimension: those of the "batch" rule or, with sequence parallelism
  (model_cfg.seq_parallel_axis), model_cfg.seq_parallel_batch_axis: the sequence axis then carries
  the tokens of each sample, so the global batch may be smaller than the device count."""
  if model_cfg is not None:
    seq_axis, batch_axis = seq_parallel_axes(model_cfg)
    if seq_axis:
      return batch_axis
  return logical_to_spec(("batch",), rules)[0]


def batch_sharding(mesh: Mesh, rules, model_cfg=None) -> NamedSharding:
  """Leading (batch) axis over the batch axes (see _batch_axes), everything else replicated."""
  return NamedSharding(mesh, P(_batch_axes(rules, model_cfg)))


def batch_shard_count(mesh: Mesh, rules, model_cfg=None) -> int:
  """Into how many pieces the batch axis is split (the global batch must be a multiple)."""
  axes = _batch_axes(rules, model_cfg) or ()
  return math.prod(mesh.shape[a] for a in (axes if isinstance(axes, tuple) else (axes,)))


def process_batch_shard(sharding: NamedSharding, global_batch_size: int) -> tuple:
  """(shard_index, shard_count): the slice of the global batch this process's devices hold, as
  the data pipeline's host shard. Processes holding the same rows (the batch replicated over a mesh
  axis that spans hosts, as under sequence parallelism) get the same index: they must read the
  same samples."""
  index_map = sharding.addressable_devices_indices_map((global_batch_size,))
  rows = [(s[0].start or 0, global_batch_size if s[0].stop is None else s[0].stop)
          for s in index_map.values()]
  return contiguous_shard(rows, global_batch_size)


def contiguous_shard(rows, global_batch_size: int) -> tuple:
  """The (index, count) shard that the union of the row ranges `rows` forms in a batch of
  `global_batch_size`; an error if it is not one equal, contiguous slice."""
  rows = sorted(rows)
  start, stop = rows[0]
  for lo, hi in rows[1:]:
    if lo > stop:
      raise ValueError(f"this process's devices hold batch rows {rows}, not one contiguous slice: "
                       "reorder the mesh so each host's devices are adjacent on the batch axes")
    stop = max(stop, hi)
  size = stop - start
  if global_batch_size % size or start % size:
    raise ValueError(f"this process holds batch rows [{start}, {stop}) of {global_batch_size}, "
                     "not an equal shard")
  return start // size, global_batch_size // size


def global_batch(local_batch, sharding: NamedSharding, global_batch_size=None):
  """Assembles each host's slice of the batch into global arrays sharded by `sharding` (pass
  global_batch_size when hosts share rows: it cannot be inferred from the local slices then)."""
  def one(x):
    x = np.asarray(x)
    shape = None if global_batch_size is None else (global_batch_size,) + x.shape[1:]
    return jax.make_array_from_process_local_data(sharding, x, shape)
  return jax.tree.map(one, local_batch)


def maybe_initialize_distributed():
  """Connects the hosts of a multi-host job (see training/distributed.py for where the job's shape
  comes from); a no-op on one host. Must run before anything asks JAX for its devices."""
  distributed.initialize()

"""How each parameter is seen by the optimisers: its name, its stacked layer axes, its matrix shape.

JAX layouts: a Linear kernel is `[in, out]`, a conv kernel HWIO `[kh, kw, in, out]`; the model's
transformer blocks are stacked on one leading layer axis (`[depth, in, out]`). A parameter whose
path matches `layer_axis_pattern` (a regular expression searched in the '/'-joined path, e.g.
"blocks/attn/to_q/kernel") has one leading layer axis: the optimisers treat it as a batch of
independent per-layer tensors, exactly as if each layer had its own parameter (as in PyTorch).

Every optimiser-state leaf keeps its parameter's rank: statistics reduced over an axis keep it with
size 1, block statistics keep it with size `ceil(n / block_size)`. So a parameter's sharding maps
onto its state axis by axis (`state_sharding`), and logical-axis rules that drop mesh axes which do
not divide a dimension give the same answer.
"""
import re

import jax
from jax.sharding import NamedSharding, PartitionSpec


def param_name(path) -> str:
  """'/'-joined key path; the trailing `value` of an nnx.Variable wrapper is dropped."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  if parts and parts[-1] == "value" and hasattr(path[-1], "name"):
    parts.pop()
  return "/".join(parts)


def layer_axes(name: str, ndim: int, layer_axis_pattern) -> int:
  """Number of leading layer axes of the parameter called `name` (0 or 1)."""
  if layer_axis_pattern is None or not re.search(layer_axis_pattern, name):
    return 0
  if ndim < 1:
    raise ValueError(f"parameter {name!r} matches layer_axis_pattern {layer_axis_pattern!r} "
                     "but has no axis to stack layers on")
  return 1


def is_matrix(layer_shape) -> bool:
  """A Linear kernel [in, out] or a 1x1 conv [1, 1, in, out]: factored by CAME (NVlabs's rule).

  Vectors, depthwise and k x k conv kernels are not.
  """
  return len(layer_shape) == 2 or (len(layer_shape) == 4 and tuple(layer_shape[:2]) == (1, 1))


def placeholder_shape(shape) -> tuple:
  """The shape of an unused state slot: the parameter's rank, every axis of size 1."""
  return (1,) * len(shape)


def state_sharding(state, params, param_shardings):
  """NamedShardings for an optimiser state (arrays or ShapeDtypeStructs) that follow the params.

  Every subtree of `state` shaped like `params` is mapped leaf by leaf: an axis keeps its
  parameter's mesh axes when it has the parameter's size, or when it counts whole blocks of it
  that those mesh axes divide evenly; any other axis (a reduced one, a placeholder) is replicated.
  Leaves outside such subtrees (step counts) are replicated.
  """
  params_def = jax.tree.structure(params)
  sharding_leaves = jax.tree.leaves(param_shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
  if not sharding_leaves or not all(isinstance(s, NamedSharding) for s in sharding_leaves):
    raise ValueError("param_shardings must be a tree of NamedSharding, one per parameter")
  mesh = sharding_leaves[0].mesh

  def follow(leaf, param, sharding):
    spec = tuple(sharding.spec) + (None,) * (param.ndim - len(sharding.spec))
    if leaf.ndim != param.ndim:
      return NamedSharding(mesh, PartitionSpec())
    out = []
    for size, param_size, axes in zip(leaf.shape, param.shape, spec):
      names = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
      devices = 1
      for a in names:
        devices *= mesh.shape[a]
      whole_blocks = size > 1 and param_size % size == 0 and size % devices == 0
      out.append(axes if size == param_size or whole_blocks else None)
    return NamedSharding(mesh, PartitionSpec(*out))

  def visit(node):
    if jax.tree.structure(node) == params_def:
      return jax.tree.map(follow, node, params, param_shardings)
    return NamedSharding(mesh, PartitionSpec())

  return jax.tree.map(visit, state, is_leaf=lambda x: jax.tree.structure(x) == params_def)

"""Our own format: one Orbax save / restore for every component (transformer, text encoder, VAE).

A component folder holds the module's state as an Orbax StandardCheckpoint. Restoring builds the
module abstractly (no weights allocated), checks the saved names and shapes against it with the
same check as the safetensors readers (`tensors.check_names`), then reads each array straight into
the target dtype.
"""
import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
from flax import nnx

from sana_jax.convert.tensors import CheckpointError, check_names


def save_state(state, dst) -> str:
  """Writes an nnx.State (or a module's full state) to the Orbax folder `dst`."""
  import orbax.checkpoint as ocp
  dst = os.path.abspath(os.fspath(dst))
  if isinstance(state, nnx.Module):
    state = nnx.state(state)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(dst, state, force=True)
  return dst


def save_module_folder(module: nnx.Module, meta: dict, folder, meta_name: str, what: str) -> str:
  """Writes `meta_name` (JSON of meta) and state/ (the module's Orbax state) to `folder`, which
  must not exist, via a temporary sibling and one rename: the folder is complete or absent."""
  folder = os.path.abspath(os.fspath(folder))
  if os.path.exists(folder):
    raise FileExistsError(f"{folder} exists; {what} folder is never overwritten")
  partial = f"{folder}.partial-{os.getpid()}"
  shutil.rmtree(partial, ignore_errors=True)
  os.makedirs(partial)
  save_state(nnx.state(module), os.path.join(partial, "state"))
  with open(os.path.join(partial, meta_name), "w") as f:
    json.dump(meta, f, indent=2)
  os.replace(partial, folder)
  return folder


def load_module_folder(folder, meta_name: str, config_cls, module_cls, what: str, kind: str | None = None):
  """Reads a folder `save_module_folder` wrote -> (module, meta). meta["config"] builds
  config_cls (a dataclass; a key it has no field for is an error), module_cls(config, rngs=...)
  the module, restored from state/ without allocating it first. kind: meta["kind"] must equal it.
  Anything unreadable is one CheckpointError naming `what`, the folder and the problem."""
  folder = os.path.abspath(os.fspath(folder))
  try:
    with open(os.path.join(folder, meta_name)) as f:
      meta = json.load(f)
    if kind is not None and meta.get("kind") != kind:
      raise ValueError(f"kind {meta.get('kind')!r} is not {kind!r}")
    unknown = sorted(set(meta["config"]) - {f.name for f in dataclasses.fields(config_cls)})
    if unknown:
      raise ValueError(f"{config_cls.__name__} has no fields {unknown}")
    config = config_cls(**meta["config"])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise CheckpointError(f"{what} {folder}: cannot read {meta_name} ({type(e).__name__}: {e})") from None
  abstract = nnx.eval_shape(lambda: module_cls(config, rngs=nnx.Rngs(0)))
  return restore_module(abstract, os.path.join(folder, "state"), f"{what} {folder}"), meta


def _saved_shapes(tree) -> dict:
  have = {}
  for keypath, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    key = tuple(getattr(p, "key", getattr(p, "name", p)) for p in keypath)
    key = key[:-1] if key and key[-1] == "value" else key
    have[".".join(map(str, key))] = tuple(getattr(leaf, "shape", ()))
  return have


def restore_module(abstract: nnx.Module, src, component: str, dtype=None, state_filter=...):
  """`abstract` (a module from nnx.eval_shape) with the part of its state `state_filter` selects
  read from the Orbax folder `src`.

  dtype: floating arrays are restored in it (None: as the built module declares them).
  """
  import orbax.checkpoint as ocp
  src = os.path.abspath(os.fspath(src))
  if not os.path.isdir(src):
    raise CheckpointError(f"{component}: no Orbax checkpoint folder at {src}")
  graphdef, target, *rest = nnx.split(abstract, state_filter, ...)

  def spec(x):
    floating = dtype is not None and jnp.issubdtype(x.dtype, jnp.floating)
    return jax.ShapeDtypeStruct(x.shape, dtype if floating else x.dtype)

  want = {".".join(map(str, k)): tuple(v.shape) for k, v in nnx.to_flat_state(target)}
  with ocp.StandardCheckpointer() as ckptr:
    try:
      meta = ckptr.metadata(src)
    except Exception as e:  # noqa: BLE001 - Orbax raises many types for a damaged folder
      raise CheckpointError(f"{component}: cannot read the Orbax checkpoint {src} ({type(e).__name__}: {e})")
    check_names(component, src, want, _saved_shapes(getattr(meta, "item_metadata", meta)))
    restored = ckptr.restore(src, jax.tree.map(spec, target))
  return nnx.merge(graphdef, restored, *rest)

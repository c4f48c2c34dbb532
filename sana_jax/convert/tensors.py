"""The one checkpoint reader and key check of sana_jax: safetensors in, NNX state out.

  find_weight_files(folder, stem, variant, component) -> the .safetensors files of one component:
      `{stem}.safetensors`, a sharded `{stem}.safetensors.index.json`, or the same names with a
      diffusers/transformers variant (`diffusion_pytorch_model.bf16.safetensors`,
      `model.safetensors.index.bf16.json`, ...).
  read_safetensors(files, component) -> a lazy `TensorSource`: headers are parsed up front (a
      truncated file fails at once, naming file and component), each tensor is a zero-copy view of
      a memory map read when asked for, in its stored dtype (bf16 stays bf16).
  check_names(...) -> one `CheckpointError` listing every missing, unexpected and mis-shaped key.
  fill_state / export_tensors -> a conversion table (`Entry` rows) applied in either direction.

Each converter (transformer.py, gemma2.py, autoencoder.py) only writes its table.
"""
import dataclasses
import json
import os
import re
import struct
from typing import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx


class CheckpointError(ValueError):
  """A checkpoint that cannot be read or does not fit the model; the message names every problem."""


# ----------------------------------------------------------------------------- paths
def local_folder_or_file(path, what: str) -> str:
  """`path` as a string if it exists; a hub id or a missing path fails with one clear line."""
  path = os.fspath(path)
  if os.path.exists(path):
    return path
  if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", path) and not path.startswith((".", "/")):
    raise CheckpointError(
        f"{path!r} is not a local path; it looks like a Hugging Face hub id. sana_jax reads local "
        f"folders only: download it first, e.g. `huggingface-cli download {path} --local-dir DIR`, "
        f"then pass DIR as the {what}")
  raise CheckpointError(f"{what} {path!r} does not exist")


_SHARD = r"(?:-\d+-of-\d+)?"


def _variants_found(folder: str, stem: str) -> list:
  found = set()
  for name in os.listdir(folder):
    m = (re.fullmatch(rf"{re.escape(stem)}{_SHARD}\.([\w-]+)\.safetensors", name) or
         re.fullmatch(rf"{re.escape(stem)}\.safetensors\.index\.([\w-]+)\.json", name))
    if m:
      found.add(m.group(1))
    elif re.fullmatch(rf"{re.escape(stem)}{_SHARD}\.safetensors(\.index\.json)?", name):
      found.add(None)
  return sorted(found, key=lambda v: (v is not None, v or ""))


def _with_variant(name: str, variant: str | None) -> str:
  """diffusers' and transformers' naming: the variant goes before the last suffix."""
  if variant is None:
    return name
  head, tail = name.rsplit(".", 1)
  return f"{head}.{variant}.{tail}"


def find_weight_files(folder, stem: str, variant: str | None, component: str) -> list:
  """The safetensors files of one component folder (single file or sharded index), for `variant`."""
  folder = os.fspath(folder)
  index = os.path.join(folder, _with_variant(f"{stem}.safetensors.index.json", variant))
  if os.path.isfile(index):
    with open(index) as f:
      shards = sorted(set(json.load(f)["weight_map"].values()))
    files = [os.path.join(folder, s) for s in shards]
    absent = [f for f in files if not os.path.isfile(f)]
    if absent:
      raise CheckpointError(f"{component}: {index} lists shards that are not there: {absent}")
    return files
  single = os.path.join(folder, _with_variant(f"{stem}.safetensors", variant))
  if os.path.isfile(single):
    return [single]
  found = _variants_found(folder, stem)
  shown = ", ".join("the default (no variant)" if v is None else repr(v) for v in found) or "none"
  wanted = f"variant {variant!r}" if variant else "the default (no variant)"
  hint = f"; pass variant={found[-1]!r}" if found and found[-1] is not None and variant is None else ""
  raise CheckpointError(f"{component}: no {stem} safetensors weights for {wanted} in {folder}; "
                        f"variants found: {shown}{hint}")


# ----------------------------------------------------------------------------- reading
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
           "BOOL": np.bool_, "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2}


class TensorSource:
  """Lazy name -> array access over a checkpoint: `names`, `shapes`, `get(name)`, and where it is;
  `metadata`: the safetensors header's string map (`__metadata__`, e.g. a LoRA's adapter config)."""

  def __init__(self, names: Iterable[str], getter: Callable, shapes: Mapping[str, tuple], *,
               component: str = "checkpoint", where: str = "", metadata: Mapping[str, str] | None = None):
    self.names = set(names)
    self.metadata = dict(metadata or {})
    self._get = getter
    self.shapes = dict(shapes)
    self.component, self.where = component, where

  def get(self, name):
    return self._get(name)


def _read_header(file: str, component: str) -> tuple:
  """(data offset, header dict, metadata dict) of a .safetensors file, after checking it is complete."""
  size = os.path.getsize(file)
  problem = None
  with open(file, "rb") as f:
    head = f.read(8)
    if len(head) < 8:
      problem = f"{size} bytes, shorter than a safetensors header"
    else:
      (n,) = struct.unpack("<Q", head)
      raw = f.read(n) if 8 + n <= size else b""
      try:
        header = json.loads(raw) if raw else None
      except ValueError:
        header = None
      if header is None:
        problem = "its header is incomplete or not JSON"
      else:
        metadata = header.pop("__metadata__", None) or {}
        end = max((v["data_offsets"][1] for v in header.values()), default=0)
        if 8 + n + end > size:
          problem = f"{size} bytes but its header describes {8 + n + end}"
  if problem:
    raise CheckpointError(f"{component}: {file} is truncated or corrupt ({problem}); download it again")
  return 8 + n, header, metadata


def read_safetensors(files, component: str = "checkpoint") -> TensorSource:
  """A lazy source over one or more .safetensors files (see the module docstring)."""
  where, shapes, metadata = {}, {}, {}
  for file in files:
    offset, header, meta = _read_header(file, component)
    metadata.update(meta)
    for name, info in header.items():
      if info["dtype"] not in _DTYPES:
        raise CheckpointError(f"{component}: {file}: tensor {name} has unsupported dtype {info['dtype']}")
      where[name] = (file, offset, info)
      shapes[name] = tuple(info["shape"])
  maps = {}

  def get(name):
    file, offset, info = where[name]
    if file not in maps:
      maps[file] = np.memmap(file, dtype=np.uint8, mode="r")
    lo, hi = info["data_offsets"]
    return maps[file][offset + lo:offset + hi].view(_DTYPES[info["dtype"]]).reshape(info["shape"])

  label = files[0] if len(files) == 1 else f"{os.path.dirname(files[0])} ({len(files)} shards)"
  return TensorSource(where, get, shapes, component=component, where=label, metadata=metadata)


def read_component(folder, stem: str, variant: str | None, component: str) -> TensorSource:
  return read_safetensors(find_weight_files(folder, stem, variant, component), component)


def torch_to_numpy(t):
  """A torch tensor as numpy without changing its dtype (bf16 becomes ml_dtypes.bfloat16)."""
  import torch
  t = t.detach().cpu()
  if t.dtype == torch.bfloat16:
    return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return t.numpy()


def dict_source(tensors: Mapping, component: str = "checkpoint", where: str = "a state dict") -> TensorSource:
  """A source over an in-memory mapping of numpy / jax / torch tensors."""
  def get(name):
    v = tensors[name]
    return v if isinstance(v, (np.ndarray, jax.Array)) else torch_to_numpy(v)
  return TensorSource(tensors.keys(), get, {k: tuple(v.shape) for k, v in tensors.items()},
                      component=component, where=where)


# ----------------------------------------------------------------------------- the key check
def check_names(component: str, where: str, expected: Mapping[str, tuple], found: Mapping[str, tuple],
                notes: Iterable[str] = (), limit: int = 40):
  """Raises one CheckpointError listing every missing, unexpected and mis-shaped name, if any."""
  missing = [k for k in expected if k not in found]
  unexpected = sorted(k for k in found if k not in expected)
  misshaped = [f"{k}: checkpoint {tuple(found[k])}, model expects {tuple(v)}" for k, v in expected.items()
               if k in found and tuple(found[k]) != tuple(v)]
  if not (missing or unexpected or misshaped):
    return
  lines = [f"{component} checkpoint {where} does not match the model:", *(f"  {n}" for n in notes)]
  for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)):
    if items:
      lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:limit]) +
                   (f" ... and {len(items) - limit} more" if len(items) > limit else ""))
  raise CheckpointError("\n".join(lines))


# ----------------------------------------------------------------------------- conversion tables
# Each kind maps a PyTorch tensor to our layout (to_jax) and back (to_torch).
KINDS = {
    "linear": (lambda w: w.T, lambda a: a.T),                                        # [O, I] <-> [I, O]
    "vector": (lambda w: w, lambda a: a),
    "conv": (lambda w: w.transpose(2, 3, 1, 0), lambda a: a.transpose(3, 2, 0, 1)),  # OIHW <-> HWIO
    "conv1x1": (lambda w: w[:, :, 0, 0].T, lambda a: a.T[:, :, None, None]),        # [O, I, 1, 1] <-> [I, O]
}


@dataclasses.dataclass(frozen=True)
class Entry:
  """One row of a conversion table: our state path, the PyTorch name, the layout kind and, for
  parameters stacked on a leading layer axis, the number of layers ("{i}" in `theirs`)."""
  ours: tuple
  theirs: str
  kind: str
  layers: int | None = None

  def names(self) -> list:
    return [self.theirs] if self.layers is None else [self.theirs.format(i=i) for i in range(self.layers)]


def flat_target(abstract_state) -> dict:
  return dict(nnx.to_flat_state(abstract_state))


def expected_shapes(entries, target: Mapping) -> dict:
  """{PyTorch name: PyTorch shape} the table and the abstract state `target` call for."""
  out = {}
  for e in entries:
    shape = tuple(target[e.ours].shape)
    per = shape[1:] if e.layers is not None else shape
    torch_shape = KINDS[e.kind][1](np.empty(per, np.int8)).shape
    out.update({n: tuple(torch_shape) for n in e.names()})
  return out


def check_source(entries, target: Mapping, source: TensorSource, ignore=(), notes=()):
  """check_names for a table against a source; names matching any `ignore` regex are skipped."""
  found = {k: v for k, v in source.shapes.items() if not any(re.search(p, k) for p in ignore)}
  check_names(source.component, source.where, expected_shapes(entries, target), found, notes)


def fill_state(entries, target: Mapping, source: TensorSource) -> nnx.State:
  """The state `target` describes, read tensor by tensor from `source` (checked first by the
  caller), transposed to our layout and cast to each target variable's dtype."""
  flat = {}
  for e in entries:
    dtype = target[e.ours].dtype
    arrays = [jnp.asarray(KINDS[e.kind][0](source.get(n)), dtype=dtype) for n in e.names()]
    flat[e.ours] = arrays[0] if e.layers is None else jnp.stack(arrays)
  return nnx.from_flat_state({p: v.replace(flat[p]) for p, v in target.items()})


def export_tensors(entries, state) -> dict:
  """A state as {PyTorch name: numpy array in PyTorch layout} by the same table."""
  flat = dict(nnx.to_flat_state(state))
  out = {}
  for e in entries:
    arr = np.asarray(flat[e.ours][...])
    to_torch = KINDS[e.kind][1]
    parts = [arr] if e.layers is None else list(arr)
    out.update({n: np.ascontiguousarray(to_torch(a)) for n, a in zip(e.names(), parts)})
  return out


def save_safetensors(tensors: Mapping, dst_file, dtype=None, metadata: Mapping[str, str] | None = None):
  from safetensors.numpy import save_file
  if dtype is not None:
    tensors = {k: v.astype(dtype) for k, v in tensors.items()}
  save_file(dict(tensors), os.fspath(dst_file), metadata=dict(metadata) if metadata else None)

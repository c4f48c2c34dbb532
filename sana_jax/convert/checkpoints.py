"""Loading and writing SANA transformer checkpoints: diffusers folders, NVlabs .pth, our Orbax format.

`load_transformer(path)` tells the format from what is on disk:
  - a folder whose config.json names `SanaTransformer2DModel` (or a pipeline folder with `transformer/`)
  - a `.pth` / `.pt` file from NVlabs/Sana (needs `config`)
  - a folder we wrote with `save_transformer` (`sana_jax.json` + Orbax `params/`)
"""
import glob
import json
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from sana_jax.convert.transformer import (CheckpointError, config_from_diffusers, config_to_diffusers,
                                          dict_source, model_from_state, nvlabs_source, resolve_config,
                                          safetensors_source, state_from_source, state_to_tensors)
from sana_jax.models.transformer import SanaTransformer, abstract_transformer

OURS_META = "sana_jax.json"
FORMAT_TAG = "sana_jax.transformer.v1"


def _with_dtype(cfg, dtype):
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  cfg.param_dtype = cfg.dtype = jnp.dtype(dtype).name
  return cfg


def _check_nvlabs_keys(cfg, source):
  depth = max((int(n.split(".")[1]) for n in source.names if n.startswith("transformer_blocks.")),
              default=-1) + 1
  has_qk = any(n.endswith("attn1.norm_q.weight") for n in source.names)
  problems = []
  if depth != cfg.depth:
    problems.append(f"the checkpoint has {depth} blocks but config {cfg.name!r} has depth {cfg.depth}")
  if has_qk != bool(cfg.qk_norm):
    problems.append(f"the checkpoint {'has' if has_qk else 'has no'} q/k norms but config "
                    f"{cfg.name!r} has qk_norm={cfg.qk_norm}")
  if problems:
    raise CheckpointError("; ".join(problems) + " (pass a matching config, e.g. "
                          "'SanaMS1.5_4800M_P1_D60' for a 60-block SANA 1.5 model)")


def _read_diffusers_folder(path):
  with open(os.path.join(path, "config.json")) as f:
    dcfg = json.load(f)
  index = glob.glob(os.path.join(path, "diffusion_pytorch_model*.safetensors.index.json"))
  if index:
    with open(index[0]) as f:
      files = sorted(set(json.load(f)["weight_map"].values()))
    files = [os.path.join(path, x) for x in files]
  else:
    files = sorted(glob.glob(os.path.join(path, "diffusion_pytorch_model*.safetensors")))
  if not files:
    raise CheckpointError(f"no diffusion_pytorch_model*.safetensors in {path}")
  return dcfg, safetensors_source(files)


def load_transformer(path, config=None, dtype=jnp.float32) -> SanaTransformer:
  """Loads a SANA transformer from a diffusers folder, an NVlabs .pth or our Orbax checkpoint.

  `config` (a config name or ConfigDict) is required for NVlabs files and optional elsewhere, where
  it overrides the stored architecture. Parameters and compute use `dtype`.
  """
  path = os.fspath(path)
  if os.path.isdir(path) and os.path.isfile(os.path.join(path, OURS_META)):
    return _load_ours(path, config, dtype)
  if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")) and \
      os.path.isdir(os.path.join(path, "transformer")):
    path = os.path.join(path, "transformer")
  if os.path.isdir(path):
    dcfg, source = _read_diffusers_folder(path)
    if dcfg.get("_class_name", "SanaTransformer2DModel") != "SanaTransformer2DModel":
      raise CheckpointError(f"{path} holds a {dcfg['_class_name']}, not a SanaTransformer2DModel")
    cfg = resolve_config(config) if config is not None else config_from_diffusers(
        dcfg, name=os.path.basename(os.path.normpath(path)))
    cfg = _with_dtype(cfg, dtype)
    return model_from_state(cfg, state_from_source(source, cfg, dtype))
  if os.path.isfile(path) and path.endswith((".pth", ".pt", ".bin")):
    cfg = _with_dtype(resolve_config(config), dtype)
    import torch
    ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    source, extras = nvlabs_source(state)
    if extras["unknown"]:
      raise CheckpointError(f"{path}: unexpected keys for a SANA checkpoint: {extras['unknown'][:40]}")
    _check_nvlabs_keys(cfg, source)
    model = model_from_state(cfg, state_from_source(source, cfg, dtype))
    if "y_embedding" in extras:
      model.null_caption_embedding = nnx.Variable(jnp.asarray(extras["y_embedding"], jnp.float32))
    return model
  raise CheckpointError(f"{path}: not a diffusers SanaTransformer2DModel folder, an NVlabs .pth file "
                        "or a sana_jax checkpoint folder")


# ----------------------------------------------------------------------------- our Orbax format
def save_transformer(model: SanaTransformer, dst) -> str:
  """Writes `dst/sana_jax.json` (format tag + model config) and `dst/params` (Orbax)."""
  import orbax.checkpoint as ocp
  dst = os.path.abspath(os.fspath(dst))
  os.makedirs(dst, exist_ok=True)
  params = nnx.state(model, nnx.Param)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(dst, "params"), params, force=True)
  with open(os.path.join(dst, OURS_META), "w") as f:
    json.dump({"format": FORMAT_TAG, "model": model.cfg.to_dict()}, f, indent=2)
  return dst


def read_saved_config(path) -> ml_collections.ConfigDict:
  with open(os.path.join(path, OURS_META)) as f:
    meta = json.load(f)
  if meta.get("format") != FORMAT_TAG:
    raise CheckpointError(f"{path}: unknown format {meta.get('format')!r}, expected {FORMAT_TAG!r}")
  return ml_collections.ConfigDict(meta["model"])


def _load_ours(path, config, dtype):
  import orbax.checkpoint as ocp
  cfg = _with_dtype(resolve_config(config) if config is not None else read_saved_config(path), dtype)
  abstract = abstract_transformer(cfg)
  graphdef, target = nnx.split(abstract, nnx.Param)
  with ocp.StandardCheckpointer() as ckptr:
    meta = ckptr.metadata(os.path.join(os.path.abspath(path), "params"))
    tree = getattr(meta, "item_metadata", meta)
    _check_saved_shapes(tree, target, path)
    restored = ckptr.restore(os.path.join(os.path.abspath(path), "params"),
                             jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype), target))
  return nnx.merge(graphdef, restored)


def _check_saved_shapes(saved, target, path):
  want = {k: tuple(v.shape) for k, v in nnx.to_flat_state(target)}
  have = {}
  for keypath, leaf in jax.tree_util.tree_flatten_with_path(saved)[0]:
    key = tuple(getattr(p, "key", getattr(p, "name", p)) for p in keypath)
    key = key[:-1] if key and key[-1] == "value" else key
    have[key] = tuple(getattr(leaf, "shape", ()))
  missing = [".".join(map(str, k)) for k in want if k not in have]
  unexpected = [".".join(map(str, k)) for k in have if k not in want]
  wrong = [f"{'.'.join(map(str, k))}: saved {have[k]}, model {want[k]}" for k in want
           if k in have and have[k] != want[k]]
  if missing or unexpected or wrong:
    raise CheckpointError(f"{path} does not match its model config: missing {missing[:20]}, "
                          f"unexpected {unexpected[:20]}, wrong shape {wrong[:20]}")


# ----------------------------------------------------------------------------- diffusers export
def export_diffusers(model: SanaTransformer, dst, dtype=None) -> str:
  """Writes a diffusers `SanaTransformer2DModel` folder (config.json + safetensors)."""
  from safetensors.numpy import save_file
  os.makedirs(dst, exist_ok=True)
  tensors = state_to_tensors(model)
  if dtype is not None:
    tensors = {k: v.astype(dtype) for k, v in tensors.items()}
  save_file(tensors, os.path.join(dst, "diffusion_pytorch_model.safetensors"))
  with open(os.path.join(dst, "config.json"), "w") as f:
    json.dump(config_to_diffusers(model.cfg), f, indent=2)
  return dst

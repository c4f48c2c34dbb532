"""Loading and writing SANA transformer checkpoints in every format we know.

`load_transformer(path)` tells the format from what is on disk:
  - a diffusers `SanaTransformer2DModel` folder (or a pipeline folder with `transformer/`), single,
    sharded or `variant=` weights
  - a `.pth` / `.pt` file from NVlabs/Sana (needs `config`)
  - a folder we wrote with `save_transformer` (`sana_jax.json` + Orbax `params/`)
  - a `python -m sana_jax.train` workdir (its newest checkpoint, EMA weights if it has them)
"""
import json
import os

import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from sana_jax.convert import native, training_run
from sana_jax.convert.tensors import (CheckpointError, local_folder_or_file, read_component,
                                      save_safetensors, torch_to_numpy)
from sana_jax.convert.transformer import (COMPONENT, config_from_diffusers, config_to_diffusers,
                                          model_from_state, nvlabs_source, resolve_config,
                                          state_from_source, state_to_tensors)
from sana_jax.models.transformer import SanaTransformer, abstract_transformer

OURS_META = "sana_jax.json"
FORMAT_TAG = "sana_jax.transformer.v1"
WEIGHTS_STEM = "diffusion_pytorch_model"


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
    raise CheckpointError(f"{source.where}: " + "; ".join(problems) + " (pass a matching config, e.g. "
                          "'SanaMS1.5_4800M_P1_D60' for a 60-block SANA 1.5 model)")


def load_transformer(path, config=None, dtype=jnp.float32, variant: str | None = None) -> SanaTransformer:
  """Loads a SANA transformer from any format above; parameters and compute in `dtype`.

  config (a config name or ConfigDict): required for NVlabs files, elsewhere it overrides the
  stored architecture. variant: the diffusers weight variant to read ("bf16", "fp16", ...).
  """
  path = local_folder_or_file(path, "transformer checkpoint")
  if training_run.is_training_run(path):
    run = training_run.load_training_run(path, dtype)  # a LoRA run reads its base in dtype
    model = run.transformer
    if config is not None or jnp.dtype(dtype) != jnp.dtype(model.cfg.param_dtype):
      cfg = _with_dtype(resolve_config(config) if config is not None else model.cfg, dtype)
      model = model_from_state(cfg, _cast(nnx.state(model, nnx.Param), dtype))
    return model
  if os.path.isdir(path) and os.path.isfile(os.path.join(path, OURS_META)):
    return _load_ours(path, config, dtype)
  if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")) and \
      os.path.isdir(os.path.join(path, "transformer")):
    path = os.path.join(path, "transformer")
  if os.path.isdir(path):
    dcfg = _read_diffusers_config(path)
    cfg = resolve_config(config) if config is not None else config_from_diffusers(
        dcfg, name=os.path.basename(os.path.normpath(path)))
    cfg = _with_dtype(cfg, dtype)
    source = read_component(path, WEIGHTS_STEM, variant, COMPONENT)
    return model_from_state(cfg, state_from_source(source, cfg, dtype))
  if os.path.isfile(path) and path.endswith((".pth", ".pt", ".bin")):
    return _load_nvlabs(path, config, dtype)
  raise CheckpointError(f"{path}: not a diffusers SanaTransformer2DModel folder, an NVlabs .pth file, "
                        "a sana_jax checkpoint folder or a sana_jax training workdir")


def _cast(state, dtype):
  import jax
  return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, state)


def _read_diffusers_config(path):
  file = os.path.join(path, "config.json")
  with open(file) as f:
    dcfg = json.load(f)
  if dcfg.get("_class_name", "SanaTransformer2DModel") != "SanaTransformer2DModel":
    raise CheckpointError(f"{path} holds a {dcfg['_class_name']}, not a SanaTransformer2DModel")
  return dcfg


def _load_nvlabs(path, config, dtype):
  cfg = _with_dtype(resolve_config(config), dtype)
  import torch
  try:
    ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
  except Exception as e:  # noqa: BLE001 - torch raises many types for a damaged file
    raise CheckpointError(f"{COMPONENT}: cannot read {path} ({type(e).__name__}: {e}); truncated?")
  state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
  source, extras = nvlabs_source(state, where=path)
  if extras["unknown"]:
    raise CheckpointError(f"{path}: unexpected keys for a SANA checkpoint: {extras['unknown'][:40]}")
  _check_nvlabs_keys(cfg, source)
  model = model_from_state(cfg, state_from_source(source, cfg, dtype))
  if "y_embedding" in extras:
    null = extras["y_embedding"]
    null = null if isinstance(null, np.ndarray) else torch_to_numpy(null)
    model.null_caption_embedding = nnx.Variable(jnp.asarray(null, jnp.float32))
  return model


# ----------------------------------------------------------------------------- our Orbax format
def save_transformer(model: SanaTransformer, dst) -> str:
  """Writes `dst/sana_jax.json` (format tag + model config) and `dst/params` (Orbax)."""
  dst = os.path.abspath(os.fspath(dst))
  os.makedirs(dst, exist_ok=True)
  native.save_state(nnx.state(model, nnx.Param), os.path.join(dst, "params"))
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
  cfg = _with_dtype(resolve_config(config) if config is not None else read_saved_config(path), dtype)
  return native.restore_module(abstract_transformer(cfg), os.path.join(path, "params"), COMPONENT,
                               dtype, nnx.Param)


# ----------------------------------------------------------------------------- diffusers export
def export_diffusers(model: SanaTransformer, dst, dtype=None, variant: str | None = None) -> str:
  """Writes a diffusers `SanaTransformer2DModel` folder (config.json + safetensors)."""
  os.makedirs(dst, exist_ok=True)
  name = f"{WEIGHTS_STEM}.safetensors" if variant is None else f"{WEIGHTS_STEM}.{variant}.safetensors"
  save_safetensors(state_to_tensors(model), os.path.join(dst, name), dtype)
  with open(os.path.join(dst, "config.json"), "w") as f:
    json.dump(config_to_diffusers(model.cfg), f, indent=2)
  return dst

"""SANA LoRA adapters as diffusers / PEFT files, both ways.

  save_lora(model, path, adapter_name="default", base_model=None) -> the .safetensors file written
  load_lora(model, path, adapter_name="default", scale=1.0) -> model (the adapter added in place)

The file is what diffusers' `SanaPipeline.save_lora_weights` writes and `load_lora_weights` reads
(`pytorch_lora_weights.safetensors` when `path` is a folder): PEFT names with the "transformer."
prefix, e.g. `transformer.transformer_blocks.0.attn1.to_q.lora_A.weight` [r, in] and `...lora_B.weight`
[out, r] ([r, in, 1, 1] / [out, r, 1, 1] for the Mix-FFN 1x1 convs, [r, in, p, p] / [out, r, 1, 1]
for the patch embedding), and the header metadata
`lora_adapter_metadata`: the PEFT LoraConfig (r, lora_alpha, target_modules, rank_pattern,
alpha_pattern, use_rslora, base_model_name_or_path, ...) as JSON, keys prefixed "transformer.".

Reading accepts that format, PEFT's own `adapter_model.safetensors` ("base_model.model." prefix)
and unprefixed names. Without metadata each module's alpha is its rank (scale 1), as diffusers
assumes. Layers of one stacked map with different ranks are zero-padded to the largest (the same
product); their scales stay per layer.
"""
import collections
import json
import math
import os

import jax.numpy as jnp
import numpy as np

from sana_jax.convert.tensors import (KINDS, CheckpointError, check_names, local_folder_or_file,
                                      read_safetensors, save_safetensors)
from sana_jax.models import lora

WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE
METADATA_KEY = "lora_adapter_metadata"            # diffusers' LORA_ADAPTER_METADATA_KEY
PREFIX = "transformer."
_PREFIXES = (PREFIX, "base_model.model.", "")


def lora_file(path, must_exist=True) -> str:
  """The .safetensors file of `path` (a file, or a folder holding pytorch_lora_weights.safetensors)."""
  path = os.fspath(path)
  if must_exist:
    path = local_folder_or_file(path, "LoRA file")
  if os.path.isdir(path) or (not must_exist and not path.endswith(".safetensors")):
    path = os.path.join(path, WEIGHT_NAME)
    if must_exist and not os.path.isfile(path):
      raise CheckpointError(f"no {WEIGHT_NAME} in the LoRA folder {os.path.dirname(path)}")
  return path


# ----------------------------------------------------------------------------- export
def _alpha(scale, rank, use_rslora):
  return float(scale * (math.sqrt(rank) if use_rslora else rank))


def lora_tensors(model, adapter_name="default") -> tuple:
  """({PEFT name: numpy array in PyTorch layout}, PEFT LoraConfig dict) of one adapter."""
  if adapter_name not in lora.adapters(model):
    raise ValueError(f"no LoRA adapter named {adapter_name!r}; the model has {sorted(lora.adapters(model))}")
  info = lora.adapters(model)[adapter_name]
  rslora = info["use_rslora"]
  tensors, alphas, ranks = {}, {}, {}
  for target, layer in lora.lora_layers(model).items():
    if adapter_name not in layer.lora_A:
      continue
    a_torch, b_torch = KINDS[target.kind][1], KINDS[_b_kind(target)][1]
    a = np.asarray(layer.lora_A[adapter_name][...], np.float32)
    b = np.asarray(layer.lora_B[adapter_name][...], np.float32)
    scale = np.asarray(layer.lora_scale[adapter_name][...], np.float32)
    if target.layers is None:
      a, b, scale = a[None], b[None], scale[None]
    for name, a_i, b_i, s_i in zip(target.names(), a, b, scale):
      if s_i == 0:  # a stacked layer the adapter does not target
        continue
      tensors[f"{PREFIX}{name}.lora_A.weight"] = np.ascontiguousarray(a_torch(a_i))
      tensors[f"{PREFIX}{name}.lora_B.weight"] = np.ascontiguousarray(b_torch(b_i))
      ranks[name], alphas[name] = a_i.shape[-1], _alpha(s_i, a_i.shape[-1], rslora)
  rank = collections.Counter(ranks.values()).most_common(1)[0][0]
  alpha = collections.Counter(alphas.values()).most_common(1)[0][0]
  config = dict(
      peft_type="LORA", r=int(rank), lora_alpha=alpha, target_modules=sorted(ranks),
      rank_pattern={k: int(v) for k, v in ranks.items() if v != rank},
      alpha_pattern={k: v for k, v in alphas.items() if v != alpha},
      lora_dropout=info["dropout"], use_rslora=rslora, bias="none", use_dora=False, lora_bias=False,
      init_lora_weights="gaussian" if info["init"] == "gaussian" else True,
      base_model_name_or_path=info.get("base_model") or None)
  return tensors, config


def _b_kind(target):
  """lora_B is a Linear for a Linear, a 1x1 Conv2d for any Conv2d (PEFT)."""
  return "linear" if target.kind == "linear" else "conv1x1"


def save_lora(model, path, adapter_name="default", base_model=None) -> str:
  """Writes one adapter as diffusers' LoRA file (see the module docstring); returns its path.
  base_model: recorded as base_model_name_or_path (default: the adapter's own base_model)."""
  tensors, config = lora_tensors(model, adapter_name)
  if base_model:
    config["base_model_name_or_path"] = os.fspath(base_model)
  file = lora_file(path, must_exist=False)
  os.makedirs(os.path.dirname(os.path.abspath(file)), exist_ok=True)
  meta = {f"{PREFIX}{k}": v for k, v in config.items()}
  save_safetensors(tensors, file, metadata={"format": "pt", METADATA_KEY: json.dumps(meta, indent=2, sort_keys=True)})
  return file


# ----------------------------------------------------------------------------- import
def _module_name(key):
  """A file key without its "transformer." / "base_model.model." prefix."""
  for prefix in _PREFIXES:
    if key.startswith(prefix):
      return key[len(prefix):]
  return key


def read_lora_config(source) -> dict:
  """The PEFT LoraConfig dict from a LoRA file's header ({} when it has none)."""
  raw = source.metadata.get(METADATA_KEY)
  if not raw:
    return {}
  meta = json.loads(raw)
  prefixed = {k[len(PREFIX):]: v for k, v in meta.items() if k.startswith(PREFIX)}
  return prefixed or meta


def _pattern_value(patterns, name, default):
  """PEFT's rank_pattern / alpha_pattern lookup (peft.utils.other.get_pattern_key)."""
  import re
  for key, value in (patterns or {}).items():
    if re.match(rf"(.*\.)?({key})$", name):
      return value
  return default


def load_lora(model, path, adapter_name="default", scale=1.0):
  """Adds the adapter in a diffusers / PEFT LoRA file to `model` as `adapter_name`, with
  set_adapters weight `scale`. Keys that match no layer of the model raise one CheckpointError
  line listing them; nothing is added then."""
  file = lora_file(path)
  source = read_safetensors([file], component="LoRA")
  if adapter_name in lora.adapters(model):
    raise ValueError(f"the model already has a LoRA adapter named {adapter_name!r}; pass another "
                     "adapter_name or delete it first")
  config = read_lora_config(source)
  for flag in ("use_dora", "lora_bias"):
    if config.get(flag):
      raise CheckpointError(f"LoRA {file}: {flag}=True adapters are not supported")
  targets = {n: (t, i) for t in lora.lora_targets(model.cfg) for i, n in enumerate(t.names())}
  modules = collections.defaultdict(dict)
  unmatched = []
  for key in sorted(source.names):
    module, _, part = _module_name(key).rpartition(".lora_")
    if module in targets and part in ("A.weight", "B.weight"):
      modules[module][part[0]] = key
    else:
      unmatched.append(key)
  if unmatched:
    raise CheckpointError(f"LoRA {file}: {len(unmatched)} keys match no layer of the transformer: "
                          + ", ".join(unmatched[:20]) + (" ..." if len(unmatched) > 20 else ""))
  expected = {}
  for module, parts in modules.items():
    target, _ = targets[module]
    rank = source.shapes[parts["A"]][0] if "A" in parts else source.shapes[parts["B"]][1]
    a, b = lora.adapter_shapes(lora.layer_at(model, target), rank, target.layers is not None)
    if target.layers is not None:
      a, b = a[1:], b[1:]
    a, b = (KINDS[kind][1](np.empty(shape, np.int8)).shape for kind, shape in
            ((target.kind, a), (_b_kind(target), b)))
    key = parts.get("A") or parts["B"].replace(".lora_B.", ".lora_A.")
    expected[key], expected[key.replace(".lora_A.", ".lora_B.")] = a, b
  check_names("LoRA", file, expected, source.shapes)
  if not modules:
    raise CheckpointError(f"LoRA {file} holds no lora_A / lora_B weights")
  _add_from_source(model, source, modules, targets, config, adapter_name)
  lora.set_adapter_weight(model, adapter_name, scale)
  return model


def _add_from_source(model, source, modules, targets, config, adapter_name):
  """modules: {diffusers module name: {"A": file key, "B": file key}}."""
  rslora = bool(config.get("use_rslora", False))
  by_target = collections.defaultdict(dict)
  for module in modules:
    target, i = targets[module]
    by_target[target][i] = module
  ranks = []
  for target, present in by_target.items():
    to_jax = {"A": KINDS[target.kind][0], "B": KINDS[_b_kind(target)][0]}
    n = 1 if target.layers is None else target.layers
    read = {i: tuple(to_jax[part](np.asarray(source.get(modules[m][part]), np.float32)) for part in "AB")
            for i, m in present.items()}
    width = max(a.shape[-1] for a, _ in read.values())
    a0, b0 = next(iter(read.values()))
    a_all = np.zeros((n,) + a0.shape[:-1] + (width,), np.float32)
    b_all = np.zeros((n, width, b0.shape[-1]), np.float32)
    scale = np.zeros((n,), np.float32)
    for i, (a, b) in read.items():
      r = a.shape[-1]
      a_all[i, ..., :r], b_all[i, :r] = a, b
      # PEFT: alpha from alpha_pattern, else lora_alpha; diffusers: no metadata means alpha = rank
      alpha = _pattern_value(config.get("alpha_pattern"), present[i], config.get("lora_alpha", r))
      scale[i] = lora.scale_of(r, alpha, rslora)
      ranks.append(r)
    if target.layers is None:
      a_all, b_all, scale = a_all[0], b_all[0], scale[0]
    lora.lora_layer(model, target).add_adapter(adapter_name, jnp.asarray(a_all), jnp.asarray(b_all),
                                               jnp.asarray(scale))
  rank = collections.Counter(ranks).most_common(1)[0][0]
  lora.register(model, adapter_name, dict(
      rank=int(rank), alpha=float(config.get("lora_alpha", rank)),
      init="gaussian" if config.get("init_lora_weights") == "gaussian" else "kaiming",
      dropout=0.0, use_rslora=rslora, base_model=config.get("base_model_name_or_path") or "",
      target_modules=sorted(modules)))

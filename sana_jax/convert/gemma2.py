"""Gemma-2 (SANA's text encoder) between a transformers folder and our `Gemma2Model`.

The table maps each of our state paths to the transformers name by rule: the stacked decoder
layers (`layers`, leading layer axis) become `layers.{i}.<rest>`, the last part of every path
(`kernel`, `embedding`, `weight`) becomes `weight`, and linear kernels are transposed. The `Gemma2ForCausalLM` layout (names prefixed `model.`, an
`lm_head.weight` that SANA never uses) is read too.
"""
import dataclasses
import json
import os

import jax.numpy as jnp
from flax import nnx

from sana_jax.convert import tensors
from sana_jax.models.gemma2 import Gemma2Config, Gemma2Model

COMPONENT = "text_encoder (Gemma-2)"


def _abstract(config: Gemma2Config, dtype):
  return nnx.eval_shape(lambda: Gemma2Model(config, dtype=dtype, rngs=nnx.Rngs(0)))


def gemma2_entries(config: Gemma2Config, abstract_state, prefix: str = "") -> list:
  """The conversion table of a Gemma2Model state (our path -> transformers name)."""
  entries = []
  for path, _ in nnx.to_flat_state(abstract_state):
    parts = [str(p) for p in path[:-1]] + ["weight"]  # kernel, embedding and norm weight alike
    stacked = path[0] == "layers"
    if stacked:
      parts.insert(1, "{i}")
    entries.append(tensors.Entry(path, prefix + ".".join(parts), "linear" if path[-1] == "kernel" else "vector",
                                 config.num_hidden_layers if stacked else None))
  return entries


def read_config(folder) -> Gemma2Config:
  file = os.path.join(folder, "config.json")
  if not os.path.isfile(file):
    raise tensors.CheckpointError(f"{COMPONENT}: no config.json in {folder}")
  with open(file) as f:
    return Gemma2Config.from_hf_dict(json.load(f))


def load_gemma2(path, dtype=jnp.float32, variant: str | None = None) -> Gemma2Model:
  """A `Gemma2Model` from a transformers folder (config.json + safetensors, single, sharded or a
  `variant` such as "bf16"); any missing, unexpected or mis-shaped tensor fails with one error."""
  path = tensors.local_folder_or_file(path, "text encoder folder")
  config = read_config(path)
  source = tensors.read_component(path, "model", variant, COMPONENT)
  prefix = "model." if source.names and all(k.startswith("model.") or k == "lm_head.weight"
                                            for k in source.names) else ""
  graphdef, abstract = nnx.split(_abstract(config, dtype))
  target = tensors.flat_target(abstract)
  entries = gemma2_entries(config, abstract, prefix)
  tensors.check_source(entries, target, source, ignore=(r"^lm_head\.weight$",))
  return nnx.merge(graphdef, tensors.fill_state(entries, target, source))


def hf_config(config: Gemma2Config) -> dict:
  """A transformers `Gemma2Model` config.json dict for our config."""
  import transformers
  fields = dataclasses.asdict(config)
  fields["layer_types"] = list(fields["layer_types"])
  scalar = fields["query_pre_attn_scalar"]
  fields["query_pre_attn_scalar"] = int(scalar) if float(scalar).is_integer() else scalar
  fields["rope_parameters"] = {"rope_type": "default", "rope_theta": fields.pop("rope_theta")}
  hf = transformers.Gemma2Config(**fields).to_dict()
  hf["architectures"] = ["Gemma2Model"]
  return hf


def save_gemma2_transformers(model: Gemma2Model, dst, variant: str | None = None) -> str:
  """Writes a transformers `Gemma2Model` folder (config.json + model[.variant].safetensors)."""
  os.makedirs(dst, exist_ok=True)
  entries = gemma2_entries(model.config, nnx.state(model))
  name = "model.safetensors" if variant is None else f"model.{variant}.safetensors"
  tensors.save_safetensors(tensors.export_tensors(entries, nnx.state(model)), os.path.join(dst, name))
  with open(os.path.join(dst, "config.json"), "w") as f:
    json.dump(hf_config(model.config), f, indent=2)
  return dst

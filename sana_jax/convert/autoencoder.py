"""DC-AE (diffusers `AutoencoderDC`) between a diffusers folder and our `DCAE`.

Our module tree mirrors diffusers' names, so the table is one rule: the path joined with dots,
`kernel` renamed `weight`; 4-D kernels are convolutions (OIHW <-> HWIO), 2-D ones linear layers.
BatchNorm running statistics are part of the state; `num_batches_tracked` is ignored.
"""
import dataclasses
import json
import os

import jax.numpy as jnp
from flax import nnx

from sana_jax.convert import tensors
from sana_jax.models.autoencoder import DCAE, DCAEConfig

COMPONENT = "vae (AutoencoderDC)"
_IGNORED = (r"num_batches_tracked$",)


def autoencoder_entries(abstract_state) -> list:
  """The conversion table of a DCAE state (our path -> diffusers name)."""
  entries = []
  for path, var in nnx.to_flat_state(abstract_state):
    kind = "vector"
    if path[-1] == "kernel":
      kind = "conv" if len(var.shape) == 4 else "linear"
    entries.append(tensors.Entry(path, ".".join("weight" if p == "kernel" else str(p) for p in path), kind))
  return entries


def torch_state_shapes(module) -> dict:
  """{diffusers state-dict name: PyTorch shape} that `module` expects (works on nnx.eval_shape)."""
  state = nnx.state(module)
  return tensors.expected_shapes(autoencoder_entries(state), tensors.flat_target(state))


def assign_torch_weights(module, source, where: str = "a state dict"):
  """`module` (concrete or from nnx.eval_shape) filled from a TensorSource or a {diffusers name:
  array} dict, after the one key/shape check."""
  if not isinstance(source, tensors.TensorSource):
    source = tensors.dict_source(source, COMPONENT, where)
  graphdef, state = nnx.split(module)
  target = tensors.flat_target(state)
  entries = autoencoder_entries(state)
  tensors.check_source(entries, target, source, ignore=_IGNORED)
  return nnx.merge(graphdef, tensors.fill_state(entries, target, source))


def read_config(folder) -> DCAEConfig:
  file = os.path.join(folder, "config.json")
  if not os.path.isfile(file):
    raise tensors.CheckpointError(f"{COMPONENT}: {folder} is not a diffusers AutoencoderDC folder: no config.json")
  with open(file) as f:
    raw = json.load(f)
  if raw.get("_class_name", "AutoencoderDC") != "AutoencoderDC":
    raise tensors.CheckpointError(f"{file} describes a {raw['_class_name']}, not an AutoencoderDC")
  return DCAEConfig.from_dict(raw)


def load_autoencoder(path, dtype=jnp.float32, variant: str | None = None) -> DCAE:
  """A `DCAE` from a diffusers AutoencoderDC folder (e.g. a Sana pipeline's `vae/`), weights in dtype."""
  path = tensors.local_folder_or_file(path, "autoencoder folder")
  config = read_config(path)
  model = nnx.eval_shape(lambda: DCAE(config, dtype=dtype, rngs=nnx.Rngs(0)))
  return assign_torch_weights(model, tensors.read_component(path, "diffusion_pytorch_model", variant, COMPONENT))


def diffusers_config(config: DCAEConfig) -> dict:
  return {"_class_name": "AutoencoderDC", **json.loads(json.dumps(dataclasses.asdict(config)))}


def save_autoencoder_diffusers(model: DCAE, dst, variant: str | None = None) -> str:
  """Writes a diffusers `AutoencoderDC` folder (config.json + diffusion_pytorch_model[.variant].safetensors)."""
  os.makedirs(dst, exist_ok=True)
  state = nnx.state(model)
  name = "diffusion_pytorch_model.safetensors" if variant is None else f"diffusion_pytorch_model.{variant}.safetensors"
  tensors.save_safetensors(tensors.export_tensors(autoencoder_entries(state), state), os.path.join(dst, name))
  with open(os.path.join(dst, "config.json"), "w") as f:
    json.dump(diffusers_config(model.config), f, indent=2)
  return dst

"""Whole SANA pipelines: diffusers folders, our export and training workdirs, read and written.

  pipeline_parts(path, dtype, variant) -> (SanaPipeline keyword arguments, suggested settings)
      for a diffusers Sana pipeline folder (model_index.json, transformer/, vae/, text_encoder/,
      tokenizer/, scheduler/; `variant=` weights too), our export (`sana_pipeline.json`) or a
      `python -m sana_jax.train` workdir (its transformer with the run's built-in codecs).
  convert_pipeline(src, dst, to="sana_jax" | "diffusers") -> our export (Orbax, loads without
      PyTorch) or a diffusers folder that `diffusers.SanaPipeline.from_pretrained` reads.
"""
import dataclasses
import json
import os
import shutil

import jax.numpy as jnp

from sana_jax.convert import native, training_run
from sana_jax.convert.autoencoder import load_autoencoder, save_autoencoder_diffusers
from sana_jax.convert.checkpoints import export_diffusers, load_transformer, save_transformer
from sana_jax.convert.gemma2 import load_gemma2, save_gemma2_transformers
from sana_jax.convert.tensors import CheckpointError, local_folder_or_file

PIPELINE_META = "sana_pipeline.json"
FORMAT_TAG = "sana_jax.pipeline.v1"
FORMATS = ("sana_jax", "diffusers")
COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")


def _read_json(path):
  with open(path) as f:
    return json.load(f)


def _check_model_index(path):
  index = _read_json(os.path.join(path, "model_index.json"))
  missing = [c for c in COMPONENTS if not os.path.isdir(os.path.join(path, c))]
  if missing:
    raise FileNotFoundError(f"{path} ({index.get('_class_name')}) lacks the component folders {missing}")
  transformer = index.get("transformer", [None, None])[1]
  if transformer != "SanaTransformer2DModel":
    raise ValueError(f"{path}: model_index.json names transformer {transformer!r}, expected SanaTransformer2DModel")


def _diffusers_parts(path, dtype, variant):
  from sana_jax.sampling.text_encoding import PromptEncoder
  from transformers import AutoTokenizer
  _check_model_index(path)
  timestep_scale = _read_json(os.path.join(path, "transformer", "config.json")).get("timestep_scale", 1.0)
  gemma = load_gemma2(os.path.join(path, "text_encoder"), dtype=dtype, variant=variant)
  return dict(transformer=load_transformer(os.path.join(path, "transformer"), dtype=dtype, variant=variant),
              vae=load_autoencoder(os.path.join(path, "vae"), dtype=dtype, variant=variant),
              text_encoder=PromptEncoder(gemma, AutoTokenizer.from_pretrained(os.path.join(path, "tokenizer"))),
              scheduler_config=_read_json(os.path.join(path, "scheduler", "scheduler_config.json")),
              timestep_scale=timestep_scale)


def _export_parts(path, dtype):
  from flax import nnx
  from transformers import AutoTokenizer

  from sana_jax.models.autoencoder import DCAE, DCAEConfig
  from sana_jax.models.gemma2 import Gemma2Config, Gemma2Model
  from sana_jax.sampling.text_encoding import PromptEncoder
  meta = _read_json(os.path.join(path, PIPELINE_META))
  if meta.get("format") != FORMAT_TAG:
    raise ValueError(f"{path}: unknown pipeline format {meta.get('format')!r}, expected {FORMAT_TAG!r}")
  gemma_cfg, vae_cfg = Gemma2Config(**meta["text_encoder"]), DCAEConfig.from_dict(meta["vae"])
  gemma = native.restore_module(nnx.eval_shape(lambda: Gemma2Model(gemma_cfg, dtype=dtype, rngs=nnx.Rngs(0))),
                                os.path.join(path, "text_encoder"), "text_encoder (Gemma-2)", dtype)
  vae = native.restore_module(nnx.eval_shape(lambda: DCAE(vae_cfg, dtype=dtype, rngs=nnx.Rngs(0))),
                              os.path.join(path, "vae"), "vae (AutoencoderDC)", dtype)
  tokenizer = AutoTokenizer.from_pretrained(os.path.join(path, "tokenizer"))
  return dict(transformer=load_transformer(os.path.join(path, "transformer"), dtype=dtype), vae=vae,
              text_encoder=PromptEncoder(gemma, tokenizer), scheduler_config=meta["scheduler"],
              timestep_scale=meta.get("timestep_scale", 1.0))


def _training_run_parts(path, dtype):
  """A training run's transformer (EMA if any) with its built-in codecs and sampling settings."""
  from sana_jax.sampling.schedulers import scheduler_config
  from sana_jax.training import loop
  run = training_run.load_training_run(path)
  transformer = load_transformer(path, dtype=dtype) if jnp.dtype(dtype) != jnp.float32 else run.transformer
  autoencoder, text_encoder = loop.build_codecs(run.config, run.workdir, allow_fit=False)
  s = run.config.sampling
  suggested = dict(num_inference_steps=s.num_steps, guidance_scale=s.guidance_scale,
                   max_sequence_length=text_encoder.max_length, training_step=int(run.step), ema=run.ema)
  return dict(transformer=transformer, vae=autoencoder, text_encoder=text_encoder,
              scheduler_config=scheduler_config(s.sampler, s.flow_shift)), suggested


def pipeline_parts(path, dtype=jnp.float32, variant: str | None = None):
  """(SanaPipeline keyword arguments, suggested call settings) for any pipeline source above."""
  path = local_folder_or_file(path, "pipeline folder")
  if os.path.isfile(os.path.join(path, PIPELINE_META)):
    return _export_parts(path, dtype), {}
  if os.path.isfile(os.path.join(path, "model_index.json")):
    return _diffusers_parts(path, dtype, variant), {}
  if training_run.is_training_run(path):
    return _training_run_parts(path, dtype)
  raise FileNotFoundError(f"{path} is neither a diffusers pipeline folder (no model_index.json), a sana_jax "
                          f"pipeline export (no {PIPELINE_META}) nor a training workdir (no checkpoints/)")


# ----------------------------------------------------------------------------- writing
def _check_exportable(pipe, to):
  from sana_jax.models.autoencoder import DCAE
  from sana_jax.sampling.text_encoding import PromptEncoder
  if not isinstance(pipe.vae, DCAE) or not isinstance(pipe.text_encoder, PromptEncoder):
    raise CheckpointError(
        f"this pipeline uses {type(pipe.vae).__name__} / {type(pipe.text_encoder).__name__} (a training "
        f"run's built-in codecs), which the {to} pipeline format cannot hold; convert its transformer "
        "instead: python -m sana_jax.convert transformer --src WORKDIR --dst DST [--to diffusers]")


def save_export(pipe, dst, source: str = "") -> str:
  """Our export: sana_pipeline.json + Orbax transformer/, text_encoder/, vae/ + tokenizer files."""
  _check_exportable(pipe, "sana_jax")
  dst = os.path.abspath(os.fspath(dst))
  os.makedirs(dst, exist_ok=True)
  save_transformer(pipe.transformer, os.path.join(dst, "transformer"))
  native.save_state(pipe.text_encoder.model, os.path.join(dst, "text_encoder"))
  native.save_state(pipe.vae, os.path.join(dst, "vae"))
  tokenizer_dir = os.path.join(dst, "tokenizer")
  shutil.rmtree(tokenizer_dir, ignore_errors=True)
  pipe.text_encoder.tokenizer.save_pretrained(tokenizer_dir)
  meta = {"format": FORMAT_TAG, "source": source, "dtype": jnp.dtype(pipe.transformer.cfg.param_dtype).name,
          "scheduler": pipe.scheduler_config, "timestep_scale": pipe.timestep_scale,
          "text_encoder": dataclasses.asdict(pipe.text_encoder.model.config),
          "vae": dataclasses.asdict(pipe.vae.config)}
  with open(os.path.join(dst, PIPELINE_META), "w") as f:
    json.dump(meta, f, indent=2)
  return dst


def save_diffusers(pipe, dst, variant: str | None = None) -> str:
  """A diffusers Sana pipeline folder (model_index.json + the five component folders)."""
  _check_exportable(pipe, "diffusers")
  dst = os.path.abspath(os.fspath(dst))
  os.makedirs(dst, exist_ok=True)
  config = dict(pipe.scheduler_config)
  export_diffusers(pipe.transformer, os.path.join(dst, "transformer"), variant=variant)
  if pipe.timestep_scale != 1.0:
    file = os.path.join(dst, "transformer", "config.json")
    with open(file) as f:
      tcfg = json.load(f)
    tcfg["timestep_scale"] = pipe.timestep_scale
    with open(file, "w") as f:
      json.dump(tcfg, f, indent=2)
  save_autoencoder_diffusers(pipe.vae, os.path.join(dst, "vae"), variant=variant)
  save_gemma2_transformers(pipe.text_encoder.model, os.path.join(dst, "text_encoder"), variant=variant)
  tokenizer_dir = os.path.join(dst, "tokenizer")
  shutil.rmtree(tokenizer_dir, ignore_errors=True)
  pipe.text_encoder.tokenizer.save_pretrained(tokenizer_dir)
  os.makedirs(os.path.join(dst, "scheduler"), exist_ok=True)
  with open(os.path.join(dst, "scheduler", "scheduler_config.json"), "w") as f:
    json.dump(config, f, indent=2)
  index = {"_class_name": "SanaPipeline", "scheduler": ["diffusers", config["_class_name"]],
           "text_encoder": ["transformers", "Gemma2Model"],
           "tokenizer": ["transformers", type(pipe.text_encoder.tokenizer).__name__],
           "transformer": ["diffusers", "SanaTransformer2DModel"], "vae": ["diffusers", "AutoencoderDC"]}
  with open(os.path.join(dst, "model_index.json"), "w") as f:
    json.dump(index, f, indent=2)
  return dst


def convert_pipeline(src, dst, dtype=jnp.float32, to: str = "sana_jax", variant: str | None = None) -> str:
  """Reads any pipeline source and writes it to dst in format `to` ("sana_jax" or "diffusers");
  variant: the weight variant read from a diffusers source and written to a diffusers folder."""
  from sana_jax.sampling.pipeline import SanaPipeline
  if to not in FORMATS:
    raise ValueError(f"unknown pipeline format {to!r}; choose from {FORMATS}")
  pipe = SanaPipeline.from_pretrained(src, dtype=dtype, variant=variant)
  if to == "diffusers":
    return save_diffusers(pipe, dst, variant=variant)
  return save_export(pipe, dst, source=os.path.abspath(os.fspath(src)))

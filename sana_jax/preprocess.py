"""Encode a dataset once into a latent cache, so training runs neither the autoencoder nor the text encoder.

  python -m sana_jax.preprocess --out=/tmp/shapes_cache --data.shapes_num_examples=2000
  python -m sana_jax.train --config.data.name=cache --config.data.path=/tmp/shapes_cache

  python -m sana_jax.preprocess --data.name=folder --data.path=images/ --data.image_size=512 \
      --data.multi_scale --autoencoder=Sana_1600M_diffusers/ --text_encoder=Sana_1600M_diffusers/ --out=cache/

`--data.*` is the `data` section of a training config (shapes, folder or tfds; see
sana_jax/data/pipeline.py). `--autoencoder` / `--text_encoder` are "builtin" (the parameter-free
codecs of configs/tiny.py) or a local folder: a diffusers Sana pipeline (its vae/, text_encoder/
and tokenizer/ are used) or the component folder itself (a Gemma-2 folder must hold its tokenizer).
The cache layout is described in sana_jax/data/cache.py.
"""
import os

import jax.numpy as jnp
from absl import flags
from ml_collections import config_flags

from sana_jax import cli, compilation_cache, configs
from sana_jax.data import cache, shapes
from sana_jax.data.pipeline import build_source, default_data_config

_TINY = configs.get_config("tiny")

_DATA = config_flags.DEFINE_config_dict("data", default_data_config(), "The images and captions to encode.")
_OUT = flags.DEFINE_string("out", None, "Folder to write the cache to (must not hold one already).", required=True)
_AUTOENCODER = flags.DEFINE_string(
    "autoencoder", "builtin", "'builtin' (space-to-depth) or a diffusers AutoencoderDC / Sana pipeline folder.")
_TEXT_ENCODER = flags.DEFINE_string(
    "text_encoder", "builtin", "'builtin' (word embeddings) or a Gemma-2 (+ tokenizer) / Sana pipeline folder.")
_AUTOENCODER_FACTOR = flags.DEFINE_integer(
    "autoencoder_factor", _TINY.codecs.autoencoder_factor, "Built-in autoencoder: spatial compression.")
_SCALING_FACTOR = flags.DEFINE_float(
    "scaling_factor", _TINY.codecs.scaling_factor,
    "Built-in autoencoder: latents = pixels x this (train with the same codecs.scaling_factor).")
_CAPTION_CHANNELS = flags.DEFINE_integer(
    "caption_channels", _TINY.model.caption_channels, "Built-in text encoder: feature width.")
_TEXT_CONTEXT = flags.DEFINE_integer(
    "text_context", _TINY.codecs.text_context, "Built-in text encoder: preceding tokens each token carries "
    "(train with the same codecs.text_context; configs/tiny24.py uses 2).")
_MAX_TEXT_LENGTH = flags.DEFINE_integer(
    "max_text_length", None, f"Text tokens per caption (default: {_TINY.codecs.max_text_length} with the "
    "built-in encoder, as configs/tiny.py; 300 with Gemma-2, as SANA).")
_CHI = flags.DEFINE_boolean(
    "complex_human_instruction", True, "Gemma-2: prepend SANA's Complex Human Instruction, as training does.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Images encoded per jitted call.")
_SHARD_SIZE = flags.DEFINE_integer("shard_size", 1000, "Records per ArrayRecord shard.")
_STORAGE_DTYPE = flags.DEFINE_enum("storage_dtype", "float32", list(cache.STORAGE_DTYPES),
                                   "Dtype of the stored latents and text features.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype of loaded encoders.")


def _component(path: str, name: str) -> str:
  """`path/name` when `path` is a pipeline folder holding that component, else `path` itself."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path!r} is not a folder (pass 'builtin' or a local model folder)")
  inner = os.path.join(path, name)
  return inner if os.path.isdir(inner) else path


def build_autoencoder(spec: str, factor: int, dtype, scaling_factor: float = 1.0):
  if spec == "builtin":
    from sana_jax.models.simple_codecs import SpaceToDepthAutoencoder
    return SpaceToDepthAutoencoder(factor, scaling_factor=scaling_factor)
  from sana_jax.convert.autoencoder import load_autoencoder
  return load_autoencoder(_component(spec, "vae"), dtype=dtype)


def build_text_encoder(spec: str, caption_channels: int, max_text_length: int, dtype, context: int = 0):
  if spec == "builtin":
    from sana_jax.models.simple_codecs import WordEmbeddingTextEncoder
    return WordEmbeddingTextEncoder(shapes.vocabulary(), caption_channels, max_text_length, context=context)
  from sana_jax.sampling.text_encoding import PromptEncoder
  text_dir = _component(spec, "text_encoder")
  tokenizer_dir = os.path.join(spec, "tokenizer") if os.path.isdir(os.path.join(spec, "tokenizer")) else text_dir
  return PromptEncoder.from_pretrained(text_dir, tokenizer_dir, dtype=dtype)


def main(argv):
  compilation_cache.enable()
  del argv
  dtype = jnp.dtype(_DTYPE.value)
  builtin_text = _TEXT_ENCODER.value == "builtin"
  max_text_length = _MAX_TEXT_LENGTH.value or (_TINY.codecs.max_text_length if builtin_text else 300)
  autoencoder = build_autoencoder(_AUTOENCODER.value, _AUTOENCODER_FACTOR.value, dtype, _SCALING_FACTOR.value)
  text_encoder = build_text_encoder(_TEXT_ENCODER.value, _CAPTION_CHANNELS.value, max_text_length, dtype,
                                    _TEXT_CONTEXT.value)
  chi = None
  if not builtin_text and _CHI.value:
    from sana_jax.sampling.text_encoding import CHI_DEFAULT
    chi = CHI_DEFAULT
  data_cfg = _DATA.value
  manifest = cache.write_cache(
      _OUT.value, build_source(data_cfg), data_cfg, autoencoder, text_encoder,
      max_text_length=max_text_length, batch_size=_BATCH_SIZE.value, complex_human_instruction=chi,
      storage_dtype=_STORAGE_DTYPE.value, shard_size=_SHARD_SIZE.value,
      provenance={"autoencoder": _AUTOENCODER.value, "text_encoder": _TEXT_ENCODER.value})
  shapes_by_bucket = ", ".join(f"{b['key']}: {b['count']} x {b['latent_shape']}" for b in manifest["buckets"])
  print(f"wrote {manifest['count']} examples ({manifest['skipped']} skipped) to {os.path.abspath(_OUT.value)}; "
        f"latents {shapes_by_bucket}; text [{manifest['text_length']}, {manifest['text_channels']}]", flush=True)
  print(f"train on it with: python -m sana_jax.train --config.data.name=cache --config.data.path={_OUT.value}")


if __name__ == "__main__":
  cli.run(main)

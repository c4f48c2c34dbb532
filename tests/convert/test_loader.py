"""The one loader: variants, sharded indexes, truncated files, hub ids and the one key check."""
import copy
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import sana_jax
from sana_jax.convert.tensors import CheckpointError, read_safetensors
from sana_jax.sampling.pipeline import SanaPipeline
from tests.sampling.pipeline_builders import build_tiny_pipeline

PROMPT = "a cat on a sofa"
SMALL = dict(height=32, width=32, num_inference_steps=2, use_resolution_binning=False, max_sequence_length=16,
             sampler="flow_euler", complex_human_instruction=None, output_type="np")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  """(fp32 pipeline folder, the same pipeline saved with variant="bf16" in bf16, the diffusers pipe)."""
  plain = tmp_path_factory.mktemp("plain")
  ref = build_tiny_pipeline(plain)
  bf16 = tmp_path_factory.mktemp("bf16")
  copy.deepcopy(ref).to(torch.bfloat16).save_pretrained(bf16, variant="bf16")
  return plain, bf16, ref


def test_bf16_variant_pipeline_loads_with_variant_and_keeps_bf16(folders):
  _, bf16, _ = folders
  assert (bf16 / "vae" / "diffusion_pytorch_model.bf16.safetensors").exists()
  assert (bf16 / "text_encoder" / "model.bf16.safetensors").exists()
  pipe = SanaPipeline.from_pretrained(bf16, variant="bf16", dtype=jnp.bfloat16)
  for module in (pipe.transformer, pipe.vae, pipe.text_encoder.model):
    assert {a.dtype for a in jax.tree.leaves(nnx.state(module, nnx.Param))} == {jnp.dtype(jnp.bfloat16)}
  images = pipe(PROMPT, **SMALL).images
  assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()


def test_missing_variant_lists_the_variants_found(folders):
  plain, bf16, _ = folders
  with pytest.raises(CheckpointError, match=r"variants found: 'bf16'; pass variant='bf16'"):
    SanaPipeline.from_pretrained(bf16)
  with pytest.raises(CheckpointError, match=r"no diffusion_pytorch_model safetensors weights for variant "
                                            r"'fp16' .* variants found: the default \(no variant\)"):
    sana_jax.load_transformer(plain / "transformer", variant="fp16")


def test_bf16_tensors_are_read_lazily_in_bf16(folders):
  _, bf16, _ = folders
  source = read_safetensors([str(bf16 / "transformer" / "diffusion_pytorch_model.bf16.safetensors")])
  tensor = source.get("proj_out.weight")
  assert tensor.dtype == jnp.bfloat16 and isinstance(tensor, np.memmap)


def test_truncated_file_names_file_and_component(folders, tmp_path):
  plain, _, _ = folders
  data = (plain / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
  for cut, what in ((len(data) - 100, "header describes"), (50, "header is incomplete")):
    folder = tmp_path / f"vae_{cut}"
    folder.mkdir()
    (folder / "config.json").write_text((plain / "vae" / "config.json").read_text())
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(data[:cut])
    from sana_jax.convert.autoencoder import load_autoencoder
    with pytest.raises(CheckpointError, match=rf"vae \(AutoencoderDC\): .*vae_{cut}/diffusion_pytorch_model"
                                              rf"\.safetensors is truncated or corrupt .*{what}"):
      load_autoencoder(folder)


def test_hub_id_says_to_download_first():
  with pytest.raises(CheckpointError, match="hub id.*huggingface-cli download Efficient-Large-Model/Sana"):
    SanaPipeline.from_pretrained("Efficient-Large-Model/Sana_1600M_1024px_diffusers")
  with pytest.raises(CheckpointError, match="huggingface-cli download"):
    sana_jax.load_transformer("Efficient-Large-Model/Sana_1600M_1024px_diffusers")


def test_sharded_text_encoder_and_vae_load_like_single_files(folders, tmp_path):
  plain, _, ref = folders
  from sana_jax.convert.autoencoder import load_autoencoder
  from sana_jax.convert.gemma2 import load_gemma2
  ref.text_encoder.save_pretrained(tmp_path / "te", max_shard_size="50KB")
  ref.vae.save_pretrained(tmp_path / "vae", max_shard_size="5KB")
  assert json.loads((tmp_path / "te" / "model.safetensors.index.json").read_text())["weight_map"]
  assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors.index.json").exists()
  ids = np.array([[2, 5, 7, 1]], np.int32)
  np.testing.assert_array_equal(np.asarray(load_gemma2(tmp_path / "te")(ids)),
                                np.asarray(load_gemma2(plain / "text_encoder")(ids)))
  z = np.random.default_rng(0).normal(size=(1, 4, 4, 4)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(load_autoencoder(tmp_path / "vae").decode(z)),
                                np.asarray(load_autoencoder(plain / "vae").decode(z)))


def test_one_key_check_for_every_component(folders, tmp_path):
  """Missing, unexpected and mis-shaped keys of the text encoder come back in one message, with the
  component and the file, in the same format as the transformer's and the VAE's."""
  plain, _, _ = folders
  from safetensors.torch import load_file, save_file
  from sana_jax.convert.gemma2 import load_gemma2
  tensors = load_file(plain / "text_encoder" / "model.safetensors")
  del tensors["layers.0.mlp.up_proj.weight"]
  tensors["layers.0.extra.weight"] = torch.zeros(2)
  tensors["norm.weight"] = torch.zeros(3)
  (tmp_path / "te").mkdir()
  save_file(tensors, tmp_path / "te" / "model.safetensors")
  (tmp_path / "te" / "config.json").write_text((plain / "text_encoder" / "config.json").read_text())
  with pytest.raises(CheckpointError) as err:
    load_gemma2(tmp_path / "te")
  msg = str(err.value)
  assert msg.startswith(f"text_encoder (Gemma-2) checkpoint {tmp_path / 'te' / 'model.safetensors'} does not match")
  assert "missing (1): layers.0.mlp.up_proj.weight" in msg
  assert "unexpected (1): layers.0.extra.weight" in msg
  assert "wrong shape (1): norm.weight: checkpoint (3,), model expects (64,)" in msg


def test_orbax_component_with_wrong_shapes_is_named(folders, tmp_path):
  plain, _, _ = folders
  from sana_jax.convert.pipeline import convert_pipeline
  out = convert_pipeline(plain, tmp_path / "ours")
  meta = json.loads((tmp_path / "ours" / "sana_pipeline.json").read_text())
  meta["vae"]["latent_channels"] = 8
  (tmp_path / "ours" / "sana_pipeline.json").write_text(json.dumps(meta))
  with pytest.raises(CheckpointError, match=r"(?s)vae \(AutoencoderDC\) checkpoint .*ours/vae does not match.*"
                                            r"wrong shape \(3\): decoder.conv_in.kernel"):
    SanaPipeline.from_pretrained(out)

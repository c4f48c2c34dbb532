"""DC-AE in Flax NNX against diffusers.AutoencoderDC (random weights, tiny configs)."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx
from diffusers import AutoencoderDC
from diffusers.models.attention_processor import SanaMultiscaleLinearAttention
from safetensors.torch import load_file, save_file

from sana_jax.convert.autoencoder import assign_torch_weights, load_autoencoder, torch_state_shapes
from sana_jax.models.autoencoder import DCAE, DCAEConfig, MultiscaleLinearAttention, pixel_shuffle, pixel_unshuffle

from tests.models.autoencoder_builders import BRANCHES_CONFIG, TINY_CONFIG, randomize_, save_tiny_vae_folder

TOL = 1e-4


def nchw(x):
  return torch.from_numpy(np.asarray(x, np.float32)).permute(0, 3, 1, 2)


def nhwc(t):
  return t.detach().permute(0, 2, 3, 1).numpy()


def max_err(ours, ref):
  return float(np.max(np.abs(np.asarray(ours, np.float32) - ref)))


@pytest.fixture(scope="module", params=["tiny", "branches"])
def pair(request, tmp_path_factory):
  """(diffusers reference, our model loaded from its saved folder, image size)."""
  config, size = {"tiny": (TINY_CONFIG, 8), "branches": (BRANCHES_CONFIG, 16)}[request.param]
  path = str(tmp_path_factory.mktemp(request.param))
  ref = save_tiny_vae_folder(path, config, seed=1)
  return ref, load_autoencoder(path), size


def test_pixel_unshuffle_and_shuffle_follow_pytorch_channel_order():
  x = np.random.default_rng(0).normal(size=(2, 4, 6, 8)).astype(np.float32)
  np.testing.assert_array_equal(pixel_unshuffle(x, 2), nhwc(F.pixel_unshuffle(nchw(x), 2)))
  np.testing.assert_array_equal(pixel_shuffle(x, 2), nhwc(F.pixel_shuffle(nchw(x), 2)))


@pytest.mark.parametrize("side", [2, 5], ids=["quadratic_hw4_le_d8", "linear_hw25_gt_d8"])
def test_multiscale_attention_matches_diffusers_in_both_regimes(side):
  torch.manual_seed(0)
  ref = randomize_(SanaMultiscaleLinearAttention(
      16, 16, attention_head_dim=8, norm_type="rms_norm", kernel_sizes=(3, 5),
      residual_connection=True))
  ours = assign_torch_weights(
      MultiscaleLinearAttention(16, 8, (3, 5), norm_type="rms_norm", rngs=nnx.Rngs(0)),
      {k: v.numpy() for k, v in ref.state_dict().items()})
  x = np.random.default_rng(1).normal(size=(2, side, side, 16)).astype(np.float32)
  with torch.no_grad():
    expected = nhwc(ref(nchw(x)))
  assert max_err(nnx.jit(lambda m, x: m(x))(ours, jnp.asarray(x)), expected) <= TOL


def test_encode_matches_diffusers(pair):
  ref, ours, size = pair
  x = np.random.default_rng(2).uniform(-1, 1, size=(2, size, size, 3)).astype(np.float32)
  with torch.no_grad():
    expected = nhwc(ref.encode(nchw(x)).latent)
  got = ours.encode(jnp.asarray(x))
  assert got.shape == expected.shape
  assert max_err(got, expected) <= TOL


def test_decode_matches_diffusers(pair):
  ref, ours, size = pair
  f = ours.spatial_compression_ratio
  z = np.random.default_rng(3).normal(size=(2, size // f, size // f, ref.config.latent_channels))
  with torch.no_grad():
    expected = nhwc(ref.decode(nchw(z)).sample)
  got = ours.decode(jnp.asarray(z, jnp.float32))
  assert got.shape == expected.shape
  assert max_err(got, expected) <= TOL


def test_scaling_factor_comes_from_the_config(pair):
  ref, ours, _ = pair
  assert ours.scaling_factor == ref.config.scaling_factor


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tiny_tiles"))
  ref = save_tiny_vae_folder(path, TINY_CONFIG, seed=2)
  return ref, load_autoencoder(path), path


def test_tiled_decode_matches_diffusers_tiled_decode(tiny):
  ref, ours, _ = tiny
  f = ours.spatial_compression_ratio
  # 11 x 9 latents, tiles of 4 with overlap 1: partial tiles at both far edges.
  z = np.random.default_rng(4).normal(size=(1, 11, 9, 4)).astype(np.float32)
  ref.enable_tiling(tile_sample_min_height=4 * f, tile_sample_min_width=4 * f,
                    tile_sample_stride_height=3 * f, tile_sample_stride_width=3 * f)
  with torch.no_grad():
    expected = nhwc(ref.tiled_decode(nchw(z)).sample)
  got = ours.decode_tiled(jnp.asarray(z), tile_latent_size=4, overlap=1)
  assert got.shape == expected.shape == (1, 22, 18, 3)
  assert max_err(got, expected) <= TOL


def test_tiled_encode_matches_diffusers_tiled_encode(tiny):
  ref, ours, _ = tiny
  x = np.random.default_rng(5).uniform(-1, 1, size=(1, 22, 18, 3)).astype(np.float32)
  ref.enable_tiling(tile_sample_min_height=8, tile_sample_min_width=8,
                    tile_sample_stride_height=6, tile_sample_stride_width=6)
  with torch.no_grad():
    expected = nhwc(ref.tiled_encode(nchw(x)).latent)
  got = ours.encode_tiled(jnp.asarray(x), tile_size=8, overlap=2)
  assert got.shape == expected.shape == (1, 11, 9, 4)
  assert max_err(got, expected) <= TOL


def test_bfloat16_load_keeps_bf16_weights_and_stays_close(tiny):
  ref, ours, path = tiny
  half = load_autoencoder(path, dtype=jnp.bfloat16)
  assert half.decoder.conv_in.kernel[...].dtype == jnp.bfloat16
  z = np.random.default_rng(6).normal(size=(1, 4, 4, 4)).astype(np.float32)
  got = half.decode(jnp.asarray(z))
  assert got.dtype == jnp.bfloat16
  assert max_err(got, np.asarray(ours.decode(jnp.asarray(z)))) <= 0.1


def test_checkpoint_with_missing_unexpected_and_misshaped_keys_is_rejected_with_all_listed(tiny):
  _, _, path = tiny
  weights = load_file(os.path.join(path, "diffusion_pytorch_model.safetensors"))
  del weights["encoder.conv_in.bias"]
  weights["encoder.extra.weight"] = torch.zeros(3)
  weights["decoder.conv_out.weight"] = torch.zeros(3, 8, 1, 1)
  bad = os.path.join(os.path.dirname(path), "bad_checkpoint")
  os.makedirs(bad)
  save_file(weights, os.path.join(bad, "diffusion_pytorch_model.safetensors"))
  with open(os.path.join(path, "config.json")) as f, open(os.path.join(bad, "config.json"), "w") as g:
    g.write(f.read())
  with pytest.raises(ValueError) as err:
    load_autoencoder(bad)
  message = str(err.value)
  assert "encoder.conv_in.bias" in message
  assert "encoder.extra.weight" in message
  assert "decoder.conv_out.weight: checkpoint (3, 8, 1, 1), model expects (3, 8, 3, 3)" in message


def test_config_with_unsupported_block_type_is_rejected(tmp_path):
  config = dict(TINY_CONFIG, encoder_block_types=("ResBlock", "EViTS5_GLU"), _class_name="AutoencoderDC")
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match="EViTS5_GLU"):
    load_autoencoder(str(tmp_path))


def test_images_in_nchw_layout_are_rejected(pair):
  _, ours, size = pair
  with pytest.raises(ValueError, match="NHWC"):
    ours.encode(jnp.zeros((1, 3, size, size)))


def test_sana_f32c32_config_expects_exactly_diffusers_state_dict_names_and_shapes():
  config = dict(
      latent_channels=32,
      encoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
      decoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
      encoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
      decoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
      encoder_layers_per_block=(2, 2, 2, 3, 3, 3),
      decoder_layers_per_block=(3, 3, 3, 3, 3, 3),
      encoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
      decoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
      downsample_block_type="conv",
      upsample_block_type="interpolate",
      scaling_factor=0.41407,
  )
  with torch.device("meta"):
    ref = AutoencoderDC(**config)
  expected = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
  ours = nnx.eval_shape(lambda: DCAE(DCAEConfig(**config), rngs=nnx.Rngs(0)))
  assert torch_state_shapes(ours) == expected
  assert ours.spatial_compression_ratio == 32

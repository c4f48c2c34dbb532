"""Tiny diffusers `AutoencoderDC` models and folders with random weights, for tests that need a VAE.

Use `save_tiny_vae_folder(dir)` for a loadable diffusers folder (config.json + safetensors) and
`build_reference_vae()` for the PyTorch reference itself.
"""
import torch
from diffusers import AutoencoderDC

# diffusers' own test config (tests/models/autoencoders/test_models_autoencoder_dc.py): stride-2
# conv down, interpolate up, one ResBlock stage and one EfficientViT stage, f = 2.
TINY_CONFIG = dict(
    in_channels=3,
    latent_channels=4,
    attention_head_dim=2,
    encoder_block_types=("ResBlock", "EfficientViTBlock"),
    decoder_block_types=("ResBlock", "EfficientViTBlock"),
    encoder_block_out_channels=(8, 8),
    decoder_block_out_channels=(8, 8),
    encoder_qkv_multiscales=((), (5,)),
    decoder_qkv_multiscales=((), (5,)),
    encoder_layers_per_block=(1, 1),
    decoder_layers_per_block=(1, 1),
    downsample_block_type="conv",
    upsample_block_type="interpolate",
    decoder_norm_types="rms_norm",
    decoder_act_fns="silu",
    scaling_factor=0.41407,
)

# Every other path, f = 8: pixel-unshuffle / pixel-shuffle resampling, no first-stage layers (so
# conv_in / conv_out are resampling blocks), batch-norm and rms-norm, relu / silu / gelu, two
# multi-scale kernels. With 16x16 images head_dim 8 gives linear attention at the 4x4 stage
# (16 > 8) and quadratic attention at the 2x2 stage (4 <= 8), in encoder and decoder alike.
BRANCHES_CONFIG = dict(
    in_channels=3,
    latent_channels=8,
    attention_head_dim=8,
    encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
    decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
    encoder_block_out_channels=(8, 16, 16, 16),
    decoder_block_out_channels=(8, 16, 16, 16),
    encoder_qkv_multiscales=((), (), (3,), (3, 5)),
    decoder_qkv_multiscales=((), (), (5,), (3, 5)),
    encoder_layers_per_block=(0, 1, 1, 1),
    decoder_layers_per_block=(0, 1, 1, 2),
    downsample_block_type="pixel_unshuffle",
    upsample_block_type="pixel_shuffle",
    decoder_norm_types=("rms_norm", "batch_norm", "rms_norm", "batch_norm"),
    decoder_act_fns=("silu", "relu", "silu", "gelu"),
    decoder_conv_act_fn="silu",
    scaling_factor=0.5,
)


def randomize_(module, seed=0):
  """Give norm weights/biases and BatchNorm statistics random values (their defaults hide bugs)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      if p.ndim == 1 and name.endswith("weight"):
        p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
      elif name.endswith("bias"):
        p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    for name, b in module.named_buffers():
      if name.endswith("running_mean"):
        b.copy_(0.1 * torch.randn(b.shape, generator=gen))
      elif name.endswith("running_var"):
        b.copy_(0.5 + torch.rand(b.shape, generator=gen))
  return module.eval()


def build_reference_vae(config=TINY_CONFIG, seed=0):
  """A float32 diffusers AutoencoderDC in eval mode with random weights."""
  torch.manual_seed(seed)
  return randomize_(AutoencoderDC(**config), seed)


def save_tiny_vae_folder(path, config=TINY_CONFIG, seed=0):
  """Write a diffusers AutoencoderDC folder to `path`; returns the reference model."""
  vae = build_reference_vae(config, seed)
  vae.save_pretrained(path)
  return vae

"""A small convolutional autoencoder: the latent space of the default CPU job, fitted per run.

images [B, H, W, 3] in [-1, 1] <-> raw latents [B, H/f, W/f, latent_channels], f = 2^(stages - 1).
Encoder: conv 3x3 to widths[0]; per further stage a stride-2 conv 3x3 and a conv 3x3 (SiLU after
each); a 1x1 conv to the latent channels. Decoder, mirrored: conv 3x3 from the latents; per stage
nearest-neighbour x2, two convs 3x3 (SiLU); a conv 3x3 to RGB. It has the DCAE's codec interface
(`encode`, `decode` on raw latents, `scaling_factor`, `spatial_compression_ratio`, `config`), so
the training loop, the sampler and `SanaPipeline` take either. Fitting: training/autoencoder_fit.py.
"""
import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from sana_jax.models.autoencoder import check_nhwc, decode_with, encode_with


@dataclasses.dataclass(frozen=True)
class ConvAutoencoderConfig:
  in_channels: int = 3
  latent_channels: int = 16
  widths: tuple = (16, 32, 32)
  scaling_factor: float = 1.0   # model latents = raw latents x this (unit variance over the data)

  def __post_init__(self):
    object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
    if not self.widths or min(self.widths) < 1 or self.latent_channels < 1 or self.in_channels < 1:
      raise ValueError(f"widths, latent_channels and in_channels must be positive, got {self}")
    if not self.scaling_factor > 0:
      raise ValueError(f"scaling_factor must be positive, got {self.scaling_factor}")

  @property
  def spatial_compression_ratio(self) -> int:
    return 2 ** (len(self.widths) - 1)


def _conv(i, o, kernel=3, stride=1, *, rngs):
  return nnx.Conv(i, o, (kernel, kernel), strides=(stride, stride), padding="SAME", rngs=rngs)


class ConvAutoencoder(nnx.Module):
  def __init__(self, config: ConvAutoencoderConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.scaling_factor = config.scaling_factor
    self.spatial_compression_ratio = config.spatial_compression_ratio
    w = config.widths
    encoder = [_conv(config.in_channels, w[0], rngs=rngs)]
    for a, b in zip(w[:-1], w[1:]):
      encoder += [_conv(a, b, stride=2, rngs=rngs), _conv(b, b, rngs=rngs)]
    self.encoder_convs = nnx.List(encoder)
    self.encoder_out = _conv(w[-1], config.latent_channels, kernel=1, rngs=rngs)
    self.decoder_in = _conv(config.latent_channels, w[-1], rngs=rngs)
    decoder = []
    for a, b in zip(w[:0:-1], w[-2::-1]):  # deepest stage first: widths[i] -> widths[i - 1]
      decoder += [_conv(a, b, rngs=rngs), _conv(b, b, rngs=rngs)]
    self.decoder_convs = nnx.List(decoder)
    self.decoder_out = _conv(w[0], config.in_channels, rngs=rngs)

  def encoder(self, images):
    x = images
    for conv in self.encoder_convs:
      x = jax.nn.silu(conv(x))
    return self.encoder_out(x)

  def decoder(self, latents):
    x = jax.nn.silu(self.decoder_in(latents))
    for i, conv in enumerate(self.decoder_convs):
      if i % 2 == 0:  # each stage opens with a nearest-neighbour x2
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
      x = jax.nn.silu(conv(x))
    return self.decoder_out(x)

  # jax.jit over (graphdef, state) rather than nnx.jit: outside a trace (sampling, benchmarks that
  # encode on the host) this takes 4.9 instead of 5.6 ms per batch of 32 (AMD 2-core VM); the
  # training loop traces it into the train step (loop.image_encoder).
  def encode(self, images):
    """[B, H, W, in_channels] in [-1, 1] -> raw latents [B, H/f, W/f, latent_channels]."""
    check_nhwc(images, self.config.in_channels, self.spatial_compression_ratio, "images")
    return encode_with(*nnx.split(self), jnp.asarray(images, jnp.float32))

  def decode(self, latents):
    """Raw latents [B, h, w, latent_channels] -> images [B, h f, w f, in_channels], about [-1, 1]."""
    check_nhwc(latents, self.config.latent_channels, 1, "latents")
    return decode_with(*nnx.split(self), jnp.asarray(latents, jnp.float32))

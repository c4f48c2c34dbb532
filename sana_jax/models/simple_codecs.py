"""Parameter-free stand-ins for the DC-AE and Gemma-2, so the default CPU job needs no downloads.

`SpaceToDepthAutoencoder` folds each f x f pixel patch into channels (an exact, invertible "latent
space" with the DC-AE's method names), and `WordEmbeddingTextEncoder` maps caption words to fixed
random vectors plus a sinusoidal position code, optionally mixed with the words before each token
(with `PromptEncoder`'s `encode` contract). Both are
deterministic: the same arguments give the same codec in every process, so no weights are saved.
"""
import re
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np


class SpaceToDepthAutoencoder:
  """images [B, H, W, 3] in [-1, 1] <-> latents [B, H/f, W/f, 3 f^2], exactly invertible.

  Channel order is torch's `pixel_unshuffle` (channel c, then patch row, then patch column), so the
  latent of pixel (y*f + i, x*f + j, c) is channel c*f*f + i*f + j of latent pixel (y, x).
  """

  def __init__(self, factor: int = 4, in_channels: int = 3, scaling_factor: float = 1.0):
    if factor < 1:
      raise ValueError(f"factor must be a positive integer, got {factor}")
    if not scaling_factor > 0:
      raise ValueError(f"scaling_factor must be positive, got {scaling_factor}")
    self.spatial_compression = factor
    self.in_channels = in_channels
    self.latent_channels = in_channels * factor * factor
    # Model latents = encode(images) * scaling_factor (the diffusers convention): pick it so that
    # the latents have unit standard deviation, as DC-AE's 0.41407 does for its latents.
    self.scaling_factor = float(scaling_factor)

  @property
  def spatial_compression_ratio(self) -> int:
    """DCAE's name for `spatial_compression`, so that one name serves every autoencoder."""
    return self.spatial_compression

  def encode(self, images):
    """[B, H, W, C] -> [B, H/f, W/f, C f^2]."""
    f, c = self.spatial_compression, self.in_channels
    b, h, w, channels = images.shape
    if channels != c or h % f or w % f:
      raise ValueError(f"images must be [B, H, W, {c}] with H and W multiples of {f}, got {images.shape}")
    x = images.reshape(b, h // f, f, w // f, f, c)
    x = x.transpose(0, 1, 3, 5, 2, 4)  # [B, H/f, W/f, C, f, f]
    return x.reshape(b, h // f, w // f, c * f * f)

  def decode(self, latents):
    """[B, h, w, C f^2] -> [B, h f, w f, C]."""
    f, c = self.spatial_compression, self.in_channels
    b, h, w, channels = latents.shape
    if channels != self.latent_channels:
      raise ValueError(f"latents must be [B, h, w, {self.latent_channels}], got {latents.shape}")
    x = latents.reshape(b, h, w, c, f, f).transpose(0, 1, 4, 2, 5, 3)  # [B, h, f, w, f, C]
    return x.reshape(b, h * f, w * f, c)


_WORD = re.compile(r"[a-z0-9]+")


def sinusoidal_positions(length: int, dim: int) -> np.ndarray:
  """[length, dim] transformer position code: sin on the first half of the channels, cos on the rest."""
  half = dim // 2
  freqs = np.exp(-np.log(10000.0) * np.arange(half) / max(half, 1))
  angles = np.arange(length)[:, None] * freqs[None, :]
  code = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
  return np.pad(code, ((0, 0), (0, dim - 2 * half))).astype(np.float32)


class WordEmbeddingTextEncoder:
  """Captions -> (embeds [B, L, dim] float32, mask [B, L] int32), from fixed random word vectors.

  Token ids: 0 padding, 1 BOS (every caption starts with it, so even "" has one unmasked token, as
  Gemma's tokenizer gives), 2 unknown word, then the vocabulary in the given order. A token's
  embedding is its word vector (N(0, 1) per channel, drawn from `seed`) plus the sinusoidal code of
  its position; padding embeds to zero.

  context: each token also carries the `context` tokens before it (BOS included), the k-th one back
  through a fixed random rotation of its own (drawn from `seed` after the word vectors, so context=0
  gives the same vectors as before it existed). A causal language model such as Gemma gives each
  token a feature that depends on the words before it; without this, "a red circle and a blue square"
  and "a blue circle and a red square" embed to the same set of vectors (only the positions differ),
  and which colour goes with which shape can be read only from token positions.
  """

  PAD, BOS, UNK = 0, 1, 2

  def __init__(self, vocab: Sequence[str], dim: int, max_length: int, seed: int = 0, context: int = 0):
    vocab = list(vocab)
    if len(set(vocab)) != len(vocab) or not all(_WORD.fullmatch(w or "") for w in vocab):
      raise ValueError(f"vocab must be distinct lower-case words, got {vocab!r}")
    if dim < 1 or max_length < 1:
      raise ValueError(f"dim and max_length must be positive, got {dim=}, {max_length=}")
    if not 0 <= context < max_length:
      raise ValueError(f"context must be in 0..max_length-1 = {max_length - 1} preceding tokens, got {context}")
    self.vocab, self.dim, self.max_length, self.context = vocab, dim, max_length, context
    self._ids = {w: i + 3 for i, w in enumerate(vocab)}
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((len(vocab) + 3, dim)).astype(np.float32)
    table[self.PAD] = 0.0
    self._table = table  # [V + 3, dim]
    # The word vectors as seen from 1..context tokens later: table @ (a random orthogonal matrix).
    self._behind = [table @ np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
                    for _ in range(context)]  # each [V + 3, dim]; PAD stays zero
    self._positions = sinusoidal_positions(max_length, dim)  # [L, dim]

  @property
  def dtype(self):
    return jnp.float32

  def tokenize(self, prompts, max_sequence_length: int | None = None):
    """-> ids, mask: int32 numpy [B, L]; BOS first, unknown words -> UNK, cut or padded to L."""
    length = max_sequence_length or self.max_length
    if length > self.max_length:
      raise ValueError(f"max_sequence_length {length} exceeds the encoder's max_length {self.max_length}")
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
      raise ValueError(f"prompts must be a string or a non-empty list of strings, got {prompts!r}")
    ids = np.zeros((len(prompts), length), np.int32)
    for row, prompt in enumerate(prompts):
      tokens = [self.BOS] + [self._ids.get(w, self.UNK) for w in _WORD.findall(prompt.lower())]
      tokens = tokens[:length]
      ids[row, :len(tokens)] = tokens
    return ids, (ids != self.PAD).astype(np.int32)

  def encode(self, prompts, complex_human_instruction=None, max_sequence_length: int | None = None):
    """-> embeds [B, L, dim], mask [B, L]. `complex_human_instruction` is accepted for the
    `PromptEncoder` contract and ignored: a table of word vectors cannot follow an instruction."""
    del complex_human_instruction
    ids, mask = self.tokenize(prompts, max_sequence_length)
    embeds = self._table[ids] + self._positions[:ids.shape[1]]  # [B, L, dim]
    for k, behind in enumerate(self._behind, start=1):  # the token k places back, if any
      embeds[:, k:] += behind[ids[:, :-k]]
    embeds *= mask[..., None]
    return jnp.asarray(embeds), jnp.asarray(mask)

  def null_embedding(self, max_sequence_length: int | None = None):
    """The "" prompt: (embeds [1, L, dim], mask [1, L]) — BOS only."""
    return self.encode([""], None, max_sequence_length)

  def encode_negative(self, negative_prompt="", batch_size: int = 1, max_sequence_length: int | None = None):
    """A string is repeated batch_size times; a list must hold batch_size prompts."""
    prompts = [negative_prompt] * batch_size if isinstance(negative_prompt, str) else list(negative_prompt)
    if len(prompts) != batch_size:
      raise ValueError(f"got {len(prompts)} negative prompts for a batch of {batch_size}")
    return self.encode(prompts, None, max_sequence_length)

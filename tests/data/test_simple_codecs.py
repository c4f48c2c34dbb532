"""Built-in codecs: space-to-depth autoencoder (vs torch pixel_unshuffle) and word-embedding text encoder."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from sana_jax.data import shapes
from sana_jax.models.simple_codecs import SpaceToDepthAutoencoder, WordEmbeddingTextEncoder, sinusoidal_positions


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).uniform(-1, 1, (2, 32, 16, 3)).astype(np.float32)


def test_encode_matches_torch_pixel_unshuffle(images):
  ae = SpaceToDepthAutoencoder(4)
  latents = ae.encode(jnp.asarray(images))
  reference = torch.nn.functional.pixel_unshuffle(torch.from_numpy(images).permute(0, 3, 1, 2), 4)
  assert latents.shape == (2, 8, 4, 48)
  np.testing.assert_array_equal(np.asarray(latents), reference.permute(0, 2, 3, 1).numpy())


def test_decode_matches_torch_pixel_shuffle(images):
  ae = SpaceToDepthAutoencoder(2)
  latents = np.random.default_rng(1).normal(size=(2, 4, 3, 12)).astype(np.float32)
  reference = torch.nn.functional.pixel_shuffle(torch.from_numpy(latents).permute(0, 3, 1, 2), 2)
  np.testing.assert_array_equal(np.asarray(ae.decode(jnp.asarray(latents))), reference.permute(0, 2, 3, 1).numpy())


def test_decode_inverts_encode_exactly(images):
  ae = SpaceToDepthAutoencoder(8)
  np.testing.assert_array_equal(np.asarray(ae.decode(ae.encode(jnp.asarray(images)))), images)
  assert ae.scaling_factor == 1.0 and ae.latent_channels == 192 and ae.spatial_compression == 8


def test_autoencoder_refuses_sizes_off_its_grid():
  with pytest.raises(ValueError, match="multiples of 4"):
    SpaceToDepthAutoencoder(4).encode(jnp.zeros((1, 30, 32, 3)))


def test_scaling_factor_is_kept_and_must_be_positive():
  assert SpaceToDepthAutoencoder(4, scaling_factor=5.75).scaling_factor == 5.75
  with pytest.raises(ValueError, match="scaling_factor must be positive"):
    SpaceToDepthAutoencoder(4, scaling_factor=0.0)


@pytest.fixture(scope="module")
def text_encoder():
  return WordEmbeddingTextEncoder(shapes.vocabulary(), dim=32, max_length=12)


def test_text_encoder_returns_padded_embeddings_and_mask(text_encoder):
  embeds, mask = text_encoder.encode(["a red circle", "two blue squares left of a green triangle"])
  assert embeds.shape == (2, 12, 32) and embeds.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(mask).sum(1), [4, 9])  # BOS + words
  assert float(jnp.abs(embeds[0, 4:]).max()) == 0.0  # padding embeds to zero


def test_text_encoder_is_the_same_in_every_instance(text_encoder):
  again = WordEmbeddingTextEncoder(shapes.vocabulary(), dim=32, max_length=12)
  np.testing.assert_array_equal(np.asarray(again.encode("a red circle")[0]), np.asarray(text_encoder.encode("a red circle")[0]))


def test_word_order_changes_the_embedding(text_encoder):
  a, _ = text_encoder.encode("a red circle and a blue square")
  b, _ = text_encoder.encode("a blue circle and a red square")
  assert float(jnp.abs(a - b).max()) > 0.5


def test_unknown_words_share_the_unknown_token(text_encoder):
  ids, _ = text_encoder.tokenize(["a pink blob", "a red circle"])
  assert ids[0, 2] == ids[0, 3] == WordEmbeddingTextEncoder.UNK
  assert WordEmbeddingTextEncoder.UNK not in ids[1]


def test_empty_prompt_keeps_one_unmasked_token(text_encoder):
  embeds, mask = text_encoder.null_embedding()
  np.testing.assert_array_equal(np.asarray(mask), [[1] + [0] * 11])
  assert float(jnp.abs(embeds[0, 0]).max()) > 0.0


def test_long_prompts_are_cut_to_max_length(text_encoder):
  _, mask = text_encoder.encode(" ".join(["circle"] * 40))
  assert mask.shape == (1, 12) and int(mask.sum()) == 12


def test_without_context_a_token_is_its_word_vector_plus_its_position(text_encoder):
  ids, _ = text_encoder.tokenize("a red circle")
  embeds, _ = text_encoder.encode("a red circle")
  expected = text_encoder._table[ids[0, :4]] + sinusoidal_positions(12, 32)[:4]
  np.testing.assert_array_equal(np.asarray(embeds[0, :4]), expected)
  # context=0 keeps the word vectors drawn before `context` existed (the rotations come after them)
  with_context = WordEmbeddingTextEncoder(shapes.vocabulary(), dim=32, max_length=12, context=2)
  np.testing.assert_array_equal(with_context._table, text_encoder._table)


def test_context_makes_each_token_carry_the_words_before_it(text_encoder):
  encoder = WordEmbeddingTextEncoder(shapes.vocabulary(), dim=32, max_length=12, context=2)
  # tokens: BOS a red circle and a blue square
  red_first, _ = encoder.encode("a red circle and a blue square")
  blue_first, _ = encoder.encode("a blue circle and a red square")
  circle = 3
  # without context the two captions differ only in their colour tokens; with it "circle" differs too
  plain_a, plain_b = text_encoder.encode("a red circle and a blue square")[0], text_encoder.encode("a blue circle and a red square")[0]
  np.testing.assert_array_equal(np.asarray(plain_a[0, circle]), np.asarray(plain_b[0, circle]))
  assert float(jnp.abs(red_first[0, circle] - blue_first[0, circle]).max()) > 0.5
  # causal: a token never sees the words after it
  np.testing.assert_array_equal(np.asarray(red_first[0, :2]), np.asarray(blue_first[0, :2]))
  # and sees only `context` tokens back: "circle" after "a red" vs "one red" differs with context 2, not 1
  near = WordEmbeddingTextEncoder(shapes.vocabulary(), dim=32, max_length=12, context=1)
  a, one = near.encode(["a red circle", "one red circle"])[0]
  np.testing.assert_allclose(np.asarray(a[circle]), np.asarray(one[circle]), rtol=0, atol=0)
  a, one = encoder.encode(["a red circle", "one red circle"])[0]
  assert float(jnp.abs(a[circle] - one[circle]).max()) > 0.5
  # each word behind arrives rotated (orthogonal): the context adds a word vector's norm, not more
  ids, _ = encoder.tokenize("a red circle")
  behind = np.asarray(red_first[0, circle]) - encoder._table[ids[0, circle]] - sinusoidal_positions(12, 32)[circle]
  words = np.linalg.norm(encoder._table[ids[0, 1:3]], axis=1)
  assert np.linalg.norm(behind) <= words.sum() + 1e-4
  # padding stays zero
  _, mask = encoder.encode("a red circle")
  assert float(jnp.abs(encoder.encode("a red circle")[0][0, int(mask.sum()):]).max()) == 0.0


def test_the_default_job_reads_captions_with_context():
  from sana_jax import configs
  from sana_jax.training import loop

  cfg = configs.get_config("tiny24")
  _, encoder = loop.build_codecs(cfg)
  assert encoder.context == cfg.codecs.text_context == 2
  red_first, blue_first = encoder.encode(["a red circle and a blue square", "a blue circle and a red square"])[0]
  assert float(jnp.abs(red_first[3] - blue_first[3]).max()) > 0.5  # "circle" knows its colour


@pytest.mark.parametrize("context", [-1, 12])
def test_context_must_fit_the_length(context):
  with pytest.raises(ValueError, match="context must be in 0..max_length-1 = 11"):
    WordEmbeddingTextEncoder(shapes.vocabulary(), dim=32, max_length=12, context=context)


@pytest.mark.slow  # building the model takes ~40 s on a shared 2-core CPU
def test_codecs_feed_the_transformer():
  from sana_jax import configs
  from flax import nnx
  from sana_jax.models.transformer import SanaTransformer

  cfg = configs.get_config("tiny").model
  ae = SpaceToDepthAutoencoder(4)
  cfg.update(in_channels=ae.latent_channels, out_channels=ae.latent_channels, attention_impl="xla")
  encoder = WordEmbeddingTextEncoder(shapes.vocabulary(), dim=cfg.caption_channels, max_length=16)
  latents = ae.encode(jnp.asarray(shapes.ShapesSource(4)[0]["image"][None] / 127.5 - 1.0))  # [1, 8, 8, 48]
  text, mask = encoder.encode("a red circle")
  model = SanaTransformer(cfg, rngs=nnx.Rngs(0))
  velocity = nnx.jit(lambda m, *args: m(*args))(model, latents, jnp.array([500.0]), text, mask)
  assert velocity.shape == latents.shape and bool(jnp.isfinite(velocity).all())

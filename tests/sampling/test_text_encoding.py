"""PromptEncoder vs diffusers' SanaPipeline.encode_prompt, driven by the same tiny Gemma-2 + tokenizer."""
import diffusers
import numpy as np
import pytest
import torch

from tests.models.gemma_builders import PROMPTS
from sana_jax.sampling.text_encoding import CHI_DEFAULT, PromptEncoder

LONG_PROMPT = " ".join(["a small fluffy white cat curled up"] * 8)  # > 8 tokens: gets truncated
# One batch size everywhere, so the tests share a handful of compiled Gemma programs.
BATCH = [*PROMPTS, LONG_PROMPT]


@pytest.fixture(scope="module")
def encoder(gemma_dir, tokenizer_dir):
  return PromptEncoder.from_pretrained(gemma_dir, tokenizer_dir)


@pytest.fixture(scope="module")
def diffusers_pipe(tokenizer, torch_gemma):
  """Only the text half is needed for encode_prompt; the other components are left out."""
  return diffusers.SanaPipeline(tokenizer=tokenizer, text_encoder=torch_gemma, vae=None,
                                transformer=None, scheduler=None)


def reference_encode(pipe, prompts, chi, max_sequence_length, negative_prompt=""):
  """-> prompt embeds, prompt mask, negative embeds, negative mask as numpy."""
  with torch.no_grad():
    outs = pipe.encode_prompt(prompts, do_classifier_free_guidance=True,
                              negative_prompt=negative_prompt, device="cpu",
                              complex_human_instruction=None if chi is None else list(chi),
                              max_sequence_length=max_sequence_length)
  return [o.numpy() for o in outs]


@pytest.mark.parametrize("chi, max_sequence_length", [(CHI_DEFAULT, 300), (None, 300), (CHI_DEFAULT, 8)],
                         ids=["chi-300", "no-chi-300", "chi-8-truncating"])
def test_encode_matches_diffusers_encode_prompt(encoder, diffusers_pipe, chi, max_sequence_length):
  ref_embeds, ref_mask, _, _ = reference_encode(diffusers_pipe, BATCH, chi, max_sequence_length)
  embeds, mask = encoder.encode(BATCH, chi, max_sequence_length)
  assert embeds.shape == (len(BATCH), max_sequence_length, 64)
  np.testing.assert_array_equal(np.asarray(mask), ref_mask)
  np.testing.assert_allclose(np.asarray(embeds), ref_embeds, atol=1e-4, rtol=0)


def test_a_single_string_instruction_is_one_line(encoder):
  ids_str, _ = encoder.tokenize(BATCH, "Describe the image: ", 8)
  ids_list, _ = encoder.tokenize(BATCH, ["Describe the image: "], 8)
  np.testing.assert_array_equal(ids_str, ids_list)


def test_chi_tokens_are_encoded_but_only_bos_and_the_tail_are_kept(encoder):
  ids, _ = encoder.tokenize(BATCH, CHI_DEFAULT, 300)
  chi_tokens = len(encoder.tokenizer.encode("\n".join(CHI_DEFAULT)))
  assert ids.shape[1] == chi_tokens + 298
  with_chi, _ = encoder.encode(BATCH, CHI_DEFAULT, 300)
  without, _ = encoder.encode(BATCH, None, 300)
  # The instruction changes the features of the kept prompt tokens (they attend to it).
  assert np.abs(np.asarray(with_chi[:, 1:]) - np.asarray(without[:, 1:])).max() > 1e-3


def test_negative_prompts_match_diffusers_negative_embeds(encoder, diffusers_pipe):
  for negative in ("", "Blurry, low quality"):
    # The negative branch never uses the CHI; leaving it off the positive half saves time.
    _, _, ref_embeds, ref_mask = reference_encode(diffusers_pipe, BATCH, None, 300,
                                                  negative_prompt=negative)
    embeds, mask = encoder.encode_negative(negative, batch_size=len(BATCH), max_sequence_length=300)
    np.testing.assert_array_equal(np.asarray(mask), ref_mask)
    np.testing.assert_allclose(np.asarray(embeds), ref_embeds, atol=1e-4, rtol=0)


def test_null_embedding_is_computed_once_and_reused(encoder):
  first = encoder.null_embedding(300)
  calls_before = encoder._forward._cache_size()
  embeds, _ = encoder.encode_negative("", batch_size=2, max_sequence_length=300)
  assert encoder.null_embedding(300) is first
  assert encoder._forward._cache_size() == calls_before
  np.testing.assert_array_equal(np.asarray(embeds[1]), np.asarray(first[0][0]))


def test_gemma_forward_compiles_once_per_padded_length(encoder):
  encoder.encode(BATCH, CHI_DEFAULT, 8)
  programs = encoder._forward._cache_size()
  encoder.encode([p.upper() + " again" for p in BATCH], CHI_DEFAULT, 8)  # same padded length
  assert encoder._forward._cache_size() == programs
  encoder.encode(BATCH, CHI_DEFAULT, 9)  # one token longer: one more program
  assert encoder._forward._cache_size() == programs + 1


def test_bad_prompts_and_lengths_are_refused(encoder):
  with pytest.raises(ValueError, match="prompt must be a string"):
    encoder.encode([], None, 8)
  with pytest.raises(ValueError, match="prompt must be a string"):
    encoder.encode(["a cat", 3], None, 8)
  with pytest.raises(ValueError, match="max_sequence_length"):
    encoder.encode("a cat", None, 0)
  with pytest.raises(ValueError, match="2 negative prompts for a batch of 3"):
    encoder.encode_negative(["", ""], batch_size=3)

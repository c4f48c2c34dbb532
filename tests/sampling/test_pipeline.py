"""SanaPipeline end to end vs diffusers.SanaPipeline on a tiny random pipeline folder, and its export,
resolution binning, batching, device spreading and input errors."""
import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers.image_processor import PixArtImageProcessor
from diffusers.pipelines.sana import pipeline_sana

from tests.sampling.pipeline_builders import DPM_SCHEDULER_CONFIG
from sana_jax.sampling.pipeline import (SanaPipeline, aspect_ratio_table, classify_height_width_bin,
                                        convert_pipeline, resize_and_crop)

PROMPTS = ["A cat sleeping on a red sofa", "two dogs running"]
HEIGHT, WIDTH = 32, 64          # non-square: a swapped H/W shows up; tiny VAE f = 2 -> 16 x 32 latents
SMALL = dict(height=HEIGHT, width=WIDTH, num_inference_steps=4, use_resolution_binning=False,
             max_sequence_length=16)


@pytest.fixture(scope="module")
def latents():
  """NHWC initial noise for the two prompts."""
  return np.random.default_rng(0).standard_normal((2, HEIGHT // 2, WIDTH // 2, 4)).astype(np.float32)


def reference_images(ref, latents, sampler, chi):
  ref.scheduler = (diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0) if sampler == "flow_euler" else
                   diffusers.DPMSolverMultistepScheduler.from_config(ref.scheduler.config))
  extra = {} if chi else dict(complex_human_instruction=None)
  with torch.no_grad():
    return ref(PROMPTS, latents=torch.from_numpy(latents.transpose(0, 3, 1, 2)), output_type="np",
               **SMALL, **extra).images


@pytest.mark.parametrize("chi", [True, False], ids=["chi", "no_chi"])
@pytest.mark.parametrize("sampler", ["flow_dpm_solver", "flow_euler"])
def test_images_match_diffusers_sana_pipeline(tiny_folder, tiny_pipe, latents, sampler, chi):
  expected = reference_images(tiny_folder[1], latents, sampler, chi)
  extra = {} if chi else dict(complex_human_instruction=None)
  images = tiny_pipe(PROMPTS, latents=latents, sampler=sampler, output_type="np", **SMALL, **extra).images
  assert images.dtype == np.float32 and images.shape == (2, HEIGHT, WIDTH, 3)
  assert expected.std() > 0.05  # the reference is a picture, not a constant
  # float32 on both sides; measured max |difference| 1.3e-6 (images in [0, 1]).
  np.testing.assert_allclose(images, expected, atol=1e-5, rtol=0)


def test_bf16_pipeline_matches_diffusers_run_in_bf16(tiny_folder, latents):
  """Whole pipelines in bf16 (weights and compute), compared on the final latents: the random tiny
  VAE turns bf16 rounding into up to 0.17 of image range in either library, which would hide a
  fault upstream. Measured: |ours - diffusers bf16| <= 0.075 and |diffusers bf16 - fp32| <= 0.053 at
  latent scale 5.3."""
  import copy
  ref = tiny_folder[1]
  ref.scheduler = diffusers.DPMSolverMultistepScheduler(**DPM_SCHEDULER_CONFIG)
  nchw = torch.from_numpy(latents.transpose(0, 3, 1, 2))
  with torch.no_grad():
    fp32 = ref(PROMPTS, latents=nchw, **{**SMALL, "output_type": "latent"}).images.numpy().transpose(0, 2, 3, 1)
    theirs = copy.deepcopy(ref).to(torch.bfloat16)(PROMPTS, latents=nchw.bfloat16(), output_type="latent",
                                                   **SMALL).images.float().numpy().transpose(0, 2, 3, 1)
  ours = SanaPipeline.from_pretrained(tiny_folder[0], dtype=jnp.bfloat16)(
      PROMPTS, latents=latents, output_type="latent", **SMALL).images
  ours = np.asarray(ours, np.float32)
  assert float(np.abs(fp32).max()) > 2.0
  assert float(np.abs(ours - theirs).max()) <= 0.15
  assert float(np.abs(ours - fp32).max()) <= 2 * float(np.abs(theirs - fp32).max()) + 0.02


def test_exported_pipeline_samples_the_same_images(tiny_folder, tiny_pipe, latents, tmp_path):
  exported = SanaPipeline.from_pretrained(convert_pipeline(tiny_folder[0], tmp_path / "export"))
  args = dict(latents=latents, output_type="np", **SMALL)
  np.testing.assert_allclose(exported(PROMPTS, **args).images, tiny_pipe(PROMPTS, **args).images, atol=1e-6, rtol=0)


def test_pil_output_is_the_rounded_np_output(tiny_pipe):
  args = dict(seed=3, sampler="flow_euler", complex_human_instruction=None, **SMALL)
  arrays = tiny_pipe(PROMPTS, output_type="np", **args).images
  pils = tiny_pipe(PROMPTS, **args).images
  assert [im.size for im in pils] == [(WIDTH, HEIGHT)] * 2
  np.testing.assert_array_equal(np.stack([np.asarray(im) for im in pils]), (arrays * 255).round().astype(np.uint8))


def test_seed_draws_the_initial_noise_and_each_prompt_repeats_per_image(tiny_pipe):
  args = dict(sampler="flow_euler", complex_human_instruction=None, output_type="latent", **SMALL)
  twice = tiny_pipe(PROMPTS, seed=5, num_images_per_prompt=2, **args).images
  assert twice.shape == (4, HEIGHT // 2, WIDTH // 2, 4)
  np.testing.assert_array_equal(tiny_pipe(PROMPTS, seed=5, num_images_per_prompt=2, **args).images, twice)
  assert not np.allclose(tiny_pipe(PROMPTS, seed=6, num_images_per_prompt=2, **args).images, twice)
  # Rows are (p0, p0, p1, p1): the same noise under prompt 1 alone reproduces rows 2 and 3.
  noise = jax.random.normal(jax.random.key(5), twice.shape)
  alone = tiny_pipe(PROMPTS[1], latents=noise[2:], num_images_per_prompt=2, **args).images
  np.testing.assert_allclose(alone, twice[2:], atol=1e-5, rtol=0)


def test_batch_that_divides_over_devices_is_spread_over_all_of_them(tiny_pipe):
  n = jax.local_device_count()
  assert n > 2, "tests/conftest.py provides several CPU devices"
  args = dict(sampler="flow_euler", complex_human_instruction=None, output_type="latent", **SMALL)
  noise = jax.random.normal(jax.random.key(1), (n, HEIGHT // 2, WIDTH // 2, 4))
  spread = tiny_pipe(PROMPTS[1], latents=noise, num_images_per_prompt=n, **args).images
  assert len(spread.sharding.device_set) == n
  one_device = tiny_pipe(PROMPTS[1], latents=noise[:2], num_images_per_prompt=2, **args).images
  assert len(one_device.sharding.device_set) == 1
  np.testing.assert_allclose(np.asarray(spread[:2]), np.asarray(one_device), atol=1e-5, rtol=0)


def test_sequence_parallel_splits_one_image_over_all_devices(tiny_folder, latents):
  # One guided image on 8 devices: a (1, 8) mesh, each device holding 2 of the 16 latent rows.
  pipe = SanaPipeline.from_pretrained(tiny_folder[0])
  args = dict(latents=latents[1:], sampler="flow_euler", complex_human_instruction=None,
              output_type="latent", **SMALL)
  whole = pipe(PROMPTS[1], **args).images
  pipe.enable_sequence_parallel()
  split = pipe(PROMPTS[1], **args).images
  assert len(split.sharding.device_set) == jax.local_device_count() == 8
  np.testing.assert_allclose(np.asarray(split), np.asarray(whole), atol=1e-5, rtol=0)
  pipe.enable_sequence_parallel(jax.local_devices()[:3])
  with pytest.raises(ValueError, match="latent rows"):
    pipe(PROMPTS[1], **args)


@pytest.mark.parametrize("sample_size, reference", [
    (16, pipeline_sana.ASPECT_RATIO_512_BIN), (32, pipeline_sana.ASPECT_RATIO_1024_BIN),
    (64, pipeline_sana.ASPECT_RATIO_2048_BIN), (128, pipeline_sana.ASPECT_RATIO_4096_BIN)])
def test_resolution_bins_are_diffusers_tables(sample_size, reference):
  table = aspect_ratio_table(sample_size)
  assert table == {k: (int(h), int(w)) for k, (h, w) in reference.items()}
  for height, width in [(1024, 1024), (720, 1280), (1000, 333), (200, 900), (4000, 1000)]:
    assert classify_height_width_bin(height, width, table) == \
        PixArtImageProcessor.classify_height_width_bin(height, width, reference)


@pytest.mark.parametrize("size", [(24, 40), (40, 24), (16, 16), (35, 60)])
def test_resize_and_crop_matches_pixart_image_processor(size):
  images = np.random.default_rng(1).standard_normal((2, 32, 48, 3)).astype(np.float32)
  expected = PixArtImageProcessor.resize_and_crop_tensor(
      torch.from_numpy(images.transpose(0, 3, 1, 2)), new_width=size[1], new_height=size[0])
  np.testing.assert_allclose(np.asarray(resize_and_crop(images, *size)),
                             expected.numpy().transpose(0, 2, 3, 1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(height=33), "multiples of 2"),
    (dict(output_type="pt"), "output_type"),
    (dict(sampler="euler"), "sampler"),
    (dict(num_images_per_prompt=0), "num_images_per_prompt"),
    (dict(latents=np.zeros((2, 8, 8, 4), np.float32)), r"latents must be NHWC \(2, 16, 32, 4\)"),
])
def test_bad_arguments_raise_clear_errors(tiny_pipe, kwargs, message):
  with pytest.raises(ValueError, match=message):
    tiny_pipe(PROMPTS, **{**SMALL, **kwargs})


def test_bad_prompt_and_unknown_bucket_size_raise_clear_errors(tiny_pipe):
  with pytest.raises(ValueError, match="prompt must be a string"):
    tiny_pipe([], **SMALL)
  with pytest.raises(ValueError, match="use_resolution_binning=False"):
    aspect_ratio_table(8)


def test_from_pretrained_names_what_a_folder_lacks(tmp_path):
  with pytest.raises(FileNotFoundError, match="model_index.json"):
    SanaPipeline.from_pretrained(tmp_path)


def test_prompt_embeds_and_generator_as_diffusers_takes_them(tiny_folder, tiny_pipe, latents):
  text, mask, neg, neg_mask = tiny_pipe.encode_prompt(PROMPTS, max_sequence_length=16)
  args = dict(sampler="flow_euler", **{**SMALL, "output_type": "np"})
  from_prompts = tiny_pipe(PROMPTS, generator=7, **args).images
  from_embeds = tiny_pipe(prompt_embeds=text, prompt_attention_mask=mask, generator=jax.random.key(7), **args).images
  np.testing.assert_array_equal(from_embeds, from_prompts)
  with_negatives = tiny_pipe(prompt_embeds=text, prompt_attention_mask=mask, negative_prompt_embeds=neg,
                             negative_prompt_attention_mask=neg_mask, seed=7, **args).images
  np.testing.assert_array_equal(with_negatives, from_prompts)
  prompt_and_negatives = tiny_pipe(PROMPTS, negative_prompt_embeds=neg, negative_prompt_attention_mask=neg_mask,
                                   generator=7, **args).images
  np.testing.assert_array_equal(prompt_and_negatives, from_prompts)
  other_negatives = tiny_pipe(PROMPTS, negative_prompt_embeds=text[::-1], negative_prompt_attention_mask=mask[::-1],
                              generator=7, **args).images
  assert not np.allclose(other_negatives, from_prompts)
  # diffusers given the same embeddings (its negative "" is encoded at their length, as ours).
  ref = tiny_folder[1]
  ref.scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
  with torch.no_grad():
    expected = ref(prompt_embeds=torch.from_numpy(np.array(text)),
                   prompt_attention_mask=torch.from_numpy(np.array(mask)),
                   latents=torch.from_numpy(latents.transpose(0, 3, 1, 2)), output_type="np", **SMALL).images
  got = tiny_pipe(prompt_embeds=text, prompt_attention_mask=mask, latents=latents, **args).images
  np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
  with pytest.raises(ValueError, match="either prompt or prompt_embeds"):
    tiny_pipe(PROMPTS, prompt_embeds=text, prompt_attention_mask=mask, **args)
  with pytest.raises(ValueError, match="needs prompt_attention_mask"):
    tiny_pipe(prompt_embeds=text, **args)
  with pytest.raises(ValueError, match="torch.Generator has no JAX equivalent"):
    tiny_pipe(PROMPTS, generator=torch.Generator(), **args)

"""LoRA in SanaPipeline against diffusers' SanaPipeline on the tiny random pipeline: a diffusers LoRA
loaded here and our LoRA loaded there give the same images from the same latents, alone and
mixed with weights; fused images equal unfused ones; unloading gives the base images; the
`sample --lora FILE:SCALE` flag."""
import copy
import json

import diffusers
import numpy as np
import pytest
import torch
from flax import nnx
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from sana_jax.configs.base import lora_config
from sana_jax.models import lora
from sana_jax.sampling import pipeline
from sana_jax.sampling.pipeline import SanaPipeline
from tests.sampling.test_cli_and_notebook import run_cli
from tests.sampling.test_pipeline import PROMPTS, SMALL

ARGS = dict(SMALL, sampler="flow_euler", output_type="np")


@pytest.fixture(scope="module")
def latents():
  return np.random.default_rng(5).standard_normal((2, 16, 32, 4)).astype(np.float32)


def _diffusers_images(pipe, latents, **kwargs):
  pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
  with torch.no_grad():
    return pipe(PROMPTS, latents=torch.from_numpy(latents.transpose(0, 3, 1, 2)), output_type="np",
                **SMALL, **kwargs).images


@pytest.fixture(scope="module")
def files(tiny_folder, tmp_path_factory):
  """{"theirs": a PEFT LoRA saved by diffusers, "ours": one of our adapters saved by our pipeline}."""
  root = tmp_path_factory.mktemp("loras")
  theirs = copy.deepcopy(tiny_folder[1].transformer)
  theirs.add_adapter(LoraConfig(r=4, lora_alpha=6, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0", "ff.conv_point"]))
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for key, p in theirs.named_parameters():
      if "lora_B" in key:
        p.copy_(0.5 * torch.randn(p.shape, generator=gen))
  diffusers.SanaPipeline.save_lora_weights(
      root / "theirs", transformer_lora_layers=get_peft_model_state_dict(theirs),
      transformer_lora_adapter_metadata=theirs.peft_config["default"].to_dict())
  pipe = SanaPipeline.from_pretrained(tiny_folder[0])
  lora.add_lora(pipe.transformer, lora_config(rank=2, alpha=4.0, target_modules=("attn2.to_q", "attn2.to_v",
                                                                                   "ff.conv_inverted")),
                rngs=nnx.Rngs(1))
  for layer in lora.lora_layers(pipe.transformer).values():
    b = layer.lora_B["default"]
    b[...] = 0.5 * np.random.default_rng(1).standard_normal(b[...].shape).astype(np.float32)
  assert pipe.save_lora_weights(root / "ours", base_model=str(tiny_folder[0])).endswith(
      "ours/pytorch_lora_weights.safetensors")
  return dict(theirs=root / "theirs", ours=root / "ours")


def test_loras_both_ways_give_diffusers_images(tiny_folder, tiny_pipe, files, latents):
  ref = copy.deepcopy(tiny_folder[1])
  ref.load_lora_weights(str(files["theirs"]), adapter_name="theirs")
  ref.load_lora_weights(str(files["ours"]), adapter_name="ours")
  pipe = SanaPipeline.from_pretrained(tiny_folder[0])
  pipe.load_lora_weights(files["theirs"] / "pytorch_lora_weights.safetensors", adapter_name="theirs")
  pipe.load_lora_weights(files["ours"], adapter_name="ours")
  assert pipe.get_list_adapters() == {"transformer": ["theirs", "ours"]}
  base = tiny_pipe(PROMPTS, latents=latents, **ARGS).images
  compiled = []
  for names, weights in ((["theirs"], [1.0]), (["ours"], [1.0]), (["theirs", "ours"], [0.6, -1.5])):
    ref.set_adapters(names, adapter_weights=weights)
    pipe.set_adapters(names, weights)
    expected = _diffusers_images(ref, latents)
    images = pipe(PROMPTS, latents=latents, **ARGS).images
    assert float(np.abs(images - base).max()) > 0.02  # the adapters change the picture
    err = float(np.abs(images - expected).max())
    # float32 both sides, images in [0, 1]; measured 1.8e-6, 5.4e-6, 1.6e-5 (weights 0.6 / -1.5)
    assert err <= 1e-4, (names, err)
    compiled.append(pipeline._denoise._cache_size())
  # diffusers' per-call LoRA scale, also without recompiling
  half = dict(attention_kwargs={"scale": 0.5})
  err = float(np.abs(pipe(PROMPTS, latents=latents, **ARGS, **half).images -
                     _diffusers_images(ref, latents, **half)).max())
  assert err <= 1e-4, err
  compiled.append(pipeline._denoise._cache_size())
  assert compiled[0] == compiled[-1]  # new adapter weights reuse the compiled loop
  with pytest.raises(ValueError, match="only 'scale'"):
    pipe(PROMPTS, latents=latents, **ARGS, attention_kwargs={"sclae": 0.5})
  pipe.fuse_lora()
  np.testing.assert_allclose(pipe(PROMPTS, latents=latents, **ARGS).images, images, atol=1e-5, rtol=0)
  pipe.unfuse_lora()
  pipe.unload_lora_weights()
  assert pipe.get_list_adapters() == {"transformer": []}
  np.testing.assert_allclose(pipe(PROMPTS, latents=latents, **ARGS).images, base, atol=1e-5, rtol=0)


def test_sample_cli_lora_flag_with_scale(tiny_folder, files, tmp_path):
  out = tmp_path / "out"
  run_cli("--checkpoint", str(tiny_folder[0]), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1],
          "--out", str(out), "--height", "32", "--width", "64", "--num-inference-steps", "4",
          "--max-sequence-length", "16", "--sampler", "flow_euler", "--use_resolution_binning=false",
          "--lora", f"{files['theirs']}:0.5", "--lora", str(files["ours"]))
  settings = json.loads((out / "settings.json").read_text())
  assert [(entry["scale"], entry["adapter_name"]) for entry in settings["lora"]] == [(0.5, "lora_0"), (1.0, "lora_1")]
  pipe = SanaPipeline.from_pretrained(tiny_folder[0])
  pipe.load_lora_weights(files["theirs"], scale=0.5)
  pipe.load_lora_weights(files["ours"])
  expected = pipe(PROMPTS, seed=0, output_type="np", **{k: v for k, v in ARGS.items() if k != "output_type"}).images
  from PIL import Image
  pngs = np.stack([np.asarray(Image.open(out / i["file"])) for i in settings["images"]])
  np.testing.assert_array_equal(pngs, (expected * 255).round().astype(np.uint8))


def test_sequence_parallel_and_device_spread_keep_the_adapters(tiny_folder, files, latents):
  pipe = SanaPipeline.from_pretrained(tiny_folder[0])
  pipe.load_lora_weights(files["theirs"], adapter_name="theirs", scale=0.8)
  args = dict(latents=latents[1:], sampler="flow_euler", complex_human_instruction=None,
              output_type="latent", **SMALL)
  whole = pipe(PROMPTS[1], **args).images
  pipe.enable_sequence_parallel()  # one image on 8 devices: the token-split graph carries the adapter
  split = pipe(PROMPTS[1], **args).images
  assert len(split.sharding.device_set) == 8
  np.testing.assert_allclose(np.asarray(split), np.asarray(whole), atol=1e-5, rtol=0)
  pipe.disable_sequence_parallel()
  noise = np.repeat(latents[1:], 8, axis=0)  # 8 images: spread over the devices, adapter replicated
  spread = pipe(PROMPTS[1], **dict(args, latents=noise), num_images_per_prompt=8).images
  np.testing.assert_allclose(np.asarray(spread[:1]), np.asarray(whole), atol=1e-5, rtol=0)

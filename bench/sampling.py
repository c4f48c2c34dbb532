"""Text to image end to end: our SanaPipeline vs diffusers.SanaPipeline, same small random model, CPU.

    python bench/sampling.py [--size 256] [--steps 20] [--batch 2] [--repeats 2]

Builds one small SANA pipeline folder with random weights (Gemma-2: 4 layers, width 256; DC-AE f8c32
with EfficientViT stages; transformer width 384, depth 6, q/k norms), loads it into both pipelines
and runs the same prompts with diffusers' defaults (Flow-DPM-Solver, CFG 4.5, Complex Human
Instruction, 300 tokens), resolution binning off, output_type "np". Prints the steady-state time of
each (best of --repeats after a warm-up call that compiles ours), the ratio diffusers / ours, the
split between text encoder, denoising and decode, our compile time and the largest pixel difference.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from timing import add_retain_flag, retain_if_asked  # noqa: E402

SMALL_VAE = dict(
    in_channels=3, latent_channels=32, attention_head_dim=16,
    encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
    decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
    encoder_block_out_channels=(32, 64, 128, 128), decoder_block_out_channels=(32, 64, 128, 128),
    encoder_layers_per_block=(1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1),
    encoder_qkv_multiscales=((), (), (5,), (5,)), decoder_qkv_multiscales=((), (), (5,), (5,)),
    downsample_block_type="pixel_unshuffle", upsample_block_type="pixel_shuffle", scaling_factor=0.41407)
SMALL_TRANSFORMER = dict(
    in_channels=32, out_channels=32, num_attention_heads=12, attention_head_dim=32, num_layers=6,
    num_cross_attention_heads=6, cross_attention_head_dim=64, cross_attention_dim=384, caption_channels=256,
    sample_size=32, qk_norm="rms_norm_across_heads")
PROMPTS = ["A cat sleeping on a red sofa", "A busy city street at dusk with glowing lamps and a double-decker bus"]


def build_small_pipeline(path):
  """Saves the small random diffusers SanaPipeline to `path`; returns it."""
  import diffusers
  import transformers

  from tests.models.autoencoder_builders import randomize_
  from tests.sampling.pipeline_builders import DPM_SCHEDULER_CONFIG, randomize_norms_
  from tests.models.gemma_builders import build_tiny_tokenizer, randomize_norms

  torch.manual_seed(0)
  gemma = transformers.Gemma2Config(
      vocab_size=512, hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
      num_key_value_heads=2, head_dim=64, query_pre_attn_scalar=64, sliding_window=128,
      attn_logit_softcapping=50.0, max_position_embeddings=1024, pad_token_id=0, eos_token_id=1, bos_token_id=2,
      attn_implementation="eager")
  text_encoder = randomize_norms(transformers.Gemma2Model(gemma).eval())
  pipe = diffusers.SanaPipeline(
      tokenizer=build_tiny_tokenizer(os.path.join(path, "_tokenizer")), text_encoder=text_encoder,
      vae=randomize_(diffusers.AutoencoderDC(**SMALL_VAE)),
      transformer=randomize_norms_(diffusers.SanaTransformer2DModel(**SMALL_TRANSFORMER), 0).eval(),
      scheduler=diffusers.DPMSolverMultistepScheduler(**DPM_SCHEDULER_CONFIG))
  pipe.save_pretrained(path)
  pipe.set_progress_bar_config(disable=True)
  return pipe


def timed(fn):
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


def diffusers_split(pipe, args, latents):
  """(images, seconds per stage) of one diffusers call, run stage by stage as SanaPipeline does."""
  with torch.no_grad():
    (embeds, mask, neg, neg_mask), t_text = timed(lambda: pipe.encode_prompt(PROMPTS, True, negative_prompt=""))
    out, t_denoise = timed(lambda: pipe(
        prompt_embeds=embeds, prompt_attention_mask=mask, negative_prompt=None, negative_prompt_embeds=neg,
        negative_prompt_attention_mask=neg_mask, latents=latents, output_type="latent", **args).images)
    decoded, t_decode = timed(lambda: pipe.vae.decode(out / pipe.vae.config.scaling_factor).sample)
  return dict(text_encoder=t_text, denoise=t_denoise, decode=t_decode)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--size", type=int, default=256, help="image height and width in pixels")
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--repeats", type=int, default=2)
  add_retain_flag(ap)
  args = ap.parse_args()
  retain_if_asked(args)
  import jax

  from sana_jax.sampling.pipeline import SanaPipeline

  folder = tempfile.mkdtemp(prefix="sana_bench_")
  ref = build_small_pipeline(folder)
  ours = SanaPipeline.from_pretrained(folder)
  f = ours.vae_scale_factor
  call = dict(height=args.size, width=args.size, num_inference_steps=args.steps, use_resolution_binning=False)
  noise = np.random.default_rng(0).standard_normal((len(PROMPTS), args.size // f, args.size // f, 32)).astype(np.float32)
  torch_noise = torch.from_numpy(noise.transpose(0, 3, 1, 2))

  _, compile_time = timed(lambda: ours(PROMPTS, latents=noise, output_type="np", **call))
  first_timings = dict(ours.last_timings)
  ours_best, ours_split = float("inf"), None
  for _ in range(args.repeats):
    images, t = timed(lambda: ours(PROMPTS, latents=noise, output_type="np", **call).images)
    if t < ours_best:
      ours_best, ours_split = t, dict(ours.last_timings)

  ref_best, ref_images = float("inf"), None
  for _ in range(args.repeats):
    with torch.no_grad():
      out, t = timed(lambda: ref(PROMPTS, latents=torch_noise, output_type="np", **call).images)
    if t < ref_best:
      ref_best, ref_images = t, out
  ref_split = diffusers_split(ref, call, torch_noise)

  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), {os.cpu_count()} CPUs")
  print(f"batch {len(PROMPTS)} prompts, {args.size}x{args.size} px ({args.size // f}x{args.size // f} latents), "
        f"{args.steps} steps Flow-DPM-Solver, CFG 4.5, CHI on, 300 tokens")
  print(f"end to end (best of {args.repeats}): diffusers {ref_best:.2f}s, ours {ours_best:.2f}s -> "
        f"ratio {ref_best / ours_best:.2f}x")
  print("split (s)      text_encoder  denoise   decode")
  for name, split in (("diffusers", ref_split), ("ours", ours_split)):
    print(f"  {name:<12} {split['text_encoder']:>10.3f} {split['denoise']:>8.3f} {split['decode']:>8.3f}")
  print(f"ours first call (compiles everything): {compile_time:.1f}s "
        f"(text {first_timings['text_encoder']:.1f}, denoise {first_timings['denoise']:.1f}, "
        f"decode {first_timings['decode']:.1f})")
  print(f"max |ours - diffusers| pixel difference: {np.abs(images - ref_images).max():.2e}")


if __name__ == "__main__":
  main()

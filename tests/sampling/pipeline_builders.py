"""A tiny, hub-free diffusers `SanaPipeline` folder with random weights (tests, notebook, benchmark).

Components: the tiny Gemma-2 and word-level tokenizer of tests/models/gemma_builders.py, the tiny `AutoencoderDC` of
tests/models/autoencoder_builders.py (f = 2, 4 latent channels) and a 2-block SANA 1.5-style transformer (q/k norms).
"""
import shutil

import diffusers
import torch

from tests.models.autoencoder_builders import TINY_CONFIG as TINY_VAE_CONFIG, build_reference_vae
from tests.models.gemma_builders import build_tiny_gemma, build_tiny_tokenizer

TINY_TRANSFORMER_CONFIG = dict(
    in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2,
    num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16,
    caption_channels=64, sample_size=16, qk_norm="rms_norm_across_heads")

# SANA's Flow-DPM-Solver as the diffusers pipelines on the hub configure it.
DPM_SCHEDULER_CONFIG = dict(
    use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction", algorithm_type="dpmsolver++",
    solver_order=2, solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero")


def randomize_norms_(module, seed):
  """Random gains for every 1-D weight (norms start at 1 and would hide a missing gain)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      if p.ndim == 1 and name.endswith("weight"):
        p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
  return module


def build_tiny_pipeline(path, *, seed: int = 0, transformer_overrides=None,
                        vae_config=TINY_VAE_CONFIG, gemma_overrides=None) -> diffusers.SanaPipeline:
  """Saves a random tiny diffusers SanaPipeline to `path` (save_pretrained); returns it (float32, eval)."""
  path = str(path)
  # The Gemma builders save their output; it is written to scratch folders and removed.
  text_encoder = build_tiny_gemma(f"{path}/_gemma", seed=seed, **(gemma_overrides or {}))
  tokenizer = build_tiny_tokenizer(f"{path}/_tokenizer")
  torch.manual_seed(seed)
  transformer = randomize_norms_(diffusers.SanaTransformer2DModel(
      **{**TINY_TRANSFORMER_CONFIG, **(transformer_overrides or {})}), seed).eval()
  pipe = diffusers.SanaPipeline(
      tokenizer=tokenizer, text_encoder=text_encoder, vae=build_reference_vae(vae_config, seed),
      transformer=transformer, scheduler=diffusers.DPMSolverMultistepScheduler(**DPM_SCHEDULER_CONFIG))
  shutil.rmtree(f"{path}/_gemma")
  shutil.rmtree(f"{path}/_tokenizer")
  pipe.save_pretrained(path)
  pipe.set_progress_bar_config(disable=True)
  return pipe

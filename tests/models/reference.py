"""Builders for tiny random diffusers `SanaTransformer2DModel`s, the reference our model is checked against."""
import numpy as np
import torch


def tiny_diffusers_config(qk_norm=True, patch_size=1, depth=2, interpolation_scale=None, sample_size=8):
  return dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=32, num_layers=depth,
              num_cross_attention_heads=2, cross_attention_head_dim=16, cross_attention_dim=64,
              caption_channels=24, mlp_ratio=2.5, sample_size=sample_size, patch_size=patch_size,
              qk_norm="rms_norm_across_heads" if qk_norm else None,
              interpolation_scale=interpolation_scale)


def random_diffusers_transformer(seed=0, **kw):
  """A diffusers SanaTransformer2DModel with every tensor random (norm weights and tables too)."""
  from diffusers import SanaTransformer2DModel
  torch.manual_seed(seed)
  model = SanaTransformer2DModel(**tiny_diffusers_config(**kw)).eval()
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("norm_q.weight") or name.endswith("norm_k.weight") or name == "caption_norm.weight":
        p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
      else:
        p.copy_(torch.randn(p.shape, generator=gen) * (0.5 / max(1, p.shape[-1]) ** 0.5 if p.ndim > 1 else 0.1))
  return model


def reference_forward(model, latents_nhwc, timesteps, text, mask):
  """Runs the diffusers model on NHWC numpy inputs and returns NHWC numpy output."""
  with torch.no_grad():
    out = model(torch.from_numpy(np.ascontiguousarray(latents_nhwc.transpose(0, 3, 1, 2))),
                encoder_hidden_states=torch.from_numpy(text), timestep=torch.from_numpy(timesteps),
                encoder_attention_mask=torch.from_numpy(mask), return_dict=False)[0]
  return out.numpy().transpose(0, 2, 3, 1)

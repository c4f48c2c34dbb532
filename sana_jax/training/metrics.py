"""Throughput accounting: model FLOPs per image, TFLOP/s per device and MFU (MaxText style).

FLOPs are counted analytically from the config (matmuls and convolutions of the forward pass, x3
for forward + backward), so MFU does not credit recomputation under remat. Peaks are dense bf16
matmul figures per chip from the vendors' spec sheets.
"""
import jax

# device_kind substring (lower case) -> peak bf16 FLOP/s per device.
PEAK_FLOPS = {
    "tpu v6": 918e12,      # v6e (Trillium)
    "tpu v5p": 459e12,
    "tpu v5 lite": 197e12,  # v5e reports "TPU v5 lite"
    "tpu v5e": 197e12,
    "tpu v4": 275e12,
    "h200": 989e12,
    "h100": 989e12,
    "a100": 312e12,
}


def peak_flops(device=None):
  """Peak FLOP/s of `device` (default: the first), or None when the kind is not in the table."""
  kind = (device or jax.devices()[0]).device_kind.lower()
  for key, peak in PEAK_FLOPS.items():
    if key in kind:
      return peak
  return None


def forward_flops_per_image(model_cfg, latent_height: int, latent_width: int, text_tokens: int) -> float:
  """Multiply-add FLOPs (2 per MAC) of one forward pass of the transformer on one image."""
  d, p = model_cfg.hidden_size, model_cfg.patch_size
  n = (latent_height // p) * (latent_width // p)  # image tokens
  inner = model_cfg.cross_num_heads * model_cfg.cross_head_dim
  hidden = int(model_cfg.mlp_ratio * d)
  per_block = (
      2 * n * 4 * d * d                                    # q, k, v, out projections
      + 2 * n * 2 * d * model_cfg.linear_head_dim          # K^T V and Q (K^T V) per head
      + 2 * n * 2 * d * inner + 2 * text_tokens * 2 * d * inner  # cross q/out, k/v on the text
      + 2 * n * 2 * text_tokens * inner                    # cross scores and weighted sum
      + 2 * n * (d * 2 * hidden + 9 * 2 * hidden + hidden * d))  # Mix-FFN
  embed = 2 * n * (model_cfg.in_channels * p * p * d + d * p * p * model_cfg.out_channels)
  caption = 2 * text_tokens * (model_cfg.caption_channels * d + d * d)
  return model_cfg.depth * per_block + embed + caption


def train_flops_per_image(model_cfg, latent_height, latent_width, text_tokens) -> float:
  """Forward + backward ~= 3 forward passes."""
  return 3.0 * forward_flops_per_image(model_cfg, latent_height, latent_width, text_tokens)


def throughput(step_seconds: float, images_per_step: int, flops_per_image: float, num_devices: int,
               peak=None) -> dict:
  """images/s, TFLOP/s per device and (when the peak is known) MFU for one step."""
  flops_per_device = flops_per_image * images_per_step / num_devices / step_seconds
  out = {"images_per_sec": images_per_step / step_seconds, "tflops_per_device": flops_per_device / 1e12}
  if peak:
    out["mfu"] = flops_per_device / peak
  return out

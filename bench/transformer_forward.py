"""Our jitted SanaTransformer forward vs the diffusers eager forward, same weights, same CPU, fp32.

    python bench/transformer_forward.py [--depth 28] [--repeats 5]

Prints, for batch 1 and 2 at 512 px (16x16 latent, 300 text tokens) with the 600M model's width:
the time ratio diffusers/ours (target >= 2) and our achieved FLOP/s as a share of a plain jnp
matmul's FLOP/s measured in the same run (target >= 40%).
"""
import argparse

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from sana_jax import configs
from sana_jax.convert.transformer import config_to_diffusers, dict_source, model_from_state, state_from_source
from sana_jax.training.metrics import forward_flops_per_image
from timing import best_time, matmul_flops_per_s


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--config", default="SanaMS_600M_P1_D28")
  ap.add_argument("--depth", type=int, default=28)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
  args = ap.parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)
  from diffusers import SanaTransformer2DModel

  cfg = configs.get_config(args.config).model
  cfg.depth = args.depth
  torch.manual_seed(0)
  ref = SanaTransformer2DModel(**{k: v for k, v in config_to_diffusers(cfg).items() if k != "_class_name"}).eval()
  model = model_from_state(cfg, state_from_source(dict_source(ref.state_dict()), cfg))
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda state, *a: nnx.merge(graphdef, state)(*a))

  peak = matmul_flops_per_s()
  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); {args.config} width {cfg.hidden_size}, depth {cfg.depth}")
  print(f"plain jnp fp32 matmul (2048^2): {peak / 1e9:.1f} GFLOP/s")
  rng = np.random.default_rng(0)
  for batch in (1, 2):
    x = rng.standard_normal((batch, 16, 16, cfg.in_channels), dtype=np.float32)
    t = np.full((batch,), 500.0, np.float32)
    text = rng.standard_normal((batch, 300, cfg.caption_channels), dtype=np.float32)
    mask = np.ones((batch, 300), np.int64)
    mask[:, 120:] = 0
    args_j = [jnp.asarray(a) for a in (x, t, text, mask)]
    # Analytic count: XLA's cost analysis counts a scan body once, whatever the depth.
    flops = batch * forward_flops_per_image(cfg, 16, 16, 300)
    ours = best_time(lambda: forward(state, *args_j).block_until_ready(), args.repeats)
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    tt, ttext, tmask = torch.from_numpy(t), torch.from_numpy(text), torch.from_numpy(mask)

    def run_ref():
      with torch.inference_mode():
        ref(tx, encoder_hidden_states=ttext, timestep=tt, encoder_attention_mask=tmask, return_dict=False)

    theirs = best_time(run_ref, args.repeats)
    achieved = flops / ours
    print(f"batch {batch}: ours {ours * 1e3:.1f} ms, diffusers {theirs * 1e3:.1f} ms, "
          f"speed-up {theirs / ours:.2f}x; ours {achieved / 1e9:.1f} GFLOP/s = "
          f"{100 * achieved / peak:.0f}% of the matmul rate ({flops / 1e9:.1f} GFLOP per forward)")


if __name__ == "__main__":
  main()

"""Our jitted SanaTransformer forward vs the diffusers eager forward, same weights, same CPU, fp32.

    python bench/transformer_forward.py [--depth 28] [--repeats 5]
    python bench/transformer_forward.py --sweep [--quick]

Default: for batch 1 and 2 at 512 px (16x16 latent, 300 text tokens) with the 600M model's width,
the time ratio diffusers/ours and our achieved FLOP/s as a share of a plain jnp matmul's FLOP/s
measured in the same run.

--sweep: widths 128 / 384 / 1152 (heads of 32, cross-attention heads of 64, the 600M config
otherwise) at --sweep-depth blocks, 1K / 4K / 16K image tokens (32^2, 64^2, 128^2 latents at
patch 1), batch 1 and 2, 300 text tokens; prints diffusers/ours per cell (targets: >= 1.5x where
width <= 384 and tokens >= 4K, >= 1x everywhere) and the page faults of one of our calls: XLA:CPU
allocates each call's temporary buffer afresh, and glibc serves (and returns) blocks over 32 MB with
mmap, so every call touches new pages (docs/benchmarks.md, "Where the forward's time goes").
--quick: widths 128 and 384 at 1K and 4K only.
"""
import argparse
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from sana_jax import configs
from sana_jax.convert.transformer import config_to_diffusers, dict_source, model_from_state, state_from_source
from sana_jax.training.metrics import forward_flops_per_image
from timing import add_retain_flag, best_time, matmul_flops_per_s, retain_if_asked


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--config", default="SanaMS_600M_P1_D28")
  ap.add_argument("--depth", type=int, default=28)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
  add_retain_flag(ap)
  ap.add_argument("--sweep", action="store_true", help="width x tokens x batch sweep")
  ap.add_argument("--sweep-depth", type=int, default=2)
  ap.add_argument("--quick", action="store_true", help="sweep: widths 128, 384 at 1K, 4K tokens")
  args = ap.parse_args()
  retain_if_asked(args)
  if args.threads:
    torch.set_num_threads(args.threads)
  if args.sweep:
    return sweep(args)
  from diffusers import SanaTransformer2DModel

  cfg = configs.get_config(args.config).model
  cfg.depth = args.depth
  cfg.prediction = "velocity"  # the same network either way; diffusers' model returns velocity
  cfg.pooled_caption = False  # tiny's default; diffusers' model has no pooled-caption projection
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


def _pair(cfg):
  """(diffusers model, our jitted forward, our state) with the same random weights."""
  from diffusers import SanaTransformer2DModel
  torch.manual_seed(0)
  ref = SanaTransformer2DModel(**{k: v for k, v in config_to_diffusers(cfg).items()
                                  if k != "_class_name"}).eval()
  model = model_from_state(cfg, state_from_source(dict_source(ref.state_dict()), cfg))
  graphdef, state = nnx.split(model)
  return ref, jax.jit(lambda state, *a: nnx.merge(graphdef, state)(*a)), state


def _inputs(cfg, batch, side, rng):
  x = rng.standard_normal((batch, side, side, cfg.in_channels), dtype=np.float32)
  t = np.full((batch,), 500.0, np.float32)
  text = rng.standard_normal((batch, 300, cfg.caption_channels), dtype=np.float32)
  mask = np.ones((batch, 300), np.int64)
  mask[:, 120:] = 0
  return x, t, text, mask


def _time_both(ref, forward, state, arrays, repeats):
  """(ours, diffusers) best wall times, measured alternately."""
  x, t, text, mask = arrays
  args_j = [jnp.asarray(a) for a in arrays]
  tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  tt, ttext, tmask = torch.from_numpy(t), torch.from_numpy(text), torch.from_numpy(mask)

  def run_ref():
    with torch.inference_mode():
      ref(tx, encoder_hidden_states=ttext, timestep=tt, encoder_attention_mask=tmask, return_dict=False)

  run_ours = lambda: forward(state, *args_j).block_until_ready()
  run_ours(), run_ref()  # compile / warm up
  ours, theirs, faults = [], [], 0
  for _ in range(repeats):  # alternate, so load from other processes falls on both alike
    for fn, times in ((run_ours, ours), (run_ref, theirs)):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      start = time.perf_counter()
      fn()
      times.append(time.perf_counter() - start)
      if fn is run_ours:
        faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
  return min(ours), min(theirs), faults / repeats


def sweep(args):
  widths = (128, 384) if args.quick else (128, 384, 1152)
  sides = (32, 64) if args.quick else (32, 64, 128)
  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); depth {args.sweep_depth}, fp32, 300 text tokens")
  print(f"{'width':>5} {'tokens':>6} {'B':>2} {'ours ms':>9} {'diffusers ms':>12} {'diff/ours':>9}  target"
        f"{'':15s} ours page faults/call")
  rng = np.random.default_rng(0)
  for width in widths:
    cfg = configs.get_config("SanaMS_600M_P1_D28").model
    cfg.update(hidden_size=width, depth=args.sweep_depth, cross_num_heads=width // 64,
               cross_head_dim=64)
    ref, forward, state = _pair(cfg)
    for side in sides:
      for batch in (1, 2):
        ours, theirs, faults = _time_both(ref, forward, state, _inputs(cfg, batch, side, rng), args.repeats)
        target = 1.5 if width <= 384 and side * side >= 4096 else 1.0
        met = "met" if theirs / ours >= target else "NOT met"
        print(f"{width:5d} {side * side:6d} {batch:2d} {ours * 1e3:9.1f} {theirs * 1e3:12.1f} "
              f"{theirs / ours:8.2f}x  >= {target}x {met:8s} {faults:10.0f}", flush=True)


if __name__ == "__main__":
  main()

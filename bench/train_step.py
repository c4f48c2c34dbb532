"""One training step, ours (jitted) vs PyTorch diffusers (eager), same weights, batch and CPU, fp32.

    python bench/train_step.py [--config SanaMS_600M_P1_D28] [--depth 4] [--batch 2] [--steps 5]

A step is the whole update of `sana_jax.training.step`: flow-matching loss (logit-normal sigma,
shift 3, caption dropout 0.1), backward, global-norm clip 0.1, AdamW (lr 1e-4, weight decay 0.01).
The PyTorch step does the same with `SanaTransformer2DModel`, `clip_grad_norm_` and `torch.optim.AdamW`.
Prints images/s of both (target: ours >= 2x), and our MFU: the step's FLOPs from XLA's cost analysis
/ step time / the FLOP/s of a plain jitted fp32 matmul measured in the same run (the CPU's
practical peak). The two steps are timed alternately, so load from other processes on a shared
machine falls on both alike.
"""
import argparse
import functools
import statistics
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from sana_jax import configs
from sana_jax.convert.transformer import config_to_diffusers, dict_source, model_from_state, state_from_source
from sana_jax.optim.registry import build_optimizer
from sana_jax.training import metrics, step, train_state
from sana_jax.training.objective import NUM_TRAIN_TIMESTEPS, shift_sigma
from timing import add_retain_flag, matmul_flops_per_s, retain_if_asked


def timed(fn):
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def xla_flops(jitted, *args):
  """FLOPs of one call from XLA's cost analysis. XLA counts a loop body once whatever its trip
  count, so the layer scan is unrolled for this count only (the timed step keeps the scan)."""
  scan = jax.lax.scan

  def unrolled(*a, **kw):  # overrides an explicit unroll= too (the model passes model.scan_unroll)
    return scan(*a, **{**kw, "unroll": True})

  with mock.patch.object(jax.lax, "scan", unrolled):
    cost = jitted.lower(*args).cost_analysis()
  return (cost[0] if isinstance(cost, list) else cost)["flops"]


def torch_train_step(model, optimizer, batch, null_text, cfg):
  """The PyTorch counterpart of our step: same objective, clip and AdamW."""
  latents, text, mask = batch  # [B, C, H, W], [B, L, C_text], [B, L]
  b = latents.shape[0]
  u = torch.sigmoid(cfg.train.logit_mean + cfg.train.logit_std * torch.randn(b))
  index = torch.clamp(torch.floor(u * NUM_TRAIN_TIMESTEPS), 0, NUM_TRAIN_TIMESTEPS - 1).long()
  sigma = shift_sigma(torch.linspace(0.0, 0.999, NUM_TRAIN_TIMESTEPS)[index], cfg.train.flow_shift)
  noise = torch.randn_like(latents)
  drop = torch.rand(b) < cfg.train.caption_dropout
  text = torch.where(drop[:, None, None], null_text[None], text)
  s = sigma[:, None, None, None]
  x_t = (1.0 - s) * latents + s * noise
  velocity = model(x_t, encoder_hidden_states=text, timestep=sigma * NUM_TRAIN_TIMESTEPS,
                   encoder_attention_mask=mask, return_dict=False)[0]
  loss = torch.mean((velocity - (noise - latents)) ** 2)
  loss.backward()
  torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optimizer.grad_clip)
  optimizer.step()
  optimizer.zero_grad(set_to_none=True)
  return loss.item()


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--config", default="SanaMS_600M_P1_D28")
  ap.add_argument("--depth", type=int, default=4)
  ap.add_argument("--batch", type=int, default=2)
  ap.add_argument("--latent", type=int, default=16, help="latent side (16 = 512 px with DC-AE f32)")
  ap.add_argument("--text_tokens", type=int, default=300)
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
  add_retain_flag(ap)
  args = ap.parse_args()
  retain_if_asked(args)
  if args.threads:
    torch.set_num_threads(args.threads)
  from diffusers import SanaTransformer2DModel

  cfg = configs.get_config(args.config)
  cfg.model.depth = args.depth
  cfg.model.prediction = "velocity"  # the same network either way; diffusers' model returns velocity
  cfg.model.pooled_caption = False  # tiny's default; diffusers' model has no pooled-caption projection
  cfg.optimizer.update(name="adamw", learning_rate=1e-4, warmup_steps=0, weight_decay=0.01, grad_clip=0.1)
  cfg.train.update(batch_size=args.batch, grad_accum_steps=1, ema_decay=0.0)
  m = cfg.model

  torch.manual_seed(0)
  ref = SanaTransformer2DModel(**{k: v for k, v in config_to_diffusers(m).items() if k != "_class_name"}).train()
  model = model_from_state(m, state_from_source(dict_source(ref.state_dict()), m))
  tx = build_optimizer(cfg.optimizer)
  params = nnx.state(model, nnx.Param)
  state = train_state.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                                 ema_params=None)
  del model

  rng = np.random.default_rng(0)
  latents = rng.standard_normal((args.batch, args.latent, args.latent, m.in_channels), dtype=np.float32)
  text = rng.standard_normal((args.batch, args.text_tokens, m.caption_channels), dtype=np.float32)
  mask = np.ones((args.batch, args.text_tokens), np.int32)
  mask[:, args.text_tokens * 2 // 5:] = 0
  null_text = np.zeros((args.text_tokens, m.caption_channels), np.float32)

  update = step.jit_train_step(step.make_train_step(train_state.model_graphdef(m), tx, cfg.train,
                                                    null_text=jnp.asarray(null_text), seed=0))
  batch = {"latents": jnp.asarray(latents), "text": jnp.asarray(text), "text_mask": jnp.asarray(mask)}
  step_flops = xla_flops(update, state, batch)
  n_params = sum(p.size for p in jax.tree.leaves(params))
  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); {args.config} width {m.hidden_size}, depth {m.depth} "
        f"({n_params / 1e6:.1f}M params), batch {args.batch}, latents {args.latent}x{args.latent}x"
        f"{m.in_channels}, {args.text_tokens} text tokens, fp32, AdamW")

  def run_ours():
    nonlocal state
    state, out = update(state, batch)
    jax.block_until_ready(out["loss"])

  o = cfg.optimizer
  optimizer = torch.optim.AdamW(ref.parameters(), lr=o.learning_rate, betas=(o.b1, o.b2), eps=1e-8,
                                weight_decay=o.weight_decay)
  t_batch = (torch.from_numpy(latents.transpose(0, 3, 1, 2).copy()), torch.from_numpy(text), torch.from_numpy(mask))
  t_null = torch.from_numpy(null_text)
  run_theirs = functools.partial(torch_train_step, ref, optimizer, t_batch, t_null, cfg)
  run_ours(), run_theirs()  # warm-up: compilation, optimiser state allocation
  ours, theirs, peaks = [], [], []
  for _ in range(args.steps):
    ours.append(timed(run_ours))
    theirs.append(timed(run_theirs))
    peaks.append(matmul_flops_per_s(repeats=2))
  # Same initial weights, different noise draws: the losses agree in size, not in value.
  print(f"loss at step {args.steps + 2}: ours {float(update(state, batch)[1]['loss']):.4f}, "
        f"diffusers {torch_train_step(ref, optimizer, t_batch, t_null, cfg):.4f}")

  ours_s, theirs_s, peak = statistics.median(ours), statistics.median(theirs), statistics.median(peaks)
  analytic = metrics.train_flops_per_image(m, args.latent, args.latent, args.text_tokens) * args.batch
  print(f"ours:      {ours_s * 1e3:8.1f} ms/step (min {min(ours) * 1e3:.1f}), {args.batch / ours_s:6.2f} images/s")
  print(f"diffusers: {theirs_s * 1e3:8.1f} ms/step (min {min(theirs) * 1e3:.1f}), "
        f"{args.batch / theirs_s:6.2f} images/s")
  print(f"speed-up: {theirs_s / ours_s:.2f}x median, {min(theirs) / min(ours):.2f}x best  (target >= 2x)")
  print(f"plain jnp fp32 matmul (2048^2), measured between the steps: {peak / 1e9:.1f} GFLOP/s median "
        f"({min(peaks) / 1e9:.1f}..{max(peaks) / 1e9:.1f})")
  print(f"step FLOPs: XLA cost analysis {step_flops / 1e9:.1f} GFLOP, analytic 3x forward {analytic / 1e9:.1f} GFLOP")
  print(f"ours: {step_flops / ours_s / 1e9:.1f} GFLOP/s, MFU {100 * step_flops / ours_s / peak:.0f}% of the "
        f"measured matmul rate")


if __name__ == "__main__":
  main()

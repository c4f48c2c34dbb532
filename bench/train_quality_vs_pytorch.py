"""Ours vs PyTorch on the default job: same model, data, objective, optimiser, sampler and wall time.

  python bench/train_quality_vs_pytorch.py --seconds=300 [--retain_host_memory]
  python bench/train_quality_vs_pytorch.py --config tiny24 --seconds=150 --retain_host_memory

Both sides train the preset's architecture (configs/tiny.py unless --config) from the same initial weights for the same wall
time (compilation included for ours) on the same CPU, one after the other in this process:
  ours     sana_jax's jitted train step (bench/train_ablation.py's loop);
  PyTorch  diffusers' `SanaTransformer2DModel` built from the same config
           (`convert.transformer.config_to_diffusers`), eager mode, torch.set_num_threads = the
           cores JAX uses; AdamW (torch.optim, foreach) with our clip, betas, eps and our learning-
           rate schedule function; the same objective (logit-normal timesteps on the 1000-step
           grid, flow shift, velocity target, caption dropout to the null prompt) written in torch;
           batches from the same data pipeline and codecs.
Both final weights are then sampled by the same sampler (PyTorch's weights are loaded into our
model with `convert.transformer.state_from_source`: the converter is parity-tested against
diffusers) on the same held-out prompts and scored by the shapes evaluator. Prints steps done,
final loss (mean of the last 100 steps) and the per-task scores for each, then the ratios.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from flax import nnx

sys.path.insert(0, os.path.dirname(__file__))
import train_ablation  # noqa: E402
from timing import add_retain_flag, retain_if_asked  # noqa: E402

from sana_jax import configs  # noqa: E402
from sana_jax.convert import transformer as convert  # noqa: E402
from sana_jax.data import pipeline  # noqa: E402
from sana_jax.models.transformer import X0_MIN_SIGMA  # noqa: E402
from sana_jax.optim.registry import build_optimizer, make_schedule  # noqa: E402
from sana_jax.training import loop, objective, train_state  # noqa: E402


def torch_sigmas(generator, batch, train_cfg):
  """The objective's timestep draw (objective.sample_sigmas) in torch: [B] float32."""
  u = torch.sigmoid(train_cfg.logit_mean + train_cfg.logit_std * torch.randn(batch, generator=generator))
  index = torch.clamp(torch.floor(u * objective.NUM_TRAIN_TIMESTEPS), 0, objective.NUM_TRAIN_TIMESTEPS - 1)
  grid = torch.linspace(0.0, 0.999, objective.NUM_TRAIN_TIMESTEPS)
  s = grid[index.long()]
  shift = train_cfg.flow_shift
  return shift * s / (1.0 + (shift - 1.0) * s)


def train_torch(cfg, init_params, graphdef, seconds, codecs):
  """Trains diffusers' model from our initial weights for `seconds`; -> (result, our-format params)."""
  from diffusers import SanaTransformer2DModel
  t0 = time.perf_counter()
  torch.set_num_threads(os.cpu_count())
  net_cfg = cfg.model.copy_and_resolve_references()
  x0_model = net_cfg.get("prediction", "velocity") == "x0"
  net_cfg.prediction = "velocity"  # the same network; an x0 output is turned into the velocity below
  model = SanaTransformer2DModel(**convert.config_to_diffusers(net_cfg))
  tensors = convert.state_to_tensors(nnx.merge(graphdef, init_params))
  missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()}, strict=False)
  if unexpected or any(not k.endswith("pos_embed") for k in missing):
    raise RuntimeError(f"weight names differ: missing {missing}, unexpected {unexpected}")
  model.train()
  o = cfg.optimizer
  if o.name != "adamw" or o.weight_decay:
    raise ValueError("the PyTorch side implements optimizer.name='adamw' without weight decay")
  opt = torch.optim.AdamW(model.parameters(), lr=1.0, betas=(o.b1, o.b2), eps=o.eps or 1e-8,
                          weight_decay=0.0, foreach=True)
  schedule = make_schedule(o)
  lr_at = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: float(schedule(i)))
  autoencoder, text_encoder = codecs
  null_text, null_mask = (torch.from_numpy(np.asarray(a[0])) for a in text_encoder.null_embedding())
  data = pipeline.make_dataset(cfg.data, cfg.train.batch_size, cfg.seed)
  gen = torch.Generator().manual_seed(cfg.seed)
  losses, steps = [], 0
  while time.perf_counter() - t0 < seconds:
    b = loop.encode_batch(next(data), autoencoder, text_encoder)
    x0 = torch.from_numpy(b["latents"]).permute(0, 3, 1, 2)
    text, mask = torch.from_numpy(b["text"]), torch.from_numpy(b["text_mask"])
    sigma = torch_sigmas(gen, x0.shape[0], cfg.train)
    noise = torch.randn(x0.shape, generator=gen)
    drop = torch.rand(x0.shape[0], generator=gen) < cfg.train.caption_dropout
    text = torch.where(drop[:, None, None], null_text[None], text)  # the null prompt with its mask,
    mask = torch.where(drop[:, None], null_mask[None].to(mask.dtype), mask)  # as objective.drop_captions
    s = sigma[:, None, None, None]
    x_t = (1.0 - s) * x0 + s * noise
    v = model(x_t, encoder_hidden_states=text, timestep=sigma * objective.NUM_TRAIN_TIMESTEPS,
              encoder_attention_mask=mask, return_dict=False)[0]
    if x0_model:  # as SanaTransformer.__call__ does for model.prediction="x0"
      v = (x_t - v) / torch.clamp(s, min=X0_MIN_SIGMA)
    loss = torch.mean((v - (noise - x0)) ** 2)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if o.grad_clip:
      torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
    opt.step()
    lr_at.step()
    losses.append(float(loss))
    steps += 1
  train_s = time.perf_counter() - t0
  trained = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  for name, value in tensors.items():  # buffers diffusers does not train (none for this config)
    trained.setdefault(name, value)
  params = convert.state_from_source(convert.dict_source(trained), cfg.model)
  return {"steps": steps, "steps_per_s": round(steps / train_s, 2),
          "loss": round(float(np.mean(losses[-100:])), 4), "train_s": round(train_s, 1)}, params


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="tiny", help="preset: tiny (the figures of docs/benchmarks.md "
                      "before the eleventh training round) or tiny24 (the default job's since)")
  parser.add_argument("--seconds", type=float, default=300.0, help="wall time each side trains")
  add_retain_flag(parser)
  parser.add_argument("overrides", nargs="*", help="config fields, as in bench/train_ablation.py")
  args = parser.parse_args()
  retain_if_asked(args)
  cfg = train_ablation.apply_overrides(configs.get_config(args.config), args.overrides)
  cfg.train.ema_decay = 0.0  # the PyTorch side keeps no EMA copy; compare raw weights
  cfg.model.pooled_caption = False  # diffusers' model has no pooled-caption projection
  # Ours: the step budget is what fits in the wall time; a cosine schedule's length stays the config's.
  # Both train on the latents of the same autoencoder (fitted once here, outside both budgets).
  codecs = loop.build_codecs(cfg)
  ours, _, _, _ = train_ablation.run(cfg, 10 ** 9, seconds=args.seconds, codecs=codecs)
  tx = build_optimizer(cfg.optimizer)
  graphdef, state, _ = train_state.create_train_state(cfg, tx)  # the same initial weights ours had
  theirs, params = train_torch(cfg, state.params, graphdef, args.seconds, codecs)
  theirs["score"], _ = train_ablation.evaluate(cfg, graphdef, params, codecs)
  print(json.dumps({"config": args.config, "seconds": args.seconds, "overrides": args.overrides, "sana_jax": ours,
                    "pytorch_diffusers": theirs}, indent=1))
  print(f"steps ours/PyTorch: {ours['steps'] / theirs['steps']:.2f}x; "
        f"overall score ours {ours['score']['overall']:.3f} vs PyTorch {theirs['score']['overall']:.3f}")


if __name__ == "__main__":
  main()

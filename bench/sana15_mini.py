"""SANA 1.5's three scaling techniques, reproduced in miniature on the CPU with the shapes data.

COMMAND: python bench/sana15_mini.py --out docs/sana15_mini [--steps 300] [--quick]

(i)   growth: train a depth-D/2 model for `steps` steps, grow it to depth D (constant, identity new
      blocks) and train `steps` more; train a depth-D model from scratch for 2*`steps` steps. Report
      the step at which the grown run first reaches the scratch run's final (smoothed) loss.
(ii)  pruning: prune the scratch depth-D model to D/2 blocks by block importance, by dropping the
      last blocks and by a random choice; held-out flow loss (fixed noise and timesteps) before and
      after `finetune` steps, plus the shapes evaluator's score.
(iii) best-of-N: 32 candidates per held-out prompt from the depth-D model; the shapes evaluator's
      score of the pick for N = 1..32 with (a) a judge that is not the evaluator - a "diffusion
      classifier" score from the model itself, how much the prompt lowers the denoising error
      versus the null prompt - and (b) the evaluator as an oracle.
Everything uses configs/tiny.py's data, codecs and optimiser with a width-128, depth-4 model (D = 4).
Writes results.json and loss_curves.png / importance.png under --out.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from sana_jax import configs  # noqa: E402
from sana_jax.data import pipeline, shapes_eval  # noqa: E402
from sana_jax.optim.registry import build_optimizer  # noqa: E402
from sana_jax.scaling import block_importance, grow, prune  # noqa: E402
from sana_jax.training import loop, step, train_state  # noqa: E402
from sana_jax.training.objective import noisy_latents, shift_sigma  # noqa: E402


class Trainer:
  """The training step of `python -m sana_jax.train`, driven from here so runs can start from any model."""

  def __init__(self, cfg):
    self.cfg = cfg
    self.autoencoder, self.text_encoder = loop.build_codecs(cfg)
    self.null_text, self.null_mask = (jnp.asarray(a[0]) for a in self.text_encoder.null_embedding())
    self.tx = build_optimizer(cfg.optimizer)
    self._steps = {}

  def _update(self, model_cfg):
    key = (model_cfg.depth, model_cfg.qk_norm)
    if key not in self._steps:
      graphdef = train_state.model_graphdef(model_cfg)
      fn = step.make_train_step(graphdef, self.tx, self.cfg.train, null_text=self.null_text,
                                null_mask=self.null_mask, seed=self.cfg.seed)
      self._steps[key] = step.jit_train_step(fn)
    return self._steps[key]

  def train(self, model, num_steps, data_seed):
    """Fresh optimiser state, `num_steps` steps; returns (trained model, per-step losses)."""
    params = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))  # the step donates its state
    state = train_state.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params),
                                   ema_params=None)
    data = pipeline.make_dataset(self.cfg.data, self.cfg.train.batch_size, data_seed)
    update = self._update(model.cfg)
    losses = []
    for _ in range(num_steps):
      batch = loop.encode_batch(next(data), self.autoencoder, self.text_encoder)
      state, metrics = update(state, {k: jnp.asarray(v) for k, v in batch.items()})
      losses.append(float(metrics["loss"]))
    graphdef = nnx.graphdef(model)
    return nnx.merge(graphdef, state.params), losses


def heldout_batch(trainer, cfg, count=64, seed=123):
  """Fixed held-out latents, captions, noise and timesteps for a deterministic validation loss."""
  prompts, specs = loop.heldout_shapes(cfg, count)
  rng = np.random.default_rng(seed)
  from sana_jax.data import shapes
  images = np.stack([shapes.render(s, rng, cfg.data.image_size) for s in specs]).astype(np.float32) / 127.5 - 1
  latents = trainer.autoencoder.encode(images) * trainer.autoencoder.scaling_factor
  text, mask = trainer.text_encoder.encode(prompts)
  u = jax.nn.sigmoid(jax.random.normal(jax.random.key(seed), (count,)))
  sigma = shift_sigma(u * 0.999, cfg.train.flow_shift)
  noise = jax.random.normal(jax.random.key(seed + 1), latents.shape)
  return dict(latents=jnp.asarray(latents), text=jnp.asarray(text), mask=jnp.asarray(mask), sigma=sigma, noise=noise)


@nnx.jit
def _val_loss(model, latents, text, mask, sigma, noise):
  x_t = noisy_latents(latents, noise, sigma)
  v = model(x_t, sigma * 1000.0, text, mask)
  return jnp.mean((v - (noise - latents)) ** 2)


def val_loss(model, hb):
  return float(_val_loss(model, hb["latents"], hb["text"], hb["mask"], hb["sigma"], hb["noise"]))


def evaluator_score(trainer, model, cfg, count, seed):
  sampler = loop.make_sampler(nnx.graphdef(model), trainer.autoencoder, trainer.text_encoder, cfg.sampling)
  prompts, specs = loop.heldout_shapes(cfg, count)
  hw = cfg.data.image_size // trainer.autoencoder.spatial_compression_ratio
  images = sampler(nnx.state(model), prompts, seed, (hw, hw, cfg.model.in_channels))
  return shapes_eval.score(list(images), specs)["overall"]


def bench_config():
  """configs/tiny.py (data, codecs, optimiser) with the model pinned: width 128, depth 4, 4 cross heads."""
  cfg = configs.get_config("tiny")
  cfg.model.update(hidden_size=128, depth=4, cross_num_heads=4, cross_head_dim=32)
  cfg.sampling.num_steps = 10
  return cfg


def smooth(x, k=25):
  x = np.asarray(x)
  return np.convolve(x, np.ones(k) / k, mode="valid") if len(x) >= k else x


def part_growth(trainer, cfg, steps, out):
  deep_cfg = cfg.model
  shallow_cfg = bench_config().model
  shallow_cfg.depth = deep_cfg.depth // 2
  t0 = time.time()
  shallow, shallow_losses = trainer.train(train_state.build_model(shallow_cfg, cfg.seed), steps, data_seed=1)
  grown, grown_losses = trainer.train(grow(shallow, deep_cfg.depth, "constant"), steps, data_seed=2)
  scratch, scratch_losses = trainer.train(train_state.build_model(deep_cfg, cfg.seed), 2 * steps, data_seed=1)
  target = smooth(scratch_losses)[-1]
  reached = np.nonzero(smooth(grown_losses) <= target)[0]
  grown_steps = None if reached.size == 0 else int(reached[0]) + 25  # index into the smoothed curve
  result = {
      "steps_per_phase": steps, "scratch_final_smoothed_loss": float(target),
      "grown_final_smoothed_loss": float(smooth(grown_losses)[-1]),
      "shallow_final_smoothed_loss": float(smooth(shallow_losses)[-1]),
      "deep_steps_after_growth_to_reach_scratch_loss": grown_steps,
      "deep_steps_from_scratch": 2 * steps,
      "seconds": time.time() - t0,
  }
  _plot_curves(out, shallow_losses, grown_losses, scratch_losses)
  return result, scratch


def _plot_curves(out, shallow, grown, scratch):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 3.5))
  n = len(shallow)
  ax.plot(np.arange(len(smooth(scratch))) + 25, smooth(scratch), label="deep, from scratch")
  ax.plot(np.arange(len(smooth(shallow))) + 25, smooth(shallow), label="shallow (before growth)")
  ax.plot(n + np.arange(len(smooth(grown))) + 25, smooth(grown), label="grown (constant)")
  ax.set_xlabel("training step (total)")
  ax.set_ylabel("flow loss (25-step mean)")
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(out, "loss_curves.png"), dpi=100)
  plt.close(fig)


def part_pruning(trainer, cfg, deep, finetune, out, hb, eval_count):
  calib_prompts, _ = loop.heldout_shapes(cfg, 16)
  text, mask = trainer.text_encoder.encode(calib_prompts)
  hw = cfg.data.image_size // trainer.autoencoder.spatial_compression_ratio
  bi = block_importance(deep, np.asarray(text), np.asarray(mask), (hw, hw), [900, 700, 500, 300, 100])
  bi.save(os.path.join(out, "importance.json"), os.path.join(out, "importance.png"))
  depth = deep.cfg.depth // 2
  rng = np.random.default_rng(0)
  choices = {
      "importance": dict(depth=depth, importance=bi.scores),
      "drop_last": dict(blocks=list(range(depth))),
      "random": dict(blocks=sorted(rng.choice(deep.cfg.depth, depth, replace=False).tolist())),
  }
  result = {"block_importance": bi.scores.tolist(), "full_model_val_loss": val_loss(deep, hb),
            "full_model_score": evaluator_score(trainer, deep, cfg, eval_count, seed=7)}
  for name, kwargs in choices.items():
    pruned = prune(deep, **kwargs)
    tuned, _ = trainer.train(pruned, finetune, data_seed=3)
    result[name] = {
        "val_loss_before": val_loss(pruned, hb), "val_loss_after": val_loss(tuned, hb),
        "score_before": evaluator_score(trainer, pruned, cfg, eval_count, seed=7),
        "score_after": evaluator_score(trainer, tuned, cfg, eval_count, seed=7),
    }
    result[name]["blocks"] = kwargs.get("blocks") or sorted(np.argsort(-bi.scores)[:depth].tolist())
  return result


def part_best_of_n(trainer, cfg, deep, num_prompts, max_n):
  """Generates max_n candidates per prompt once; the pick for N uses the first N of them."""
  prompts, specs = loop.heldout_shapes(cfg, num_prompts)
  sampler = loop.make_sampler(nnx.graphdef(deep), trainer.autoencoder, trainer.text_encoder, cfg.sampling)
  hw = cfg.data.image_size // trainer.autoencoder.spatial_compression_ratio
  params = nnx.state(deep)
  cands = np.stack([sampler(params, [p] * max_n, 1000 + i, (hw, hw, cfg.model.in_channels))
                    for i, p in enumerate(prompts)])  # [P, N, H, W, 3] in [-1, 1]
  correct = np.array([[shapes_eval.evaluate_image(im, s) for im in c] for c, s in zip(cands, specs)], float)
  judge = diffusion_classifier_scores(trainer, deep, cands, prompts, cfg)  # [P, N]
  result = {"num_prompts": num_prompts, "candidate_accuracy": float(correct.mean())}
  n = 1
  while n <= max_n:
    pick = np.argmax(judge[:, :n], axis=1)
    result[f"N={n}"] = {"judge": float(correct[np.arange(num_prompts), pick].mean()),
                        "oracle": float(correct[:, :n].max(axis=1).mean())}
    n *= 2
  return result


def diffusion_classifier_scores(trainer, model, cands, prompts, cfg, timesteps=(300, 500, 700)):
  """score = mean over t of ||v(x_t, null) - target||^2 - ||v(x_t, prompt) - target||^2: how much the
  prompt explains the image, judged by the model itself (not the evaluator)."""
  p, n = cands.shape[:2]
  latents = trainer.autoencoder.encode(cands.reshape(p * n, *cands.shape[2:])) * trainer.autoencoder.scaling_factor
  text, mask = trainer.text_encoder.encode([q for q in prompts for _ in range(n)])
  null, null_mask = trainer.text_encoder.null_embedding()
  null = jnp.broadcast_to(null, text.shape)
  null_mask = jnp.broadcast_to(null_mask, mask.shape)
  scores = np.zeros(p * n)
  for i, t in enumerate(timesteps):
    noise = jax.random.normal(jax.random.key(i), latents.shape)
    sigma = jnp.full((p * n,), t / 1000.0)
    scores += np.asarray(_denoise_gain(model, jnp.asarray(latents), noise, sigma, jnp.asarray(text),
                                       jnp.asarray(mask), null, null_mask))
  return scores.reshape(p, n) / len(timesteps)


@nnx.jit
def _denoise_gain(model, latents, noise, sigma, text, mask, null, null_mask):
  x_t = noisy_latents(latents, noise, sigma)
  target = noise - latents
  err = lambda tx, m: jnp.mean((model(x_t, sigma * 1000.0, tx, m) - target) ** 2, axis=(1, 2, 3))
  return err(null, null_mask) - err(text, mask)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default="docs/sana15_mini")
  parser.add_argument("--steps", type=int, default=300, help="training steps per growth phase")
  parser.add_argument("--finetune", type=int, default=100, help="fine-tune steps after pruning")
  parser.add_argument("--prompts", type=int, default=24, help="held-out prompts for best-of-N")
  parser.add_argument("--max_n", type=int, default=32)
  parser.add_argument("--eval_images", type=int, default=96)
  parser.add_argument("--quick", action="store_true", help="a smoke run: 30 steps, few prompts")
  args = parser.parse_args()
  if args.quick:
    args.steps, args.finetune, args.prompts, args.max_n, args.eval_images = 30, 10, 4, 4, 16
  os.makedirs(args.out, exist_ok=True)
  cfg = bench_config()
  trainer = Trainer(cfg)
  hb = heldout_batch(trainer, cfg)
  results = {"config": "tiny", "args": vars(args), "device": str(jax.devices()[0])}
  t0 = time.time()
  results["growth"], deep = part_growth(trainer, cfg, args.steps, args.out)
  print(json.dumps(results["growth"], indent=1), flush=True)
  results["pruning"] = part_pruning(trainer, cfg, deep, args.finetune, args.out, hb, args.eval_images)
  print(json.dumps(results["pruning"], indent=1), flush=True)
  results["best_of_n"] = part_best_of_n(trainer, cfg, deep, args.prompts, args.max_n)
  print(json.dumps(results["best_of_n"], indent=1), flush=True)
  results["seconds"] = time.time() - t0
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  print(f"done in {results['seconds']:.0f}s -> {args.out}/results.json")


if __name__ == "__main__":
  main()

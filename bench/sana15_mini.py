"""SANA 1.5's three scaling techniques, reproduced in miniature on the CPU with the shapes data.

COMMAND: python bench/sana15_mini.py --out docs/sana15_mini [--config tiny24] [--steps 3000] [--seeds 1,2,3] [--quick]

Every claim is measured once per seed (model initialisation, data order and sampling noise all
change with it) and reported as mean and spread over the seeds.
(i)   growth: train a depth-D/2 model for `steps` steps, grow it to depth D (constant, identity new
      blocks) and train `steps` more; train a depth-D model from scratch for 2*`steps` steps. Report
      the deep steps (and block-steps, a compute measure) the grown run needs to reach the scratch
      run's final loss (both as --smooth-step means; and the steps the scratch run itself needs by
      that criterion), and its evaluator score at each quarter of the grown phase against the
      scratch run's score at the end.
(ii)  pruning: prune the scratch depth-D model to D/2 blocks by block importance, by dropping the
      last blocks and by a random choice; held-out flow loss (fixed noise and timesteps) and the
      shapes evaluator's score before and after `finetune` steps.
(iii) best-of-N: 32 candidates per held-out prompt from the scratch depth-D model; the shapes
      evaluator's score of the pick for N = 1..32 with judges that are not the evaluator: a small
      contrastive image-caption scorer trained on shapes renders (sana_jax.scaling.contrastive,
      fitted once and kept in <out>/judge), and a "diffusion classifier" score from the model
      itself (how much the prompt lowers its denoising error versus the null prompt); and with the
      evaluator as an oracle (any correct candidate among the first N).
The model, data, codecs and optimiser are those of --config: tiny24 (the default job's since the
eleventh round of docs/training.md: 24 px, one token per layout cell, width 64, depth D = 4,
x-prediction) or tiny (the default before it: 32 px, the fitted conv autoencoder, run without the
pooled caption as when docs/sana15_mini.md first measured it). Writes results.json,
loss_curves.png and importance.png under --out.
"""
import argparse
import json
import os
import pathlib
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from sana_jax import configs  # noqa: E402
from sana_jax.data import pipeline, shapes_eval  # noqa: E402
from sana_jax.optim.registry import build_optimizer, make_schedule  # noqa: E402
from sana_jax.scaling import block_importance, contrastive, grow, prune  # noqa: E402
from sana_jax.scaling.best_of_n import selection_curve  # noqa: E402
from sana_jax.training import host, loop, step, train_state  # noqa: E402
from sana_jax.training.objective import noisy_latents, shift_sigma  # noqa: E402


class Trainer:
  """The training step of `python -m sana_jax.train`, driven from here so runs can start from any model."""

  def __init__(self, cfg):
    self.cfg = cfg
    self.autoencoder, self.text_encoder = loop.build_codecs(cfg)
    self.null_text, self.null_mask = (jnp.asarray(a[0]) for a in self.text_encoder.null_embedding())
    self.tx = build_optimizer(cfg.optimizer)
    self._steps, self._samplers = {}, {}

  def _update(self, model_cfg):
    key = (model_cfg.depth, model_cfg.qk_norm)
    if key not in self._steps:
      graphdef = train_state.model_graphdef(model_cfg)
      fn = step.make_train_step(graphdef, self.tx, self.cfg.train, null_text=self.null_text,
                                null_mask=self.null_mask, seed=self.cfg.seed, learning_rate_fn=make_schedule(self.cfg.optimizer),
                                encode_images=loop.image_encoder(self.autoencoder))
      self._steps[key] = step.jit_train_step(fn)
    return self._steps[key]

  def sampler(self, graphdef):
    """The loop's sampler for models of this graphdef, compiled once."""
    if graphdef not in self._samplers:
      self._samplers[graphdef] = loop.make_sampler(graphdef, self.autoencoder, self.text_encoder, self.cfg.sampling)
    return self._samplers[graphdef]

  def train(self, model, num_steps, data_seed, eval_every=0, evaluate=None):
    """Fresh optimiser state, `num_steps` steps (the next batch read on a background thread);
    -> (trained model, per-step losses, [(step, evaluate(model))] every `eval_every` steps)."""
    params = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))  # the step donates its state
    state = train_state.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params),
                                   ema_params=None)
    data = pipeline.make_dataset(self.cfg.data, self.cfg.train.batch_size, data_seed)
    prepare = lambda b: jax.device_put(loop.encode_batch(b, self.autoencoder, self.text_encoder, in_step=True))
    update = self._update(model.cfg)
    graphdef = nnx.graphdef(model)
    losses, scores = [], []
    with host.Prefetcher(data, prepare, depth=2, thread_priority=self.cfg.data.thread_priority) as batches:
      for i in range(num_steps):
        state, metrics = update(state, next(batches)[0])
        losses.append(metrics["loss"])  # read back at the end: no sync per step
        if evaluate is not None and eval_every and (i + 1) % eval_every == 0:
          scores.append((i + 1, evaluate(nnx.merge(graphdef, state.params))))
    return nnx.merge(graphdef, state.params), [float(x) for x in jax.device_get(losses)], scores


def heldout_batch(trainer, cfg, count=64, seed=123):
  """Fixed held-out latents, captions, noise and timesteps for a deterministic validation loss."""
  prompts, specs = loop.heldout_shapes(cfg, count)
  rng = np.random.default_rng(seed)
  from sana_jax.data import shapes
  images = np.stack([shapes.render(s, rng, cfg.data.image_size) for s in specs]).astype(np.float32) / 127.5 - 1
  latents = loop.image_encoder(trainer.autoencoder)(images)
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
  sampler = trainer.sampler(nnx.graphdef(model))
  prompts, specs = loop.heldout_shapes(cfg, count)
  hw = cfg.data.image_size // trainer.autoencoder.spatial_compression_ratio
  images = sampler(nnx.state(model), prompts, seed, (hw, hw, cfg.model.in_channels))
  return shapes_eval.score(list(images), specs)["overall"]


def bench_config(name):
  """The preset `name`; "tiny" as the default job ran it when docs/sana15_mini.md was first measured
  (model, data, fitted autoencoder, optimiser, sampler): without the pooled caption, tiny's default since."""
  cfg = configs.get_config(name)
  if name == "tiny":
    cfg.model.pooled_caption = False
  return cfg


def smooth(x, k):
  x = np.asarray(x)
  return np.convolve(x, np.ones(k) / k, mode="valid") if len(x) >= k else x


def _first_reaching(values, target):
  hits = np.nonzero(np.asarray(values) <= target)[0]
  return None if hits.size == 0 else int(hits[0])


def steps_to_loss(losses, target, window):
  """Steps until the `window`-step mean of `losses` first reaches `target` (None: never)."""
  reached = _first_reaching(smooth(losses, window), target)
  return None if reached is None else reached + window  # the smoothed curve's index + its window


def part_growth(trainer, cfg, steps, seed, eval_count, window):
  """One seed of (i) -> (result, the scratch deep model, loss curves)."""
  deep_cfg = cfg.model
  shallow_cfg = cfg.model.copy_and_resolve_references()
  shallow_cfg.depth = deep_cfg.depth // 2
  score = lambda m: evaluator_score(trainer, m, cfg, eval_count, seed=100 + seed)
  t0 = time.time()
  shallow, shallow_losses, _ = trainer.train(train_state.build_model(shallow_cfg, seed), steps, data_seed=10 * seed)
  t_shallow = time.time() - t0
  grown, grown_losses, grown_scores = trainer.train(grow(shallow, deep_cfg.depth, "constant"), steps,
                                                    data_seed=10 * seed + 1, eval_every=max(1, steps // 4),
                                                    evaluate=score)
  t_grown = time.time() - t0 - t_shallow
  scratch, scratch_losses, scratch_scores = trainer.train(train_state.build_model(deep_cfg, seed), 2 * steps,
                                                          data_seed=10 * seed, eval_every=max(1, steps // 2),
                                                          evaluate=score)
  t_scratch = time.time() - t0 - t_shallow - t_grown
  target_loss = float(smooth(scratch_losses, window)[-1])
  target_score = scratch_scores[-1][1] if scratch_scores else score(scratch)
  loss_steps = steps_to_loss(grown_losses, target_loss, window)
  score_steps = next((s for s, v in grown_scores if v >= target_score), None)
  block_steps = lambda deep_steps: None if deep_steps is None else steps * shallow_cfg.depth + deep_steps * deep_cfg.depth
  result = {
      "seed": seed, "steps_per_phase": steps,
      "scratch_final_smoothed_loss": target_loss, "grown_final_smoothed_loss": float(smooth(grown_losses, window)[-1]),
      "shallow_final_smoothed_loss": float(smooth(shallow_losses, window)[-1]), "smoothing_window": window,
      "scratch_scores": scratch_scores, "grown_scores": grown_scores,
      "grown_deep_steps_to_scratch_loss": loss_steps, "grown_deep_steps_to_scratch_score": score_steps,
      "scratch_block_steps": 2 * steps * deep_cfg.depth,
      # the same criterion on the scratch run itself: its mean first dips to its final value before the end
      "scratch_deep_steps_to_own_final_loss": steps_to_loss(scratch_losses, target_loss, window),
      "grown_block_steps_to_scratch_loss": block_steps(loss_steps),
      "grown_block_steps_to_scratch_score": block_steps(score_steps),
      "seconds": {"shallow": round(t_shallow, 1), "grown": round(t_grown, 1), "scratch": round(t_scratch, 1)},
  }
  return result, scratch, (shallow_losses, grown_losses, scratch_losses)


def _plot_curves(out, curves_by_seed, window):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.5, 3.8))
  for i, (seed, (shallow, grown, scratch)) in enumerate(curves_by_seed.items()):
    n = len(shallow)
    kw = dict(alpha=0.9 if i == 0 else 0.45)
    ax.plot(np.arange(len(smooth(scratch, window))) + window, smooth(scratch, window), color="C0", label="deep, from scratch" if i == 0 else None, **kw)
    ax.plot(np.arange(len(smooth(shallow, window))) + window, smooth(shallow, window), color="C1", label="shallow (before growth)" if i == 0 else None, **kw)
    ax.plot(n + np.arange(len(smooth(grown, window))) + window, smooth(grown, window), color="C2", label="grown (constant)" if i == 0 else None, **kw)
  ax.set_xlabel("training step (total)")
  ax.set_ylabel(f"flow loss ({window}-step mean)")
  ax.set_ylim(top=1.0)
  ax.set_title(f"seeds {', '.join(map(str, curves_by_seed))}")
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(out, "loss_curves.png"), dpi=100)
  plt.close(fig)


def part_pruning(trainer, cfg, deep, finetune, hb, eval_count, seed, out=None):
  calib_prompts, _ = loop.heldout_shapes(cfg, 16)
  text, mask = trainer.text_encoder.encode(calib_prompts)
  hw = cfg.data.image_size // trainer.autoencoder.spatial_compression_ratio
  bi = block_importance(deep, np.asarray(text), np.asarray(mask), (hw, hw), [900, 700, 500, 300, 100])
  if out:
    bi.save(os.path.join(out, "importance.json"), os.path.join(out, "importance.png"))
  depth = deep.cfg.depth // 2
  rng = np.random.default_rng(seed)
  choices = {
      "importance": dict(depth=depth, importance=bi.scores),
      "drop_last": dict(blocks=list(range(depth))),
      "random": dict(blocks=sorted(rng.choice(deep.cfg.depth, depth, replace=False).tolist())),
  }
  score = lambda m: evaluator_score(trainer, m, cfg, eval_count, seed=100 + seed)
  result = {"seed": seed, "block_importance": bi.scores.tolist(), "full_model_val_loss": val_loss(deep, hb),
            "full_model_score": score(deep)}
  for name, kwargs in choices.items():
    pruned = prune(deep, **kwargs)
    tuned, _, _ = trainer.train(pruned, finetune, data_seed=10 * seed + 3)
    result[name] = {
        "blocks": kwargs.get("blocks") or sorted(np.argsort(-bi.scores)[:depth].tolist()),
        "val_loss_before": val_loss(pruned, hb), "val_loss_after": val_loss(tuned, hb),
        "score_before": score(pruned), "score_after": score(tuned),
    }
  return result


def part_best_of_n(trainer, cfg, deep, num_prompts, max_n, judge, seed):
  """Generates max_n candidates per prompt once; the pick for N uses the first N of them."""
  prompts, specs = loop.heldout_shapes(cfg, num_prompts)
  sampler = trainer.sampler(nnx.graphdef(deep))
  hw = cfg.data.image_size // trainer.autoencoder.spatial_compression_ratio
  params = nnx.state(deep)
  cands = np.stack([sampler(params, [p] * max_n, 1000 * seed + i, (hw, hw, cfg.model.in_channels))
                    for i, p in enumerate(prompts)])  # [P, N, H, W, 3] in [-1, 1]
  correct = np.array([[shapes_eval.evaluate_image(im, s) for im in c] for c, s in zip(cands, specs)], float)
  picks = {"contrastive": np.stack([judge.scores(c, p) for c, p in zip(cands, prompts)]),  # [P, N]
           "diffusion_classifier": diffusion_classifier_scores(trainer, deep, cands, prompts, cfg)}
  result = {"seed": seed, "num_prompts": num_prompts, "candidate_accuracy": float(correct.mean())}
  curves = {name: selection_curve(s, correct, max_n) for name, s in picks.items()}
  n = 1
  while n <= max_n:
    row = {name: curve[f"N={n}"]["judge"] for name, curve in curves.items()}
    row["oracle"] = curves["contrastive"][f"N={n}"]["oracle"]
    result[f"N={n}"] = row
    n *= 2
  return result


def diffusion_classifier_scores(trainer, model, cands, prompts, cfg, timesteps=(300, 500, 700)):
  """score = mean over t of ||v(x_t, null) - target||^2 - ||v(x_t, prompt) - target||^2: how much the
  prompt explains the image, judged by the model itself (not the evaluator)."""
  p, n = cands.shape[:2]
  latents = loop.image_encoder(trainer.autoencoder)(cands.reshape(p * n, *cands.shape[2:]))
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


def spread(values):
  """{mean, std, values} over seeds (None entries, e.g. a target never reached, are counted apart)."""
  got = [v for v in values if v is not None]
  out = {"values": list(values)}
  if got:
    out.update(mean=float(np.mean(got)), std=float(np.std(got)))
  if len(got) < len(values):
    out["not_reached"] = len(values) - len(got)
  return out


def summarize(growth, pruning, best):
  g = {k: spread([r[k] for r in growth]) for k in (
      "scratch_final_smoothed_loss", "grown_final_smoothed_loss", "grown_deep_steps_to_scratch_loss",
      "grown_deep_steps_to_scratch_score", "grown_block_steps_to_scratch_loss", "grown_block_steps_to_scratch_score",
      "scratch_deep_steps_to_own_final_loss")}
  g["scratch_final_score"] = spread([r["scratch_scores"][-1][1] for r in growth])
  g["grown_final_score"] = spread([r["grown_scores"][-1][1] for r in growth])
  g["scratch_block_steps"] = growth[0]["scratch_block_steps"]
  p = {"full_model_score": spread([r["full_model_score"] for r in pruning]),
       "full_model_val_loss": spread([r["full_model_val_loss"] for r in pruning])}
  for name in ("importance", "drop_last", "random"):
    p[name] = {k: spread([r[name][k] for r in pruning])
               for k in ("val_loss_before", "val_loss_after", "score_before", "score_after")}
  b = {"candidate_accuracy": spread([r["candidate_accuracy"] for r in best])}
  for key in [k for k in best[0] if k.startswith("N=")]:
    b[key] = {name: spread([r[key][name] for r in best]) for name in best[0][key]}
  return {"growth": g, "pruning": p, "best_of_n": b}


def _fmt(entry, digits=3):
  """'mean ± std (v1 / v2 / v3)' of a `spread` entry; '-' marks a seed that never reached the target."""
  if "mean" not in entry:
    return "not reached (" + " / ".join("-" for _ in entry["values"]) + ")"
  values = " / ".join("-" if v is None else f"{v:.{digits}f}" for v in entry["values"])
  return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f} ({values})"


def report(results) -> str:
  """The summary as the markdown tables docs/sana15_mini.md quotes."""
  g, p, b = (results["summary"][k] for k in ("growth", "pruning", "best_of_n"))
  steps = results["args"]["steps"]
  lines = [f"seeds {results['args']['seeds']}; contrastive judge: {results['judge']}", "",
           f"(i) growth, {steps} steps per phase (depth 4 from scratch: {2 * steps} steps = "
           f"{g['scratch_block_steps']} block-steps); losses are {results['args'].get('smooth', 25)}-step means", "",
           "| | mean ± std over seeds (per seed) |", "|---|---|",
           f"| scratch final loss | {_fmt(g['scratch_final_smoothed_loss'], 4)} |",
           f"| grown final loss | {_fmt(g['grown_final_smoothed_loss'], 4)} |",
           f"| scratch final score | {_fmt(g['scratch_final_score'])} |",
           f"| grown final score | {_fmt(g['grown_final_score'])} |",
           f"| grown: deep steps to the scratch loss | {_fmt(g['grown_deep_steps_to_scratch_loss'], 0)} |",
           f"| grown: block-steps to the scratch loss | {_fmt(g['grown_block_steps_to_scratch_loss'], 0)} |",
           f"| grown: deep steps to the scratch score | {_fmt(g['grown_deep_steps_to_scratch_score'], 0)} |",
           *([f"| scratch: deep steps to its own final loss (same criterion) | "
              f"{_fmt(g['scratch_deep_steps_to_own_final_loss'], 0)} |"] if "scratch_deep_steps_to_own_final_loss" in g else []),
           "", f"(ii) pruning to half depth; full model: loss {_fmt(p['full_model_val_loss'], 4)}, "
           f"score {_fmt(p['full_model_score'])}", "",
           "| kept blocks | loss before | loss after | score before | score after |", "|---|---|---|---|---|"]
  for name in ("importance", "drop_last", "random"):
    q = p[name]
    lines.append(f"| {name} | {_fmt(q['val_loss_before'])} | {_fmt(q['val_loss_after'])} | "
                 f"{_fmt(q['score_before'])} | {_fmt(q['score_after'])} |")
  ns = [k for k in b if k.startswith("N=")]
  lines += ["", f"(iii) best-of-N, candidate accuracy {_fmt(b['candidate_accuracy'])}", "",
            "| N | " + " | ".join(k[2:] for k in ns) + " |", "|---|" + "---|" * len(ns)]
  for judge in b[ns[0]]:
    lines.append(f"| {judge} | " + " | ".join(f"{b[k][judge]['mean']:.3f} ± {b[k][judge]['std']:.3f}" for k in ns) + " |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--report", default="", help="only print the tables of this results.json")
  parser.add_argument("--out", default="docs/sana15_mini")
  parser.add_argument("--config", default="tiny24", choices=["tiny24", "tiny"], help="the model and data (see above)")
  parser.add_argument("--steps", type=int, default=3000, help="training steps per growth phase")
  parser.add_argument("--smooth", type=int, default=250, help="loss curves are compared as means over this many "
                      "steps (one step's loss moves by about ±0.05 with the batch and the noise draw, so a short "
                      "window reaches a target by chance)")
  parser.add_argument("--finetune", type=int, default=200, help="fine-tune steps after pruning")
  parser.add_argument("--prompts", type=int, default=24, help="held-out prompts for best-of-N")
  parser.add_argument("--max_n", type=int, default=32)
  parser.add_argument("--eval_images", type=int, default=96)
  parser.add_argument("--seeds", default="1,2,3")
  parser.add_argument("--judge_steps", type=int, default=1500, help="contrastive judge fit (when <out>/judge is absent)")
  parser.add_argument("--quick", action="store_true", help="a smoke run: 30 steps, few prompts, one seed")
  args = parser.parse_args()
  if args.report:
    with open(args.report) as f:
      print(report(json.load(f)))
    return
  if args.quick:
    args.steps, args.finetune, args.prompts, args.max_n, args.eval_images, args.smooth = 30, 10, 4, 4, 12, 10
    args.seeds, args.judge_steps = "1", 50
  seeds = [int(s) for s in args.seeds.split(",")]
  os.makedirs(args.out, exist_ok=True)
  t0 = time.time()
  cfg = bench_config(args.config)
  trainer = Trainer(cfg)
  if args.quick:  # a 50-step judge, never saved where a real run would read it
    judge = contrastive.fit(steps=args.judge_steps,
                            config=contrastive.ContrastiveConfig(image_size=cfg.data.image_size))
  else:  # the training loop's: <out>/judge read (its image size checked) or fitted and saved there
    cfg.sampling.eval_judge_steps = args.judge_steps
    try:
      judge = loop.load_or_fit_judge(cfg, pathlib.Path(args.out))
    except ValueError as err:
      sys.exit(str(err))
  print(f"contrastive judge: {judge.report}", flush=True)
  hb = heldout_batch(trainer, cfg)
  results = {"config": args.config, "args": vars(args), "device": str(jax.devices()[0]), "judge": judge.report,
             "growth": [], "pruning": [], "best_of_n": []}
  curves = {}
  for seed in seeds:
    growth, deep, curves[seed] = part_growth(trainer, cfg, args.steps, seed, args.eval_images, args.smooth)
    results["growth"].append(growth)
    print(json.dumps(growth), flush=True)
    results["pruning"].append(part_pruning(trainer, cfg, deep, args.finetune, hb, args.eval_images, seed,
                                           out=args.out if seed == seeds[0] else None))
    print(json.dumps(results["pruning"][-1]), flush=True)
    results["best_of_n"].append(part_best_of_n(trainer, cfg, deep, args.prompts, args.max_n, judge, seed))
    print(json.dumps(results["best_of_n"][-1]), flush=True)
  _plot_curves(args.out, curves, args.smooth)
  np.savez_compressed(os.path.join(args.out, "loss_curves.npz"),  # every step's loss, for other comparisons
                      **{f"seed{seed}_{phase}": np.asarray(c, np.float32) for seed, cs in curves.items()
                         for phase, c in zip(("shallow", "grown", "scratch"), cs)})
  results["summary"] = summarize(results["growth"], results["pruning"], results["best_of_n"])
  results["seconds"] = round(time.time() - t0, 1)
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  print(report(results))
  print(f"done in {results['seconds']:.0f}s -> {args.out}/results.json")


if __name__ == "__main__":
  main()

"""Best-of-N on a training run's own model: the contrastive judge's picks against the oracle.

    python bench/best_of_n_run.py WORKDIR [--n 16] [--judge_steps 1500,5000] [--judge DIR]

Draws N candidates for each of the run's `sampling.num_eval_images` held-out prompts (the loop's
sampler and settings; candidate j of every prompt uses sampling seed --seed + j), marks each with the
shapes evaluator, then for each judge (a contrastive judge fitted with each --judge_steps, or the
saved one in --judge) prints one JSON line: the accuracy of its pick among the first N candidates
for N = 1, 2, 4, ... ("judge") next to the oracle's (any right candidate among them), "pair_auc"
(how often a right candidate of a prompt outscores a wrong one: 0.5 = chance), the per-task
accuracy of its picks at the largest N, and how often its picks have the number of objects the
caption asks for (overall and per task, against the candidates'). Then a markdown table of the curves.

The evaluator only marks candidates here (and counts objects); the judges never see it.
"""
import argparse
import json
import time

import numpy as np
from flax import nnx

from sana_jax.convert.training_run import load_training_run
from sana_jax.data import shapes_eval
from sana_jax.scaling import contrastive
from sana_jax.scaling.best_of_n import selection_curve
from sana_jax.training import loop
from train_ablation import heldout_sampler


def candidates(run, codecs, n, seed):
  """-> (images float [P, N, H, W, 3] in [-1, 1], prompts, specs) for the run's held-out prompts."""
  graphdef, params = nnx.split(run.transformer)
  draw, prompts, specs = heldout_sampler(run.config, graphdef, codecs)
  return np.stack([draw(params, seed + j) for j in range(n)], axis=1), prompts, specs


def right_count(image, spec) -> bool:
  return len(shapes_eval.detect_objects(image)) == sum(g.count for g in spec.groups)


def judge_report(name, judge, images, prompts, specs, correct, counts):
  scores = np.stack([judge.scores(c, p) for c, p in zip(images, prompts)])  # [P, N]
  pick = np.argmax(scores, axis=1)
  rows = np.arange(len(prompts))
  tasks = np.asarray([s.task for s in specs])
  hits, picked_counts = correct[rows, pick], counts[rows, pick]
  per_task = lambda values: {t: round(float(values[tasks == t].mean()), 3) for t in dict.fromkeys(tasks)}
  return {"judge": name, **selection_curve(scores, correct), "picks_per_task": per_task(hits),
          "picks_right_count": round(float(picked_counts.mean()), 3),
          "picks_right_count_per_task": per_task(picked_counts),
          "candidates_right_count": round(float(counts.mean()), 3)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdir")
  parser.add_argument("--n", type=int, default=16, help="candidates per prompt")
  parser.add_argument("--seed", type=int, default=100, help="sampling seed of candidate 0")
  parser.add_argument("--judge_steps", default="1500", help="comma-separated: fit a contrastive judge with each")
  parser.add_argument("--judge", default="", help="a saved contrastive judge folder instead of fitting")
  args = parser.parse_args()
  run = load_training_run(args.workdir)
  codecs = loop.build_codecs(run.config, run.workdir, allow_fit=False)
  t0 = time.perf_counter()
  images, prompts, specs = candidates(run, codecs, args.n, args.seed)
  correct = np.array([[shapes_eval.evaluate_image(im, s) for im in c] for c, s in zip(images, specs)])
  counts = np.array([[right_count(im, s) for im in c] for c, s in zip(images, specs)])
  print(json.dumps({"step": run.step, "prompts": len(prompts), "n": args.n,
                    "candidate_accuracy": round(float(correct.mean()), 3),
                    "candidates_s": round(time.perf_counter() - t0, 1)}), flush=True)
  judges = [(f"contrastive:{args.judge}", contrastive.load(args.judge))] if args.judge else []
  for steps in ([] if args.judge else [int(s) for s in args.judge_steps.split(",")]):
    judge = contrastive.fit(steps=steps, progress=False,  # on renders of the run's image size
                            config=contrastive.ContrastiveConfig(image_size=run.config.data.image_size))
    judges.append((f"contrastive, {steps} steps (fit {judge.report['seconds']} s, "
                   f"hard negatives on renders {judge.report['hard_negative_accuracy']})", judge))
  reports = []
  for name, judge in judges:
    reports.append(judge_report(name, judge, images, prompts, specs, correct, counts))
    print(json.dumps(reports[-1]), flush=True)
  ns = [k for k in reports[0] if k.startswith("N=")]
  print("\n| pick | " + " | ".join(ns) + " | pair AUC |")
  print("|---" * (len(ns) + 2) + "|")
  for r in reports:
    print(f"| {r['judge']} | " + " | ".join(f"{r[k]['judge']:.3f}" for k in ns) + f" | {r['pair_auc']:.3f} |")
  print("| oracle | " + " | ".join(f"{reports[0][k]['oracle']:.3f}" for k in ns) + " | |")


if __name__ == "__main__":
  main()

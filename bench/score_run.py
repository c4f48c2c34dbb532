"""Score a training workdir's newest checkpoint with the shapes evaluator over several sampling seeds.

    python bench/score_run.py WORKDIR [--seeds 1,2,3] ["sampling.guidance_interval=(0.0,0.7)" ...]
    python bench/score_run.py WORKDIR --binding

Each positional setting is one set of sampling overrides ('|'-separated fields, values as Python
literals; "" = the run's own settings); for each it samples the run's `sampling.num_eval_images`
held-out prompts once per seed and prints one JSON line: the overall score per seed and the per-task
means. One scoring of 192 images moves by about +-0.03 between seeds (docs/training.md), so rank
sampling settings by the mean over seeds, not by one draw.
"""
import argparse
import json

import numpy as np
from flax import nnx

from sana_jax.convert.training_run import load_training_run
from sana_jax.training import loop
from train_ablation import apply_overrides, binding_check, make_evaluator


def score(run, overrides, seeds, codecs):
  """-> {"overall_per_seed": [...], task: mean over seeds, ..., "overall": mean}."""
  cfg = apply_overrides(run.config.copy_and_resolve_references(), overrides)
  graphdef, params = nnx.split(run.transformer)
  evaluate = make_evaluator(cfg, graphdef, codecs)
  scores = [evaluate(params, seed)[0] for seed in seeds]
  return {"overall_per_seed": [round(s["overall"], 3) for s in scores],
          **{task: round(float(np.mean([s[task] for s in scores])), 3) for task in scores[0]}}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdir")
  parser.add_argument("--seeds", default="1,2,3", help="comma-separated sampling seeds")
  parser.add_argument("settings", nargs="*", help="sampling overrides, '|'-separated; \"\" = the run's own")
  parser.add_argument("--binding", action="store_true",
                      help="instead print train_ablation.binding_check: right vs binding-swapped captions")
  args = parser.parse_intermixed_args()
  run = load_training_run(args.workdir)
  codecs = loop.build_codecs(run.config, run.workdir, allow_fit=False)  # the run's own (fitted) autoencoder
  if args.binding:
    graphdef, params = nnx.split(run.transformer)
    print(json.dumps({"step": run.step, "binding": binding_check(run.config, graphdef, params, codecs)}))
    return
  for setting in args.settings or [""]:
    overrides = [s for s in setting.split("|") if s]
    seeds = [int(x) for x in args.seeds.split(",")]
    print(json.dumps({"step": run.step, "setting": setting, **score(run, overrides, seeds, codecs)}), flush=True)


if __name__ == "__main__":
  main()

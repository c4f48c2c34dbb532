"""Train a SANA model: `python -m sana_jax.train [--config=configs/X.py | --config=NAME] [--workdir=DIR]`.

With no flags it trains configs/tiny24.py on the built-in shapes data on the CPU. Override any config
value from the command line, e.g. `--config.train.num_steps=200 --config.optimizer.name=came`.
Running again with the same --workdir resumes from its newest checkpoint (docs/training.md,
"Resuming", lists what may change on resume). SIGTERM or Ctrl-C stop with a checkpoint.
"""
import os

from absl import flags
from ml_collections import config_flags

from sana_jax import cli, compilation_cache, configs, host_memory

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(configs.__file__), "tiny24.py"),
    "Training config: a configs/*.py file (with get_config()) or a preset name such as tiny24.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where checkpoints, logs and samples go (default: ./workdirs/<model name>).")


def main(argv):
  host_memory.setup_from_flags()  # before JAX starts its CPU client
  compilation_cache.enable()
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]} (config values go as --config.a.b=value)")
  from sana_jax.data import shapes_eval
  from sana_jax.training import loop
  cfg = _CONFIG.value
  workdir = _WORKDIR.value or os.path.join("workdirs", cfg.model.name)
  print(f"workdir: {os.path.abspath(workdir)}  (tensorboard --logdir {workdir}/tensorboard)", flush=True)
  summary = loop.train_and_evaluate(cfg, workdir)
  if "stopped" in summary:
    saved = summary["saved"]
    print(f"{summary['stopped']}: stopped at step {summary['step']} " +
          (f"(checkpoint {saved} saved in {os.path.join(workdir, 'checkpoints')})" if saved is not None
           else "(no checkpoint saved)"), flush=True)
    return
  if "shapes_score" in summary:
    print("shapes evaluator, held-out prompts:")
    print(shapes_eval.score_table(summary["shapes_score"], summary["shapes_counts"]))
    if "eval_grid" in summary:
      print(f"each image with its prompt and verdict: {summary['eval_grid']}")
    best = summary.get("best_of")
    if best:
      print(f"best of {best['n']} per prompt, kept by the run's contrastive judge (SANA 1.5's "
            f"inference-time scaling; the judge never sees the evaluator):")
      print(shapes_eval.score_table(best["shapes_score"], best["shapes_counts"]))
      print(f"each kept image with its prompt and verdict: {best['eval_grid']}")
  print(f"done: step {summary['step']} (checkpoint {summary['saved']} saved); samples in "
        f"{os.path.join(workdir, 'samples')}", flush=True)


if __name__ == "__main__":
  cli.run(main)

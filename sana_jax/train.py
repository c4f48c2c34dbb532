"""Train a SANA model: `python -m sana_jax.train [--config=configs/X.py] [--workdir=DIR]`.

With no flags it trains configs/tiny.py on the built-in shapes data on the CPU. Override any config
value from the command line, e.g. `--config.train.num_steps=200 --config.optimizer.name=came`.
Running again with the same --workdir resumes from its newest checkpoint.
"""
import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from sana_jax import compilation_cache
from sana_jax import configs
from sana_jax.training import loop

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(configs.__file__), "tiny.py"),
    "Training config file (a configs/*.py with get_config()).")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where checkpoints, logs and samples go (default: ./workdirs/<model name>).")


def main(argv):
  compilation_cache.enable()
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax reports every save at INFO
  cfg = _CONFIG.value
  workdir = _WORKDIR.value or os.path.join("workdirs", cfg.model.name)
  print(f"workdir: {os.path.abspath(workdir)}  (tensorboard --logdir {workdir}/tensorboard)", flush=True)
  try:
    summary = loop.train_and_evaluate(cfg, workdir)
  except loop.TrainingDiverged as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  if "shapes_score" in summary:
    print("shapes evaluator score of the samples:", json.dumps(summary["shapes_score"]))
  print(f"done: step {summary['step']}; samples in {os.path.join(workdir, 'samples')}", flush=True)


if __name__ == "__main__":
  app.run(main)

"""Prune a transformer to fewer blocks (SANA 1.5 depth pruning):

  python -m sana_jax.prune --src CKPT --dst CKPT --depth 40 --calibration calib.npz [--report_dir DIR]
  python -m sana_jax.prune --src CKPT --dst CKPT --depth 40 --importance DIR/block_importance.json
  python -m sana_jax.prune --src CKPT --dst CKPT --blocks 0,1,2,5,7
  python -m sana_jax.prune --src CKPT --calibration calib.npz --report_dir DIR   (scores only)

CKPT: any format `load_transformer` reads (a training workdir too). --calibration: an .npz with `text` [P, L, C] and `text_mask` [P, L] (the calibration prompts'
embeddings) and optionally `latents` [P, H, W, C_in] (clean latents, noised per timestep); without
latents the blocks are scored along the model's own Euler sampling trajectory at --latent_size.
The scores go to DIR/block_importance.json and DIR/block_importance.png. Fine-tune the pruned
model briefly afterwards (the paper: ~100 steps).
"""
from absl import app, flags

from sana_jax import cli, compilation_cache

FLAGS = flags.FLAGS
flags.DEFINE_string("src", None, "Checkpoint to prune.", required=True)
flags.DEFINE_string("dst", None, "Folder for the pruned checkpoint (our format); omit to only score.")
flags.DEFINE_integer("depth", None, "Keep this many blocks, the most important ones.")
flags.DEFINE_list("blocks", None, "Keep exactly these block indices (comma separated).")
flags.DEFINE_string("importance", None, "A block_importance.json from an earlier run.")
flags.DEFINE_string("calibration", None, "An .npz of calibration inputs (see the module docstring).")
flags.DEFINE_list("timesteps", ["100", "300", "500", "700", "900"], "Timesteps (0..1000) to average over.")
flags.DEFINE_list("latent_size", None, "H,W of the latents for trajectory mode (default: the model's sample_size).")
flags.DEFINE_integer("batch_size", 8, "Calibration prompts per forward pass.")
flags.DEFINE_integer("seed", 0, "Seed of the calibration noise.")
flags.DEFINE_string("report_dir", None, "Where block_importance.json / .png go (default: DST, else cwd).")
cli.DEFINE_config("config", "Config of an NVlabs .pth source: a preset name or a config file.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Parameter dtype.")
for _name in ("latent_size", "batch_size", "report_dir"):
  flags.DEFINE_alias(_name.replace("_", "-"), _name)


def main(argv):
  compilation_cache.enable()
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.blocks is not None and (FLAGS.depth is not None or FLAGS.importance or FLAGS.calibration):
    raise app.UsageError("--blocks names the kept blocks itself; do not combine it with --depth, "
                         "--importance or --calibration")
  if FLAGS.blocks is None and not (FLAGS.importance or FLAGS.calibration):
    raise app.UsageError("give --blocks, or --depth with --importance or --calibration")
  if FLAGS.dst and FLAGS.blocks is None and FLAGS.depth is None:
    raise app.UsageError("--dst needs --depth or --blocks")
  if FLAGS.importance and FLAGS.calibration:
    raise app.UsageError("give either --importance (precomputed) or --calibration (score now), not both")
  import os

  import jax.numpy as jnp
  import numpy as np

  from sana_jax.convert.checkpoints import load_transformer, save_transformer
  from sana_jax.scaling.importance import block_importance, load_importance
  from sana_jax.scaling.pruning import most_important_blocks, prune

  model = load_transformer(FLAGS.src, config=FLAGS.config, dtype=jnp.dtype(FLAGS.dtype))
  scores = None
  if FLAGS.importance:
    scores = load_importance(FLAGS.importance)
  elif FLAGS.calibration:
    calib = np.load(FLAGS.calibration)
    missing = {"text", "text_mask"} - set(calib.files)
    if missing:
      raise app.UsageError(f"{FLAGS.calibration} lacks {sorted(missing)} (has {calib.files})")
    size = FLAGS.latent_size or [model.cfg.sample_size] * 2
    latents = calib["latents"] if "latents" in calib.files else tuple(int(s) for s in size)
    result = block_importance(model, calib["text"], calib["text_mask"], latents,
                              [float(t) for t in FLAGS.timesteps], seed=FLAGS.seed, batch_size=FLAGS.batch_size)
    report_dir = FLAGS.report_dir or FLAGS.dst or "."
    os.makedirs(report_dir, exist_ok=True)
    result.save(os.path.join(report_dir, "block_importance.json"), os.path.join(report_dir, "block_importance.png"))
    scores = result.scores
    print("block importance:", " ".join(f"{i}:{s:.4f}" for i, s in enumerate(scores)))
    print("least important first:", result.order(), "->", report_dir)
  if not FLAGS.dst:
    return
  if FLAGS.blocks is not None:
    blocks = [int(b) for b in FLAGS.blocks]
  else:
    blocks = most_important_blocks(scores, FLAGS.depth)
  pruned = prune(model, blocks=blocks)
  out = save_transformer(pruned, FLAGS.dst)
  print(f"pruned {model.cfg.depth} -> {pruned.cfg.depth} blocks (kept {sorted(blocks)}) -> {out}")


if __name__ == "__main__":
  cli.run(main)

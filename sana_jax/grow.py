"""Grow a trained transformer deeper (SANA 1.5 depth growth):

  python -m sana_jax.grow --src CKPT --dst CKPT --depth 60 [--source-layers 18] [--strategy constant]

SRC: our checkpoint, a diffusers folder, an NVlabs .pth (with --config) or a training workdir (newest
checkpoint, EMA if any); DST: our checkpoint
(`sana_jax.json` + Orbax params). Train on from DST with a fresh optimiser state. See
sana_jax/scaling/growth.py for the strategies and when the result computes the same function.
"""
from absl import app, flags

from sana_jax import cli, compilation_cache

FLAGS = flags.FLAGS
flags.DEFINE_string("src", None, "Checkpoint to grow.", required=True)
flags.DEFINE_string("dst", None, "Folder for the grown checkpoint (our format).", required=True)
flags.DEFINE_integer("depth", None, "Number of blocks of the grown model.", required=True)
flags.DEFINE_integer("source_layers", None, "Leading source blocks to keep (default: all).")
flags.DEFINE_enum("strategy", "constant", ["constant", "cyclic", "block_expand", "random"], "Growth strategy.")
flags.DEFINE_bool("qk_norm", None, "Give the grown model q/k norms (default: as the source).")
flags.DEFINE_bool("zero_gate", False, "cyclic / block_expand: repeated copies start as identities.")
flags.DEFINE_integer("seed", 0, "Seed of the new blocks' random initialisation.")
cli.DEFINE_config("config", "Config of an NVlabs .pth source: a preset name (SanaMS1.5_1600M_P1_D20) or a file.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Parameter dtype.")
for _name in ("source_layers", "qk_norm", "zero_gate"):
  flags.DEFINE_alias(_name.replace("_", "-"), _name)


def main(argv):
  compilation_cache.enable()
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax.numpy as jnp

  from sana_jax.convert.checkpoints import load_transformer, save_transformer
  from sana_jax.models.transformer import count_params
  from sana_jax.scaling.growth import grow
  source = load_transformer(FLAGS.src, config=FLAGS.config, dtype=jnp.dtype(FLAGS.dtype))
  grown = grow(source, FLAGS.depth, FLAGS.strategy, FLAGS.source_layers, qk_norm=FLAGS.qk_norm,
               zero_gate=FLAGS.zero_gate, seed=FLAGS.seed)
  out = save_transformer(grown, FLAGS.dst)
  print(f"grew {source.cfg.depth} -> {grown.cfg.depth} blocks ({FLAGS.strategy}, qk_norm={grown.cfg.qk_norm}): "
        f"{count_params(source) / 1e6:.2f}M -> {count_params(grown) / 1e6:.2f}M parameters -> {out}")


if __name__ == "__main__":
  cli.run(main)

"""python -m sana_jax.convert {transformer,pipeline} --src SRC --dst DST [--to orbax|diffusers]

transformer: a diffusers folder, an NVlabs .pth (with --config) or our checkpoint -> our Orbax
checkpoint (default) or, with --to diffusers, a diffusers `SanaTransformer2DModel` folder.
pipeline: a diffusers Sana pipeline folder -> our pipeline export (see sana_jax.sampling).
"""
from absl import app, flags

from sana_jax import compilation_cache

FLAGS = flags.FLAGS
flags.DEFINE_string("src", None, "Checkpoint to read.", required=True)
flags.DEFINE_string("dst", None, "Folder to write.", required=True)
flags.DEFINE_enum("to", "orbax", ["orbax", "diffusers"], "Output format.")
flags.DEFINE_string("config", None, "Config name (required for NVlabs .pth files), e.g. SanaMS1.5_4800M_P1_D60.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Parameter dtype of the output.")


def main(argv):
  compilation_cache.enable()
  if len(argv) != 2 or argv[1] not in ("transformer", "pipeline"):
    raise app.UsageError("usage: python -m sana_jax.convert {transformer,pipeline} --src SRC --dst DST")
  import jax.numpy as jnp
  dtype = jnp.dtype(FLAGS.dtype)
  if argv[1] == "pipeline":
    from sana_jax.sampling.pipeline import convert_pipeline
    print(convert_pipeline(FLAGS.src, FLAGS.dst, dtype=dtype))
    return
  from sana_jax.convert.checkpoints import export_diffusers, load_transformer, save_transformer
  from sana_jax.models.transformer import count_params
  model = load_transformer(FLAGS.src, config=FLAGS.config, dtype=dtype)
  out = export_diffusers(model, FLAGS.dst) if FLAGS.to == "diffusers" else save_transformer(model, FLAGS.dst)
  print(f"{model.cfg.name}: {count_params(model) / 1e6:.1f}M parameters, depth {model.cfg.depth}, "
        f"qk_norm={model.cfg.qk_norm} -> {out} ({FLAGS.to})")


if __name__ == "__main__":
  app.run(main)

"""python -m sana_jax.convert {transformer,pipeline} --src SRC --dst DST [--to orbax|diffusers] [--variant bf16]

transformer: a diffusers folder, an NVlabs .pth (with --config), our checkpoint or a training
workdir (newest checkpoint, EMA if any) -> our Orbax checkpoint (default) or, with --to diffusers,
a diffusers `SanaTransformer2DModel` folder.
pipeline: a diffusers Sana pipeline folder or our export -> our export (default) or, with
--to diffusers, a folder diffusers' SanaPipeline.from_pretrained loads (sana_jax/convert/pipeline.py).
--variant: the diffusers weight variant read (*.bf16.safetensors) and, with --to diffusers, written.
"""
from absl import app, flags

from sana_jax import cli, compilation_cache

FLAGS = flags.FLAGS
flags.DEFINE_string("src", None, "Checkpoint to read.", required=True)
flags.DEFINE_string("dst", None, "Folder to write.", required=True)
flags.DEFINE_enum("to", "orbax", ["orbax", "diffusers"], "Output format.")
cli.DEFINE_config("config", "Config (required for NVlabs .pth files): a preset name such as "
                  "SanaMS1.5_4800M_P1_D60 or a config file.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Parameter dtype of the output.")
flags.DEFINE_string("variant", None, "diffusers weight variant to read / write, e.g. bf16.")


def main(argv):
  compilation_cache.enable()
  if len(argv) != 2 or argv[1] not in ("transformer", "pipeline"):
    raise app.UsageError("usage: python -m sana_jax.convert {transformer,pipeline} --src SRC --dst DST")
  import jax.numpy as jnp
  dtype = jnp.dtype(FLAGS.dtype)
  if argv[1] == "pipeline":
    from sana_jax.convert.pipeline import convert_pipeline
    to = "sana_jax" if FLAGS.to == "orbax" else FLAGS.to
    print(f"{convert_pipeline(FLAGS.src, FLAGS.dst, dtype=dtype, to=to, variant=FLAGS.variant)} ({FLAGS.to})")
    return
  from sana_jax.convert.checkpoints import export_diffusers, load_transformer, save_transformer
  from sana_jax.models.transformer import count_params
  model = load_transformer(FLAGS.src, config=FLAGS.config, dtype=dtype, variant=FLAGS.variant)
  out = (export_diffusers(model, FLAGS.dst, variant=FLAGS.variant) if FLAGS.to == "diffusers"
         else save_transformer(model, FLAGS.dst))
  print(f"{model.cfg.name}: {count_params(model) / 1e6:.1f}M parameters, depth {model.cfg.depth}, "
        f"qk_norm={model.cfg.qk_norm} -> {out} ({FLAGS.to})")


if __name__ == "__main__":
  cli.run(main)

"""Sample images: `python -m sana_jax.sample --checkpoint DIR --prompt "..." [--prompts-file F] --out DIR`.

DIR is a diffusers Sana pipeline folder, our export (`python -m sana_jax.convert pipeline`) or a
`python -m sana_jax.train` workdir (its newest checkpoint, EMA weights if any, with the run's
built-in codecs). Writes one PNG per image and `settings.json` with every setting used (the
resolved defaults included), the file of each image with its prompt and seed, and the timings.
Unset flags fall back to the checkpoint's own settings (a training run's sampling config; the
native resolution of the model), then to diffusers' SanaPipeline defaults.

LoRA: `--lora FILE[:SCALE]` (repeatable) adds an adapter (a diffusers / PEFT SANA LoRA file, or a
folder holding pytorch_lora_weights.safetensors) with weight SCALE (default 1.0); see docs/lora.md.

Inference-time scaling (SANA 1.5): `--best_of N --judge SPEC [--keep K]` samples N candidates per
prompt and writes the judge's best K with ranking.json (sana_jax.scaling.best_of_n).
"""
import json
import os
import re

from absl import app, flags

from sana_jax import cli, compilation_cache, host_memory

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Pipeline folder, sana_jax export or training workdir.", required=True)
flags.DEFINE_multi_string("prompt", [], "A prompt (repeat the flag for several).")
flags.DEFINE_string("prompts_file", None, "A text file with one prompt per line (blank lines skipped).")
flags.DEFINE_string("out", None, "Output folder for the PNGs and settings.json.", required=True)
flags.DEFINE_string("negative_prompt", "", "Negative prompt (classifier-free guidance).")
flags.DEFINE_integer("height", None, "Image height in pixels (default: the model's native size).", lower_bound=1)
flags.DEFINE_integer("width", None, "Image width in pixels (default: the model's native size).", lower_bound=1)
flags.DEFINE_integer("num_inference_steps", None, "Denoising steps (default 20).", lower_bound=1)
flags.DEFINE_float("guidance_scale", None, "Classifier-free guidance scale (default 4.5; <= 1 disables).")
flags.DEFINE_integer("seed", 0, "Seed of the initial noise; batch k of --batch_size uses seed + k.")
flags.DEFINE_integer("num_images_per_prompt", 1, "Images per prompt.", lower_bound=1)
flags.DEFINE_integer("batch_size", 0, "Prompts per pipeline call (0: all in one batch).", lower_bound=0)
flags.DEFINE_bool("grid", False, "Also write grid.png: every image with its prompt under it.")
flags.DEFINE_enum("sampler", None, ["flow_dpm_solver", "flow_euler"], "Sampler (default: the scheduler config's).")
flags.DEFINE_bool("use_resolution_binning", None,
                  "Snap the size to SANA's aspect-ratio buckets, then resize back (default: on when the "
                  "model has bucket tables, i.e. 512/1024/2048/4096 px models).")
flags.DEFINE_bool("complex_human_instruction", True, "Prepend SANA's Complex Human Instruction to prompts.")
flags.DEFINE_integer("max_sequence_length", None, "Prompt tokens kept (default 300; a training run's own).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Weights and compute dtype.")
flags.DEFINE_multi_string("lora", [], "A LoRA to apply, FILE or FILE:SCALE (a diffusers/PEFT SANA LoRA "
                          ".safetensors or a folder with pytorch_lora_weights.safetensors); repeatable.")
flags.DEFINE_bool("vae_tiling", False, "Decode in tiles (bounded memory for very large images).")
flags.DEFINE_integer("best_of", 0, "Inference-time scaling: sample N candidates per prompt and keep the "
                     "judge's best --keep (0: off). Uses --batch_size images per call (default 8).")
flags.DEFINE_string("judge", None, "With --best_of: 'vlm:FOLDER', 'clip:FOLDER', 'contrastive:FOLDER' or 'shapes'.")
flags.DEFINE_integer("keep", 1, "With --best_of: winners kept per prompt.")
for _name in ("prompts_file", "negative_prompt", "num_inference_steps", "guidance_scale",
              "num_images_per_prompt", "batch_size", "use_resolution_binning",
              "complex_human_instruction", "max_sequence_length", "vae_tiling", "best_of"):
  flags.DEFINE_alias(_name.replace("_", "-"), _name)


def read_prompts(prompts, prompts_file) -> list[str]:
  prompts = list(prompts)
  if prompts_file:
    with open(prompts_file, encoding="utf-8") as f:
      prompts += [line.strip() for line in f if line.strip()]
  if not prompts:
    raise app.UsageError("give at least one --prompt or a --prompts_file with prompts")
  return prompts


def load_pipeline(path, dtype):
  """(SanaPipeline, suggested settings) for a pipeline folder, our export or a training workdir."""
  from sana_jax.convert.pipeline import pipeline_parts
  from sana_jax.sampling.pipeline import SanaPipeline
  parts, suggested = pipeline_parts(path, dtype=dtype)
  return SanaPipeline(**parts), suggested


def parse_lora(spec) -> tuple:
  """'FILE[:SCALE]' -> (FILE, SCALE); a ':' not followed by a number belongs to the path."""
  path, sep, tail = spec.rpartition(":")
  if sep:
    try:
      return path, float(tail)
    except ValueError:
      pass
  return spec, 1.0


def apply_loras(pipe, specs) -> list:
  """Loads every --lora into the pipeline; -> [{"path", "scale", "adapter_name"}] for settings.json."""
  applied = []
  for k, spec in enumerate(specs):
    path, scale = parse_lora(spec)
    name = f"lora_{k}"
    pipe.load_lora_weights(path, adapter_name=name, scale=scale)
    applied.append(dict(path=os.path.abspath(path), scale=scale, adapter_name=name))
  return applied


def _slug(text, limit=40):
  return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:limit] or "prompt"


def main(argv):
  host_memory.setup_from_flags()  # before JAX starts its CPU client
  compilation_cache.enable()
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  import jax.numpy as jnp
  import numpy as np

  from sana_jax.sampling.pipeline import aspect_ratio_table
  from sana_jax.sampling.text_encoding import CHI_DEFAULT

  prompts = read_prompts(FLAGS.prompt, FLAGS.prompts_file)
  pipe, suggested = load_pipeline(FLAGS.checkpoint, jnp.dtype(FLAGS.dtype))
  loras = apply_loras(pipe, FLAGS.lora)
  if FLAGS.vae_tiling:
    pipe.enable_vae_tiling()
  cfg = pipe.transformer.cfg
  native = cfg.sample_size * pipe.vae_scale_factor
  binning = FLAGS.use_resolution_binning
  if binning is None:
    try:
      aspect_ratio_table(cfg.sample_size)
      binning = True
    except ValueError:
      binning = False

  def pick(name, default):
    value = getattr(FLAGS, name)
    return value if value is not None else suggested.get(name, default)

  settings = dict(
      negative_prompt=FLAGS.negative_prompt, height=FLAGS.height or native, width=FLAGS.width or native,
      num_inference_steps=pick("num_inference_steps", 20), guidance_scale=pick("guidance_scale", 4.5),
      num_images_per_prompt=FLAGS.num_images_per_prompt,
      sampler=FLAGS.sampler or _config_sampler(pipe.scheduler_config), use_resolution_binning=binning,
      complex_human_instruction=list(CHI_DEFAULT) if FLAGS.complex_human_instruction else None,
      max_sequence_length=pick("max_sequence_length", 300))
  os.makedirs(FLAGS.out, exist_ok=True)
  if FLAGS.best_of:
    run_best_of_n(pipe, prompts, settings, suggested, loras)
    return
  batch = FLAGS.batch_size or len(prompts)
  images_info, timings, grid_images = [], [], []
  for k, first in enumerate(range(0, len(prompts), batch)):
    chunk = prompts[first:first + batch]
    seed = FLAGS.seed + k
    images = pipe(chunk, seed=seed, output_type="pil", progress=True, **settings).images
    timings.append(pipe.last_timings)
    for j, image in enumerate(images):
      index = first * settings["num_images_per_prompt"] + j
      prompt = chunk[j // settings["num_images_per_prompt"]]
      name = f"{index:04d}_{_slug(prompt)}.png"
      image.save(os.path.join(FLAGS.out, name))
      images_info.append(dict(file=name, prompt=prompt, seed=seed, index_in_batch=j))
      grid_images.append(image)
  record = dict(checkpoint=os.path.abspath(FLAGS.checkpoint), dtype=FLAGS.dtype, seed=FLAGS.seed,
                batch_size=batch, vae_tiling=FLAGS.vae_tiling, scheduler_config=pipe.scheduler_config,
                model=cfg.name, checkpoint_settings=suggested, lora=loras, **settings, images=images_info,
                timings=timings)
  record["compilation_cache"] = compilation_cache.current()
  record["retain_host_memory"] = host_memory.retained()
  with open(os.path.join(FLAGS.out, "settings.json"), "w") as f:
    json.dump(record, f, indent=2)
  if FLAGS.grid:
    from sana_jax.sampling.grid import save_grid
    save_grid([np.asarray(im.convert("RGB")) for im in grid_images], [i["prompt"] for i in images_info],
              os.path.join(FLAGS.out, "grid.png"))
  print(f"wrote {len(images_info)} images{' (and grid.png)' if FLAGS.grid else ''} and settings.json to "
        f"{os.path.abspath(FLAGS.out)}")


def run_best_of_n(pipe, prompts, settings, suggested, loras):
  """--best_of N: candidates from the pipeline, ranked by the judge (sana_jax.scaling.best_of_n)."""
  from sana_jax.scaling.best_of_n import pipeline_generate_fn, run_best_of_n_cli
  if not FLAGS.judge:
    raise app.UsageError("--best_of needs --judge ('vlm:FOLDER', 'clip:FOLDER', 'contrastive:FOLDER' or 'shapes')")
  call = {k: v for k, v in settings.items() if k not in ("height", "width", "num_images_per_prompt")}
  generate = pipeline_generate_fn(pipe, settings["height"], settings["width"], **call)
  record = dict(checkpoint=os.path.abspath(FLAGS.checkpoint), dtype=FLAGS.dtype,
                scheduler_config=pipe.scheduler_config, checkpoint_settings=suggested, lora=loras, **settings)
  path = run_best_of_n_cli(generate, prompts, FLAGS.best_of, FLAGS.judge, FLAGS.out, keep=FLAGS.keep,
                           batch_size=FLAGS.batch_size or 8, seed=FLAGS.seed, settings=record)
  print(f"best {FLAGS.keep} of {FLAGS.best_of} per prompt: {path}")


def _config_sampler(scheduler_config):
  return {"FlowMatchEulerDiscreteScheduler": "flow_euler"}.get(scheduler_config.get("_class_name"),
                                                                "flow_dpm_solver")


if __name__ == "__main__":
  cli.run(main)

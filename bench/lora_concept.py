"""Evidence a LoRA learns: teach a base model a colour it never saw, and check the samples for it.

COMMAND: python bench/lora_concept.py [--workdir /tmp/lora_concept --base_steps 1500 --lora_steps 600]

1. Renders two image folders with the shapes generator (sana_jax/data/shapes.py), captions beside
   them: `base_images/` (every task, every image free of the held-out colour, `--concept`, cyan by
   default: no caption names it, no pixel has it) and `concept_images/` ("a cyan circle", "a cyan
   square", "a cyan triangle", one object each).
2. Trains the base with `python -m sana_jax.train`'s loop (configs/tiny.py, data.name=folder) on
   base_images/ for --base_steps, then two LoRAs (configs/lora.py, rank --rank, train.init_from =
   the base workdir, on --targets: cross-attention and caption projection) on concept_images/ for
   --lora_steps: one alone, one with DreamBooth prior
   preservation (prior_loss_weight 1): half of every batch is class images that the base model
   drew with our sampler for "a <colour> <shape>" prompts of the colours it knows
   (`class_images/`, captions beside them). Finished workdirs are reused.
3. Samples --images prompts "a <colour> <shape>" per colour from the base and from the base with
   the adapter (same noise), and reads each image with the shapes evaluator (shapes_eval): for the
   concept colour and for a colour the base knows (--known), the share of images the evaluator
   passes, of images whose largest detected object has the prompt's colour, and of coloured pixels
   that are nearest to it.
"""
import argparse
import os

import numpy as np
from flax import nnx
from PIL import Image

from sana_jax import configs
from sana_jax.configs import lora as lora_preset
from sana_jax.convert.checkpoints import load_transformer
from sana_jax.data import shapes, shapes_eval
from sana_jax.training import loop


# Cross-attention and the caption projection: the text-dependent paths, where a new word can be
# learned without every image changing (the config's default also adapts the self-attention).
TARGETS = ("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "caption_projection.linear_1",
           "caption_projection.linear_2")


def write_folder(directory, examples):
  """examples: (uint8 image, caption) pairs -> directory/{i}.png + {i}.txt (kept if complete)."""
  done = os.path.join(directory, "complete")
  if os.path.exists(done):
    return
  os.makedirs(directory, exist_ok=True)
  for i, (image, caption) in enumerate(examples):
    Image.fromarray(image).save(os.path.join(directory, f"{i:05d}.png"))
    with open(os.path.join(directory, f"{i:05d}.txt"), "w") as f:
      f.write(caption + "\n")
  open(done, "w").close()


def base_examples(count, concept, seed=0):
  """Shapes examples of every task with no trace of the concept colour."""
  source = shapes.ShapesSource(10 * count, 32, seed)
  rgb = np.asarray(shapes.COLORS[concept], np.uint8)
  out, index = [], 0
  while len(out) < count:
    record = source[index]
    index += 1
    if concept in record["caption"].split() or np.all(record["image"] == rgb, axis=-1).any():
      continue
    out.append((record["image"], record["caption"]))
  return out


def concept_examples(count, concept, seed=1):
  rng = np.random.default_rng(seed)
  out = []
  for i in range(count):
    spec = shapes.SceneSpec("colors", (shapes.ObjectGroup(shapes.SHAPES[i % len(shapes.SHAPES)], color=concept),))
    out.append((shapes.render(spec, rng, 32), spec.caption))
  return out


def draw_class_images(directory, count, concept, cfg, autoencoder, text_encoder, latent):
  """The base model's own samples for prompts of the colours it was trained on (with captions)."""
  if os.path.exists(os.path.join(directory, "complete")):
    return
  graphdef, state = nnx.split(load_transformer(os.path.join(os.path.dirname(directory), "base")))
  sample = loop.make_sampler(graphdef, autoencoder, text_encoder, cfg.sampling)
  colours = [c for c in shapes.COLORS if c != concept]
  prompts = [f"a {colours[i % len(colours)]} {shapes.SHAPES[(i // len(colours)) % len(shapes.SHAPES)]}"
             for i in range(count)]
  images = [np.asarray(x) for x in sample(state, prompts, 7, latent)]
  write_folder(directory, [(shapes_eval.to_uint8(x), p) for x, p in zip(images, prompts)])


def train(cfg, workdir):
  summary = loop.train_and_evaluate(cfg, workdir)
  print(f"{workdir}: step {summary['step']}", flush=True)


def read(images, colour):
  """-> (evaluator pass share, largest-object colour share, pixel share) for prompts of `colour`."""
  passed, largest, pixels = [], [], []
  for image, shape in images:
    spec = shapes.SceneSpec("colors", (shapes.ObjectGroup(shape, color=colour),))
    passed.append(shapes_eval.evaluate_image(image, spec))
    objects = shapes_eval.detect_objects(image)
    largest.append(bool(objects) and max(objects, key=lambda o: o.area).color == colour)
    labels = shapes_eval.palette_labels(image)
    coloured = labels > 0
    index = 1 + list(shapes.COLORS).index(colour)
    pixels.append(float((labels[coloured] == index).mean()) if coloured.any() else 0.0)
  return float(np.mean(passed)), float(np.mean(largest)), float(np.mean(pixels))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="/tmp/lora_concept")
  parser.add_argument("--concept", default="cyan", choices=list(shapes.COLORS))
  parser.add_argument("--known", default="red", choices=list(shapes.COLORS))
  parser.add_argument("--base_images", type=int, default=4000)
  parser.add_argument("--concept_images", type=int, default=96)
  parser.add_argument("--base_steps", type=int, default=1500)
  parser.add_argument("--lora_steps", type=int, default=600)
  parser.add_argument("--class_images", type=int, default=96, help="prior preservation: base samples")
  parser.add_argument("--rank", type=int, default=8)
  parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated lora.target_modules")
  parser.add_argument("--images", type=int, default=48, help="samples per colour and model")
  args = parser.parse_args()
  if args.known == args.concept:
    parser.error("--known must differ from --concept")

  root = os.path.abspath(args.workdir)
  write_folder(os.path.join(root, "base_images"), base_examples(args.base_images, args.concept))
  write_folder(os.path.join(root, "concept_images"), concept_examples(args.concept_images, args.concept))

  base_cfg = configs.get_config("tiny")
  base_cfg.model.pooled_caption = False  # as measured in docs/benchmarks.md, before tiny's pooled caption
  base_cfg.data.update(name="folder", path=os.path.join(root, "base_images"))
  base_cfg.train.update(num_steps=args.base_steps, checkpoint_every=500, sample_every=0)
  base_cfg.sampling.update(num_images=8, num_eval_images=0)
  train(base_cfg, os.path.join(root, "base"))

  autoencoder, text_encoder = loop.build_codecs(base_cfg, os.path.join(root, "base"), allow_fit=False)
  latent = (base_cfg.data.image_size // autoencoder.spatial_compression_ratio,) * 2 + (base_cfg.model.in_channels,)
  class_dir = os.path.join(root, "class_images")
  draw_class_images(class_dir, args.class_images, args.concept, base_cfg, autoencoder, text_encoder, latent)
  for workdir, prior in (("lora", False), ("lora_prior", True)):
    lora_cfg = lora_preset.get_config()
    lora_cfg.lora.update(rank=args.rank, alpha=float(args.rank))
    lora_cfg.lora.target_modules = tuple(args.targets.split(","))
    lora_cfg.data.update(name="folder", path=os.path.join(root, "concept_images"))
    lora_cfg.train.update(init_from=os.path.join(root, "base"), num_steps=args.lora_steps)
    if prior:
      lora_cfg.dreambooth.update(prior_loss_weight=1.0, class_data_dir=class_dir,
                                 num_class_images=args.class_images)
    train(lora_cfg, os.path.join(root, workdir))

  shape_list = [shapes.SHAPES[i % len(shapes.SHAPES)] for i in range(args.images)]
  rows = []
  for name, workdir in (("base", "base"), (f"base + LoRA r={args.rank}", "lora"),
                        ("  + prior preservation", "lora_prior")):
    graphdef, state = nnx.split(load_transformer(os.path.join(root, workdir)))
    sample = loop.make_sampler(graphdef, autoencoder, text_encoder, base_cfg.sampling)
    for colour in (args.concept, args.known):
      prompts = [f"a {colour} {s}" for s in shape_list]
      images = [np.asarray(x) for x in sample(state, prompts, 123, latent)]
      rows.append((name, colour, *read(list(zip(images, shape_list)), colour)))

  print(f"held-out colour {args.concept!r}: base trained {args.base_steps} steps on {args.base_images} images "
        f"without it; LoRA {args.lora_steps} steps on {args.concept_images} images of it; "
        f"{args.images} samples per row (prompts 'a <colour> <shape>'); prior preservation: "
        f"{args.class_images} class images the base drew for the other colours")
  print(f"{'model':24s} {'prompt colour':>13s} {'evaluator pass':>15s} {'largest object':>15s} {'pixel share':>12s}")
  for name, colour, passed, largest, pixels in rows:
    print(f"{name:24s} {colour:>13s} {passed:15.3f} {largest:15.3f} {pixels:12.3f}")


if __name__ == "__main__":
  main()

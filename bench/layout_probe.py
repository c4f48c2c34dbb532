"""Can the default model place objects where its caption says? Position scenes from a few captions only.

  python bench/layout_probe.py --captions fixed        # "a circle left of a square", nothing else
  python bench/layout_probe.py --captions order        # that and "a square left of a circle"
  python bench/layout_probe.py --captions relation     # that and "a circle right of a square"
  python bench/layout_probe.py --captions relation codecs.text_context=3
  python bench/layout_probe.py --captions relation_skewed   # as relation, "left of" 3 times as often

Trains the default job's model (configs/tiny24.py, with any overrides) on position scenes whose
captions come from a small set, with the training code of bench/train_ablation.py, then draws
`--samples` images of every caption of the set (sampling seed 3, the run's sampler) and prints, per
caption, the share the shapes evaluator accepts and how many objects of each shape it found in each
column (left, middle, right). A model that reads the caption draws different column counts for
captions that differ; one that ignores it draws the same counts for all of them. With `fixed`
there is nothing to read: it shows whether the model can learn the layout at all;
`relation_skewed` trains on the two captions of `relation` drawn 3:1, so that where the circle goes
also depends on the column when the caption is averaged out (docs/training.md, "Why position is not
read", fourteenth round).

The set is made by narrowing the shapes generator in this process only: the shapes become
(circle, square), the relations "left of" (and "right of" for the `relation` sets), and except for
`order` the circle is always named first. The held-out prompts that the run scores come from
the same narrowed generator.
"""
import argparse
import json

import numpy as np

import train_ablation
from sana_jax import configs
from sana_jax.data import shapes, shapes_eval
from sana_jax.training import loop, train_state

CAPTION_SETS = {
    "fixed": (("left of",), True),
    "order": (("left of",), False),
    "relation": (("left of", "right of"), True),
    "relation_skewed": (("left of", "left of", "left of", "right of"), True),  # drawn uniformly from the tuple
}


def narrow_generator(relations, circle_first):
  """Restricts shapes.sample_spec (module-wide, this process) to circles and squares and `relations`."""
  shapes.SHAPES = ("circle", "square")
  shapes.RELATIONS = relations
  original = shapes.sample_spec

  def sample_spec(rng, task):
    spec = original(rng, task)
    if circle_first and spec.relation is not None and spec.groups[0].shape != "circle":
      spec = shapes.SceneSpec(spec.task, spec.groups[::-1], spec.relation)
    return spec

  shapes.sample_spec = sample_spec


def captions_of(relations, circle_first):
  pairs = [("circle", "square")] + ([] if circle_first else [("square", "circle")])
  return list(dict.fromkeys(f"a {a} {r} a {b}" for r in relations for a, b in pairs))


def column_counts(images, caption):
  """(share the evaluator accepts, {shape: [objects in the left, middle, right column]})."""
  spec = shapes.parse_caption(caption)
  counts = {s: [0, 0, 0] for s in shapes.SHAPES}
  correct = []
  for image in images:
    pixels = shapes_eval.to_uint8(image)
    third = pixels.shape[1] / 3
    for obj in shapes_eval.detect_objects(pixels):
      counts.setdefault(obj.shape, [0, 0, 0])[min(int(obj.centroid[1] // third), 2)] += 1
    correct.append(shapes_eval.evaluate_image(pixels, spec))
  return round(float(np.mean(correct)), 3), counts


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--captions", choices=sorted(CAPTION_SETS), required=True)
  parser.add_argument("--steps", type=int, default=None, help="default: the config's train.num_steps")
  parser.add_argument("--samples", type=int, default=64, help="images drawn per caption")
  parser.add_argument("overrides", nargs="*", help="config fields, as in bench/train_ablation.py")
  args = parser.parse_args()
  relations, circle_first = CAPTION_SETS[args.captions]
  narrow_generator(relations, circle_first)
  cfg = train_ablation.apply_overrides(configs.get_config("tiny24"), ["data.shapes_tasks=('position',)"]
                                       + args.overrides)
  result, _, params, codecs = train_ablation.run(cfg, args.steps or cfg.train.num_steps)
  autoencoder, text_encoder = codecs
  sampler = loop.make_sampler(train_state.model_graphdef(cfg.model), autoencoder, text_encoder, cfg.sampling)
  latent_hw = cfg.data.image_size // autoencoder.spatial_compression_ratio
  per_caption = {}
  for caption in captions_of(relations, circle_first):
    images = sampler(params, [caption] * args.samples, 3, (latent_hw, latent_hw, cfg.model.in_channels))
    correct, counts = column_counts(images, caption)
    per_caption[caption] = {"correct": correct, "columns": counts}
    print(f"{caption!r}: evaluator accepts {correct:.3f}; objects per column (left, middle, right): "
          + ", ".join(f"{s} {c}" for s, c in counts.items()), flush=True)
  print(json.dumps({"captions": args.captions, "overrides": args.overrides, "steps": result["steps"],
                    "loss": result["loss"], "train_s": result["train_s"], "score": result["score"],
                    "per_caption": per_caption}), flush=True)


if __name__ == "__main__":
  main()

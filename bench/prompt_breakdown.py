"""How a trained run fails on single prompts: many samples of each, read by the shapes evaluator.

    python bench/prompt_breakdown.py WORKDIR [--count 32] [--seed 5] [--guidance 1,3] ["a circle" ...]

For every guidance scale and prompt, samples `count` images of the prompt from the run's newest
checkpoint (its own sampler settings otherwise) and prints one line: the share the evaluator
accepts, the share with no object at all (blank), objects per image and the shapes it read.
"""
import argparse
import collections

import numpy as np
from flax import nnx

from sana_jax.convert.training_run import load_training_run
from sana_jax.data import shapes_eval
from sana_jax.training import loop

DEFAULT_PROMPTS = ("a circle", "a square", "a triangle", "a red circle", "a blue square")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdir")
  parser.add_argument("--count", type=int, default=32, help="samples per prompt")
  parser.add_argument("--seed", type=int, default=5, help="sampling seed")
  parser.add_argument("--guidance", default="1,3", help="comma-separated CFG scales")
  parser.add_argument("prompts", nargs="*", help=f"default: {', '.join(DEFAULT_PROMPTS)}")
  args = parser.parse_intermixed_args()
  run = load_training_run(args.workdir)
  cfg = run.config
  autoencoder, text_encoder = loop.build_codecs(cfg, run.workdir, allow_fit=False)
  graphdef, params = nnx.split(run.transformer)
  hw = cfg.data.image_size // autoencoder.spatial_compression_ratio
  for scale in (float(g) for g in args.guidance.split(",")):
    sampling = cfg.sampling.copy_and_resolve_references()
    sampling.guidance_scale = scale
    sampler = loop.make_sampler(graphdef, autoencoder, text_encoder, sampling)
    for prompt in args.prompts or DEFAULT_PROMPTS:
      images = sampler(params, [prompt] * args.count, args.seed, (hw, hw, cfg.model.in_channels))
      found = [shapes_eval.detect_objects(image) for image in images]
      correct = np.mean([shapes_eval.evaluate_image(image, prompt) for image in images])
      seen = collections.Counter(o.shape for objects in found for o in objects)
      print(f"CFG {scale:g} {prompt!r}: correct {correct:.2f}, blank {np.mean([not f for f in found]):.2f}, "
            f"objects per image {np.mean([len(f) for f in found]):.2f}, shapes read {dict(seen)}", flush=True)


if __name__ == "__main__":
  main()

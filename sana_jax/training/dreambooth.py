"""DreamBooth: an instance prompt with a rare token, and prior preservation with class images that
our own sampler draws from the base model (as diffusers' train_dreambooth_lora_sana.py does).

  --config.data.instance_prompt="a sks shape"     every image of data.path gets this caption
  --config.dreambooth.class_prompt="a shape" --config.dreambooth.prior_loss_weight=1.0

With prior_loss_weight > 0 every batch is half instance images, half class images (train.batch_size
is the total), and the loss is mean(instance) + prior_loss_weight * mean(class) (training/objective.py).
The class images come from `dreambooth.class_data_dir` (default <workdir>/class_images): a folder of
images or a latent cache. A folder holding fewer than num_class_images is topped up with images
the base model draws for class_prompt before training (with the adapter at zero: the base),
written as class_<i>.png with class_prompt in class_<i>.txt. A folder's images keep the caption
beside them (so class images drawn for several prompts keep theirs); images without one take
class_prompt. Training from a latent cache needs the class images encoded the same way
(`python -m sana_jax.preprocess`).
"""
import os

import ml_collections
import numpy as np
from PIL import Image

from sana_jax.data import cache, folder, pipeline


def dreambooth_config(**overrides) -> ml_collections.ConfigDict:
  """The `dreambooth` section of a LoRA config (configs/lora.py)."""
  d = ml_collections.ConfigDict()
  d.class_prompt = ""              # e.g. "a shape": the class the instance belongs to
  d.prior_loss_weight = 0.0        # > 0: prior preservation (diffusers uses 1.0)
  d.class_data_dir = ""            # class images (folder or latent cache); "" = <workdir>/class_images
  d.num_class_images = 64          # the folder is topped up to this many with generated images
  d.update(overrides)
  return d


def prior_preservation(cfg) -> bool:
  return cfg.get("dreambooth") is not None and cfg.dreambooth.prior_loss_weight > 0


def class_directory(cfg, workdir) -> str:
  return cfg.dreambooth.class_data_dir or os.path.join(os.fspath(workdir), "class_images")


def _image_count(directory) -> int:
  if not os.path.isdir(directory):
    return 0
  return sum(1 for _, _, files in os.walk(directory) for n in files
             if n.lower().endswith(folder.IMAGE_EXTENSIONS))


def top_up_class_images(cfg, directory, sample, latent_shape, batch_size: int, is_main: bool) -> int:
  """Draws the class images the folder lacks; -> how many were generated.

  sample(prompts, seed, latent_shape) -> images float [B, H, W, 3] in [-1, 1] (the base model).
  Every process samples (the sampler may be sharded); only the main one writes.
  """
  d = cfg.dreambooth
  if os.path.isfile(os.path.join(directory, cache.MANIFEST)):
    return 0
  have = _image_count(directory)
  missing = max(int(d.num_class_images) - have, 0)
  if missing and not d.class_prompt:
    raise ValueError(f"{directory} holds {have} of dreambooth.num_class_images={d.num_class_images} class "
                     "images: set dreambooth.class_prompt (e.g. 'a shape') to draw the rest")
  if missing and sample is None:
    raise ValueError(f"{directory} holds {have} of dreambooth.num_class_images={d.num_class_images} class "
                     "images and this run has no sampler to draw more (training from a latent cache): "
                     "generate them with `python -m sana_jax.sample` and encode them with "
                     "`python -m sana_jax.preprocess`, then pass dreambooth.class_data_dir")
  for start in range(0, missing, batch_size):
    count = min(batch_size, missing - start)
    images = sample([d.class_prompt] * count, cfg.seed + 7919 + have + start, latent_shape)
    if is_main:
      os.makedirs(directory, exist_ok=True)
      for i, image in enumerate(np.asarray(images)):
        pixels = np.clip((image + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
        stem = os.path.join(directory, f"class_{have + start + i:05d}")
        Image.fromarray(pixels).save(stem + ".png")
        with open(stem + ".txt", "w", encoding="utf-8") as f:
          f.write(d.class_prompt + "\n")
  return missing


def class_dataset(cfg, directory, seed: int, shard_index: int, shard_count: int):
  """The class images as a pipeline iterator of half batches (their captions, else class_prompt)."""
  data_cfg = ml_collections.ConfigDict(cfg.data.to_dict())
  if os.path.isfile(os.path.join(directory, cache.MANIFEST)):
    source = cache.CacheSource(directory)
    data_cfg.name = "cache"
  else:
    source = folder.FolderSource(directory, missing_caption=cfg.dreambooth.class_prompt)
  return pipeline.make_dataset(data_cfg, cfg.train.batch_size // 2, seed + 1, shard_index, shard_count,
                               source=source)


class PriorPreservationData:
  """Two pipeline iterators as one: each batch is an instance half batch followed by a class half
  batch, with "prior" [B] = 0 / 1 marking the rows; get_state / set_state cover both."""

  def __init__(self, instance, classes):
    self.instance, self.classes = instance, classes

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    a, b = next(self.instance), next(self.classes)
    if ("latents" in a) != ("latents" in b):
      raise ValueError("the instance data and the class images must both be images or both a latent "
                       "cache (encode the class images with `python -m sana_jax.preprocess`)")
    shared = [k for k in a if k in b and k != "specs"]
    batch = {k: np.concatenate([np.asarray(a[k]), np.asarray(b[k])]) for k in shared}
    rows = len(next(iter(a.values())))
    batch["prior"] = np.concatenate([np.zeros(rows, np.int32), np.ones(len(next(iter(b.values()))), np.int32)])
    return batch

  def get_state(self) -> dict:
    return {"instance": self.instance.get_state(), "class": self.classes.get_state()}

  def set_state(self, state: dict) -> None:
    self.instance.set_state(state["instance"])
    self.classes.set_state(state["class"])

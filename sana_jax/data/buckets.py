"""Aspect-ratio buckets (SANA / PixArt multi-scale training) and one-bucket-per-batch plans.

A table maps a ratio key "h/w" to the (height, width) trained at that ratio; an image goes to the
bucket whose ratio is nearest its own (as diffusers' `classify_height_width_bin`), is resized to
cover it and centre-cropped. `batch_plan` groups example indices so every batch holds one bucket,
which keeps each train step's shapes static.
"""
import numpy as np
from PIL import Image

# NVlabs/Sana diffusion/data/datasets/utils.py (from PixArt): ratio h/w -> [height, width]; 40 buckets.
ASPECT_RATIO_1024 = {
    "0.25": [512.0, 2048.0], "0.26": [512.0, 1984.0], "0.27": [512.0, 1920.0], "0.28": [512.0, 1856.0],
    "0.32": [576.0, 1792.0], "0.33": [576.0, 1728.0], "0.35": [576.0, 1664.0], "0.4": [640.0, 1600.0],
    "0.42": [640.0, 1536.0], "0.48": [704.0, 1472.0], "0.5": [704.0, 1408.0], "0.52": [704.0, 1344.0],
    "0.57": [768.0, 1344.0], "0.6": [768.0, 1280.0], "0.68": [832.0, 1216.0], "0.72": [832.0, 1152.0],
    "0.78": [896.0, 1152.0], "0.82": [896.0, 1088.0], "0.88": [960.0, 1088.0], "0.94": [960.0, 1024.0],
    "1.0": [1024.0, 1024.0], "1.07": [1024.0, 960.0], "1.13": [1088.0, 960.0], "1.21": [1088.0, 896.0],
    "1.29": [1152.0, 896.0], "1.38": [1152.0, 832.0], "1.46": [1216.0, 832.0], "1.67": [1280.0, 768.0],
    "1.75": [1344.0, 768.0], "2.0": [1408.0, 704.0], "2.09": [1472.0, 704.0], "2.4": [1536.0, 640.0],
    "2.5": [1600.0, 640.0], "2.89": [1664.0, 576.0], "3.0": [1728.0, 576.0], "3.11": [1792.0, 576.0],
    "3.62": [1856.0, 512.0], "3.75": [1920.0, 512.0], "3.88": [1984.0, 512.0], "4.0": [2048.0, 512.0],
}


def scale_table(base_size: int, multiple: int, table: dict | None = None) -> dict[str, tuple[int, int]]:
  """The 1024 table (or `table`) rescaled to `base_size`, sides rounded to `multiple` (at least one).

  `multiple` is the pixel grid of the model: autoencoder compression x patch size (e.g. 32 for
  DC-AE f32 with patch 1). Keys keep the source ratios; scaling 1024 -> 512 with multiple 32 gives
  NVlabs' ASPECT_RATIO_512 exactly.
  """
  if base_size <= 0 or multiple <= 0:
    raise ValueError(f"base_size and multiple must be positive, got {base_size=}, {multiple=}")
  table = ASPECT_RATIO_1024 if table is None else table
  source_base = np.sqrt(table["1.0"][0] * table["1.0"][1]) if "1.0" in table else 1024.0
  scale = base_size / source_base

  def snap(side):
    return int(max(multiple, round(side * scale / multiple) * multiple))

  return {key: (snap(h), snap(w)) for key, (h, w) in table.items()}


def nearest_bucket(height: int, width: int, table: dict) -> str:
  """Key of the bucket whose ratio is closest to height / width (first one on ties, as diffusers)."""
  if height <= 0 or width <= 0:
    raise ValueError(f"image size must be positive, got {height}x{width}")
  ratio = height / width
  return min(table, key=lambda key: abs(float(key) - ratio))


def bucket_table(data_cfg) -> dict[str, tuple[int, int]]:
  """The (height, width) buckets training uses: one square bucket unless data_cfg.multi_scale."""
  if data_cfg.multi_scale:
    return scale_table(data_cfg.image_size, data_cfg.size_multiple)
  return {"1.0": (data_cfg.image_size, data_cfg.image_size)}


def assign_buckets(source, data_cfg) -> tuple[dict, np.ndarray]:
  """(bucket_table(data_cfg), bucket index [N] into its keys for each example of `source`): the
  nearest ratio with multi_scale (from `source.image_sizes()`), else the one bucket."""
  table = bucket_table(data_cfg)
  if not data_cfg.multi_scale:
    return table, np.zeros(len(source), np.int64)
  keys = list(table)
  return table, np.asarray([keys.index(nearest_bucket(h, w, table)) for h, w in source.image_sizes()], np.int64)


def batch_plan(bucket_ids: np.ndarray, batch_size: int, seed: int, epoch: int) -> np.ndarray:
  """One epoch's batches [num_batches, batch_size] of example indices, each batch from one bucket.

  Within each bucket the examples are shuffled and cut into full batches (the remainder waits for a
  later epoch's shuffle); then the batch order is shuffled. Deterministic in (seed, epoch).
  """
  bucket_ids = np.asarray(bucket_ids)
  rng = np.random.default_rng([seed, epoch])
  batches = []
  for bucket in np.unique(bucket_ids):
    members = rng.permutation(np.flatnonzero(bucket_ids == bucket))
    usable = len(members) // batch_size * batch_size
    batches.extend(members[:usable].reshape(-1, batch_size))
  if not batches:
    raise ValueError(f"no bucket has {batch_size} examples (bucket sizes "
                     f"{np.unique(bucket_ids, return_counts=True)[1].tolist()}): lower the batch size")
  batches = np.stack(batches)
  return batches[rng.permutation(len(batches))]


def resize_center_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 [h, w, 3] -> uint8 [height, width, 3]: bicubic resize to cover the target, then centre crop."""
  h, w = image.shape[:2]
  if (h, w) == (height, width):
    return image
  scale = max(height / h, width / w)
  new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
  resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BICUBIC))
  top, left = (new_h - height) // 2, (new_w - width) // 2
  return resized[top:top + height, left:left + width]

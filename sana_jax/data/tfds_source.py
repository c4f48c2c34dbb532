"""TFDS datasets by name through `tfds.data_source`: random access to ArrayRecord files, no TensorFlow.

The dataset must already be prepared in `data_dir` with `file_format="array_record"` (e.g.
`tfds build NAME --file_format=array_record`, or a builder's `download_and_prepare`). Each record
must hold an image feature and a text feature; their names are configurable.
"""
import logging

import numpy as np

log = logging.getLogger(__name__)


class TfdsSource:
  """{"image": uint8 [H, W, 3], "caption": str} from a prepared TFDS split."""

  def __init__(self, name: str, split: str = "train", data_dir: str | None = None,
               image_key: str = "image", caption_key: str = "caption"):
    import tensorflow_datasets as tfds  # heavy import, only when a TFDS dataset is used

    if not name:
      raise ValueError("data.tfds_name is empty: name the TFDS dataset to read")
    self.name, self.split = name, split
    self.image_key, self.caption_key = image_key, caption_key
    self._source = tfds.data_source(name, split=split, data_dir=data_dir or None)
    features = set(self._source.dataset_info.features.keys())
    missing = {image_key, caption_key} - features
    if missing:
      raise ValueError(f"TFDS dataset {name!r} has features {sorted(features)}; missing {sorted(missing)} "
                       "(set data.tfds_image_key / data.tfds_caption_key)")

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    record = self._source[int(index)]
    image = np.asarray(record[self.image_key])
    if image.ndim == 2:
      image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
      raise ValueError(f"{self.name}[{index}] image has shape {image.shape}; expected [H, W, 1|3|4]")
    image = np.broadcast_to(image, image.shape[:2] + (3,)) if image.shape[-1] == 1 else image[..., :3]
    caption = record[self.caption_key]
    caption = caption.decode("utf-8") if isinstance(caption, bytes) else str(caption)
    return {"image": np.ascontiguousarray(image, np.uint8), "caption": caption}

  def image_sizes(self) -> np.ndarray:
    """[N, 2] (height, width); decodes every image once (aspect-ratio buckets need it). A record that
    fails to decode gets (1, 1), the square bucket; loading it later skips it like any bad image."""
    sizes = np.ones((len(self), 2), np.int64)
    for i in range(len(self)):
      try:
        sizes[i] = np.shape(self._source[i][self.image_key])[:2]
      except Exception as e:  # noqa: BLE001 - any decoder error means "unreadable"
        log.warning("%s[%d]: cannot decode the image (%s); it will be skipped when loaded", self.name, i, e)
    return sizes

  def __repr__(self) -> str:
    return f"TfdsSource({self.name!r}, split={self.split!r}, {len(self)} examples)"

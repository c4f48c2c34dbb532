"""A local folder of images with same-name captions, the NVlabs/Sana example-data layout.

  data/AAA.png  data/AAA.txt     caption = first non-empty line of the .txt
  data/BCC.jpg  data/BCC.json    caption = json["prompt"] (the key is configurable; NVlabs' caption
                                 jsons may also nest it under the file stem: {"BCC": {"prompt": ...}})

DreamBooth: `FolderSource(path, caption="a sks dog")` gives every image of the folder that one
caption (an instance prompt with a rare token); caption files are then neither needed nor read.
`FolderSource(path, missing_caption="a dog")` keeps the captions beside the images and gives that
one to images without (class images of prior preservation).

The folder is scanned once (recursively, in sorted order, so every host sees the same indices):
each image's header is read for its size (aspect-ratio buckets need it) and its caption is read.
Images that cannot be opened or have no caption are skipped, counted in `skipped` and logged.
"""
import collections
import json
import logging
import os

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CAPTION_KEYS = ("prompt", "caption", "text")  # tried after the configured key

log = logging.getLogger(__name__)


def read_caption(stem_path: str, json_key: str = "prompt") -> str | None:
  """Caption for the image at `stem_path` + extension, from `stem.txt` or `stem.json`; None if absent."""
  txt, js = stem_path + ".txt", stem_path + ".json"
  if os.path.exists(txt):
    with open(txt, encoding="utf-8") as f:
      return next((line.strip() for line in f if line.strip()), "")
  if os.path.exists(js):
    with open(js, encoding="utf-8") as f:
      info = json.load(f)
    stem = os.path.basename(stem_path)
    if isinstance(info.get(stem), dict):
      info = info[stem]
    for key in (json_key, *CAPTION_KEYS):
      if isinstance(info.get(key), str):
        return info[key].strip()
  return None


class FolderSource:
  """Random-access source over an image-caption folder: {"image": uint8 [H, W, 3], "caption": str}."""

  def __init__(self, path: str, json_caption_key: str = "prompt", caption: str = "",
               missing_caption: str = ""):
    """caption: when not empty, the caption of every image (the files beside them are ignored).
    missing_caption: when not empty, the caption of images that have no caption file."""
    if not os.path.isdir(path):
      raise FileNotFoundError(f"image folder {path!r} does not exist")
    self.path = path
    self.skipped = collections.Counter()
    paths, captions, sizes = [], [], []
    for root, dirs, files in os.walk(path):
      dirs.sort()
      for name in sorted(files):
        if not name.lower().endswith(IMAGE_EXTENSIONS):
          continue
        file = os.path.join(root, name)
        try:
          text = caption or read_caption(os.path.splitext(file)[0], json_caption_key)
        except (OSError, ValueError, AttributeError) as e:  # unreadable or malformed caption file
          self._skip("bad_caption", file, e)
          continue
        if text is None and missing_caption:
          text = missing_caption
        if text is None:
          self._skip("no_caption", file, "no .txt or .json caption beside it")
          continue
        try:
          with Image.open(file) as image:
            width, height = image.size
        except (OSError, ValueError, Image.DecompressionBombError) as e:
          self._skip("unreadable", file, e)
          continue
        paths.append(file)
        captions.append(text)
        sizes.append((height, width))
    if not paths:
      raise ValueError(f"no readable captioned images in {path!r} (skipped: {dict(self.skipped)})")
    self.paths, self.captions = paths, captions
    self._sizes = np.asarray(sizes, np.int64)  # [N, 2] (height, width)
    log.info("%s: %d images, skipped %s", path, len(paths), dict(self.skipped) or "none")

  def _skip(self, reason: str, file: str, detail) -> None:
    self.skipped[reason] += 1
    log.warning("skipping %s (%s: %s); %d skipped so far", file, reason, detail, sum(self.skipped.values()))

  def __len__(self) -> int:
    return len(self.paths)

  def image_sizes(self) -> np.ndarray:
    """[N, 2] (height, width) of every image, from the headers read at scan time."""
    return self._sizes

  def __getitem__(self, index: int) -> dict:
    """Decodes the image (RGB); raises OSError for a file whose data turns out to be corrupt."""
    with Image.open(self.paths[index]) as image:
      rgb = np.asarray(image.convert("RGB"))
    return {"image": rgb, "caption": self.captions[index]}

  def __repr__(self) -> str:
    return f"FolderSource({self.path!r}, {len(self)} images)"

"""Sample grids a person can read: each image with its prompt (and optionally a verdict) under it.

  save_grid(images, prompts, "samples/step_0001000.png")
  save_grid(images, prompts, path, notes=["✓ single_object", "✗ position", ...])

images: float [N, H, W, 3] in [-1, 1] or uint8. Small images are enlarged (nearest neighbour) so
each cell is at least `min_cell` pixels wide; the caption is wrapped to the cell's width.
"""
import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_FONT_NAMES = ("DejaVuSans.ttf", "DejaVuSansCondensed.ttf")


def _font(size: int):
  """A TrueType font with the check marks (DejaVu: the system's or matplotlib's), else PIL's own."""
  candidates = list(_FONT_NAMES)
  try:
    import matplotlib
    candidates.append(os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf",
                                   "DejaVuSans.ttf"))
  except ImportError:
    pass
  for name in candidates:
    try:
      return ImageFont.truetype(name, size)
    except OSError:
      continue
  return ImageFont.load_default(size)


def _to_uint8(image) -> np.ndarray:
  image = np.asarray(image)
  if image.dtype == np.uint8:
    return image
  return np.round((np.clip(image, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def _wrap(draw, text: str, font, width: int) -> list[str]:
  """Greedy word wrap to `width` pixels (a word longer than the line is cut by characters)."""
  lines = []
  for paragraph in text.splitlines() or [""]:
    line = ""
    for word in paragraph.split():
      trial = f"{line} {word}".strip()
      if draw.textlength(trial, font=font) <= width or not line:
        line = trial
      else:
        lines.append(line)
        line = word
      while draw.textlength(line, font=font) > width and len(line) > 1:
        for cut in range(len(line) - 1, 0, -1):
          if draw.textlength(line[:cut], font=font) <= width:
            break
        lines.append(line[:cut])
        line = line[cut:]
    lines.append(line)
  return lines


def labelled_grid(images, prompts, notes=None, columns: int = 4, min_cell: int = 128,
                  font_size: int = 11) -> Image.Image:
  """One PIL image: rows of `columns` cells, each an image with its prompt (and note) below."""
  images = [_to_uint8(im) for im in images]
  if len(prompts) != len(images) or (notes is not None and len(notes) != len(images)):
    raise ValueError(f"{len(images)} images but {len(prompts)} prompts"
                     + ("" if notes is None else f" and {len(notes)} notes"))
  if not images:
    raise ValueError("a grid needs at least one image")
  h, w = images[0].shape[:2]
  scale = max(1, math.ceil(min_cell / w))
  cell_w, cell_h, pad = w * scale, h * scale, 4
  font = _font(font_size)
  draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
  texts = [_wrap(draw, p, font, cell_w) + ([] if notes is None else _wrap(draw, notes[i], font, cell_w))
           for i, p in enumerate(prompts)]
  line_h = font_size + 3
  text_h = max(len(t) for t in texts) * line_h + pad
  columns = min(columns, len(images))
  rows = math.ceil(len(images) / columns)
  grid = Image.new("RGB", (columns * (cell_w + pad) + pad, rows * (cell_h + text_h + pad) + pad), "white")
  pen = ImageDraw.Draw(grid)
  for i, (image, lines) in enumerate(zip(images, texts)):
    r, c = divmod(i, columns)
    x, y = pad + c * (cell_w + pad), pad + r * (cell_h + text_h + pad)
    grid.paste(Image.fromarray(image).resize((cell_w, cell_h), Image.NEAREST), (x, y))
    for k, line in enumerate(lines):
      pen.text((x, y + cell_h + 2 + k * line_h), line, fill="black", font=font)
  return grid


def save_grid(images, prompts, path, notes=None, columns: int = 4) -> str:
  """Writes `labelled_grid(...)` to `path` (a PNG; parent folders are created); -> the path."""
  path = os.fspath(path)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  labelled_grid(images, prompts, notes, columns).save(path)
  return path

"""Exact GenEval-style evaluator for the synthetic shapes: image -> objects -> pass/fail per caption.

Reading an image: every pixel takes the nearest palette colour (or the grey background), a light
majority filter removes speckle noise, each colour's 8-connected components are objects, tiny
components are dropped, and a component's shape is the template (circle / square / upward
triangle, laid over its bounding box) with the highest IoU.

Scoring follows GenEval: an image is correct when each object group of its spec is present with the
exact count (objects of a group's shape, and of its colour when the caption names one) and, for
position prompts, every object of the first group lies on the named side of every object of the
second (by centroids). Accuracy per task, and `overall` = the mean of the task accuracies.
"""
import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

from sana_jax.data import shapes as shapes_lib

_PALETTE_NAMES = (None, *shapes_lib.COLORS)  # label 0 = background
_PALETTE = np.array([shapes_lib.BACKGROUND, *shapes_lib.COLORS.values()], np.float32)  # [K, 3]


@dataclasses.dataclass(frozen=True)
class DetectedObject:
  color: str
  shape: str
  centroid: tuple[float, float]  # (row, col) in pixels
  area: int


def to_uint8(image: np.ndarray) -> np.ndarray:
  """uint8 images pass through; float images are taken to be in [-1, 1] (the pipeline's range)."""
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
  if image.dtype == np.uint8:
    return image
  if not np.issubdtype(image.dtype, np.floating):
    raise ValueError(f"expected uint8 or float images in [-1, 1], got dtype {image.dtype}")
  return np.round((np.clip(image, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def palette_labels(image: np.ndarray) -> np.ndarray:
  """int [H, W] index of the nearest palette entry (0 = background), majority-filtered over 3x3."""
  rgb = to_uint8(image).astype(np.float32)
  labels = np.argmin(((rgb[:, :, None, :] - _PALETTE) ** 2).sum(-1), axis=-1)  # [H, W]
  votes = np.stack([ndimage.uniform_filter((labels == k).astype(np.float32), 3, mode="nearest")
                    for k in range(len(_PALETTE))])  # [K, H, W] share of each label around a pixel
  # A pixel changes label only when at least 7 of its 9 neighbourhood pixels agree on another one:
  # that removes speckles but keeps square corners and triangle apexes.
  majority = votes.argmax(0)
  return np.where(votes.max(0) > 0.7, majority, labels)


def detect_objects(image: np.ndarray, min_area: int | None = None) -> list[DetectedObject]:
  """The coloured objects in an image, in row-major order of their centroids."""
  labels = palette_labels(image)
  height, width = labels.shape
  if min_area is None:
    min_area = max(4, round(8 * height * width / 32 ** 2))  # well below the smallest rendered shape
  found = []
  for k in range(1, len(_PALETTE)):
    components, n = ndimage.label(labels == k, structure=np.ones((3, 3)))
    for box, index in zip(ndimage.find_objects(components), range(1, n + 1)):
      mask = components[box] == index
      area = int(mask.sum())
      if area < min_area:
        continue
      rows, cols = np.nonzero(mask)
      centroid = (float(rows.mean() + box[0].start), float(cols.mean() + box[1].start))
      found.append(DetectedObject(_PALETTE_NAMES[k], classify_shape(mask), centroid, area))
  return sorted(found, key=lambda o: o.centroid)


def classify_shape(mask: np.ndarray) -> str:
  """The shape whose template over the mask's bounding box overlaps it best (IoU)."""
  def iou(shape):
    template = shapes_lib.shape_mask(shape, *mask.shape)
    return (mask & template).sum() / (mask | template).sum()
  return max(shapes_lib.SHAPES, key=iou)


def _matches(obj: DetectedObject, group: shapes_lib.ObjectGroup) -> bool:
  return obj.shape == group.shape and (group.color is None or obj.color == group.color)


def _relation_holds(relation: str, first: Sequence[DetectedObject], second: Sequence[DetectedObject]) -> bool:
  axis = 1 if relation in ("left of", "right of") else 0  # compare columns or rows
  a = [o.centroid[axis] for o in first]
  b = [o.centroid[axis] for o in second]
  if relation in ("left of", "above"):
    return max(a) < min(b)
  return min(a) > max(b)


def evaluate_image(image: np.ndarray, spec: shapes_lib.SceneSpec | str) -> bool:
  """Whether the image shows its spec (a SceneSpec, its JSON, or a caption) — GenEval's per-image verdict."""
  spec = _as_spec(spec)
  return _verdict(detect_objects(image), spec)


def _verdict(objects: Sequence[DetectedObject], spec: shapes_lib.SceneSpec) -> bool:
  """evaluate_image's rule on objects already detected."""
  matched = [[o for o in objects if _matches(o, g)] for g in spec.groups]
  if any(len(m) != g.count for m, g in zip(matched, spec.groups)):
    return False
  return spec.relation is None or _relation_holds(spec.relation, *matched)


def _as_spec(spec) -> shapes_lib.SceneSpec:
  if isinstance(spec, shapes_lib.SceneSpec):
    return spec
  if isinstance(spec, str):
    return shapes_lib.SceneSpec.from_json(spec) if spec.lstrip().startswith("{") else shapes_lib.parse_caption(spec)
  raise TypeError(f"expected a SceneSpec, its JSON or a caption, got {type(spec).__name__}")


def verdicts(images: Iterable[np.ndarray], specs: Iterable[shapes_lib.SceneSpec | str]) -> list[tuple[str, bool]]:
  """(task, correct) per image, in order: the evaluator's verdict on each."""
  return [(spec.task, evaluate_image(image, spec))
          for image, spec in zip(images, map(_as_spec, specs), strict=True)]


def score(images: Iterable[np.ndarray], specs: Iterable[shapes_lib.SceneSpec | str]) -> dict[str, float]:
  """Accuracy per task present and `overall` (mean of the task accuracies), as GenEval reports."""
  return score_verdicts(verdicts(images, specs))


def score_verdicts(per_image: Sequence[tuple[str, bool]]) -> dict[str, float]:
  """`score` from the (task, correct) pairs `verdicts` returns."""
  if not per_image:
    raise ValueError("score() needs at least one image")
  results: dict[str, list[bool]] = {}
  for task, ok in per_image:
    results.setdefault(task, []).append(ok)
  per_task = {task: float(np.mean(results[task])) for task in shapes_lib.TASKS if task in results}
  return {**per_task, "overall": float(np.mean(list(per_task.values())))}


def failure_breakdown(images: Iterable[np.ndarray],
                      specs: Iterable[shapes_lib.SceneSpec | str]) -> dict[str, dict[str, float]]:
  """Where each task's images fail, as shares of that task's images: {task: {"images": n,
  "too_few" / "right_count" / "too_many": objects found vs objects asked for (every shape and
  colour), "right_shapes": right count and the shapes asked for, "right_colours": right count and
  the colours asked for (tasks whose captions name every colour only), "correct": the verdict}}."""
  tallies: dict[str, dict[str, int]] = {}
  colour_free = set()  # tasks with a caption that leaves some colour free
  for image, spec in zip(images, map(_as_spec, specs), strict=True):
    objects = detect_objects(image)
    wanted = [g for g in spec.groups for _ in range(g.count)]
    t = tallies.setdefault(spec.task, dict.fromkeys(
        ("images", "too_few", "right_count", "too_many", "right_shapes", "right_colours", "correct"), 0))
    t["images"] += 1
    if any(g.color is None for g in spec.groups):
      colour_free.add(spec.task)
    t["too_few" if len(objects) < len(wanted) else "too_many" if len(objects) > len(wanted) else "right_count"] += 1
    if len(objects) == len(wanted):
      t["right_shapes"] += sorted(o.shape for o in objects) == sorted(g.shape for g in wanted)
      t["right_colours"] += sorted(o.color for o in objects) == sorted(str(g.color) for g in wanted)
    t["correct"] += _verdict(objects, spec)  # the objects are read once per image
  out = {}
  for task in (t for t in shapes_lib.TASKS if t in tallies):
    t = tallies[task]
    out[task] = {"images": t["images"], **{k: round(v / t["images"], 3) for k, v in t.items()
                                             if k != "images" and (k != "right_colours" or task not in colour_free)}}
  return out


def score_table(scores: dict[str, float], counts: dict[str, int] | None = None) -> str:
  """The scores as a small text table (task, accuracy[, images]), `overall` last."""
  rows = [(task, f"{value:.3f}", "" if counts is None else str(counts.get(task, "")))
          for task, value in scores.items()]
  head = ("task", "score", "" if counts is None else "images")
  width = max(len(r[0]) for r in rows + [head])
  return "\n".join(f"{a:<{width}}  {b:>5}  {c:>6}".rstrip() for a, b, c in [head] + rows)

"""Synthetic compositional shapes: the built-in training data and the benchmark behind `shapes_eval`.

Every example is rendered on the fly from (seed, index), so the dataset needs no files and any
index can be read in any order (what Grain needs for deterministic shuffling and resume). A scene
is described by a `SceneSpec` (groups of objects + an optional relation between the first two
groups); its caption is a pure function of the spec, and `parse_caption` reads a caption back.

Tasks mirror GenEval: single object, two objects, counting, colours, position, colour attribution.
Objects sit in a 3x3 grid of cells with a margin, so they never touch and a relation such as "left
of" holds for every pair (each object of group 0 is in an earlier column than each of group 1).
The background is mid grey: blends of any palette colour with it (blur, antialiasing) stay closer
to that colour or to the background than to another palette colour.
"""
import dataclasses
import functools
import json
import re

import numpy as np

# Palette in RGB uint8; chosen far apart and so that colour/grey blends never look like another colour.
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 170, 30),
    "blue": (30, 60, 220),
    "yellow": (230, 210, 20),
    "purple": (140, 40, 170),
    "cyan": (20, 200, 220),
}
_COLOR_NAMES = tuple(COLORS)
BACKGROUND = (128, 128, 128)
SHAPES = ("circle", "square", "triangle")
RELATIONS = ("left of", "right of", "above", "below")
TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
MAX_COUNT = 3
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
GRID = 3  # cells per side


@dataclasses.dataclass(frozen=True)
class ObjectGroup:
  """`count` objects of one shape; `color=None` means the caption leaves the colour free."""
  shape: str
  count: int = 1
  color: str | None = None

  def __post_init__(self):
    if self.shape not in SHAPES:
      raise ValueError(f"unknown shape {self.shape!r}; choose one of {SHAPES}")
    if self.color is not None and self.color not in COLORS:
      raise ValueError(f"unknown colour {self.color!r}; choose one of {tuple(COLORS)}")
    if not 1 <= self.count <= MAX_COUNT:
      raise ValueError(f"count must be in 1..{MAX_COUNT}, got {self.count}")

  def phrase(self, count_word: bool) -> str:
    """'a red circle', 'two squares', 'one triangle' (count_word: say 'one' instead of 'a')."""
    number = COUNT_WORDS[self.count] if (count_word or self.count > 1) else "a"
    noun = self.shape + ("s" if self.count > 1 else "")
    return " ".join(w for w in (number, self.color, noun) if w)


@dataclasses.dataclass(frozen=True)
class SceneSpec:
  """What an image must show: one or two object groups, and `relation` = groups[0] <rel> groups[1]."""
  task: str
  groups: tuple[ObjectGroup, ...]
  relation: str | None = None

  def __post_init__(self):
    if self.task not in TASKS:
      raise ValueError(f"unknown task {self.task!r}; choose one of {TASKS}")
    if not 1 <= len(self.groups) <= 2:
      raise ValueError(f"a scene has one or two object groups, got {len(self.groups)}")
    if self.relation is not None:
      if self.relation not in RELATIONS:
        raise ValueError(f"unknown relation {self.relation!r}; choose one of {RELATIONS}")
      if len(self.groups) != 2:
        raise ValueError("a relation needs exactly two object groups")
    if len(self.groups) == 2 and _overlaps(*self.groups):
      raise ValueError(f"groups {self.groups} are not distinguishable (same shape, colours not both set and different)")

  @property
  def caption(self) -> str:
    phrases = [g.phrase(count_word=self.task == "counting") for g in self.groups]
    joiner = f" {self.relation} " if self.relation else " and "
    return joiner.join(phrases)

  def to_json(self) -> str:
    return _spec_json(self)

  @classmethod
  def from_json(cls, text: str) -> "SceneSpec":
    d = json.loads(text)
    return cls(task=d["task"], groups=tuple(ObjectGroup(**g) for g in d["groups"]), relation=d["relation"])


@functools.lru_cache(maxsize=4096)  # a few hundred distinct specs; asdict is most of an example's cost
def _spec_json(spec: SceneSpec) -> str:
  return json.dumps(dataclasses.asdict(spec), sort_keys=True)


def _overlaps(a: ObjectGroup, b: ObjectGroup) -> bool:
  """Whether an object could belong to both groups, which would make counting them ambiguous."""
  if a.shape != b.shape:
    return False
  return a.color is None or b.color is None or a.color == b.color


def vocabulary() -> list[str]:
  """Every word a shapes caption can use, sorted (the built-in text encoder's vocabulary)."""
  words = {"a", "and", "of", *COUNT_WORDS.values(), *COLORS, *SHAPES, *(s + "s" for s in SHAPES)}
  for relation in RELATIONS:
    words.update(relation.split())
  return sorted(words)


_NUMBERS = {"a": 1, "an": 1, **{w: n for n, w in COUNT_WORDS.items()}}
_PHRASE = re.compile(r"^(\w+) (?:(\w+) )?(\w+?)s?$")


def parse_caption(caption: str) -> SceneSpec:
  """Reads a caption written by `SceneSpec.caption` back into its spec (task inferred as GenEval would)."""
  text = " ".join(caption.lower().split())
  relation = next((r for r in RELATIONS if f" {r} " in text), None)
  parts = text.split(f" {relation} ") if relation else text.split(" and ")
  groups, count_words = [], False
  for part in parts:
    m = _PHRASE.match(part)
    if not m or m.group(1) not in _NUMBERS or m.group(3) not in SHAPES or (m.group(2) and m.group(2) not in COLORS):
      raise ValueError(f"cannot parse {part!r} in caption {caption!r}")
    count_words |= m.group(1) == "one"
    groups.append(ObjectGroup(shape=m.group(3), count=_NUMBERS[m.group(1)], color=m.group(2)))
  if relation:
    task = "position"
  elif len(groups) == 2:
    task = "color_attr" if all(g.color for g in groups) else "two_object"
  elif count_words or groups[0].count > 1:
    task = "counting"
  else:
    task = "colors" if groups[0].color else "single_object"
  return SceneSpec(task=task, groups=tuple(groups), relation=relation)


def sample_spec(rng: np.random.Generator, task: str) -> SceneSpec:
  """A random spec of the given GenEval-style task."""
  def pick(options, k=None):
    if k is None:  # options[rng.integers(n)] is the draw rng.choice(options) makes, without an array
      return options[int(rng.integers(0, len(options)))]
    return [str(o) for o in rng.choice(options, size=k, replace=False)]

  relation = None
  if task == "single_object":
    groups = (ObjectGroup(pick(SHAPES)),)
  elif task == "counting":
    groups = (ObjectGroup(pick(SHAPES), count=int(rng.integers(1, MAX_COUNT + 1))),)
  elif task == "colors":
    groups = (ObjectGroup(pick(SHAPES), color=pick(list(COLORS))),)
  elif task in ("two_object", "position"):
    groups = tuple(ObjectGroup(s) for s in pick(SHAPES, 2))
    relation = pick(RELATIONS) if task == "position" else None
  elif task == "color_attr":
    groups = tuple(ObjectGroup(pick(SHAPES), color=c) for c in pick(list(COLORS), 2))
  else:
    raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
  return SceneSpec(task=task, groups=groups, relation=relation)


def shape_mask(shape: str, height: int, width: int | None = None) -> np.ndarray:
  """Boolean [height, width] mask of a shape filling its box (triangles point up), by pixel centres.

  Read-only and cached per (shape, height, width): rendering asks for the same few masks again and again.
  """
  return _shape_mask(shape, int(height), int(height if width is None else width))


@functools.lru_cache(maxsize=1024)
def _shape_mask(shape: str, height: int, width: int) -> np.ndarray:
  y = ((np.arange(height) + 0.5) / height)[:, None]  # pixel centres in (0, 1)
  x = ((np.arange(width) + 0.5) / width)[None, :]
  if shape == "square":
    mask = np.ones((height, width), bool)
  elif shape == "circle":
    mask = (x - 0.5) ** 2 + (y - 0.5) ** 2 <= 0.25
  elif shape == "triangle":
    mask = np.abs(x - 0.5) <= 0.5 * y + 0.5 / width  # apex at the top centre, base along the bottom row
  else:
    raise ValueError(f"unknown shape {shape!r}; choose one of {SHAPES}")
  mask.flags.writeable = False
  return mask


@functools.lru_cache(maxsize=64)
def _cell_bounds(image_size: int) -> tuple[int, ...]:
  return tuple(int(b) for b in np.round(np.linspace(0, image_size, GRID + 1)))


def _layout(rng: np.random.Generator, spec: SceneSpec) -> list[list[tuple[int, int]]]:
  """Grid cells (row, col) for every object of every group, honouring the relation."""
  counts = [g.count for g in spec.groups]
  if spec.relation is None:
    cells = rng.permutation(GRID * GRID)[:sum(counts)]
    cells = [(int(c) // GRID, int(c) % GRID) for c in cells]
    return [cells[:counts[0]], cells[counts[0]:]]
  first, second = sorted(rng.choice(GRID, size=2, replace=False))  # lines along the relation axis
  if spec.relation in ("right of", "below"):
    first, second = second, first
  placed = []
  for line, count in zip((first, second), counts):
    others = rng.permutation(GRID)[:count]
    if spec.relation in ("left of", "right of"):
      placed.append([(int(r), int(line)) for r in others])
    else:
      placed.append([(int(line), int(c)) for c in others])
  return placed


def render(spec: SceneSpec, rng: np.random.Generator, image_size: int = 32) -> np.ndarray:
  """uint8 [image_size, image_size, 3] image of the spec; free colours and sizes drawn from rng."""
  if image_size < 24:
    raise ValueError(f"image_size must be at least 24 to draw a 3x3 grid of shapes, got {image_size}")
  bounds = _cell_bounds(image_size)
  cell = min(b - a for a, b in zip(bounds, bounds[1:]))
  smallest, largest = max(6, int(0.75 * (cell - 2))), cell - 2  # 1-pixel margin on each side of a cell
  image = np.empty((image_size, image_size, 3), np.uint8)
  image[...] = BACKGROUND
  for group, cells in zip(spec.groups, _layout(rng, spec)):
    for row, col in cells:
      color = group.color or _COLOR_NAMES[int(rng.integers(0, len(_COLOR_NAMES)))]  # = rng.choice(list(COLORS))
      size = int(rng.integers(smallest, largest + 1))
      top = bounds[row] + 1 + int(rng.integers(0, bounds[row + 1] - bounds[row] - size - 1))
      left = bounds[col] + 1 + int(rng.integers(0, bounds[col + 1] - bounds[col] - size - 1))
      mask = shape_mask(group.shape, size)
      image[top:top + size, left:left + size][mask] = COLORS[color]
  return image


class ShapesSource:
  """Random-access source of shapes examples (len + getitem), deterministic in (seed, index).

  An example is {"image": uint8 [H, W, 3], "caption": str, "spec": SceneSpec JSON, "task": str}.
  Tasks cycle with the index, so any contiguous range is balanced across tasks.
  """

  def __init__(self, num_examples: int = 100_000, image_size: int = 32, seed: int = 0, tasks=TASKS):
    unknown = set(tasks) - set(TASKS)
    if unknown or not tasks:
      raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {tuple(tasks)}")
    if num_examples <= 0:
      raise ValueError(f"num_examples must be positive, got {num_examples}")
    self.num_examples, self.image_size, self.seed, self.tasks = num_examples, image_size, seed, tuple(tasks)

  def __len__(self) -> int:
    return self.num_examples

  def spec(self, index: int) -> SceneSpec:
    return self._example(index)[0]

  def _example(self, index: int):
    if not 0 <= index < self.num_examples:
      raise IndexError(f"index {index} out of range for {self.num_examples} shapes examples")
    rng = np.random.default_rng([self.seed, index])
    spec = sample_spec(rng, self.tasks[index % len(self.tasks)])
    return spec, rng

  def first(self, count: int):
    """The first `count` examples at once -> (images float32 [count, H, W, 3] in [-1, 1], the
    pipeline's range; their SceneSpecs): what held-out checks and fits read."""
    if not 0 < count <= self.num_examples:
      raise ValueError(f"count must be in 1..{self.num_examples}, got {count}")
    examples = [self._example(i) for i in range(count)]
    images = np.stack([render(spec, rng, self.image_size) for spec, rng in examples])
    return images.astype(np.float32) / 127.5 - 1.0, [spec for spec, _ in examples]

  def __getitem__(self, index: int) -> dict:
    spec, rng = self._example(int(index))
    image = render(spec, rng, self.image_size)
    return {"image": image, "caption": spec.caption, "spec": spec.to_json(), "task": spec.task}

  def __repr__(self) -> str:
    return f"ShapesSource(num_examples={self.num_examples}, image_size={self.image_size}, seed={self.seed})"


def heldout_source(count: int, image_size: int, training_seed: int, tasks=TASKS) -> ShapesSource:
  """The held-out scenes of a run trained on ShapesSource(..., training_seed, tasks): the generator
  with the next seed and each task of `tasks` once (a task named twice weights training, not the
  score), so every held-out check of a run reads the same scenes."""
  return ShapesSource(count, image_size, training_seed + 1, tuple(dict.fromkeys(tasks)))

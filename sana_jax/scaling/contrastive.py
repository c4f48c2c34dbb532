"""A small contrastive image-caption scorer for the shapes data: a best-of-N judge that is not the evaluator.

SANA 1.5's inference-time scaling draws N images and lets a judge (NVILA-2B, a VLM fine-tuned to
say whether an image matches its prompt) keep the best. Without a VLM on the CPU, the mini
reproduction trains this CLIP-style scorer on shapes renders in a minute or two: an image tower (a
conv net whose last map is flattened, so it keeps where things are) and a caption tower (an MLP on
the built-in word vectors with their position code, flattened, so it keeps word order), trained so
that an image's own caption scores above the other captions of the batch and above a *hard
negative*: its caption with one fact changed (a shape, a colour, a count, the relation, or the two
colours swapped). The evaluator's code is never used to train or to judge; only the renderer's
specs are.

    judge = contrastive.fit(steps=1500)                # -> ContrastiveJudge; about a minute on 2 cores
    judge.save("judge/")                               # judge.json + state/ (Orbax), never overwritten
    judge = contrastive.load("judge/")
    judge.select(images, "a red circle left of a blue square", keep=1)   # judges.PointwiseJudge

    python -m sana_jax.scaling.contrastive --out judge/ [--steps 1500] [--image_size 32]   # fit and save
    python -m sana_jax.sample --checkpoint WORKDIR --best_of 16 --judge contrastive:judge/ ...

Score: the cosine similarity of image and caption embeddings (higher is better).
"""
import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import nnx

from sana_jax.convert import native
from sana_jax.data import shapes
from sana_jax.models.simple_codecs import WordEmbeddingTextEncoder
from sana_jax.scaling import judges

_META = "judge.json"
KIND = "shapes_contrastive"


@dataclasses.dataclass(frozen=True)
class ContrastiveConfig:
  image_size: int = 32
  widths: tuple = (32, 64, 128)   # conv stages, each halving the resolution
  embed_dim: int = 128
  word_dim: int = 32              # the caption word vectors (WordEmbeddingTextEncoder)
  max_text_length: int = 16
  text_hidden: int = 256

  def __post_init__(self):
    object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))  # JSON gives a list


class ContrastiveScorer(nnx.Module):
  def __init__(self, config: ContrastiveConfig, *, rngs: nnx.Rngs):
    self.config = config
    convs, prev = [], 3
    for w in config.widths:
      convs.append(nnx.Conv(prev, w, (3, 3), strides=(2, 2), padding="SAME", rngs=rngs))
      prev = w
    self.convs = nnx.List(convs)
    side = config.image_size // 2 ** len(config.widths)
    self.image_out = nnx.Linear(side * side * prev, config.embed_dim, rngs=rngs)
    self.text_hidden = nnx.Linear(config.max_text_length * config.word_dim, config.text_hidden, rngs=rngs)
    self.text_out = nnx.Linear(config.text_hidden, config.embed_dim, rngs=rngs)
    self.log_scale = nnx.Param(jnp.asarray(np.log(10.0), jnp.float32))

  def embed_images(self, images):
    """[B, H, W, 3] in [-1, 1] -> unit vectors [B, embed_dim]."""
    x = images
    for conv in self.convs:
      x = jax.nn.silu(conv(x))
    return _unit(self.image_out(x.reshape(x.shape[0], -1)))

  def embed_text(self, text):
    """Word vectors [B, L, word_dim] (padding zero) -> unit vectors [B, embed_dim]."""
    return _unit(self.text_out(jax.nn.silu(self.text_hidden(text.reshape(text.shape[0], -1)))))


def _unit(x):
  return x / jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + 1e-12)


def text_encoder(config: ContrastiveConfig) -> WordEmbeddingTextEncoder:
  """The judge's own (parameter-free) word vectors; seed 1, not the transformer's seed 0."""
  return WordEmbeddingTextEncoder(shapes.vocabulary(), config.word_dim, config.max_text_length, seed=1)


def hard_negative(spec: shapes.SceneSpec, rng: np.random.Generator) -> shapes.SceneSpec:
  """The spec with one fact changed, so that an image of `spec` does not show it."""
  groups = list(spec.groups)
  options = ["shape"]
  if any(g.color for g in groups):
    options.append("color")
  if spec.task == "counting":
    options.append("count")
  if spec.relation:
    options.append("relation")
  if len(groups) == 2 and groups[0].color and groups[1].color and groups[0].shape != groups[1].shape:
    options.append("swap")  # (two circles with their colours swapped are the same two circles)
  for _ in range(20):  # a change can make the two groups ambiguous: try another
    kind = options[int(rng.integers(len(options)))]
    new = list(groups)
    i = int(rng.integers(len(groups)))
    if kind == "shape":
      new[i] = dataclasses.replace(groups[i], shape=str(rng.choice([s for s in shapes.SHAPES if s != groups[i].shape])))
    elif kind == "color":
      i = next(j for j in (i, 1 - i) if j < len(groups) and groups[j].color)
      new[i] = dataclasses.replace(groups[i], color=str(rng.choice([c for c in shapes.COLORS if c != groups[i].color])))
    elif kind == "count":
      new[0] = dataclasses.replace(groups[0], count=int(rng.choice(
          [n for n in range(1, shapes.MAX_COUNT + 1) if n != groups[0].count])))
    elif kind == "swap":
      new = [dataclasses.replace(groups[0], color=groups[1].color), dataclasses.replace(groups[1], color=groups[0].color)]
    relation = spec.relation
    if kind == "relation":
      relation = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}[relation]
    try:
      return shapes.SceneSpec(task=spec.task, groups=tuple(new), relation=relation)
    except ValueError:
      continue
  raise RuntimeError(f"no hard negative found for {spec}")  # unreachable for the built-in tasks


class ContrastiveJudge(judges.PointwiseJudge):
  """A trained `ContrastiveScorer` as a best-of-N judge (score = cosine of image and caption)."""

  def __init__(self, scorer: ContrastiveScorer, report: dict | None = None):
    self.scorer, self.report = scorer, dict(report or {})
    self._text = text_encoder(scorer.config)
    graphdef, state = nnx.split(scorer)
    cosine = jax.jit(lambda s, im, tx: (nnx.merge(graphdef, s).embed_images(im) @
                                        nnx.merge(graphdef, s).embed_text(tx)[0]))
    size = scorer.config.image_size

    def score_fn(images, prompt):
      images = _as_float(images)
      if images.shape[1:3] != (size, size):
        raise ValueError(f"the contrastive judge reads {size}x{size} images, got {images.shape[1]}x{images.shape[2]}")
      return np.asarray(cosine(state, jnp.asarray(images), self._text.encode([prompt])[0]))

    super().__init__(score_fn, name="contrastive")

  def save(self, folder) -> str:
    """Writes judge.json + state/ to `folder` (which must not exist) via a temporary sibling."""
    meta = {"kind": KIND, "config": dataclasses.asdict(self.scorer.config), "fit": self.report}
    return native.save_module_folder(self.scorer, meta, folder, _META, "a judge")


def _as_float(images) -> np.ndarray:
  return judges.to_uint8(images).astype(np.float32) / 127.5 - 1.0


def load(folder) -> ContrastiveJudge:
  """-> the judge saved in `folder`; CheckpointError naming what is wrong."""
  scorer, meta = native.load_module_folder(folder, _META, ContrastiveConfig, ContrastiveScorer, "contrastive judge",
                                           kind=KIND)
  return ContrastiveJudge(scorer, meta.get("fit"))


def _pool(count: int, config: ContrastiveConfig, seed: int):
  return shapes.ShapesSource(count, config.image_size, seed).first(count)


def fit(steps: int = 1500, batch_size: int = 128, pool_size: int = 20_000, learning_rate: float = 2e-3,
        seed: int = 1000, config: ContrastiveConfig | None = None, progress: bool = True) -> ContrastiveJudge:
  """Trains the scorer on `pool_size` shapes renders of data seed `seed` (not the transformer's
  training seed 0 nor the held-out prompts' 1); report: steps, seconds, final loss and the held-out
  accuracy of telling a render's caption from its hard negative."""
  config = config or ContrastiveConfig()
  if steps < 1 or batch_size < 2 or pool_size < batch_size:
    raise ValueError(f"need steps >= 1, batch_size >= 2 and pool_size >= batch_size, got {steps}, {batch_size}, {pool_size}")
  start = time.perf_counter()
  words = text_encoder(config)
  images, specs = _pool(pool_size, config, seed)
  captions = [s.caption for s in specs]
  caption_ids = np.unique(captions, return_inverse=True)[1]  # equal captions, equal ids
  scorer = ContrastiveScorer(config, rngs=nnx.Rngs(seed))
  optimizer = nnx.Optimizer(scorer, optax.adam(learning_rate), wrt=nnx.Param)

  @nnx.jit
  def train_step(scorer, optimizer, images, text, negatives, same):
    def loss_fn(scorer):
      im = scorer.embed_images(images)
      tx = scorer.embed_text(jnp.concatenate([text, negatives]))  # [2B, E]: own captions, then hard negatives
      logits = jnp.exp(scorer.log_scale) * im @ tx.T  # [B, 2B]
      b = images.shape[0]
      # A caption equal to an image's own (the same words drawn twice) is not a negative for it.
      logits = jnp.where(jnp.concatenate([same, jnp.zeros_like(same)], 1), -1e9, logits)
      labels = jnp.arange(b)
      image_to_text = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      text_to_image = optax.softmax_cross_entropy_with_integer_labels(logits[:, :b].T, labels).mean()
      return (image_to_text + text_to_image) / 2
    loss, grads = nnx.value_and_grad(loss_fn)(scorer)
    optimizer.update(scorer, grads)
    return loss

  rng = np.random.default_rng(seed)
  losses = []
  bar = tqdm.tqdm(range(steps), desc="fitting the judge", unit="step", disable=not progress, mininterval=2.0)
  for i in bar:
    rows = rng.choice(pool_size, batch_size, replace=False)
    own = [captions[r] for r in rows]
    ids = caption_ids[rows]
    same = (ids[:, None] == ids[None, :]) & ~np.eye(batch_size, dtype=bool)
    negatives = [hard_negative(specs[r], rng).caption for r in rows]
    losses.append(train_step(scorer, optimizer, jnp.asarray(images[rows]), words.encode(own)[0],
                             words.encode(negatives)[0], jnp.asarray(same)))
    if i % 100 == 99:
      bar.set_postfix(loss=f"{float(losses[-1]):.3f}")
  final = float(np.mean(jax.device_get(losses[-min(50, len(losses)):])))
  if not np.isfinite(final):
    raise FloatingPointError(f"fitting the judge diverged (loss {final}); lower learning_rate ({learning_rate})")
  judge = ContrastiveJudge(scorer, {"steps": steps, "batch_size": batch_size, "pool_size": pool_size,
                                    "seed": seed, "loss": round(final, 4)})
  judge.report["hard_negative_accuracy"] = round(hard_negative_accuracy(judge, seed=seed + 1), 3)
  judge.report["seconds"] = round(time.perf_counter() - start, 1)
  return judge


def hard_negative_accuracy(judge: ContrastiveJudge, count: int = 384, seed: int = 1001) -> float:
  """Share of held-out renders (data seed `seed`) whose own caption the judge scores above its hard
  negative: 0.5 is chance."""
  images, specs = _pool(count, judge.scorer.config, seed)
  rng = np.random.default_rng(seed)
  wins = [judge.scores(images[i:i + 1], s.caption)[0] > judge.scores(images[i:i + 1], hard_negative(s, rng).caption)[0]
          for i, s in enumerate(specs)]
  return float(np.mean(wins))


def main(argv=None):
  import argparse
  parser = argparse.ArgumentParser(description="Fit the contrastive shapes judge and save it.")
  parser.add_argument("--out", required=True, help="folder to write (must not exist)")
  parser.add_argument("--steps", type=int, default=1500)
  parser.add_argument("--seed", type=int, default=1000)
  parser.add_argument("--image_size", type=int, default=ContrastiveConfig.image_size,
                      help="side of the images it judges: the model's (24 for the default job's tiny24, 32 for tiny)")
  args = parser.parse_args(argv)
  if os.path.exists(args.out):
    parser.error(f"{args.out} exists; a judge folder is never overwritten")
  judge = fit(steps=args.steps, seed=args.seed, config=ContrastiveConfig(image_size=args.image_size))
  print(f"judge: {judge.report} -> {judge.save(args.out)}")


if __name__ == "__main__":
  main()

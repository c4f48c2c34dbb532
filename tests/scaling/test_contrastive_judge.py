"""The contrastive shapes judge: its hard negatives, that a short fit learns, save / load, bad folders."""
import json
import os

import numpy as np
import pytest

from sana_jax.convert.tensors import CheckpointError
from sana_jax.data import shapes, shapes_eval
from sana_jax.scaling import contrastive
from sana_jax.scaling.best_of_n import make_judge


@pytest.mark.parametrize("task", shapes.TASKS)
def test_a_hard_negative_is_a_caption_the_render_does_not_satisfy(task):
  rng = np.random.default_rng(0)
  for i in range(40):
    spec = shapes.sample_spec(rng, task)
    image = shapes.render(spec, rng)
    negative = contrastive.hard_negative(spec, rng)
    assert negative.caption != spec.caption
    assert shapes_eval.evaluate_image(image, spec)  # the render shows its own caption ...
    assert not shapes_eval.evaluate_image(image, negative), (spec.caption, negative.caption)  # ... not this one


@pytest.fixture(scope="module")
def small_judge():
  # A narrow scorer, 300 steps on 4,000 renders: ~15 s on 2 cores.
  config = contrastive.ContrastiveConfig(widths=(16, 32, 32), embed_dim=64, text_hidden=128)
  return contrastive.fit(steps=300, batch_size=64, pool_size=4000, config=config, progress=False)


def test_a_short_fit_tells_captions_from_their_hard_negatives(small_judge):
  # Chance is 0.5; measured 0.83 after 300 steps (14 s) (1500 steps of the default scorer: see docs/sana15_mini.md).
  assert small_judge.report["hard_negative_accuracy"] > 0.65, small_judge.report
  source = shapes.ShapesSource(64, seed=77)
  images = np.stack([source[i]["image"] for i in range(64)])
  own = np.mean([small_judge.scores(images[i:i + 1], source[i]["caption"])[0] for i in range(64)])
  other = np.mean([small_judge.scores(images[i:i + 1], source[(i + 1) % 64]["caption"])[0] for i in range(64)])
  assert own > other + 0.1, (own, other)


def test_the_judge_saves_loads_and_never_overwrites(small_judge, tmp_path):
  folder = small_judge.save(tmp_path / "judge")
  loaded = contrastive.load(folder)
  images = np.stack([shapes.ShapesSource(4, seed=5)[i]["image"] for i in range(4)])
  np.testing.assert_allclose(loaded.scores(images, "a red circle"), small_judge.scores(images, "a red circle"),
                             rtol=1e-6, atol=1e-6)
  assert loaded.report["steps"] == 300
  assert loaded.select(images, "a circle", keep=2).winners == small_judge.select(images, "a circle", keep=2).winners
  with pytest.raises(FileExistsError, match="never overwritten"):
    small_judge.save(folder)
  assert not [p for p in os.listdir(tmp_path) if "partial" in p]
  with pytest.raises(ValueError, match="reads 32x32 images, got 64x64"):
    small_judge.scores(np.zeros((2, 64, 64, 3), np.uint8), "a circle")
  from_cli = make_judge(f"contrastive:{folder}")  # python -m sana_jax.sample --best_of N --judge contrastive:DIR
  np.testing.assert_allclose(from_cli.scores(images, "a circle"), small_judge.scores(images, "a circle"), rtol=1e-6, atol=1e-6)


def test_a_folder_that_is_not_a_judge_gets_one_line(tmp_path):
  with pytest.raises(CheckpointError, match="cannot read judge.json"):
    contrastive.load(tmp_path)
  (tmp_path / "judge.json").write_text(json.dumps({"kind": "conv_fit", "config": {}}))
  with pytest.raises(CheckpointError, match="kind 'conv_fit' is not 'shapes_contrastive'"):
    contrastive.load(tmp_path)

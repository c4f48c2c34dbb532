"""Aspect-ratio buckets against diffusers' bins, and one-bucket batch plans."""
import numpy as np
import pytest
from diffusers.image_processor import PixArtImageProcessor
from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import (ASPECT_RATIO_256_BIN, ASPECT_RATIO_512_BIN,
                                                                      ASPECT_RATIO_1024_BIN)

from sana_jax.data import buckets


def test_1024_table_has_40_buckets_from_512x2048_to_2048x512():
  table = buckets.ASPECT_RATIO_1024
  assert len(table) == 40
  assert table["0.25"] == [512.0, 2048.0] and table["4.0"] == [2048.0, 512.0]


def test_1024_table_agrees_with_diffusers_bins():
  assert all(buckets.ASPECT_RATIO_1024[k] == v for k, v in ASPECT_RATIO_1024_BIN.items())


@pytest.mark.parametrize("base, multiple, reference", [(512, 32, ASPECT_RATIO_512_BIN), (256, 16, ASPECT_RATIO_256_BIN)])
def test_scaled_table_reproduces_diffusers_smaller_bins(base, multiple, reference):
  table = buckets.scale_table(base, multiple)
  assert {k: table[k] for k in reference} == {k: (int(h), int(w)) for k, (h, w) in reference.items()}


def test_scaled_sides_are_multiples_of_the_grid():
  table = buckets.scale_table(48, 8)
  assert table["1.0"] == (48, 48)
  assert all(h % 8 == 0 and w % 8 == 0 and h >= 8 and w >= 8 for h, w in table.values())


def test_nearest_bucket_matches_diffusers_classification():
  rng = np.random.default_rng(0)
  for h, w in rng.integers(100, 3000, size=(200, 2)):
    key = buckets.nearest_bucket(int(h), int(w), ASPECT_RATIO_1024_BIN)
    assert tuple(map(int, ASPECT_RATIO_1024_BIN[key])) == PixArtImageProcessor.classify_height_width_bin(
        int(h), int(w), ASPECT_RATIO_1024_BIN)


@pytest.fixture(scope="module")
def bucket_ids():
  return np.random.default_rng(0).integers(0, 3, size=103)


def test_every_planned_batch_holds_one_bucket_and_no_example_twice(bucket_ids):
  plan = buckets.batch_plan(bucket_ids, 8, seed=0, epoch=0)
  assert plan.shape[1] == 8
  assert all(len(set(bucket_ids[batch])) == 1 for batch in plan)
  assert len(np.unique(plan)) == plan.size
  assert len(plan) == sum(np.sum(bucket_ids == b) // 8 for b in range(3))


def test_plan_is_deterministic_per_epoch_and_reshuffles_across_epochs(bucket_ids):
  first = buckets.batch_plan(bucket_ids, 8, seed=0, epoch=0)
  np.testing.assert_array_equal(first, buckets.batch_plan(bucket_ids, 8, seed=0, epoch=0))
  assert not np.array_equal(first, buckets.batch_plan(bucket_ids, 8, seed=0, epoch=1))


def test_plan_refuses_a_batch_larger_than_every_bucket():
  with pytest.raises(ValueError, match="no bucket has 8 examples"):
    buckets.batch_plan(np.array([0, 0, 1, 1]), 8, seed=0, epoch=0)


def test_resize_center_crop_covers_then_crops_the_middle():
  image = np.zeros((40, 100, 3), np.uint8)
  image[:, 40:60] = 255  # a bright band in the middle
  out = buckets.resize_center_crop(image, 20, 20)  # resize to 20x50, keep columns 15..35
  assert out.shape == (20, 20, 3)
  assert out[:, 9:11].min() > 200 and out[:, :4].max() < 50

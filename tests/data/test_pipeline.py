"""The Grain pipeline: batch format, determinism, per-host sharding and exact resume."""
import numpy as np
import pytest

from sana_jax.data import pipeline, shapes, shapes_eval


@pytest.fixture(scope="module")
def cfg():
  c = pipeline.default_data_config()
  c.shapes_num_examples = 60
  return c


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_same(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])


def test_shapes_batches_hold_images_captions_and_specs(cfg):
  batch = next(pipeline.make_dataset(cfg, global_batch_size=8, seed=0))
  assert batch["images"].shape == (8, 32, 32, 3) and batch["images"].dtype == np.float32
  assert -1.0 <= batch["images"].min() and batch["images"].max() <= 1.0
  assert [str(c) for c in batch["captions"]] == [shapes.SceneSpec.from_json(s).caption for s in batch["specs"]]
  assert shapes_eval.score(list(batch["images"]), list(batch["specs"]))["overall"] == 1.0


def test_same_seed_gives_the_same_batches_and_another_seed_does_not(cfg):
  a = _take(pipeline.make_dataset(cfg, 8, seed=0), 3)
  b = _take(pipeline.make_dataset(cfg, 8, seed=0), 3)
  c = next(pipeline.make_dataset(cfg, 8, seed=1))
  for x, y in zip(a, b):
    _assert_same(x, y)
  assert not np.array_equal(a[0]["indices"], c["indices"])


def test_restored_iterator_continues_with_the_same_batches(cfg):
  iterator = pipeline.make_dataset(cfg, 8, seed=0)
  _take(iterator, 9)  # crosses the first epoch (7 batches of 8 from 60 examples)
  state = iterator.get_state()
  expected = _take(iterator, 4)
  resumed = pipeline.make_dataset(cfg, 8, seed=0)
  resumed.set_state(state)
  for x, y in zip(expected, _take(resumed, 4)):
    _assert_same(x, y)


def test_hosts_get_disjoint_slices_that_make_up_the_global_batch(cfg):
  whole = _take(pipeline.make_dataset(cfg, 8, seed=3), 2)
  hosts = [_take(pipeline.make_dataset(cfg, 8, seed=3, shard_index=k, shard_count=2), 2) for k in range(2)]
  for step in range(2):
    assert hosts[0][step]["images"].shape[0] == 4
    np.testing.assert_array_equal(np.concatenate([h[step]["indices"] for h in hosts]), whole[step]["indices"])
    np.testing.assert_array_equal(np.concatenate([h[step]["images"] for h in hosts]), whole[step]["images"])


def test_an_epoch_visits_each_example_at_most_once(cfg):
  epoch_cfg = cfg.copy_and_resolve_references()
  epoch_cfg.num_epochs = 1
  indices = np.concatenate([b["indices"] for b in pipeline.make_dataset(epoch_cfg, 8, seed=0)])
  assert len(indices) == 56 and len(np.unique(indices)) == 56


def test_image_size_64_gives_64_pixel_batches(cfg):
  big = cfg.copy_and_resolve_references()
  big.image_size = 64
  assert next(pipeline.make_dataset(big, 2, seed=0))["images"].shape == (2, 64, 64, 3)


@pytest.mark.parametrize("kwargs, problem", [
    (dict(global_batch_size=6, shard_count=4), "multiple of shard_count"),
    (dict(global_batch_size=8, shard_index=2, shard_count=2), "shard_index 2"),
])
def test_bad_batch_or_shard_arguments_are_refused(cfg, kwargs, problem):
  with pytest.raises(ValueError, match=problem):
    pipeline.make_dataset(cfg, seed=0, **kwargs)


def test_unknown_source_name_lists_the_choices(cfg):
  bad = cfg.copy_and_resolve_references()
  bad.name = "laion"
  with pytest.raises(ValueError, match="choose one of"):
    pipeline.make_dataset(bad, 8, seed=0)

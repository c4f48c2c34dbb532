"""Checkpoints: round trip, keep-N, and every fault that could lose one: an unreadable step (moved
aside, saves continue), all unreadable (stop, nothing moved), partial folders of a killed save,
a failed write (surfaced at once), non-finite parameters."""
import errno
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from sana_jax.training import checkpointing
from tests.training.helpers import linear_state, sgd_momentum, tiny_config


@pytest.fixture(scope="module")
def setup():
  cfg = tiny_config(ema_decay=0.9)
  graphdef, state = linear_state(cfg, sgd_momentum(), ema=True)
  return cfg, state


def _abstract(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def _bumped(state, k):
  return jax.tree.map(lambda x: x + k, state)


def _assert_same(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def _corrupt(step_dir):
  for f in (step_dir / "state").rglob("*"):
    if f.is_file():
      f.write_bytes(b"\x00garbage")


def _saved(tmp_path, cfg, state, steps, keep=3):
  ckpt = checkpointing.Checkpointer(tmp_path, keep=keep, owner=True)
  for s in steps:
    ckpt.save(s, _bumped(state, s), cfg, {"next_index": s})
  ckpt.wait()
  ckpt.close()


def test_restore_returns_the_saved_state_data_position_and_writes_the_config(setup, tmp_path):
  cfg, state = setup
  ckpt = checkpointing.Checkpointer(tmp_path, keep=2)
  ckpt.save(5, state, cfg, {"next_index": 5})
  ckpt.wait()
  step, restored, data_state = ckpt.restore_latest(_abstract(state))
  assert step == 5 and data_state == {"next_index": 5}
  _assert_same(restored, state)
  saved_cfg = json.loads((tmp_path / "5" / "config" / "metadata").read_text())
  assert saved_cfg["train"]["ema_decay"] == 0.9 and saved_cfg["model"]["name"] == "tiny"
  assert ckpt.stored_config() == (5, saved_cfg)


def test_only_the_newest_checkpoints_are_kept(setup, tmp_path):
  cfg, state = setup
  ckpt = checkpointing.Checkpointer(tmp_path, keep=2)
  for step in (1, 2, 3):
    ckpt.save(step, _bumped(state, step), cfg, {"next_index": step})
  ckpt.wait()
  assert ckpt.steps() == [2, 3]


def test_empty_directory_restores_nothing(setup, tmp_path):
  _, state = setup
  assert checkpointing.Checkpointer(tmp_path, keep=2).restore_latest(_abstract(state)) is None


def test_unreadable_latest_is_moved_aside_and_later_saves_of_that_step_are_written(setup, tmp_path, caplog):
  """Issue 14.1: the bad step used to stay on disk and make Orbax decline every later save."""
  cfg, state = setup
  _saved(tmp_path, cfg, state, (1, 2), keep=2)
  _corrupt(tmp_path / "2")
  ckpt = checkpointing.Checkpointer(tmp_path, keep=2, owner=True)
  with caplog.at_level(logging.WARNING):
    step, restored, data_state = ckpt.restore_latest(_abstract(state))
  assert step == 1 and data_state == {"next_index": 1}
  _assert_same(restored, _bumped(state, 1))
  assert "step 2 is unreadable" in caplog.text and len(caplog.text) < 2000  # no TensorStore dump
  assert (tmp_path / "unreadable" / "2" / "state").is_dir()
  for s in (2, 3, 4):  # retention (keep 2) rotates the new steps only; the bad one stays aside
    ckpt.save(s, _bumped(state, 10 * s), cfg, {"next_index": s})
  ckpt.wait()
  assert ckpt.steps() == [3, 4] and (tmp_path / "unreadable" / "2").is_dir()
  ckpt.close()


def test_all_unreadable_stops_naming_each_step_and_moves_nothing(setup, tmp_path):
  cfg, state = setup
  _saved(tmp_path, cfg, state, (1, 2))
  _corrupt(tmp_path / "1")
  _corrupt(tmp_path / "2")
  ckpt = checkpointing.Checkpointer(tmp_path, keep=3, owner=True)
  with pytest.raises(checkpointing.CheckpointError, match=r"no checkpoint .* can be read") as err:
    ckpt.restore_latest(_abstract(state))
  assert "step 2: " in str(err.value) and "step 1: " in str(err.value)
  assert "TensorStore" not in str(err.value) and len(str(err.value)) < 1500
  assert sorted(os.listdir(tmp_path)) == ["1", "2"]


def test_a_reader_skips_an_unreadable_step_without_moving_it(setup, tmp_path):
  cfg, state = setup
  _saved(tmp_path, cfg, state, (1, 2))
  _corrupt(tmp_path / "2")
  step, _, _ = checkpointing.Checkpointer(tmp_path, keep=3).restore_latest(_abstract(state))
  assert step == 1 and (tmp_path / "2").is_dir()


def test_partial_folders_of_a_save_killed_midway_are_removed_by_the_owner(setup, tmp_path):
  """What `kill -9` during a save leaves: a `<step>.orbax-checkpoint-tmp-<n>` folder."""
  cfg, state = setup
  _saved(tmp_path, cfg, state, (1,))
  partial = tmp_path / "2.orbax-checkpoint-tmp-1234"
  (partial / "state").mkdir(parents=True)
  (partial / "state" / "junk").write_bytes(b"\x00" * 100)
  assert checkpointing.Checkpointer(tmp_path, keep=3).removed_partial == [] and partial.exists()
  ckpt = checkpointing.Checkpointer(tmp_path, keep=3, owner=True)
  assert ckpt.removed_partial == [partial.name] and not partial.exists()
  step, _, _ = ckpt.restore_latest(_abstract(state))
  assert step == 1
  ckpt.save(2, state, cfg, {"next_index": 2})
  ckpt.wait()
  assert ckpt.steps() == [1, 2]


def test_a_failed_background_write_is_reported_at_the_next_check(setup, tmp_path, monkeypatch):
  """A full disk, injected: the asynchronous write raises ENOSPC; check() / wait() say so and
  name the newest step that is on disk."""
  cfg, state = setup
  ckpt = checkpointing.Checkpointer(tmp_path, keep=3, owner=True)
  ckpt.save(1, state, cfg, {"next_index": 1})
  ckpt.wait()

  async def full_disk(self, x, directory):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", full_disk)
  ckpt.save(2, _bumped(state, 2), cfg, {"next_index": 2})
  with pytest.raises(checkpointing.CheckpointError, match="No space left on device") as err:
    ckpt.wait()
  assert "newest checkpoint on disk is step 1" in str(err.value)
  assert ckpt.steps() == [1]


def test_a_declined_save_raises(setup, tmp_path):
  cfg, state = setup
  ckpt = checkpointing.Checkpointer(tmp_path, keep=3, owner=True)
  ckpt.save(3, state, cfg, {"next_index": 3})
  ckpt.wait()
  with pytest.raises(checkpointing.CheckpointError, match="step 2"):
    ckpt.save(2, state, cfg, {"next_index": 2})


def test_all_finite_sees_one_nan_anywhere(setup):
  _, state = setup
  assert checkpointing.all_finite(state)
  leaves, treedef = jax.tree.flatten(state)
  leaves[-1] = leaves[-1].at[(0,) * leaves[-1].ndim].set(jnp.nan)
  assert not checkpointing.all_finite(jax.tree.unflatten(treedef, leaves))


def test_short_error_drops_tensorstore_spec_dumps():
  e = ValueError("Encountered error while reading array index: (slice(0, 3, 1),). See full "
                 "TensorStore details: <bound method spec of TensorStore({\n 'driver': 'zarr',\n})>")
  assert checkpointing.short_error(e) == ("ValueError: Encountered error while reading array index: "
                                          "(slice(0, 3, 1),).")


def test_a_relative_directory_saves_and_restores(tmp_path, monkeypatch):
  """`python -m sana_jax.train` defaults to the relative ./workdirs/<name>: Orbax needs absolute paths."""
  import ml_collections
  monkeypatch.chdir(tmp_path)
  ckpt = checkpointing.Checkpointer("relative/checkpoints", keep=2)
  state = {"w": jnp.arange(3.0)}
  ckpt.save(1, state, ml_collections.ConfigDict({"a": 1}), {"position": 3})
  ckpt.wait()
  step, restored, data_state = ckpt.restore_latest({"w": jnp.zeros(3)})
  assert step == 1 and data_state == {"position": 3}
  assert (tmp_path / "relative" / "checkpoints" / "1").is_dir()
  ckpt.close()

"""Checkpoints: round trip of state + config + data position, keep-N, corrupt-latest fallback."""
import json
import logging

import jax
import numpy as np
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


def test_only_the_newest_checkpoints_are_kept(setup, tmp_path):
  cfg, state = setup
  ckpt = checkpointing.Checkpointer(tmp_path, keep=2)
  for step in (1, 2, 3):
    ckpt.save(step, _bumped(state, step), cfg, {"next_index": step})
  ckpt.wait()
  assert sorted(ckpt.manager.all_steps()) == [2, 3]


def test_empty_directory_restores_nothing(setup, tmp_path):
  _, state = setup
  assert checkpointing.Checkpointer(tmp_path, keep=2).restore_latest(_abstract(state)) is None


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_with_a_warning(setup, tmp_path, caplog):
  cfg, state = setup
  ckpt = checkpointing.Checkpointer(tmp_path, keep=3)
  ckpt.save(1, _bumped(state, 1), cfg, {"next_index": 1})
  ckpt.save(2, _bumped(state, 2), cfg, {"next_index": 2})
  ckpt.wait()
  for f in (tmp_path / "2" / "state").rglob("*"):
    if f.is_file():
      f.write_bytes(b"\x00garbage")
  with caplog.at_level(logging.WARNING):
    step, restored, data_state = checkpointing.Checkpointer(tmp_path, keep=3).restore_latest(_abstract(state))
  assert step == 1 and data_state == {"next_index": 1}
  _assert_same(restored, _bumped(state, 1))
  assert "step 2" in caplog.text and "unreadable" in caplog.text


def test_a_relative_directory_saves_and_restores(tmp_path, monkeypatch):
  """`python -m sana_jax.train` defaults to the relative ./workdirs/<name>: Orbax needs absolute paths."""
  import jax.numpy as jnp
  import ml_collections
  from sana_jax.training.checkpointing import Checkpointer
  monkeypatch.chdir(tmp_path)
  ckpt = Checkpointer("relative/checkpoints", keep=2)
  state = {"w": jnp.arange(3.0)}
  ckpt.save(1, state, ml_collections.ConfigDict({"a": 1}), {"position": 3})
  ckpt.wait()
  step, restored, data_state = ckpt.restore_latest({"w": jnp.zeros(3)})
  assert step == 1 and data_state == {"position": 3}
  assert (tmp_path / "relative" / "checkpoints" / "1").is_dir()
  ckpt.close()

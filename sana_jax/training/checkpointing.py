"""Checkpoints: Orbax CheckpointManager (async, keep the last N) of the train state, the config and
the data iterator position, written under `<workdir>/checkpoints/<step>/`.

Every step directory holds three items: `state` (the sharded TrainState), `config` (the run's
config as JSON, so a checkpoint describes itself) and `data` (the Grain iterator state, so a
resumed run reads exactly the batches an uninterrupted run would have read). Orbax writes each
step to a temporary directory and renames it when complete, so a run killed while saving leaves the
previous step intact. A step that is complete but unreadable (disk corruption, a truncated copy) is
skipped with a warning and the next older one is restored.
"""
import json
import logging

import jax
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger(__name__)


class Checkpointer:
  """Save / restore of (state, config, data-iterator state) by step."""

  def __init__(self, directory, keep: int, *, async_save: bool = True):
    # Orbax needs absolute local paths; bucket paths (gs://...) are absolute already.
    self.directory = epath.Path(directory)
    if "://" not in str(directory):
      self.directory = self.directory.absolute()
    self.manager = ocp.CheckpointManager(
        self.directory, item_names=("state", "config", "data"),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=async_save))

  def save(self, step: int, state, config, data_state: dict) -> bool:
    """Starts writing `step` (returns before the write ends when async); False if it exists."""
    return self.manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        config=ocp.args.JsonSave(json.loads(config.to_json())),
        data=ocp.args.JsonSave(data_state)))

  def restore_latest(self, abstract_state):
    """-> (step, state, data_state) of the newest readable checkpoint, or None if there is none.

    abstract_state: the TrainState as ShapeDtypeStructs carrying the target shardings.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    for step in steps:
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
      except Exception as e:  # noqa: BLE001 - Orbax / tensorstore raise many types for bad files
        log.warning("checkpoint at step %d in %s is unreadable (%s: %s); falling back to an older one",
                    step, self.directory, type(e).__name__, e)
        continue
      return step, restored.state, restored.data
    if steps:
      log.warning("no readable checkpoint in %s (tried steps %s); starting from scratch",
                  self.directory, steps)
    return None

  def latest_step(self):
    return self.manager.latest_step()

  def wait(self):
    """Blocks until every pending asynchronous save is on disk."""
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def abstract_with_shardings(abstract_state, shardings):
  """ShapeDtypeStructs that tell Orbax where each restored array goes."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_state, shardings)

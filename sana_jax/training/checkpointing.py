"""Checkpoints: Orbax CheckpointManager (async, keep the last N) of the train state, the config and
the data iterator position, written under `<workdir>/checkpoints/<step>/`.

Every step directory holds three items: `state` (the sharded TrainState), `config` (the run's
config as JSON, so a checkpoint describes itself) and `data` (the Grain iterator state, so a
resumed run reads exactly the batches an uninterrupted run would have read). A LoRA run's steps
hold a fourth, `base`: the pointer to the frozen base its adapter was trained on (path and
fingerprint, training/adapter.py); its `state` holds only the adapter and its optimiser state.

Nothing is deleted that was not replaced:
- Orbax writes each step to `<step>.orbax-checkpoint-tmp*` and renames it when complete; such
  partial folders left by a killed run are removed when the training run opens the directory.
- A complete step that cannot be restored (disk corruption, a truncated copy) is moved to
  `checkpoints/unreadable/<step>/` with a one-line warning once an older step has been restored,
  so retention never rotates it out and it never blocks saving the same step again. When every
  step is unreadable the run stops (`CheckpointError` naming each step and why), moving nothing.
- Every save is checked: a declined save, or an asynchronous write that failed, raises
  `CheckpointError` with the newest step that is on disk.
All processes of a multi-host job call every method; only process 0 moves or deletes folders.
"""
import json
import logging
import time
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger(__name__)
UNREADABLE = "unreadable"
NONFINITE = "nonfinite"   # steps whose weights produced a NaN / Inf loss
_TMP_MARK = ".orbax-checkpoint-tmp"


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or no checkpoint in a non-empty directory can be read."""


def short_error(e: BaseException, limit: int = 300) -> str:
  """`Type: first line` of an exception (and of its cause), without TensorStore's spec dumps."""
  parts = []
  while e is not None and len(parts) < 3:
    text = str(e).split(" See full TensorStore details")[0].strip().splitlines()
    parts.append(f"{type(e).__name__}: {text[0][:limit] if text else ''}")
    e = e.__cause__
  return " <- ".join(parts)


def _barrier(name: str):
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def all_finite(tree) -> bool:
  """True when every floating-point array in `tree` is finite (one reduction on device)."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
  return bool(_finite(leaves)) if leaves else True


@jax.jit
def _finite(leaves):
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


class Checkpointer:
  """Save / restore of (state, config, data-iterator state) by step."""

  def __init__(self, directory, keep: int, *, async_save: bool = True, owner: bool = False):
    """owner: this is the training run that holds the workdir's lock: it removes partial saves
    and moves unreadable steps aside. Readers (sampling, conversion) only skip them."""
    # Orbax needs absolute local paths; bucket paths (gs://...) are absolute already.
    self.directory = epath.Path(directory)
    if "://" not in str(directory):
      self.directory = self.directory.absolute()
    self.owner = owner
    self.removed_partial = self._remove_partial_saves() if owner else []
    self.manager = ocp.CheckpointManager(
        self.directory, item_names=("state", "config", "data", "base"),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=async_save))

  def _remove_partial_saves(self) -> list[str]:
    removed = []
    if jax.process_index() == 0 and self.directory.exists():
      for path in self.directory.iterdir():
        if _TMP_MARK in path.name:
          for _ in range(20):  # a failed save's other writes may still be landing in it
            try:
              path.rmtree()
              break
            except OSError:
              time.sleep(0.1)
          else:
            log.warning("could not remove the partial checkpoint folder %s", path)
          removed.append(path.name)
    _barrier("sana_jax_remove_partial_saves")
    return removed

  def steps(self) -> list[int]:
    """Complete steps on disk, oldest first."""
    return sorted(self.manager.all_steps())

  def stored_config(self):
    """(step, config dict) of the newest step whose config item reads, or None."""
    for step in reversed(self.steps()):
      try:
        return step, json.loads((self.directory / str(step) / "config" / "metadata").read_text())
      except (OSError, ValueError):
        continue
    return None

  def stored_base(self, step: int):
    """The `base` item of `step` (a LoRA run's pointer to its frozen base), or None."""
    try:
      return json.loads((self.directory / str(step) / "base" / "metadata").read_text())
    except (OSError, ValueError):
      return None

  def save(self, step: int, state, config, data_state: dict, base: dict | None = None):
    """Starts writing `step` (returns before the write ends when async); raises CheckpointError
    when the save is declined or the previous asynchronous save failed. base: a LoRA run's
    pointer to its frozen base (JSON), saved as the step's `base` item."""
    self.check()
    items = dict(state=ocp.args.StandardSave(state),
                 config=ocp.args.JsonSave(json.loads(config.to_json())),
                 data=ocp.args.JsonSave(data_state))
    if base is not None:
      items["base"] = ocp.args.JsonSave(base)
    try:
      saved = self.manager.save(int(step), args=ocp.args.Composite(**items))
    except Exception as e:  # noqa: BLE001 - disk errors surface as many types
      raise CheckpointError(f"saving step {step} in {self.directory} failed ({short_error(e)}); "
                            f"{self._newest_good()}") from None
    if not saved:
      raise CheckpointError(f"Orbax declined to save step {step} in {self.directory} (a step "
                            f"{self.manager.latest_step()} exists); {self._newest_good()}")

  def check(self):
    """Raises CheckpointError if an asynchronous save has failed; never waits for one running."""
    if not self.manager.is_saving_in_progress():
      self.wait()  # returns at once when nothing is pending; re-raises a finished save's error

  def wait(self):
    """Blocks until every pending asynchronous save is on disk; raises CheckpointError if one failed."""
    try:
      self.manager.wait_until_finished()
      self.manager.check_for_errors()
    except Exception as e:  # noqa: BLE001
      raise CheckpointError(f"writing a checkpoint in {self.directory} failed ({short_error(e)}); "
                            f"{self._newest_good()}") from None

  def _newest_good(self) -> str:
    self.manager.reload()
    steps = self.steps()
    return (f"the newest checkpoint on disk is step {steps[-1]}" if steps
            else "no checkpoint is on disk")

  def restore_latest(self, abstract_state):
    """-> (step, state, data_state) of the newest readable checkpoint, or None if there is none.

    abstract_state: the TrainState as ShapeDtypeStructs carrying the target shardings. Newer
    unreadable steps are moved to `unreadable/<step>` (when this is the owner) once an older one
    has been restored; if no step reads, raises CheckpointError and moves nothing.
    """
    failures = []
    for step in reversed(self.steps()):
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
      except Exception as e:  # noqa: BLE001 - Orbax / tensorstore raise many types for bad files
        failures.append((step, short_error(e)))
        continue
      for bad, reason in failures:
        where = self.move_aside(bad, UNREADABLE) if self.owner else "(left in place)"
        log.warning("checkpoint step %d is unreadable (%s); moved to %s; restored step %d instead",
                    bad, reason, where, step)
      return step, restored.state, restored.data
    if failures:
      raise CheckpointError(
          f"no checkpoint in {self.directory} can be read:\n  "
          + "\n  ".join(f"step {s}: {r}" for s, r in failures)
          + "\nNothing was changed. Restore a good copy of the folder, or start afresh with another "
          "--workdir.")
    return None

  def move_aside(self, step: int, folder: str):
    """Moves step `step` to `<directory>/<folder>/<step>` (never rotated, never restored)."""
    target = self.directory / folder / str(step)
    if jax.process_index() == 0:
      (self.directory / folder).mkdir(parents=True, exist_ok=True)
      suffix = 1
      while target.exists():
        target, suffix = self.directory / folder / f"{step}.{suffix}", suffix + 1
      (self.directory / str(step)).rename(target)
    _barrier(f"sana_jax_move_aside_{step}")
    self.manager.reload()
    return target

  def latest_step(self):
    return self.manager.latest_step()

  def close(self):
    """Ends the background writes; the owner then removes what a failed save left behind."""
    try:
      self.manager.close()
    except Exception as e:  # noqa: BLE001 - a failed save was reported when it was found
      log.warning("closing the checkpoint manager: %s", short_error(e))
    if self.owner:
      self._remove_partial_saves()


def abstract_with_shardings(abstract_state, shardings):
  """ShapeDtypeStructs that tell Orbax where each restored array goes."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_state, shardings)

"""Reading a `python -m sana_jax.train` workdir: the newest readable checkpoint, EMA weights if any.

A workdir holds `checkpoints/<step>/{state,config,data}` (Orbax, sana_jax/training/checkpointing.py).
Only folders named by digits are steps; anything else under `checkpoints/` is ignored. A step that
cannot be read is skipped with a warning and the next older one is tried, so a damaged newest
checkpoint never hides the ones before it. A LoRA run's workdir (training/adapter.py) gives its
base model (train.init_from) with the trained adapter on.
"""
import dataclasses
import logging
import os

import ml_collections

from sana_jax.convert.tensors import CheckpointError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainingRun:
  """workdir, step, the run's config, its transformer (EMA weights when the run kept them)."""
  workdir: str
  step: int
  config: ml_collections.ConfigDict
  transformer: object
  ema: bool


def checkpoint_steps(workdir) -> list:
  """The step numbers under `<workdir>/checkpoints/`, newest first (digit folder names only)."""
  root = os.path.join(os.fspath(workdir), "checkpoints")
  if not os.path.isdir(root):
    return []
  return sorted((int(n) for n in os.listdir(root) if n.isdigit() and os.path.isdir(os.path.join(root, n))),
                reverse=True)


def is_training_run(path) -> bool:
  return os.path.isdir(os.path.join(os.fspath(path), "checkpoints"))


def _restore(root, step):
  import jax
  import orbax.checkpoint as ocp

  from sana_jax.optim.registry import build_optimizer
  from sana_jax.training import resume, train_state
  step_dir = os.path.join(root, str(step))
  with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as reader:
    stored = reader.restore(os.path.join(step_dir, "config"))
  cfg = ml_collections.ConfigDict(resume.with_fields_added_later(stored))  # older runs: their defaults
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = train_state.abstract_train_state(cfg, build_optimizer(cfg.optimizer))
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract)
  with ocp.StandardCheckpointer() as reader:
    state = reader.restore(os.path.join(step_dir, "state"), abstract)
  base_info = None  # a LoRA run's pointer to its frozen base
  if os.path.isdir(os.path.join(step_dir, "base")):
    with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as reader:
      base_info = reader.restore(os.path.join(step_dir, "base"))
  return cfg, state, base_info


def load_training_run(workdir, dtype=None) -> TrainingRun:
  """The newest readable checkpoint of a training workdir; EMA parameters when the run has them.
  dtype: a LoRA run's base is read in it (default: the run's model.param_dtype); the adapter stays
  float32. Other runs come in their own dtype (load_transformer casts them)."""
  from flax import nnx

  from sana_jax.training import adapter, train_state
  workdir = os.path.abspath(os.fspath(workdir))
  root = os.path.join(workdir, "checkpoints")
  steps = checkpoint_steps(workdir)
  if not steps:
    raise CheckpointError(f"training workdir {workdir}: no checkpoint under checkpoints/ "
                          "(step folders are named by their step number)")
  failures = []
  for step in steps:
    try:
      cfg, state, base_info = _restore(root, step)
    except Exception as e:  # noqa: BLE001 - Orbax / tensorstore raise many types for bad files
      log.warning("training checkpoint %s/%d is unreadable (%s: %s); trying an older one",
                  root, step, type(e).__name__, e)
      failures.append(f"{step} ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})")
      continue
    ema = state.ema_params is not None
    params = state.ema_params if ema else state.params
    if adapter.enabled(cfg):
      try:
        model = adapter.trained_model(cfg, params, base_info, dtype)
      except ValueError as e:
        raise CheckpointError(f"training workdir {workdir}: {e}") from None
    else:
      model = nnx.merge(train_state.model_graphdef(cfg.model), params)
    return TrainingRun(workdir, step, cfg, model, ema)
  raise CheckpointError(f"training workdir {workdir}: no readable checkpoint (tried steps {', '.join(failures)})")

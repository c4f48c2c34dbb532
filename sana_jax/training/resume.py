"""What a rerun in an existing workdir may change, one run per workdir, and the metrics log cut back.

Resume rules (docs/training.md, "Resuming"): the config stored with the newest checkpoint is
compared with the requested one before anything is written. Fields that shape or interpret the
saved weights and optimiser state stop the run (`ResumeError`, listing every differing field and
the two ways forward); every other field is applied with a one-line notice:

  stop:   model.* (but the runtime knobs below), codecs.*, optimizer.name and the fields that lay
          out its state (min_8bit_size, block_size, layer_axis_pattern), the LoRA fields that
          shape or scale the adapter (lora.rank, alpha, target_modules, use_rslora; LoRA on or
          off), and any change that alters the saved train state's tree, shapes or dtypes (e.g.
          EMA switched on or off)
  notice: everything else: learning rate and schedule, batch size, steps, logging, checkpoint and
          sample cadence, sampling, data loading, mesh, seed, and the model's runtime knobs
          (attention_impl, remat_policy, dtype, seq_parallel_axis, seq_parallel_batch_axis,
          scan_unroll)
  LoRA runs also refuse a train.init_from (the frozen base) whose weights differ from the base the
  adapter was trained on, in one line (`check_base`, with the fingerprint of training/adapter.py).
"""
import json
import os
import socket
import time

# Fields under model.* that change how the step runs, not what the weights mean.
RUNTIME_MODEL_FIELDS = ("attention_impl", "remat_policy", "dtype", "seq_parallel_axis",
                        "seq_parallel_batch_axis", "scan_unroll")
# Optimiser fields that decide the optimiser state's layout (which arrays, which shapes).
OPTIMIZER_LAYOUT_FIELDS = ("name", "min_8bit_size", "block_size", "layer_axis_pattern")
# LoRA fields that decide what the adapter's arrays are and how they scale the base's outputs.
LORA_LAYOUT_FIELDS = ("rank", "alpha", "target_modules", "use_rslora")
# Fields added to the config after runs were saved without them: the value such a run used.
FIELDS_ADDED_LATER = {"codecs.scaling_factor": 1.0, "model.prediction": "velocity",
                      "model.pooled_caption": False, "codecs.text_context": 0,
                      "sampling.guidance_interval": [0.0, 1.0],
                      "sampling.eval_best_of": 0, "sampling.eval_judge_steps": 1500,
                      "data.thread_priority": "normal",
                      # the fitted autoencoder's settings (used only with codecs.autoencoder="conv_fit")
                      "codecs.fit_widths": [16, 32, 32], "codecs.fit_latent_channels": 16,
                      "codecs.fit_steps": 600, "codecs.fit_batch_size": 64,
                      "codecs.fit_learning_rate": 2e-3, "codecs.fit_latent_noise": 0.1}


class ResumeError(ValueError):
  """The workdir cannot continue with the requested config, or is in use by another run."""


def flatten(tree, prefix="") -> dict:
  """Nested dicts -> {"a.b.c": value}; lists and tuples compare as lists."""
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(flatten(value, name + "."))
    else:
      out[name] = list(value) if isinstance(value, tuple) else value
  return out


def stops_resume(field: str) -> bool:
  """True for fields whose change makes the saved weights or optimiser state meaningless."""
  section, _, name = field.partition(".")
  if section == "model":
    return name not in RUNTIME_MODEL_FIELDS
  if section == "codecs":
    return True
  if section == "lora":
    return name in LORA_LAYOUT_FIELDS
  return section == "optimizer" and name in OPTIMIZER_LAYOUT_FIELDS


def with_fields_added_later(stored: dict) -> dict:
  """A saved config (nested dicts) with each of FIELDS_ADDED_LATER it predates set to the value
  such a run used (a copy; sections it lacks stay absent)."""
  out = {k: dict(v) if isinstance(v, dict) else v for k, v in stored.items()}
  for name, value in FIELDS_ADDED_LATER.items():
    section, _, field = name.partition(".")
    if isinstance(out.get(section), dict):
      out[section].setdefault(field, value)
  return out


def config_changes(stored: dict, requested: dict) -> dict:
  """{field: (stored value, requested value)} for every field that differs (missing: '<unset>')."""
  a, b = flatten(with_fields_added_later(stored)), flatten(json.loads(json.dumps(requested)))
  missing = "<unset>"
  return {k: (a.get(k, missing), b.get(k, missing)) for k in sorted(set(a) | set(b))
          if a.get(k, missing) != b.get(k, missing)}


def check_resume(stored: dict, requested: dict, workdir, step: int, layout_differs: str = "") -> list[str]:
  """-> the notices to print for a resume of checkpoint `step`; raises ResumeError when it cannot.

  stored / requested: the configs as plain dicts. layout_differs: a description of how the
  train state built from `requested` differs from the saved one ("" when identical).
  """
  changes = config_changes(stored, requested)
  blocking = {k: v for k, v in changes.items() if stops_resume(k)}
  if layout_differs and not blocking:
    blocking = changes
  if blocking or layout_differs:
    lines = [f"  {k}: {a!r} (saved) -> {b!r} (requested)" for k, (a, b) in blocking.items()]
    if layout_differs:
      lines.append(f"  the saved train state differs: {layout_differs}")
    raise ResumeError(
        f"{workdir} holds a run (checkpoint step {step}) that these settings cannot continue:\n"
        + "\n".join(lines) + "\n"
        f"Either start a new run from its weights with --config.train.init_from={workdir} "
        "(fresh optimiser state, step 0; needs the same architecture) together with a new "
        "--workdir, or train from scratch in a new --workdir. Nothing was written.")
  notices = []
  lora_run = bool(requested.get("lora"))
  for k, (a, b) in changes.items():
    if k == "train.init_from" and lora_run:
      notices.append(f"resume: the frozen base train.init_from {a!r} -> {b!r} (same weights)")
    elif k == "train.init_from":
      notices.append(f"resume: train.init_from={b!r} is ignored (continuing from checkpoint {step})")
    else:
      notices.append(f"resume: {k} {a!r} -> {b!r}")
  return notices


def check_base(stored: dict | None, current: dict, workdir, step: int) -> None:
  """Raises ResumeError (one line) when a LoRA checkpoint's base pointer `stored` ({"path",
  "fingerprint"}) names other weights than the base this run loaded (`current`)."""
  if stored is None:
    raise ResumeError(f"{workdir}: checkpoint step {step} has no record of its LoRA base; "
                      "start a new --workdir")
  if stored.get("fingerprint") != current["fingerprint"]:
    raise ResumeError(
        f"{workdir}: its adapter was trained on the base {stored.get('path')!r} (fingerprint "
        f"{stored.get('fingerprint')}), but train.init_from={current['path']!r} has fingerprint "
        f"{current['fingerprint']}; pass that base again, or start a new --workdir")


def describe_layout_difference(saved, requested) -> str:
  """'' when two abstract train states (ShapeDtypeStruct trees) match, else the first difference."""
  import jax
  saved_leaves, saved_def = jax.tree_util.tree_flatten_with_path(saved)
  new_leaves, new_def = jax.tree_util.tree_flatten_with_path(requested)
  if saved_def != new_def:
    a = {jax.tree_util.keystr(p) for p, _ in saved_leaves}
    b = {jax.tree_util.keystr(p) for p, _ in new_leaves}
    extra, gone = sorted(b - a)[:3], sorted(a - b)[:3]
    return (f"{len(b - a)} arrays only in the requested state {extra}, "
            f"{len(a - b)} only in the saved one {gone}")
  for (path, x), (_, y) in zip(saved_leaves, new_leaves):
    if (x.shape, x.dtype) != (y.shape, y.dtype):
      return f"{jax.tree_util.keystr(path)} is {x.dtype}{list(x.shape)} saved, {y.dtype}{list(y.shape)} requested"
  return ""


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class WorkdirLock:
  """`<workdir>/train.lock` holding the owner's host and pid: one training run per workdir.

  A lock left by a dead process on this host is taken over with a notice; one held by a live
  process, or by another host, refuses the run (delete the file only when that run is gone).
  """

  def __init__(self, workdir):
    self.path = os.path.join(os.fspath(workdir), "train.lock")
    self.notice = ""

  def acquire(self):
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = self._holder()
        if holder is None:  # torn or empty: the writer died between create and write
          self.notice = f"taking over an unreadable lock {self.path}"
        elif holder.get("host") == me["host"] and not _pid_alive(int(holder.get("pid", -1))):
          self.notice = (f"taking over the lock of a stopped run (pid {holder.get('pid')} on "
                         f"{holder.get('host')}, since {holder.get('since')})")
        elif holder.get("host") == me["host"]:
          raise ResumeError(f"{os.path.dirname(self.path)} is in use by another training run "
                            f"(pid {holder['pid']} on this host, since {holder.get('since')}); "
                            "wait for it to end or pass another --workdir") from None
        else:
          raise ResumeError(f"{os.path.dirname(self.path)} is in use by a training run on host "
                            f"{holder.get('host')} (pid {holder.get('pid')}, since {holder.get('since')}); "
                            f"pass another --workdir, or delete {self.path} if that run is gone") from None
        os.unlink(self.path)
        continue
      with os.fdopen(fd, "w") as f:
        json.dump(me, f)
      return self
    raise ResumeError(f"could not take the lock {self.path}: another run took it at the same time")

  def _holder(self):
    try:
      with open(self.path) as f:
        return json.load(f)
    except (OSError, ValueError):
      return None

  def release(self):
    holder = self._holder()
    if holder is not None and holder.get("pid") == os.getpid():
      os.unlink(self.path)


def cut_metrics(path, step: int) -> int:
  """Keeps the complete lines of the JSON-lines log `path` with "step" <= step; -> lines dropped.

  A resumed run logs the steps after its checkpoint again, and a killed run may leave a torn
  last line: both are removed (written to a temporary file, then renamed over the log).
  """
  if not os.path.exists(path):
    return 0
  kept, dropped = [], 0
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
        keep = line.endswith("\n") and record["step"] <= step
      except (ValueError, KeyError, TypeError):
        keep = False
      if keep:
        kept.append(line)
      else:
        dropped += 1
  if dropped:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
      f.writelines(kept)
    os.replace(tmp, path)
  return dropped

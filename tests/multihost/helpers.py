"""Runs of `python -m sana_jax.train` in one process and of `python -m sana_jax.launch local` in
several, on a tiny model, and readers of what they leave (losses, parameters, example indices).

Every subprocess has a timeout and is killed in `Runs.close()` (the tests' fixture calls it).
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TIMEOUT_S = 900

# Few steps of a model small enough that compiling dominates; lr > 0 from step 1 (no warmup) so
# every step changes the parameters. configs/tiny.py (not the default tiny24) so that the runs also
# fit the autoencoder, once, on process 0.
TINY = ["--config=tiny", "--config.model.hidden_size=64", "--config.model.depth=1", "--config.model.cross_num_heads=2",
        "--config.model.caption_channels=16", "--config.codecs.max_text_length=8", "--config.codecs.fit_steps=5",
        "--config.codecs.fit_batch_size=8",
        "--config.data.image_size=24", "--config.data.shapes_num_examples=64",
        "--config.optimizer.warmup_steps=0", "--config.train.batch_size=8",
        "--config.train.log_every=1", "--config.train.checkpoint_every=1",
        "--config.train.keep_checkpoints=10", "--config.train.sample_every=0",
        "--config.sampling.num_steps=1", "--config.sampling.num_images=2",
        "--config.sampling.num_eval_images=0", "--config.data.num_threads=1"]


def mesh_flags(data=1, fsdp=1, tensor=1, seq_axis=None, seq_batch_axis=None):
  flags = [f"--config.mesh.data={data}", f"--config.mesh.fsdp={fsdp}", f"--config.mesh.tensor={tensor}"]
  if seq_axis:
    flags += [f"--config.model.seq_parallel_axis={seq_axis}",
              f"--config.model.seq_parallel_batch_axis={seq_batch_axis}"]
  return flags


class Runs:
  """Starts runs with a shared compilation cache and an example-index log per workdir."""

  def __init__(self, tmp_path):
    self.tmp_path = tmp_path
    self.procs = []

  def env(self, workdir, **extra):
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu",
           "JAX_COMPILATION_CACHE_DIR": str(self.tmp_path / "xla_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "SANA_JAX_INDEX_LOG": str(workdir / "indices")}
    env.update(extra)
    return env

  def single(self, workdir, flags, devices=8):
    """One process with `devices` CPU devices (Popen, output piped)."""
    env = self.env(workdir, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return self._start([sys.executable, "-m", "sana_jax.train", f"--workdir={workdir}", *flags], env)

  def launch(self, workdir, flags, num_processes=2, devices_per_process=4, *launch_flags):
    """`python -m sana_jax.launch local` (Popen, the launcher's output piped)."""
    return self._start([sys.executable, "-m", "sana_jax.launch", "local",
                        f"--num_processes={num_processes}", f"--devices_per_process={devices_per_process}",
                        *launch_flags, "--", f"--workdir={workdir}", *flags], self.env(workdir))

  def _start(self, cmd, env):
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    self.procs.append(proc)
    return proc

  def finish(self, proc, expect=0):
    output = proc.communicate(timeout=TIMEOUT_S)[0]
    assert proc.returncode == expect, output[-4000:]
    return output

  def close(self):
    for proc in self.procs:
      if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def launched_pids(output_or_proc):
  """{process index: pid} from the launcher's "launch: process i: pid N" lines."""
  return {int(i): int(p) for i, p in re.findall(r"launch: process (\d+): pid (\d+)", output_or_proc)}


def read_launch_lines(proc, count, timeout=120):
  """The launcher's first `count` lines (its pids), read as they come."""
  lines, deadline = [], time.time() + timeout
  while len(lines) < count and time.time() < deadline:
    lines.append(proc.stdout.readline())
  return "".join(lines)


def losses(workdir):
  """{step: loss}: the last logged loss per step (a resumed run logs the steps after its checkpoint)."""
  out = {}
  path = workdir / "metrics.jsonl"
  if path.exists():
    for line in path.read_text().splitlines():
      record = json.loads(line)
      out[record["step"]] = record["loss"]
  return out


def wait_for(predicate, timeout=TIMEOUT_S, what="condition", procs=()):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return
    for proc in procs:
      assert proc.poll() is None, f"exited with {proc.returncode} while waiting for {what}: " + \
          proc.stdout.read()[-3000:]
    time.sleep(0.2)
  raise AssertionError(f"timed out waiting for {what}")


def example_indices(workdir):
  """{process: {step: [example indices]}} from the SANA_JAX_INDEX_LOG files."""
  out = {}
  directory = workdir / "indices"
  for path in sorted(directory.glob("process_*.jsonl")) if directory.exists() else []:
    for line in path.read_text().splitlines():
      record = json.loads(line)
      out.setdefault(record["process"], {})[record["step"]] = record["indices"]
  return out


def checkpoint_steps(workdir):
  directory = workdir / "checkpoints"
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.exists() else []


def read_state(workdir, step):
  """The saved TrainState of `step` as a flat {path: numpy array}, read in this one process
  whatever number of processes wrote it."""
  path = workdir / "checkpoints" / str(step) / "state"
  checkpointer = ocp.PyTreeCheckpointer()
  metadata = checkpointer.metadata(path).item_metadata
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
  tree = checkpointer.restore(path, restore_args=restore_args)
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def read_data_state(workdir, step):
  return json.loads((workdir / "checkpoints" / str(step) / "data" / "metadata").read_text())


def relative_error(a, b):
  """max over arrays of |a - b| / |b| (norms of each whole array)."""
  worst = 0.0
  for key in b:
    denominator = np.linalg.norm(b[key]) or 1.0
    worst = max(worst, float(np.linalg.norm(a[key] - b[key]) / denominator))
  return worst

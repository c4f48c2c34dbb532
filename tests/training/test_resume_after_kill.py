"""Preemption without warning: `kill -9` mid-run, restart -> the same losses as an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time


ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
FLAGS = ["--config=tiny", "--config.model.hidden_size=32", "--config.model.depth=1", "--config.model.cross_num_heads=1",
         "--config.model.caption_channels=16", "--config.codecs.max_text_length=8", "--config.codecs.fit_steps=5",
         "--config.codecs.fit_batch_size=8",
         "--config.data.image_size=24", "--config.data.shapes_num_examples=64",
         "--config.train.batch_size=4", "--config.train.num_steps=8", "--config.train.log_every=1",
         "--config.train.checkpoint_every=2", "--config.train.sample_every=0",
         "--config.sampling.num_steps=2", "--config.sampling.num_images=4",
         "--config.sampling.num_eval_images=0", "--config.mesh.data=1"]


def _train(workdir, cache, *extra):
  env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": cache,
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "PYTHONPATH": ROOT}
  return subprocess.Popen([sys.executable, "-m", "sana_jax.train", f"--workdir={workdir}", *FLAGS, *extra],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _losses(workdir):
  """Last logged loss per step (a restarted run logs the steps after its checkpoint again)."""
  out = {}
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    out[record["step"]] = record["loss"]
  return out


def test_killed_and_restarted_run_continues_the_uninterrupted_loss_sequence(tmp_path):
  cache = str(tmp_path / "xla_cache")
  # 40 steps: enough that the victim is still running when step 5 is seen (8 were not, once the
  # step got faster), few enough to take seconds.
  steps = "--config.train.num_steps=40"
  reference = _train(tmp_path / "reference", cache, steps)
  assert reference.wait(timeout=900) == 0, reference.stdout.read()

  victim_dir = tmp_path / "victim"
  victim = _train(victim_dir, cache, steps)
  deadline = time.time() + 900
  while time.time() < deadline:  # kill once step 4 is checkpointed and step 5 has run
    if (victim_dir / "checkpoints" / "4").exists() and (victim_dir / "metrics.jsonl").exists() and \
        max(_losses(victim_dir)) >= 5:
      break
    time.sleep(0.2)
  victim.send_signal(signal.SIGKILL)
  victim.wait()
  assert max(_losses(victim_dir)) < 40, "the run finished before it could be killed"

  restarted = _train(victim_dir, cache, steps)
  output = restarted.communicate(timeout=900)[0]
  assert restarted.returncode == 0, output
  assert "resumed from" in output
  assert _losses(victim_dir) == _losses(tmp_path / "reference")


def test_sigterm_saves_and_reports_the_step_it_really_wrote(tmp_path):
  workdir = tmp_path / "run"
  run = _train(workdir, str(tmp_path / "xla_cache"), "--config.train.num_steps=100000")
  deadline = time.time() + 900
  while time.time() < deadline and not ((workdir / "metrics.jsonl").exists() and _losses(workdir)):
    time.sleep(0.2)
  run.send_signal(signal.SIGTERM)
  output = run.communicate(timeout=900)[0]
  assert run.returncode == 0, output
  stopped = [l for l in output.splitlines() if "stopped at step" in l]
  assert stopped and "done:" not in output, output
  step = int(stopped[0].split("stopped at step ")[1].split()[0])
  assert f"(checkpoint {step} saved" in stopped[0] and (workdir / "checkpoints" / str(step)).is_dir()


def test_kill_during_a_save_leaves_the_previous_step_and_the_rerun_cleans_up(tmp_path):
  workdir, cache = tmp_path / "run", str(tmp_path / "xla_cache")
  run = _train(workdir, cache, "--config.train.num_steps=100000")
  deadline, partial = time.time() + 900, []
  while time.time() < deadline and not partial:
    if (workdir / "checkpoints").is_dir() and os.listdir(workdir / "checkpoints"):
      partial = [n for n in os.listdir(workdir / "checkpoints") if "orbax-checkpoint-tmp" in n]
    time.sleep(0.002)
  run.send_signal(signal.SIGKILL)
  run.wait()
  assert partial, "no save was caught in progress"
  restarted = _train(workdir, cache, "--config.train.num_steps=4")
  output = restarted.communicate(timeout=900)[0]
  assert restarted.returncode == 0, output
  left = os.listdir(workdir / "checkpoints")
  assert not [n for n in left if "orbax-checkpoint-tmp" in n], left
  assert "done: step" in output and "Traceback" not in output, output

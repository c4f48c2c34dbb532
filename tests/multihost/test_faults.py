"""Faults of a 2-process job: kill -9 of one process mid-run, then a rerun that continues the
uninterrupted loss sequence; SIGTERM (a TPU maintenance event) to one process or to all, after
which every host saves one checkpoint at the same step and exits 0."""
import os
import signal
import time

import pytest

from tests.multihost import helpers

FLAGS = helpers.TINY + helpers.mesh_flags(data=2, fsdp=4) + ["--config.train.checkpoint_every=2"]


def _alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  return True


@pytest.mark.slow
def test_kill_9_stops_the_job_and_a_rerun_continues_the_same_losses(runs, tmp_path):
  steps = 16
  flags = FLAGS + [f"--config.train.num_steps={steps}"]
  reference = tmp_path / "reference"
  runs.finish(runs.launch(reference, flags))

  victim = tmp_path / "victim"
  job = runs.launch(victim, flags)
  pids = helpers.launched_pids(helpers.read_launch_lines(job, 2))
  helpers.wait_for(lambda: 4 in helpers.checkpoint_steps(victim) and max(helpers.losses(victim), default=0) >= 5,
                   what="checkpoint 4 and step 5", procs=[job])
  os.kill(pids[1], signal.SIGKILL)
  output = job.communicate(timeout=120)[0]
  assert job.returncode == 1, output
  assert f"process 1 (pid {pids[1]}) was killed by SIGKILL" in output
  assert not _alive(pids[0])
  done = max(helpers.losses(victim))
  assert done < steps, "the run finished before it could be killed"

  output = runs.finish(runs.launch(victim, flags))
  assert "resumed from" in output
  assert helpers.losses(victim) == helpers.losses(reference)
  # After the resume each process read the same examples as in the uninterrupted run.
  assert helpers.example_indices(victim) == helpers.example_indices(reference)


def _sigterm_run(runs, workdir, send):
  steps = 400  # far more than run before the signal
  job = runs.launch(workdir, FLAGS + [f"--config.train.num_steps={steps}"])
  pids = helpers.launched_pids(helpers.read_launch_lines(job, 2))
  helpers.wait_for(lambda: max(helpers.losses(workdir), default=0) >= 3, what="step 3", procs=[job])
  send(job, pids)
  output = job.communicate(timeout=300)[0]
  assert job.returncode == 0, output
  saved = helpers.checkpoint_steps(workdir)
  stopped = saved[-1]
  assert 3 <= stopped < steps and stopped == max(helpers.losses(workdir))
  # One checkpoint, written by both hosts, both at the same data position.
  state = workdir / "checkpoints" / str(stopped) / "state"
  assert (state / "ocdbt.process_0").is_dir() and (state / "ocdbt.process_1").is_dir()
  hosts = helpers.read_data_state(workdir, stopped)["hosts"]
  assert len(hosts) == 2 and hosts[0] == hosts[1]
  indices = helpers.example_indices(workdir)
  assert max(indices[0]) == max(indices[1]) == stopped - 1  # neither read past the agreed step
  return output


@pytest.mark.slow
def test_sigterm_to_one_host_stops_every_host_at_the_same_step(runs, tmp_path):
  _sigterm_run(runs, tmp_path / "run", lambda job, pids: os.kill(pids[1], signal.SIGTERM))


@pytest.mark.slow
def test_sigterm_to_all_hosts_at_different_times_saves_one_checkpoint(runs, tmp_path):
  def send(job, pids):
    os.kill(pids[0], signal.SIGTERM)
    time.sleep(0.3)
    os.kill(pids[1], signal.SIGTERM)
  _sigterm_run(runs, tmp_path / "run", send)


@pytest.mark.slow
def test_sigterm_to_the_launcher_reaches_every_process(runs, tmp_path):
  output = _sigterm_run(runs, tmp_path / "run", lambda job, pids: job.send_signal(signal.SIGTERM))
  assert "every process finished" in output

"""The local launcher and the job set-up: environment, a dead process stops the job, a process that
cannot join fails with a clear message instead of hanging (all fast: in the default suite)."""
import os
import signal
import subprocess
import sys
import time

import pytest

from sana_jax import launch
from sana_jax.training import distributed
from tests.multihost import helpers


def test_local_process_env_sets_devices_gloo_and_the_coordinator():
  env = distributed.local_process_env(1, 2, 1234, 4, base_env={
      "XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_dump_to=/tmp/x", "HOME": "/h"})
  assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=4"
  assert env["JAX_COORDINATOR_ADDRESS"] == "127.0.0.1:1234" and env["HOME"] == "/h"
  assert (env["SANA_JAX_NUM_PROCESSES"], env["SANA_JAX_PROCESS_ID"]) == ("2", "1")
  assert env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] == "gloo" and env["JAX_PLATFORMS"] == "cpu"
  assert distributed.job_kind(env) == "explicit"


@pytest.mark.parametrize("env,kind", [
    ({}, None),
    ({"TPU_WORKER_HOSTNAMES": "w0"}, None),                       # a single-host TPU VM
    ({"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"}, "detected"),        # a pod slice / GKE TPU pool
    ({"SLURM_NTASKS": "16"}, "detected"),
    ({"SANA_JAX_MULTIHOST": "1"}, "detected"),
])
def test_job_kind_reads_pod_and_cluster_environments(env, kind):
  assert distributed.job_kind(env) == kind


def test_one_process_keeps_its_data_state_and_other_counts_need_agreeing_hosts():
  assert distributed.gather_host_states({"next_index": 3}) == {"hosts": [{"next_index": 3}]}
  assert distributed.own_host_state({"hosts": [{"next_index": 3}]}) == {"next_index": 3}
  assert distributed.own_host_state({"hosts": [{"next_index": 5}] * 2}) == {"next_index": 5}
  assert distributed.own_host_state({"next_index": 7}) == {"next_index": 7}  # older checkpoints
  with pytest.raises(ValueError, match="different data positions"):
    distributed.own_host_state({"hosts": [{"next_index": 5}, {"next_index": 6}]})


def test_default_log_dir_is_under_a_local_workdir():
  assert launch.default_log_dir(["--workdir=/tmp/run", "--config.x=1"]) == "/tmp/run/logs"
  assert launch.default_log_dir(["--workdir", "/tmp/r"]) == "/tmp/r/logs"
  assert launch.default_log_dir(["--workdir=gs://b/run"]) == "logs"


def _join(process_id, port, timeout):
  env = distributed.local_process_env(process_id, 2, port, 1)
  env.update(PYTHONPATH=helpers.ROOT, SANA_JAX_INIT_TIMEOUT=str(timeout))
  start = time.monotonic()
  out = subprocess.run([sys.executable, "-c", "from sana_jax.training import distributed; "
                        "distributed.initialize()"], env=env, capture_output=True, text=True, timeout=120)
  return out, time.monotonic() - start


def test_a_process_that_cannot_reach_the_coordinator_fails_with_a_clear_error():
  port = launch.free_port()  # nobody listens there
  out, took = _join(1, port, timeout=3)
  assert out.returncode != 0
  assert f"process 1 of 2 could not join the job at 127.0.0.1:{port} within 3 s" in out.stderr
  assert took < 60


def test_a_coordinator_whose_peers_never_come_gives_up_with_a_clear_error():
  out, took = _join(0, launch.free_port(), timeout=3)
  assert out.returncode == 3, out.stderr[-2000:]
  assert "process 0 of 2 could not join the job" in out.stderr
  assert took < 60


def test_a_killed_process_takes_the_whole_job_down_and_is_named(runs, tmp_path):
  """The one 2-process test of the default suite: kill -9 process 1 while the job starts up."""
  job = runs.launch(tmp_path / "run", helpers.TINY + ["--config.train.num_steps=2"])
  pids = helpers.launched_pids(helpers.read_launch_lines(job, 2))
  assert sorted(pids) == [0, 1]
  os.kill(pids[1], signal.SIGKILL)
  output = job.communicate(timeout=120)[0]
  assert job.returncode == 1, output
  assert f"process 1 (pid {pids[1]}) was killed by SIGKILL; stopping the job" in output
  with pytest.raises(ProcessLookupError):  # process 0 did not survive
    os.kill(pids[0], 0)
  assert (tmp_path / "run" / "logs" / "process_0.log").exists()
  assert (tmp_path / "run" / "logs" / "process_1.log").exists()

"""launch/tpu_vm.py --dry-run prints the gcloud commands it would run and runs nothing."""
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "launch", "tpu_vm.py")
COMMON = ["--name=sana-test", "--zone=us-east5-a", "--accelerator_type=v5p-128",
          "--repo=https://example.com/sana_jax.git", "--workdir=gs://bucket/run", "--dry-run"]


def _run(*args):
  return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=60,
                        env={**os.environ, "PATH": "/nonexistent"})  # gcloud could not run anyway


def test_all_prints_create_install_and_train_on_every_worker():
  out = _run("all", *COMMON, "--config=configs/sana15_4800m_p1_d60.py", "--spot", "--",
             "--config.train.batch_size=1024")
  assert out.returncode == 0, out.stderr
  create, install, train = out.stdout.strip().splitlines()
  assert create.startswith("gcloud compute tpus tpu-vm create sana-test --zone=us-east5-a")
  assert "--accelerator-type=v5p-128" in create and "--spot" in create
  assert "tpu-vm ssh sana-test" in install and "--worker=all" in install
  assert "pip install" in install and "https://example.com/sana_jax.git" in install
  assert "--worker=all" in train and "python -m sana_jax.train" in train
  assert "--config=configs/sana15_4800m_p1_d60.py" in train and "--workdir=gs://bucket/run" in train
  assert "--config.train.batch_size=1024" in train and "SANA_JAX_MULTIHOST=1" in train


def test_delete_prints_one_quiet_delete():
  out = _run("delete", *COMMON)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "gcloud compute tpus tpu-vm delete sana-test --zone=us-east5-a --quiet"


@pytest.mark.parametrize("bad,message", [("--workdir=/local/dir", "gs:// path"), ("--repo=", "--repo")])
def test_bad_arguments_are_refused_with_a_clear_message(bad, message):
  args = [a for a in COMMON if not a.startswith(bad.split("=")[0])] + [bad]
  out = _run("all", *args)
  assert out.returncode != 0 and message in out.stderr

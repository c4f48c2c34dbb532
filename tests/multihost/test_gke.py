"""launch/gke.py --dry-run prints a JobSet for the slice, checked against the config's mesh."""
import importlib.util
import os
import subprocess
import sys

import pytest

from tests.multihost import helpers

yaml = pytest.importorskip("yaml")
SCRIPT = os.path.join(helpers.ROOT, "launch", "gke.py")
COMMON = ["--config=configs/sana15_4800m_p1_d60.py", "--image=registry.example/sana_jax:1",
          "--workdir=gs://bucket/sana-4b8", "--dry-run"]


def _run(*args):
  return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=120,
                        cwd=helpers.ROOT, env={**os.environ, "PYTHONPATH": helpers.ROOT, "PATH": "/nonexistent"})


@pytest.mark.parametrize("accelerator,hosts,topology,label,fsdp", [
    ("v5p-128", 16, "4x4x4", "tpu-v5p-slice", 64),
    ("v6e-256", 64, "16x16", "tpu-v6e-slice", 256),
])
def test_dry_run_prints_one_pod_per_host_running_the_one_host_train_command(accelerator, hosts, topology,
                                                                            label, fsdp):
  out = _run(f"--accelerator_type={accelerator}", "--spot", *COMMON, "--",
             "--config.mesh.fsdp=-1", "--config.train.batch_size=1024")
  assert out.returncode == 0, out.stderr
  manifest = yaml.safe_load(out.stdout)
  assert manifest["kind"] == "JobSet"
  job = manifest["spec"]["replicatedJobs"][0]["template"]["spec"]
  assert job["parallelism"] == job["completions"] == hosts and job["completionMode"] == "Indexed"
  pod = job["template"]["spec"]
  assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": label,
                                 "cloud.google.com/gke-tpu-topology": topology,
                                 "cloud.google.com/gke-spot": "true"}
  container = pod["containers"][0]
  assert container["resources"]["limits"]["google.com/tpu"] == 4
  assert container["command"] == ["python", "-m", "sana_jax.train", "--config=configs/sana15_4800m_p1_d60.py",
                                  "--workdir=gs://bucket/sana-4b8", "--config.mesh.fsdp=-1",
                                  "--config.train.batch_size=1024"]
  assert {"name": "SANA_JAX_MULTIHOST", "value": "1"} in container["env"]
  assert f"'fsdp': {fsdp}" in out.stderr  # the mesh the config resolves to on this slice
  # 2240 wide: fsdp=256 cannot shard it (the plan: 57.2 GiB per chip against 6.0 with data=4, fsdp=64)
  assert ("does not divide model.hidden_size=2240" in out.stderr) == (fsdp == 256)


@pytest.mark.parametrize("args,message", [
    (["--accelerator_type=v5p-128", "--", "--config.mesh.fsdp=48"], "does not fit the 64 chips"),
    (["--accelerator_type=v5p-8"], "not a multi-host slice"),
    (["--accelerator_type=tpu-7"], "expected e.g. v5p-128"),
])
def test_a_slice_the_config_cannot_use_is_refused_with_one_line(args, message, capsys, monkeypatch):
  monkeypatch.chdir(helpers.ROOT)
  spec = importlib.util.spec_from_file_location("gke", SCRIPT)
  gke = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(gke)
  head, tail = (args[:args.index("--")], args[args.index("--"):]) if "--" in args else (args, [])
  with pytest.raises(SystemExit) as exit_info:
    gke.main([*head, *COMMON, *tail])
  assert message in str(exit_info.value) and not capsys.readouterr().out

"""Every entry point under cli.run: --help exits 0, user mistakes end in one `error:` line and exit 2
(traceback only under --debug), --config takes a preset name or a file. Nothing here compiles."""
import concurrent.futures
import json
import os
import socket
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
TOOLS = ("train", "sample", "convert", "grow", "prune", "preprocess", "plan")


def _run(*args, cwd=ROOT):
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env, cwd=cwd,
                        timeout=300)


def _one_error_line(out):
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  assert "Traceback" not in out.stderr, out.stderr[-3000:]
  assert lines and lines[0].startswith("error: ") and len(lines) <= 2, out.stderr[-3000:]
  return lines[0]


def test_help_exits_zero_in_every_tool():
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    for tool, out in zip(TOOLS, pool.map(lambda t: _run(f"sana_jax.{t}", "--help"), TOOLS)):
      assert out.returncode == 0 and "flags:" in out.stdout.lower(), (tool, out.stderr[-2000:])


@pytest.mark.parametrize("args,message", [
    (("sana_jax.train", "--config=nope"), "unknown config 'nope'"),
    (("sana_jax.train", "--config=missing/file.py"), "no config file"),
    (("sana_jax.grow", "--src=x", "--dst=y", "--depth=2", "--config=nope"), "unknown config"),
    (("sana_jax.sample", "--checkpoint=/no/such/dir", "--prompt=a", "--out=/tmp/x"), "/no/such/dir"),
    (("sana_jax.sample", "--checkpoint=x", "--prompt=a", "--out=/tmp/x", "--height=0"), "height"),
    (("sana_jax.sample", "--prompt=a", "--out=/tmp/x"), "checkpoint"),
])
def test_user_mistakes_print_one_line_and_exit_2(args, message):
  out = _run(*args)
  assert out.returncode == 2, out.stderr[-2000:]
  assert message in _one_error_line(out)


def test_an_empty_prompts_file_is_one_line(tmp_path):
  (tmp_path / "prompts.txt").write_text("\n\n")
  out = _run("sana_jax.sample", "--checkpoint=x", f"--prompts_file={tmp_path / 'prompts.txt'}",
             f"--out={tmp_path / 'out'}")
  assert out.returncode == 2 and "prompt" in _one_error_line(out)


def test_debug_adds_the_traceback():
  out = _run("sana_jax.sample", "--checkpoint=/no/such/dir", "--prompt=a", "--out=/tmp/x", "--debug")
  assert out.returncode == 2 and "Traceback" in out.stderr


def test_a_preset_name_works_where_a_config_file_does():
  """Both select the same config; the preset also takes --config.* overrides."""
  code = ("from absl import app, flags; import sana_jax.train as t; from sana_jax import cli; "
          "import sys; app.define_help_flags(); flags.FLAGS(cli._preset_to_file(sys.argv)); "
          "print(t._CONFIG.value.model.name, t._CONFIG.value.train.num_steps)")
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
  for config in ("SanaMS1.5_4800M_P1_D60", "configs/sana15_4800m_p1_d60.py"):
    out = subprocess.run([sys.executable, "-c", code, f"--config={config}", "--config.train.num_steps=7"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert out.stdout.split() == ["SanaMS1.5_4800M_P1_D60", "7"], out.stderr[-2000:]


def test_train_on_a_workdir_in_use_is_one_line_naming_the_holder(tmp_path):
  (tmp_path / "train.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                                   "since": "now"}))
  out = _run("sana_jax.train", f"--workdir={tmp_path}")
  assert out.returncode == 2
  assert f"in use by another training run (pid {os.getpid()}" in _one_error_line(out)

"""README.md's commands run as written: every `python -m sana_jax.X ...` in it parses with that
tool's own flags (one subprocess per tool, no work done), and the plan command prints the
per-device figure the README quotes (slow: an AOT compile of the 4.8B step)."""
import concurrent.futures
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
README = os.path.join(ROOT, "README.md")

# Parses argv with the tool's flags (as cli.run does, presets included) and runs nothing.
_PARSE = """
import importlib, importlib.util, json, sys
from absl import app, flags
sys.argv = json.loads(sys.argv[1])
tool = sys.argv[0]
if tool == "sana_jax.launch":  # argparse for the launcher; the flags after `--` are train's
  from sana_jax import launch
  sys.argv = ["sana_jax.train", *launch.parse_args(sys.argv[1:]).train_args]
  tool = "sana_jax.train"
importlib.import_module(tool + ".__main__" if importlib.util.find_spec(tool).submodule_search_locations else tool)
from sana_jax import cli
app.define_help_flags()
flags.FLAGS(cli._preset_to_file(sys.argv))
print("parsed", sys.argv[0])
"""


def readme_commands(path=README) -> list[list[str]]:
  """argv lists of the `python -m sana_jax.*` commands in code blocks and inline code (a trailing
  `...` placeholder dropped; `\\` continuations joined)."""
  pieces, prose, block = [], [], None
  for line in open(path, encoding="utf-8").read().splitlines():
    if line.startswith("```"):
      if block is not None:  # a closing fence
        pieces += "\n".join(block).replace("\\\n", " ").splitlines()
      block = [] if block is None else None
      continue
    (prose if block is None else block).append(line)
  pieces += [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", "\n".join(prose))]
  commands = []
  for piece in pieces:
    for part in piece.split("&&"):
      part = part.split(" # ")[0].strip()
      if part.startswith("python -m sana_jax."):
        argv = shlex.split(part)[2:]
        commands.append(argv[:-1] if argv[-1] == "..." else argv)
  return commands


def test_the_readme_names_the_commands_this_test_checks():
  tools = {argv[0] for argv in readme_commands()}
  assert {"sana_jax.train", "sana_jax.convert", "sana_jax.sample", "sana_jax.plan", "sana_jax.grow",
          "sana_jax.prune", "sana_jax.launch"} <= tools


def test_every_readme_command_parses_with_its_tools_flags():
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}

  def parse(argv):
    return argv, subprocess.run([sys.executable, "-c", _PARSE, json.dumps(argv)], capture_output=True,
                                text=True, env=env, cwd=ROOT, timeout=300)
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    for argv, out in pool.map(parse, readme_commands()):
      assert out.returncode == 0 and "parsed" in out.stdout, f"{argv}\n{out.stderr[-2000:]}"


@pytest.mark.slow
def test_the_plan_command_prints_the_figure_the_readme_quotes():
  text = open(README, encoding="utf-8").read()
  quoted = re.search(r"([\d.]+) GiB per\s+device", text)
  (argv,) = [a for a in readme_commands() if a[0] == "sana_jax.plan"]
  out = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": ""}, timeout=3000)
  assert out.returncode == 0, out.stderr[-2000:]
  assert quoted and re.search(rf"\b{re.escape(quoted.group(1))}\d* GiB", out.stdout), out.stdout

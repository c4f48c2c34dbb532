"""Installing sana_jax adds only `sana_jax` (configs/ becomes sana_jax.configs; the kernels live in
sana_jax/kernels): importing diffusers next to it prints no kernel-hub warning, and the top-level
names `kernels` / `configs` are not ours, neither installed nor from the repository root (where
`python -m pytest` and the bench scripts run with the root on sys.path)."""
import os
import subprocess
import sys

import setuptools  # noqa: F401 - provides distutils on Python >= 3.12
from distutils.core import run_setup  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = """
import importlib.util, os, sys
import diffusers, transformers
import sana_jax, sana_jax.kernels, sana_jax.configs
root = sys.argv[1]
for name in ("kernels", "configs"):
  spec = importlib.util.find_spec(name)
  origin = os.path.realpath(spec.origin) if spec is not None and spec.origin else ""
  print(name, "ours" if origin.startswith(root + os.sep) else "not ours")
print("sana_jax", os.path.realpath(sana_jax.__file__).startswith(root + os.sep))
"""


def test_setup_installs_only_sana_jax_packages():
  dist = run_setup(os.path.join(ROOT, "setup.py"), stop_after="init")
  assert dist.packages and all(p == "sana_jax" or p.startswith("sana_jax.") for p in dist.packages)
  assert {"sana_jax.kernels", "sana_jax.configs"} <= set(dist.packages)


def test_diffusers_import_from_another_folder_has_no_kernels_warning(tmp_path):
  # As installed: only the `sana_jax` package of this tree on the path (not the repository root).
  site = tmp_path / "site"
  site.mkdir()
  (site / "sana_jax").symlink_to(os.path.join(ROOT, "sana_jax"), target_is_directory=True)
  env = {**os.environ, "PYTHONPATH": str(site)}
  out = subprocess.run([sys.executable, "-c", PROBE, os.path.realpath(ROOT)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "Failed to load" not in out.stderr and "kernels" not in out.stderr, out.stderr[-2000:]
  assert out.stdout.split("\n")[:3] == ["kernels not ours", "configs not ours", "sana_jax True"]


def test_repository_root_shadows_no_installed_package():
  # `python -m pytest`, `python bench/...` and `python -c` from a checkout put its root first on
  # sys.path. transformers >= 5.2x imports the kernel-hub package `kernels` when loading any model
  # class (diffusers' AutoencoderDC and LoRA loaders go through it): a top-level kernels/ folder in
  # this repository made every such import fail here. AutoencoderDC is imported only in this probe:
  # loading it makes bitsandbytes warn about its own hub kernels, which the test above rules out.
  out = subprocess.run([sys.executable, "-c", PROBE.replace("import diffusers, transformers",
                                                            "import diffusers, transformers\n"
                                                            "from diffusers import AutoencoderDC"),
                        os.path.realpath(ROOT)], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split("\n")[0] == "kernels not ours", out.stdout

"""`python -m sana_jax.grow` and `python -m sana_jax.prune` on our checkpoint format (subprocesses:
each entry point defines its own absl flags)."""
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from sana_jax.convert.checkpoints import load_transformer, save_transformer
from tests.scaling.builders import forward, inputs, tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(module, *args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  out = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  return save_transformer(tiny_model(depth=2), tmp_path_factory.mktemp("ckpt") / "src")


def test_grow_command_writes_a_deeper_checkpoint_with_the_same_outputs(checkpoint, tmp_path):
  stdout = run("sana_jax.grow", "--src", checkpoint, "--dst", str(tmp_path / "grown"), "--depth", "4",
               "--source-layers", "2", "--strategy", "constant")
  assert "grew 2 -> 4 blocks" in stdout
  grown, source = load_transformer(tmp_path / "grown"), load_transformer(checkpoint)
  assert grown.cfg.depth == 4
  batch = tuple(jnp.asarray(a) for a in inputs())
  np.testing.assert_allclose(forward(grown, *batch), forward(source, *batch), atol=1e-6, rtol=0)


def test_prune_command_scores_blocks_and_keeps_the_most_important(checkpoint, tmp_path):
  _, _, text, mask = inputs(batch=2)
  np.savez(tmp_path / "calib.npz", text=text, text_mask=mask)
  stdout = run("sana_jax.prune", "--src", checkpoint, "--dst", str(tmp_path / "pruned"), "--depth", "1",
               "--calibration", str(tmp_path / "calib.npz"), "--timesteps", "300,700", "--latent-size", "4,4")
  report = json.loads((tmp_path / "pruned" / "block_importance.json").read_text())
  assert (tmp_path / "pruned" / "block_importance.png").exists()
  best = int(np.argmax(report["block_importance"]))
  assert "pruned 2 -> 1 blocks" in stdout
  pruned, source = load_transformer(tmp_path / "pruned"), load_transformer(checkpoint)
  np.testing.assert_array_equal(pruned.blocks.scale_shift_table[...][0], source.blocks.scale_shift_table[...][best])

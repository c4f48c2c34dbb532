"""Every format to every format: a training workdir feeds convert, grow, prune and train.init_from;
`convert pipeline --to diffusers` writes a folder diffusers' SanaPipeline loads to the same images."""
import os
import subprocess
import sys

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import sana_jax
from sana_jax import configs
from sana_jax.convert.pipeline import convert_pipeline
from sana_jax.optim.registry import build_optimizer
from sana_jax.sampling.pipeline import SanaPipeline
from sana_jax.training import checkpointing, train_state
from tests.sampling.pipeline_builders import build_tiny_pipeline
from tests.training.helpers import tiny_model_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMPTS = ["A cat sleeping on a red sofa", "two dogs running"]


def run(module, *args, ok=True):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  out = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
  assert (out.returncode == 0) == ok, out.stderr[-3000:]
  return out.stdout + out.stderr


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A training workdir with EMA whose newest step (7) holds EMA weights unlike its params, an older
  step 3, and a non-step folder that must be ignored."""
  root = tmp_path_factory.mktemp("run")
  cfg = _run_config()
  cfg.train.ema_decay = 0.99
  _, state, _ = train_state.create_train_state(cfg, build_optimizer(cfg.optimizer))
  ckpt = checkpointing.Checkpointer(root / "checkpoints", keep=5, async_save=False)
  ckpt.save(3, state, cfg, {})
  ema = jax.tree.map(lambda a: a + 0.01, state.ema_params)
  ckpt.save(7, state.replace(step=jnp.int32(7), ema_params=ema), cfg, {})
  ckpt.close()
  (root / "checkpoints" / "unreadable").mkdir()
  return root, cfg, ema


def _run_config():
  """The tiny preset with its 2-block velocity model: the diffusers export below needs velocity (an
  x0 model is refused, tests/models/test_prediction.py), grow / prune go 2 -> 3 / 2 -> 1 blocks."""
  cfg = configs.get_config("tiny")
  cfg.model = tiny_model_config()
  # the parameter-free codec, so the workdir needs no fitted autoencoder (tests/training/test_autoencoder_fit.py)
  cfg.codecs.update(autoencoder="space_to_depth")
  return cfg


def _inputs(cfg):
  rng = np.random.default_rng(0)
  return (rng.normal(size=(1, 8, 8, cfg.model.in_channels)).astype(np.float32), np.array([500.0], np.float32),
          rng.normal(size=(1, 5, cfg.model.caption_channels)).astype(np.float32), np.ones((1, 5), np.int32))


def test_workdir_loads_its_newest_checkpoint_with_ema_weights(workdir):
  root, cfg, ema = workdir
  from sana_jax.convert.training_run import load_training_run
  run_ = load_training_run(root)
  assert (run_.step, run_.ema) == (7, True)
  got = jax.tree.leaves(nnx.state(run_.transformer, nnx.Param))
  np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(jax.tree.leaves(ema)[0]))


def test_convert_grow_and_prune_accept_a_workdir(workdir, tmp_path):
  root, cfg, _ = workdir
  model = sana_jax.load_transformer(root)
  out = run("sana_jax.convert", "transformer", "--src", str(root), "--dst", str(tmp_path / "hf"), "--to", "diffusers")
  assert "-> " in out
  x = _inputs(cfg)
  np.testing.assert_allclose(np.asarray(sana_jax.load_transformer(tmp_path / "hf")(*x)), np.asarray(model(*x)),
                             atol=1e-6, rtol=0)
  assert "grew 2 -> 3 blocks" in run("sana_jax.grow", "--src", str(root), "--dst", str(tmp_path / "g"), "--depth", "3")
  assert "pruned 2 -> 1 blocks" in run("sana_jax.prune", "--src", str(root), "--dst", str(tmp_path / "p"),
                                       "--blocks", "1")


def test_init_from_accepts_a_workdir(workdir):
  root, cfg, ema = workdir
  cfg = _run_config()
  cfg.train.init_from = str(root)
  _, state, _ = train_state.create_train_state(cfg, build_optimizer(cfg.optimizer))
  assert int(state.step) == 0
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ema)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_workdir_without_checkpoints_is_one_clear_error(tmp_path):
  (tmp_path / "checkpoints" / "unreadable").mkdir(parents=True)
  with pytest.raises(sana_jax.convert.tensors.CheckpointError, match="no checkpoint under checkpoints/"):
    sana_jax.load_transformer(tmp_path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  path = tmp_path_factory.mktemp("tiny_pipeline")
  return path, build_tiny_pipeline(path)


def test_pipeline_to_diffusers_loads_in_diffusers_with_the_same_images(tiny, tmp_path):
  path, ref = tiny
  out = run("sana_jax.convert", "pipeline", "--src", str(path), "--dst", str(tmp_path / "export"))
  assert "(orbax)" in out
  run("sana_jax.convert", "pipeline", "--src", str(tmp_path / "export"), "--dst", str(tmp_path / "hf"),
      "--to", "diffusers")
  back = diffusers.SanaPipeline.from_pretrained(tmp_path / "hf")
  back.set_progress_bar_config(disable=True)
  latents = torch.from_numpy(np.random.default_rng(1).standard_normal((2, 4, 16, 16)).astype(np.float32))
  args = dict(height=32, width=32, num_inference_steps=3, use_resolution_binning=False, max_sequence_length=16,
              output_type="np")
  with torch.no_grad():
    expected = ref(PROMPTS, latents=latents, **args).images
    got = back(PROMPTS, latents=latents, **args).images
  assert expected.std() > 0.05
  np.testing.assert_array_equal(got, expected)  # the same float32 weights, bit for bit


def test_unknown_format_is_an_error(tiny, tmp_path):
  path, _ = tiny
  assert "--to" in run("sana_jax.convert", "pipeline", "--src", str(path), "--dst", str(tmp_path / "x"),
                       "--to", "onnx", ok=False)
  with pytest.raises(ValueError, match="unknown pipeline format 'onnx'"):
    convert_pipeline(path, tmp_path / "y", to="onnx")


def test_training_run_pipeline_cannot_be_written_as_a_diffusers_pipeline(workdir, tmp_path):
  root, _, _ = workdir
  pipe = SanaPipeline.from_pretrained(root)
  assert pipe.transformer.cfg.depth == 2
  with pytest.raises(sana_jax.convert.tensors.CheckpointError, match="convert its transformer instead"):
    convert_pipeline(root, tmp_path / "hf", to="diffusers")

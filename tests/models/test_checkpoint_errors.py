"""Bad checkpoints give one clear error naming every problem; conversions keep dtypes and sizes."""
import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from sana_jax import configs
import sana_jax
from sana_jax.convert.transformer import CheckpointError
from sana_jax.models.transformer import count_params


def _write_folder(folder, tensors, config):
  from safetensors.torch import save_file
  folder.mkdir()
  save_file({k: v.contiguous() for k, v in tensors.items()}, folder / "diffusion_pytorch_model.safetensors")
  (folder / "config.json").write_text(json.dumps(config))
  return folder


def test_missing_unexpected_and_misshaped_keys_are_listed_together(reference, tmp_path):
  ref, folder = reference
  tensors = dict(ref.state_dict())
  del tensors["transformer_blocks.1.attn1.to_q.weight"]
  tensors["transformer_blocks.0.extra.weight"] = torch.zeros(3)
  tensors["proj_out.bias"] = torch.zeros(5)
  bad = _write_folder(tmp_path / "bad", tensors, json.loads((folder / "config.json").read_text()))
  with pytest.raises(CheckpointError) as err:
    sana_jax.load_transformer(bad)
  msg = str(err.value)
  assert "missing (1): transformer_blocks.1.attn1.to_q.weight" in msg
  assert "unexpected (1): transformer_blocks.0.extra.weight" in msg
  assert "proj_out.bias: checkpoint (5,), model expects (4,)" in msg


def test_unknown_path_is_rejected(tmp_path):
  (tmp_path / "x.txt").write_text("hi")
  with pytest.raises(CheckpointError, match="not a diffusers SanaTransformer2DModel folder"):
    sana_jax.load_transformer(tmp_path / "x.txt")


def test_bf16_checkpoint_loads_as_bf16(reference, tmp_path):
  ref, folder = reference
  import copy
  copy.deepcopy(ref).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")  # leave the shared fixture fp32
  model = sana_jax.load_transformer(tmp_path / "bf16", dtype=jnp.bfloat16)
  dtypes = {v.dtype for v in __import__("jax").tree.leaves(nnx.state(model, nnx.Param))}
  assert dtypes == {jnp.dtype(jnp.bfloat16)}
  out = model(np.zeros((1, 4, 4, 4), np.float32), np.array([500.0], np.float32),
              np.zeros((1, 3, 24), np.float32), np.ones((1, 3), np.int32))
  assert out.shape == (1, 4, 4, 4) and bool(jnp.isfinite(out).all())


def test_image_size_the_patch_grid_cannot_take_is_rejected(reference):
  ref, _ = reference
  from sana_jax.convert.transformer import config_from_diffusers
  cfg = config_from_diffusers(dict(ref.config) | {"patch_size": 2})
  model = sana_jax.SanaTransformer(cfg, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="latent size 5x4 is not divisible by patch_size 2"):
    model(np.zeros((1, 5, 4, 4), np.float32), np.zeros((1,), np.float32),
          np.zeros((1, 3, 24), np.float32), np.ones((1, 3)))


@pytest.mark.parametrize("name", sorted(configs.NAMED_CONFIGS))
def test_parameter_count_equals_diffusers_model(name):
  from diffusers import SanaTransformer2DModel
  from sana_jax.convert.transformer import config_to_diffusers
  cfg = configs.get_config(name).model
  cfg.prediction = "velocity"  # tiny predicts x0 (not exportable); the network's parameters are the same
  cfg.pooled_caption = False  # nor is its pooled-caption projection
  with torch.device("meta"):
    ref = SanaTransformer2DModel(**{k: v for k, v in config_to_diffusers(cfg).items() if k != "_class_name"})
  assert count_params(cfg) == sum(p.numel() for p in ref.parameters())


def test_convert_cli_round_trip(reference, tmp_path):
  _, folder = reference
  run = lambda *a: subprocess.run([sys.executable, "-m", "sana_jax.convert", *a], check=True,
                                  capture_output=True, text=True).stdout
  out = run("transformer", "--src", str(folder), "--dst", str(tmp_path / "ours"))
  assert "depth 2, qk_norm=True" in out
  run("transformer", "--src", str(tmp_path / "ours"), "--dst", str(tmp_path / "back"), "--to", "diffusers")
  a, b = sana_jax.load_transformer(folder), sana_jax.load_transformer(tmp_path / "back")
  x = np.ones((1, 4, 4, 4), np.float32)
  args = (x, np.array([10.0], np.float32), np.ones((1, 3, 24), np.float32), np.ones((1, 3)))
  np.testing.assert_array_equal(np.asarray(a(*args)), np.asarray(b(*args)))


def test_sharded_diffusers_folder_loads_like_the_single_file(reference, tmp_path):
  ref, folder = reference
  ref.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
  assert (tmp_path / "sharded" / "diffusion_pytorch_model.safetensors.index.json").exists()
  args = (np.ones((1, 4, 4, 4), np.float32), np.array([10.0], np.float32),
          np.ones((1, 3, 24), np.float32), np.ones((1, 3)))
  np.testing.assert_array_equal(np.asarray(sana_jax.load_transformer(tmp_path / "sharded")(*args)),
                                np.asarray(sana_jax.load_transformer(folder)(*args)))

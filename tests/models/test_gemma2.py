"""Gemma-2 decoder stack vs transformers' Gemma2Model (eager attention), and the checkpoint loader."""
import json
import shutil

import jax.numpy as jnp
import numpy as np
from flax import nnx
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from tests.models.gemma_builders import PROMPTS, build_tiny_gemma, tiny_gemma_config
from sana_jax.convert.gemma2 import load_gemma2
from sana_jax.convert.tensors import CheckpointError
from sana_jax.models.gemma2 import FULL, SLIDING, Gemma2Config

SEQ_LEN = 16  # > sliding_window (4): the sliding layers drop keys the global ones keep


@pytest.fixture(scope="module")
def padded_batch(tokenizer):
  """Right-padded ids/mask with three different real lengths (one prompt truncated)."""
  batch = tokenizer([p.lower() for p in PROMPTS], padding="max_length", max_length=SEQ_LEN,
                    truncation=True, return_tensors="pt")
  assert len(set(batch.attention_mask.sum(1).tolist())) == 3
  return batch.input_ids, batch.attention_mask


@pytest.fixture(scope="module")
def gemma_fp32(gemma_dir):
  return load_gemma2(gemma_dir)


def reference_hidden(model, batch):
  with torch.no_grad():
    return model(batch[0], attention_mask=batch[1]).last_hidden_state.float().numpy()


@nnx.jit
def _apply(model, input_ids, attention_mask):
  return model(input_ids, attention_mask)


def ours_hidden(model, batch):
  out = _apply(model, jnp.asarray(batch[0].numpy()), jnp.asarray(batch[1].numpy()))
  return np.asarray(out.astype(jnp.float32))


def test_last_hidden_state_matches_transformers_on_right_padded_batch(gemma_fp32, torch_gemma,
                                                                      padded_batch):
  # Every position is compared, padded ones included: with right padding a padded query still
  # sees the real tokens before it, so its row is well defined in both implementations.
  ref = reference_hidden(torch_gemma, padded_batch)
  np.testing.assert_allclose(ours_hidden(gemma_fp32, padded_batch), ref, atol=1e-4, rtol=0)


def test_sliding_window_changes_the_output_at_the_test_length(torch_gemma, padded_batch):
  # Guards the comparison above: with a window wider than the sequence the output differs,
  # so the sliding layers really mask something and our mask is being checked.
  wide = transformers.Gemma2Model(tiny_gemma_config(sliding_window=4096)).eval()
  wide.load_state_dict(torch_gemma.state_dict())
  gap = np.abs(reference_hidden(wide, padded_batch) - reference_hidden(torch_gemma, padded_batch))
  assert gap.max() > 1e-2


def test_bfloat16_model_keeps_bf16_params_and_tracks_transformers_bf16(gemma_dir, padded_batch):
  ours = load_gemma2(gemma_dir, dtype=jnp.bfloat16)
  assert ours.layers.mlp.up_proj.kernel[...].dtype == jnp.bfloat16
  ref_model = transformers.Gemma2Model.from_pretrained(
      gemma_dir, attn_implementation="eager", dtype=torch.bfloat16).eval()
  ref = reference_hidden(ref_model, padded_batch)
  out = _apply(ours, jnp.asarray(padded_batch[0].numpy()), jnp.asarray(padded_batch[1].numpy()))
  assert out.dtype == jnp.bfloat16
  # A few bf16 ulps at the output scale (4 layers of bf16 rounding, accumulated differently).
  diff = np.abs(np.asarray(out.astype(jnp.float32)) - ref).max()
  assert diff <= 2.5e-2 * np.abs(ref).max()


def test_causal_lm_layout_loads_the_inner_model(tmp_path, padded_batch):
  ref = build_tiny_gemma(tmp_path, causal_lm=True, seed=1)
  ours = load_gemma2(tmp_path)
  np.testing.assert_allclose(ours_hidden(ours, padded_batch), reference_hidden(ref.model, padded_batch),
                             atol=1e-4, rtol=0)


def test_sharded_checkpoint_loads(torch_gemma, gemma_fp32, tmp_path, padded_batch):
  torch_gemma.save_pretrained(tmp_path, max_shard_size="100KB")
  assert (tmp_path / "model.safetensors.index.json").exists()
  np.testing.assert_array_equal(ours_hidden(load_gemma2(tmp_path), padded_batch),
                                ours_hidden(gemma_fp32, padded_batch))


def test_bad_checkpoint_names_every_missing_unexpected_and_misshaped_key(gemma_dir, tmp_path):
  tensors = load_file(gemma_dir / "model.safetensors")
  del tensors["layers.1.mlp.up_proj.weight"]
  tensors["layers.0.self_attn.q_norm.weight"] = torch.zeros(16)
  tensors["norm.weight"] = torch.zeros(65)
  save_file(tensors, tmp_path / "model.safetensors")
  shutil.copy(gemma_dir / "config.json", tmp_path / "config.json")
  with pytest.raises(ValueError) as err:
    load_gemma2(tmp_path)
  message = str(err.value)
  assert "missing (1)" in message and "layers.1.mlp.up_proj.weight" in message
  assert "unexpected (1)" in message and "layers.0.self_attn.q_norm.weight" in message
  assert "wrong shape (1)" in message and "norm.weight: checkpoint (65,), model expects (64,)" in message


def test_folder_without_weights_or_config_is_refused(gemma_dir, tmp_path):
  with pytest.raises(CheckpointError, match="config.json"):
    load_gemma2(tmp_path)
  shutil.copy(gemma_dir / "config.json", tmp_path / "config.json")
  with pytest.raises(CheckpointError, match="no model safetensors weights for the default"):
    load_gemma2(tmp_path)


def test_config_reads_layer_types_and_rope_like_transformers(gemma_dir):
  saved = json.loads((gemma_dir / "config.json").read_text())
  config = Gemma2Config.from_hf_dict(saved)
  assert config.layer_types == tuple(tiny_gemma_config().layer_types) == (SLIDING, FULL, SLIDING, FULL)
  assert config.rope_theta == 10000.0 and config.query_pre_attn_scalar == 16
  # A transformers 4.x config (no layer_types, rope_theta at the top) gives the same model.
  legacy = {k: v for k, v in saved.items() if k not in ("layer_types", "rope_parameters")}
  assert Gemma2Config.from_hf_dict({**legacy, "rope_theta": 10000.0}) == config


def test_config_refuses_what_the_port_does_not_implement(gemma_dir):
  saved = json.loads((gemma_dir / "config.json").read_text())
  with pytest.raises(ValueError, match="model_type"):
    Gemma2Config.from_hf_dict({**saved, "model_type": "llama"})
  with pytest.raises(ValueError, match="bidirectional"):
    Gemma2Config.from_hf_dict({**saved, "use_bidirectional_attention": True})
  with pytest.raises(ValueError, match="RoPE"):
    Gemma2Config.from_hf_dict({**saved, "rope_parameters": {"rope_type": "linear", "factor": 2.0}})
  with pytest.raises(ValueError, match="hidden_activation"):
    Gemma2Config.from_hf_dict({**saved, "hidden_activation": "relu"})

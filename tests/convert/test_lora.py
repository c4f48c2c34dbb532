"""LoRA files both ways against the real thing: PEFT 0.21 adapters on a tiny random diffusers
SanaTransformer2DModel, saved with diffusers' SanaPipeline.save_lora_weights, loaded here; our
adapters saved here, loaded by diffusers the way SanaPipeline.load_lora_weights does
several weighted adapters; keys that match no layer."""
import copy
import json

import diffusers
import numpy as np
import pytest
import safetensors.torch
import torch
from flax import nnx
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

import sana_jax
from sana_jax.convert.checkpoints import export_diffusers
from sana_jax.configs.base import lora_config
from sana_jax.convert import lora as lora_io
from sana_jax.convert.tensors import CheckpointError, read_safetensors
from sana_jax.models import lora
from tests.models.reference import random_diffusers_transformer, reference_forward
from tests.models.test_transformer_parity import inputs

# Linear and 1x1-conv maps, top level and in the blocks, and the patch embedding (a Conv2d).
PEFT_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.conv_inverted", "time_embed.linear", "patch_embed.proj"]


def _peft_adapter(ref, name, seed, **config):
  """Adds a PEFT LoRA to `ref` with random (non-zero) lora_B, as a trained adapter has."""
  ref.add_adapter(LoraConfig(init_lora_weights="gaussian", **config), adapter_name=name)
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for key, p in ref.named_parameters():
      if f"lora_B.{name}." in key:
        p.copy_(0.3 * torch.randn(p.shape, generator=gen))


def _save_diffusers(ref, name, folder, with_metadata=True):
  layers = get_peft_model_state_dict(ref, adapter_name=name)
  meta = dict(transformer_lora_adapter_metadata=ref.peft_config[name].to_dict()) if with_metadata else {}
  diffusers.SanaPipeline.save_lora_weights(folder, transformer_lora_layers=layers, **meta)
  return folder / lora_io.WEIGHT_NAME


def _diffusers_load(transformer, file, name):
  """What diffusers' SanaPipeline.load_lora_weights(file, adapter_name=name) does to its transformer
  (lora_state_dict reads the file and its metadata, load_lora_into_transformer applies them)."""
  state, meta = diffusers.SanaPipeline.lora_state_dict(str(file), return_lora_metadata=True)
  diffusers.SanaPipeline.load_lora_into_transformer(state, transformer=transformer, adapter_name=name,
                                                    metadata=meta)


def _max_error(ours, ref_out):
  ours, ref_out = np.asarray(ours), np.asarray(ref_out)
  return float(np.abs(ours - ref_out).max() / max(1.0, np.abs(ref_out).max()))


@pytest.mark.parametrize("with_metadata", [True, False], ids=["metadata", "no_metadata"])
def test_diffusers_lora_loads_here_with_the_same_output(reference, tmp_path, with_metadata):
  ref, folder = reference
  peft_ref = copy.deepcopy(ref)
  # Block 1's to_q with another rank (zero-padded here) and attn2.to_k with its own alpha.
  _peft_adapter(peft_ref, "pixel", seed=1, r=4, lora_alpha=8, target_modules=PEFT_TARGETS,
                rank_pattern={"transformer_blocks.1.attn1.to_q": 2}, alpha_pattern={"attn2.to_k": 3.0})
  file = _save_diffusers(peft_ref, "pixel", tmp_path, with_metadata)
  if not with_metadata:  # diffusers then takes alpha = rank in every module: reload it its way
    peft_ref = copy.deepcopy(ref)
    _diffusers_load(peft_ref, file, "pixel")
  x, t, txt, mask = inputs(0)
  expected = reference_forward(peft_ref, x, t, txt, mask)
  model = sana_jax.load_transformer(folder)
  lora_io.load_lora(model, tmp_path, adapter_name="pixel")
  assert model.blocks.attn.to_q.lora_A["pixel"][...].shape == (2, 64, 4)
  assert _max_error(model(x, t, txt, mask), reference_forward(ref, x, t, txt, mask)) > 1e-2
  err = _max_error(model(x, t, txt, mask), expected)
  assert err <= 1e-4, err  # measured 2.2e-6 (metadata), 1.5e-6 (none); fp32 both sides


def test_our_lora_loads_in_diffusers_with_the_same_output(reference, tmp_path):
  ref, folder = reference
  model = sana_jax.load_transformer(folder)
  targets = (r".*attn1\.to_(q|v)|transformer_blocks\.1\.ff\.conv_point|proj_out|caption_projection\.linear_2|"
             r"patch_embed\.proj")
  lora.add_lora(model, lora_config(rank=3, alpha=5.0, target_modules=targets), rngs=nnx.Rngs(0))
  for layer in lora.lora_layers(model).values():
    b = layer.lora_B["default"]
    b[...] = 0.3 * np.random.default_rng(0).standard_normal(b[...].shape).astype(np.float32)
  file = lora_io.save_lora(model, tmp_path / "ours", base_model="Efficient-Large-Model/Sana_1600M_1024px")
  source = read_safetensors([file])
  meta = lora_io.read_lora_config(source)
  assert (meta["r"], meta["lora_alpha"], meta["base_model_name_or_path"]) == (
      3, 5.0, "Efficient-Large-Model/Sana_1600M_1024px")
  assert "transformer_blocks.0.ff.conv_point" not in meta["target_modules"]
  assert source.shapes["transformer.transformer_blocks.1.ff.conv_point.lora_A.weight"] == (3, 160, 1, 1)
  assert json.loads(source.metadata[lora_io.METADATA_KEY])["transformer.r"] == 3
  peft_ref = copy.deepcopy(ref)
  _diffusers_load(peft_ref, file, "ours")
  assert set(peft_ref.peft_config["ours"].target_modules) == set(meta["target_modules"])
  x, t, txt, mask = inputs(1)
  err = _max_error(model(x, t, txt, mask), reference_forward(peft_ref, x, t, txt, mask))
  assert err <= 1e-4, err  # measured 1.1e-6
  # ... and back: our own file reloads to the same output.
  again = lora_io.load_lora(sana_jax.load_transformer(folder), file)
  np.testing.assert_allclose(again(x, t, txt, mask), model(x, t, txt, mask), atol=1e-6)


def test_several_adapters_with_weights_match_diffusers_set_adapters(reference, tmp_path):
  ref, folder = reference
  peft_ref = copy.deepcopy(ref)
  model = sana_jax.load_transformer(folder)
  for name, seed, targets in (("a", 1, ["to_q", "to_v"]), ("b", 2, ["to_v", "attn2.to_out.0", "ff.conv_point"])):
    one = copy.deepcopy(ref)
    _peft_adapter(one, name, seed=seed, r=2, lora_alpha=4, target_modules=targets)
    file = _save_diffusers(one, name, tmp_path / name)
    _diffusers_load(peft_ref, file, name)
    lora_io.load_lora(model, file, adapter_name=name)
  peft_ref.set_adapters(["a", "b"], weights=[0.6, -1.4])
  lora.set_adapters(model, ["a", "b"], [0.6, -1.4])
  x, t, txt, mask = inputs(2)
  expected = reference_forward(peft_ref, x, t, txt, mask)
  err = _max_error(model(x, t, txt, mask), expected)
  assert err <= 1e-4, err  # measured 8.8e-7
  lora.fuse_lora(model)
  assert _max_error(model(x, t, txt, mask), expected) <= 1e-4


def test_keys_that_match_no_layer_are_listed_in_one_line(reference, tmp_path):
  ref, folder = reference
  one = copy.deepcopy(ref)
  _peft_adapter(one, "x", seed=0, r=2, lora_alpha=2, target_modules=["to_q"])
  layers = get_peft_model_state_dict(one, adapter_name="x")
  layers["transformer_blocks.7.attn1.to_q.lora_A.weight"] = torch.zeros(2, 64)
  layers["transformer_blocks.0.attn1.to_qq.lora_B.weight"] = torch.zeros(64, 2)
  diffusers.SanaPipeline.save_lora_weights(tmp_path, transformer_lora_layers=layers)
  file = tmp_path / lora_io.WEIGHT_NAME
  tensors = safetensors.torch.load_file(file)
  tensors["text_encoder.layers.0.q_proj.lora_A.weight"] = torch.zeros(2, 8)  # a text-encoder LoRA
  safetensors.torch.save_file(tensors, file)
  model = sana_jax.load_transformer(folder)
  with pytest.raises(CheckpointError, match="3 keys match no layer") as err:
    lora_io.load_lora(model, tmp_path)
  message = str(err.value)
  assert "\n" not in message and "transformer_blocks.7.attn1.to_q.lora_A" in message
  assert "attn1.to_qq.lora_B" in message and "text_encoder.layers.0" in message
  assert "attn1.to_q.lora_A" not in message.replace("7.attn1.to_q.lora_A", "")  # the good keys are not listed
  assert not lora.adapters(model)
  with pytest.raises(CheckpointError, match="does not exist"):
    lora_io.load_lora(model, tmp_path / "nowhere.safetensors")


def test_fused_lora_exports_as_a_merged_diffusers_transformer(reference, tmp_path):
  ref, folder = reference
  peft_ref = copy.deepcopy(ref)
  _peft_adapter(peft_ref, "x", seed=4, r=4, lora_alpha=8, target_modules=PEFT_TARGETS)
  file = _save_diffusers(peft_ref, "x", tmp_path / "lora")
  model = lora_io.load_lora(sana_jax.load_transformer(folder), file, adapter_name="x", scale=0.7)
  peft_ref.set_adapters(["x"], weights=[0.7])
  lora.fuse_lora(model)
  export_diffusers(model, tmp_path / "merged")  # the base names only: the kernels hold the update
  merged = diffusers.SanaTransformer2DModel.from_pretrained(tmp_path / "merged").eval()
  x, t, txt, mask = inputs(3)
  err = _max_error(reference_forward(merged, x, t, txt, mask), reference_forward(peft_ref, x, t, txt, mask))
  assert err <= 1e-4, err  # measured 1.0e-6


def test_patch_embedding_lora_with_patch_size_2_both_ways(tmp_path):
  ref = random_diffusers_transformer(seed=5, qk_norm=False, patch_size=2)
  ref.save_pretrained(tmp_path / "base")
  peft_ref = copy.deepcopy(ref)
  _peft_adapter(peft_ref, "p", seed=6, r=3, lora_alpha=6, target_modules=["patch_embed.proj", "proj_out"])
  file = _save_diffusers(peft_ref, "p", tmp_path / "lora")
  model = lora_io.load_lora(sana_jax.load_transformer(tmp_path / "base"), file, adapter_name="p")
  assert model.patch_embed.lora_A["p"][...].shape == (2, 2, 4, 3)  # [p, p, in, r]
  x, t, txt, mask = inputs(4)
  expected = reference_forward(peft_ref, x, t, txt, mask)
  assert _max_error(model(x, t, txt, mask), expected) <= 1e-4  # measured 1.6e-6
  back = copy.deepcopy(ref)
  _diffusers_load(back, lora_io.save_lora(model, tmp_path / "back", "p"), "p")
  assert _max_error(reference_forward(back, x, t, txt, mask), expected) <= 1e-4
  lora.fuse_lora(model)
  assert _max_error(model(x, t, txt, mask), expected) <= 1e-4
  lora.unload_lora(model)
  assert type(model.patch_embed) is nnx.Conv

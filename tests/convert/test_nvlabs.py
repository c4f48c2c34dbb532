"""NVlabs/Sana `.pth` checkpoints, checked independently of our converter.

The state dict is written from a key table typed by hand from NVlabs' module definitions
(diffusion/model/nets/sana_multi_scale.py, sana_blocks.py: LiteLA `attn.qkv` fused as q|k|v rows,
`cross_attn.q_linear` + `kv_linear` fused as k|v rows, GLUMBConv `mlp.*_conv.conv`, `t_embedder.mlp.0/2`,
`t_block.1`, `y_embedder.y_proj.fc1/fc2`, `attention_y_norm`, `x_embedder.proj`, `final_layer.*`).
The reference is diffusers' SanaTransformer2DModel filled through a second mapping, also written
here (`to_diffusers`), with strict=True, so a wrong name, shape or split order on either side fails.
"""
import diffusers
import ml_collections
import numpy as np
import pytest
import torch

import sana_jax
from sana_jax import configs
from sana_jax.convert.tensors import CheckpointError
from sana_jax.convert.transformer import config_from_diffusers, nvlabs_source, validate_source

D, HEADS, CAPTION, IN, MLP_RATIO = 64, 2, 24, 4, 2.5
DIFFUSERS_CONFIG = dict(in_channels=IN, out_channels=IN, num_attention_heads=HEADS, attention_head_dim=D // HEADS,
                        num_layers=2, num_cross_attention_heads=HEADS, cross_attention_head_dim=D // HEADS,
                        cross_attention_dim=D, caption_channels=CAPTION, mlp_ratio=MLP_RATIO, sample_size=8,
                        patch_size=1, qk_norm="rms_norm_across_heads", interpolation_scale=None)


def nvlabs_shapes(depth, d=D, caption=CAPTION, in_ch=IN, patch=1, mlp_ratio=MLP_RATIO, qk_norm=True, null_len=5):
  """{NVlabs key: shape} of a SanaMS model, from NVlabs' module constructors."""
  hidden = int(d * mlp_ratio)
  shapes = {
      "x_embedder.proj.weight": (d, in_ch, patch, patch), "x_embedder.proj.bias": (d,),
      "t_embedder.mlp.0.weight": (d, 256), "t_embedder.mlp.0.bias": (d,),
      "t_embedder.mlp.2.weight": (d, d), "t_embedder.mlp.2.bias": (d,),
      "t_block.1.weight": (6 * d, d), "t_block.1.bias": (6 * d,),
      "y_embedder.y_proj.fc1.weight": (d, caption), "y_embedder.y_proj.fc1.bias": (d,),
      "y_embedder.y_proj.fc2.weight": (d, d), "y_embedder.y_proj.fc2.bias": (d,),
      "y_embedder.y_embedding": (null_len, caption),
      "attention_y_norm.weight": (d,),
      "final_layer.linear.weight": (patch * patch * in_ch, d), "final_layer.linear.bias": (patch * patch * in_ch,),
      "final_layer.scale_shift_table": (2, d),
  }
  for i in range(depth):
    b = f"blocks.{i}."
    shapes.update({
        b + "scale_shift_table": (6, d),
        b + "attn.qkv.weight": (3 * d, d),  # LiteLA: use_bias=False
        b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
        b + "cross_attn.q_linear.weight": (d, d), b + "cross_attn.q_linear.bias": (d,),
        b + "cross_attn.kv_linear.weight": (2 * d, d), b + "cross_attn.kv_linear.bias": (2 * d,),
        b + "cross_attn.proj.weight": (d, d), b + "cross_attn.proj.bias": (d,),
        b + "mlp.inverted_conv.conv.weight": (2 * hidden, d, 1, 1), b + "mlp.inverted_conv.conv.bias": (2 * hidden,),
        b + "mlp.depth_conv.conv.weight": (2 * hidden, 1, 3, 3), b + "mlp.depth_conv.conv.bias": (2 * hidden,),
        b + "mlp.point_conv.conv.weight": (d, hidden, 1, 1),  # GLUMBConv: point conv without bias
    })
    if qk_norm:
      for attn in ("attn", "cross_attn"):
        shapes.update({b + f"{attn}.q_norm.weight": (d,), b + f"{attn}.k_norm.weight": (d,)})
  return shapes


def random_nvlabs_state(depth, seed=0):
  gen = torch.Generator().manual_seed(seed)
  state = {}
  for key, shape in nvlabs_shapes(depth).items():
    if key.endswith("norm.weight"):
      state[key] = 1.0 + 0.2 * torch.randn(shape, generator=gen)
    elif len(shape) > 1 and "scale_shift_table" not in key and "y_embedding" not in key:
      fan_in = int(np.prod(shape[1:]))
      state[key] = torch.randn(shape, generator=gen) * (0.5 / fan_in ** 0.5)
    else:
      state[key] = 0.1 * torch.randn(shape, generator=gen)
  return state


_TOP = {"x_embedder.proj": "patch_embed.proj", "t_embedder.mlp.0": "time_embed.emb.timestep_embedder.linear_1",
        "t_embedder.mlp.2": "time_embed.emb.timestep_embedder.linear_2", "t_block.1": "time_embed.linear",
        "y_embedder.y_proj.fc1": "caption_projection.linear_1", "y_embedder.y_proj.fc2": "caption_projection.linear_2",
        "attention_y_norm": "caption_norm", "final_layer.linear": "proj_out",
        "final_layer.scale_shift_table": "scale_shift_table"}
_BLOCK = {"attn.proj": "attn1.to_out.0",
          "attn.q_norm": "attn1.norm_q", "attn.k_norm": "attn1.norm_k", "cross_attn.q_linear": "attn2.to_q",
          "cross_attn.proj": "attn2.to_out.0", "cross_attn.q_norm": "attn2.norm_q",
          "cross_attn.k_norm": "attn2.norm_k", "mlp.inverted_conv.conv": "ff.conv_inverted",
          "mlp.depth_conv.conv": "ff.conv_depth", "mlp.point_conv.conv": "ff.conv_point"}


def to_diffusers(state):
  """NVlabs state dict -> diffusers names: renames, and the fused projections split in row order."""
  out = {}
  for key, t in state.items():
    if key == "y_embedder.y_embedding":
      continue
    module, _, param = key.rpartition(".")
    if key.startswith("blocks.") and param == "scale_shift_table":  # blocks.N.scale_shift_table
      out[f"transformer_blocks.{module.split('.')[1]}.scale_shift_table"] = t
    elif module.startswith("blocks."):
      _, i, rest = module.split(".", 2)
      prefix = f"transformer_blocks.{i}."
      if rest == "attn.qkv":
        for name, part in zip(("to_q", "to_k", "to_v"), t.chunk(3, 0)):
          out[f"{prefix}attn1.{name}.{param}"] = part
      elif rest == "cross_attn.kv_linear":
        for name, part in zip(("to_k", "to_v"), t.chunk(2, 0)):
          out[f"{prefix}attn2.{name}.{param}"] = part
      else:
        out[f"{prefix}{_BLOCK[rest]}.{param}"] = t
    elif key in _TOP:  # a bare parameter (the final scale-shift table)
      out[_TOP[key]] = t
    else:
      out[f"{_TOP[module]}.{param}"] = t
  return out


@pytest.fixture(scope="module")
def nvlabs(tmp_path_factory):
  state = random_nvlabs_state(depth=2)
  path = tmp_path_factory.mktemp("nvlabs") / "epoch_1_step_10.pth"
  torch.save({"state_dict": state}, path)
  ref = diffusers.SanaTransformer2DModel(**DIFFUSERS_CONFIG).eval()
  ref.load_state_dict(to_diffusers(state), strict=True)
  return path, state, ref


def _config():
  cfg = config_from_diffusers(DIFFUSERS_CONFIG, name="nvlabs_tiny")
  return ml_collections.ConfigDict(cfg.to_dict())


def test_nvlabs_pth_matches_diffusers_loaded_through_an_independent_mapping(nvlabs):
  path, state, ref = nvlabs
  from tests.models.reference import reference_forward
  model = sana_jax.load_transformer(path, config=_config())
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 6, 10, IN), dtype=np.float32)
  t = np.array([3.0, 700.0], np.float32)
  text = rng.standard_normal((2, 7, CAPTION), dtype=np.float32)
  mask = np.ones((2, 7), np.int64)
  mask[0, 4:] = 0
  expected = reference_forward(ref, x, t, text, mask)
  got = np.asarray(model(x, t, text, mask))
  # float32 on both sides; measured max |diff| 6e-7 against outputs of size ~1.8.
  assert float(np.abs(expected).max()) > 0.5
  np.testing.assert_allclose(got, expected, atol=5e-6, rtol=0)
  np.testing.assert_array_equal(np.asarray(model.null_caption_embedding[...]),
                                state["y_embedder.y_embedding"].numpy())


def test_nvlabs_depth_and_qk_norm_are_checked_against_the_keys(nvlabs):
  path, _, _ = nvlabs
  wrong = _config()
  wrong.depth, wrong.qk_norm = 3, False
  with pytest.raises(CheckpointError, match="2 blocks but config .* has depth 3.*has q/k norms"):
    sana_jax.load_transformer(path, config=wrong)
  with pytest.raises(CheckpointError, match="needs `config`"):
    sana_jax.load_transformer(path)


def test_nvlabs_4p8b_layout_validates_without_loading():
  """The 60-block SANA 1.5 4.8B layout (hidden 2304, q/k norms) maps onto our config; shapes only."""
  cfg = configs.get_config("SanaMS1.5_4800M_P1_D60").model
  shapes = nvlabs_shapes(60, d=cfg.hidden_size, caption=cfg.caption_channels, in_ch=cfg.in_channels,
                         patch=cfg.patch_size, mlp_ratio=cfg.mlp_ratio, qk_norm=True, null_len=300)
  with torch.device("meta"):
    state = {"model.diffusion_model." + k: torch.empty(s) for k, s in shapes.items()}
  source, extras = nvlabs_source(state)
  assert extras["unknown"] == []
  validate_source(source, cfg)
  cfg.depth = 20
  with pytest.raises(CheckpointError, match="the checkpoint has 60 blocks, the config 20"):
    validate_source(source, cfg)

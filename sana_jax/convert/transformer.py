"""SANA transformer weights between PyTorch layouts (diffusers, NVlabs) and our NNX state.

Everything here works tensor by tensor: a checkpoint is read lazily (safetensors, or a memory-mapped
.pth), each tensor is transposed to JAX layout and cast to the target dtype on its own, and the
per-block tensors are stacked onto the layer axis. A bf16 checkpoint therefore never exists as an
fp32 copy, and no full PyTorch state dict is held beside the JAX one.
"""
import re
from typing import Mapping

import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from sana_jax.convert.tensors import (CheckpointError, Entry, TensorSource, check_names, dict_source,
                                      expected_shapes, export_tensors, fill_state, flat_target,
                                      torch_to_numpy)
from sana_jax.models.transformer import SanaTransformer, abstract_transformer

__all__ = ["CheckpointError", "config_from_diffusers", "config_to_diffusers", "dict_source",
           "model_from_state", "nvlabs_source", "resolve_config", "state_from_source",
           "state_to_tensors", "transformer_entries", "validate_source"]
COMPONENT = "transformer"


def transformer_entries(cfg) -> list:
  """The conversion table: our state path -> diffusers name, for the model `cfg` describes."""
  qk_norm, depth = bool(cfg.qk_norm), int(cfg.depth)
  top = [
      (("patch_embed", "kernel"), "patch_embed.proj.weight", "conv"),
      (("patch_embed", "bias"), "patch_embed.proj.bias", "vector"),
      (("t_embed_1", "kernel"), "time_embed.emb.timestep_embedder.linear_1.weight", "linear"),
      (("t_embed_1", "bias"), "time_embed.emb.timestep_embedder.linear_1.bias", "vector"),
      (("t_embed_2", "kernel"), "time_embed.emb.timestep_embedder.linear_2.weight", "linear"),
      (("t_embed_2", "bias"), "time_embed.emb.timestep_embedder.linear_2.bias", "vector"),
      (("t_block", "kernel"), "time_embed.linear.weight", "linear"),
      (("t_block", "bias"), "time_embed.linear.bias", "vector"),
      (("caption_proj_1", "kernel"), "caption_projection.linear_1.weight", "linear"),
      (("caption_proj_1", "bias"), "caption_projection.linear_1.bias", "vector"),
      (("caption_proj_2", "kernel"), "caption_projection.linear_2.weight", "linear"),
      (("caption_proj_2", "bias"), "caption_projection.linear_2.bias", "vector"),
      (("caption_norm", "weight"), "caption_norm.weight", "vector"),
      (("final_scale_shift_table",), "scale_shift_table", "vector"),
      (("proj_out", "kernel"), "proj_out.weight", "linear"),
      (("proj_out", "bias"), "proj_out.bias", "vector"),
  ]
  blk = [
      (("scale_shift_table",), "scale_shift_table", "vector"),
      (("attn", "to_q", "kernel"), "attn1.to_q.weight", "linear"),
      (("attn", "to_k", "kernel"), "attn1.to_k.weight", "linear"),
      (("attn", "to_v", "kernel"), "attn1.to_v.weight", "linear"),
      (("attn", "to_out", "kernel"), "attn1.to_out.0.weight", "linear"),
      (("attn", "to_out", "bias"), "attn1.to_out.0.bias", "vector"),
      (("ffn", "conv_inverted", "kernel"), "ff.conv_inverted.weight", "conv1x1"),
      (("ffn", "conv_inverted", "bias"), "ff.conv_inverted.bias", "vector"),
      (("ffn", "conv_depth", "kernel"), "ff.conv_depth.weight", "conv"),
      (("ffn", "conv_depth", "bias"), "ff.conv_depth.bias", "vector"),
      (("ffn", "conv_point", "kernel"), "ff.conv_point.weight", "conv1x1"),
  ]
  for proj in ("q", "k", "v"):
    blk += [(("cross_attn", f"to_{proj}", "kernel"), f"attn2.to_{proj}.weight", "linear"),
            (("cross_attn", f"to_{proj}", "bias"), f"attn2.to_{proj}.bias", "vector")]
  blk += [(("cross_attn", "to_out", "kernel"), "attn2.to_out.0.weight", "linear"),
          (("cross_attn", "to_out", "bias"), "attn2.to_out.0.bias", "vector")]
  if qk_norm:
    for attn, theirs in (("attn", "attn1"), ("cross_attn", "attn2")):
      for n in ("q", "k"):
        blk.append(((attn, f"norm_{n}", "weight"), f"{theirs}.norm_{n}.weight", "vector"))
  return ([Entry(o, t, k) for o, t, k in top] +
          [Entry(("blocks",) + o, "transformer_blocks.{i}." + t, k, depth) for o, t, k in blk])


# ----------------------------------------------------------------------------- NVlabs names
_NVLABS_TOP = {
    "x_embedder.proj.weight": "patch_embed.proj.weight",
    "x_embedder.proj.bias": "patch_embed.proj.bias",
    "t_embedder.mlp.0.weight": "time_embed.emb.timestep_embedder.linear_1.weight",
    "t_embedder.mlp.0.bias": "time_embed.emb.timestep_embedder.linear_1.bias",
    "t_embedder.mlp.2.weight": "time_embed.emb.timestep_embedder.linear_2.weight",
    "t_embedder.mlp.2.bias": "time_embed.emb.timestep_embedder.linear_2.bias",
    "t_block.1.weight": "time_embed.linear.weight",
    "t_block.1.bias": "time_embed.linear.bias",
    "y_embedder.y_proj.fc1.weight": "caption_projection.linear_1.weight",
    "y_embedder.y_proj.fc1.bias": "caption_projection.linear_1.bias",
    "y_embedder.y_proj.fc2.weight": "caption_projection.linear_2.weight",
    "y_embedder.y_proj.fc2.bias": "caption_projection.linear_2.bias",
    "attention_y_norm.weight": "caption_norm.weight",
    "final_layer.linear.weight": "proj_out.weight",
    "final_layer.linear.bias": "proj_out.bias",
    "final_layer.scale_shift_table": "scale_shift_table",
}
_NVLABS_BLOCK = {
    "scale_shift_table": "scale_shift_table",
    "attn.proj.weight": "attn1.to_out.0.weight",
    "attn.proj.bias": "attn1.to_out.0.bias",
    "attn.q_norm.weight": "attn1.norm_q.weight",
    "attn.k_norm.weight": "attn1.norm_k.weight",
    "cross_attn.q_linear.weight": "attn2.to_q.weight",
    "cross_attn.q_linear.bias": "attn2.to_q.bias",
    "cross_attn.proj.weight": "attn2.to_out.0.weight",
    "cross_attn.proj.bias": "attn2.to_out.0.bias",
    "cross_attn.q_norm.weight": "attn2.norm_q.weight",
    "cross_attn.k_norm.weight": "attn2.norm_k.weight",
    "mlp.inverted_conv.conv.weight": "ff.conv_inverted.weight",
    "mlp.inverted_conv.conv.bias": "ff.conv_inverted.bias",
    "mlp.depth_conv.conv.weight": "ff.conv_depth.weight",
    "mlp.depth_conv.conv.bias": "ff.conv_depth.bias",
    "mlp.point_conv.conv.weight": "ff.conv_point.weight",
}
# Fused NVlabs tensors, split along dim 0 into these diffusers names.
_NVLABS_FUSED = {
    "attn.qkv.weight": ("attn1.to_q.weight", "attn1.to_k.weight", "attn1.to_v.weight"),
    "cross_attn.kv_linear.weight": ("attn2.to_k.weight", "attn2.to_v.weight"),
    "cross_attn.kv_linear.bias": ("attn2.to_k.bias", "attn2.to_v.bias"),
}
# Stored in NVlabs checkpoints but not part of the network.
_NVLABS_DROPPED = ("pos_embed", "y_embedder.y_embedding", "logvar_linear.weight", "logvar_linear.bias")
_NVLABS_PREFIXES = ("model.diffusion_model.", "module.", "model.")
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


def nvlabs_source(state: Mapping, where: str = "an NVlabs state dict") -> tuple:
  """Wraps an NVlabs state dict as a diffusers-named lazy source.

  Returns (source, extras) where extras holds the dropped tensors worth keeping
  (`y_embedding`, the learned null-caption embedding used for CFG) and the set of unknown keys.
  """
  state = dict(state)
  for prefix in _NVLABS_PREFIXES:
    if state and all(k.startswith(prefix) for k in state):
      state = {k[len(prefix):]: v for k, v in state.items()}
  getters, shapes, unknown, extras = {}, {}, [], {}
  for key, tensor in state.items():
    shape = tuple(tensor.shape)
    if key in _NVLABS_DROPPED:
      if key == "y_embedder.y_embedding":
        extras["y_embedding"] = tensor  # read when the model is built
      continue
    if key in _NVLABS_TOP:
      getters[_NVLABS_TOP[key]] = (key, None, None)
      shapes[_NVLABS_TOP[key]] = shape
      continue
    m = _BLOCK_RE.match(key)
    if m and m.group(2) in _NVLABS_BLOCK:
      name = f"transformer_blocks.{m.group(1)}.{_NVLABS_BLOCK[m.group(2)]}"
      getters[name], shapes[name] = (key, None, None), shape
    elif m and m.group(2) in _NVLABS_FUSED:
      parts = _NVLABS_FUSED[m.group(2)]
      n = shape[0] // len(parts)
      for j, part in enumerate(parts):
        name = f"transformer_blocks.{m.group(1)}.{part}"
        getters[name], shapes[name] = (key, j * n, (j + 1) * n), (n,) + shape[1:]
    else:
      unknown.append(key)

  def get(name):
    key, lo, hi = getters[name]
    t = state[key]
    t = t if isinstance(t, np.ndarray) else torch_to_numpy(t)
    return t if lo is None else t[lo:hi]

  extras["unknown"] = unknown
  return TensorSource(getters, get, shapes, component=COMPONENT, where=where), extras


# ----------------------------------------------------------------------------- state <-> tensors
def _depth_of(names) -> int:
  idx = [int(m.group(1)) for n in names if (m := re.match(r"^transformer_blocks\.(\d+)\.", n))]
  return max(idx) + 1 if idx else 0


def validate_source(source: TensorSource, cfg) -> list:
  """Checks every name and shape of a diffusers-named source against the model `cfg` describes.

  Returns the table; all problems are raised together as one CheckpointError. Only shapes are
  read, so this also checks a 4.8B checkpoint layout without loading it.
  """
  entries = transformer_entries(cfg)
  notes = [f"config {cfg.name}: depth {cfg.depth}, qk_norm={cfg.qk_norm}, hidden_size {cfg.hidden_size}"]
  ckpt_depth = _depth_of(source.names)
  if ckpt_depth and ckpt_depth != cfg.depth:
    notes.append(f"the checkpoint has {ckpt_depth} blocks, the config {cfg.depth}")
  check_names(source.component, source.where,
              expected_shapes(entries, _target(cfg)), source.shapes, notes)
  return entries


def _target(cfg):
  return flat_target(nnx.state(abstract_transformer(cfg), nnx.Param))


def state_from_source(source: TensorSource, cfg, dtype=jnp.float32) -> nnx.State:
  """The model's parameter state from diffusers-named tensors, after `validate_source`; tensors
  are read, transposed and cast one at a time, block tensors stacked per parameter."""
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  cfg.param_dtype = cfg.dtype = jnp.dtype(dtype).name
  return fill_state(validate_source(source, cfg), _target(cfg), source)


def state_to_tensors(model: SanaTransformer) -> dict:
  """Our parameters as a diffusers-named dict of numpy arrays in PyTorch layout."""
  return export_tensors(transformer_entries(model.cfg), nnx.state(model, nnx.Param))


def model_from_state(cfg, state) -> SanaTransformer:
  """A concrete model of `cfg` whose parameters are `state` (no random init is materialised)."""
  abstract = abstract_transformer(cfg)
  graphdef, _ = nnx.split(abstract)
  return nnx.merge(graphdef, state)


# ----------------------------------------------------------------------------- configs
def config_from_diffusers(d: Mapping, name: str = "diffusers") -> ml_collections.ConfigDict:
  """Our model config from a diffusers `SanaTransformer2DModel` config.json dict."""
  from sana_jax.configs.base import model_config
  if d.get("guidance_embeds"):
    raise CheckpointError("guidance-embedding (SANA-Sprint) transformers are not supported")
  hidden = d["num_attention_heads"] * d["attention_head_dim"]
  if d.get("cross_attention_dim", hidden) != hidden:
    raise CheckpointError(f"cross_attention_dim {d['cross_attention_dim']} != hidden size {hidden}")
  qk = d.get("qk_norm")
  if qk not in (None, "rms_norm_across_heads"):
    raise CheckpointError(f"unsupported qk_norm {qk!r}")
  interp = d.get("interpolation_scale")
  return model_config(
      name=name, in_channels=d.get("in_channels", 32), out_channels=d.get("out_channels") or d.get("in_channels", 32),
      patch_size=d.get("patch_size", 1), hidden_size=hidden, depth=d["num_layers"],
      linear_head_dim=d["attention_head_dim"], cross_num_heads=d["num_cross_attention_heads"],
      cross_head_dim=d["cross_attention_head_dim"], caption_channels=d.get("caption_channels", 2304),
      mlp_ratio=float(d.get("mlp_ratio", 2.5)), qk_norm=qk is not None, norm_eps=d.get("norm_eps", 1e-6),
      use_pe=interp is not None, interpolation_scale=float(interp if interp is not None else 1.0),
      sample_size=d.get("sample_size", 32))


def config_to_diffusers(cfg) -> dict:
  """The diffusers config.json for our model config (so `from_pretrained` rebuilds the same net)."""
  if cfg.get("prediction", "velocity") != "velocity":
    raise CheckpointError(f"this model predicts the clean latent (model.prediction={cfg.prediction!r}); "
                          "diffusers' SanaTransformer2DModel and SanaPipeline read the output as the "
                          "velocity, so it cannot be exported for them")
  if cfg.get("pooled_caption", False):
    raise CheckpointError("this model adds the pooled caption to its timestep embedding "
                          "(model.pooled_caption=True); diffusers' SanaTransformer2DModel has no such "
                          "projection, so it cannot be exported for it")
  return {
      "_class_name": "SanaTransformer2DModel",
      "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
      "num_attention_heads": cfg.hidden_size // cfg.linear_head_dim,
      "attention_head_dim": cfg.linear_head_dim, "num_layers": cfg.depth,
      "num_cross_attention_heads": cfg.cross_num_heads, "cross_attention_head_dim": cfg.cross_head_dim,
      "cross_attention_dim": cfg.hidden_size, "caption_channels": cfg.caption_channels,
      "mlp_ratio": cfg.mlp_ratio, "dropout": 0.0, "attention_bias": False,
      "sample_size": cfg.sample_size, "patch_size": cfg.patch_size,
      "norm_elementwise_affine": False, "norm_eps": cfg.norm_eps,
      "interpolation_scale": cfg.interpolation_scale if cfg.use_pe else None,
      "guidance_embeds": False, "qk_norm": "rms_norm_across_heads" if cfg.qk_norm else None,
  }


def resolve_config(config) -> ml_collections.ConfigDict:
  """A model ConfigDict from a config name, a full job config, or a model config."""
  from sana_jax import configs
  if config is None:
    raise CheckpointError("an NVlabs .pth checkpoint needs `config` (a config name such as "
                          f"{sorted(configs.NAMED_CONFIGS)} or a ConfigDict)")
  if isinstance(config, str):
    return configs.get_config(config).model
  return config.model if "model" in config else config

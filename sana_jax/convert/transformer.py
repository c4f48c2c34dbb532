"""SANA transformer weights between PyTorch layouts (diffusers, NVlabs) and our NNX state.

Everything here works tensor by tensor: a checkpoint is read lazily (safetensors, or a memory-mapped
.pth), each tensor is transposed to JAX layout and cast to the target dtype on its own, and the
per-block tensors are stacked onto the layer axis. A bf16 checkpoint therefore never exists as an
fp32 copy, and no full PyTorch state dict is held beside the JAX one.
"""
import dataclasses
import re
from typing import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from sana_jax.models.transformer import SanaTransformer, abstract_transformer


class CheckpointError(ValueError):
  """A checkpoint that does not fit the model: lists every missing, unexpected and mis-shaped key."""


# ----------------------------------------------------------------------------- layout transforms
# Each kind maps a PyTorch tensor to our layout (to_jax) and back (to_torch).
def _linear_to_jax(w):
  return w.T


def _conv_to_jax(w):  # [O, I, kh, kw] -> [kh, kw, I, O]
  return w.transpose(2, 3, 1, 0)


def _conv1x1_to_jax(w):  # [O, I, 1, 1] -> [I, O]
  return w[:, :, 0, 0].T


_KINDS = {
    "linear": (_linear_to_jax, lambda a: a.T),
    "vector": (lambda w: w, lambda a: a),
    "conv": (_conv_to_jax, lambda a: a.transpose(3, 2, 0, 1)),
    "conv1x1": (_conv1x1_to_jax, lambda a: a.T[:, :, None, None]),
}


@dataclasses.dataclass(frozen=True)
class _Entry:
  ours: tuple          # path in nnx.state(model)
  theirs: str          # diffusers name; "{i}" is the block index for block entries
  kind: str
  in_block: bool


def _entries(qk_norm: bool) -> list:
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
  return ([_Entry(o, t, k, False) for o, t, k in top] +
          [_Entry(("blocks",) + o, "transformer_blocks.{i}." + t, k, True) for o, t, k in blk])


# ----------------------------------------------------------------------------- tensor sources
class TensorSource:
  """Lazy name -> tensor access over a checkpoint; `get` returns a numpy or jax array."""

  def __init__(self, names: Iterable[str], getter: Callable, shapes: Mapping[str, tuple]):
    self.names = set(names)
    self._get = getter
    self.shapes = dict(shapes)

  def get(self, name):
    return self._get(name)


def safetensors_source(files: list) -> TensorSource:
  """Reads tensors lazily from one or more .safetensors files (bf16 stays bf16, via jax arrays)."""
  from safetensors import safe_open
  where, shapes = {}, {}
  for f in files:
    with safe_open(f, framework="flax") as h:
      for k in h.keys():
        where[k] = f
        shapes[k] = tuple(h.get_slice(k).get_shape())

  def get(name):
    with safe_open(where[name], framework="flax") as h:
      return h.get_tensor(name)

  return TensorSource(where, get, shapes)


def torch_to_numpy(t):
  """A torch tensor as numpy without changing its dtype (bf16 becomes ml_dtypes.bfloat16)."""
  import torch
  t = t.detach().cpu()
  if t.dtype == torch.bfloat16:
    return t.view(torch.int16).numpy().view(jnp.bfloat16)
  return t.numpy()


def dict_source(tensors: Mapping) -> TensorSource:
  """A source over an in-memory mapping of numpy/torch tensors."""
  def get(name):
    v = tensors[name]
    return v if isinstance(v, (np.ndarray, jax.Array)) else torch_to_numpy(v)
  return TensorSource(tensors.keys(), get, {k: tuple(v.shape) for k, v in tensors.items()})


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


def nvlabs_source(state: Mapping) -> tuple:
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
        extras["y_embedding"] = torch_to_numpy(tensor) if not isinstance(tensor, np.ndarray) else tensor
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
  return TensorSource(getters, get, shapes), extras


def diffusers_to_nvlabs(tensors: Mapping) -> dict:
  """Renames and fuses a diffusers state dict into NVlabs names (the inverse of `nvlabs_source`)."""
  inv_top = {v: k for k, v in _NVLABS_TOP.items()}
  inv_block = {v: k for k, v in _NVLABS_BLOCK.items()}
  out, fused = {}, {}
  for name, t in tensors.items():
    if name in inv_top:
      out[inv_top[name]] = t
      continue
    m = re.match(r"^transformer_blocks\.(\d+)\.(.+)$", name)
    if m is None:
      raise CheckpointError(f"not a SANA transformer tensor: {name}")
    i, rest = m.groups()
    if rest in inv_block:
      out[f"blocks.{i}.{inv_block[rest]}"] = t
    else:
      for nv, parts in _NVLABS_FUSED.items():
        if rest in parts:
          fused.setdefault(f"blocks.{i}.{nv}", [None] * len(parts))[parts.index(rest)] = t
  for key, parts in fused.items():
    cat = (np.concatenate if isinstance(parts[0], np.ndarray) else _torch_cat)
    out[key] = cat(parts, 0)
  return out


def _torch_cat(parts, axis):
  import torch
  return torch.cat(parts, axis)


# ----------------------------------------------------------------------------- state <-> tensors
def _depth_of(names) -> int:
  idx = [int(m.group(1)) for n in names if (m := re.match(r"^transformer_blocks\.(\d+)\.", n))]
  return max(idx) + 1 if idx else 0


def validate_source(source: TensorSource, cfg) -> list:
  """Checks every name and shape of a diffusers-named source against the model `cfg` describes.

  Returns the mapping entries; all problems are gathered and raised together as one CheckpointError.
  Only shapes are read, so this also checks a 4.8B checkpoint layout without loading it.
  """
  flat_target = dict(nnx.to_flat_state(nnx.state(abstract_transformer(cfg), nnx.Param)))
  entries = _entries(cfg.qk_norm)
  depth = cfg.depth
  missing, misshaped, wanted = [], [], set()
  for e in entries:
    names = [e.theirs.format(i=i) for i in range(depth)] if e.in_block else [e.theirs]
    want = flat_target[e.ours].shape
    per_shape = want[1:] if e.in_block else want
    torch_shape = _KINDS[e.kind][1](np.empty(per_shape, np.int8)).shape
    for n in names:
      wanted.add(n)
      if n not in source.names:
        missing.append(n)
      elif tuple(source.shapes[n]) != tuple(torch_shape):
        misshaped.append(f"{n}: checkpoint {tuple(source.shapes[n])}, model expects {tuple(torch_shape)}")
  unexpected = sorted(source.names - wanted)
  if missing or misshaped or unexpected:
    lines = [f"checkpoint does not match the {cfg.name} transformer (depth {depth}, "
             f"qk_norm={cfg.qk_norm}, hidden_size {cfg.hidden_size}):"]
    ckpt_depth = _depth_of(source.names)
    if ckpt_depth and ckpt_depth != depth:
      lines.append(f"  the checkpoint has {ckpt_depth} blocks, the config {depth}")
    for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)):
      if items:
        lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:40]) +
                     (" ..." if len(items) > 40 else ""))
    raise CheckpointError("\n".join(lines))
  return entries


def state_from_source(source: TensorSource, cfg, dtype=jnp.float32) -> nnx.State:
  """Builds the model's parameter state from diffusers-named tensors, after `validate_source`.

  Tensors are read, transposed and cast one at a time; block tensors are stacked per parameter.
  """
  entries = validate_source(source, cfg)
  flat_target = dict(nnx.to_flat_state(nnx.state(abstract_transformer(cfg), nnx.Param)))
  depth = cfg.depth

  def load(name, kind):
    return jnp.asarray(_KINDS[kind][0](source.get(name)), dtype=dtype)

  flat = {}
  for e in entries:
    if e.in_block:
      flat[e.ours] = jnp.stack([load(e.theirs.format(i=i), e.kind) for i in range(depth)])
    else:
      flat[e.ours] = load(e.theirs, e.kind)
  return nnx.from_flat_state({p: v.replace(flat[p]) for p, v in flat_target.items()})


def state_to_tensors(model: SanaTransformer) -> dict:
  """Our parameters as a diffusers-named dict of numpy arrays in PyTorch layout."""
  flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  out = {}
  for e in _entries(model.cfg.qk_norm):
    arr = np.asarray(flat[e.ours][...])
    to_torch = _KINDS[e.kind][1]
    if e.in_block:
      for i in range(arr.shape[0]):
        out[e.theirs.format(i=i)] = np.ascontiguousarray(to_torch(arr[i]))
    else:
      out[e.theirs] = np.ascontiguousarray(to_torch(arr))
  return out


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

"""LoRA adapters on the SANA transformer's linear maps, named as diffusers / PEFT users name them.

  add_lora(model, lora_cfg, *, rngs, adapter_name="default") -> model   (in place, also returned)
  lora_state(model, adapter_name=None) -> nnx.State of the adapter weights (nnx.LoRAParam)
  adapters(model) -> {name: config dict}   lora_layers(model) -> {Target: LoRALinear / LoRAConv}
  set_adapters(model, names, weights=None)   set_adapter_weight(model, name, weight)
  scaled_weights(state, factor): a split state with every adapter weight times factor
  fuse_lora(model, scale=1.0, adapter_names=None)   unfuse_lora(model)
  delete_adapter(model, name)   unload_lora(model)   set_dropout_key(model, key)
  copy_structure(src, dst): dst (e.g. an abstract model to restore a checkpoint into) gets src's
      adapter layout, zero-valued
  lora_targets(cfg) / match_targets(cfg, target_modules): which layers a pattern selects
Files (diffusers / PEFT format): sana_jax/convert/lora.py (save_lora / load_lora).

A targeted `nnx.Linear` is replaced by a `LoRALinear` (the patch embedding's nnx.Conv by a
`LoRAConv`, whose A is a conv with the patch kernel [p, p, in, r]) that keeps the very same `kernel` / `bias`
variables (same state paths, so checkpoints, conversion tables and FSDP rules of the base model are
unchanged) and adds, per adapter name,
  lora_A[name]  [*L, in, r]   nnx.LoRAParam, fp32, sharding names (*L, <kernel in axis>, None)
  lora_B[name]  [*L, r, out]  nnx.LoRAParam, fp32, zeros at init, (*L, None, <kernel out axis>)
  lora_scale[name]  [*L]  LoRAScale: alpha / r (alpha / sqrt(r) with use_rslora); 0 on a stacked
                         layer the patterns do not select (e.g. "transformer_blocks.0.attn1.to_q")
  lora_weight[name] [*L]  LoRAScale: the set_adapters weight (1.0)
where *L is the stacked layer axis ("layers", [depth]) of the SanaBlocks (nnx.vmap + one lax.scan)
and empty for the top-level maps. y = x W + b + sum_a weight_a * scale_a * dropout(x) A_a B_a,
the adapter product computed in the model's compute dtype, so a bf16 base stays bf16.

Filters: base weights `BASE = nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))`, adapter weights
`nnx.LoRAParam`; LoRAScale and the dropout key (LoRARng) are not nnx.Param, so a Param filter never
trains them. Dropout (lora_cfg.dropout > 0) acts only after `model.train()` (nnx sets
`deterministic=False`) and needs `set_dropout_key(model, key)` before each step's forward.

Targets: the diffusers names of every linear map of the transformer (derived from the conversion
table in sana_jax/convert/transformer.py): transformer_blocks.{i}.attn1.to_q/to_k/to_v/to_out.0,
attn2.*, ff.conv_inverted, ff.conv_point, time_embed.emb.timestep_embedder.linear_1/2,
time_embed.linear, caption_projection.linear_1/2, proj_out, patch_embed.proj. target_modules as PEFT reads it: a list
of names, each matching a layer whose name equals it or ends with "." + it; a string is a regular
expression the whole name must match.
"""
import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

BASE = nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))
INITS = ("gaussian", "kaiming")


class LoRAScale(nnx.Variable):
  """A fixed per-layer factor of an adapter (alpha / r, or its set_adapters weight); not trained."""


class LoRARng(nnx.Variable):
  """Raw PRNG key data [*L, 2] uint32 for adapter dropout, written by `set_dropout_key`."""


@dataclasses.dataclass(frozen=True)
class Target:
  """A map of the transformer LoRA can adapt: our module path, diffusers module name ("{i}" =
  block), and the PyTorch layout kind of its weight (sana_jax/convert/tensors.py KINDS): "linear",
  "conv1x1" (the Mix-FFN 1x1 Conv2d: PEFT stores [r, in, 1, 1]) or "conv" (the patch embedding:
  PEFT's lora_A is a Conv2d with its kernel and stride, lora_B a 1x1 Conv2d)."""
  path: tuple
  diffusers: str
  layers: int | None  # depth for the stacked blocks, None for a top-level map
  kind: str

  def names(self) -> list:
    return [self.diffusers] if self.layers is None else [self.diffusers.format(i=i) for i in range(self.layers)]


def lora_targets(cfg) -> list:
  """Every map LoRA can adapt in the model `cfg` describes (all but the depthwise 3x3 conv)."""
  from sana_jax.convert.transformer import transformer_entries
  return [Target(e.ours[:-1], e.theirs[:-len(".weight")], e.layers, e.kind)
          for e in transformer_entries(cfg) if e.ours[-1] == "kernel" and
          (e.kind in ("linear", "conv1x1") or e.ours == ("patch_embed", "kernel"))]


def _matches(name, target_modules) -> bool:
  if isinstance(target_modules, str):
    return re.fullmatch(target_modules, name) is not None
  return any(name == t or name.endswith("." + t) for t in target_modules)


def match_targets(cfg, target_modules) -> dict:
  """{Target: bool mask [layers] (or [1] at top level)} of the maps the patterns select; a pattern
  that selects nothing raises one line naming it and the names that exist."""
  if not isinstance(target_modules, str):
    target_modules = tuple(target_modules)
  out = {}
  for t in lora_targets(cfg):
    mask = np.array([_matches(n, target_modules) for n in t.names()])
    if mask.any():
      out[t] = mask
  names = [n for t in lora_targets(cfg) for n in t.names()]
  patterns = [target_modules] if isinstance(target_modules, str) else list(target_modules)
  unused = [p for p in patterns if not any(_matches(n, p if isinstance(target_modules, str) else (p,))
                                           for n in names)]
  if unused or not out:
    examples = sorted({re.sub(r"\.\d+\.", ".{i}.", n) for n in names})
    raise ValueError(f"LoRA target_modules {unused or patterns} match no layer of the transformer; "
                     f"layer names: {examples}")
  return out


class _Adapters:
  """Named low-rank adapters beside a base layer's own variables (mixed into LoRALinear / LoRAConv).

  lora_A[name] [*L, *kernel dims but the last, r], lora_B[name] [*L, r, out]; `_down(x, a)` maps
  the input to the r adapter channels the way the base layer maps it to its outputs."""

  def _take_base(self, base):
    for name, value in vars(base).items():
      if not name.startswith("_pytree"):
        setattr(self, name, value)
    self.lora_A, self.lora_B = nnx.Dict(), nnx.Dict()
    self.lora_scale, self.lora_weight, self.lora_rng = nnx.Dict(), nnx.Dict(), nnx.Dict()
    self.lora_rates = ()  # ((adapter, dropout rate), ...), one per adapter in the order added
    self.lora_fused = ()  # ((adapter, fused weight), ...): already in the kernel, skipped in __call__
    self.lora_base_fields = tuple(n for n in vars(base) if not n.startswith("_pytree"))
    self.deterministic = True

  def base_module(self):
    """The plain base layer (nnx.Linear / nnx.Conv) over the same kernel / bias variables."""
    module = nnx.eval_shape(self._placeholder)
    for name in self.lora_base_fields:
      setattr(module, name, getattr(self, name))
    return module

  def add_adapter(self, name, a, b, scale, dropout=0.0):
    """a [*L, ..., r], b [*L, r, out], scale [*L] (fp32 arrays); sharding names follow the kernel."""
    names = tuple(self.kernel.get_metadata().get("out_sharding") or (None,) * self.kernel[...].ndim)
    lead = names[:jnp.ndim(scale)]
    meta = lambda n: dict(out_sharding=n, eager_sharding=False)
    self.lora_A[name] = nnx.LoRAParam(a, **meta(names[:-1] + (None,)))
    self.lora_B[name] = nnx.LoRAParam(b, **meta(lead + (None, names[-1])))
    self.lora_scale[name] = LoRAScale(jnp.asarray(scale, jnp.float32), **meta(lead))
    self.lora_weight[name] = LoRAScale(jnp.ones_like(scale, jnp.float32), **meta(lead))
    if dropout:
      self.lora_rng[name] = LoRARng(jnp.zeros(tuple(jnp.shape(scale)) + (2,), jnp.uint32), **meta(lead + (None,)))
    self.lora_rates = tuple(d for d in self.lora_rates if d[0] != name) + ((name, float(dropout)),)

  def remove_adapter(self, name):
    for group in (self.lora_A, self.lora_B, self.lora_scale, self.lora_weight, self.lora_rng):
      if name in group:
        del group[name]
    self.lora_rates = tuple(d for d in self.lora_rates if d[0] != name)

  def delta(self, name):
    """The adapter's kernel update weight * scale * A B, the kernel's shape, float32."""
    a, b = self.lora_A[name][...], self.lora_B[name][...]
    factor = self.lora_scale[name][...] * self.lora_weight[name][...]
    update = jnp.matmul(a, b, precision="highest")
    return update * factor.reshape(factor.shape + (1,) * (update.ndim - factor.ndim))

  def _with_adapters(self, inputs, y):
    fused = dict(self.lora_fused)
    dtype = y.dtype
    for name, rate in self.lora_rates:
      if name in fused:
        continue
      x = inputs.astype(dtype)
      if rate and not self.deterministic:
        key = jax.random.wrap_key_data(self.lora_rng[name][...])
        keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
        x = jnp.where(keep, x / (1.0 - rate), 0).astype(dtype)
      factor = (self.lora_scale[name][...] * self.lora_weight[name][...]).astype(dtype)
      y = y + self._down(x, self.lora_A[name][...].astype(dtype)) @ self.lora_B[name][...].astype(dtype) * factor
    return y


class LoRALinear(_Adapters, nnx.Linear):
  """nnx.Linear plus named low-rank adapters; built from an existing Linear, sharing its variables."""

  def __init__(self, base: nnx.Linear):
    self._take_base(base)

  @staticmethod
  def _placeholder():
    return nnx.Linear(1, 1, rngs=nnx.Rngs(0))

  def _down(self, x, a):
    return x @ a

  def __call__(self, inputs, out_sharding=None):
    return self._with_adapters(inputs, super().__call__(inputs, out_sharding=out_sharding))


class LoRAConv(_Adapters, nnx.Conv):
  """nnx.Conv (the patch embedding: no groups or dilation) plus named adapters; A is a conv with
  the base kernel's size and stride, B a 1x1 conv, as PEFT adapts a Conv2d."""

  def __init__(self, base: nnx.Conv):
    if base.feature_group_count != 1 or base.kernel_dilation not in (1, None, (1, 1)):
      raise ValueError("LoRA adapts plain convolutions only (no groups or dilation)")
    self._take_base(base)

  @staticmethod
  def _placeholder():
    return nnx.Conv(1, 1, kernel_size=(1, 1), rngs=nnx.Rngs(0))

  def _down(self, x, a):
    strides = (self.strides,) * 2 if isinstance(self.strides, int) else tuple(self.strides or (1, 1))
    return jax.lax.conv_general_dilated(x, a, strides, self.padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def __call__(self, inputs, out_sharding=None):
    return self._with_adapters(inputs, super().__call__(inputs, out_sharding=out_sharding))


def is_lora_layer(module) -> bool:
  return isinstance(module, _Adapters)


# ----------------------------------------------------------------------------- the model API
def _get(model, path):
  module = model
  for p in path:
    module = getattr(module, p)
  return module


def _set(model, path, value):
  setattr(_get(model, path[:-1]), path[-1], value)


def lora_layers(model) -> dict:
  """{Target: LoRALinear / LoRAConv} of the layers that carry adapters."""
  return {t: m for t in lora_targets(model.cfg) if is_lora_layer(m := _get(model, t.path))}


def adapters(model) -> dict:
  """{adapter name: its config (rank, alpha, target_modules, init, use_rslora, dropout, base_model)}."""
  return {name: cfg.to_dict() for name, cfg in getattr(model, "lora_adapters", ())}


def scale_of(rank, alpha, use_rslora=False) -> float:
  """PEFT's scaling: alpha / r, or alpha / sqrt(r) (rsLoRA)."""
  return float(alpha) / (math.sqrt(rank) if use_rslora else rank)


def register(model, name, info):
  """Records adapter `name`'s config (rank, alpha, target_modules, ...) on the model."""
  kept = tuple((n, c) for n, c in getattr(model, "lora_adapters", ()) if n != name)
  model.lora_adapters = kept + ((name, ml_collections.FrozenConfigDict(info)),)


def layer_at(model, target):
  """The module (nnx.Linear / nnx.Conv, or its LoRA form) at `target`."""
  return _get(model, target.path)


def lora_layer(model, target):
  """The LoRALinear / LoRAConv at `target` (a plain layer there is wrapped first)."""
  layer = _get(model, target.path)
  if not is_lora_layer(layer):
    layer = (LoRAConv if isinstance(layer, nnx.Conv) else LoRALinear)(layer)
    _set(model, target.path, layer)
  return layer


def adapter_shapes(layer, rank, stacked: bool) -> tuple:
  """(A shape, B shape) of a rank-`rank` adapter on `layer`; `stacked`: its kernel has a layer axis."""
  kernel = layer.kernel[...].shape
  lead = kernel[:1] if stacked else ()
  return kernel[:-1] + (rank,), lead + (rank, kernel[-1])


def add_lora(model, lora_cfg, *, rngs: nnx.Rngs, adapter_name: str = "default"):
  """Adds adapter `adapter_name` to the layers lora_cfg.target_modules selects (in place).

  lora_cfg: `configs.base.lora_config()` fields (rank, alpha, dropout, target_modules, init,
  use_rslora, base_model). A ~ N(0, 1/r) ("gaussian") or kaiming-uniform (PEFT's default), B = 0,
  so the model's output is unchanged until B is trained. Returns the model.
  """
  rank, init = int(lora_cfg.rank), lora_cfg.get("init", "gaussian")
  if rank < 1:
    raise ValueError(f"LoRA rank must be >= 1, got {rank}")
  if init not in INITS:
    raise ValueError(f"LoRA init must be one of {INITS}, got {init!r}")
  if adapter_name in adapters(model):
    raise ValueError(f"the model already has a LoRA adapter named {adapter_name!r}")
  scale = scale_of(rank, lora_cfg.alpha, lora_cfg.get("use_rslora", False))
  targets = lora_cfg.target_modules
  for target, mask in match_targets(model.cfg, targets).items():
    layer = lora_layer(model, target)
    stacked = target.layers is not None
    a_shape, b_shape = adapter_shapes(layer, rank, stacked)
    fan_in = math.prod(a_shape[int(stacked):-1])
    key = rngs.params()
    if init == "gaussian":
      a = jax.random.normal(key, a_shape, jnp.float32) / rank
    else:
      bound = 1.0 / math.sqrt(fan_in)
      a = jax.random.uniform(key, a_shape, jnp.float32, -bound, bound)
    b = jnp.zeros(b_shape, jnp.float32)
    s = jnp.asarray(mask if stacked else mask[0], jnp.float32) * scale
    layer.add_adapter(adapter_name, a, b, s, lora_cfg.get("dropout", 0.0))
  info = dict(rank=rank, alpha=float(lora_cfg.alpha), init=init, dropout=float(lora_cfg.get("dropout", 0.0)),
              use_rslora=bool(lora_cfg.get("use_rslora", False)), base_model=lora_cfg.get("base_model", ""),
              target_modules=targets if isinstance(targets, str) else list(targets))
  register(model, adapter_name, info)
  return model


def lora_state(model, adapter_name: str | None = None) -> nnx.State:
  """The adapter weights (all adapters, or one) as an nnx.State of LoRAParam."""
  state = nnx.state(model, nnx.LoRAParam)
  if adapter_name is None:
    return state
  flat = [(p, v) for p, v in nnx.to_flat_state(state) if adapter_name in p]
  return nnx.from_flat_state(flat)


def _check_names(model, names):
  known = adapters(model)
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ValueError(f"no LoRA adapter named {unknown}; the model has {sorted(known)}")


def set_adapters(model, names, weights=None):
  """Activates `names` (a name or a list) with `weights` (default 1.0 each); other adapters get
  weight 0. Changes only variable values, so a compiled sampler is reused."""
  names = [names] if isinstance(names, str) else list(names)
  weights = [1.0] * len(names) if weights is None else ([weights] if np.isscalar(weights) else list(weights))
  if len(weights) != len(names):
    raise ValueError(f"set_adapters got {len(names)} adapters and {len(weights)} weights")
  _check_names(model, names)
  chosen = dict(zip(names, weights))
  for layer in lora_layers(model).values():
    if layer.lora_fused:
      raise ValueError("unfuse_lora() before set_adapters: fused adapters are inside the kernels")
    for name in layer.lora_weight:
      v = layer.lora_weight[name]
      v[...] = jnp.full_like(v[...], float(chosen.get(name, 0.0)))


def set_adapter_weight(model, name, weight):
  """Sets one adapter's weight, leaving the others' as they are."""
  _check_names(model, [name])
  for layer in lora_layers(model).values():
    if name in layer.lora_weight:
      v = layer.lora_weight[name]
      v[...] = jnp.full_like(v[...], float(weight))


def scaled_weights(state, factor) -> nnx.State:
  """A copy of a model state with every adapter's weight times `factor` (diffusers' per-call
  `attention_kwargs={"scale": factor}`); fused adapters are in the kernels and keep their scale."""
  flat = [(p, v.replace(v[...] * jnp.float32(factor)) if "lora_weight" in p else v)
          for p, v in nnx.to_flat_state(state)]
  return nnx.from_flat_state(flat)


def fuse_lora(model, scale: float = 1.0, adapter_names=None):
  """Adds scale * (each adapter's current weighted update) into the base kernels, in their dtype;
  the fused adapters are then skipped in the forward pass (same output). `unfuse_lora` undoes it."""
  names = list(adapters(model)) if adapter_names is None else list(adapter_names)
  _check_names(model, names)
  for layer in lora_layers(model).values():
    done = dict(layer.lora_fused)
    todo = [n for n in names if n in layer.lora_A and n not in done]
    if not todo:
      continue
    kernel = layer.kernel[...]
    update = sum(layer.delta(n) for n in todo) * scale
    layer.kernel[...] = (kernel.astype(jnp.float32) + update).astype(kernel.dtype)
    layer.lora_fused = layer.lora_fused + tuple((n, float(scale)) for n in todo)


def unfuse_lora(model):
  """Subtracts what `fuse_lora` added (exact in fp32 up to rounding; bf16 kernels keep the
  rounding of the round trip, as in PEFT)."""
  for layer in lora_layers(model).values():
    if not layer.lora_fused:
      continue
    kernel = layer.kernel[...]
    update = sum(layer.delta(n) * s for n, s in layer.lora_fused)
    layer.kernel[...] = (kernel.astype(jnp.float32) - update).astype(kernel.dtype)
    layer.lora_fused = ()


def delete_adapter(model, name):
  """Removes adapter `name` (unfused first); layers left without adapters become nnx.Linear again."""
  _check_names(model, [name])
  if any(layer.lora_fused for layer in lora_layers(model).values()):
    unfuse_lora(model)
  for target, layer in lora_layers(model).items():
    layer.remove_adapter(name)
    if not layer.lora_A:
      _set(model, target.path, layer.base_module())
  model.lora_adapters = tuple((n, c) for n, c in model.lora_adapters if n != name)


def unload_lora(model):
  """Removes every adapter: the model is the base model again (diffusers' unload_lora_weights)."""
  for name in list(adapters(model)):
    delete_adapter(model, name)


def set_dropout_key(model, key):
  """Gives every adapter with dropout its own key derived from `key` (call once per train step)."""
  for n, (target, layer) in enumerate(lora_layers(model).items()):
    for m, name in enumerate(layer.lora_rng):
      v = layer.lora_rng[name]
      k = jax.random.fold_in(jax.random.fold_in(key, n), m)
      if target.layers is not None:
        k = jax.random.split(k, target.layers)
      v[...] = jax.random.key_data(k).astype(jnp.uint32)


def copy_structure(src, dst):
  """Gives `dst` (a model of the same architecture, e.g. an abstract one with other runtime knobs)
  the adapter layout of `src`, with zero values: merge it with src's state afterwards."""
  for target, layer in lora_layers(src).items():
    new = lora_layer(dst, target)
    for name, rate in layer.lora_rates:
      zeros = lambda v: jnp.zeros(v[...].shape, v[...].dtype)
      new.add_adapter(name, zeros(layer.lora_A[name]), zeros(layer.lora_B[name]),
                      zeros(layer.lora_scale[name]), rate)
    new.lora_fused = layer.lora_fused
  dst.lora_adapters = getattr(src, "lora_adapters", ())
  return dst

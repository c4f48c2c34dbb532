"""LoRA training: the adapter is the train state; the frozen base rides beside it.

A config with a `lora` section (configs/lora.py) trains only the adapter that
`sana_jax.models.lora.add_lora` puts on the transformer's linear maps:
  - the TrainState's params, EMA and optimiser state are the adapter's `nnx.LoRAParam`s only;
  - the base weights are read from `train.init_from` (any format `load_transformer` reads,
    including a training workdir) once, in model.param_dtype (bfloat16 stays bfloat16), placed
    by their logical shardings, and passed to the jitted step as a separate argument ("frozen":
    the base Params with the adapter's fixed scales and dropout key): never differentiated,
    updated, donated or copied into the optimiser;
  - with lora.dropout > 0 the step puts the merged model in training mode and gives the adapters
    a dropout key derived from the step's key (`train_mode`);
  - checkpoints hold the adapter (the state) and `base_info`: the base's path and fingerprint, so
    a resume against other base weights is refused (training/resume.py, `check_base`).

The fingerprint hashes a strided sample (at most ~4096 values per array, rounded to bfloat16) of
every base array together with its path and shape: the same weights give the same fingerprint in
any dtype or sharding; training the base further changes it (its weights all move).
"""
import dataclasses
import hashlib
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from sana_jax.training import sharding
from sana_jax.training.resume import FIELDS_ADDED_LATER

_SAMPLES_PER_ARRAY = 4096


def enabled(cfg) -> bool:
  """True for a LoRA config (one with a `lora` section of positive rank)."""
  return cfg.get("lora") is not None and int(cfg.lora.rank) > 0


def has_dropout(cfg) -> bool:
  return enabled(cfg) and float(cfg.lora.get("dropout", 0.0)) > 0


def add_adapter(model, cfg, seed: int):
  """Puts cfg.lora's adapter on `model` (in place; returns it)."""
  from sana_jax.models import lora
  return lora.add_lora(model, cfg.lora, rngs=nnx.Rngs(seed))


def split(model):
  """-> (graphdef, adapter, frozen): the LoRAParams, and everything else (the base Params, the
  adapters' fixed scales and dropout keys) of a model with an adapter."""
  return nnx.split(model, nnx.LoRAParam, ...)


def train_mode(model, rng):
  """Adapter dropout for one step: training mode and a fresh dropout key from `rng`."""
  from sana_jax.models import lora
  model.train()
  lora.set_dropout_key(model, rng)


def abstract_split(cfg):
  """split() of cfg's model with its adapter, as ShapeDtypeStructs (nothing allocated)."""
  from sana_jax.training.train_state import build_model
  return split(nnx.eval_shape(lambda: add_adapter(build_model(cfg.model, 0), cfg, 0)))


def _sample(x):
  """A strided corner of `x` with at most ~_SAMPLES_PER_ARRAY values, as float32 of bfloat16."""
  if x.ndim:
    keep = max(1, math.ceil(_SAMPLES_PER_ARRAY ** (1.0 / x.ndim)))
    x = x[tuple(slice(None, None, max(1, math.ceil(n / keep))) for n in x.shape)]
  return x.astype(jnp.bfloat16).astype(jnp.float32)


def fingerprint(params, mesh=None) -> str:
  """16 hex digits identifying the weights `params` (an nnx.State; see the module docstring)."""
  out = None if mesh is None else NamedSharding(mesh, P())
  samples = jax.jit(lambda t: jax.tree.map(_sample, t), out_shardings=out)(params)
  digest = hashlib.sha256()
  for (path, leaf), sample in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(samples)):
    digest.update(f"{jax.tree_util.keystr(path)}{tuple(leaf.shape)};".encode())
    digest.update(np.asarray(sample, np.float32).tobytes())
  return digest.hexdigest()[:16]


ARCHITECTURE_KEYS = ("hidden_size", "depth", "patch_size", "in_channels", "out_channels", "caption_channels",
                     "cross_num_heads", "cross_head_dim", "qk_norm", "mlp_ratio", "pooled_caption", "prediction")


def check_architecture(source_cfg, model_cfg, path) -> None:
  """Raises ValueError naming each field where the checkpoint at `path` differs from model_cfg (a
  config without a field added later means what runs before it used: resume.FIELDS_ADDED_LATER)."""
  def value(c, k):
    later = "model." + k
    return c.get(k, FIELDS_ADDED_LATER[later]) if later in FIELDS_ADDED_LATER else c[k]
  diff = {k: (value(source_cfg, k), value(model_cfg, k)) for k in ARCHITECTURE_KEYS
          if value(source_cfg, k) != value(model_cfg, k)}
  if diff:
    raise ValueError(f"train.init_from={path!r} does not match model config (checkpoint, config): {diff}")


@dataclasses.dataclass
class FrozenBase:
  """The base weights a LoRA run trains against, and the pointer its checkpoints keep."""
  params: nnx.State      # the frozen side of split(): base Params in model.param_dtype, placed by `shardings`
  shardings: object      # NamedShardings of the same tree (None without a mesh)
  info: dict             # {"path", "fingerprint", "model"}: the checkpoints' `base` item


def with_base(train_step, base_params):
  """A jitted LoRA step `(state, batch, frozen)` as `(state, batch)` on these base weights;
  train_step itself when base_params is None (full fine-tuning)."""
  if base_params is None:
    return train_step
  return lambda state, batch: train_step(state, batch, base_params)


def load_base(cfg, mesh=None) -> FrozenBase:
  """Reads train.init_from in model.param_dtype and places it (by logical names on `mesh`)."""
  from sana_jax.convert.checkpoints import load_transformer
  path = cfg.train.get("init_from")
  if not path:
    raise ValueError("a LoRA config trains an adapter on a base model: pass it as "
                     "--config.train.init_from=CHECKPOINT (ours, a diffusers folder, a .pth or a training workdir)")
  source = load_transformer(path, dtype=jnp.dtype(cfg.model.param_dtype))
  check_architecture(source.cfg, cfg.model, path)
  info = {"path": os.path.abspath(path) if "://" not in path else path, "model": cfg.model.name,
          "fingerprint": fingerprint(nnx.state(source, nnx.Param))}
  _, _, frozen = split(add_adapter(source, cfg, cfg.seed))
  _, _, abstract = abstract_split(cfg)
  layout = lambda tree: [(jax.tree_util.keystr(p), tuple(x.shape), jnp.dtype(x.dtype))
                         for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]]
  if layout(frozen) != layout(abstract):
    raise ValueError(f"train.init_from={path!r}: its weights do not have the layout of model config "
                     f"{cfg.model.name!r}")
  if mesh is None:
    return FrozenBase(frozen, None, info)
  shardings = sharding.tree_shardings(abstract, mesh, sharding.axis_rules(cfg.mesh))
  leaves, treedef = jax.tree.flatten(frozen)
  placed = jax.device_put(leaves, jax.tree.leaves(shardings))
  return FrozenBase(jax.tree.unflatten(treedef, placed), jax.tree.unflatten(treedef, jax.tree.leaves(shardings)),
                    info)


def trained_model(cfg, adapter_params, base_info: dict | None, dtype=None):
  """The base of a LoRA run (train.init_from, in `dtype`, default model.param_dtype) with its
  trained adapter on (unfused, float32), for sampling and export: what `load_transformer`
  returns for a LoRA training workdir. Raises ValueError when the base on disk is no longer the
  one the adapter was trained on."""
  from sana_jax.convert.checkpoints import load_transformer
  path = cfg.train.init_from  # the absolute path recorded at training time, where it still exists
  if base_info is not None and os.path.exists(base_info.get("path", "")):
    path = base_info["path"]
  model = load_transformer(path, dtype=jnp.dtype(dtype or cfg.model.param_dtype))
  found = fingerprint(nnx.state(model, nnx.Param))
  if base_info is not None and base_info.get("fingerprint") != found:
    raise ValueError(f"the adapter was trained on the base {base_info.get('path')!r} (fingerprint "
                     f"{base_info.get('fingerprint')}), but {path!r} now has fingerprint {found}")
  add_adapter(model, cfg, cfg.seed)
  nnx.update(model, adapter_params)
  return model

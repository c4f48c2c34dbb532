"""The training state: fp32 master weights, optimiser state, optional EMA, as one pytree.

The NNX model is split once into a static graph definition and its parameters; the jitted step
works on the parameters alone and merges them back into a module to run it (MaxDiffusion style).
The model's `dtype` sets the compute precision (bfloat16 on accelerators) while its `param_dtype`
keeps the master weights, and therefore the optimiser update, in float32.

A LoRA config (training/adapter.py) makes the state the adapter's alone: params, EMA and optimiser
state cover the LoRAParams; the frozen base is loaded by `adapter.load_base` and never enters it.
"""
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from sana_jax.models.transformer import SanaTransformer
from sana_jax.optim import layout
from sana_jax.training import adapter, sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array                 # int32 scalar: optimiser updates done
  params: nnx.State               # master weights (model param_dtype)
  opt_state: Any
  ema_params: nnx.State | None    # None when EMA is off


def build_model(model_cfg, seed: int) -> SanaTransformer:
  """The transformer with logical axis names kept as metadata (arrays are placed by the caller)."""
  with nnx.use_eager_sharding(False):
    return SanaTransformer(model_cfg, rngs=nnx.Rngs(seed))


def model_graphdef(model_cfg) -> nnx.GraphDef:
  """The static structure of the model, computed without allocating any weight."""
  abstract = nnx.eval_shape(lambda: build_model(model_cfg, 0))
  graphdef, _, rest = nnx.split(abstract, nnx.Param, ...)
  if jax.tree.leaves(rest):
    raise ValueError("the model has non-parameter state; the train state only carries nnx.Param")
  return graphdef


def train_graphdef(cfg) -> nnx.GraphDef:
  """The graph the train step merges its params into: the model's, or with cfg.lora the model
  with its adapter (merge(graphdef, adapter, base))."""
  return adapter.abstract_split(cfg)[0] if adapter.enabled(cfg) else model_graphdef(cfg.model)


def _trainable(cfg) -> nnx.State:
  """Freshly initialised trainable params: the model's, or (LoRA) the adapter's only (the base
  built here is never returned, so under jit it is never computed)."""
  model = build_model(cfg.model, cfg.seed)
  if adapter.enabled(cfg):
    return adapter.split(adapter.add_adapter(model, cfg, cfg.seed))[1]
  return nnx.state(model, nnx.Param)


def _initializer(cfg, tx):
  use_ema = cfg.train.ema_decay > 0

  def init():
    params = _trainable(cfg)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      ema_params=jax.tree.map(jnp.copy, params) if use_ema else None)
  return init


def _initializer_from_checkpoint(cfg, tx):
  """Starts from the weights of `cfg.train.init_from` (any format `load_transformer` reads: our
  checkpoint, e.g. one written by `python -m sana_jax.grow`, a diffusers folder or a .pth) with
  fresh optimiser state and step 0. The checkpoint's architecture must equal cfg.model's."""
  from sana_jax.convert.checkpoints import load_transformer
  source = load_transformer(cfg.train.init_from, dtype=jnp.dtype(cfg.model.param_dtype))
  adapter.check_architecture(source.cfg, cfg.model, cfg.train.init_from)
  loaded = nnx.state(source, nnx.Param)
  use_ema = cfg.train.ema_decay > 0

  def init():
    params = jax.tree.map(jnp.asarray, loaded)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      ema_params=jax.tree.map(jnp.copy, params) if use_ema else None)
  return init


def abstract_train_state(cfg, tx: optax.GradientTransformation) -> TrainState:
  """The train state as ShapeDtypeStructs (with logical names): for planning and restoring."""
  return jax.eval_shape(_initializer(cfg, tx))


def state_shardings(abstract_state: TrainState, mesh, rules) -> TrainState:
  """Parameter and EMA shardings from the logical axis names; the optimiser state follows its
  parameters axis by axis (`optim.layout.state_sharding`); the step counter is replicated."""
  params = sharding.tree_shardings(abstract_state.params, mesh, rules)
  return TrainState(
      step=NamedSharding(mesh, P()), params=params,
      opt_state=layout.state_sharding(abstract_state.opt_state, abstract_state.params, params),
      ema_params=None if abstract_state.ema_params is None else params)


def create_train_state(cfg, tx: optax.GradientTransformation, mesh=None):
  """Builds (graphdef, state, state_shardings).

  With a mesh the state is initialised directly into its shardings (no host ever holds the whole
  model); without one it lives on the default device and the shardings are None. With cfg.lora
  the state is the adapter's (train.init_from names the base, for `adapter.load_base`).
  """
  graphdef = train_graphdef(cfg)
  init = _initializer(cfg, tx)
  if cfg.train.get("init_from") and not adapter.enabled(cfg):
    init = _initializer_from_checkpoint(cfg, tx)
  if mesh is None:
    return graphdef, jax.jit(init)(), None
  shardings = state_shardings(jax.eval_shape(init), mesh, sharding.axis_rules(cfg.mesh))
  return graphdef, jax.jit(init, out_shardings=shardings)(), shardings

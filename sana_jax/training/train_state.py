"""The training state: fp32 master weights, optimiser state, optional EMA, as one pytree.

The NNX model is split once into a static graph definition and its parameters; the jitted step
works on the parameters alone and merges them back into a module to run it (MaxDiffusion style).
The model's `dtype` sets the compute precision (bfloat16 on accelerators) while its `param_dtype`
keeps the master weights, and therefore the optimiser update, in float32.
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
from sana_jax.training import sharding


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


def _initializer(cfg, tx):
  use_ema = cfg.train.ema_decay > 0

  def init():
    params = nnx.state(build_model(cfg.model, cfg.seed), nnx.Param)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      ema_params=jax.tree.map(jnp.copy, params) if use_ema else None)
  return init


def _initializer_from_checkpoint(cfg, tx):
  """Starts from the weights of `cfg.train.init_from` (any format `load_transformer` reads: our
  checkpoint, e.g. one written by `python -m sana_jax.grow`, a diffusers folder or a .pth) with
  fresh optimiser state and step 0. The checkpoint's architecture must equal cfg.model's."""
  from sana_jax.convert.checkpoints import load_transformer
  source = load_transformer(cfg.train.init_from, dtype=jnp.dtype(cfg.model.param_dtype))
  keys = ("hidden_size", "depth", "patch_size", "in_channels", "out_channels", "caption_channels",
          "cross_num_heads", "cross_head_dim", "qk_norm", "mlp_ratio")
  diff = {k: (source.cfg[k], cfg.model[k]) for k in keys if source.cfg[k] != cfg.model[k]}
  if diff:
    raise ValueError(f"train.init_from={cfg.train.init_from!r} does not match model config "
                     f"(checkpoint, config): {diff}")
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
  model); without one it lives on the default device and the shardings are None.
  """
  graphdef = model_graphdef(cfg.model)
  init = _initializer(cfg, tx)
  if cfg.train.get("init_from"):
    init = _initializer_from_checkpoint(cfg, tx)
  if mesh is None:
    return graphdef, jax.jit(init)(), None
  shardings = state_shardings(jax.eval_shape(init), mesh, sharding.axis_rules(cfg.mesh))
  return graphdef, jax.jit(init, out_shardings=shardings)(), shardings

"""Optimisers by name from the training config: `build_optimizer(cfg.optimizer)`.

The chain is: clip gradients by global norm -> optimiser direction -> decoupled weight decay (masked)
-> learning-rate schedule (linear warmup, then constant or cosine decay to 0).
"""
import re

import jax
import ml_collections
import optax

from sana_jax.optim import layout
from sana_jax.optim.adamw_8bit import scale_by_adam_8bit
from sana_jax.optim.came import scale_by_came

OPTIMIZERS = ("adamw", "came", "came_8bit", "adamw_8bit")
SCHEDULES = ("constant", "cosine")


def default_optimizer_config() -> ml_collections.ConfigDict:
  """SANA's optimiser: CAME-8bit-style settings (lr 1e-4, 2000 warmup steps, clip 0.1, no decay).

  `None` fields take the named optimiser's own default: eps is a pair (1e-30, 1e-16) for CAME and
  a float 1e-8 for AdamW; min_8bit_size is 16384 (CAME-8bit: quantise matrices with more entries)
  or 4096 (AdamW-8bit: quantise tensors with at least that many); block_size is 2048 output rows
  (CAME-8bit) or 256 entries (AdamW-8bit).
  """
  c = ml_collections.ConfigDict()
  c.name = "came"                     # one of OPTIMIZERS
  c.learning_rate = 1e-4
  c.schedule = "constant"             # "constant" | "cosine" (after the warmup)
  c.warmup_steps = 2000
  c.decay_steps = 0                   # cosine: total steps including warmup (lr reaches 0 there)
  c.weight_decay = 0.0
  c.grad_clip = 0.1                   # global-norm clip; 0 disables it
  c.b1 = 0.9
  c.b2 = 0.999
  c.b3 = 0.9999                       # CAME's instability EMA
  c.eps = ml_collections.FieldReference(None, field_type=object)
  c.min_8bit_size = ml_collections.FieldReference(None, field_type=int)
  c.block_size = ml_collections.FieldReference(None, field_type=int)
  c.layer_axis_pattern = "^blocks/"   # params with a leading stacked-layer axis (layout.py)
  return c


def make_schedule(cfg) -> optax.Schedule:
  """Linear warmup from 0 to cfg.learning_rate over cfg.warmup_steps, then constant or cosine."""
  if cfg.schedule not in SCHEDULES:
    raise ValueError(f"unknown optimizer.schedule {cfg.schedule!r}; expected one of {SCHEDULES}")
  if cfg.warmup_steps < 0:
    raise ValueError(f"optimizer.warmup_steps must be >= 0, got {cfg.warmup_steps}")
  if cfg.schedule == "cosine":
    if cfg.decay_steps <= cfg.warmup_steps:
      raise ValueError(f"cosine schedule needs optimizer.decay_steps > warmup_steps "
                       f"({cfg.decay_steps} <= {cfg.warmup_steps})")
    return optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, cfg.warmup_steps,
                                              cfg.decay_steps, end_value=0.0)
  if cfg.warmup_steps == 0:
    return optax.constant_schedule(cfg.learning_rate)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps),
       optax.constant_schedule(cfg.learning_rate)], [cfg.warmup_steps])


def decay_mask(layer_axis_pattern=None):
  """A callable params -> tree of bools: decay weights, not biases, norm scales or per-layer 1-D
  parameters (a stacked bias [depth, dim] counts as 1-D)."""
  def is_decayed(path, p):
    name = layout.param_name(path)
    leaf = name.rsplit("/", 1)[-1]
    layers = layout.layer_axes(name, p.ndim, layer_axis_pattern)
    is_norm = re.search(r"(^|/)[^/]*norm[^/]*/(scale|weight)$", name) is not None
    return p.ndim - layers >= 2 and leaf != "bias" and not is_norm

  return lambda params: jax.tree_util.tree_map_with_path(is_decayed, params)


def build_optimizer(cfg) -> optax.GradientTransformation:
  """The optimiser named by cfg.name (fields as in `default_optimizer_config`)."""
  if cfg.name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer.name {cfg.name!r}; expected one of {OPTIMIZERS}")
  pattern = cfg.get("layer_axis_pattern")
  came_like = cfg.name.startswith("came")
  eps = cfg.eps
  if eps is None:
    eps = (1e-30, 1e-16) if came_like else 1e-8
  if came_like and (not isinstance(eps, (tuple, list)) or len(eps) != 2):
    raise ValueError(f"optimizer.eps for {cfg.name} is a pair (eps_square_grad, eps_instability), "
                     f"got {eps!r}")
  if not came_like and not isinstance(eps, (int, float)):
    raise ValueError(f"optimizer.eps for {cfg.name} is a float, got {eps!r}")

  if cfg.name == "adamw":
    direction = optax.scale_by_adam(cfg.b1, cfg.b2, eps)
  elif cfg.name == "adamw_8bit":
    direction = scale_by_adam_8bit(
        cfg.b1, cfg.b2, eps,
        min_8bit_size=4096 if cfg.min_8bit_size is None else cfg.min_8bit_size,
        block_size=256 if cfg.block_size is None else cfg.block_size,
        layer_axis_pattern=pattern)
  else:
    quantize = cfg.name == "came_8bit"
    min_size = 16384 if cfg.min_8bit_size is None else cfg.min_8bit_size
    direction = scale_by_came(
        cfg.b1, cfg.b2, cfg.b3, tuple(eps),
        min_8bit_size=min_size if quantize else None,
        block_size=2048 if cfg.block_size is None else cfg.block_size,
        layer_axis_pattern=pattern)

  parts = []
  if cfg.grad_clip and cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip))
  parts.append(direction)
  if cfg.weight_decay:
    parts.append(optax.add_decayed_weights(cfg.weight_decay, decay_mask(pattern)))
  parts.append(optax.scale_by_learning_rate(make_schedule(cfg)))
  return optax.chain(*parts)

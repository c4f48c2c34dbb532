"""Optimisers with small states for optax: CAME, CAME-8bit (NVlabs) and AdamW-8bit (bitsandbytes).

Every optimiser is an `optax.GradientTransformation` whose state is a NamedTuple of parameter-shaped
trees (uint8 codes + float32 block statistics where quantised), so it jits, shards like the
parameters and checkpoints with Orbax. `build_optimizer(cfg.optimizer)` builds one by name.
"""
from sana_jax.optim.adamw_8bit import ScaleByAdam8bitState, adamw_8bit, scale_by_adam_8bit
from sana_jax.optim.came import ScaleByCameState, came, came_8bit, scale_by_came
from sana_jax.optim.layout import state_sharding
from sana_jax.optim.registry import (OPTIMIZERS, build_optimizer, decay_mask, default_optimizer_config,
                                     make_schedule)

__all__ = [
    "OPTIMIZERS", "ScaleByAdam8bitState", "ScaleByCameState", "adamw_8bit", "build_optimizer",
    "came", "came_8bit", "decay_mask", "default_optimizer_config", "make_schedule",
    "scale_by_adam_8bit", "scale_by_came", "state_sharding",
]

"""Capacity planning: compile the train step ahead of time for a mesh and read its memory needs.

Nothing is allocated: the train state and the batch are ShapeDtypeStructs carrying their
shardings, so the step of a 4.8B model lowers and compiles on a laptop with simulated devices.
Parameter, optimiser-state and EMA bytes per device are summed from the shardings; the compiler's
memory analysis gives the temporaries (activations kept for the backward pass, gradients,
workspace). The figures come from whatever backend compiles (the CPU when simulating): fusion and
layouts differ on TPU, so treat them as estimates and keep a margin.

For a LoRA config the parameters and optimiser state are the adapter's; the frozen base (in
model.param_dtype, sharded like the full model's weights) is its own row.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from sana_jax.optim.registry import build_optimizer
from sana_jax.training import adapter, metrics, sharding, step, train_state


@dataclasses.dataclass
class MemoryPlan:
  num_devices: int
  mesh: dict
  params: int            # bytes per device, master weights
  optimizer: int         # bytes per device, optimiser state
  ema: int               # bytes per device, EMA weights
  batch: int             # bytes per device, the step's input batch
  temporaries: int       # bytes per device, compiler temporaries (activations, gradients, ...)
  total: int             # bytes per device the step needs at its peak (state + batch + temporaries)
  train_flops_per_device: float  # model FLOPs of one step per device (3x forward)
  frozen: int = 0        # bytes per device, a LoRA run's frozen base weights

  def table(self) -> str:
    gib = lambda b: f"{b / 2**30:10.2f} GiB" if b >= 2**30 else f"{b / 2**20:10.2f} MiB"
    rows = [("parameters", self.params), ("optimiser state", self.optimizer), ("EMA", self.ema),
            ("batch", self.batch), ("activations + temporaries", self.temporaries),
            ("total", self.total)]
    if self.frozen:
      rows[:1] = [("frozen base weights", self.frozen), ("adapter parameters", self.params)]
    mesh = ", ".join(f"{k}={v}" for k, v in self.mesh.items())
    lines = [f"per-device memory on {self.num_devices} devices ({mesh}):"]
    lines += [f"  {name:<27}{gib(value)}" for name, value in rows]
    lines.append(f"  model TFLOP per device per step: {self.train_flops_per_device / 1e12:.2f}")
    return "\n".join(lines)


def _bytes_per_device(abstract_tree, sharding_tree) -> int:
  total = 0
  for a, s in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(sharding_tree)):
    total += int(np.prod(s.shard_shape(a.shape), dtype=np.int64)) * jnp.dtype(a.dtype).itemsize
  return total


def abstract_batch(cfg, batch_size: int, latent_size: int, text_tokens: int, batch_sharding):
  """The step's global input as ShapeDtypeStructs placed by `batch_sharding`."""
  m = cfg.model
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding)
  return {"latents": spec((batch_size, latent_size, latent_size, m.in_channels), jnp.float32),
          "text": spec((batch_size, text_tokens, m.caption_channels), jnp.float32),
          "text_mask": spec((batch_size, text_tokens), jnp.int32)}


def plan_memory(cfg, mesh, *, batch_size: int, image_size: int, text_tokens: int) -> MemoryPlan:
  """AOT-compiles cfg's train step on `mesh` for a global batch of images of `image_size` px."""
  factor = cfg.codecs.autoencoder_factor
  if image_size % (factor * cfg.model.patch_size):
    raise ValueError(f"image_size {image_size} is not a multiple of the autoencoder factor "
                     f"{factor} x patch size {cfg.model.patch_size}")
  latent = image_size // factor
  rules = sharding.axis_rules(cfg.mesh)
  tx = build_optimizer(cfg.optimizer)
  graphdef = train_state.train_graphdef(cfg)
  abstract = train_state.abstract_train_state(cfg, tx)
  shardings = train_state.state_shardings(abstract, mesh, rules)
  frozen_in, frozen_shardings, args = None, None, ()
  if adapter.enabled(cfg):
    frozen = adapter.abstract_split(cfg)[2]
    frozen_shardings = sharding.tree_shardings(frozen, mesh, rules)
    frozen_in = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), frozen,
                             frozen_shardings)
    args = (frozen_in,)
  batch_sharding = sharding.batch_sharding(mesh, rules, cfg.model)
  batch = abstract_batch(cfg, batch_size, latent, text_tokens, batch_sharding)
  fn = step.make_train_step(graphdef, tx, cfg.train,
                            null_text=jnp.zeros((text_tokens, cfg.model.caption_channels)), seed=0,
                            param_shardings=shardings.params, adapter_dropout=adapter.has_dropout(cfg))
  state_in = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
  compiled = step.jit_train_step(fn, mesh, shardings, batch_sharding, rules,
                                 frozen_shardings).lower(state_in, batch, *args).compile()
  analysis = compiled.memory_analysis()

  params = _bytes_per_device(abstract.params, shardings.params)
  optimizer = _bytes_per_device(abstract.opt_state, shardings.opt_state)
  ema = 0 if abstract.ema_params is None else _bytes_per_device(abstract.ema_params, shardings.ema_params)
  batch_bytes = _bytes_per_device(batch, jax.tree.map(lambda _: batch_sharding, batch))
  temporaries = int(analysis.temp_size_in_bytes)
  arguments = int(analysis.argument_size_in_bytes)
  # Donated state aliases the outputs, so the peak is arguments + temporaries (+ non-aliased outputs).
  outputs = max(int(analysis.output_size_in_bytes) - int(analysis.alias_size_in_bytes), 0)
  flops = metrics.train_flops_per_image(cfg.model, latent, latent, text_tokens) * batch_size
  frozen_bytes = 0 if frozen_in is None else _bytes_per_device(frozen_in, frozen_shardings)
  return MemoryPlan(num_devices=mesh.size, mesh=dict(mesh.shape), params=params, frozen=frozen_bytes,
                    optimizer=optimizer, ema=ema, batch=batch_bytes, temporaries=temporaries,
                    total=arguments + temporaries + outputs,
                    train_flops_per_device=flops / mesh.size)

"""One optimiser update: loss, gradients (optionally accumulated over micro-batches), update, EMA.

`make_train_step` returns a pure function `(state, batch[, frozen]) -> (state, metrics)`;
`jit_train_step` compiles it with explicit input/output shardings and donates the old state, so a
step holds one copy of the weights and optimiser state (big_vision / MaxDiffusion style).

LoRA (training/adapter.py): the state holds only the adapter; the frozen base weights come as the
third argument `frozen`, in their own dtype, neither differentiated, updated nor donated.
"""
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from flax.core import spmd as flax_spmd
from jax.sharding import NamedSharding, PartitionSpec as P

from sana_jax.training import adapter
from sana_jax.training.objective import flow_matching_loss
from sana_jax.training.train_state import TrainState


def split_microbatches(batch, num_micro: int):
  """[B, ...] -> [A, B/A, ...], micro-batch a = rows a, a+A, a+2A, ... so that every data shard
  contributes equally to every micro-batch (no data movement between devices)."""
  def split(x):
    if x.shape[0] % num_micro:
      raise ValueError(f"batch of {x.shape[0]} is not divisible into {num_micro} micro-batches")
    return x.reshape((x.shape[0] // num_micro, num_micro) + x.shape[1:]).swapaxes(0, 1)
  return jax.tree.map(split, batch)


def accumulate_gradients(grad_fn, params, batch, rng, num_micro: int):
  """Mean loss and gradients over `num_micro` micro-batches as one `lax.scan`; fp32 accumulators.

  grad_fn(params, batch, rng) -> ((loss, aux), grads). Micro-batch i uses fold_in(rng, i).
  """
  if num_micro == 1:
    (loss, _), grads = grad_fn(params, batch, rng)
    return loss, grads

  def body(carry, xs):
    index, micro = xs
    (loss, _), grads = grad_fn(params, micro, jax.random.fold_in(rng, index))
    return jax.tree.map(lambda a, b: a + b.astype(jnp.float32), carry, (loss, grads)), None

  zeros = (jnp.zeros((), jnp.float32), jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params))
  (loss, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(num_micro), split_microbatches(batch, num_micro)))
  grads = jax.tree.map(lambda g, p: (g / num_micro).astype(p.dtype), grads, params)
  return loss / num_micro, grads


def make_train_step(graphdef, tx: optax.GradientTransformation, train_cfg, *, null_text, seed: int,
                    learning_rate_fn=None, param_shardings=None, prior_loss_weight=1.0,
                    adapter_dropout=False, null_mask=None, encode_images=None):
  """The update function for `TrainState`s of the model `graphdef`.

  graphdef: nnx.merge(graphdef, state.params) is the model, or, with the `frozen` argument of
    the step, nnx.merge(graphdef, state.params, frozen) (LoRA: adapter + frozen base).
  null_text [L, C]: the null-prompt embedding used for caption dropout; null_mask [L]: its mask,
    swapped in with it (else a dropped caption keeps its own mask; see objective.drop_captions).
  learning_rate_fn(step) -> lr, reported in the metrics when given.
  param_shardings: when given, gradients are constrained to the parameters' shardings, so the
    compiler reduce-scatters them instead of materialising full copies (FSDP).
  prior_loss_weight: weight of the class-image rows of a batch with "prior" (DreamBooth).
  adapter_dropout: the LoRA adapters have dropout: the merged model runs in training mode with a
    dropout key from the step's key.
  encode_images(images [B, H, W, 3]) -> model latents: a batch that holds "images" instead of
    "latents" is encoded inside the step (the built-in autoencoders: the encoder runs in the same
    compiled program as the update instead of on the host beside it; no gradient flows into it).
  """
  def loss_fn(params, batch, rng, frozen):
    # copy: the dropout key is written below, inside the gradient's trace (the frozen state's
    # variables were made by jit's, one level up).
    model = (nnx.merge(graphdef, params) if frozen is None
             else nnx.merge(graphdef, params, frozen, copy=adapter_dropout))
    if adapter_dropout:
      rng, dropout_rng = jax.random.split(rng)
      adapter.train_mode(model, dropout_rng)
    return flow_matching_loss(
        model, batch, rng, null_text=null_text, flow_shift=train_cfg.flow_shift,
        logit_mean=train_cfg.logit_mean, logit_std=train_cfg.logit_std,
        caption_dropout=train_cfg.caption_dropout, null_mask=null_mask,
        prior_loss_weight=prior_loss_weight)

  value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)  # argument 0 only: never the base
  ema_decay = float(train_cfg.ema_decay)

  def train_step(state: TrainState, batch, frozen=None):
    if "images" in batch:
      if encode_images is None:
        raise ValueError("the batch holds images but the train step was made without encode_images")
      batch = dict(batch)
      batch["latents"] = jax.lax.stop_gradient(encode_images(batch.pop("images")))
    rng = jax.random.fold_in(jax.random.key(seed), state.step)
    grad_fn = lambda params, micro, key: value_and_grad(params, micro, key, frozen)
    loss, grads = accumulate_gradients(grad_fn, state.params, batch, rng, train_cfg.grad_accum_steps)
    if param_shardings is not None:
      grads = jax.lax.with_sharding_constraint(grads, param_shardings)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema_params
    if ema is not None:
      ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads)}
    if learning_rate_fn is not None:
      metrics["learning_rate"] = learning_rate_fn(state.step)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema), metrics

  return train_step


def jit_train_step(train_step, mesh=None, state_shardings=None, batch_sharding=None, rules=None,
                   frozen_shardings=None):
  """jax.jit with the state donated; explicit shardings when a mesh is given.

  frozen_shardings: the shardings of the step's third argument (a LoRA run's frozen base; not
  donated). With `rules` the step is traced under the logical-axis rules and the mesh, so the model's
  activation constraints (`models.transformer.constrain`) take effect.
  """
  if mesh is None:
    return jax.jit(train_step, donate_argnums=(0,))
  replicated = NamedSharding(mesh, P())
  if rules is not None:
    inner = train_step

    def train_step(state, batch, *frozen):
      with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), flax_spmd.logical_axis_rules(rules):
        return inner(state, batch, *frozen)

  in_shardings = (state_shardings, batch_sharding)
  if frozen_shardings is not None:
    in_shardings += (frozen_shardings,)
  return jax.jit(train_step, in_shardings=in_shardings,
                 out_shardings=(state_shardings, replicated), donate_argnums=(0,))

"""The train step: gradient accumulation as a scan, EMA, step counter, donation-safe jit."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sana_jax.training import step
from tests.training.helpers import fixed_batch, linear_state, null_text, sgd_momentum, tiny_config


def test_microbatches_interleave_rows_so_every_data_shard_feeds_each_one():
  batch = {"x": np.arange(12).reshape(6, 2)}
  micro = step.split_microbatches(batch, 3)["x"]
  assert micro.shape == (3, 2, 2)
  np.testing.assert_array_equal(micro[0], [[0, 1], [6, 7]])
  np.testing.assert_array_equal(micro[2], [[4, 5], [10, 11]])


def test_accumulated_gradients_are_the_mean_over_microbatches():
  def grad_fn(params, batch, rng):
    def loss(p):
      noise = jax.random.normal(rng, batch["x"].shape)
      return jnp.mean((batch["x"] * p["w"] + noise) ** 2), {}
    return jax.value_and_grad(loss, has_aux=True)(params)

  params = {"w": jnp.array([0.5, -1.0])}
  batch = {"x": jnp.asarray(np.random.default_rng(0).normal(size=(8, 2)), jnp.float32)}
  rng = jax.random.key(3)
  loss, grads = step.accumulate_gradients(grad_fn, params, batch, rng, 4)
  micro = step.split_microbatches(batch, 4)
  parts = [grad_fn(params, jax.tree.map(lambda x: x[i], micro), jax.random.fold_in(rng, i))
           for i in range(4)]
  np.testing.assert_allclose(loss, np.mean([p[0][0] for p in parts]), rtol=1e-6)
  np.testing.assert_allclose(grads["w"], np.mean([p[1]["w"] for p in parts], 0), rtol=1e-6)


def test_uneven_microbatches_are_rejected():
  import pytest
  with pytest.raises(ValueError, match="not divisible into 3 micro-batches"):
    step.split_microbatches({"x": np.zeros((8, 1))}, 3)


def test_step_updates_params_counter_and_ema_and_reports_metrics():
  cfg = tiny_config(ema_decay=0.5, grad_accum_steps=2)
  tx = sgd_momentum()
  graphdef, state = linear_state(cfg, tx, ema=True)
  before = jax.tree.map(np.asarray, state.params)
  fn = step.jit_train_step(step.make_train_step(
      graphdef, tx, cfg.train, null_text=null_text(cfg), seed=0,
      learning_rate_fn=optax.constant_schedule(0.1)))
  state, metrics = fn(state, fixed_batch(cfg))
  assert int(state.step) == 1
  assert set(metrics) == {"loss", "grad_norm", "learning_rate"}
  assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
  after = jax.tree.map(np.asarray, state.params)
  ema = jax.tree.map(np.asarray, state.ema_params)
  jax.tree.map(lambda e, b, a: np.testing.assert_allclose(e, 0.5 * b + 0.5 * a, rtol=1e-6), ema, before, after)
  assert not np.allclose(after["proj"]["kernel"], before["proj"]["kernel"])


def test_same_step_and_batch_give_the_same_update():
  cfg = tiny_config()
  tx = sgd_momentum()
  graphdef, state = linear_state(cfg, tx)
  fn = step.make_train_step(graphdef, tx, cfg.train, null_text=null_text(cfg), seed=0)
  jitted = jax.jit(fn)
  _, m1 = jitted(state, fixed_batch(cfg))
  _, m2 = jitted(state, fixed_batch(cfg))
  assert float(m1["loss"]) == float(m2["loss"])

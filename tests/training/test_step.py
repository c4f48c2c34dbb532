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


def test_images_encoded_inside_the_step_give_the_update_of_latents_encoded_before():
  # The loop sends images and lets the compiled step encode them (loop.image_encoder); that must be
  # the same update as encoding on the host first. A fixed linear "encoder" [B,H,W,3] -> [B,H/2,W/2,4].
  cfg = tiny_config()
  tx = sgd_momentum()
  graphdef, state = linear_state(cfg, tx)
  kernel = np.random.default_rng(5).normal(size=(12, cfg.model.in_channels)).astype(np.float32)

  def encode(images):
    b, h, w, _ = images.shape
    patches = images.reshape(b, h // 2, 2, w // 2, 2, 3).transpose(0, 1, 3, 2, 4, 5).reshape(b, h // 2, w // 2, 12)
    return patches @ kernel

  batch = fixed_batch(cfg)
  images = np.random.default_rng(6).uniform(-1, 1, size=(8, 16, 16, 3)).astype(np.float32)
  with_images = {k: v for k, v in batch.items() if k != "latents"} | {"images": images}
  with_latents = batch | {"latents": np.asarray(encode(jnp.asarray(images)))}
  fn = jax.jit(step.make_train_step(graphdef, tx, cfg.train, null_text=null_text(cfg), seed=0,
                                    encode_images=encode))
  s1, m1 = fn(state, with_images)
  s2, m2 = fn(state, with_latents)
  np.testing.assert_allclose(float(m1["loss"]), float(m2["loss"]), rtol=1e-5)  # measured: bit-equal here (CPU)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), s1.params, s2.params)
  plain = step.make_train_step(graphdef, tx, cfg.train, null_text=null_text(cfg), seed=0)
  import pytest
  with pytest.raises(ValueError, match="batch holds images but the train step was made without encode_images"):
    plain(state, with_images)

"""The flow-matching objective against a direct numpy transcription of docs/architecture.md (objective)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sana_jax.training import objective


def _np_sigmas(normal_draws, flow_shift, mean, std):
  u = 1.0 / (1.0 + np.exp(-(mean + std * normal_draws)))
  index = np.floor(u * 1000).astype(int)
  sigma = np.linspace(0.0, 0.999, 1000)[index]
  return flow_shift * sigma / (1.0 + (flow_shift - 1.0) * sigma)


def test_shift_sigma_keeps_endpoints_and_matches_formula():
  s = np.linspace(0.0, 1.0, 11)
  got = np.asarray(objective.shift_sigma(jnp.asarray(s), 3.0))
  np.testing.assert_allclose(got, 3.0 * s / (1.0 + 2.0 * s), rtol=1e-6)
  assert got[0] == 0.0 and got[-1] == pytest.approx(1.0)


@pytest.mark.parametrize("flow_shift,mean,std", [(3.0, 0.0, 1.0), (1.0, 0.5, 0.7)])
def test_sample_sigmas_is_shifted_logit_normal_on_training_grid(flow_shift, mean, std):
  rng = jax.random.key(7)
  got = objective.sample_sigmas(rng, 4096, flow_shift=flow_shift, logit_mean=mean, logit_std=std)
  draws = np.asarray(jax.random.normal(rng, (4096,), jnp.float32), np.float64)
  # float32 vs float64 may floor differently when u * 1000 sits on an integer: skip those draws.
  u1000 = 1000 / (1 + np.exp(-(mean + std * draws)))
  clear = np.abs(u1000 - np.round(u1000)) > 1e-3
  np.testing.assert_allclose(np.asarray(got)[clear], _np_sigmas(draws, flow_shift, mean, std)[clear],
                             atol=2e-6)
  assert clear.mean() > 0.99


def test_noisy_latents_interpolate_between_data_and_noise():
  x0, eps = np.random.default_rng(0).normal(size=(2, 2, 3, 2, 4))
  sigma = np.array([0.25, 0.9])
  got = objective.noisy_latents(jnp.asarray(x0, jnp.float32), jnp.asarray(eps, jnp.float32),
                                jnp.asarray(sigma, jnp.float32))
  want = (1 - sigma[:, None, None, None]) * x0 + sigma[:, None, None, None] * eps
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def test_caption_dropout_swaps_whole_captions_for_the_null_prompt():
  text = jnp.ones((512, 3, 2))
  null = jnp.full((3, 2), -5.0)
  out, mask = objective.drop_captions(jax.random.key(1), text, null, 0.1)
  out = np.asarray(out)
  dropped = (out == -5.0).all(axis=(1, 2))
  kept = (out == 1.0).all(axis=(1, 2))
  assert (dropped | kept).all()
  assert 0.05 < dropped.mean() < 0.15
  assert mask is None


def test_caption_dropout_with_the_null_mask_swaps_the_mask_of_exactly_the_dropped_rows():
  text, mask = jnp.ones((512, 3, 2)), jnp.ones((512, 3), jnp.int32)
  null, null_mask = jnp.full((3, 2), -5.0), jnp.array([1, 0, 0], jnp.int32)
  out, out_mask = objective.drop_captions(jax.random.key(1), text, null, 0.1, mask, null_mask)
  dropped = np.asarray((out == -5.0).all(axis=(1, 2)))
  np.testing.assert_array_equal(np.asarray(out_mask)[dropped], np.tile([1, 0, 0], (dropped.sum(), 1)))
  np.testing.assert_array_equal(np.asarray(out_mask)[~dropped], 1)
  assert 0.05 < dropped.mean() < 0.15
  with pytest.raises(ValueError, match="null-prompt mask"):
    objective.drop_captions(jax.random.key(1), text, null, 0.1, mask, jnp.ones((4,), jnp.int32))


def test_caption_dropout_rejects_a_null_prompt_of_the_wrong_shape():
  with pytest.raises(ValueError, match="null-prompt embedding"):
    objective.drop_captions(jax.random.key(0), jnp.ones((2, 3, 4)), jnp.ones((5, 4)), 0.1)


def test_loss_is_unweighted_mse_of_velocity_with_caption_dropout_and_mask_unchanged():
  rng_np = np.random.default_rng(3)
  b, h, w, c, l, ct = 8, 4, 4, 3, 5, 6
  batch = {"latents": rng_np.normal(size=(b, h, w, c)).astype(np.float32),
           "text": rng_np.normal(size=(b, l, ct)).astype(np.float32),
           "text_mask": (rng_np.random((b, l)) > 0.3).astype(np.int32)}
  null = rng_np.normal(size=(l, ct)).astype(np.float32)
  weight = rng_np.normal(size=(c + ct + 2, c)).astype(np.float32)
  seen = {}

  def model(x_t, timesteps, text, mask):  # a linear stand-in that depends on every input
    seen["mask"] = mask
    feats = jnp.concatenate([
        x_t, jnp.broadcast_to(text.mean(1)[:, None, None], x_t.shape[:3] + (ct,)),
        jnp.broadcast_to(timesteps[:, None, None, None] / 1000, x_t.shape[:3] + (1,)),
        jnp.broadcast_to(mask.mean(1)[:, None, None, None], x_t.shape[:3] + (1,))], -1)
    return feats @ weight

  rng = jax.random.key(11)
  loss, aux = objective.flow_matching_loss(
      model, jax.tree.map(jnp.asarray, batch), rng, null_text=jnp.asarray(null), flow_shift=3.0,
      caption_dropout=0.5)

  r_sigma, r_noise, r_drop = jax.random.split(rng, 3)
  sigma = _np_sigmas(np.asarray(jax.random.normal(r_sigma, (b,)), np.float64), 3.0, 0.0, 1.0)
  eps = np.asarray(jax.random.normal(r_noise, (b, h, w, c)), np.float64)
  drop = np.asarray(jax.random.uniform(r_drop, (b,))) < 0.5
  text = np.where(drop[:, None, None], null[None], batch["text"])
  x0 = batch["latents"].astype(np.float64)
  x_t = (1 - sigma[:, None, None, None]) * x0 + sigma[:, None, None, None] * eps
  feats = np.concatenate([
      x_t, np.broadcast_to(text.mean(1)[:, None, None], (b, h, w, ct)),
      np.broadcast_to(sigma[:, None, None, None], (b, h, w, 1)),
      np.broadcast_to(batch["text_mask"].mean(1)[:, None, None, None], (b, h, w, 1))], -1)
  want = np.mean((feats @ weight - (eps - x0)) ** 2)
  assert 0 < drop.sum() < b
  np.testing.assert_array_equal(np.asarray(seen["mask"]), batch["text_mask"])
  np.testing.assert_allclose(np.asarray(aux["sigma"]), sigma, atol=2e-6)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)

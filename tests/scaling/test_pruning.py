"""Block importance and pruning: identity blocks score 0 and go first; pruning is slicing the stack."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sana_jax.scaling.importance import block_importance, load_importance
from sana_jax.scaling.pruning import most_important_blocks, prune
from sana_jax.scaling.stack import block_params
from tests.scaling.builders import forward, inputs, tiny_model

TIMESTEPS = [200.0, 800.0]


@pytest.fixture(scope="module")
def model_with_identity_block():
  """Depth 4, block 1 an identity (its three output maps zeroed)."""
  model = tiny_model(depth=4, seed=3)
  for module in (model.blocks.attn.to_out, model.blocks.cross_attn.to_out):
    module.kernel[...] = module.kernel[...].at[1].set(0.0)
    module.bias[...] = module.bias[...].at[1].set(0.0)
  model.blocks.ffn.conv_point.kernel[...] = model.blocks.ffn.conv_point.kernel[...].at[1].set(0.0)
  return model


@pytest.fixture(scope="module")
def calibration():
  latents, _, text, mask = inputs(batch=3, seed=5)
  return latents, text, mask


@pytest.fixture(scope="module")
def importance(model_with_identity_block, calibration):
  latents, text, mask = calibration
  return block_importance(model_with_identity_block, text, mask, latents, TIMESTEPS, seed=0, batch_size=2)


def test_an_identity_block_scores_zero_and_is_pruned_first(model_with_identity_block, importance):
  assert importance.scores[1] == pytest.approx(0.0, abs=1e-6)
  assert np.all(np.delete(importance.scores, 1) > 1e-3)
  assert importance.order()[0] == 1
  pruned = prune(model_with_identity_block, depth=3, importance=importance.scores)
  kept = block_params(pruned)[("scale_shift_table",)]
  np.testing.assert_array_equal(kept, block_params(model_with_identity_block)[("scale_shift_table",)][np.array([0, 2, 3])])


def _block_cos_reference(model, latents, timesteps, text, mask):
  """Runs the blocks one at a time (each merged from its own slice of the stack): [depth, B]."""
  x, grid = model.embed_latents(latents)
  _, t0, text, bias = model.embed_conditions(timesteps, text, mask)
  graphdef, state = nnx.split(model.blocks)
  out = []
  for i in range(model.cfg.depth):
    block = nnx.merge(graphdef, jax_tree_index(state, i))
    y = block(x, t0, text, bias, *grid)
    cos = jnp.sum(x * y, -1) / (jnp.linalg.norm(x, axis=-1) * jnp.linalg.norm(y, axis=-1))
    out.append(np.asarray(cos.mean(-1)))
    x = y
  return np.stack(out)


def jax_tree_index(state, i):
  return jax.tree.map(lambda a: a[i], state)


def test_block_importance_is_one_minus_mean_cosine_over_prompts_and_timesteps(model_with_identity_block,
                                                                              calibration, importance):
  latents, text, mask = calibration
  noise = np.asarray(jax.random.normal(jax.random.key(0), (len(TIMESTEPS), *latents.shape)))
  per_t = []
  for i, t in enumerate(TIMESTEPS):
    x_t = (1 - t / 1000) * latents + t / 1000 * noise[i]
    cos = _block_cos_reference(model_with_identity_block, jnp.asarray(x_t), jnp.full((3,), t), jnp.asarray(text),
                               jnp.asarray(mask))
    per_t.append(1.0 - cos.mean(axis=1))
  np.testing.assert_allclose(importance.per_timestep, np.stack(per_t), atol=1e-5)
  np.testing.assert_allclose(importance.scores, np.mean(per_t, axis=0), atol=1e-5)


def test_trajectory_mode_starts_from_the_noise_noised_latents_see_at_t1000(model_with_identity_block, calibration):
  latents, text, mask = calibration
  trajectory = block_importance(model_with_identity_block, text, mask, (4, 4), [1000.0], seed=4, batch_size=2)
  noised = block_importance(model_with_identity_block, text, mask, latents, [1000.0], seed=4, batch_size=2)
  assert trajectory.mode == "trajectory" and noised.mode == "noised_latents"
  np.testing.assert_allclose(trajectory.scores, noised.scores, atol=1e-6)


def test_importance_report_is_saved_as_json_and_bar_plot(importance, tmp_path):
  importance.save(tmp_path / "bi.json", tmp_path / "bi.png")
  report = json.loads((tmp_path / "bi.json").read_text())
  assert report["least_important_first"][0] == 1 and len(report["per_timestep"]) == len(TIMESTEPS)
  np.testing.assert_allclose(load_importance(tmp_path / "bi.json"), importance.scores)
  assert (tmp_path / "bi.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_pruned_model_equals_a_model_built_from_only_the_kept_blocks(model_with_identity_block):
  kept = [0, 3]
  pruned = prune(model_with_identity_block, blocks=[3, 0])
  # The same weights placed into a fresh depth-2 model by hand.
  built = tiny_model(depth=2, seed=9)
  source = nnx.state(model_with_identity_block, nnx.Param)
  target = nnx.state(built, nnx.Param)
  flat = [(path, var.replace(source_value(source, path, kept))) for path, var in nnx.to_flat_state(target)]
  nnx.update(built, nnx.from_flat_state(flat))
  batch = tuple(jnp.asarray(a) for a in inputs(seed=2))
  np.testing.assert_array_equal(forward(pruned, *batch), forward(built, *batch))


def source_value(state, path, kept):
  value = dict(nnx.to_flat_state(state))[path][...]
  return value[np.asarray(kept)] if path[0] == "blocks" else value


def test_most_important_blocks_keeps_layer_order():
  assert most_important_blocks([0.5, 0.1, 0.9, 0.3], 2) == [0, 2]


@pytest.mark.parametrize("kwargs, message", [
    (dict(depth=2), "needs importance"),
    (dict(blocks=[0, 0]), "distinct indices"),
    (dict(blocks=[4]), "distinct indices in 0..3"),
    (dict(depth=2, blocks=[0]), "exactly one"),
    (dict(depth=2, importance=[0.1, 0.2]), "importance has 2 scores"),
])
def test_bad_pruning_requests_name_the_problem(model_with_identity_block, kwargs, message):
  with pytest.raises(ValueError, match=message):
    prune(model_with_identity_block, **kwargs)


def test_block_importance_rejects_mismatched_calibration(model_with_identity_block, calibration):
  latents, text, mask = calibration
  with pytest.raises(ValueError, match="latents must be"):
    block_importance(model_with_identity_block, text, mask, latents[:2], TIMESTEPS)
  with pytest.raises(ValueError, match="timesteps must be"):
    block_importance(model_with_identity_block, text, mask, latents, [1200.0])

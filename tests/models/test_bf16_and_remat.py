"""bf16 transformer against diffusers run in bf16; remat policies and an unrolled layer scan against
the plain scan (gradients)."""
import copy

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
from flax import nnx

import sana_jax
from sana_jax.convert.transformer import model_from_state
from sana_jax.models.transformer import REMAT_POLICIES
from tests.models.reference import reference_forward


def _inputs():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 6, 10, 4), dtype=np.float32)
  t = np.array([3.0, 700.0], np.float32)
  text = rng.standard_normal((2, 7, 24), dtype=np.float32)
  mask = np.ones((2, 7), np.int64)
  mask[0, 4:] = 0
  return x, t, text, mask


def test_bf16_transformer_matches_diffusers_in_bf16(reference):
  ref, folder = reference
  x, t, text, mask = _inputs()
  fp32 = reference_forward(ref, x, t, text, mask)
  with torch.no_grad():
    theirs = copy.deepcopy(ref).to(torch.bfloat16)(
        torch.from_numpy(x.transpose(0, 3, 1, 2)).bfloat16(), encoder_hidden_states=torch.from_numpy(text).bfloat16(),
        timestep=torch.from_numpy(t), encoder_attention_mask=torch.from_numpy(mask), return_dict=False)[0]
  theirs = theirs.float().numpy().transpose(0, 2, 3, 1)
  model = sana_jax.load_transformer(folder, dtype=jnp.bfloat16)
  ours = np.asarray(model(jnp.asarray(x, jnp.bfloat16), t, jnp.asarray(text, jnp.bfloat16), mask), np.float32)
  # Measured: |ours - diffusers bf16| <= 0.029 and |diffusers bf16 - fp32| <= 0.026 at output scale 1.5.
  assert float(np.abs(fp32).max()) > 1.0
  assert float(np.abs(ours - theirs).max()) <= 0.06
  assert float(np.abs(ours - fp32).max()) <= 2 * float(np.abs(theirs - fp32).max()) + 0.01


def _grads(model, params, policy, scan_unroll=1):
  cfg = ml_collections.ConfigDict(model.cfg.to_dict())
  cfg.remat_policy = policy
  cfg.scan_unroll = scan_unroll
  graphdef, _ = nnx.split(model_from_state(cfg, params), nnx.Param)
  x, t, text, mask = _inputs()

  def loss(p):
    return jnp.mean(jnp.square(nnx.merge(graphdef, p)(x, t, text, mask) - 0.5))
  return jax.jit(jax.grad(loss))(params)


@pytest.fixture(scope="module")
def without_remat(reference):
  model = sana_jax.load_transformer(reference[1])
  params = nnx.state(model, nnx.Param)
  return model, params, _grads(model, params, "none")


@pytest.mark.parametrize("policy", [p for p in REMAT_POLICIES if p != "none"])
def test_remat_policies_give_the_same_gradients_as_none(without_remat, policy):
  model, params, expected = without_remat
  got = _grads(model, params, policy)
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(expected))
  assert scale > 1e-3
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
    # Recomputed activations are the same float32 ops; measured max difference 3.7e-8 x scale (0.4).
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6 * scale, rtol=0)


def test_an_unrolled_layer_scan_gives_the_same_gradients(without_remat):
  model, params, expected = without_remat
  assert model.depth >= 2
  got = _grads(model, params, "none", scan_unroll=model.depth)
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(expected))
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
    # The same float32 ops fused differently; measured max difference below 1e-7 x scale.
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6 * scale, rtol=0)

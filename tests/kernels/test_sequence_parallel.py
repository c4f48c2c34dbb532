"""Token-sharded linear attention (shard_map + psum of the state) equals the unsharded version."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from sana_jax import kernels
from sana_jax.kernels.reference import relu_linear_attention_reference


@pytest.fixture(scope="module")
def mesh():
  # 8 simulated CPU devices (tests/conftest.py): batch over 2, tokens over 4.
  return Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "seq"))


def _loss_and_grads(attn, q, k, v):
  w = jax.random.normal(jax.random.PRNGKey(9), q.shape)
  loss = lambda q, k, v: jnp.sum(attn(q, k, v) * w)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_token_sharded_attention_equals_unsharded_values_and_grads(mesh, impl):
  q, k, v = (jax.random.normal(key, (2, 32, 3, 8))
             for key in jax.random.split(jax.random.PRNGKey(0), 3))
  sharded = lambda q, k, v: kernels.linear_attention(
      q, k, v, eps=1e-6, impl=impl, mesh=mesh, seq_axis="seq", batch_axis="data")
  unsharded = lambda q, k, v: relu_linear_attention_reference(q, k, v, 1e-6)
  out = jax.jit(sharded)(q, k, v)
  np.testing.assert_allclose(out, unsharded(q, k, v), rtol=1e-5, atol=1e-6)
  loss, grads = _loss_and_grads(sharded, q, k, v)
  ref_loss, ref_grads = _loss_and_grads(unsharded, q, k, v)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  for g, rg in zip(grads, ref_grads):
    np.testing.assert_allclose(g, rg, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(rg))))


def test_tokens_that_do_not_split_evenly_are_refused(mesh):
  q = jnp.ones((2, 30, 3, 8))
  with pytest.raises(ValueError, match="do not split evenly"):
    kernels.linear_attention(q, q, q, mesh=mesh, seq_axis="seq")

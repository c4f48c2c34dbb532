"""The Mix-FFN's 3x3 depthwise conv (nine shifted multiply-adds, hand-written gradient) equals
torch's grouped conv2d, values and gradients (input, kernel, bias)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from sana_jax.models.transformer import DepthwiseConv3x3


@pytest.mark.parametrize("shape", [(2, 8, 8, 6), (3, 5, 7, 4)])
def test_depthwise_conv_and_its_gradients_equal_torch_grouped_conv(shape):
  b, h, w, c = shape
  conv = DepthwiseConv3x3(c, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  conv.bias[...] = jnp.asarray(rng.standard_normal(c), jnp.float32)
  x = rng.standard_normal(shape).astype(np.float32)
  g = rng.standard_normal(shape).astype(np.float32)  # the output's cotangent

  graphdef, params = nnx.split(conv)
  out, vjp = jax.vjp(lambda x, params: nnx.merge(graphdef, params)(x), jnp.asarray(x), params)
  dx, d_params = vjp(jnp.asarray(g))
  dk, db = d_params["kernel"][...], d_params["bias"][...]

  tx = torch.tensor(x).permute(0, 3, 1, 2).requires_grad_()
  tk = torch.tensor(np.asarray(conv.kernel[...])).permute(3, 2, 0, 1).contiguous().requires_grad_()  # [C, 1, 3, 3]
  tb = torch.tensor(np.asarray(conv.bias[...])).requires_grad_()
  ref = torch.nn.functional.conv2d(tx, tk, tb, padding=1, groups=c)
  ref.backward(torch.tensor(g).permute(0, 3, 1, 2))
  # float32 sums of up to b*h*w products: measured error ~1e-6
  np.testing.assert_allclose(np.asarray(out), ref.detach().permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(dx), tx.grad.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(dk), tk.grad.permute(2, 3, 1, 0).numpy(), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(db), tb.grad.numpy(), rtol=1e-5, atol=1e-5)

"""CAME and CAME-8bit against the PyTorch references (came_pytorch; NVlabs's rules for 1x1 convs).

Layout: a JAX Linear kernel is [in, out], torch's weight is [out, in] (its transpose); a JAX 1x1
conv kernel [1, 1, in, out] is factored like the [out, in] matrix (NVlabs's CAMEWrapper squeezes
torch's [out, in, 1, 1] and factors it as 2-D, i.e. runs came_pytorch on the squeezed matrix).
A depthwise kernel is not factored: came_pytorch's unfactored path is elementwise, so it is
compared on the flattened kernel.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from came_pytorch import CAME

from sana_jax.optim import came, came_8bit, quantization

LR, WD, STEPS = 1e-2, 0.05, 20
quantize = jax.jit(quantization.quantize_minmax, static_argnums=1)
dequantize = jax.jit(quantization.dequantize_minmax, static_argnums=3)


def _to_torch(name, x):
  """JAX layout -> the tensor a torch module would hold for it."""
  if name in ("linear", "conv1x1"):
    return x.reshape(x.shape[-2:]).T           # [in, out] -> [out, in]
  return x.reshape(-1)                          # vectors / depthwise: elementwise path


def _from_torch(name, t, shape):
  if name in ("linear", "conv1x1"):
    return t.T.reshape(shape)
  return t.reshape(shape)


SHAPES = {"bias": (24,), "linear": (12, 20), "conv1x1": (1, 1, 16, 8), "depthwise": (3, 3, 1, 8)}


def test_came_matches_came_pytorch_step_by_step():
  rng = np.random.default_rng(0)
  params = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
  torch_params = {k: torch.nn.Parameter(torch.tensor(_to_torch(k, v).copy())) for k, v in params.items()}
  reference = CAME(list(torch_params.values()), lr=LR, weight_decay=WD)
  tx = came(LR, weight_decay=WD)
  state, p = tx.init(params), jax.tree.map(jnp.asarray, params)
  update = jax.jit(tx.update)
  for _ in range(STEPS):
    grads = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    for k, t in torch_params.items():
      t.grad = torch.tensor(_to_torch(k, grads[k]).copy())
    reference.step()
    updates, state = update(grads, state, p)
    p = optax.apply_updates(p, updates)
    for k, t in torch_params.items():
      want = _from_torch(k, t.detach().numpy(), SHAPES[k])
      np.testing.assert_allclose(p[k], want, rtol=1e-5, atol=1e-6, err_msg=k)
  # The factored statistics equal torch's after transposition: row = per output, col = per input.
  came_state = state[0]
  torch_state = reference.state[torch_params["linear"]]
  np.testing.assert_allclose(came_state.nu_row["linear"][0], torch_state["exp_avg_sq_row"], rtol=1e-5)
  np.testing.assert_allclose(came_state.nu_col["linear"][:, 0], torch_state["exp_avg_sq_col"], rtol=1e-5)
  np.testing.assert_allclose(came_state.res_row["linear"][0], torch_state["exp_avg_res_row"], rtol=1e-5)
  np.testing.assert_allclose(came_state.mu["linear"], torch_state["exp_avg"].numpy().T, rtol=1e-5, atol=1e-7)


def test_stacked_layers_equal_one_came_per_layer():
  """With layer_axis_pattern, [depth, in, out] and [depth, dim] params behave as `depth` separate
  torch params (per-layer factoring and per-layer RMS clipping)."""
  depth, rng = 3, np.random.default_rng(1)
  shapes = {"blocks/kernel": (depth, 10, 6), "blocks/bias": (depth, 6)}
  params = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
  torch_layers = {k: [torch.nn.Parameter(torch.tensor(v[i].T.copy())) for i in range(depth)]
                  for k, v in params.items()}
  reference = CAME([t for ts in torch_layers.values() for t in ts], lr=LR)
  tx = came(LR, layer_axis_pattern="^blocks/")
  state, p = tx.init(params), jax.tree.map(jnp.asarray, params)
  update = jax.jit(tx.update)
  for _ in range(10):
    grads = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    for k, ts in torch_layers.items():
      for i, t in enumerate(ts):
        t.grad = torch.tensor(grads[k][i].T.copy())
    reference.step()
    updates, state = update(grads, state, p)
    p = optax.apply_updates(p, updates)
  for k, ts in torch_layers.items():
    want = np.stack([t.detach().numpy().T for t in ts])
    np.testing.assert_allclose(p[k], want, rtol=1e-5, atol=1e-6, err_msg=k)


def test_came_8bit_first_moment_within_quantisation_bound_of_fp32_came():
  """Given the same gradients, both see the same normalised update U_t (the second-moment
  statistics depend on gradients only), so with q_t the rounding of step t (|q_t| <= scale_t / 2)
  the stored first moments differ by e_t = b1 (e_{t-1} + q_{t-1}) + q_t: |e_t| <= sum b1^k scale/2."""
  rng, b1, block = np.random.default_rng(2), 0.9, 64
  params = {"w": rng.standard_normal((48, 256)).astype(np.float32)}
  fp32, q8 = came(LR), came_8bit(LR, min_8bit_size=1000, block_size=block)
  s32, s8 = fp32.init(params), q8.init(params)
  assert s8[0].mu["w"].dtype == jnp.uint8 and s8[0].mu_scale["w"].shape == (1, 256 // block)
  up32, up8 = jax.jit(fp32.update), jax.jit(q8.update)
  bound = np.zeros((1, 256), np.float32)
  for _ in range(STEPS):
    grads = {"w": rng.standard_normal((48, 256)).astype(np.float32)}
    _, s32 = up32(grads, s32, params)
    _, s8 = up8(grads, s8, params)
    st = s8[0]
    scale = np.repeat(np.asarray(st.mu_scale["w"]), block, axis=-1)
    bound = b1 * bound + scale / 2
    m8 = dequantize(st.mu["w"], st.mu_scale["w"], st.mu_min["w"], block)
    err = np.abs(np.asarray(m8) - np.asarray(s32[0].mu["w"]))
    slack = 1e-6 * np.abs(np.asarray(s32[0].mu["w"])).max()       # float32 rounding
    assert np.all(err <= bound + slack), float((err - bound).max())
  assert float(err.max()) > 0          # quantisation did perturb the moment


def test_minmax_blocks_of_constant_or_zero_values_dequantise_exactly():
  x = np.zeros((4, 12), np.float32)
  x[:, 4:8] = 0.25                                          # constant block
  x[:, 8:12] = np.linspace(-1, 1, 16).reshape(4, 4)          # ordinary block
  codes, scale, minimum = quantize(jnp.asarray(x), 4)
  assert scale.shape == (1, 3) and float(scale[0, 0]) == 0.0 and float(scale[0, 1]) == 0.0
  back = np.asarray(dequantize(codes, scale, minimum, 4))
  assert np.all(np.isfinite(back))
  np.testing.assert_array_equal(back[:, :8], x[:, :8])
  np.testing.assert_allclose(back[:, 8:], x[:, 8:], atol=float(scale[0, 2]) / 2 + 1e-7)


def test_came_8bit_with_all_zero_gradient_blocks_stays_finite():
  """A block that never receives gradient keeps a zero first moment (scale 0) without NaNs."""
  rng = np.random.default_rng(3)
  params = {"w": rng.standard_normal((32, 256)).astype(np.float32)}
  tx = came_8bit(LR, min_8bit_size=1000, block_size=128)
  state, update = tx.init(params), jax.jit(tx.update)
  for _ in range(3):
    g = rng.standard_normal((32, 256)).astype(np.float32)
    g[:, :128] = 0.0
    updates, state = update({"w": g}, state, params)
    assert np.all(np.isfinite(updates["w"]))
  st = state[0]
  assert float(st.mu_scale["w"][0, 0]) == 0.0 and float(st.mu_min["w"][0, 0]) == 0.0
  np.testing.assert_array_equal(np.asarray(updates["w"])[:, :128], 0.0)


def test_came_rejects_bad_hyperparameters():
  with pytest.raises(ValueError, match="b2"):
    came(1e-3, b2=1.5)
  with pytest.raises(ValueError, match="eps"):
    came(1e-3, eps=(1e-30,))

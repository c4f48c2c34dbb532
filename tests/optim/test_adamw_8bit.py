"""AdamW-8bit against bitsandbytes.optim.AdamW8bit on the CPU.

Why a tolerance: we round each normalised state value to its nearest map entry (bitsandbytes' CUDA
kernel does the same); bitsandbytes' CPU kernel instead looks the value up in a 65536-bin table over
[-1, 1], i.e. it takes the map entry nearest to a point up to h = 1/65535 away. Both codes c, c'
then lie within |x - c_nearest| + 2h of x, so |c' - c| <= 2 |x - c| + 2h <= (the larger map step
next to c) + 2h: their values differ by at most one local step of the map plus 2h, times the
block's absmax. Everything else (update order, bias correction, absmax,
block layout, float32 small tensors) is compared tightly.
"""
import bitsandbytes as bnb
import bitsandbytes.functional as F
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

from sana_jax.optim import adamw_8bit, quantization

LR, WD, STEPS = 1e-2, 0.1, 20
quantize = jax.jit(quantization.quantize_dynamic, static_argnums=(1, 2))
dequantize = jax.jit(quantization.dequantize_dynamic, static_argnums=(2, 3))
H = 1.0 / 65535
# [in, out] with out a multiple of 256 (blocks along the last axis = bitsandbytes' flat blocks),
# a long vector, and a small tensor that stays float32.
SHAPES = {"kernel": (24, 512), "vector": (5000,), "small": (40, 50)}


def _lut_bound(codes, absmax, code):
  """Per entry: (the larger map step next to our code + 2h) * absmax."""
  code = np.asarray(code, np.float64)
  gaps = np.diff(code)
  step = np.maximum(np.concatenate([[0.0], gaps]), np.concatenate([gaps, [0.0]]))
  am = np.repeat(np.asarray(absmax), 256, axis=-1)[..., :codes.shape[-1]]
  return (step[np.asarray(codes).astype(int)] + 2 * H) * am


def test_dynamic_maps_equal_bitsandbytes():
  for signed in (True, False):
    np.testing.assert_array_equal(quantization.dynamic_map(signed),
                                  F.create_dynamic_map(signed=signed).numpy())


def test_quantize_dynamic_agrees_with_bitsandbytes_within_one_lookup_step():
  x = torch.randn(8, 1024) * torch.logspace(-4, 0, 1024)
  code = F.create_dynamic_map(signed=True)
  ref_codes, ref_absmax = F.quantize_blockwise(x, code=code, blocksize=256)
  codes, absmax = quantize(jnp.asarray(x.numpy()), True, 256)
  np.testing.assert_array_equal(np.asarray(absmax).ravel(), ref_absmax.absmax.numpy())
  ours = np.asarray(dequantize(codes, absmax, True, 256))
  theirs = F.dequantize_blockwise(ref_codes, ref_absmax).numpy()
  bound = _lut_bound(codes, absmax, code.numpy())
  assert np.all(np.abs(ours - theirs) <= bound + 1e-7)
  assert np.any(ours != theirs)          # the two roundings do differ somewhere
  # Nearest rounding: never further from x than bitsandbytes' choice.
  assert np.all(np.abs(ours - x.numpy()) <= np.abs(theirs - x.numpy()) + 1e-7)


def test_adamw_8bit_matches_bitsandbytes_step_by_step():
  """20 steps; before each, our state is loaded with bitsandbytes' codes and absmax, so every step
  starts from the same quantised state. The parameter update uses the dequantised float32 moments
  and must agree to float32 rounding; the requantised moments within the lookup-table bound."""
  rng = np.random.default_rng(0)
  params = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
  torch_params = {k: torch.nn.Parameter(torch.tensor(v.copy())) for k, v in params.items()}
  reference = bnb.optim.AdamW8bit(list(torch_params.values()), lr=LR, weight_decay=WD)
  tx = adamw_8bit(LR, weight_decay=WD)
  state = tx.init(params)
  update = jax.jit(tx.update)
  for step in range(STEPS):
    grads = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    p = {k: jnp.asarray(t.detach().numpy()) for k, t in torch_params.items()}
    if step:
      adam = state[0]
      fields = {f: dict(getattr(adam, f)) for f in ("mu", "mu_absmax", "nu", "nu_absmax")}
      for k in ("kernel", "vector"):
        st = reference.state[torch_params[k]]
        fields["mu"][k] = jnp.asarray(st["state1"].numpy())
        fields["nu"][k] = jnp.asarray(st["state2"].numpy())
        fields["mu_absmax"][k] = jnp.asarray(st["absmax1"].numpy().reshape(adam.mu_absmax[k].shape))
        fields["nu_absmax"][k] = jnp.asarray(st["absmax2"].numpy().reshape(adam.nu_absmax[k].shape))
      state = (adam._replace(**fields),) + tuple(state[1:])
    for k, t in torch_params.items():
      t.grad = torch.tensor(grads[k].copy())
    reference.step()
    updates, state = update(grads, state, p)
    new_p = optax.apply_updates(p, updates)
    for k, t in torch_params.items():
      np.testing.assert_allclose(new_p[k], t.detach().numpy(), rtol=1e-5, atol=2e-6, err_msg=k)
    adam = state[0]
    assert adam.mu["kernel"].dtype == jnp.uint8 and adam.mu["small"].dtype == jnp.float32
    for k in ("kernel", "vector"):
      st = reference.state[torch_params[k]]
      for codes, absmax, ref_codes, ref_absmax, signed in (
          (adam.mu[k], adam.mu_absmax[k], st["state1"], st["absmax1"], True),
          (adam.nu[k], adam.nu_absmax[k], st["state2"], st["absmax2"], False)):
        np.testing.assert_allclose(np.asarray(absmax).ravel(), ref_absmax.numpy(), rtol=1e-6)
        ours = np.asarray(dequantize(codes, absmax, signed, 256))
        theirs = np.asarray(dequantize(jnp.asarray(ref_codes.numpy()), absmax, signed, 256))
        bound = _lut_bound(codes, absmax, quantization.dynamic_map(signed))
        assert np.all(np.abs(ours - theirs) <= bound * (1 + 1e-5)), (step, k)
    st = reference.state[torch_params["small"]]
    np.testing.assert_allclose(adam.mu["small"], st["state1"].numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(adam.nu["small"], st["state2"].numpy(), rtol=1e-5, atol=1e-9)


def test_all_zero_block_quantises_to_zero_without_nans():
  x = np.zeros((2, 512), np.float32)
  x[1, 256:] = np.linspace(-3, 3, 256)
  codes, absmax = quantize(jnp.asarray(x), True, 256)
  back = np.asarray(dequantize(codes, absmax, True, 256))
  np.testing.assert_array_equal(np.asarray(absmax), [[0.0, 0.0], [0.0, 3.0]])
  np.testing.assert_array_equal(back[:, :256], 0.0)
  np.testing.assert_array_equal(back[0], 0.0)
  assert np.all(np.isfinite(back))

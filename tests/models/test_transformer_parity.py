"""Our SanaTransformer against diffusers' SanaTransformer2DModel on random weights (fp32)."""
import numpy as np
import pytest

import sana_jax
from sana_jax.convert.checkpoints import export_diffusers, save_transformer
from tests.models.reference import random_diffusers_transformer, reference_forward

CASES = {
    "qk_norm_p1": dict(qk_norm=True, patch_size=1),
    "no_qk_norm_p1": dict(qk_norm=False, patch_size=1),
    "qk_norm_p2": dict(qk_norm=True, patch_size=2),
    "sincos_pe_p1": dict(qk_norm=False, patch_size=1, interpolation_scale=2.0),
}


def inputs(seed, batch=2, height=6, width=10, channels=4, text_len=7, caption=24):
  rng = np.random.default_rng(seed)
  latents = rng.standard_normal((batch, height, width, channels), dtype=np.float32)
  timesteps = np.linspace(3.0, 970.0, batch).astype(np.float32)
  text = rng.standard_normal((batch, text_len, caption), dtype=np.float32)
  mask = np.ones((batch, text_len), np.int64)
  mask[0, 4:] = 0  # first sample partly padded
  return latents, timesteps, text, mask


def assert_close_to_reference(ours, ref):
  ours, ref = np.asarray(ours), np.asarray(ref)
  assert ours.shape == ref.shape
  tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
  assert float(np.abs(ours - ref).max()) <= tol


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
  ref = random_diffusers_transformer(seed=len(request.param), **CASES[request.param])
  folder = tmp_path_factory.mktemp(request.param)
  ref.save_pretrained(folder)
  return request.param, ref, folder


def test_diffusers_folder_matches_reference(case):
  _, ref, folder = case
  model = sana_jax.load_transformer(folder)
  x, t, txt, mask = inputs(0)
  assert_close_to_reference(model(x, t, txt, mask), reference_forward(ref, x, t, txt, mask))


def test_jit_and_square_latents_match_reference(case):
  _, ref, folder = case
  from flax import nnx
  model = sana_jax.load_transformer(folder)
  x, t, txt, mask = inputs(1, batch=3, height=8, width=8)
  ours = nnx.jit(lambda m, *a: m(*a))(model, x, t, txt, mask)
  assert_close_to_reference(ours, reference_forward(ref, x, t, txt, mask))


def test_export_loads_back_in_diffusers(case, tmp_path):
  from diffusers import SanaTransformer2DModel
  _, ref, folder = case
  model = sana_jax.load_transformer(folder)
  export_diffusers(model, tmp_path / "export")
  back = SanaTransformer2DModel.from_pretrained(tmp_path / "export").eval()
  x, t, txt, mask = inputs(3)
  np.testing.assert_allclose(reference_forward(back, x, t, txt, mask), reference_forward(ref, x, t, txt, mask),
                             rtol=0, atol=1e-6)


def test_orbax_round_trip_is_exact(case, tmp_path):
  _, _, folder = case
  model = sana_jax.load_transformer(folder)
  save_transformer(model, tmp_path / "ours")
  again = sana_jax.load_transformer(tmp_path / "ours")
  x, t, txt, mask = inputs(4)
  np.testing.assert_array_equal(np.asarray(again(x, t, txt, mask)), np.asarray(model(x, t, txt, mask)))


def _mutable(cfg):
  import ml_collections
  return ml_collections.ConfigDict(cfg.to_dict())

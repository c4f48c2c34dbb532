"""The transformer with image tokens split over 4 devices equals the unsharded model."""
import jax
import numpy as np
from flax import nnx

import configs
from sana_jax.models.transformer import SanaTransformer


def test_sequence_parallel_transformer_equals_unsharded():
  cfg = configs.get_config("tiny").model
  cfg.update(hidden_size=64, depth=2, in_channels=4, out_channels=4, cross_num_heads=2)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 4, 8, 4), dtype=np.float32)
  t = np.array([10.0, 700.0], np.float32)
  text = rng.standard_normal((2, 5, cfg.caption_channels), dtype=np.float32)
  mask = np.ones((2, 5), np.int32)
  plain = SanaTransformer(cfg, rngs=nnx.Rngs(0))
  want = nnx.jit(lambda m: m(x, t, text, mask))(plain)

  cfg.update(seq_parallel_axis="seq", seq_parallel_batch_axis="data")
  sharded = SanaTransformer(cfg, rngs=nnx.Rngs(0))
  mesh = jax.make_mesh((2, 4), ("data", "seq"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  with jax.set_mesh(mesh):
    got = nnx.jit(lambda m: m(x, t, text, mask))(sharded)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)

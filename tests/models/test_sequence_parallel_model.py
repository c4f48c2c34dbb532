"""The transformer with its image tokens split over devices (sequence parallelism) equals the
unsharded model, values and gradients, and holds only its share of the activations per device."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sana_jax import configs
from sana_jax.models.transformer import SanaTransformer


def _config(**overrides):
  cfg = configs.get_config("tiny").model
  cfg.update(hidden_size=64, depth=2, in_channels=4, out_channels=4, cross_num_heads=2, **overrides)
  return cfg


def _inputs(cfg, batch, height, width):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((batch, height, width, 4), dtype=np.float32)
  t = np.linspace(10.0, 700.0, batch).astype(np.float32)
  text = rng.standard_normal((batch, 5, cfg.caption_channels), dtype=np.float32)
  mask = np.ones((batch, 5), np.int32)
  return x, t, text, mask


def _loss_and_grads(model, inputs):
  graphdef, params = nnx.split(model, nnx.Param)

  def loss(params):
    out = nnx.merge(graphdef, params)(*inputs)
    return jnp.mean(out ** 2), out

  (value, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return value, out, grads


def _mesh(shape):
  return jax.make_mesh(shape, ("data", "seq"), axis_types=(jax.sharding.AxisType.Auto,) * 2)


def test_sequence_parallel_transformer_equals_unsharded_values_and_grads():
  # 4 rows of patches over 4 devices: every row's 3x3 conv needs both neighbours' halo rows.
  inputs = _inputs(_config(), 2, 4, 8)
  want = _loss_and_grads(SanaTransformer(_config(), rngs=nnx.Rngs(0)), inputs)
  sharded = SanaTransformer(_config(seq_parallel_axis="seq", seq_parallel_batch_axis="data"),
                            rngs=nnx.Rngs(0))
  with jax.set_mesh(_mesh((2, 4))):
    got = _loss_and_grads(sharded, inputs)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
  np.testing.assert_allclose(np.asarray(got[1]), np.asarray(want[1]), rtol=1e-5, atol=1e-5)
  for g, w in zip(jax.tree.leaves(got[2]), jax.tree.leaves(want[2])):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4,
                               atol=1e-5 * float(jnp.max(jnp.abs(w))))


def _compiled_forward(cfg, mesh, inputs):
  graphdef, state = nnx.split(SanaTransformer(cfg, rngs=nnx.Rngs(0)))
  shapes = [jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype) for a in inputs]
  with jax.set_mesh(mesh):
    return jax.jit(lambda state, *a: nnx.merge(graphdef, state)(*a)).lower(state, *shapes).compile()


def test_split_tokens_divide_the_activation_memory_per_device():
  # One 64x64-patch image (4096 tokens) on 8 devices: without sequence parallelism every device
  # holds all its activations; with it, about an eighth (plus one halo row per conv and the
  # replicated weights), and only one-row halos cross devices.
  mesh = _mesh((1, 8))
  inputs = _inputs(_config(), 1, 64, 64)
  whole = _compiled_forward(_config(), mesh, inputs)
  split = _compiled_forward(_config(seq_parallel_axis="seq", seq_parallel_batch_axis="data"), mesh,
                            inputs)
  whole_mem, split_mem = whole.memory_analysis(), split.memory_analysis()
  assert split_mem.output_size_in_bytes * 8 == whole_mem.output_size_in_bytes
  assert split_mem.temp_size_in_bytes < 0.3 * whole_mem.temp_size_in_bytes
  hlo = split.as_text()
  permutes = [line for line in hlo.splitlines() if "collective-permute(" in line]
  assert permutes and all("[1,1,64," in line for line in permutes)  # one row of 64 patches
  assert "all-gather(" not in hlo


def test_rows_that_do_not_split_evenly_are_refused():
  cfg = _config(seq_parallel_axis="seq", seq_parallel_batch_axis="data")
  inputs = _inputs(cfg, 2, 2, 16)  # 32 tokens divide over 4 devices, 2 rows do not
  with jax.set_mesh(_mesh((2, 4))), pytest.raises(ValueError, match="rows"):
    _loss_and_grads(SanaTransformer(cfg, rngs=nnx.Rngs(0)), inputs)


def test_sequence_parallelism_without_a_mesh_is_an_error():
  cfg = _config(seq_parallel_axis="seq")
  with pytest.raises(ValueError, match="needs a mesh"):
    _loss_and_grads(SanaTransformer(cfg, rngs=nnx.Rngs(0)), _inputs(cfg, 2, 4, 8))

"""Mesh construction, logical-axis rules, and one sharded train step equal to the single-device step."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from sana_jax.training import sharding, step, train_state
from tests.training.helpers import fixed_batch, null_text, sgd_momentum, tiny_config


def test_mesh_fills_the_minus_one_axis():
  cfg = tiny_config().mesh
  cfg.update(data=2, fsdp=-1, tensor=2)
  mesh = sharding.create_mesh(cfg)
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}


@pytest.mark.parametrize("sizes,match", [
    (dict(data=-1, fsdp=-1, tensor=1), "only one mesh axis"),
    (dict(data=3, fsdp=1, tensor=1), "needs 3 devices"),
    (dict(data=3, fsdp=-1, tensor=1), "cannot be split"),
])
def test_mesh_rejects_sizes_that_do_not_fit_the_devices(sizes, match):
  cfg = tiny_config().mesh
  cfg.update(**sizes)
  with pytest.raises(ValueError, match=match):
    sharding.create_mesh(cfg)


def test_logical_rules_map_names_and_replicate_what_does_not_divide():
  cfg = tiny_config().mesh
  cfg.update(data=1, fsdp=4, tensor=2)
  mesh = sharding.create_mesh(cfg)
  rules = sharding.axis_rules(cfg)
  assert sharding.logical_to_spec(("layers", "embed", "mlp"), rules, (2, 64, 320), mesh) == \
      P(None, "fsdp", "tensor")
  assert sharding.logical_to_spec(("embed", None), rules, (6, 4), mesh) == P(None, None)
  assert sharding.logical_to_spec(("batch",), rules) == P(("data", "fsdp"))


def test_unknown_mesh_axis_in_a_rule_is_an_error():
  cfg = tiny_config().mesh
  cfg.axis_rules = (("embed", "model"),)
  with pytest.raises(ValueError, match="mesh axes are"):
    sharding.axis_rules(cfg)


def _one_step(cfg, mesh, with_rules=False):
  tx = sgd_momentum()
  graphdef, state, shardings = train_state.create_train_state(cfg, tx, mesh)
  fn = step.make_train_step(graphdef, tx, cfg.train, null_text=null_text(cfg), seed=cfg.seed)
  batch = fixed_batch(cfg)
  if mesh is None:
    new_state, metrics = step.jit_train_step(fn)(state, batch)
  else:
    rules = sharding.axis_rules(cfg.mesh)
    batch_sharding = sharding.batch_sharding(mesh, rules)
    batch = sharding.global_batch(batch, batch_sharding)
    new_state, metrics = step.jit_train_step(fn, mesh, shardings, batch_sharding,
                                             rules if with_rules else None)(state, batch)
  return float(metrics["loss"]), jax.tree.map(np.asarray, new_state.params), new_state


@pytest.fixture(scope="module")
def single_device_step():
  return _one_step(tiny_config(), None)


# Each mesh compiles the train step once more (minutes on 2 loaded cores): the mixed mesh, which
# exercises all three axes, runs by default; the pure data / pure FSDP meshes with -m slow.
@pytest.mark.parametrize("sizes", [
    pytest.param(dict(data=8, fsdp=1, tensor=1), marks=pytest.mark.slow),
    pytest.param(dict(data=1, fsdp=8, tensor=1), marks=pytest.mark.slow),
    dict(data=2, fsdp=2, tensor=2)])
def test_sharded_step_equals_single_device_step(single_device_step, sizes):
  cfg = tiny_config()
  cfg.mesh.update(**sizes)
  mesh = sharding.create_mesh(cfg.mesh)
  loss, params, state = _one_step(cfg, mesh)
  ref_loss, ref_params, _ = single_device_step
  assert abs(loss - ref_loss) <= 1e-5
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), params, ref_params)
  kernel = state.params["blocks"]["ffn"]["conv_inverted"]["kernel"][...]  # [layers, embed, mlp]
  assert kernel.sharding.shard_shape(kernel.shape) == (2, 64 // sizes["fsdp"], 320 // sizes["tensor"])


def test_sequence_parallel_attention_in_the_train_step_equals_single_device_step(
    single_device_step):
  # As the training loop runs it (under the mesh and the logical rules): the 64 image tokens are
  # split over the tensor axis inside linear attention, the batch stays on data x fsdp.
  cfg = tiny_config()
  cfg.mesh.update(data=2, fsdp=2, tensor=2)
  cfg.model.update(seq_parallel_axis="tensor", seq_parallel_batch_axis=("data", "fsdp"))
  mesh = sharding.create_mesh(cfg.mesh)
  loss, params, _ = _one_step(cfg, mesh, with_rules=True)
  ref_loss, ref_params, _ = single_device_step
  assert abs(loss - ref_loss) <= 1e-5
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), params, ref_params)


def test_with_sequence_parallelism_the_batch_follows_the_models_batch_axis():
  # The sequence axis carries tokens, so a batch smaller than the device count can be trained.
  cfg = tiny_config()
  cfg.mesh.update(data=2, fsdp=4, tensor=1)
  mesh = sharding.create_mesh(cfg.mesh)
  rules = sharding.axis_rules(cfg.mesh)
  assert sharding.batch_shard_count(mesh, rules, cfg.model) == 8
  cfg.model.update(seq_parallel_axis="fsdp", seq_parallel_batch_axis="data")
  assert sharding.batch_shard_count(mesh, rules, cfg.model) == 2
  assert sharding.batch_sharding(mesh, rules, cfg.model).spec == P("data")
  cfg.model.seq_parallel_batch_axis = ["data"]  # as read back from a JSON config
  assert sharding.batch_sharding(mesh, rules, cfg.model).spec == P(("data",))


def test_each_host_reads_the_contiguous_rows_its_devices_hold():
  # One process here holds every row; the interval logic is what multi-host runs rely on.
  mesh = sharding.create_mesh(tiny_config().mesh)
  assert sharding.process_batch_shard(sharding.batch_sharding(mesh, [("batch", "fsdp")]), 16) == (0, 1)
  assert sharding.contiguous_shard([(4, 6), (6, 8)], 16) == (1, 4)
  assert sharding.contiguous_shard([(0, 16), (0, 16)], 16) == (0, 1)  # replicated over hosts
  with pytest.raises(ValueError, match="contiguous"):
    sharding.contiguous_shard([(0, 2), (4, 6)], 16)
  with pytest.raises(ValueError, match="equal shard"):
    sharding.contiguous_shard([(2, 5)], 16)

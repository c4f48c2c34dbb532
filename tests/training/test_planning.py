"""AOT memory planning on a simulated mesh: nothing allocated, bytes per device follow the shardings."""
import jax
import pytest
from flax import nnx

from sana_jax.training import planning, sharding, train_state
from tests.training.helpers import tiny_config


@pytest.fixture(scope="module")
def fsdp_plan():
  cfg = tiny_config()
  cfg.mesh.update(data=2, fsdp=4, tensor=1)
  mesh = sharding.create_mesh(cfg.mesh)
  return cfg, planning.plan_memory(cfg, mesh, batch_size=8, image_size=32, text_tokens=6)


def test_parameter_bytes_per_device_are_the_fsdp_shards_of_the_model(fsdp_plan):
  cfg, plan = fsdp_plan
  params = nnx.state(nnx.eval_shape(lambda: train_state.build_model(cfg.model, 0)), nnx.Param)
  total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
  assert plan.params < total / 2          # sharded: well under a full copy per device
  assert plan.params >= total / 4         # never smaller than an even split over fsdp=4


def test_plan_reports_every_part_and_a_total_that_covers_them(fsdp_plan):
  _, plan = fsdp_plan
  assert plan.optimizer > 0 and plan.temporaries > 0 and plan.batch > 0
  assert plan.total >= plan.params + plan.optimizer + plan.temporaries
  text = plan.table()
  for row in ("parameters", "optimiser state", "activations + temporaries", "total"):
    assert row in text


def test_image_size_must_fit_the_autoencoder_and_patch():
  cfg = tiny_config()
  with pytest.raises(ValueError, match="not a multiple"):
    planning.plan_memory(cfg, sharding.create_mesh(cfg.mesh), batch_size=8, image_size=30, text_tokens=6)

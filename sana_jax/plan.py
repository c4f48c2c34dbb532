"""Will it fit? AOT-compile the train step on a simulated mesh and print per-device memory.

  python -m sana_jax.plan --config=configs/sana15_4800m_p1_d60.py --mesh=fsdp=64 \
      --batch_size=256 --image_size=1024 --config.model.remat_policy=full

--mesh names the axis sizes (data, fsdp, tensor; missing ones are 1). Unless --real_devices, the
devices are simulated CPUs, so this runs anywhere; no weight is ever allocated.
"""
import os
import sys


def _mesh_from_argv(argv) -> dict:
  for i, arg in enumerate(argv):
    if arg.startswith("--mesh="):
      text = arg.split("=", 1)[1]
    elif arg == "--mesh" and i + 1 < len(argv):
      text = argv[i + 1]
    else:
      continue
    sizes = {}
    for part in filter(None, text.split(",")):
      name, _, value = part.partition("=")
      if name not in ("data", "fsdp", "tensor") or not value.isdigit() or int(value) < 1:
        raise SystemExit(f"--mesh: expected e.g. data=2,fsdp=32,tensor=1, got {text!r}")
      sizes[name] = int(value)
    return sizes
  return {"fsdp": 8}


# The simulated device count must be fixed before JAX initialises its backend.
_MESH = _mesh_from_argv(sys.argv)
if "--real_devices" not in sys.argv:
  _count = 1
  for _v in _MESH.values():
    _count *= _v
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={_count}")
  os.environ["JAX_PLATFORMS"] = "cpu"

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from sana_jax import cli, compilation_cache, configs  # noqa: E402
from sana_jax.training import planning, sharding  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(configs.__file__), "tiny.py"), "Training config file.")
flags.DEFINE_string("mesh", "fsdp=8", "Mesh axis sizes, e.g. data=2,fsdp=32,tensor=1.")
flags.DEFINE_bool("real_devices", False, "Plan for the devices JAX sees instead of simulated CPUs.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Global batch (default: config train.batch_size).")
_IMAGE = flags.DEFINE_integer("image_size", None, "Image side in pixels (default: config data.image_size).")
_TEXT = flags.DEFINE_integer("text_tokens", None, "Caption tokens (default: config codecs.max_text_length).")


def main(argv):
  compilation_cache.enable()
  del argv
  cfg = _CONFIG.value
  cfg.mesh.update(data=_MESH.get("data", 1), fsdp=_MESH.get("fsdp", 1), tensor=_MESH.get("tensor", 1))
  mesh = sharding.create_mesh(cfg.mesh)
  batch = _BATCH.value or cfg.train.batch_size
  image = _IMAGE.value or cfg.data.image_size
  text = _TEXT.value or cfg.codecs.max_text_length
  print(f"{cfg.model.name}: batch {batch} at {image} px, {text} text tokens, "
        f"optimizer {cfg.optimizer.name}, remat {cfg.model.remat_policy}, dtype {cfg.model.dtype}")
  plan = planning.plan_memory(cfg, mesh, batch_size=batch, image_size=image, text_tokens=text)
  print(plan.table())


if __name__ == "__main__":
  cli.run(main)

"""A GKE JobSet for training on a multi-host TPU slice, generated from a training config.

  python launch/gke.py --config=configs/sana15_4800m_p1_d60.py --accelerator_type=v5p-128 \\
      --image=us-docker.pkg.dev/<project>/sana/sana_jax:latest --workdir=gs://<bucket>/sana-4b8 \\
      --dry-run -- --config.train.batch_size=1024 --config.optimizer.name=came_8bit

prints the manifest; without --dry-run it is piped to `kubectl apply -f -`. One pod per TPU host
(4 chips each), all running the same `python -m sana_jax.train` command as on one host: GKE sets
TPU_WORKER_HOSTNAMES / TPU_WORKER_ID in every pod and training/distributed.py connects them.
The config's mesh (with the overrides after `--`) is checked against the slice's chip count before
anything is printed, so a manifest that cannot start is never applied. After a failure (a host lost,
a maintenance event) JobSet restarts all pods up to --max_restarts times and training resumes from
the newest checkpoint in --workdir. The image: `docker build -f launch/Dockerfile -t IMAGE .`.
"""
import argparse
import ast
import importlib.util
import json
import math
import re
import shlex
import subprocess
import sys

CHIPS_PER_HOST = 4
# accelerator type prefix -> (GKE accelerator label, topology rank, count in the name is cores per chip)
GENERATIONS = {
    "v4": ("tpu-v4-podslice", 3, 2),
    "v5p": ("tpu-v5p-slice", 3, 2),
    "v5litepod": ("tpu-v5-lite-podslice", 2, 1),
    "v6e": ("tpu-v6e-slice", 2, 1),
}


def slice_shape(accelerator_type: str) -> dict:
  """"v5p-128" -> {"label", "chips": 64, "hosts": 16, "topology": "4x4x4"} for a multi-host slice."""
  match = re.fullmatch(r"(v4|v5p|v5litepod|v6e)-(\d+)", accelerator_type)
  if not match:
    raise ValueError(f"--accelerator_type {accelerator_type!r}: expected e.g. v5p-128, v6e-256, "
                     f"v5litepod-64, v4-64 (one of {sorted(GENERATIONS)})")
  label, rank, per_chip = GENERATIONS[match.group(1)]
  count = int(match.group(2))
  chips = count // per_chip
  if count % per_chip or chips & (chips - 1) or chips <= CHIPS_PER_HOST:
    raise ValueError(f"{accelerator_type}: {chips} chips is not a multi-host slice (a power of two "
                     f"above {CHIPS_PER_HOST} chips; one host needs no JobSet: use launch/tpu_vm.py)")
  sides = [1] * rank
  for i in range(int(math.log2(chips))):  # as cubic (square) as possible, the smallest side first
    sides[-1 - (i % rank)] *= 2
  return {"label": label, "chips": chips, "hosts": chips // CHIPS_PER_HOST,
          "topology": "x".join(str(s) for s in sorted(sides))}


def load_config(path: str, overrides):
  """The config of `path` (a configs/*.py) with `--config.a.b=value` overrides applied."""
  spec = importlib.util.spec_from_file_location("_sana_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config()
  for arg in overrides:
    if not arg.startswith("--config."):
      continue
    key, _, text = arg[len("--config."):].partition("=")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    cfg.update_from_flattened_dict({key: value})
  return cfg


def check_mesh(cfg, chips: int) -> dict:
  """The mesh sizes on `chips` devices; a ValueError if they do not multiply to it. Warns (stderr)
  when the fsdp size does not divide model.hidden_size: weights along it then stay replicated."""
  from sana_jax.training import sharding  # imports JAX: only when a manifest is made
  try:
    mesh = sharding.mesh_shape(cfg.mesh, chips)
  except ValueError as e:
    raise ValueError(f"the config's mesh does not fit the {chips} chips of the slice: {e}") from e
  if cfg.model.hidden_size % mesh["fsdp"]:
    print(f"warning: fsdp={mesh['fsdp']} does not divide model.hidden_size={cfg.model.hidden_size}, "
          "so the weights are not sharded over it (each chip holds them whole); choose data x fsdp "
          "with an fsdp size that divides it (python -m sana_jax.plan shows the memory)", file=sys.stderr)
  return mesh


def jobset(args, shape: dict, mesh: dict) -> dict:
  train = ["python", "-m", "sana_jax.train", f"--config={args.config}", f"--workdir={args.workdir}",
           *args.train_args]
  container = {
      "name": "train",
      "image": args.image,
      "command": train,
      "env": [{"name": "SANA_JAX_MULTIHOST", "value": "1"},
              {"name": "SANA_JAX_INIT_TIMEOUT", "value": str(args.init_timeout)}],
      "ports": [{"containerPort": 8471}, {"containerPort": 8080}],
      "resources": {"limits": {"google.com/tpu": CHIPS_PER_HOST}},
  }
  pod = {
      "metadata": {"labels": {"app": args.name},
                   "annotations": {"sana_jax/mesh": json.dumps(mesh)}},
      "spec": {
          "restartPolicy": "Never",
          "nodeSelector": {"cloud.google.com/gke-tpu-accelerator": shape["label"],
                           "cloud.google.com/gke-tpu-topology": shape["topology"],
                           **({"cloud.google.com/gke-spot": "true"} if args.spot else {})},
          "terminationGracePeriodSeconds": args.grace_period,
          "containers": [container],
      },
  }
  return {
      "apiVersion": "jobset.x-k8s.io/v1alpha2",
      "kind": "JobSet",
      "metadata": {"name": args.name,
                   "annotations": {"alpha.jobset.sigs.k8s.io/exclusive-topology": "cloud.google.com/gke-nodepool"}},
      "spec": {
          "failurePolicy": {"maxRestarts": args.max_restarts},
          "replicatedJobs": [{
              "name": "slice",
              "replicas": 1,
              "template": {"spec": {"parallelism": shape["hosts"], "completions": shape["hosts"],
                                    "completionMode": "Indexed",  # index = TPU_WORKER_ID
                                    "backoffLimit": 0, "template": pod}},
          }],
      },
  }


def to_yaml(value, indent: int = 0) -> str:
  """YAML for dicts / lists / scalars (scalars as JSON, which YAML reads)."""
  pad = " " * indent
  if isinstance(value, dict):
    lines = []
    for k, v in value.items():
      if isinstance(v, (dict, list)) and v:
        lines.append(f"{pad}{k}:\n{to_yaml(v, indent + 2)}")
      else:
        lines.append(f"{pad}{k}: {json.dumps(v)}")
    return "\n".join(lines)
  lines = []
  for v in value:
    if isinstance(v, (dict, list)) and v:
      body = to_yaml(v, indent + 2)
      lines.append(f"{pad}- {body.lstrip()}")
    else:
      lines.append(f"{pad}- {json.dumps(v)}")
  return "\n".join(lines)


def parse_args(argv):
  argv = list(argv)
  train_args = argv[argv.index("--") + 1:] if "--" in argv else []
  argv = argv[:argv.index("--")] if "--" in argv else argv
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True, help="configs/*.py, as the image holds it")
  p.add_argument("--accelerator_type", required=True, help="e.g. v5p-128, v6e-256")
  p.add_argument("--image", required=True, help="container image with sana_jax installed")
  p.add_argument("--workdir", required=True, help="gs://bucket/path shared by every host")
  p.add_argument("--name", default="", help="JobSet name (default: from the config's model name)")
  p.add_argument("--spot", action="store_true", help="schedule on spot TPU nodes")
  p.add_argument("--max_restarts", type=int, default=10, help="JobSet restarts after a failure")
  p.add_argument("--grace_period", type=int, default=300,
                 help="seconds between SIGTERM and SIGKILL on eviction (time to save a checkpoint)")
  p.add_argument("--init_timeout", type=int, default=600, help="seconds a host waits for the others")
  p.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                 help="print the manifest instead of applying it")
  args = p.parse_args(argv)
  args.train_args = train_args
  if not args.workdir.startswith("gs://"):
    p.error("--workdir must be a gs:// path that every host can read and write")
  return args


def main(argv):
  args = parse_args(argv)
  try:
    shape = slice_shape(args.accelerator_type)
    cfg = load_config(args.config, args.train_args)
    mesh = check_mesh(cfg, shape["chips"])
  except (ValueError, OSError) as e:
    sys.exit(f"error: {e}")
  args.name = args.name or re.sub(r"[^a-z0-9-]+", "-", cfg.model.name.lower()).strip("-")
  manifest = to_yaml(jobset(args, shape, mesh)) + "\n"
  print(f"# {args.accelerator_type}: {shape['hosts']} hosts x {CHIPS_PER_HOST} chips, topology "
        f"{shape['topology']}; mesh {mesh}", file=sys.stderr)
  if args.dry_run:
    sys.stdout.write(manifest)
    return
  print(shlex.join(["kubectl", "apply", "-f", "-"]), file=sys.stderr)
  subprocess.run(["kubectl", "apply", "-f", "-"], input=manifest, text=True, check=True)


if __name__ == "__main__":
  main(sys.argv[1:])

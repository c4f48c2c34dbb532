"""Create a Cloud TPU VM or pod slice, install sana_jax on every worker, start training on all of them.

  python launch/tpu_vm.py all --name=sana-4b8 --repo=https://github.com/<you>/sana_jax.git --zone=us-east5-a --accelerator_type=v5p-128 \
      --config=configs/sana15_4800m_p1_d60.py --workdir=gs://my-bucket/sana-4b8 \
      -- --config.train.batch_size=1024
  python launch/tpu_vm.py train ... --dry-run      # print the gcloud commands, run nothing

Steps: `create` (the VM or slice, optionally spot/preemptible), `install` (clone + pip install on
every worker), `train` (start `python -m sana_jax.train` on every worker at once in a detached
tmux session; JAX connects the workers itself), `all` (the three in order), `delete`. Anything after
`--` is passed to sana_jax.train. Re-running `train` after a preemption resumes from --workdir.
On a GKE cluster, launch/gke.py starts the same train command as a JobSet.
"""
import argparse
import shlex
import subprocess
import sys

def _gcloud_tpu(args, *rest):
  cmd = ["gcloud", "compute", "tpus", "tpu-vm", *rest, args.name, f"--zone={args.zone}"]
  if args.project:
    cmd.append(f"--project={args.project}")
  return cmd


def create_commands(args):
  cmd = _gcloud_tpu(args, "create") + [f"--accelerator-type={args.accelerator_type}",
                                       f"--version={args.runtime_version}"]
  if args.spot:
    cmd.append("--spot")
  return [cmd]


def _on_all_workers(args, script):
  return _gcloud_tpu(args, "ssh") + ["--worker=all", f"--command={script}"]


def install_commands(args):
  script = " && ".join([
      f"(test -d sana_jax || git clone {shlex.quote(args.repo)} sana_jax)",
      f"cd sana_jax && git fetch -q && git checkout -q {shlex.quote(args.ref)}",
      "pip install -q -U pip",
      "pip install -q -e '.[tpu]'",
  ])
  return [_on_all_workers(args, script)]


def train_commands(args):
  train = ["python", "-m", "sana_jax.train", f"--config={args.config}", f"--workdir={args.workdir}",
           *args.train_args]
  # SANA_JAX_MULTIHOST makes every worker call jax.distributed.initialize() before training.
  inner = "cd sana_jax && SANA_JAX_MULTIHOST=1 " + " ".join(shlex.quote(a) for a in train) + " 2>&1 | tee -a train.log"
  script = f"tmux new-session -d -s sana {shlex.quote(inner)}"
  return [_on_all_workers(args, script)]


def delete_commands(args):
  return [_gcloud_tpu(args, "delete") + ["--quiet"]]


STEPS = {"create": [create_commands], "install": [install_commands], "train": [train_commands],
         "all": [create_commands, install_commands, train_commands], "delete": [delete_commands]}


def parse_args(argv):
  argv = list(argv)
  train_args = argv[argv.index("--") + 1:] if "--" in argv else []
  argv = argv[:argv.index("--")] if "--" in argv else argv
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("step", choices=sorted(STEPS))
  p.add_argument("--name", required=True, help="TPU VM / slice name")
  p.add_argument("--zone", required=True)
  p.add_argument("--project", default="")
  p.add_argument("--accelerator_type", default="v5p-8", help="e.g. v5p-8, v5p-128, v6e-64")
  p.add_argument("--runtime_version", default="v2-alpha-tpuv5", help="TPU software version")
  p.add_argument("--spot", action="store_true", help="spot capacity (preemptible; training resumes)")
  p.add_argument("--repo", default="", help="git URL of sana_jax to install (install / all)")
  p.add_argument("--ref", default="main", help="git branch, tag or commit to install")
  p.add_argument("--config", default="configs/tiny.py")
  p.add_argument("--workdir", default="", help="gs://bucket/path shared by all workers")
  p.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                 help="print the commands instead of running them")
  args = p.parse_args(argv)
  args.train_args = train_args
  if args.step in ("install", "all") and not args.repo:
    p.error("--repo (the git URL to install sana_jax from) is required for install and all")
  if args.step in ("train", "all") and not args.workdir.startswith("gs://"):
    p.error("--workdir must be a gs:// path that every worker can read and write")
  return args


def main(argv):
  args = parse_args(argv)
  for build in STEPS[args.step]:
    for cmd in build(args):
      print(shlex.join(cmd), flush=True)
      if not args.dry_run:
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
  main(sys.argv[1:])

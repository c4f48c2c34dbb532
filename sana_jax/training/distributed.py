"""Several processes as one JAX job: how they find each other, and the few agreements the loop needs.

Where the job's shape comes from, in order (`initialize`):
  explicit   JAX_COORDINATOR_ADDRESS + SANA_JAX_NUM_PROCESSES + SANA_JAX_PROCESS_ID, as
             `python -m sana_jax.launch local` sets them (one machine, CPU processes), or as a
             user sets them on any cluster;
  detected   a Cloud TPU pod slice or GKE TPU node pool (TPU_WORKER_HOSTNAMES lists > 1 host),
             SLURM (SLURM_NTASKS > 1), or SANA_JAX_MULTIHOST=1 (launch/tpu_vm.py and the GKE
             manifest set it): JAX reads the coordinator from that environment itself;
  none       one process: nothing to do.
So the train command is the same on one host, on a pod slice and in a local multi-process job.

CPU processes exchange data with gloo (`jax_cpu_collectives_implementation`). A process that cannot
reach the coordinator fails after SANA_JAX_INIT_TIMEOUT seconds (default 300) with
`CoordinatorUnreachable`, naming the address, instead of hanging; one whose peers never come exits
(status 3) after the same time with the same message.

The agreements, each a collective every process must call at the same point:
  any_process(flag)          True everywhere if it is True on some process (SIGTERM on one host
                             -> every host saves at the same step);
  gather_host_states(state)  every host's data-iterator state, for the checkpoint;
  own_host_state(saved)      this host's entry of it on restore (any process count; not a collective);
  to_host(array)             a global array as numpy on every host, gathered if it spans hosts.
The loop calls any_process at log steps (every step on one process, where it is free): one tiny
all-gather, next to the metrics the loop reads back there anyway.
`log_example_indices` (SANA_JAX_INDEX_LOG) records which examples each host read, for audits.
"""
import json
import os
import socket
import sys
import threading
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"  # JAX itself reads it too
NUM_PROCESSES_ENV = "SANA_JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "SANA_JAX_PROCESS_ID"
INIT_TIMEOUT_ENV = "SANA_JAX_INIT_TIMEOUT"
DEFAULT_INIT_TIMEOUT_S = 300


class CoordinatorUnreachable(RuntimeError):
  """This process could not reach the coordinator (not started, wrong address, a firewall)."""


def job_kind(env=None) -> str | None:
  """"explicit", "detected" or None (one process), from the environment (see module docstring)."""
  env = os.environ if env is None else env
  if COORDINATOR_ENV in env and NUM_PROCESSES_ENV in env:
    return "explicit"
  tpu_hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
  if (env.get("SANA_JAX_MULTIHOST") == "1" or len(tpu_hosts) > 1
      or int(env.get("SLURM_NTASKS", "1")) > 1 or COORDINATOR_ENV in env):
    return "detected"
  return None


def local_process_env(process_id: int, num_processes: int, port: int, devices_per_process: int,
                      base_env=None) -> dict:
  """The environment of process `process_id` of a CPU job on this machine (coordinator on `port`)."""
  env = dict(os.environ if base_env is None else base_env)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env.update({
      "XLA_FLAGS": " ".join(flags + [f"--xla_force_host_platform_device_count={devices_per_process}"]),
      "JAX_PLATFORMS": "cpu",
      "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
      COORDINATOR_ENV: f"127.0.0.1:{port}",
      NUM_PROCESSES_ENV: str(num_processes),
      PROCESS_ID_ENV: str(process_id),
  })
  return env


def initialize() -> None:
  """Connects this process to the job the environment describes; a no-op for one process or if
  already connected. Must run before anything asks JAX for its devices."""
  if jax.distributed.is_initialized():
    return
  kind = job_kind()
  if kind is None:
    return
  timeout = int(os.environ.get(INIT_TIMEOUT_ENV, DEFAULT_INIT_TIMEOUT_S))
  kwargs = {}
  if kind == "explicit":
    kwargs = dict(coordinator_address=os.environ[COORDINATOR_ENV],
                  num_processes=int(os.environ[NUM_PROCESSES_ENV]),
                  process_id=int(os.environ.get(PROCESS_ID_ENV, "0")))
  if os.environ.get("JAX_PLATFORMS", "") == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  address = kwargs.get("coordinator_address") or os.environ.get(COORDINATOR_ENV)
  who = f"process {kwargs['process_id']} of {kwargs['num_processes']}" if kwargs else "this process"
  problem = (f"{who} could not join the job at {address or 'the detected coordinator'} within "
             f"{timeout} s; check that every process was started with the same coordinator address "
             f"and process count ({INIT_TIMEOUT_ENV} sets the timeout)")
  deadline = time.monotonic() + timeout
  if address and kwargs.get("process_id", 0) != 0:
    _wait_for_port(address, deadline, problem)
  # The runtime aborts the process (no Python exception) when joining times out: a watchdog says
  # why first, and the runtime's own deadline is set later than the watchdog's.
  watchdog = threading.Timer(max(deadline - time.monotonic(), 1.0), _give_up, (problem,))
  watchdog.daemon = True
  watchdog.start()
  try:
    jax.distributed.initialize(initialization_timeout=timeout + 30, **kwargs)
  finally:
    watchdog.cancel()


def _wait_for_port(address: str, deadline: float, problem: str):
  """Retries a TCP connection to host:port until it opens or `deadline` passes (then raises)."""
  host, port = address.rsplit(":", 1)
  host = host.strip("[]")
  while True:
    try:
      with socket.create_connection((host, int(port)), timeout=2.0):
        return
    except OSError as e:
      if time.monotonic() >= deadline:
        raise CoordinatorUnreachable(f"{problem} (last attempt: {e})") from e
      time.sleep(0.5)


def _give_up(problem: str):
  print(f"error: {problem}", file=sys.stderr, flush=True)
  os._exit(3)


def any_process(flag: bool) -> bool:
  """True on every process if `flag` is True on at least one (a collective: call it everywhere)."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.any(multihost_utils.process_allgather(np.asarray(bool(flag), np.int32))))


def _allgather_bytes(payload: bytes) -> list[bytes]:
  sizes = multihost_utils.process_allgather(np.asarray(len(payload), np.int32))
  buffer = np.zeros(int(np.max(sizes)), np.uint8)
  buffer[:len(payload)] = np.frombuffer(payload, np.uint8)
  gathered = multihost_utils.process_allgather(buffer)  # [processes, max size]
  return [gathered[i, :int(sizes[i])].tobytes() for i in range(len(sizes))]


def gather_host_states(state: dict) -> dict:
  """{"hosts": [state of process 0, state of process 1, ...]}: what the checkpoint keeps of the
  data iterators (only one process writes JSON items; a collective)."""
  if jax.process_count() == 1:
    return {"hosts": [state]}
  return {"hosts": [json.loads(b) for b in _allgather_bytes(json.dumps(state).encode())]}


def own_host_state(saved: dict) -> dict:
  """This process's data-iterator state from what `gather_host_states` saved.

  Written by as many processes as now run: each takes its own. Written by another number of
  processes: the hosts' positions must agree (they do for the pipeline's global batch plan, where
  the position is the global batch number) and every process takes it. A state saved before
  per-host states existed (a plain iterator state) is used as it is.
  """
  if "hosts" not in saved:
    return saved
  hosts = saved["hosts"]
  if len(hosts) == jax.process_count():
    return hosts[jax.process_index()]
  if any(h != hosts[0] for h in hosts[1:]):
    raise ValueError(f"the checkpoint's {len(hosts)} hosts stopped at different data positions "
                     f"{hosts}; it can only resume with {len(hosts)} processes")
  return hosts[0]


INDEX_LOG_ENV = "SANA_JAX_INDEX_LOG"


def log_example_indices(step: int, indices) -> None:
  """With SANA_JAX_INDEX_LOG=<dir> set: appends {"step", "process", "indices"} of the examples this
  process read to <dir>/process_<i>.jsonl (an audit that each host reads only its own rows)."""
  directory = os.environ.get(INDEX_LOG_ENV)
  if not directory or indices is None:
    return
  os.makedirs(directory, exist_ok=True)
  record = {"step": int(step), "process": jax.process_index(),
            "indices": [int(i) for i in np.asarray(indices)]}
  with open(os.path.join(directory, f"process_{jax.process_index()}.jsonl"), "a") as f:
    f.write(json.dumps(record) + "\n")


def to_host(x) -> np.ndarray:
  """A (global) jax.Array as one numpy array on every process: gathered from the other hosts when
  some of its shards live there (sample latents under sequence parallelism), else read locally."""
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))

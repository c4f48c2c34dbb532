"""Run one training job as several JAX processes on this machine, as on a multi-host pod.

  python -m sana_jax.launch local --num_processes 2 --devices_per_process 4 -- \\
      --workdir=/tmp/run --config.mesh.data=2 --config.mesh.fsdp=4

Everything after `--` goes to `python -m sana_jax.train` unchanged: the train command is the one
that runs in one process (and on a pod slice, where launch/tpu_vm.py or launch/gke.py starts it).
Each process gets `devices_per_process` CPU devices, gloo collectives and the coordinator on a free
local port (training/distributed.py reads them). What you see:
  - process 0's output (the progress bar, "resumed from ...") on this terminal;
  - every process's output in <log_dir>/process_<i>.log (default log_dir: <workdir>/logs);
  - if a process dies, one line naming it (exit status or signal, its log), the others are killed
    and the launcher exits 1: no process is left waiting on a dead peer;
  - SIGTERM or Ctrl-C to the launcher reaches every process (each saves a checkpoint at the same
    step, see distributed.any_process); the launcher exits 0 when they all do.
Rerunning the same command resumes from the newest complete checkpoint in the workdir.
"""
import argparse
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from sana_jax.training import distributed

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
  """A TCP port on 127.0.0.1 nobody listens on now."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _die_with_parent():
  """In the child before exec: the kernel kills it if the launcher dies (even by kill -9)."""
  libc = ctypes.CDLL("libc.so.6", use_errno=True)
  libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def describe_exit(code: int) -> str:
  if code < 0:
    return f"was killed by {signal.Signals(-code).name}"
  return f"exited with status {code}"


def default_log_dir(train_args) -> str:
  """<workdir>/logs for a local --workdir among the train flags, else ./logs."""
  workdir = None
  for i, arg in enumerate(train_args):
    if arg.startswith("--workdir="):
      workdir = arg.split("=", 1)[1]
    elif arg == "--workdir" and i + 1 < len(train_args):
      workdir = train_args[i + 1]
  if workdir and "://" not in workdir:
    return os.path.join(workdir, "logs")
  return "logs"


class LocalJob:
  """N processes of `python -m sana_jax.train <train_args>`, watched until all end or one fails."""

  def __init__(self, num_processes: int, devices_per_process: int, train_args, log_dir: str,
               init_timeout_s: int, stop_timeout_s: float, out=None):
    self.num_processes, self.devices_per_process = num_processes, devices_per_process
    self.train_args, self.log_dir = list(train_args), log_dir
    self.init_timeout_s, self.stop_timeout_s = init_timeout_s, stop_timeout_s
    self.out = sys.stdout if out is None else out
    self.procs, self.logs, self._threads = [], [], []
    self._stop_requested_at = None
    self._exit_order, self._exit_lock = [], threading.Lock()  # process indices, first to end first

  def log_path(self, i: int) -> str:
    return os.path.join(self.log_dir, f"process_{i}.log")

  def start(self):
    os.makedirs(self.log_dir, exist_ok=True)
    port = free_port()
    command = [sys.executable, "-u", "-m", "sana_jax.train", *self.train_args]
    for i in range(self.num_processes):
      env = distributed.local_process_env(i, self.num_processes, port, self.devices_per_process)
      env[distributed.INIT_TIMEOUT_ENV] = str(self.init_timeout_s)
      log = open(self.log_path(i), "ab")  # appended: a resumed run keeps the earlier output
      log.write(f"=== launch: process {i} of {self.num_processes}, {time.ctime()}\n".encode())
      log.flush()
      self.logs.append(log)
      proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE if i == 0 else log, stderr=subprocess.STDOUT,
                              start_new_session=True, preexec_fn=_die_with_parent)
      self.procs.append(proc)
      self._say(f"process {i}: pid {proc.pid}, log {self.log_path(i)}")
    tee = threading.Thread(target=self._tee, args=(self.procs[0].stdout, self.logs[0]), daemon=True)
    tee.start()
    self._threads.append(tee)
    for i in range(self.num_processes):
      threading.Thread(target=self._note_exit, args=(i,), daemon=True).start()
    self._say(f"coordinator 127.0.0.1:{port}; {self.num_processes} processes x "
              f"{self.devices_per_process} devices; showing process 0")

  def _say(self, message: str):
    self.out.write(f"launch: {message}\n")
    self.out.flush()

  def _note_exit(self, i: int):
    """Records when process i ends: when one dies, its peers fail soon after (a collective with a
    dead peer), and the one to name is the first."""
    self.procs[i].wait()
    with self._exit_lock:
      self._exit_order.append(i)

  def _tee(self, pipe, log):
    """Process 0's output -> its log file and this terminal."""
    fd = pipe.fileno()
    while chunk := os.read(fd, 65536):
      log.write(chunk)
      log.flush()
      self.out.write(chunk.decode(errors="replace"))
      self.out.flush()

  def request_stop(self, signum=signal.SIGTERM):
    """Forwards `signum` to every running process (they checkpoint and exit); a second request
    kills them."""
    if self._stop_requested_at is not None:
      self._say("second stop request: killing every process")
      self._kill_all()
      return
    self._stop_requested_at = time.monotonic()
    self._say(f"{signal.Signals(signum).name}: asking every process to save a checkpoint and stop")
    for proc in self.procs:
      if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)

  def _kill_all(self):
    """SIGKILL to every process's group (its own data-loader workers included)."""
    for proc in self.procs:
      if proc.poll() is None:
        try:
          os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
          pass
    for proc in self.procs:
      proc.wait()

  def _tail(self, i: int, lines: int = 15) -> str:
    with open(self.log_path(i), "rb") as f:
      text = f.read()[-8192:].decode(errors="replace")
    return "\n".join("    " + line for line in text.replace("\r", "\n").splitlines()[-lines:])

  def wait(self) -> int:
    """Watches the processes: 0 when all exit 0; 1 (after killing the rest) when one fails or
    they do not all stop within stop_timeout_s of the first one ending or of a stop request."""
    first_done_at = None
    try:
      while True:
        with self._exit_lock:
          ended = list(self._exit_order)
        codes = [proc.returncode if i in ended else None for i, proc in enumerate(self.procs)]
        failed = [i for i in ended if codes[i] != 0]
        if failed:
          i = failed[0]
          running = [j for j, code in enumerate(codes) if code is None]
          self._kill_all()
          self._say(f"process {i} (pid {self.procs[i].pid}) {describe_exit(codes[i])}; stopping the "
                    f"job (killed processes {running}). The end of {self.log_path(i)}:\n{self._tail(i)}")
          return 1
        if all(code == 0 for code in codes):
          self._say("every process finished (exit status 0)")
          return 0
        if first_done_at is None and any(code == 0 for code in codes):
          first_done_at = time.monotonic()
        ending = [t for t in (first_done_at, self._stop_requested_at) if t is not None]
        if ending and time.monotonic() - min(ending) > self.stop_timeout_s:
          running = [j for j, code in enumerate(codes) if code is None]
          self._kill_all()
          self._say(f"processes {running} did not stop within {self.stop_timeout_s:.0f} s of the "
                    "others; killed them")
          return 1
        time.sleep(0.1)
    finally:
      self._kill_all()
      for thread in self._threads:
        thread.join(timeout=5)
      for log in self.logs:
        log.close()


def parse_args(argv):
  argv = list(argv)
  train_args = argv[argv.index("--") + 1:] if "--" in argv else []
  argv = argv[:argv.index("--")] if "--" in argv else argv
  p = argparse.ArgumentParser(prog="python -m sana_jax.launch", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="mode", required=True)
  local = sub.add_parser("local", help="N CPU processes on this machine as one JAX job")
  local.add_argument("--num_processes", type=int, default=2)
  local.add_argument("--devices_per_process", type=int, default=4)
  local.add_argument("--log_dir", default="", help="default: <workdir>/logs")
  local.add_argument("--init_timeout", type=int, default=distributed.DEFAULT_INIT_TIMEOUT_S,
                     help="seconds a process waits for the others to join before it gives up")
  local.add_argument("--stop_timeout", type=float, default=300.0,
                     help="seconds the others get to end once one process ended or a stop was asked")
  args = p.parse_args(argv)
  if args.num_processes < 1 or args.devices_per_process < 1:
    p.error("--num_processes and --devices_per_process must be at least 1")
  args.train_args = train_args
  args.log_dir = args.log_dir or default_log_dir(train_args)
  return args


def main(argv) -> int:
  args = parse_args(argv)
  job = LocalJob(args.num_processes, args.devices_per_process, args.train_args, args.log_dir,
                 args.init_timeout, args.stop_timeout)
  job.start()
  for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, lambda s, frame: job.request_stop(s))
  return job.wait()


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))

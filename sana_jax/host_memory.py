"""Keep freed host memory inside the process, so XLA:CPU's large buffers stop page-faulting.

XLA:CPU allocates each execution's temporary buffer (and its outputs) afresh. glibc serves blocks
larger than its mmap threshold (at most 32 MB) with `mmap` and hands them back to the kernel on
`free`, and blocks that worker threads ask for come from per-thread arenas that also map large
blocks directly; so every call of a large program touches fresh pages, and the kernel zeroes each
one on its first touch (151k page faults, ~600 MB, per call of a width-384 forward at 4K tokens
and batch 2; 220-250 ms of its ~500 ms in the kernel).

`retain()` tells glibc (`mallopt`) to keep one arena, never to serve a block with `mmap` and never
to trim the heap: freed buffers stay in the process and later calls reuse them once the heap has
grown to what they need. Measured in docs/benchmarks.md ("Where the forward's time goes"): the
600M-width train step (4 blocks, batch 2, 512 px) 1.33x faster (2441 -> 1835 ms); but the default
tiny job's step (batch 32 of 64 tokens) 0.72x (106 -> 146 ms), because one arena shared by XLA's
worker threads costs more than its small faults did. Hence opt-in: `--retain_host_memory` on
`python -m sana_jax.train` and `.sample`. The price: the process keeps its peak heap until it exits.

It must run before JAX starts its CPU client (the client's threads pick their arenas when they
first allocate); `retain()` refuses afterwards. Linux with glibc only; elsewhere it returns False
and changes nothing.
"""
import ctypes
import sys

from absl import flags

flags.DEFINE_bool("retain_host_memory", False,
                  "CPU runs: keep freed memory in the process (glibc: one malloc arena, no mmap, no "
                  "trim) so XLA's large per-call buffers stop page-faulting. Faster for large "
                  "models and images (the 600M-width train step 1.33x), slower for the tiny "
                  "default job (0.72x; docs/benchmarks.md).")

# mallopt parameters (glibc malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int

_state = {"retained": False}


def _glibc():
  if not sys.platform.startswith("linux"):
    return None
  try:
    libc = ctypes.CDLL("libc.so.6")
    libc.gnu_get_libc_version  # noqa: B018 - present in glibc only (not musl)
  except (OSError, AttributeError):
    return None
  return libc


def _jax_started() -> bool:
  if "jax" not in sys.modules:
    return False
  from jax._src import xla_bridge
  return xla_bridge.backends_are_initialized()


def retain() -> bool:
  """Keeps freed memory in the process (see the module docstring). True when set (or already set),
  False where the C library is not glibc. Raises RuntimeError once JAX has started its backends."""
  if _state["retained"]:
    return True
  libc = _glibc()
  if libc is None:
    return False
  if _jax_started():
    raise RuntimeError("host_memory.retain() must run before JAX starts its backends (before the "
                       "first jax.devices() or computation): its CPU threads have picked their "
                       "malloc arenas by then")
  for param, value in ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, _NEVER_TRIM)):
    if libc.mallopt(param, value) != 1:
      raise RuntimeError(f"glibc mallopt({param}, {value}) failed")
  _state["retained"] = True
  return True


def setup_from_flags() -> bool:
  """The CLIs' entry: retain() when --retain_host_memory is given; -> whether memory is retained."""
  if flags.FLAGS.is_parsed() and flags.FLAGS.retain_host_memory:
    if not retain():
      print("warning: --retain_host_memory needs Linux with glibc; memory is managed as usual",
            file=sys.stderr, flush=True)
  return _state["retained"]


def retained() -> bool:
  """Whether retain() has been applied in this process."""
  return _state["retained"]

"""Keep freed host memory inside the process, so XLA:CPU's large buffers stop page-faulting.

XLA:CPU allocates each execution's temporary buffer (and its outputs) afresh: one block of the
program's whole buffer assignment (117 MB for the default tiny train step). glibc serves blocks
above its mmap threshold (at most 32 MB) with `mmap` and hands them back to the kernel on `free`,
so every call touches fresh pages and the kernel zeroes each one on first touch (30k page faults,
~60 ms of system time, per default train step; 151k per width-384 forward at 4K tokens, batch 2).
And with asynchronous dispatch a call runs on one of the client's worker threads, whose malloc
arena is not the main one: a block too large for such an arena's 64 MB heaps is always mapped
with `mmap`, whatever `M_MMAP_MAX` says (glibc's `sysmalloc` falls back to it).

`retain()` therefore (1) tells glibc (`mallopt`) never to serve a block with `mmap` and never to
trim the heap, and (2) turns off JAX's asynchronous CPU dispatch
(`jax_cpu_enable_async_dispatch`), so single-device programs run on the calling thread and take
their buffers from the main arena: freed buffers stay in the process and later calls reuse them
once the heap has grown to what they need. (An earlier version forced one arena for every thread
instead; XLA's worker threads then contended for it and the tiny step got slower, 0.72x.)
Measured in docs/benchmarks.md ("Where the forward's time goes"): the default tiny train step
1.28x faster (126.8 -> 98.9 ms), the 600M-width step 1.08x (1959 -> 1817 ms); sampling unchanged.
The price: the process keeps its peak heap until it exits, and the Python side of a call no longer
overlaps the previous call (what the faults cost was far more at these sizes).

`python -m sana_jax.train` and `.sample` call it by default on CPU-only installs
(`--noretain_host_memory` to opt out; on an install with a TPU / GPU plugin, or `JAX_PLATFORMS`
naming another platform, it is left off unless asked for). It must run before JAX starts its
backends: an explicit `retain()` refuses afterwards, the CLIs' default silently skips it (a
notebook or test that calls `main` after using JAX). Linux with glibc only; elsewhere it returns
False and changes nothing.
"""
import ctypes
import importlib.metadata
import importlib.util
import os
import pkgutil
import sys

from absl import flags

flags.DEFINE_bool("retain_host_memory", True,
                  "CPU runs: keep freed memory in the process (glibc: no mmap, no trim; JAX's CPU "
                  "dispatch inline) so XLA's large per-call buffers stop page-faulting: the default "
                  "train step 1.28x faster (docs/benchmarks.md). On by default where JAX can only "
                  "use the CPU; --noretain_host_memory turns it off.")

# mallopt parameters (glibc malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
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
                       "first jax.devices() or computation): its CPU client has been made with "
                       "asynchronous dispatch by then")
  for param, value in ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, _NEVER_TRIM)):
    if libc.mallopt(param, value) != 1:
      raise RuntimeError(f"glibc mallopt({param}, {value}) failed")
  import jax  # importing starts no backend
  jax.config.update("jax_cpu_enable_async_dispatch", False)
  _state["retained"] = True
  return True


def _cpu_only() -> bool:
  """Whether this process's JAX will run on the CPU: JAX_PLATFORMS names cpu first, or it is unset
  and no TPU / GPU plugin is installed (libtpu, or a PJRT plugin as JAX finds them: a `jax_plugins`
  entry point or module)."""
  platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
  if platforms:
    return platforms.split(",")[0] == "cpu"
  if importlib.util.find_spec("libtpu") is not None or importlib.metadata.entry_points(group="jax_plugins"):
    return False
  try:
    import jax_plugins
  except ImportError:
    return True
  return not any(pkgutil.iter_modules(jax_plugins.__path__))


def setup_from_flags() -> bool:
  """The CLIs' entry, before JAX starts: retain() when --retain_host_memory is given, or by default
  on a CPU-only install (skipped, not refused, when JAX has already started) -> whether memory is
  retained."""
  if not flags.FLAGS.is_parsed() or not flags.FLAGS.retain_host_memory:
    return _state["retained"]
  explicit = flags.FLAGS["retain_host_memory"].present
  if not explicit and (not _cpu_only() or _jax_started()):
    return _state["retained"]
  if not retain():
    if explicit:
      print("warning: --retain_host_memory needs Linux with glibc; memory is managed as usual",
            file=sys.stderr, flush=True)
  return _state["retained"]


def retained() -> bool:
  """Whether retain() has been applied in this process."""
  return _state["retained"]

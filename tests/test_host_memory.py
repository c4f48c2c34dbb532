"""host_memory.retain(): XLA:CPU's per-call buffers stop page-faulting; refused once JAX has started.

Each case runs in a fresh process (the setting is process-wide and must precede JAX's backends).
"""
import os
import subprocess
import sys

import pytest

from sana_jax import host_memory

FAULTS = """
import resource, sys
from sana_jax import host_memory
if sys.argv[1] == "retain":
  assert host_memory.retain()
import jax, jax.numpy as jnp
x = jnp.ones((16384, 1024), jnp.float32)  # 64 MB
w = jnp.full((1024, 1024), 1e-3, jnp.float32)
f = jax.jit(lambda x, w: jnp.tanh(x @ w) @ w)  # a 64 MB temporary and a new 64 MB output per call
f(x, w).block_until_ready()
faults = []
for _ in range(12):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  y = f(x, w).block_until_ready()
  y.delete()  # freed now, not whenever the runtime gets to it
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(min(faults[-4:]))  # steady state: the heap has grown to what the calls need
"""


def _faults_per_call(mode):  # page faults of one call once the process has settled
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as a user runs
  out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, timeout=300,
                       env=env)
  assert out.returncode == 0, out.stderr[-2000:]
  return float(out.stdout.split()[-1])


@pytest.mark.skipif(host_memory._glibc() is None, reason="needs Linux with glibc")
def test_retain_stops_the_page_faults_of_per_call_buffers():
  usual, retained = _faults_per_call("usual"), _faults_per_call("retain")
  if usual < 8000:  # 64 MB of fresh 4 KiB pages is 16k faults; huge pages or another allocator fault far less
    pytest.skip(f"this system faults only {usual:.0f} times per call without retain()")
  # measured (Intel 2-core VM, glibc 2.36): ~40k-48k per call as usual; retained, 0 once the heap has
  # grown (the first calls still fault while it grows)
  assert retained < usual / 4, (usual, retained)


@pytest.mark.skipif(host_memory._glibc() is None, reason="needs Linux with glibc")
def test_retain_refused_after_jax_started():
  code = ("import jax; jax.devices()\n"
          "from sana_jax import host_memory\n"
          "try:\n  host_memory.retain()\nexcept RuntimeError as e:\n  print('refused:', e)\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "refused: host_memory.retain() must run before JAX starts" in out.stdout

"""mvp_jax.host_memory: with glibc told to keep freed memory, repeated XLA:CPU executions stop
page-faulting their buffers in; without it each one faults its output in again.

Each case runs in a fresh process: the setting is process-wide and must precede JAX's threads.
"""

import json
import platform
import subprocess
import sys

import pytest

from mvp_jax import host_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A 64 MiB output per call (16,384 pages of 4 KiB), allocated by XLA's CPU runtime with malloc.
_CALLS = """
import json, resource, sys
if sys.argv[1] == "reuse":
  from mvp_jax import host_memory
  assert host_memory.reuse_freed_memory()
import jax, jax.numpy as jnp
x = jnp.ones((16 * 2**20,), jnp.float32)
f = jax.jit(lambda x: x * 2)
faults = []
for _ in range(40):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  y = f(x).block_until_ready()
  del y
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(faults))
"""
PAGES = 16 * 2**20 * 4 // 4096


def _faults_per_call(setting: str) -> list[int]:
  r = subprocess.run([sys.executable, "-c", _CALLS, setting], capture_output=True, text=True,
                     timeout=300, env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
  assert r.returncode == 0, r.stderr[-2000:]
  return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt settings exist only in glibc")
def test_reused_memory_stops_the_page_faults_of_repeated_executions():
  default = _faults_per_call("glibc")
  reused = _faults_per_call("reuse")
  # glibc's default: every call maps its 64 MiB output afresh and faults each page in.
  assert all(n >= PAGES for n in default), default
  # Kept memory: the heap grows while earlier outputs' frees are still in flight (a few calls,
  # more on a loaded machine), then the calls reuse it and fault nothing.
  assert all(n < PAGES // 16 for n in reused[-10:]), reused
  assert sum(reused) < sum(default) // 2, (sum(reused), sum(default))


@pytest.mark.parametrize("system, libc", [("Linux", ("musl", "1.2")), ("Darwin", ("", ""))])
def test_other_c_libraries_are_left_alone(monkeypatch, system, libc):
  """Not glibc: nothing is called, and the caller is told (train.py logs it)."""
  monkeypatch.setattr(platform, "system", lambda: system)
  monkeypatch.setattr(platform, "libc_ver", lambda *a, **k: libc)
  monkeypatch.setattr(host_memory.ctypes, "CDLL", lambda *a, **k: pytest.fail("loaded a libc"))
  assert host_memory.reuse_freed_memory() is False

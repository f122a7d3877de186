"""Keeps freed host memory in the process, so that XLA:CPU steps stop page-faulting it back in.

XLA's CPU runtime allocates each execution's temporary buffer and its outputs with ``malloc``.
glibc serves every request above 32 MiB with a fresh ``mmap`` and unmaps it on ``free``, so each
train step faults its whole temporary buffer in again, 4 KiB at a time, with the kernel zeroing
every page: 212K faults (828 MiB) per MiniLM step at batch 32 x 64 and 404K (1.58 GiB) per
BERT-base step at batch 8 x 128. Without them the steps were 21-26% (MiniLM) and 12-19%
(BERT-base) faster on 2 CPU cores (`benchmarks/host_memory.py`, docs/results.md).
`reuse_freed_memory` tells glibc's malloc to use one arena, never ``mmap`` and never give memory
back, so the next step reuses what the last one freed and faults nothing.

The price: the process keeps the memory it frees until it exits (peak RSS +642 MiB for
BERT-base, +859 MiB for MiniLM in the same benchmark; `make demo` 5.4 GiB instead of 3.6, for
504 s of training instead of 560; 1.5 GiB more in short `train.py` runs with or without
evaluation, docs/results.md). On a GPU or TPU host the device buffers
are not ``malloc``'d and the setting only affects the host side.
The same effect without code, in the environment:
``GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=N``
with N more bytes than a step's temporaries, or a caching allocator such as tcmalloc through
``LD_PRELOAD``.

This module uses no JAX (importing the package imports JAX but starts nothing): the call must
come before JAX runs anything (see `reuse_freed_memory`).
"""

import ctypes
import ctypes.util
import platform

# mallopt(3) parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8


def _glibc() -> ctypes.CDLL | None:
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return None
  name = ctypes.util.find_library("c") or "libc.so.6"
  try:
    libc = ctypes.CDLL(name)
  except OSError:
    return None
  return libc if hasattr(libc, "mallopt") else None


def reuse_freed_memory() -> bool:
  """Sets glibc's malloc to keep freed memory for reuse: one arena, no mmap, no trimming.

  Call it at the start of the process, before JAX runs anything (a device query included):
  threads that already have a malloc arena of their own keep serving large requests with
  ``mmap``. Process-wide and not undoable; `train.py` calls it unless
  ``--config.train.reuse_host_memory=False``.

  Returns:
    True if all three settings took effect; False where the C library is not glibc (macOS,
    musl), where it changes nothing.
  """
  libc = _glibc()
  if libc is None:
    return False
  libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  libc.mallopt.restype = ctypes.c_int
  # One arena: glibc's other arenas serve large requests with mmap whatever M_MMAP_MAX says.
  # -1 disables trimming (mallopt(3)), so freed memory at the top of the heap stays too.
  settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))
  return all(libc.mallopt(param, value) == 1 for param, value in settings)

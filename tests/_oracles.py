"""Sort-based reference implementations for the masking tests (no shared code with mvp_jax)."""

import numpy as np


def keep_count(level: float, n: int) -> int:
  """Python int(v * n) with v the float32 level (the double product is exact for n < 2**29)."""
  return int(float(np.float32(level)) * n)


def topk(arrays, k):
  """Joint top-k by a stable argsort: ties keep the first in (array order, flat index) order."""
  flat = np.concatenate([np.asarray(a, np.float32).ravel() for a in arrays])
  order = np.argsort(-flat, kind="stable")
  keep = np.zeros(flat.size, bool)
  keep[order[:k]] = True
  out, start = [], 0
  for a in arrays:
    out.append(keep[start : start + a.size].reshape(a.shape))
    start += a.size
  return out

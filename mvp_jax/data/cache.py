"""On-disk caching of tokenised features through `datasets` Arrow files.

Tokenisation is run with ``datasets.Dataset.map(batched=True)`` (with its progress bar) and the
result written to ``<cache_dir>/<name>-<key>.arrow``; the key hashes everything the features
depend on (texts, labels, tokenizer, lengths, code version), so a second run with the same
inputs memory-maps the file instead of tokenising again, and any change makes a new file.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

DEFAULT_CACHE_DIR = "~/.cache/mvp_jax/features"


def resolve_cache_dir(cache_dir: str | pathlib.Path | None) -> pathlib.Path:
  """``cache_dir`` or ``$MVP_JAX_CACHE`` or ~/.cache/mvp_jax/features, created if needed."""
  d = cache_dir or os.environ.get("MVP_JAX_CACHE") or DEFAULT_CACHE_DIR
  p = pathlib.Path(d).expanduser()
  p.mkdir(parents=True, exist_ok=True)
  return p


def fingerprint(*parts: Any) -> str:
  """A stable 16-hex-digit hash of JSON-serialisable parts (lists of texts included)."""
  h = hashlib.sha256()
  for part in parts:
    h.update(json.dumps(part, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8"))
    h.update(b"\x00")
  return h.hexdigest()[:16]


def cached_map(
  build: Callable[[], Any],
  fn: Callable[[dict[str, list]], dict[str, list]],
  cache_dir: str | pathlib.Path | None,
  name: str,
  desc: str,
  remove_columns: Sequence[str] = (),
  batch_size: int = 1000,
  with_indices: bool = False,
):
  """Loads ``<cache_dir>/<name>.arrow`` if present, else builds the dataset and maps ``fn`` into it.

  Args:
    build: returns the input ``datasets.Dataset`` (only called on a cache miss).
    fn: a batched map function.
    cache_dir: the cache folder (see resolve_cache_dir).
    name: file stem; must encode every input of ``fn`` (use fingerprint()).
    desc: progress-bar label.
    remove_columns: input columns to drop from the output.
    batch_size: examples per map call.
    with_indices: pass the row indices to ``fn`` as its second argument.

  Returns:
    The mapped ``datasets.Dataset`` (memory-mapped from the cache file).
  """
  import datasets

  path = resolve_cache_dir(cache_dir) / f"{name}.arrow"
  if path.is_file():
    try:
      return datasets.Dataset.from_file(str(path))
    except Exception:  # a truncated file from an interrupted run: rebuild it
      path.unlink(missing_ok=True)
  ds = build()
  return ds.map(
    fn,
    batched=True,
    batch_size=batch_size,
    with_indices=with_indices,
    remove_columns=list(remove_columns),
    cache_file_name=str(path),
    load_from_cache_file=False,
    desc=desc,
  )


def to_numpy(ds: Any, keys: Sequence[str]) -> dict[str, np.ndarray]:
  """Columns of a dataset as numpy arrays (fixed-length list columns become 2-D)."""
  table = ds.with_format("numpy", columns=list(keys))[:]
  out = {}
  for k in keys:
    v = table[k]
    if v.dtype == object:  # ragged: should not happen with padding="max_length"
      v = np.stack(list(v))
    out[k] = v
  return out

"""Metrics on disk: a JSON-lines file and TensorBoard scalars, written by process 0 only.

TensorFlow-free: ``tensorboardX`` writes the event files (``clu``'s writers and
``flax.metrics.tensorboard`` need TensorFlow).
"""

from __future__ import annotations

import json
import os
import pathlib
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np


def _to_number(value: Any) -> float | int | str:
  if isinstance(value, str | bool | int):
    return value
  arr = np.asarray(value)
  if arr.size != 1:
    raise TypeError(f"metric values must be scalars, got shape {arr.shape}")
  return arr.reshape(()).item()


class MetricsWriter:
  """Appends metrics to ``workdir/metrics.jsonl`` and TensorBoard events in ``workdir/tb``.

  Each :meth:`write` adds one JSON line ``{"step": s, "time": unix_seconds, "<prefix>/<name>": v,
  ...}`` (flushed at once, so the file is readable while training runs) and one TensorBoard scalar
  per numeric value under the tag ``<prefix>/<name>``. When disabled (processes other than 0) it
  does nothing and creates no files.

  Args:
    workdir: the run directory (created if needed).
    enabled: whether to write; None means "only on process 0".

  >>> import tempfile
  >>> with MetricsWriter(tempfile.mkdtemp(), enabled=True) as writer:
  ...   writer.write(10, {"loss": np.float32(0.5), "accuracy": 0.75})
  ...   line = open(writer.jsonl_path).readline()
  >>> record = json.loads(line)
  >>> record["step"], record["train/loss"], record["train/accuracy"]
  (10, 0.5, 0.75)
  """

  def __init__(self, workdir: str | os.PathLike[str], enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else bool(enabled)
    self.workdir = pathlib.Path(workdir)
    self.jsonl_path = self.workdir / "metrics.jsonl"
    self._file = None
    self._tb = None
    if self.enabled:
      self.workdir.mkdir(parents=True, exist_ok=True)
      # Kept open (closed in close()) so each write is one append + flush.
      self._file = open(self.jsonl_path, "a", encoding="utf-8")
      # Imported here: processes that never write do not pay for it.
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(logdir=str(self.workdir / "tb"))

  def write(self, step: int, metrics: Mapping[str, Any], prefix: str = "train") -> None:
    """Writes scalar ``metrics`` (Python, numpy or jax scalars; strings go to the JSON only).

    Args:
      step: the x-axis value (optimizer step).
      metrics: name -> scalar.
      prefix: prepended as ``prefix/name``; "" for none.
    """
    if not self.enabled:
      return
    step = int(step)
    record: dict[str, Any] = {"step": step, "time": round(time.time(), 3)}
    for name, value in metrics.items():
      tag = f"{prefix}/{name}" if prefix else str(name)
      number = _to_number(value)
      record[tag] = number
      if self._tb is not None and not isinstance(number, str):
        self._tb.add_scalar(tag, float(number), step)
    # NaN/inf are written as the JSON extensions NaN/Infinity, which Python's json reads back.
    self._file.write(json.dumps(record, allow_nan=True) + "\n")
    self._file.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    """Flushes and closes both outputs; later writes are ignored."""
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    self.enabled = False

  def __enter__(self) -> MetricsWriter:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
  """Reads a ``metrics.jsonl`` back as a list of dicts (for reports, notebooks and tests)."""
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


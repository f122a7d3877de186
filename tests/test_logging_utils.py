"""Tests of mvp_jax.logging_utils."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from mvp_jax import logging_utils


def test_jsonl_and_tensorboard(tmp_path):
  with logging_utils.MetricsWriter(tmp_path, enabled=True) as writer:
    writer.write(1, {"loss": jnp.float32(0.5), "lr": np.float64(1e-4), "level": 1})
    # Flushed per write: readable while the writer is still open.
    assert len(logging_utils.read_metrics(tmp_path / "metrics.jsonl")) == 1
    writer.write(2, {"accuracy": 0.75, "note": "best", "loss": float("nan")}, prefix="eval")
    writer.write(3, {"raw": 2.0}, prefix="")
  records = logging_utils.read_metrics(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in records] == [1, 2, 3]
  assert records[0]["train/loss"] == 0.5 and records[0]["train/level"] == 1
  assert records[1]["eval/accuracy"] == 0.75 and records[1]["eval/note"] == "best"
  assert math.isnan(records[1]["eval/loss"]) and records[2]["raw"] == 2.0
  assert all("time" in r for r in records)
  assert list((tmp_path / "tb").glob("events.out.tfevents.*"))

  # Appends across writers (a resumed run).
  with logging_utils.MetricsWriter(tmp_path, enabled=True) as writer:
    writer.write(4, {"loss": 0.1})
  assert len(logging_utils.read_metrics(tmp_path / "metrics.jsonl")) == 4


def test_disabled_writes_nothing(tmp_path):
  writer = logging_utils.MetricsWriter(tmp_path / "run", enabled=False)
  writer.write(1, {"loss": 1.0})
  writer.close()
  assert not (tmp_path / "run").exists()
  # Default: enabled on process 0 only (this test runs as process 0).
  default = logging_utils.MetricsWriter(tmp_path / "p0")
  assert default.enabled
  default.close()


def test_non_scalar_rejected(tmp_path):
  with logging_utils.MetricsWriter(tmp_path, enabled=True) as writer:
    with pytest.raises(TypeError, match="scalars"):
      writer.write(1, {"vec": np.zeros(3)})

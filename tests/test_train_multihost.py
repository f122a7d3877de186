"""Two local CPU processes forming one JAX cluster run train.py and match a 1-process run."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from tiny_bert import make_tiny_bert, xla_flags  # noqa: E402


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _cmd(workdir, model_dir, *extra):
  return [sys.executable, "train.py", "--config", "configs/default.py", "--workdir", str(workdir),
          f"--config.model.name_or_path={model_dir}", "--config.data.max_train_examples=64",
          "--config.data.max_eval_examples=24", "--config.data.max_seq_length=32",
          "--config.train.batch_size=8", "--config.train.eval_batch_size=8",
          "--config.train.max_steps=5", "--config.train.eval_every_steps=0",
          "--config.train.checkpoint_every_steps=2", "--config.train.log_every_steps=1",
          "--config.train.report=False", "--config.train.export=False",
          "--config.train.progress_bar=False", "--config.optim.warmup_steps=1",
          "--config.pruning.initial_warmup=1",
          "--config.optim.learning_rate=1e-3", *extra]


def _losses(workdir):
  rows = [json.loads(x) for x in (pathlib.Path(workdir) / "metrics.jsonl").open()]
  return [r["train/loss"] for r in rows if "train/loss" in r]


def test_two_process_cluster_matches_one_process(tmp_path):
  model_dir = make_tiny_bert(tmp_path / "bert")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  one = subprocess.run(_cmd(tmp_path / "one", model_dir), cwd=REPO, capture_output=True, text=True,
                       timeout=600,
                       env={**env, "XLA_FLAGS": xla_flags(4)})
  assert one.returncode == 0, one.stderr[-3000:]

  port = _free_port()
  procs = [subprocess.Popen(
    _cmd(tmp_path / "two", model_dir, f"--config.distributed.coordinator_address=127.0.0.1:{port}",
         "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"),
    cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    env={**env, "XLA_FLAGS": xla_flags(2)}) for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs, strict=True):
    assert p.returncode == 0, err[-3000:]
  assert "4 devices" in outs[0][1]  # one mesh over both processes' devices
  # Same global batches, same mesh size: the losses agree (collectives differ in reduction order).
  np.testing.assert_allclose(_losses(tmp_path / "two"), _losses(tmp_path / "one"), rtol=1e-5)
  a = json.loads((tmp_path / "one" / "eval_results.json").read_text())
  b = json.loads((tmp_path / "two" / "eval_results.json").read_text())
  assert a["metrics"] == b["metrics"]
  assert a["remaining_weights_paper"] == b["remaining_weights_paper"]

"""Two local CPU processes form one 4-device cluster; results must equal the single-process ones."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "_multihost_worker.py"
sys.path.insert(0, str(REPO / "tests"))
from tiny_bert import xla_flags  # noqa: E402


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_process_global_batch_matches_single_process():
  port = _free_port()
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = xla_flags()
  procs = [subprocess.Popen([sys.executable, str(WORKER), str(port), str(i)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  results = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=120)
      assert p.returncode == 0, f"worker failed ({p.returncode}):\n{err[-3000:]}"
      results.append(json.loads(out.strip().splitlines()[-1]))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()

  x = np.arange(8 * 3, dtype=np.float32).reshape(8, 3) / 7.0
  w = np.linspace(0.0, 1.0, 8, dtype=np.float32)
  want = {"sum": x.sum(), "mean": x.mean(), "ordered": (np.arange(8)[:, None] * x).sum(),
          "weighted": (w[:, None] * x).sum() / w.sum()}
  assert [r["process_index"] for r in results] == [0, 1]
  assert [r["main"] for r in results] == [True, False]
  for r in results:
    assert r["process_count"] == 2 and r["devices"] == 4 and r["local_devices"] == 2
    assert r["mesh"] == {"data": 4, "model": 1} and r["global_shape"] == [8, 3]
    for key, value in want.items():
      np.testing.assert_allclose(r[key], value, rtol=1e-6, err_msg=key)

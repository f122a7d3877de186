"""Shared test fixtures and helpers: a tiny random BERT, tiny run configs, the `train.py` command
line for it, and tools to snapshot, kill and compare runs (used by tests/ and benchmarks/faults.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mvp_jax.data import tokenization
from mvp_jax.models import bert, hf

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))  # the configs package, as train.py sees it


def make_tiny_bert(out_dir: pathlib.Path, *, hidden: int = 32, layers: int = 2, heads: int = 2,
                   ffn: int = 64, seed: int = 0) -> pathlib.Path:
  """Writes a randomly initialised base BERT (MiniLM vocabulary) to out_dir and returns it."""
  config = bert.BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, intermediate_size=ffn,
                           max_position_embeddings=128, hidden_dropout_prob=0.1,
                           attention_probs_dropout_prob=0.1)
  model = bert.model_for_head(config, "base")
  ids = jnp.zeros((1, 8), jnp.int32)
  # Jitted: op by op, init compiles each of its ~70 small ops (about 7 s); as one program it is
  # one compile, which the tests' persistent compilation cache then serves to every module.
  params = jax.jit(model.init)(jax.random.PRNGKey(seed), ids, jnp.ones_like(ids),
                               jnp.zeros_like(ids))
  tok = tokenization.load_tokenizer("packaged:minilm-l6")
  return hf.save_pretrained(params["params"], config, out_dir, head="base", tokenizer=tok)


def tiny_config(model_dir: str | os.PathLike, **overrides: Any):
  """configs/default.py shrunk to a few seconds of training on the tiny BERT.

  Overrides are "group.field" keys, e.g. ``tiny_config(d, **{"pruning.method": "magnitude"})``.
  """
  from configs import default

  c = default.get_config()
  c.model.name_or_path = str(model_dir)
  c.data.max_train_examples = 96
  c.data.max_eval_examples = 40
  c.data.max_seq_length = 32
  c.train.batch_size = 8
  c.train.eval_batch_size = 16
  c.train.max_steps = 6
  c.train.eval_every_steps = 3
  c.train.checkpoint_every_steps = 2
  c.train.log_every_steps = 1
  c.train.progress_bar = False
  c.train.report = False
  c.train.export = False
  c.optim.warmup_steps = 1
  c.pruning.initial_warmup = 1  # the default (2) leaves no pruning steps in 4-step runs
  c.optim.learning_rate = 1e-3
  for key, value in overrides.items():
    group, name = key.split(".")
    c[group][name] = value
  return c


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
  """The rows of a run's metrics.jsonl."""
  return [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").open()]


def cli_args(workdir: str | os.PathLike, model_dir: str | os.PathLike, *extra: str) -> list[str]:
  """The `train.py` command line of an 8-step tiny run checkpointing every step (no export).

  Later flags win, so ``extra`` can override any of these (e.g. "--config.train.export=True").
  """
  return [sys.executable, "train.py", "--config", "configs/default.py", "--workdir", str(workdir),
          f"--config.model.name_or_path={model_dir}", "--config.data.max_train_examples=96",
          "--config.data.max_eval_examples=40", "--config.data.max_seq_length=32",
          "--config.train.batch_size=8", "--config.train.eval_batch_size=16",
          "--config.train.max_steps=8", "--config.train.eval_every_steps=0",
          "--config.train.checkpoint_every_steps=1", "--config.train.log_every_steps=1",
          "--config.train.report=False", "--config.train.export=False",
          "--config.train.progress_bar=False",
          "--config.optim.warmup_steps=1", "--config.pruning.initial_warmup=1",
          "--config.optim.learning_rate=1e-3", *extra]


# The suite compiles with XLA's fast-compile options: the same programs, less optimised machine
# code, and about 40% less compile time, which is most of a tiny run's cost (a tiny train run's
# losses came out bitwise equal with and without them). `MVP_JAX_TEST_FULL_XLA=1 make test` runs
# the suite with XLA's defaults. conftest.py puts them in XLA_FLAGS; subprocesses get `xla_flags`.
TEST_XLA_FLAGS = ("" if os.environ.get("MVP_JAX_TEST_FULL_XLA") == "1" else
                  "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")


def xla_flags(devices: int | None = None) -> str:
  """XLA_FLAGS for a test subprocess: `devices` fake CPU devices (None: one) and TEST_XLA_FLAGS."""
  flags = [f"--xla_force_host_platform_device_count={devices}"] if devices else []
  return " ".join(flags + ([TEST_XLA_FLAGS] if TEST_XLA_FLAGS else []))


def cli_env(devices: int = 8, compile_cache: str | os.PathLike | None = None) -> dict[str, str]:
  """Environment of a `train.py` subprocess: `devices` fake CPU devices, offline.

  ``compile_cache``: a folder for JAX's persistent compilation cache, so that the re-runs of a
  kill/resume test skip XLA compilation (the compiled code is the same, so results are too).
  """
  env = {**os.environ, "XLA_FLAGS": xla_flags(devices),
         "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
         "JAX_PLATFORMS": "cpu"}
  if compile_cache is not None:
    env.update(JAX_COMPILATION_CACHE_DIR=str(compile_cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return env


def run_cli(args: list[str], env: dict[str, str], timeout: float = 600
            ) -> subprocess.CompletedProcess:
  """Runs a command in the repository root, capturing its text output."""
  return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def build_once(path: pathlib.Path, build: Callable[[pathlib.Path], Any]) -> pathlib.Path:
  """``build(path)`` unless a finished build is already there; returns ``path``.

  Concurrent callers (pytest-xdist workers sharing a folder) wait on a file lock, so one builds
  and the others reuse its result. A build that raised leaves no marker and is redone.
  """
  import shutil

  from filelock import FileLock

  done = path.with_name(path.name + ".built")
  with FileLock(str(path) + ".lock"):
    if not done.exists():
      shutil.rmtree(path, ignore_errors=True)
      build(path)
      done.touch()
  return path


# ----------------------------------------------------------------------------- workdir inspection


def snapshot(root: str | os.PathLike) -> dict[str, tuple[int, int, str]]:
  """Every file and folder under root: relative path -> (size, mtime_ns, sha256 of the bytes)."""
  root = pathlib.Path(root)
  out = {}
  if not root.exists():
    return out
  for p in sorted(root.rglob("*")):
    st = p.stat()
    digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
    out[str(p.relative_to(root))] = (st.st_size if p.is_file() else 0, st.st_mtime_ns, digest)
  return out


def checkpoint_steps(workdir: str | os.PathLike) -> list[int]:
  """The finished checkpoint steps on disk (orbax renames a step folder to its number when done)."""
  d = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in d.glob("*") if p.name.isdigit()) if d.is_dir() else []


def tmp_checkpoints(workdir: str | os.PathLike) -> list[pathlib.Path]:
  """Checkpoint folders orbax is still writing (`<step>.orbax-checkpoint-tmp-*`)."""
  d = pathlib.Path(workdir) / "checkpoints"
  return sorted(d.glob("*.orbax-checkpoint-tmp*")) if d.is_dir() else []


def kill_when(proc: subprocess.Popen, condition: Callable[[], bool], sig: int = signal.SIGKILL,
              timeout: float = 300, poll: float = 0.02) -> bool:
  """Sends `sig` to `proc` as soon as `condition()` holds; False if proc ended first."""
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if condition():
      proc.send_signal(sig)
      return True
    time.sleep(poll)
  return False


# ----------------------------------------------------------------------------- run comparison


def _flat(tree: Any) -> dict[str, np.ndarray]:
  from flax import traverse_util
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(dict(tree), sep="/").items()}


def _tree_diff(a: Any, b: Any) -> tuple[bool, float]:
  """(bitwise equal, max |a - b|) over two trees of arrays with the same paths."""
  fa, fb = _flat(a), _flat(b)
  if set(fa) != set(fb):
    return False, float("inf")
  bitwise, worst = True, 0.0
  for k in fa:
    x, y = fa[k], fb[k]
    if x.shape != y.shape or x.dtype != y.dtype:
      return False, float("inf")
    bitwise &= x.tobytes() == y.tobytes()
    if x.size:
      worst = max(worst, float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))))
  return bitwise, worst


def _last_per_step(workdir: pathlib.Path) -> dict[tuple[int, str], float]:
  """metrics.jsonl as (step, key) -> value, the last row winning (a resumed run re-logs the
  steps after its last checkpoint), without the wall-clock fields."""
  out = {}
  for row in read_metrics(workdir):
    for k, v in row.items():
      if k not in ("step", "time", "train/examples_per_sec"):
        out[(row["step"], k)] = v
  return out


def _safetensors_parts(path: pathlib.Path) -> tuple[dict[str, Any], bytes]:
  """(parsed JSON header, tensor bytes) of a .safetensors file."""
  data = path.read_bytes()
  n = int.from_bytes(data[:8], "little")
  return json.loads(data[8:8 + n]), data[8 + n:]


def _same_file(a: pathlib.Path, b: pathlib.Path) -> bool:
  """Byte-identical files; for .safetensors, identical tensor bytes and an equal header.

  The safetensors writer serialises the `__metadata__` map in a per-process hash order, so two
  exports of the same arrays can differ in the order of the header's metadata keys only.
  """
  if not (a.is_file() and b.is_file()):
    return False
  if a.suffix == ".safetensors":
    return _safetensors_parts(a) == _safetensors_parts(b)
  return a.read_bytes() == b.read_bytes()


def compare_runs(a: str | os.PathLike, b: str | os.PathLike) -> dict[str, Any]:
  """How two finished runs' outputs differ: final params and scores (from the last checkpoint,
  via `run_io.load_run`), exported files, eval_results.json and metrics.jsonl.

  Returns a JSON-able dict; ``identical`` is True when everything is bitwise the same (for
  .safetensors files: the same tensor bytes and header, see `_same_file`).
  """
  from mvp_jax import run_io

  a, b = pathlib.Path(a), pathlib.Path(b)
  ra, rb = run_io.load_run(a), run_io.load_run(b)
  params_bitwise, params_diff = _tree_diff(ra.params, rb.params)
  scores_bitwise, scores_diff = _tree_diff(ra.scores, rb.scores)
  out: dict[str, Any] = {
    "step": [ra.step, rb.step],
    "params_bitwise": params_bitwise, "params_max_abs_diff": params_diff,
    "scores_bitwise": scores_bitwise, "scores_max_abs_diff": scores_diff,
  }
  res_a = json.loads((a / "eval_results.json").read_text())
  res_b = json.loads((b / "eval_results.json").read_text())
  for r in (res_a, res_b):
    r.pop("train_wall_time_s", None)
  out["eval_results_equal"] = res_a == res_b
  out["eval_metric_max_abs_diff"] = max(
    (abs(res_a["metrics"][k] - res_b["metrics"].get(k, np.inf)) for k in res_a["metrics"]),
    default=0.0)
  ma, mb = _last_per_step(a), _last_per_step(b)
  out["metrics_equal"] = ma == mb
  out["metrics_max_rel_diff"] = max(
    (abs(ma[k] - mb[k]) / max(abs(ma[k]), 1e-12) for k in ma if k in mb), default=0.0
  ) if set(ma) == set(mb) else float("inf")
  export_a, export_b = a / "export", b / "export"
  if export_a.is_dir() or export_b.is_dir():
    from safetensors.numpy import load_file
    names = sorted({p.name for p in export_a.iterdir()} | {p.name for p in export_b.iterdir()})
    out["export_files_identical"] = {n: _same_file(export_a / n, export_b / n) for n in names}
    ta, tb = load_file(export_a / "model.safetensors"), load_file(export_b / "model.safetensors")
    out["export_bitwise"], out["export_max_abs_diff"] = _tree_diff(ta, tb)
  out["identical"] = bool(
    params_bitwise and scores_bitwise and out["eval_results_equal"] and out["metrics_equal"]
    and all(out.get("export_files_identical", {}).values()))
  return out

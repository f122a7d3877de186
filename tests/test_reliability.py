"""Reliability of the trainer (issue 7; docs/reliability.md): kill and resume, SIGTERM, non-finite
steps, bf16 compute, and determinism across reruns and device counts.

Runs go through the real `train.py` command line in subprocesses (8 fake CPU devices unless
stated). A module-wide JAX compilation cache makes the re-runs skip XLA compilation; the first,
uninterrupted reference run compiles from scratch.
"""

import json
import pathlib
import platform
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from tiny_bert import (  # noqa: E402
  REPO,
  build_once,
  checkpoint_steps,
  cli_args,
  cli_env,
  compare_runs,
  kill_when,
  make_tiny_bert,
  read_metrics,
  run_cli,
  snapshot,
  tiny_config,
  tmp_checkpoints,
  xla_flags,
)

from mvp_jax import checkpoint, masks, run_config, run_io, trainer  # noqa: E402

EXPORT = "--config.train.export=True"
# 1 vs 8 devices differ only by float32 reduction order (the gradient all-reduce, the sharded
# batch): measured max |diff| ~1.2e-7 on params and scores after the 8 steps, ~2e-7 relative on
# logged losses (docs/reliability.md, benchmarks/results/faults.json). Bounds with margin:
DEVICE_COUNT_ATOL = 1e-6
DEVICE_COUNT_METRICS_RTOL = 1e-5


# The model, the compilation cache and the reference run are built once per session and shared by
# the xdist workers that run this module's tests.
@pytest.fixture(scope="module")
def tiny_dir(session_dir):
  return build_once(session_dir / "reliability_bert", make_tiny_bert)


@pytest.fixture(scope="module")
def env(session_dir):
  cache = session_dir / "reliability_jax_cache"
  cache.mkdir(exist_ok=True)
  return cli_env(devices=8, compile_cache=cache)


@pytest.fixture(scope="module")
def reference(tiny_dir, env, session_dir):
  """An uninterrupted 8-step run with export, on 8 devices."""
  def run(workdir):
    r = run_cli(cli_args(workdir, tiny_dir, EXPORT), env)
    assert r.returncode == 0, r.stderr[-3000:]
    # train.reuse_host_memory is on by default (mvp_jax.host_memory); this run is what the
    # in-process runs below are compared with bit for bit.
    kept = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert ("host memory: malloc keeps freed memory" in r.stderr) is kept, r.stderr[-3000:]

  return build_once(session_dir / "reliability_reference", run)


def _all_finite(tree) -> bool:
  return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(tree))


def test_sigkill_during_checkpoint_write_then_sigterm_then_resume_is_bitwise(
    tiny_dir, env, reference, tmp_path):
  workdir = tmp_path / "run"
  args = cli_args(workdir, tiny_dir, EXPORT)
  # 1. SIGKILL while orbax writes a checkpoint (its tmp folder exists), once one is finished.
  proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  killed = kill_when(proc, lambda: bool(tmp_checkpoints(workdir) and checkpoint_steps(workdir)))
  proc.wait()
  assert killed, "the run ended before a checkpoint write could be interrupted"
  assert not (workdir / "eval_results.json").exists()
  partial = [int(p.name.split(".")[0]) for p in tmp_checkpoints(workdir)]
  finished = checkpoint_steps(workdir)
  # The half-written step is never read as valid: the latest step is a finished one, older than
  # any unfinished write, and restores with finite values.
  with checkpoint.Checkpointer(workdir / "checkpoints") as ckpt:
    latest = ckpt.latest_step()
    assert latest == max(finished)
    assert all(latest < p for p in partial)
  run = run_io.load_run(workdir)
  assert run.step == latest and _all_finite((run.params, run.scores))

  # 2. SIGTERM after the resumed run has saved a newer step: it saves and exits with 128 + 15.
  proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  assert kill_when(proc, lambda: max(checkpoint_steps(workdir), default=-1) > latest,
                   sig=signal.SIGTERM)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
  assert "Resumed from step" in stderr
  stop = re.search(r"stopped by signal 15 at step (\d+); checkpoint saved; re-run", stderr)
  assert stop, stderr[-3000:]
  assert max(checkpoint_steps(workdir)) == int(stop.group(1))
  assert not (workdir / "eval_results.json").exists()

  # 3. The same command finishes the run: everything equals the uninterrupted run, bitwise.
  r = run_cli(args, env)
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"Resumed from step {stop.group(1)}" in r.stderr
  assert not tmp_checkpoints(workdir)  # the unfinished write was cleaned up or redone
  diff = compare_runs(reference, workdir)
  assert diff["identical"], diff
  assert diff["export_bitwise"] and all(diff["export_files_identical"].values()), diff


def test_sigkill_between_steps_then_rerun_is_bitwise(tiny_dir, env, reference, tmp_path):
  # The common kill: a few checkpoints on disk, no write seen in progress. Re-running the same
  # command resumes and ends identical to the uninterrupted run (params, scores, export, metrics).
  workdir = tmp_path / "run"
  args = cli_args(workdir, tiny_dir, EXPORT)
  proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  assert kill_when(proc, lambda: max(checkpoint_steps(workdir), default=-1) >= 3
                   and not tmp_checkpoints(workdir)), "the run ended before it could be killed"
  proc.wait()
  assert not (workdir / "eval_results.json").exists()
  r = run_cli(args, env)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "Resumed from step" in r.stderr
  assert "Remaining encoder weights" in r.stdout  # the summary of a finished run
  diff = compare_runs(reference, workdir)
  assert diff["identical"], diff


# L0 samples its masks from the step's key, so the PRNG implementation reaches the weights.
L0 = ("--config.pruning.method=l0", "--config.pruning.initial_level=1.0",
      "--config.pruning.final_level=1.0", "--config.pruning.final_lambda=5.0",
      "--config.pruning.score_scale=2.197")


def test_rbg_prng_run_resumes_bitwise_and_other_prngs_refuse_it_by_name(tiny_dir, env, tmp_path):
  # JAX_DEFAULT_PRNG_IMPL=rbg (common on TPUs) keeps uint32[4] key data in the state instead of
  # threefry2x32's uint32[2]. Killed and resumed under rbg, an L0 run ends identical to the
  # uninterrupted one; a process under threefry2x32, or under unsafe_rbg (whose keys have rbg's
  # shape, so only the recorded name tells them apart), refuses its checkpoint with one error
  # that names both implementations, and leaves the workdir as it was.
  rbg = {**env, "JAX_DEFAULT_PRNG_IMPL": "rbg"}
  threefry = {k: v for k, v in env.items() if k != "JAX_DEFAULT_PRNG_IMPL"}
  unsafe = {**env, "JAX_DEFAULT_PRNG_IMPL": "unsafe_rbg"}
  whole = tmp_path / "whole"
  r = run_cli(cli_args(whole, tiny_dir, *L0), rbg)
  assert r.returncode == 0, r.stderr[-3000:]
  workdir = tmp_path / "run"
  args = cli_args(workdir, tiny_dir, *L0)
  proc = subprocess.Popen(args, cwd=REPO, env=rbg, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  assert kill_when(proc, lambda: max(checkpoint_steps(workdir), default=-1) >= 3
                   and not tmp_checkpoints(workdir)), "the run ended before it could be killed"
  proc.wait()
  before = snapshot(workdir)
  for other, name in ((threefry, "threefry2x32"), (unsafe, "unsafe_rbg")):
    r = run_cli(args, other)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert re.search(r"written under jax_default_prng_impl='rbg' but this process uses "
                     rf"'{name}'; resume with the same implementation "
                     r"\(JAX_DEFAULT_PRNG_IMPL=rbg\)", r.stderr), r.stderr[-3000:]
    assert snapshot(workdir) == before
  r = run_cli(args, rbg)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "Resumed from step" in r.stderr
  diff = compare_runs(whole, workdir)
  assert diff["identical"], diff


@pytest.mark.parametrize("learning_rate,what", [
  # Params blow up to ~1e30 (still finite): the next loss overflows and is caught before saving.
  ("1e30", "loss"),
  # An infinite rate makes the parameters themselves NaN while the step's loss is finite: the
  # state check before every save catches it.
  ("1e39", "parameters or scores"),
])
def test_non_finite_step_stops_the_run_and_keeps_the_last_good_checkpoint(
    tiny_dir, env, tmp_path, learning_rate, what):
  workdir = tmp_path / "run"
  r = run_cli(cli_args(workdir, tiny_dir, f"--config.optim.learning_rate={learning_rate}"), env)
  assert r.returncode == 3, r.stderr[-3000:]
  assert "Traceback" not in r.stderr
  m = re.search(rf"error: non-finite {what}.*? (?:at|after) optimizer step (\d+)", r.stderr)
  assert m, r.stderr[-3000:]
  bad_step = int(m.group(1))
  assert "last good checkpoint is kept" in r.stderr
  steps = checkpoint_steps(workdir)
  assert not tmp_checkpoints(workdir)
  assert all(s < bad_step for s in steps), (steps, bad_step)
  assert not (workdir / "eval_results.json").exists()
  if steps:
    run = run_io.load_run(workdir)
    assert run.step == max(steps) and _all_finite((run.params, run.scores))
  if what == "loss":
    assert steps, "expected checkpoints before the step that overflowed"


def test_bf16_compute_keeps_float32_scores_and_exact_mask_counts(tiny_dir, tmp_path):
  c = tiny_config(tiny_dir, **{"model.dtype": "bfloat16", "train.eval_every_steps": 0})
  results = trainer.train_and_evaluate(c, tmp_path)
  run = run_io.load_run(tmp_path)
  dtypes = {np.asarray(x).dtype for x in jax.tree.leaves((run.params, run.scores))}
  assert dtypes == {np.dtype(np.float32)}
  # The masks the step computed (logged as remaining_plain at every step, from the level of that
  # step) keep exactly floor(float32(level) * N) weights of every N-weight matrix.
  sizes = [np.asarray(s).size for s in jax.tree.leaves(run.scores)]
  rows = [r for r in read_metrics(tmp_path) if "train/level" in r]
  assert len(rows) == 6 and len({r["train/level"] for r in rows}) > 2
  for r in rows:
    kept = sum(int(masks.keep_count(r["train/level"], n)) for n in sizes)
    assert r["train/remaining_plain"] == kept / sum(sizes), r
  assert results["remaining_weights_plain"] == sum(
    int(masks.keep_count(c.pruning.final_level, n)) for n in sizes) / sum(sizes)


def test_rerun_in_process_equals_the_cli_run_bitwise(tiny_dir, reference, tmp_path):
  """Same config and seed, in this process instead of train.py's: the same bits.

  The subprocesses use this module's compilation cache and this process the session's, so the
  program is compiled again here unless an earlier in-process test compiled the same one.
  """
  c = tiny_config(tiny_dir, **{"train.max_steps": 8, "train.eval_every_steps": 0,
                               "train.checkpoint_every_steps": 1, "train.export": True})
  assert json.loads((reference / "config.json").read_text()) == json.loads(run_config.to_json(c))
  trainer.train_and_evaluate(c, tmp_path)
  diff = compare_runs(reference, tmp_path)
  assert diff["identical"], diff


def test_one_device_matches_eight_devices_within_tolerance(tiny_dir, env, reference, tmp_path):
  r = run_cli(cli_args(tmp_path / "run", tiny_dir, EXPORT),
              {**env, "XLA_FLAGS": xla_flags(1)})
  assert r.returncode == 0, r.stderr[-3000:]
  assert "1 devices" in r.stderr
  diff = compare_runs(reference, tmp_path / "run")
  print("1 vs 8 devices:", json.dumps(diff))
  assert diff["params_max_abs_diff"] <= DEVICE_COUNT_ATOL, diff
  assert diff["scores_max_abs_diff"] <= DEVICE_COUNT_ATOL, diff
  assert diff["export_max_abs_diff"] <= DEVICE_COUNT_ATOL, diff
  assert diff["metrics_max_rel_diff"] <= DEVICE_COUNT_METRICS_RTOL, diff
  # Same masks: a flipped mask entry would change an exported weight by ~1e-2.
  assert diff["eval_metric_max_abs_diff"] == 0.0, diff

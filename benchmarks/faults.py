"""Fault injection: kill `train.py` at random points, re-run the same command, repeat; then check
that the finished run is bitwise the uninterrupted one.

Each trial starts a tiny fine-pruning run (a random 2-layer BERT, 8 fake CPU devices, checkpoint
every step, export on) and kills it `--kills` times before letting it finish. A kill is, at random:

* ``SIGKILL`` after a random delay (anywhere: start-up, compilation, a step, an eval, the export);
* ``SIGKILL`` or ``SIGTERM`` 0-0.5 s after a random training step was logged;
* ``SIGKILL`` as soon as orbax's ``*.orbax-checkpoint-tmp*`` folder appears (during a write);
* ``SIGTERM`` after a random delay (the trainer saves and exits with 128 + 15).

After every kill the checkpoint folder is inspected: the latest step must be a finished one (never
a half-written tmp folder) and restore with finite values. The finished run is compared with the
reference run: final params and scores from the last checkpoint, the exported files byte for byte,
eval_results.json and metrics.jsonl. Also measured: a plain rerun (bitwise?) and a 1-device run vs
the 8-device reference (max abs difference). Results go to benchmarks/results/faults.json.

  python benchmarks/faults.py                 # 6 trials x 3 kills
  python benchmarks/faults.py --trials 1 --kills 2 --out /tmp/faults.json   # a smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from tiny_bert import (  # noqa: E402
  checkpoint_steps,
  cli_args,
  cli_env,
  compare_runs,
  kill_when,
  make_tiny_bert,
  read_metrics,
  tmp_checkpoints,
)

from mvp_jax import checkpoint, run_io  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "faults.json"
MODES = ("sigkill_random", "sigkill_at_step", "sigkill_checkpoint_write", "sigterm_random",
         "sigterm_at_step")


def _rows(workdir: pathlib.Path) -> int:
  path = workdir / "metrics.jsonl"
  return len(read_metrics(workdir)) if path.is_file() else 0


def _last_train_step(workdir: pathlib.Path) -> int:
  path = workdir / "metrics.jsonl"
  if not path.is_file():
    return 0
  return max((r["step"] for r in read_metrics(workdir) if "train/loss" in r), default=0)


def _place(workdir: pathlib.Path, rows_at_launch: int, steps: int) -> str:
  """Where a kill landed, judged from the workdir at the moment of the kill."""
  if tmp_checkpoints(workdir):
    return "checkpoint write"
  if _rows(workdir) <= rows_at_launch:
    return "start-up/compilation"
  if _last_train_step(workdir) >= steps:
    return "final eval/export"
  return "training"


def _check_checkpoints(workdir: pathlib.Path, partial: list[int]) -> dict[str, Any]:
  """The latest checkpoint is a finished step, older than any half-written one, and restores."""
  finished = checkpoint_steps(workdir)
  out: dict[str, Any] = {"finished_steps": finished, "partial_steps": partial}
  if not finished:
    out["latest_valid"] = True  # nothing saved yet: a re-run starts from scratch
    return out
  with checkpoint.Checkpointer(workdir / "checkpoints") as ckpt:
    latest = ckpt.latest_step()
  run = run_io.load_run(workdir)
  finite = all(bool(np.all(np.isfinite(np.asarray(x))))
               for x in jax.tree.leaves((run.params, run.scores)))
  out.update(latest=latest, latest_valid=bool(
    latest == max(finished) and all(latest < p for p in partial) and finite
    and run.step == latest))
  return out


def _launch(args: list[str], env: dict[str, str]) -> subprocess.Popen:
  return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)


def run_trial(index: int, args: list[str], env: dict[str, str], workdir: pathlib.Path,
              kills: int, steps: int, launch_s: float, rng: random.Random) -> dict[str, Any]:
  """One run killed `kills` times, then finished; returns every kill's record."""
  records = []
  while len(records) < kills:
    mode = rng.choice(MODES)
    rows = _rows(workdir)
    delay = rng.uniform(0.5, launch_s)
    t0 = time.time()
    proc = _launch(args, env)
    target = None
    if mode == "sigkill_checkpoint_write":
      # Skip a random number of writes so that kills spread over the run.
      skip = rng.randrange(0, max(1, steps // 2))
      seen: set[str] = set()

      def writing(seen: set[str] = seen, skip: int = skip) -> bool:
        names = {p.name for p in tmp_checkpoints(workdir)}
        seen.update(names)
        return bool(names) and len(seen) > skip

      landed = kill_when(proc, writing, sig=signal.SIGKILL, timeout=600, poll=0.01)
      if not landed:  # the run ended before `skip` writes: kill nothing this time
        delay = None
    elif mode.endswith("_at_step"):
      # Once this launch has logged a random step (past the resume point), after 0-0.5 s more:
      # spreads kills over the training steps, which a plain random delay mostly misses.
      target = rng.randint(max(checkpoint_steps(workdir), default=0) + 1, steps)
      delay = rng.uniform(0.0, 0.5)
      sig = signal.SIGKILL if mode.startswith("sigkill") else signal.SIGTERM
      reached: dict[str, float] = {}

      def at_step(target: int = target, delay: float = delay, rows: int = rows,
                  reached: dict[str, float] = reached) -> bool:
        if "t" not in reached and _rows(workdir) > rows and _last_train_step(workdir) >= target:
          reached["t"] = time.time()
        return "t" in reached and time.time() - reached["t"] >= delay

      landed = kill_when(proc, at_step, sig=sig, timeout=600)
    else:
      sig = signal.SIGKILL if mode == "sigkill_random" else signal.SIGTERM
      landed = kill_when(proc, lambda t0=t0, delay=delay: time.time() - t0 >= delay, sig=sig,
                         timeout=600)
    place = _place(workdir, rows, steps) if landed else "after exit (not a kill)"
    _, stderr = proc.communicate(timeout=600)
    partial = sorted(int(p.name.split(".")[0]) for p in tmp_checkpoints(workdir))
    record = {"trial": index, "mode": mode, "delay_s": None if delay is None else round(delay, 2),
              "target_step": target, "landed": landed, "place": place,
              "returncode": proc.returncode,
              "elapsed_s": round(time.time() - t0, 2),
              "finished_run": (workdir / "eval_results.json").is_file()}
    if mode.startswith("sigterm") and landed:
      # 143: the trainer saved and exited; -15: the signal came before the trainer's handler was
      # installed (start-up) or after it was removed (final export), so the process just died;
      # 0: the signal came during the last step, which finishes the run instead.
      record["sigterm_outcome"] = {128 + signal.SIGTERM: "saved and exited 143",
                                   -signal.SIGTERM: "terminated (no handler yet/any more)",
                                   0: "finished the run"}.get(proc.returncode, "unexpected")
      record["last_stderr_line"] = stderr.strip().splitlines()[-1][:200] if stderr.strip() else ""
    record.update(_check_checkpoints(workdir, partial))
    print(f"  trial {index} kill {len(records) + 1}: {mode:26s} -> {place:22s} "
          f"rc={proc.returncode} steps={record['finished_steps']} partial={partial}", flush=True)
    records.append(record)
    if record["finished_run"]:
      break  # the run completed before this kill; nothing left to interrupt
  final = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  return {"trial": index, "kills": records, "final_returncode": final.returncode,
          "final_stderr_tail": final.stderr[-500:] if final.returncode else ""}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--trials", type=int, default=6, help="runs to kill and finish")
  parser.add_argument("--kills", type=int, default=3, help="kills per run before it finishes")
  parser.add_argument("--steps", type=int, default=8, help="optimizer steps of each run")
  parser.add_argument("--seed", type=int, default=0, help="seeds the kill modes and delays")
  parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
  parser.add_argument("--keep", action="store_true", help="keep the temporary workdirs")
  a = parser.parse_args()
  rng = random.Random(a.seed)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix="mvp_faults_"))
  model_dir = make_tiny_bert(tmp / "bert")
  env = cli_env(devices=8, compile_cache=tmp / "jax_cache")
  extra = ("--config.train.export=True", f"--config.train.max_steps={a.steps}")
  args_for = lambda w: cli_args(w, model_dir, *extra)  # noqa: E731

  print("reference run (compiles) ...", flush=True)
  t0 = time.time()
  ref = subprocess.run(args_for(tmp / "reference"), cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=900)
  if ref.returncode:
    sys.exit(f"the reference run failed:\n{ref.stderr[-3000:]}")
  reference_s = time.time() - t0
  t0 = time.time()
  rerun = subprocess.run(args_for(tmp / "rerun"), cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=900)
  launch_s = time.time() - t0  # a launch with a warm compilation cache: the kill window
  rerun_diff = compare_runs(tmp / "reference", tmp / "rerun") if not rerun.returncode else None
  print(f"reference {reference_s:.0f} s, cached rerun {launch_s:.0f} s, rerun identical: "
        f"{rerun_diff and rerun_diff['identical']}", flush=True)

  one = subprocess.run(args_for(tmp / "one_device"), cwd=ROOT,
                       env={**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"},
                       capture_output=True, text=True, timeout=900)
  device_diff = compare_runs(tmp / "reference", tmp / "one_device") if not one.returncode else None

  trials = []
  for i in range(a.trials):
    workdir = tmp / f"trial{i}"
    trial = run_trial(i, args_for(workdir), env, workdir, a.kills, a.steps, launch_s, rng)
    trial["comparison"] = (compare_runs(tmp / "reference", workdir)
                           if trial["final_returncode"] == 0 else None)
    trial["identical"] = bool(trial["comparison"] and trial["comparison"]["identical"])
    print(f"trial {i}: identical to the uninterrupted run: {trial['identical']}", flush=True)
    trials.append(trial)

  kills = [k for t in trials for k in t["kills"]]
  landed = [k for k in kills if k["landed"]]
  survived = [k for t in trials for k in t["kills"] if k["landed"] and t["identical"]
              and k["latest_valid"]]
  summary = {
    "kills_tried": len(kills),
    "kills_landed": len(landed),
    "kills_survived": len(survived),
    "trials_identical": sum(t["identical"] for t in trials),
    "trials": len(trials),
    "by_place": dict(Counter(k["place"] for k in landed)),
    "by_mode": dict(Counter(k["mode"] for k in landed)),
    "sigterm_outcomes": dict(Counter(k["sigterm_outcome"] for k in landed
                                     if "sigterm_outcome" in k)),
    "latest_checkpoint_always_valid": all(k["latest_valid"] for k in kills),
    "rerun_bitwise": bool(rerun_diff and rerun_diff["identical"]),
    "one_vs_eight_devices_params_max_abs_diff": device_diff and device_diff["params_max_abs_diff"],
    "one_vs_eight_devices_scores_max_abs_diff": device_diff and device_diff["scores_max_abs_diff"],
  }
  out = {
    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "platform": platform.platform(), "cpus": os.cpu_count(),
    "jax": jax.__version__, "devices": "8 fake CPU devices (1 for the device-count check)",
    "run": {"model": "random BERT, 2 layers, hidden 32", "steps": a.steps,
            "checkpoint_every_steps": 1, "batch_size": 8, "method": "topk (local)"},
    "args": vars(a) | {"out": str(a.out)},
    "reference_wall_s": round(reference_s, 1), "cached_launch_wall_s": round(launch_s, 1),
    "summary": summary,
    "rerun": rerun_diff,
    "one_vs_eight_devices": device_diff,
    "trials": trials,
  }
  a.out.parent.mkdir(parents=True, exist_ok=True)
  a.out.write_text(json.dumps(out, indent=2, default=str) + "\n")
  print(json.dumps(summary, indent=2))
  print(f"wrote {a.out}")
  if not a.keep:
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)
  else:
    print(f"workdirs kept in {tmp}")


if __name__ == "__main__":
  main()

"""Train-step time with glibc's default malloc vs `mvp_jax.host_memory.reuse_freed_memory`.

The setting is process-wide and must precede JAX's threads, so one run starts two worker
processes per model, one per setting, each compiling the same `step.py` variants. The parent
then times them round-robin, one step at a time (the workers never run at once): round r runs
every (setting, variant) pair, S timed steps each, in an order that rotates every round, so
machine noise hits both settings alike. Each step also counts the minor page faults it caused
(`getrusage`). Results (medians, faults per step, each worker's peak RSS) go to
benchmarks/results/host_memory.json; `report.py` renders them into docs/results.md.

  python benchmarks/host_memory.py                          # MiniLM and BERT-base (~10 min)
  python benchmarks/host_memory.py --models minilm --rounds 2 --steps 1   # shorter

Weights are random, of each model's shape (a step's time does not depend on their values).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "host_memory.json"
SETTINGS = ("glibc", "reuse")  # malloc as the C library sets it / `reuse_freed_memory`
PLANS = {
  "minilm": dict(batch_size=32, seq_len=64, variants="dense,topk_local,sigmoid_threshold"),
  "bert-base": dict(batch_size=8, seq_len=128, variants="dense,topk_local"),
  "tiny": dict(batch_size=4, seq_len=16, variants="dense,topk_local"),  # the smoke test's
}
REPLY = "@@ "  # prefix of the worker's protocol lines on stdout (anything else is ignored)


# ----------------------------------------------------------------------------------------------
# Worker: one process per setting, steps on request
# ----------------------------------------------------------------------------------------------


def _send(obj: dict[str, Any]) -> None:
  print(REPLY + json.dumps(obj), flush=True)


def worker(setting: str, model_name: str, variants: Sequence[str], batch_size: int,
           seq_len: int) -> None:
  """Builds the variants, then answers one JSON request per stdin line until "quit"."""
  import resource

  sys.path.insert(0, str(ROOT))
  from mvp_jax import host_memory

  applied = host_memory.reuse_freed_memory() if setting == "reuse" else False
  # Only now JAX (step.py imports it; nothing ran before the setting).
  sys.path.insert(0, str(ROOT / "benchmarks"))
  import step

  config = {"minilm": step.minilm_config, "bert-base": step.bert_base_config,
            "tiny": step.tiny_config}[model_name]()
  model, params = step.random_model(config)
  batch = step.make_batch(config, batch_size, seq_len)
  built = {
    name: step.build_jax_variant(name, model, params, batch, level=0.1, tau=0.69,
                                 l0_lambda=1.0, sigmoid_lambda=1.0)
    for name in variants
  }
  _send({"ready": True, "applied": applied,
         "temp_mib": {n: (v.memory["temp"] or 0) / 2**20 for n, v in built.items()}})

  def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

  for line in sys.stdin:
    req = json.loads(line)
    if req.get("quit"):
      break
    v = built[req["variant"]]
    v.start_round()
    for _ in range(req.get("warmup", 0)):
      v.step()
    times, counts = [], []
    for _ in range(req["steps"]):
      before = faults()
      times.append(v.step())
      counts.append(faults() - before)
    v.end_round()
    _send({"times_s": times, "faults": counts})
  _send({"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024})


# ----------------------------------------------------------------------------------------------
# Parent: round-robin over the workers
# ----------------------------------------------------------------------------------------------


class Worker:
  """A worker process and its line protocol."""

  def __init__(self, setting: str, model_name: str, plan: dict[str, Any]):
    self.setting = setting
    self.proc = subprocess.Popen(
      [sys.executable, __file__, "--worker", setting, "--models", model_name,
       "--variants", plan["variants"], "--batch-size", str(plan["batch_size"]),
       "--seq-len", str(plan["seq_len"])],
      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)

  def read(self) -> dict[str, Any]:
    for line in self.proc.stdout:
      if line.startswith(REPLY):
        return json.loads(line[len(REPLY):])
    raise RuntimeError(f"{self.setting} worker ended early (exit {self.proc.wait()})")

  def ask(self, req: dict[str, Any]) -> dict[str, Any]:
    self.proc.stdin.write(json.dumps(req) + "\n")
    self.proc.stdin.flush()
    return self.read()

  def close(self) -> dict[str, Any]:
    reply = self.ask({"quit": True})
    self.proc.wait(timeout=120)
    return reply


def bench_model(model_name: str, plan: dict[str, Any], rounds: int, steps: int,
                log=print) -> dict[str, Any]:
  variants = plan["variants"].split(",")
  start = time.perf_counter()
  workers = {s: Worker(s, model_name, plan) for s in SETTINGS}
  try:
    ready = {s: w.read() for s, w in workers.items()}  # both compile at once: not timed
    log(f"{model_name}: compiled in {time.perf_counter() - start:.0f}s; settings applied: "
        + ", ".join(f"{s} {r['applied']}" for s, r in ready.items()))
    times = {s: {v: [] for v in variants} for s in SETTINGS}
    faults = {s: {v: [] for v in variants} for s in SETTINGS}
    order = [(s, v) for v in variants for s in SETTINGS]
    for r in range(rounds):
      for s, v in order:
        reply = workers[s].ask({"variant": v, "steps": steps, "warmup": 1 if r == 0 else 0})
        times[s][v] += reply["times_s"]
        faults[s][v] += reply["faults"]
      log(f"  round {r + 1}/{rounds}: " + ", ".join(
        f"{s} {v} {statistics.median(times[s][v]):.3f}s" for s, v in order))
      order = order[1:] + order[:1]
    closed = {s: w.close() for s, w in workers.items()}
  finally:
    for w in workers.values():
      if w.proc.poll() is None:
        w.proc.kill()
  return {
    "settings": {"batch_size": plan["batch_size"], "seq_len": plan["seq_len"],
                 "rounds": rounds, "steps": steps, "weights": "random"},
    "workers": {s: {"applied": ready[s]["applied"], "peak_rss_bytes": closed[s]["peak_rss_bytes"],
                    "compiled_temp_mib": ready[s]["temp_mib"]} for s in SETTINGS},
    "variants": {
      v: {s: {"median_s": statistics.median(times[s][v]), "times_s": times[s][v],
              "faults_per_step": statistics.median(faults[s][v]), "faults": faults[s][v]}
          for s in SETTINGS}
      for v in variants
    },
  }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", default="minilm,bert-base",
                 help=f"comma-separated, of {sorted(PLANS)}")
  p.add_argument("--rounds", type=int, default=4)
  p.add_argument("--steps", type=int, default=2, help="timed steps per variant and round")
  p.add_argument("--out", type=pathlib.Path, default=RESULTS)
  p.add_argument("--worker", choices=SETTINGS, help=argparse.SUPPRESS)
  p.add_argument("--variants", help=argparse.SUPPRESS)
  p.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
  p.add_argument("--seq-len", type=int, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  models = args.models.split(",")
  unknown = [m for m in models if m not in PLANS]
  if unknown:
    p.error(f"unknown model(s) {unknown}; choose from {sorted(PLANS)}")
  if args.rounds < 1 or args.steps < 1:
    p.error("--rounds and --steps must be at least 1")
  return args


def main(argv: Sequence[str] | None = None) -> None:
  args = parse_args(argv)
  if args.worker:
    worker(args.worker, args.models, args.variants.split(","), args.batch_size, args.seq_len)
    return
  sys.path.insert(0, str(ROOT / "benchmarks"))
  import step  # the parent runs no step: JAX only for the environment record

  from mvp_jax import run_io

  result = {**step.environment(), "models": {}}
  for name in args.models.split(","):
    result["models"][name] = bench_model(name, PLANS[name], args.rounds, args.steps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    run_io.write_atomic(args.out, json.dumps(result, indent=1))
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()

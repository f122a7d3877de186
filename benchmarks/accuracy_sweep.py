"""Accuracy vs remaining weights: the paper's Tables 2 and 3 at CPU scale (MiniLM-L6).

Each cell is one `train.py` run in its own process; its eval_results.json is copied to
`benchmarks/results/accuracy/<task>/<run>.json` (committed), and a run whose result file exists is
skipped, so the sweep can be completed across several sittings. `--table` regenerates the markdown
table (in docs/results.md between markers) and the plots from those files alone.

Rows: dense (the teacher), magnitude, movement (topk), soft movement, L0, each with and without
distillation from the dense run of the same task and seed. Magnitude and movement run at keep
fractions 10% and 3%; soft movement and L0 reach a sparsity through lambda, so they sweep it and
the 10% / 3% cells are linear interpolations between the neighbouring runs in (remaining %,
metric), as the paper did (spec §6.3). All runs share the step budget and schedule shape.

  python benchmarks/accuracy_sweep.py --task sst2 --methods dense,magnitude,topk --steps 1000
  python benchmarks/accuracy_sweep.py --task sst2 --methods soft --lambdas 10,50,200 --distil both
  python benchmarks/accuracy_sweep.py --task sst2 --methods topk --levels 0.1 \
      --tag lrw25-prune25 --set optim.warmup_steps=25 \
      --set pruning.initial_warmup=1 --set pruning.final_warmup=8   # a variant, listed apart
  python benchmarks/accuracy_sweep.py --table
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "accuracy"
SHARED_GLUE = REPO.parent / "shared" / "data" / "glue"
BEGIN, END = "<!-- bench:accuracy:begin -->", "<!-- bench:accuracy:end -->"

# Task settings: data overrides and the metric reported in the table.
TASKS = {
  "sst2": {"data": {"source": "glue", "task": "sst2", "glue_dir": str(SHARED_GLUE),
                    "max_seq_length": 64}, "metric": "accuracy"},
  "trec": {"data": {"source": "offline_trec", "max_seq_length": 32}, "metric": "accuracy"},
  "mrpc": {"data": {"source": "glue", "task": "mrpc", "glue_dir": str(SHARED_GLUE),
                    "max_seq_length": 128}, "metric": "f1"},
}
METHODS = ("dense", "magnitude", "topk", "soft", "l0")
LABELS = {"dense": "dense", "magnitude": "MaP", "topk": "MvP", "soft": "soft MvP", "l0": "L0"}


def run_name(method: str, param: float | None, distil: bool, seed: int, tag: str = "") -> str:
  p = "" if param is None else f"-{param:g}"
  return f"{method}{p}{'-distil' if distil else ''}{f'-{tag}' if tag else ''}-s{seed}"


def overrides(task: str, method: str, param: float | None, distil: bool, seed: int, steps: int,
              batch: int, runs_dir: pathlib.Path) -> list[str]:
  """train.py flags for one cell. The schedule: warm-up = 10% of the steps (LR and dense pruning
  warm-up), cool-down 2 warm-ups at the final level (the reference's 1/2 shape)."""
  warmup = max(1, steps // 10)
  o = {f"data.{k}": v for k, v in TASKS[task]["data"].items()}
  o.update({"seed": seed, "train.max_steps": steps, "train.batch_size": batch,
            "train.eval_every_steps": 0, "train.checkpoint_every_steps": max(50, steps // 5),
            "train.log_every_steps": 25, "train.progress_bar": False,
            "optim.warmup_steps": warmup, "optim.learning_rate": 5e-5,
            "pruning.initial_warmup": 1, "pruning.final_warmup": 2})
  if method == "dense":
    o.update({"pruning.method": "none", "pruning.final_level": 1.0})
  elif method in ("magnitude", "topk"):
    o.update({"pruning.method": method, "pruning.final_level": param})
  elif method == "soft":
    # Score lr 1e-1, not the paper's 1e-2: a pruned score must fall below logit(0.1) = -2.2, and
    # Adam moves a score at most ~lr per step, so 1e-2 over ~900 decaying steps cannot get most of
    # them there (measured on TREC: lambda 100 still kept 89% at step 650, with the regulariser
    # already 28x the task loss). The paper's 55k steps give 55x the travel at 1e-2.
    o.update({"pruning.method": "sigmoid_threshold", "pruning.initial_level": 0.0,
              "pruning.final_level": 0.1, "pruning.final_lambda": param,
              "optim.score_learning_rate": 0.1})
  elif method == "l0":
    o.update({"pruning.method": "l0", "pruning.initial_level": 1.0, "pruning.final_level": 1.0,
              "pruning.final_lambda": param, "pruning.score_scale": 2.197,
              "optim.score_learning_rate": 0.1, "pruning.initial_warmup": 1,
              "pruning.final_warmup": 1})
  if distil:
    teacher = runs_dir / task / run_name("dense", None, False, seed) / "export"
    o.update({"distill.teacher": str(teacher), "distill.alpha_ce": 0.1,
              "distill.alpha_distil": 0.9, "distill.temperature": 2.0})
  return [f"--config.{k}={v}" for k, v in o.items()]


def run_cell(task: str, method: str, param: float | None, distil: bool, seed: int, steps: int,
             batch: int, runs_dir: pathlib.Path, tag: str = "",
             extra: tuple[str, ...] = ()) -> dict | None:
  """Runs one cell unless its result file exists; returns the result record. A `tag` names a
  variant run with `extra` train.py overrides (KEY=VALUE); variants are listed with every run but
  kept out of the table's cells and the plots, which compare the methods as specified."""
  name = run_name(method, param, distil, seed, tag)
  out = RESULTS / task / f"{name}.json"
  if out.exists():
    print(f"[skip] {task}/{name}: {out.relative_to(REPO)} exists")
    return json.loads(out.read_text())
  workdir = runs_dir / task / name
  cmd = [sys.executable, "train.py", "--config", "configs/default.py", "--workdir", str(workdir),
         *overrides(task, method, param, distil, seed, steps, batch, runs_dir),
         *[f"--config.{kv}" for kv in extra]]
  if distil and not ensure_teacher(task, seed, steps, batch, runs_dir):
    print(f"[wait] {task}/{name}: needs the dense teacher run first")
    return None
  # train.py resumes from the workdir's latest checkpoint (a sitting that was stopped), so the
  # wall time recorded below covers only the steps after it: the record says from where. Orbax
  # names a step's folder by its number only once written (unfinished: 550.orbax-checkpoint-tmp),
  # so listing the names does what Checkpointer.latest_step does without importing jax here.
  resumed_from = max((int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()),
                     default=None)
  resuming = "" if resumed_from is None else f" (resuming from step {resumed_from})"
  print(f"[run ] {task}/{name}{resuming}", flush=True)
  t0 = time.time()
  proc = subprocess.run(cmd, cwd=REPO, text=True, capture_output=True)
  if proc.returncode != 0:
    print(f"[fail] {task}/{name}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    return None
  result = json.loads((workdir / "eval_results.json").read_text())
  record = {"task": task, "method": method, "param": param, "distil": distil, "seed": seed,
            "tag": tag, "extra": list(extra),
            "steps": steps, "batch_size": batch, "metric": TASKS[task]["metric"],
            "value": result["metrics"][TASKS[task]["metric"]], "metrics": result["metrics"],
            "remaining_paper": result["remaining_weights_paper"],
            "remaining_plain": result["remaining_weights_plain"],
            "wall_time_s": time.time() - t0, "resumed_from_step": resumed_from,
            "date": time.strftime("%Y-%m-%d"),
            "command": " ".join(cmd[1:])}
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
  print(f"[done] {task}/{name}: {record['metric']}={record['value']:.4f} remaining="
        f"{100 * record['remaining_paper']:.2f}% ({record['wall_time_s']:.0f} s)", flush=True)
  return record


def ensure_teacher(task: str, seed: int, steps: int, batch: int, runs_dir: pathlib.Path) -> bool:
  """Makes sure the dense run's export (the distillation teacher) is on disk. A result file
  survives in git while runs/ does not, so when the file exists but the export is gone the dense
  run is retrained into its workdir (its result file untouched) and its metric compared with the
  recorded one: training is deterministic, so a difference is reported loudly."""
  name = run_name("dense", None, False, seed)
  workdir = runs_dir / task / name
  if (workdir / "export").exists():
    return True
  recorded = RESULTS / task / f"{name}.json"
  if not recorded.exists():
    return False
  print(f"[run ] {task}/{name}: retraining the teacher (its export is not in {runs_dir})",
        flush=True)
  cmd = [sys.executable, "train.py", "--config", "configs/default.py", "--workdir", str(workdir),
         *overrides(task, "dense", None, False, seed, steps, batch, runs_dir)]
  proc = subprocess.run(cmd, cwd=REPO, text=True, capture_output=True)
  if proc.returncode != 0:
    print(f"[fail] {task}/{name}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    return False
  metric = TASKS[task]["metric"]
  got = json.loads((workdir / "eval_results.json").read_text())["metrics"][metric]
  want = json.loads(recorded.read_text())["value"]
  same = "matches" if abs(got - want) < 1e-9 else "DIFFERS FROM"
  print(f"[done] {task}/{name}: {metric}={got:.4f} {same} the recorded {want:.4f}", flush=True)
  return True


def load_records() -> list[dict]:
  return [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*/*.json"))]


def interpolate(points: list[tuple[float, float]], target: float) -> tuple[float, str] | None:
  """Linear interpolation of metric (%) at `target` remaining from (remaining, metric) points;
  ('', 'extrapolated') flag when target lies outside them. None with fewer than 2 points, and
  when extrapolating would reach further beyond the runs than the two nearest are apart, or
  leave [0, 100]: two runs at 1.45% and 2.01% say nothing about 10%."""
  pts = sorted(points)
  if len(pts) < 2:
    return None
  for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
    if x0 <= target <= x1 and x1 > x0:
      return y0 + (y1 - y0) * (target - x0) / (x1 - x0), ""
  (x0, y0), (x1, y1) = (pts[0], pts[1]) if target < pts[0][0] else (pts[-2], pts[-1])
  if x1 == x0 or min(abs(target - x0), abs(target - x1)) > x1 - x0:
    return None
  value = y0 + (y1 - y0) * (target - x0) / (x1 - x0)
  return (value, " (extrapolated)") if 0.0 <= value <= 100.0 else None


def seed_values(records: list[dict], method: str, distil: bool,
                target: float) -> dict[int, tuple[float, str]]:
  """{seed: (metric %, flag)} of one cell, variants (tagged runs) left out. magnitude / topk:
  each seed's run at `target`; soft / l0: each seed interpolated between its own lambda runs
  (flag ' (extrapolated)' or ''), a seed that cannot be (one lambda, or too far) left out."""
  rs = [r for r in records if r["method"] == method and r["distil"] == distil
        and not r.get("tag")]
  if method in ("magnitude", "topk"):
    return {r["seed"]: (100 * r["value"], "") for r in rs if abs(r["param"] - target) < 1e-9}
  by_seed: dict[int, list[dict]] = {}
  for r in rs:
    by_seed.setdefault(r["seed"], []).append(r)
  got = {seed: interpolate([(100 * r["remaining_paper"], 100 * r["value"]) for r in v],
                           100 * target)
         for seed, v in sorted(by_seed.items())}
  return {seed: g for seed, g in got.items() if g is not None}


def cell(records: list[dict], method: str, distil: bool, target: float) -> str:
  """One table cell: the mean over seeds of `seed_values`, ± half their range, n seeds."""
  got = seed_values(records, method, distil, target)
  if not got:
    return "-"
  vals = [v for v, _ in got.values()]
  spread = f" ± {(max(vals) - min(vals)) / 2:.1f}" if len(vals) > 1 else ""
  flag = " (extrapolated)" if any(f for _, f in got.values()) else ""
  return f"{sum(vals) / len(vals):.1f}{spread} (n={len(vals)}){flag}"


def per_seed_cell(records: list[dict], method: str, distil: bool | None, target: float) -> str:
  """Each seed's value of a cell ('s0 90.3, s1 89.1'; an extrapolated one marked '*'), or with
  distil=None the distillation gain per seed (distilled minus not, points), for seeds in both."""
  if distil is None:
    on, off = (seed_values(records, method, d, target) for d in (True, False))
    return ", ".join(f"s{s} {on[s][0] - off[s][0]:+.1f}" for s in sorted(on.keys() & off))
  got = seed_values(records, method, distil, target)
  return ", ".join(f"s{s} {v:.1f}{'*' if f else ''}" for s, (v, f) in sorted(got.items()))


def table(records: list[dict]) -> str:
  lines = []
  for task in sorted({r["task"] for r in records}):
    rs = [r for r in records if r["task"] == task]
    metric = TASKS[task]["metric"]
    steps = sorted({r["steps"] for r in rs})
    seeds = sorted({r["seed"] for r in rs})
    dense = [r["value"] for r in rs if r["method"] == "dense"]
    lines += [f"### {task} ({metric} on dev, %; {steps} steps, seeds {seeds})", ""]
    if dense:
      lines.append(f"Dense fine-tuning (teacher): {100 * sum(dense) / len(dense):.1f} "
                   f"(n={len(dense)}).")
      lines.append("")
    lines += ["| remaining | distil | MaP | L0 | MvP | soft MvP |", "|---|---|---|---|---|---|"]
    for target in (0.10, 0.03):
      for distil in (False, True):
        row = [cell(rs, m, distil, target) for m in ("magnitude", "l0", "topk", "soft")]
        lines.append(f"| {100 * target:.0f}% | {'yes' if distil else 'no'} | " +
                     " | ".join(row) + " |")
    lines += ["", "Per seed (* extrapolated), and the gain from distillation per seed "
              "(distilled minus not, points):", "",
              "| remaining | distil | MaP | L0 | MvP | soft MvP |", "|---|---|---|---|---|---|"]
    for target in (0.10, 0.03):
      for distil, name in ((False, "no"), (True, "yes"), (None, "gain")):
        row = [per_seed_cell(rs, m, distil, target) or "-"
               for m in ("magnitude", "l0", "topk", "soft")]
        lines.append(f"| {100 * target:.0f}% | {name} | " + " | ".join(row) + " |")
    lines += ["", "Every run (remaining by the paper's rule):", "",
              "| run | remaining % | " + metric + " |", "|---|---|---|"]
    for r in sorted(rs, key=lambda r: (r["method"], r["distil"], r["param"] or 0,
                                       r.get("tag", ""), r["seed"])):
      name = run_name(r["method"], r["param"], r["distil"], r["seed"], r.get("tag", ""))
      extra = f" ({', '.join(r['extra'])})" if r.get("extra") else ""
      lines.append(f"| {name}{extra} | {100 * r['remaining_paper']:.2f} | "
                   f"{100 * r['value']:.2f} |")
    lines.append("")
  return "\n".join(lines)


def plot_series(records: list[dict], task: str) -> list[dict]:
  """The lines of `task`'s plot: one per (method, distil, seed), points sorted by remaining %,
  so a second seed is its own line instead of zigzagging through the first. Only the first
  seed of a (method, distil) pair carries the legend label (the others: "").

  Returns dicts with method, distil, seed, label, and pts [(remaining %, metric %), ...]."""
  rs = [r for r in records if r["task"] == task and r["method"] != "dense" and not r.get("tag")]
  series = []
  for method in ("magnitude", "l0", "topk", "soft"):
    for distil in (False, True):
      seeds = sorted({r["seed"] for r in rs if r["method"] == method and r["distil"] == distil})
      for i, seed in enumerate(seeds):
        pts = sorted((100 * r["remaining_paper"], 100 * r["value"]) for r in rs
                     if r["method"] == method and r["distil"] == distil and r["seed"] == seed)
        label = f"{LABELS[method]}{' + distil' if distil else ''}" if i == 0 else ""
        series.append({"method": method, "distil": distil, "seed": seed, "label": label,
                       "pts": pts})
  return series


def plots(records: list[dict]) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import matplotlib.ticker

  for task in sorted({r["task"] for r in records}):
    series = plot_series(records, task)
    pts = [pt for line in series for pt in line["pts"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    colors = {m: f"C{i}" for i, m in enumerate(("magnitude", "l0", "topk", "soft"))}
    for line in series:
      # Distillation: dashed with hollow triangles, so a lone distilled point is told apart.
      ax.plot(*zip(*line["pts"], strict=True), color=colors[line["method"]],
              ls="--" if line["distil"] else "-", marker="^" if line["distil"] else "o",
              mfc="none" if line["distil"] else colors[line["method"]],
              alpha=1.0 if line["label"] else 0.6, label=line["label"] or None)
    dense = [100 * r["value"] for r in records if r["task"] == task and r["method"] == "dense"]
    if dense:
      ax.axhline(sum(dense) / len(dense), color="k", lw=0.8, label="dense")
      ax.set_ylim(top=max([*dense, *(y for _, y in pts)]) + 2)
    ax.set_xscale("log")
    ticks = [t for t in (1, 2, 3, 5, 10, 20, 30, 50, 100)
             if any(t / 2 <= x <= t * 2 for x, _ in pts)]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("remaining encoder weights (%)")
    ax.set_ylabel(f"{TASKS[task]['metric']} (%)")
    ax.set_title(f"{task}: MiniLM-L6")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(REPO / "benchmarks" / "results" / f"accuracy_{task}.png", dpi=120)
    plt.close(fig)


def write_table() -> None:
  records = load_records()
  doc = REPO / "docs" / "results.md"
  text = doc.read_text() if doc.exists() else "# Results\n"
  block = f"{BEGIN}\n{table(records)}\n{END}"
  if BEGIN in text:
    start, end = text.index(BEGIN), text.index(END) + len(END)
    text = text[:start] + block + text[end:]
  else:
    text += "\n## Accuracy vs remaining weights\n\n" + block + "\n"
  doc.write_text(text)
  plots(records)
  print(f"wrote {doc.relative_to(REPO)} and benchmarks/results/accuracy_*.png "
        f"from {len(records)} runs")


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--task", choices=sorted(TASKS), default="sst2")
  ap.add_argument("--methods", default=",".join(METHODS))
  ap.add_argument("--levels", default="0.10,0.03", help="keep fractions for magnitude/topk")
  ap.add_argument("--lambdas", default="", help="final lambdas for soft and l0 (comma-separated)")
  ap.add_argument("--distil", choices=("no", "yes", "both"), default="no")
  ap.add_argument("--seeds", default="0")
  ap.add_argument("--steps", type=int, default=1000)
  ap.add_argument("--batch-size", type=int, default=32)
  ap.add_argument("--runs-dir", type=pathlib.Path, default=REPO / "runs" / "sweep")
  ap.add_argument("--tag", default="", help="name of a variant run (needs --set)")
  ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                  help="extra train.py override for a --tag variant, e.g. "
                       "optim.warmup_steps=25 (repeatable)")
  ap.add_argument("--table", action="store_true", help="only regenerate the table and plots")
  args = ap.parse_args()
  if args.table:
    write_table()
    return 0
  if bool(args.tag) != bool(args.set):
    ap.error("--tag and --set go together: a variant needs a name and its overrides")
  bad = [kv for kv in args.set if "=" not in kv]
  if bad:
    ap.error(f"--set expects KEY=VALUE, got {bad}")
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
  distils = {"no": [False], "yes": [True], "both": [False, True]}[args.distil]
  levels = [float(x) for x in args.levels.split(",") if x]
  lambdas = [float(x) for x in args.lambdas.split(",") if x]
  for seed in [int(s) for s in args.seeds.split(",")]:
    for method in args.methods.split(","):
      params = {"dense": [None], "magnitude": levels, "topk": levels, "soft": lambdas,
                "l0": lambdas}[method]
      for distil in ([False] if method == "dense" else distils):
        for p in params:
          run_cell(args.task, method, p, distil, seed, args.steps, args.batch_size,
                   args.runs_dir, args.tag, tuple(args.set))
  write_table()
  return 0


if __name__ == "__main__":
  sys.exit(main())

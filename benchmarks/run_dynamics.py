"""Training dynamics of finished runs, window by window, from their logged metrics.

Reads each workdir's ``metrics.jsonl`` (what `train.py` logs every ``train.log_every_steps``) and
writes, per run and per window of steps, the median of the gradient norm (weights and scores
together, before clipping), the mask churn (`pruning.mask_change` between the masks before and
after an update at the step's level: the weights the scores re-rank, not those the schedule
removes), the task loss and the keep level (and, for runs of
`benchmarks/score_gradient_intervention.py`, the scores' gradient norm and the share of it the
intervention removed, with the intervention's name); the run's logged evaluations; and its
`course`: the step by which it died and came back, by the rule of `course`. Used to
compare a run that collapses with one that does not (docs/results.md, which lists the command
that wrote dynamics_sst2_trec.json):

  python benchmarks/run_dynamics.py runs/probe/sst2-topk-0.1-s0 runs/probe/trec-topk-0.1-s0 \\
      --windows 55-100,105-125,130-150,155-250 --out benchmarks/results/dynamics.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import statistics
import sys
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from mvp_jax.logging_utils import read_metrics  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "dynamics.json"
KEYS = {"grad_norm": "train/grad_norm", "mask_churn": "train/mask_churn",
        "task_loss": "train/task_loss", "level": "train/level",
        # logged by benchmarks/score_gradient_intervention.py only
        "score_grad_norm": "train/score_grad_norm",
        "score_removed_share": "train/score_removed_share",
        "weight_removed_share": "train/weight_removed_share"}


def parse_windows(text: str) -> list[tuple[int, int]]:
  """"55-100,105-125" -> [(55, 100), (105, 125)]; each window inclusive, start <= end."""
  windows = []
  for part in text.split(","):
    try:
      start, end = (int(x) for x in part.split("-"))
    except ValueError as e:
      raise ValueError(f"window {part!r}: write START-END with integer steps") from e
    if start > end:
      raise ValueError(f"window {part!r}: start {start} is after end {end}")
    windows.append((start, end))
  return windows


def summarise(rows: Sequence[dict[str, Any]], windows: Sequence[tuple[int, int]]) -> list[dict]:
  """Per window: steps logged (n) and the median of each of `KEYS` over them (None if none).

  Args:
    rows: metrics rows, each with a "step" and any of the logged "train/..." values.
    windows: inclusive (start, end) step ranges.
  """
  out = []
  for start, end in windows:
    inside = [r for r in rows if start <= r["step"] <= end and "train/loss" in r]
    row: dict[str, Any] = {"start": start, "end": end, "n": len(inside)}
    for name, key in KEYS.items():
      values = [r[key] for r in inside if key in r]
      row[name] = statistics.median(values) if values else None
    out.append(row)
  return out


def course(
  rows: Sequence[dict[str, Any]], block: int = 25, dead: float = 0.66, back: float = 0.65,
  hold: int = 2,
) -> dict[str, int | None]:
  """When a pruned run died and came back, by its task loss (the rule of docs/results.md).

  The logged steps are cut into blocks of ``block`` steps, (k - 1) * block < step <= k * block,
  and each block's median task loss taken. From the first pruning step on (level below 1),
  ``dead_by`` is the end step of the first block that starts ``hold`` consecutive blocks at
  ``dead`` or above (0.66 against a two-class chance level of 0.69); ``back_by`` the end step of
  the first later block that starts ``hold`` consecutive blocks below ``back``. None: never.

  Args:
    rows: metrics rows with "step", "train/task_loss" and "train/level".
  """
  start = min((r["step"] for r in rows if r.get("train/level", 1.0) < 1.0), default=None)
  if start is None:
    return {"dead_by": None, "back_by": None}
  losses: dict[int, list[float]] = {}
  for r in rows:
    if "train/task_loss" in r:
      losses.setdefault(-(-r["step"] // block), []).append(r["train/task_loss"])
  ends = sorted(k for k in losses if k * block >= start)
  medians = {k: statistics.median(losses[k]) for k in ends}

  def first(after: int, test) -> int | None:
    for k in ends:
      run = [k + j for j in range(hold)]
      if k * block > after and all(j in medians and test(medians[j]) for j in run):
        return k * block
    return None

  dead_by = first(0, lambda x: x >= dead)
  back_by = None if dead_by is None else first(dead_by, lambda x: x < back)
  return {"dead_by": dead_by, "back_by": back_by}


def main(argv: Sequence[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("workdirs", type=pathlib.Path, nargs="+")
  ap.add_argument("--windows", required=True, help="comma-separated inclusive START-END steps")
  ap.add_argument("--out", type=pathlib.Path, default=RESULTS)
  args = ap.parse_args(argv)
  try:
    windows = parse_windows(args.windows)
  except ValueError as e:
    ap.error(str(e))
  runs = {}
  for workdir in args.workdirs:
    path = workdir / "metrics.jsonl"
    if not path.is_file():
      ap.error(f"{path} does not exist: pass train.py workdirs")
    rows = read_metrics(path)
    evals = [{"step": r["step"], **{k: v for k, v in r.items() if k.startswith("eval/")}}
             for r in rows if any(k.startswith("eval/") for k in r)]
    intervention = workdir / "intervention.json"
    runs[str(workdir)] = {
      "windows": summarise(rows, windows),
      "last_eval": evals[-1] if evals else None,
      "evals": evals,
      "course": course(rows),
      "intervention": (json.loads(intervention.read_text())["intervention"]
                       if intervention.is_file() else None),
    }
  record = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "medians_of": list(KEYS.values()), "runs": runs}
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(record, indent=1) + "\n")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()

"""What pruning adds to the compiled train step, by tokens per step: work, not time.

`step.py --batch-size/--seq-len` times each variant against its own dense step at several
shapes, and the milliseconds pruning adds grew with the tokens per step there, although
everything pruning adds is per weight (docs/results.md, "How the overhead changes with tokens
per step"). Timings on a shared 2-core machine cannot tell extra work from contention. This
compiles the same steps (`step.build_jax_variant`: the trainer's jitted step, as `step.py`
times it) at the same shapes and records what each compiled program does, without running it:

- ``flops``: XLA's cost analysis of the optimised program (`compiled.cost_analysis()`; it
  counts a loop's body once, so the threshold search's passes count as one);
- ``bytes`` and ``kernels``: `hlo_program.describe` of its HLO, each fusion's operands plus its
  result, loops counted by their trip count (an upper bound on the memory traffic);
- ``peak_bytes`` / ``temp_bytes``: the compiled memory analysis (`step.memory_of`).

If pruning's extra flops and bytes over the dense step are the same at every shape, the extra
work is per weight, and any growth of the added time with tokens is not work in the program.
Results go to benchmarks/results/step_work.json; `report.py` renders them into docs/results.md.

  python benchmarks/step_work.py                     # both models, three shapes each (~9 min)
  python benchmarks/step_work.py --only minilm --shapes 8x64,32x64
  python benchmarks/step_work.py --quick             # tiny model: a smoke run

Weights are random, of each model's shape (the program does not depend on their values).
Compiled for the backend it runs on (CPU here: the masks' CPU choices, two-bit search passes).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "step_work.json"
# The shapes of docs/results.md's tokens-per-step tables (batch, seq).
SHAPES = {
  "minilm": ((8, 64), (32, 64), (128, 64)),
  "bert-base": ((8, 128), (32, 128), (64, 128)),
}
QUICK_SHAPES = ((4, 8), (16, 8))
VARIANTS = ("dense", "topk_local", "sigmoid_threshold", "l0")


def parse_shapes(text: str) -> tuple[tuple[int, int], ...]:
  """'8x64,32x64' -> ((8, 64), (32, 64)); ValueError naming a bad item."""
  shapes = []
  for item in text.split(","):
    parts = item.strip().lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
      raise ValueError(f"shape {item!r} is not BATCHxSEQ with positive integers (e.g. 32x64)")
    shapes.append((int(parts[0]), int(parts[1])))
  return tuple(shapes)


def program_work(compiled: Any) -> dict[str, Any]:
  """flops (XLA's cost analysis), bytes and kernels (`hlo_program.describe`) of one compiled
  program, and its compiled memory (`step.memory_of`)."""
  import hlo_program
  import step

  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost  # older jax: one dict per device program
  program = hlo_program.describe(compiled.as_text())
  memory = step.memory_of(compiled)
  return {
    "flops": float(cost.get("flops", 0.0)),
    "bytes": int(program["bytes"]),
    "kernels": int(program["kernels"]),
    "peak_bytes": memory["peak"],
    "temp_bytes": memory["temp"],
  }


def model_work(
  config: Any,
  shapes: Sequence[tuple[int, int]],
  variants: Sequence[str],
  log: Callable[[str], None] = print,
  compiler_options: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
  """One row per shape: {batch_size, seq_len, variants: {name: program_work}}."""
  import step

  model, params = step.random_model(config)
  rows = []
  for batch_size, seq_len in shapes:
    batch = step.make_batch(config, batch_size, seq_len)
    row: dict[str, Any] = {"batch_size": batch_size, "seq_len": seq_len, "variants": {}}
    for name in variants:
      start = time.perf_counter()
      v = step.build_jax_variant(name, model, params, batch, level=0.1, tau=0.69,
                                 l0_lambda=1.0, sigmoid_lambda=1.0,
                                 compiler_options=compiler_options)
      row["variants"][name] = program_work(v.compiled)
      w = row["variants"][name]
      log(f"  {batch_size}x{seq_len} {name}: {w['flops'] / 1e9:.1f} GFLOP, "
          f"{w['bytes'] / 1e9:.2f} GB, {w['kernels']} kernels "
          f"(compiled in {time.perf_counter() - start:.0f} s)")
      del v
    rows.append(row)
  return rows


def run(
  args: argparse.Namespace,
  log: Callable[[str], None] = print,
  compiler_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
  """Compiles every (model, shape, variant), writes args.out and returns the results."""
  import step

  from mvp_jax import run_io

  configs = {"minilm": step.minilm_config, "bert-base": step.bert_base_config}
  if args.quick:
    plan = {"tiny": (step.tiny_config(), args.shapes or QUICK_SHAPES)}
  else:
    names = [args.only] if args.only else list(SHAPES)
    plan = {n: (configs[n](), args.shapes or SHAPES[n]) for n in names}
  variants = tuple(dict.fromkeys(("dense", *args.variants.split(","))))
  res = {"benchmark": "step_work", "quick": bool(args.quick), **step.environment(), "models": {}}
  if args.out.exists() and not args.quick:  # --only merges into the earlier run's file
    res["models"] = json.loads(args.out.read_text()).get("models", {})
  args.out.parent.mkdir(parents=True, exist_ok=True)  # before minutes of compiling, not after
  for name, (config, shapes) in plan.items():
    log(f"[{name}] shapes {', '.join(f'{b}x{s}' for b, s in shapes)}; variants {variants}")
    res["models"][name] = {
      "hidden_size": config.hidden_size,
      "layers": config.num_hidden_layers,
      "rows": model_work(config, shapes, variants, log, compiler_options),
    }
    run_io.write_atomic(args.out, json.dumps(res, indent=1) + "\n")  # each model as it ends
  log(f"wrote {args.out}")
  return res


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--only", choices=sorted(SHAPES), help="one model (merged into --out)")
  parser.add_argument("--shapes", type=str, default=None,
                      help="BATCHxSEQ,... (default: the tokens tables' three per model)")
  parser.add_argument("--variants", default=",".join(VARIANTS[1:]),
                      help=f"step.py variants besides dense (default {','.join(VARIANTS[1:])})")
  parser.add_argument("--quick", action="store_true", help="tiny model: a smoke run")
  parser.add_argument("--out", type=pathlib.Path, default=RESULTS,
                      help=f"result file (default {RESULTS})")
  args = parser.parse_args(argv)
  try:
    args.shapes = parse_shapes(args.shapes) if args.shapes else None
  except ValueError as e:
    parser.error(f"--shapes: {e}")
  sys.path.insert(0, str(ROOT / "benchmarks"))
  import step

  bad = [v for v in args.variants.split(",") if v not in step.JAX_VARIANTS]
  if bad:
    parser.error(f"--variants: unknown {bad}; choose from {sorted(step.JAX_VARIANTS)}")
  return args


def main(argv: Sequence[str] | None = None) -> None:
  run(parse_args(argv))


if __name__ == "__main__":
  main()

"""One-shot quality of pruning masks on a run's checkpoint: learned scores vs magnitude vs random.

Restores the params and scores of a `train.py` workdir at a step, masks the encoder matrices
(local top-k, no retraining) by each criterion at each keep fraction, and evaluates the task's
metric on the run's eval set. Criteria:

* ``score``: top-k of the learned scores (what movement pruning keeps),
* ``neg_score``: top-k of ``-scores`` (drops what movement pruning would keep first),
* ``abs_score``: top-k of ``|scores|`` (both tails of the scores),
* ``magnitude``: top-k of ``|W|``,
* ``random``: top-k of uniform noise (seed 0).

Used to find out why movement pruning collapses at the demo's horizon (docs/results.md).
Scores must exist, so the run must use a score-based method; a run with
``--config.pruning.final_level=1.0`` learns scores while staying dense.

  python train.py --config configs/default.py --workdir runs/dense_scores \\
      --config.pruning.final_level=1.0 --config.train.checkpoint_every_steps=100 \\
      --config.train.keep_checkpoints=5 --config.data.max_eval_examples=400
  python benchmarks/mask_quality.py runs/dense_scores --steps 100 --levels 0.99,0.96,0.9,0.5,0.1
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import pathlib
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from mvp_jax import pruning, run_io, sharding, trainer  # noqa: E402
from mvp_jax.data import tasks, tokenization  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "mask_quality.json"
CRITERIA = ("score", "neg_score", "abs_score", "magnitude", "random")


def criterion_scores(name: str, scores):
  """The tree ranked by top-k for criterion `name` ({} for magnitude, which ranks |W| itself)."""
  if name == "score":
    return scores
  if name == "neg_score":
    return jax.tree.map(jnp.negative, scores)
  if name == "abs_score":
    return jax.tree.map(jnp.abs, scores)
  if name == "random":
    leaves, treedef = jax.tree.flatten(scores)
    keys = jax.random.split(jax.random.PRNGKey(0), len(leaves))
    return treedef.unflatten([jax.random.uniform(k, s.shape) for k, s in zip(keys, leaves,
                                                                              strict=True)])
  if name == "magnitude":
    return {}
  raise ValueError(f"unknown criterion {name!r}; choose from {CRITERIA}")


def make_evaluator(run: run_io.Run):
  """(evaluate, metric, task) for `run`'s eval set: evaluate(params) -> the task's first metric
  on every eval example, params already masked (one jit-compiled forward, reused);
  evaluate(params, interceptor) runs the forward under `flax.linen.intercept_methods`."""
  cfg = run.config
  task = tasks.build_task(cfg.data, tokenization.load_tokenizer(
      run.model_dir, max_length=cfg.data.max_seq_length))
  mesh = sharding.make_mesh((-1, 1))  # data-parallel over every local device
  eval_fn = jax.jit(lambda p, b: trainer.eval_step(p, b, model=run.model))
  metric = task.metric_names[0]

  replicated = NamedSharding(mesh, PartitionSpec())

  def evaluate(params, interceptor=None) -> float:
    params = jax.device_put(params, replicated)  # on every device the batch is split over
    if interceptor is None:
      fn, context = eval_fn, contextlib.nullcontext()
    else:  # traced afresh inside the interception (a cached trace would not see it)
      fn = jax.jit(lambda p, b: trainer.eval_step(p, b, model=run.model))
      context = nn.intercept_methods(interceptor)
    with context:
      metrics = trainer.evaluate(fn, params, task.eval_features, task, None,
                                 int(cfg.train.eval_batch_size), mesh)
    return float(metrics[metric])

  return evaluate, metric, task


def write_results(out: pathlib.Path, workdir: pathlib.Path, metric: str, task, rows: list,
                  **fields) -> None:
  """Writes a checkpoint analysis's results file: date, workdir, metric, eval set size, `fields`
  (what describes the run), then `rows`, as indented JSON."""
  record = {
    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "workdir": str(workdir), "metric": metric,
    "eval_examples": int(len(task.eval_features["input_ids"])), **fields, "rows": rows,
  }
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(record, indent=1) + "\n")
  print(f"wrote {out}")


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("workdir", type=pathlib.Path)
  ap.add_argument("--steps", required=True, help="comma-separated checkpoint steps")
  ap.add_argument("--levels", default="0.99,0.96,0.9,0.5,0.1", help="keep fractions")
  ap.add_argument("--out", type=pathlib.Path, default=RESULTS)
  args = ap.parse_args(argv)
  steps = [int(s) for s in args.steps.split(",")]
  levels = [float(v) for v in args.levels.split(",")]

  first = run_io.load_run(args.workdir, steps[0])
  if not jax.tree.leaves(first.scores):
    raise SystemExit(f"{args.workdir} has no scores: train it with a score-based method.")
  cfg = first.config
  evaluate, metric, task = make_evaluator(first)
  include = tuple(cfg.pruning.include)
  magnitude = pruning.PruningSpec(method="magnitude", include=include)
  topk = pruning.PruningSpec(method="topk", scope="local", include=include)

  rows = []
  for step in steps:
    run = first if step == steps[0] else run_io.load_run(args.workdir, step)
    row = {"step": step, "unmasked": evaluate(run.params), "by_level": {}}
    for level in levels:
      row["by_level"][str(level)] = {
        name: evaluate(pruning.apply_masks(run.params, criterion_scores(name, run.scores), level,
                                           magnitude if name == "magnitude" else topk))
        for name in CRITERIA
      }
      print(json.dumps({"step": step, "level": level, **row["by_level"][str(level)]}),
            flush=True)
    rows.append(row)

  write_results(args.out, args.workdir, metric, task, rows, run_config={
      "method": cfg.pruning.method, "final_level": cfg.pruning.final_level,
      "learning_rate": cfg.optim.learning_rate, "batch_size": cfg.train.batch_size,
      "max_steps": cfg.train.max_steps, "seed": cfg.seed})
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""Checkpoint save time: orbax's replica-parallel copy vs one replica per array (our default).

In one process on N devices (fake CPU devices by default, as the tests run), the trainer's
state of a pruning run (params, top-k scores, AdamW moments, step, key) is replicated across
the data-parallel mesh. `mvp_jax.checkpoint.Checkpointer` copies each replicated array from one
device (`replica_parallel=None`, the default in a single process); orbax's own default on CPUs
and TPUs (`replica_parallel=True`) first cuts it into a slice per replica, so that several
hosts can share the writing. Both savers write the same state, alternately, round after round,
into their own folders. Per save: the time the training loop is blocked (`save` returning, the
device-to-host copy) and the time until the files are committed (`wait`). Results go to
benchmarks/results/checkpoint_save.json; `report.py` renders them into docs/results.md.

  python benchmarks/checkpoint_save.py                         # MiniLM, 8 devices (~3 min)
  python benchmarks/checkpoint_save.py --models tiny --rounds 2    # smoke run

Weights are random, of each model's shape (the copy does not depend on their values).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "checkpoint_save.json"
SAVERS = {"replica_parallel": True, "one_replica": None}  # name -> Checkpointer(replica_parallel=)


def _dir_bytes(path: pathlib.Path) -> int:
  return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def train_state(model_name: str) -> tuple[Any, int, int]:
  """The trainer's state of a top-k run for `model_name`, replicated over all devices.

  Returns:
    (state, number of arrays in it, their bytes).
  """
  import jax
  import step

  from mvp_jax import pruning, sharding

  config = {"minilm": step.minilm_config, "bert-base": step.bert_base_config,
            "tiny": step.tiny_config}[model_name]()
  model, params = step.random_model(config)
  spec = pruning.PruningSpec(method="topk", score_init="uniform", score_scale=1.0)
  score_rng, state_rng = jax.random.split(jax.random.PRNGKey(0))
  scores = pruning.init_scores(params, spec, score_rng)
  tx = step.variant_optimizer(spec, params, scores, level=0.1, tau=0.0, l0_lambda=0.0,
                              sigmoid_lambda=0.0)
  opts = step.trainer.StepOptions(kind="classification", spec=spec)
  mesh = sharding.make_mesh((-1, 1))
  init_state, _, state_sh, _ = step.jit_train_step(model, tx, opts, params, scores,
                                                   jax.random.key_data(state_rng), mesh)
  state = jax.jit(init_state, out_shardings=state_sh)(params, scores)
  leaves = jax.tree.leaves(state)
  return state, len(leaves), int(sum(x.nbytes for x in leaves))  # one replica's bytes


def bench_model(model_name: str, rounds: int) -> dict[str, Any]:
  """Both savers on one model's state, alternating, `rounds` saves each (the first, which
  compiles the replica slices, reported apart)."""
  from mvp_jax import checkpoint

  state, n_arrays, n_bytes = train_state(model_name)
  out: dict[str, Any] = {"arrays": n_arrays, "state_bytes": n_bytes, "savers": {}}
  with tempfile.TemporaryDirectory(prefix="ckpt_bench_") as tmp:
    ckpts = {name: checkpoint.Checkpointer(pathlib.Path(tmp) / name, max_to_keep=1,
                                           replica_parallel=rp)
             for name, rp in SAVERS.items()}
    times = {name: {"blocked_s": [], "total_s": []} for name in SAVERS}
    for r in range(rounds + 1):
      order = list(SAVERS) if r % 2 == 0 else list(reversed(SAVERS))
      for name in order:
        start = time.perf_counter()
        ckpts[name].save(r + 1, state, {"round": r})
        blocked = time.perf_counter() - start
        ckpts[name].wait()
        times[name]["blocked_s"].append(blocked)
        times[name]["total_s"].append(time.perf_counter() - start)
      print(f"{model_name} round {r}: " + ", ".join(
          f"{n} {times[n]['blocked_s'][-1]:.2f}/{times[n]['total_s'][-1]:.2f} s" for n in SAVERS),
          flush=True)
    for name, ckpt in ckpts.items():
      ckpt.close()
      t = times[name]
      out["savers"][name] = {
        "first_blocked_s": t["blocked_s"][0], "first_total_s": t["total_s"][0],
        "blocked_s": t["blocked_s"][1:], "total_s": t["total_s"][1:],
        "median_blocked_s": statistics.median(t["blocked_s"][1:]),
        "median_total_s": statistics.median(t["total_s"][1:]),
        "bytes_on_disk": _dir_bytes(pathlib.Path(tmp) / name),
      }
  ours, theirs = out["savers"]["one_replica"], out["savers"]["replica_parallel"]
  out["blocked_ratio"] = ours["median_blocked_s"] / theirs["median_blocked_s"]
  out["total_ratio"] = ours["median_total_s"] / theirs["median_total_s"]
  return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--models", default="minilm",
                      help="comma-separated: minilm, bert-base, tiny (default minilm; "
                           "bert-base on 8 CPU devices holds 8 copies of a 2.3 GB state)")
  parser.add_argument("--devices", type=int, default=8,
                      help="fake CPU devices (the state is replicated over all of them; "
                           "default 8; ignored off CPU)")
  parser.add_argument("--rounds", type=int, default=5,
                      help="timed saves per saver and model, after a first one (default 5)")
  parser.add_argument("--out", type=pathlib.Path, default=RESULTS,
                      help=f"result file (default {RESULTS})")
  args = parser.parse_args(argv)
  unknown = set(args.models.split(",")) - {"minilm", "bert-base", "tiny"}
  if unknown:
    parser.error(f"--models: unknown {sorted(unknown)}; choose from minilm, bert-base, tiny")
  if args.rounds < 1 or args.devices < 1:
    parser.error("--rounds and --devices must be at least 1")
  return args


def main(argv: Sequence[str] | None = None) -> None:
  args = parse_args(argv)
  import jax

  if jax.config.jax_num_cpu_devices != args.devices:
    try:
      jax.config.update("jax_num_cpu_devices", args.devices)
    except RuntimeError:  # the backend is up already (e.g. the tests' 8 devices): keep it
      pass
  sys.path.insert(0, str(ROOT / "benchmarks"))
  import step

  from mvp_jax import run_io

  result = {**step.environment(), "rounds": args.rounds, "models": {}}
  for name in args.models.split(","):
    result["models"][name] = bench_model(name, args.rounds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    run_io.write_atomic(args.out, json.dumps(result, indent=1))
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()

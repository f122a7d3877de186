"""Where a train step's time goes on CPU: `jax.profiler` over XLA:CPU's thunks, per kernel kind.

Builds `step.py` variants (random weights of the model's shape), traces S steps of each with
`jax.profiler`, and sums each thunk's time by its kind (the fusion name without its number:
`multiply_add_fusion`, `while`, ...) over the trace's XLA threads, per step. The difference of a
variant's kind from dense's is what that kind of kernel adds. Sums of thunk durations, not a
timeline: independent thunks can overlap on the two threads, so they need not add up to the
step time (the step's own median is recorded beside them). Writes
benchmarks/results/profile_step.json; a diagnostic, not rendered into docs/results.md.

  python benchmarks/profile_step.py --model bert-base --variants dense,topk_local --steps 3
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import re
import statistics
import sys
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "profile_step.json"
MODELS = ("minilm", "bert-base")  # batch x seq as step.py's PLANS
_NUMBER = re.compile(r"\.\d+$")
# Events that are not kernels: the executor's own spans and the Python thread's.
_SKIP = ("ThunkExecutor", "PjRt")


def kernel_kind(name: str) -> str:
  """'multiply_add_fusion.757' -> 'multiply_add_fusion' (XLA numbers each instance)."""
  return _NUMBER.sub("", name)


def ms_by_kind(events: Iterable[tuple[str, str, float]], steps: int) -> dict[str, float]:
  """Milliseconds per step by kernel kind.

  Args:
    events: (thread name, event name, duration in ns) of every traced event.
    steps: how many steps the trace covers.

  Returns:
    {kind: ms per step}, largest first; the Python thread and executor spans left out.
  """
  total: collections.Counter[str] = collections.Counter()
  for line, name, ns in events:
    if line == "python" or name.startswith(_SKIP):
      continue
    total[kernel_kind(name)] += ns / 1e6 / steps
  return dict(total.most_common())


def trace_events(trace_dir: pathlib.Path) -> list[tuple[str, str, float]]:
  """(thread, event, ns) of every event of the host planes in a `jax.profiler` trace folder."""
  import jax

  paths = sorted(trace_dir.rglob("*.xplane.pb"))
  if not paths:
    raise FileNotFoundError(f"no *.xplane.pb under {trace_dir}")
  data = jax.profiler.ProfileData.from_file(str(paths[-1]))
  return [(line.name, ev.name, ev.duration_ns)
          for plane in data.planes for line in plane.lines for ev in line.events]


def profile(model_name: str, variants: Sequence[str], steps: int, reuse: bool,
            log=print) -> dict[str, Any]:
  if reuse:  # before JAX runs anything
    sys.path.insert(0, str(ROOT))
    from mvp_jax import host_memory

    reuse = host_memory.reuse_freed_memory()
  sys.path.insert(0, str(ROOT / "benchmarks"))
  import jax
  import step

  config = step.minilm_config() if model_name == "minilm" else step.bert_base_config()
  model, params = step.random_model(config)
  plan = step.PLANS[model_name]
  batch = step.make_batch(config, plan["batch_size"], plan["seq_len"])
  out: dict[str, Any] = {**step.environment(), "host_memory": "reuse" if reuse else "glibc",
                         "model": model_name, "steps": steps, "variants": {}}
  for name in variants:
    v = step.build_jax_variant(name, model, params, batch, level=0.1, tau=0.69, l0_lambda=1.0,
                               sigmoid_lambda=1.0)
    v.start_round()
    v.step()  # first-call costs, untraced
    with tempfile.TemporaryDirectory() as tmp:
      jax.profiler.start_trace(tmp)
      times = [v.step() for _ in range(steps)]
      jax.profiler.stop_trace()
      kinds = ms_by_kind(trace_events(pathlib.Path(tmp)), steps)
    v.end_round()
    out["variants"][name] = {"step_ms": [1000 * t for t in times],
                             "median_ms": 1000 * statistics.median(times), "ms_by_kind": kinds}
    log(f"{name}: step {1000 * statistics.median(times):.0f} ms, kernels "
        f"{sum(kinds.values()):.0f} ms")
  return out


def main(argv: Sequence[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", choices=MODELS, default="bert-base")
  p.add_argument("--variants", default="dense,magnitude,topk_local,sigmoid_threshold")
  p.add_argument("--steps", type=int, default=3, help="traced steps per variant")
  p.add_argument("--glibc-malloc", action="store_true",
                 help="leave malloc as glibc sets it (default: keep freed memory, as train.py)")
  p.add_argument("--out", type=pathlib.Path, default=RESULTS)
  args = p.parse_args(argv)
  if args.steps < 1:
    p.error("--steps must be at least 1")
  res = profile(args.model, args.variants.split(","), args.steps, reuse=not args.glibc_malloc)
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(res, indent=1))
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()

"""Where a train step's time goes on CPU: `jax.profiler` over XLA:CPU's thunks, per kernel kind.

Builds `step.py` variants (random weights of the model's shape), traces S steps of each with
`jax.profiler`, and attributes the trace's XLA threads' time inside the timed steps (each step
is marked by a `TraceAnnotation`; kernels outside them, say from other work still running in the
process, are left out) to kernel kinds (the thunk name without its number:
`multiply_add_fusion`, `while`, ...), per step, two ways:

- ``self_ms_by_kind``: each thunk's own time, without the thunks nested in it on its thread (a
  `while` thunk runs its body's kernels inside its span; summing raw spans counts them twice).
- ``wall_ms_by_kind``: that self time with every moment shared evenly among the thunks running
  at it on any thread (XLA:CPU runs independent thunks concurrently on its threads, on 2
  cores here). These add up to the time some kernel ran (``busy_ms``), at most the step time,
  so a kind's share is comparable to the step's median, recorded beside them.

The difference of a variant's kind from dense's is what that kind of kernel adds. Kernels also
slow each other down when they share the cores and memory: a kind's time here can exceed what
the same kernels take alone. For the optimizer, the largest per-weight cost of learning scores,
the script also times the update alone (``optimizer_update``): the trainer's optimizer jitted
by itself, state donated, over the params only and over the params and one set of scores, in
alternation. Writes benchmarks/results/profile_step.json; a diagnostic, not rendered into
docs/results.md.

  python benchmarks/profile_step.py --model bert-base --variants dense,topk_local --steps 3
"""

from __future__ import annotations

import argparse
import bisect
import collections
import json
import pathlib
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "profile_step.json"
MODELS = ("minilm", "bert-base")  # batch x seq as step.py's PLANS
_NUMBER = re.compile(r"\.\d+$")
# Events that are not kernels: the executor's and thread pool's own spans.
_SKIP = ("ThunkExecutor", "PjRt", "ThreadpoolListener")
# The TraceAnnotation around each timed step (on the Python thread's line).
STEP_SPAN = "profile_step.step"

# (thread name, event name, start ns, duration ns)
Event = tuple[str, str, float, float]


def kernel_kind(name: str) -> str:
  """'multiply_add_fusion.757' -> 'multiply_add_fusion' (XLA numbers each instance)."""
  return _NUMBER.sub("", name)


def self_segments(events: Iterable[tuple[str, float, float]]) -> list[tuple[float, float, str]]:
  """One thread's events cut into the pieces each event runs by itself.

  Args:
    events: (name, start ns, end ns) of one thread; an event that starts inside another is
      nested in it (clipped to its parent's end).

  Returns:
    (start, end, name) pieces, disjoint: every moment goes to the innermost event running then.
  """
  ordered = sorted(events, key=lambda e: (e[1], -(e[2] - e[1])))
  segments: list[tuple[float, float, str]] = []
  stack: list[tuple[str, float]] = []  # (name, end) of the open events, innermost last
  cursor = 0.0

  def run_top_until(t: float) -> None:
    nonlocal cursor
    if stack and t > cursor:
      segments.append((cursor, t, stack[-1][0]))
    cursor = max(cursor, t)

  for name, start, end in ordered:
    while stack and stack[-1][1] <= start:
      run_top_until(stack[-1][1])
      stack.pop()
    if stack:
      run_top_until(start)
      end = min(end, stack[-1][1])
    else:
      cursor = start
    stack.append((name, end))
  while stack:
    run_top_until(stack[-1][1])
    stack.pop()
  return segments


def clip(segments: Iterable[tuple[float, float, str]],
         windows: Sequence[tuple[float, float]]) -> list[tuple[float, float, str]]:
  """The parts of (start, end, name) segments that lie inside the windows.

  Args:
    segments: pieces of time, any order.
    windows: (start, end), sorted and disjoint.

  Returns:
    (start, end, name) pieces, one per segment and window they share time with.
  """
  starts = [w[0] for w in windows]
  out = []
  for s, e, name in segments:
    i = max(bisect.bisect_right(starts, s) - 1, 0)
    while i < len(windows) and windows[i][0] < e:
      lo, hi = max(s, windows[i][0]), min(e, windows[i][1])
      if hi > lo:
        out.append((lo, hi, name))
      i += 1
  return out


def union_ns(segments: Iterable[tuple[float, float, str]]) -> float:
  """How long at least one of the (start, end, name) segments runs."""
  total, reach = 0.0, -np.inf
  for s, e, _ in sorted(segments):
    if e > reach:
      total += e - max(s, reach)
      reach = e
  return total


def step_windows(events: Iterable[Event]) -> list[tuple[float, float]]:
  """(start, end) ns of each `STEP_SPAN` annotation in the trace, in order."""
  return sorted((start, start + ns) for _, name, start, ns in events if name == STEP_SPAN)


def attribute(events: Iterable[Event], steps: int,
              windows: Sequence[tuple[float, float]] | None = None) -> dict[str, Any]:
  """Kernel time per step by kind: self time, and self time shared among concurrent kernels.

  Args:
    events: every traced event (`trace_events`); the Python thread and the executor's spans
      are left out.
    steps: how many steps the trace covers.
    windows: (start, end) ns, sorted and disjoint: only kernel time inside them counts (None:
      all of it).

  Returns:
    {"self_ms_by_kind": {kind: ms}, "wall_ms_by_kind": {kind: ms}, "busy_ms": ms}, per step,
    kinds largest first; ``busy_ms`` is the time at least one kernel ran (the sum of the wall
    shares). With ``windows``, also "outside_busy_ms": the time kernels ran outside them.
  """
  by_line: dict[str, list[tuple[str, float, float]]] = collections.defaultdict(list)
  for line, name, start, ns in events:
    if line == "python" or name.startswith(_SKIP) or name == STEP_SPAN:
      continue
    by_line[line].append((name, start, start + ns))
  segments = [s for evs in by_line.values() for s in self_segments(evs)]
  outside: dict[str, float] = {}
  if windows is not None:
    every = union_ns(segments)
    segments = clip(segments, windows)
    outside["outside_busy_ms"] = (every - union_ns(segments)) / 1e6 / steps
  self_ms: collections.Counter[str] = collections.Counter()
  wall_ms: collections.Counter[str] = collections.Counter()
  if segments:
    starts = np.array([s for s, _, _ in segments])
    ends = np.array([e for _, e, _ in segments])
    points = np.unique(np.concatenate([starts, ends]))
    first, last = np.searchsorted(points, starts), np.searchsorted(points, ends)
    # Segments running in each elementary interval [points[i], points[i + 1]).
    running = np.zeros(len(points))
    np.add.at(running, first, 1)
    np.add.at(running, last, -1)
    running = np.cumsum(running)[:-1]
    share = np.where(running > 0, np.diff(points) / np.maximum(running, 1), 0.0)
    cum = np.concatenate([[0.0], np.cumsum(share)])
    wall = cum[last] - cum[first]
    for (s, e, name), w in zip(segments, wall, strict=True):
      self_ms[kernel_kind(name)] += (e - s) / 1e6 / steps
      wall_ms[kernel_kind(name)] += float(w) / 1e6 / steps
  return {"self_ms_by_kind": dict(self_ms.most_common()),
          "wall_ms_by_kind": dict(wall_ms.most_common()),
          "busy_ms": sum(wall_ms.values()), **outside}


def trace_events(trace_dir: pathlib.Path) -> list[Event]:
  """(thread, event, start ns, duration ns) of every event of the host planes in a
  `jax.profiler` trace folder."""
  import jax

  paths = sorted(trace_dir.rglob("*.xplane.pb"))
  if not paths:
    raise FileNotFoundError(f"no *.xplane.pb under {trace_dir}")
  data = jax.profiler.ProfileData.from_file(str(paths[-1]))
  return [(line.name, ev.name, ev.start_ns, ev.duration_ns)
          for plane in data.planes for line in plane.lines for ev in line.events]


def _load_step(reuse: bool) -> tuple[Any, bool]:
  """benchmarks/step.py, after keeping freed host memory as train.py does (``reuse``; must
  run before JAX does), and whether that took effect."""
  if reuse:
    sys.path.insert(0, str(ROOT))
    from mvp_jax import host_memory

    reuse = host_memory.reuse_freed_memory()
  sys.path.insert(0, str(ROOT / "benchmarks"))
  import step

  return step, reuse


def _config(step: Any, model_name: str) -> Any:
  return step.minilm_config() if model_name == "minilm" else step.bert_base_config()


def profile(step: Any, model: Any, params: Any, model_name: str, variants: Sequence[str],
            steps: int, log=print) -> dict[str, Any]:
  """{variant: step times, median and `attribute`'s per-kind times} over ``steps`` traced steps
  of each variant (after one untraced step); only kernel time inside the steps counts."""
  import jax

  plan = step.PLANS[model_name]
  batch = step.make_batch(model.config, plan["batch_size"], plan["seq_len"])
  out: dict[str, Any] = {}
  for name in variants:
    v = step.build_jax_variant(name, model, params, batch, level=0.1, tau=0.69, l0_lambda=1.0,
                               sigmoid_lambda=1.0)
    v.start_round()
    v.step()  # first-call costs, untraced
    with tempfile.TemporaryDirectory() as tmp:
      jax.profiler.start_trace(tmp)
      times = []
      for _ in range(steps):
        with jax.profiler.TraceAnnotation(STEP_SPAN):
          times.append(v.step())
      jax.profiler.stop_trace()
      events = trace_events(pathlib.Path(tmp))
    windows = step_windows(events)
    if len(windows) != steps:
      raise RuntimeError(f"{name}: the trace holds {len(windows)} {STEP_SPAN!r} spans for "
                         f"{steps} steps")
    # outside_busy_ms: other work still running in the process (0 when alone).
    kinds = attribute(events, steps, windows)
    v.end_round()
    out[name] = {"step_ms": [1000 * t for t in times],
                 "median_ms": 1000 * statistics.median(times), **kinds}
    log(f"{name}: step {1000 * statistics.median(times):.0f} ms, kernels busy "
        f"{kinds['busy_ms']:.0f} ms (outside the steps: {kinds['outside_busy_ms']:.0f} ms)")
  return out


def optimizer_update(step: Any, params: Any, rounds: int, log=print) -> dict[str, Any]:
  """The trainer's optimizer update alone (clip + Adam/AdamW + schedules, jitted, state
  donated), over the params only and over the params and top-k scores, ``rounds`` times each
  in alternation after one warm-up call: medians in ms and the scores' share."""
  import jax
  import jax.numpy as jnp
  import optax

  from mvp_jax import pruning

  spec = pruning.PruningSpec(method="topk", score_init="uniform")
  scores = pruning.init_scores(params, spec, jax.random.PRNGKey(0))
  fns, states, grads, times = {}, {}, {}, {}
  for name, sc in (("params", {}), ("params_and_scores", scores)):
    tx = step.variant_optimizer(spec, params, sc, level=0.1, tau=0.69, l0_lambda=1.0,
                                sigmoid_lambda=1.0)
    tree = {"params": params, "scores": sc}
    grads[name] = jax.tree.map(lambda x: jnp.full_like(x, 1e-3), tree)

    def update(t, s, g, tx=tx):
      u, s = tx.update(g, s, t)
      return optax.apply_updates(t, u), s

    fns[name] = jax.jit(update, donate_argnums=(0, 1))
    states[name] = fns[name](jax.tree.map(jnp.copy, tree), tx.init(tree), grads[name])
    jax.block_until_ready(states[name])
    times[name] = []
  for _ in range(rounds):
    for name, fn in fns.items():
      start = time.perf_counter()
      states[name] = fn(*states[name], grads[name])
      jax.block_until_ready(states[name])
      times[name].append(time.perf_counter() - start)
  med = {name: 1000 * statistics.median(t) for name, t in times.items()}
  n_scores = sum(int(x.size) for x in jax.tree.leaves(scores))
  out = {"rounds": rounds, "scores": n_scores,
         **{f"{name}_ms": m for name, m in med.items()},
         "scores_ms": med["params_and_scores"] - med["params"]}
  log(f"optimizer update alone: params {med['params']:.0f} ms, params and scores "
      f"{med['params_and_scores']:.0f} ms")
  return out


def main(argv: Sequence[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", choices=MODELS, default="bert-base")
  p.add_argument("--variants", default="dense,magnitude,topk_local,sigmoid_threshold")
  p.add_argument("--steps", type=int, default=3, help="traced steps per variant")
  p.add_argument("--optimizer-rounds", type=int, default=10,
                 help="timed calls of the optimizer update alone, each way (0: skip)")
  p.add_argument("--glibc-malloc", action="store_true",
                 help="leave malloc as glibc sets it (default: keep freed memory, as train.py)")
  p.add_argument("--out", type=pathlib.Path, default=RESULTS)
  args = p.parse_args(argv)
  if args.steps < 1:
    p.error("--steps must be at least 1")
  if args.optimizer_rounds < 0:
    p.error("--optimizer-rounds must be >= 0")
  step, reuse = _load_step(not args.glibc_malloc)
  model, params = step.random_model(_config(step, args.model))
  res: dict[str, Any] = {**step.environment(), "host_memory": "reuse" if reuse else "glibc",
                         "model": args.model, "steps": args.steps}
  res["variants"] = profile(step, model, params, args.model, args.variants.split(","),
                            args.steps)
  if args.optimizer_rounds:
    res["optimizer_update"] = optimizer_update(step, params, args.optimizer_rounds)
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(res, indent=1))
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()

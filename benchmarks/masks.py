"""Speed of the sort-free top-k threshold vs jnp.sort / lax.top_k, and masked train-step cost.

Measures, never asserts. All timings in one run, side by side (the threshold variants round-robin,
one call each per round); results (median seconds and ratios) go to benchmarks/results/masks.json.

  python benchmarks/masks.py            # N = 2.4M (768x3072), 21M (3 BERT layers), 85M (12)
  python benchmarks/masks.py --quick    # small sizes, a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import statistics
import sys
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import step as step_bench  # noqa: E402

from mvp_jax import masks, pruning  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "masks.json"


def _round_robin_medians(variants: dict, repeats: int) -> dict[str, float]:
  """Median seconds per variant, timed round-robin (one call of each per round).

  ``variants`` maps a name to ``(fn, args)``. Interleaving spreads the machine's noise and the
  allocator state left by the big sorts over every variant instead of the ones timed after them.
  """
  for fn, args in variants.values():
    jax.block_until_ready(fn(*args))  # compile + warm up
  times: dict[str, list[float]] = {name: [] for name in variants}
  for _ in range(repeats):
    for name, (fn, args) in variants.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


@contextlib.contextmanager
def radix(bits: int):
  """While active, `masks.kth_largest_key` decides ``bits`` bits per pass (trace time only)."""
  with mock.patch.object(masks, "default_radix_bits", lambda: bits):
    yield


def alt_bits() -> int:
  """The search timed next to this backend's default: 1 bit per pass on CPU (default 2), else 2.

  Result keys name it (``ours_1bit_*`` on CPU, ``ours_2bit_*`` elsewhere).
  """
  return 1 if masks.default_radix_bits() == 2 else 2


def _bert_kernels(layers: int, hidden: int, ffn: int) -> list[tuple[tuple[int, int], str]]:
  """(shape, kind) of a BERT encoder's six kernels per layer; a kind's copies share a stack."""
  square = [((hidden, hidden), kind) for kind in ("query", "key", "value", "attn_out")]
  return (square + [((hidden, ffn), "intermediate"), ((ffn, hidden), "output")]) * layers


def bench_threshold(name: str, kernels, level: float, repeats: int) -> dict:
  """Local and global masks: ours (traced level) vs sort-based and lax.top_k thresholds.

  "ours_local" runs one search loop per matrix, "ours_local_shared_loop" one loop for all
  (`masks.local_topk_masks` picks the latter on GPU/TPU by default), "ours_*_stacked" one loop
  over stacks of same-kind matrices (`pruning.PruningSpec.stack_search`); ratios use the
  first.

  Args:
    kernels: (shape, kind) per matrix; the kind is the stacking key.
  """
  shapes = [shape for shape, _ in kernels]
  kinds = [kind for _, kind in kernels]
  keys = jax.random.split(jax.random.PRNGKey(0), len(shapes))
  scores = [jax.random.normal(k, s) for k, s in zip(keys, shapes, strict=True)]
  n = sum(s.size for s in scores)
  ks = [int(level * s.size) for s in scores]
  k_all = int(level * n)

  lv = jnp.float32(level)
  ours_local = jax.jit(lambda ss, lv: masks.local_topk_masks(ss, lv, shared_loop=False))
  ours_global = jax.jit(lambda ss, lv: masks.global_topk_masks(ss, lv))
  # The same programs with the other number of bits per pass (`alt_bits`), traced and compiled
  # under the patch. Each is a new function object: jit shares traces between jit wrappers of
  # one function, which would hand one variant's program to the other.
  alt = alt_bits()
  with radix(alt):
    ours_local_alt = jax.jit(
      lambda ss, lv: masks.local_topk_masks(ss, lv, shared_loop=False)
    ).lower(scores, lv).compile()
    ours_global_alt = jax.jit(
      lambda ss, lv: masks.global_topk_masks(ss, lv)
    ).lower(scores, lv).compile()
  ours_local_shared = jax.jit(lambda ss, lv: masks.local_topk_masks(ss, lv, shared_loop=True))
  ours_local_stacked = jax.jit(lambda ss, lv: masks.local_topk_masks(ss, lv, stack_keys=kinds))
  ours_global_stacked = jax.jit(lambda ss, lv: masks.global_topk_masks(ss, lv, stack_keys=kinds))

  @jax.jit
  def sort_local(ss):  # the k-th largest from a full sort (k static), strict-greater mask
    return [s >= jnp.sort(s.ravel())[s.size - k] for s, k in zip(ss, ks, strict=True)]

  @jax.jit
  def sort_global(ss):
    t = jnp.sort(jnp.concatenate([s.ravel() for s in ss]))[n - k_all]
    return [s >= t for s in ss]

  @jax.jit
  def topk_local(ss):
    return [s >= jax.lax.top_k(s.ravel(), k)[0][-1] for s, k in zip(ss, ks, strict=True)]

  @jax.jit
  def topk_global(ss):
    t = jax.lax.top_k(jnp.concatenate([s.ravel() for s in ss]), k_all)[0][-1]
    return [s >= t for s in ss]

  row = {"name": name, "n": n, "leaves": len(shapes), "level": level,
         "radix_bits": masks.default_radix_bits()}
  medians = _round_robin_medians({
    "ours_local_s": (ours_local, (scores, lv)),
    f"ours_{alt}bit_local_s": (ours_local_alt, (scores, lv)),
    "ours_local_shared_loop_s": (ours_local_shared, (scores, lv)),
    "ours_local_stacked_s": (ours_local_stacked, (scores, lv)),
    "sort_local_s": (sort_local, (scores,)),
    "top_k_local_s": (topk_local, (scores,)),
    "ours_global_s": (ours_global, (scores, lv)),
    f"ours_{alt}bit_global_s": (ours_global_alt, (scores, lv)),
    "ours_global_stacked_s": (ours_global_stacked, (scores, lv)),
    "sort_global_s": (sort_global, (scores,)),
    "top_k_global_s": (topk_global, (scores,)),
  }, repeats)
  row.update(medians)
  for scope in ("local", "global"):
    ours = row[f"ours_{scope}_s"]
    row[f"sort_over_ours_{scope}"] = row[f"sort_{scope}_s"] / ours
    row[f"top_k_over_ours_{scope}"] = row[f"top_k_{scope}_s"] / ours
    row[f"{alt}bit_over_ours_{scope}"] = row[f"ours_{alt}bit_{scope}_s"] / ours
    row[f"stacked_over_ours_{scope}"] = row[f"ours_{scope}_stacked_s"] / ours
  return row


def bench_train_step(layers: int, hidden: int, ffn: int, batch: int, seq: int, repeats: int):
  """Forward + backward of a stack of dense layers (MiniLM-sized), masked vs unmasked."""
  rng = np.random.default_rng(0)
  dense = lambda i, o: {
    "kernel": jnp.asarray(rng.standard_normal((i, o)) / np.sqrt(i), jnp.float32),
    "bias": jnp.zeros((o,), jnp.float32),
  }
  params = {
    "encoder": {
      "layer": {
        str(i): {
          "attention": {
            "self": {n: dense(hidden, hidden) for n in ("query", "key", "value")},
            "output": {"dense": dense(hidden, hidden)},
          },
          "intermediate": {"dense": dense(hidden, ffn)},
          "output": {"dense": dense(ffn, hidden)},
        }
        for i in range(layers)
      }
    }
  }
  x = jnp.asarray(rng.standard_normal((batch * seq, hidden)), jnp.float32)
  spec = pruning.PruningSpec(method="topk")
  scores = pruning.init_scores(params, spec)
  scores = jax.tree.map(lambda s: s + jax.random.normal(jax.random.PRNGKey(1), s.shape), scores)

  def forward(p):
    h = x
    for i in range(layers):
      lay = p["encoder"]["layer"][str(i)]
      d = lambda m, v: v @ m["kernel"] + m["bias"]
      att = lay["attention"]
      a = jax.nn.gelu(d(att["self"]["query"], h)) * d(att["self"]["key"], h)
      h = h + d(att["output"]["dense"], a + d(att["self"]["value"], h))
      h = h + d(lay["output"]["dense"], jax.nn.gelu(d(lay["intermediate"]["dense"], h)))
    return jnp.mean(h**2)

  dense_step = jax.jit(jax.grad(forward))
  masked = lambda p, s, lv: forward(pruning.apply_masks(p, s, lv, spec))
  masked_step = jax.jit(jax.grad(masked, argnums=(0, 1)))
  lv = jnp.float32(0.3)
  alt = alt_bits()
  with radix(alt):  # a new function object, as above
    masked_alt = jax.jit(jax.grad(lambda p, s, lv: masked(p, s, lv), argnums=(0, 1)))
    masked_alt = masked_alt.lower(params, scores, lv).compile()
  row = {"layers": layers, "hidden": hidden, "ffn": ffn, "batch": batch, "seq": seq}
  row.update(_round_robin_medians({
    "dense_s": (dense_step, (params,)),
    "masked_topk_local_s": (masked_step, (params, scores, lv)),
    f"masked_topk_local_{alt}bit_s": (masked_alt, (params, scores, lv)),
  }, repeats))
  row["masked_over_dense"] = row["masked_topk_local_s"] / row["dense_s"]
  row[f"masked_{alt}bit_over_dense"] = row[f"masked_topk_local_{alt}bit_s"] / row["dense_s"]
  return row


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
  parser.add_argument("--repeats", type=int, default=None, help="rounds of the threshold timings")
  parser.add_argument("--step-repeats", type=int, default=None,
                      help="rounds of the masked-step timing (cheap next to the 85M sorts)")
  parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
  args = parser.parse_args(argv)
  repeats = args.repeats or (3 if args.quick else 10)
  if args.quick:
    cases = [
      ("262k (256x1024)", [((256, 1024), "dense")]),
      ("1.6M (2 layers, hidden 256)", _bert_kernels(2, 256, 1024)),
    ]
    step = dict(layers=2, hidden=128, ffn=512, batch=8, seq=64)
  else:
    cases = [
      ("2.4M (768x3072)", [((768, 3072), "dense")]),
      ("21M (3 BERT-base layers)", _bert_kernels(3, 768, 3072)),
      ("85M (BERT-base encoder)", _bert_kernels(12, 768, 3072)),
    ]
    step = dict(layers=6, hidden=384, ffn=1536, batch=32, seq=64)
  result = {
    **step_bench.environment(),  # date, machine (CPU model, usable cores), versions, device
    "jax": jax.__version__,
    "quick": args.quick,
    "repeats": repeats,
    "threshold": [],
  }
  for name, shapes in cases:
    row = bench_threshold(name, shapes, level=0.1, repeats=repeats)
    result["threshold"].append(row)
    print(json.dumps(row))
  step_repeats = args.step_repeats or (3 if args.quick else 10)
  result["step_repeats"] = step_repeats
  result["train_step"] = bench_train_step(repeats=step_repeats, **step)
  print(json.dumps(result["train_step"]))
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(result, indent=2) + "\n")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()

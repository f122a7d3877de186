"""Renders the benchmark results (benchmarks/results/*.json) as markdown tables in docs/results.md.

Each benchmark owns one block of the document, between markers::

  <!-- bench:step:begin -->
  ...generated...
  <!-- bench:step:end -->

Re-rendering replaces only those blocks, so hand-written sections (accuracy tables, notes) around
them are kept. A block whose markers are missing is appended at the end of the document; a result
file that does not exist leaves its block as it is.

  python benchmarks/report.py                      # update docs/results.md
  python benchmarks/report.py --print              # print the blocks instead
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "results.md"

DOC_HEADER = """# Results

Speed and memory blocks are generated from `benchmarks/results/*.json` by
`python benchmarks/report.py`; edit the text outside the `bench:` markers only.
"""

MIB = 2**20


# ----------------------------------------------------------------------------------------------
# Formatting helpers
# ----------------------------------------------------------------------------------------------


def _f(x: Any, fmt: str = "{:.3f}", missing: str = "n/a") -> str:
  return missing if x is None else fmt.format(x)


def _draws(row: dict[str, Any]) -> str:
  """'12,345,678' random words, with the PRNG implementation when it is not the default."""
  n = row.get("random_words_per_step")
  if n is None:
    return ""
  impl = row.get("prng_impl")
  return f"{n:,}" + (f" ({impl})" if impl and impl != "threefry2x32" else "")


def _ms(seconds: float | None) -> str:
  return _f(None if seconds is None else 1000 * seconds, "{:.1f}")


def _mib(n: int | None) -> str:
  if n is None:
    return "n/a"
  return f"{n / MIB:.0f}" if n >= 10 * MIB else f"{n / MIB:.2f}"


def _ratio(x: float | None) -> str:
  return _f(x, "{:.2f}x")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  out += ["| " + " | ".join(r) + " |" for r in rows]
  return out


def _provenance(res: dict[str, Any]) -> list[str]:
  """One line on where and when, plus a warning for --quick runs."""
  m = res.get("machine", {})
  v = res.get("versions", {})
  cpu = m.get("cpu_model") or m.get("processor") or "an unrecorded CPU"
  cores = m.get("usable_cores") or m.get("cpu_count")
  versions = ", ".join(f"{k} {v[k]}" for k in ("jax", "flax", "torch", "transformers") if v.get(k))
  if not versions and res.get("jax"):
    versions = f"jax {res['jax']}"
  device = res.get("device", res.get("backend", "?"))
  kept = ("; host memory kept (`mvp_jax.host_memory`)" if res.get("host_memory") == "reuse"
          else "")
  lines = [f"Run {res.get('date', '?')} on {cpu} ({cores} cores), device `{device}`; "
           f"{versions}{kept}."]
  if res.get("quick"):
    lines += [
      "",
      "> **Quick (smoke) run: tiny sizes, disturbed machine. These numbers say that "
      "the benchmark runs, nothing about speed.**",
    ]
  return lines


# ----------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------


def _alt_bits(rows: Sequence[dict[str, Any]]) -> int | None:
  """The bits per pass masks.py timed next to the default (1 on CPU, 2 elsewhere), if any."""
  for alt in (1, 2):
    if any(f"ours_{alt}bit_local_s" in r for r in rows):
      return alt
  return None


def render_masks(res: dict[str, Any], title: str = "Top-k threshold: sort-free vs sort") -> str:
  """benchmarks/masks.py: sort-free threshold vs sort / lax.top_k, and the bits per pass."""
  lines = [f"### {title}", ""] + _provenance(res) + [""]
  if res.get("repeats"):
    lines += [f"Medians of {res['repeats']} round-robin rounds (one call of each variant per "
              "round).", ""]
  rows_in = res.get("threshold", [])
  alt = _alt_bits(rows_in)
  # Off CPU the search shares one loop for all matrices by default: show that variant too.
  shared = res.get("backend", "cpu") != "cpu" and any(
    "ours_local_shared_loop_s" in r for r in rows_in
  )
  stacked = any("ours_local_stacked_s" in r for r in rows_in)
  bits = {r.get("radix_bits") for r in rows_in} - {None}
  if bits:
    other = ""
    if alt == 1:
      other = ("; \"1-bit\" is the same search as a plain bisection (32 passes), timed in the "
               "same rounds")
    elif alt:
      other = (f"; \"{alt}-bit\" is the same search deciding {alt} bits per pass (fused "
               "counts of the candidates), timed in the same rounds")
    lines += [
      f"\"ours\" decides {'/'.join(map(str, sorted(bits)))} bits of the threshold per pass "
      f"(this backend's default){other}. \"ours local\" runs one search loop per matrix"
      + ("; \"one loop\" searches all matrices in one loop, the default here." if shared
         else ".")
      + (" \"stacked\" searches each kernel's copies in all layers as one stack, one reduction"
         " per stack and pass (`pruning.stack_search`; equal to \"ours\" where every matrix is"
         " of its own kind)." if stacked else ""),
      "",
    ]
  rows = []
  for r in rows_in:
    row = [r["name"], f"{r['leaves']}"]
    for scope in ("local", "global"):
      row += [_ms(r[f"ours_{scope}_s"])]
      if scope == "local" and shared:
        row += [_ms(r.get("ours_local_shared_loop_s"))]
      if alt and f"ours_{alt}bit_{scope}_s" in r:
        row += [_ms(r[f"ours_{alt}bit_{scope}_s"]), _ratio(r[f"{alt}bit_over_ours_{scope}"])]
      if stacked:
        row += [_ms(r.get(f"ours_{scope}_stacked_s")), _ratio(r.get(f"stacked_over_ours_{scope}"))]
      row += [_ms(r[f"sort_{scope}_s"]), _ms(r[f"top_k_{scope}_s"]),
              _ratio(r[f"sort_over_ours_{scope}"])]
    rows.append(row)
  header = ["scores", "matrices"]
  for scope in ("local", "global"):
    header += [f"ours {scope} ms"]
    if scope == "local" and shared:
      header += ["ours local, one loop ms"]
    if alt:
      header += [f"{alt}-bit {scope} ms", f"{alt}-bit / ours ({scope})"]
    if stacked:
      header += [f"stacked {scope} ms", f"stacked / ours ({scope})"]
    header += [f"sort {scope} ms", f"lax.top_k {scope} ms", f"sort / ours ({scope})"]
  lines += _table(header, rows)
  ts = res.get("train_step")
  if ts:
    with_alt = ""
    if alt and f"masked_topk_local_{alt}bit_s" in ts:
      with_alt = (f"; with the {alt}-bit search {_ms(ts[f'masked_topk_local_{alt}bit_s'])} ms "
                  f"({_ratio(ts[f'masked_{alt}bit_over_dense'])} dense)")
    lines += [
      "",
      f"Masked forward+backward of a {ts['layers']}-layer stack (hidden "
      f"{ts['hidden']}, FFN {ts['ffn']}, batch {ts['batch']} x {ts['seq']}), no "
      f"optimizer, medians of {res.get('step_repeats', res.get('repeats', '?'))} round-robin "
      f"rounds: dense {_ms(ts['dense_s'])} ms, local top-k "
      f"{_ms(ts['masked_topk_local_s'])} ms ({_ratio(ts['masked_over_dense'])} dense){with_alt}.",
    ]
  return "\n".join(lines)


def _step_model(name: str, sec: dict[str, Any], backend: str = "cpu") -> list[str]:
  m, s = sec["model"], sec["settings"]
  weights = f"; weights {m['weights']}" if m.get("weights") else ""
  lines = [
    f"#### {name}: hidden {m['hidden_size']}, {m['num_hidden_layers']} layers, "
    f"{m['num_attention_heads']} heads, FFN {m['intermediate_size']}; batch "
    f"{s['batch_size']} x seq {s['seq_len']}",
    "",
    f"{m['parameters']:,} parameters, {m['pruned_parameters']:,} of them in pruned "
    f"matrices{weights}. Keep fraction {s['level']} (tau {s['tau']:.3f} for sigmoid_threshold), "
    f"scores {s['score_init']}, dropout {s['dropout']}. Medians of {s['rounds']} "
    f"round-robin rounds x {s['steps']} steps.",
    "",
  ]
  within = sec.get("target", {}).get("within", {})
  with_conds = any("conds_per_step" in r for r in sec["variants"].values())
  with_draws = any("random_words_per_step" in r for r in sec["variants"].values())
  rows = []
  for v, r in sec["variants"].items():
    if v.startswith("torch_"):
      continue
    mem = r.get("memory_bytes", {})
    dense_temp = sec["variants"].get("dense", {}).get("memory_bytes", {}).get("temp")
    temp_ratio = mem["temp"] / dense_temp if mem.get("temp") and dense_temp else None
    ok = {True: "yes", False: "**no**"}.get(within.get(v), "")
    rows.append(
      [
        f"`{v}`",
        _ms(r["median_s"]),
        _ratio(r.get("ratio_to_dense")),
        ok,
        _mib(mem.get("peak")),
        _ratio(r.get("memory_ratio_to_dense")),
        _mib(mem.get("temp")),
        _ratio(temp_ratio),
        _f(r.get("compile_s"), "{:.0f}"),
      ]
      + ([str(r.get("conds_per_step", ""))] if with_conds else [])
      + ([_draws(r)] if with_draws else [])
    )
  lines += _table(
    [
      "variant",
      "step ms (median)",
      "time / dense",
      "within 5%",
      "peak MiB (compiled)",
      "memory / dense",
      "temp MiB",
      "temp / dense",
      "compile s",
    ]
    + (["conds / step"] if with_conds else [])
    + (["random words / step"] if with_draws else []),
    rows,
  )
  if with_conds:
    lines += [
      "",
      "conds / step: the conditionals every step meets (outside other conds' branches), the "
      "tie rule of the top-k masks and soft movement's minimum retention; XLA's GPU runtime "
      "waits for the device on each (`masks.default_joint_conds`).",
    ]
  if with_draws:
    lines += [
      "",
      "random words / step: 32-bit words the step draws from its PRNG (`jax.random.bits`), "
      "dropout's one per activation and L0's one per pruned weight; the implementation is named "
      "where it is not threefry2x32.",
    ]
  sort = sec.get("sort_over_sort_free") or {}
  notes = [
    f"sort-per-forward `{k}_sort` takes {_ratio(x)} the time of sort-free `{k}`"
    for k, x in sort.items()
  ]
  if notes:
    lines += ["", "Reference approach in the same run: " + "; ".join(notes) + "."]
  one_bit, two_bit = sec.get("one_bit_over_default"), sec.get("two_bit_over_default")
  if backend != "cpu":  # off CPU the default search is the one-bit bisection
    if one_bit:
      lines += [
        "",
        "Noise in the same run: off CPU the default search is already the one-bit bisection, "
        "so `topk_local_1bit` and `topk_local` compile the same program; their medians differ "
        f"by {_ratio(one_bit)}.",
      ]
    if two_bit:
      lines += [
        "",
        "Threshold search in the same run: `topk_local_2bit` (two bits per pass, 16 passes of "
        f"fused counts, the CPU default) takes {_ratio(two_bit)} the time of `topk_local` (this "
        "backend's default, one bit per pass).",
      ]
  elif one_bit:
    lines += [
      "",
      "Threshold search in the same run: `topk_local_1bit` (a one-bit bisection, 32 passes, "
      f"the search before two-bit passes) takes {_ratio(one_bit)} the "
      "time of `topk_local` (the backend's default search).",
    ]
  tv = {v: r for v, r in sec["variants"].items() if v.startswith("torch_")}
  if tv:
    on_cuda = s.get("torch_device") == "cuda"
    where = (
      "on CUDA, each step ended by `torch.cuda.synchronize()`"
      if on_cuda
      else f"`torch.set_num_threads({s.get('torch_threads')})`, as many as XLA uses"
    )
    lines += [
      "",
      f"PyTorch ({where}; eager mode, transformers' default attention; same checkpoint and "
      "batch; forward + backward + clip + AdamW; `torch_topk_sort` sorts the scores of the "
      "six encoder matrices per layer on every forward, straight-through backward):",
      "",
    ]
    header = ["variant", "step ms (median)", "time / torch dense", "time / JAX dense"]
    rows = [
      [
        f"`{v}`",
        _ms(r["median_s"]),
        _ratio(r.get("ratio_to_torch_dense")),
        _ratio(r.get("ratio_to_jax_dense")),
      ]
      for v, r in tv.items()
    ]
    if on_cuda:
      header += ["peak MiB (`max_memory_allocated`)", "memory / torch dense"]
      for row, r in zip(rows, tv.values(), strict=True):
        row += [
          _mib(r.get("memory_bytes", {}).get("peak")),
          _ratio(r.get("memory_ratio_to_torch_dense")),
        ]
    lines += _table(header, rows)
  rss = sec.get("rss_bytes") or {}
  extra = f"Process peak RSS after this model: {_mib(rss.get('peak'))} MiB"
  if sec.get("device_peak_bytes_in_use"):
    extra += f"; device peak_bytes_in_use {_mib(sec['device_peak_bytes_in_use'])} MiB"
  lines += ["", extra + "."]
  return lines


def render_step(res: dict[str, Any], title: str = "Train step: dense vs pruning methods") -> str:
  """benchmarks/step.py: train-step time and memory per pruning method."""
  lines = (
    [f"### {title}", ""]
    + _provenance(res)
    + [
      "",
      "The real `trainer.train_step` (jitted as the trainer does, state donated), all variants "
      "round-robin in one process. Peak memory is the compiled step's memory analysis "
      "(arguments + outputs - donated aliases + temporaries): the state of a pruned run also "
      "holds the scores and their Adam moments. Target (issue 6): a movement-pruning step within "
      "5% of the dense step.",
      "",
    ]
  )
  for name, sec in res.get("models", {}).items():
    model_lines = _step_model(name, sec, res.get("backend", "cpu"))
    if sec.get("date") and sec["date"] != res.get("date"):
      # A section kept from an earlier run by `step.py --only`: say when it was measured.
      model_lines[1:1] = ["", f"Measured in an earlier run ({sec['date']}), kept by `--only`."]
    lines += model_lines + [""]
  return "\n".join(lines).rstrip()


def render_step_tokens(runs: Sequence[dict[str, Any]], kept: bool = False) -> str:
  """step_tokens_*.json (step.py --batch-size/--seq-len, one shape each): overhead vs tokens.

  ``kept``: the runs kept their host memory (``--reuse-host-memory``, as train.py runs).

  One row per (model, batch x seq), ordered by model and tokens per step; each cell is a
  variant's step time over the dense step of the same run, and the milliseconds it adds.
  """
  found = []
  for res in runs:
    for name, sec in res.get("models", {}).items():
      s = sec["settings"]
      found.append((name, s["batch_size"] * s["seq_len"], sec, res))
  found.sort(key=lambda x: (x[0], x[1]))
  variants = list(dict.fromkeys(v for _, _, sec, _ in found for v in sec["variants"]))
  variants = [v for v in variants if v != "dense" and not v.startswith("torch_")]
  lines = [
    "### Train step: what pruning adds, by tokens per step"
    + (" (kept host memory, as train.py runs)" if kept else ""),
    "",
    "One `step.py` run per shape (`--batch-size`, `--seq-len`), each timing its variants "
    "round-robin against its own dense step; a cell is the variant's step time over that dense "
    "step, and in brackets the milliseconds it adds. Pruning adds work per weight (masks, "
    "score gradients, the scores' Adam update, the search), not per token: see the per-token "
    "count under the table.",
    "",
  ]
  dates = sorted({res.get("date", "?") for *_, res in found})
  first = found[0][3] if found else {}
  lines += _provenance({**first, "date": ", ".join(dates)}) + [""]
  header = ["model", "batch x seq", "tokens / step", "rounds x steps", "dense step ms"]
  header += [f"`{v}`" for v in variants]
  rows = []
  for name, tokens, sec, _ in found:
    s = sec["settings"]
    dense = sec["variants"]["dense"]["median_s"]
    row = [
      name,
      f"{s['batch_size']} x {s['seq_len']}",
      f"{tokens:,}",
      f"{s['rounds']} x {s['steps']}",
      _ms(dense),
    ]
    for v in variants:
      r = sec["variants"].get(v)
      row.append(
        ""
        if r is None
        else f"{_ratio(r['median_s'] / dense)} ({1000 * (r['median_s'] - dense):+.1f})"
      )
    rows.append(row)
  lines += _table(header, rows)
  counted = [(name, tokens, sec) for name, tokens, sec, _ in found
             if "token_elements_per_step" in sec["variants"].get("dense", {})]
  if counted:
    differ = []
    for name, tokens, sec in counted:
      dense_n = sec["variants"]["dense"]["token_elements_per_step"]
      for v, r in sec["variants"].items():
        if r.get("token_elements_per_step", dense_n) != dense_n:
          differ.append(f"{name} {tokens:,} tokens `{v}`: "
                        f"{_ratio(r['token_elements_per_step'] / dense_n)}")
    lines += [
      "",
      f"Per-token work ({len(counted)} of {len(found)} runs record it: the elements of the "
      "values a step's program computes whose leading dimension is the batch or batch x seq, "
      "`step.token_elements`): "
      + ("the same in every variant as in dense." if not differ
         else "differs from dense in " + "; ".join(differ) + "."),
    ]
  return "\n".join(lines)


def render_host_memory(res: dict[str, Any]) -> str:
  """host_memory.json: train steps with glibc's default malloc vs `reuse_freed_memory`.

  One row per (model, variant): each setting's median step and minor page faults per step,
  their ratio, and each setting's step over its own dense step (the issue's 5% target).
  """
  lines = [
    "### Train step: glibc's malloc vs kept host memory",
    "",
    "Two worker processes per model, one per setting (`glibc`: malloc as the C library sets it; "
    "`reuse`: `mvp_jax.host_memory.reuse_freed_memory`, what `train.py` does by default), the "
    "same compiled steps in each, timed one step at a time round-robin across both. Faults: "
    "minor page faults per step (pages of 4 KiB the kernel maps and zeroes).",
    "",
  ]
  lines += _provenance(res) + [""]
  header = ["model", "variant", "glibc ms", "reuse ms", "reuse / glibc", "glibc faults / step",
            "reuse faults / step", "time / dense (glibc)", "time / dense (reuse)"]
  rows, rss = [], []
  for name, sec in res.get("models", {}).items():
    dense = sec["variants"].get("dense")
    for v, r in sec["variants"].items():
      g, u = r["glibc"], r["reuse"]
      rows.append([
        name, f"`{v}`", _ms(g["median_s"]), _ms(u["median_s"]),
        _ratio(u["median_s"] / g["median_s"]),
        f"{g['faults_per_step']:,.0f}", f"{u['faults_per_step']:,.0f}",
        _ratio(g["median_s"] / dense["glibc"]["median_s"]) if dense else "",
        _ratio(u["median_s"] / dense["reuse"]["median_s"]) if dense else "",
      ])
    s, w = sec["settings"], sec["workers"]
    rss.append(
      f"{name} (batch {s['batch_size']} x seq {s['seq_len']}, {s['rounds']} rounds x "
      f"{s['steps']} steps, weights {s['weights']}): peak RSS {_mib(w['glibc']['peak_rss_bytes'])}"
      f" MiB with glibc's malloc, {_mib(w['reuse']['peak_rss_bytes'])} MiB kept"
      + ("" if w["reuse"]["applied"] else " (**the setting did not take effect**)") + ".")
  lines += _table(header, rows) + [""]
  lines += ["Each worker's peak resident memory (all its variants compiled and run): "
            + " ".join(rss)]
  return "\n".join(lines)


def render_checkpoint_save(res: dict[str, Any]) -> str:
  """checkpoint_save.json: orbax's replica-parallel copy vs one replica per array."""
  lines = [
    "### Checkpoint save: replica-parallel copy vs one replica",
    "",
    f"One process, the trainer's state of a top-k run replicated over {res.get('device_count')} "
    "devices, saved by both savers alternately (`replica_parallel`: orbax's default on CPUs and "
    "TPUs, each replicated array cut into a slice per replica; `one_replica`: "
    "`mvp_jax.checkpoint`'s default in a single process). *Blocked*: the time `save` holds the "
    "training loop (the device-to-host copy); *total*: until the files are committed. Medians "
    f"of {res.get('rounds')} saves after a first one, shown apart (it compiles the slices).",
    "",
  ]
  lines += _provenance(res) + [""]
  header = ["model", "arrays", "state MiB", "first blocked s (rp / one)", "blocked ms (rp)",
            "blocked ms (one)", "one / rp", "total ms (rp)", "total ms (one)", "one / rp",
            "MiB on disk (rp / one)"]
  rows = []
  for name, sec in res.get("models", {}).items():
    rp, one = sec["savers"]["replica_parallel"], sec["savers"]["one_replica"]
    rows.append([
      name, str(sec["arrays"]), _mib(sec["state_bytes"]),
      f"{rp['first_blocked_s']:.2f} / {one['first_blocked_s']:.2f}",
      _ms(rp["median_blocked_s"]), _ms(one["median_blocked_s"]), _ratio(sec["blocked_ratio"]),
      _ms(rp["median_total_s"]), _ms(one["median_total_s"]), _ratio(sec["total_ratio"]),
      f"{_mib(rp['bytes_on_disk'])} / {_mib(one['bytes_on_disk'])}",
    ])
  lines += _table(header, rows)
  return "\n".join(lines)


def render_step_work(res: dict[str, Any]) -> str:
  """step_work.json: what each variant adds to the compiled step's flops and bytes, by shape."""
  lines = [
    "### Train step: what pruning adds to the compiled program, by tokens per step",
    "",
    "Each variant's train step compiled as `step.py` times it, at the shapes of the tokens "
    "tables, not run: XLA's flop count of the optimised program (`cost_analysis`, which "
    "counts a loop's body once: the threshold search's passes as one) and the bytes its "
    "kernels read and write (`hlo_program.describe`: each fusion's operands plus its result, "
    "loops by their trip count; an upper bound on the traffic). A cell is what the variant "
    "adds to the dense step of the same shape.",
    "",
  ]
  lines += _provenance(res) + [""]
  rows, spreads = [], []
  models = res.get("models", {})
  variants = list(dict.fromkeys(
    v for sec in models.values() for row in sec["rows"] for v in row["variants"] if v != "dense"))
  header = ["model", "batch x seq", "tokens / step", "dense GFLOP", "dense GB"]
  header += [f"`{v}` +GFLOP / +GB" for v in variants]
  for name, sec in models.items():
    added: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    for row in sorted(sec["rows"], key=lambda r: r["batch_size"] * r["seq_len"]):
      dense = row["variants"]["dense"]
      cells = []
      for v in variants:
        w = row["variants"].get(v)
        if w is None:
          cells.append("")
          continue
        extra = (w["flops"] - dense["flops"], w["bytes"] - dense["bytes"])
        added[v].append(extra)
        cells.append(f"{extra[0] / 1e9:+.2f} / {extra[1] / 1e9:+.2f}")
      tokens = row["batch_size"] * row["seq_len"]
      rows.append([name, f"{row['batch_size']} x {row['seq_len']}", f"{tokens:,}",
                   f"{dense['flops'] / 1e9:,.1f}", f"{dense['bytes'] / 1e9:.2f}", *cells])
    for v, xs in added.items():
      if len(xs) > 1:
        spread = max(
          (max(x[i] for x in xs) - min(x[i] for x in xs)) / max(abs(x[i]) for x in xs)
          for i in (0, 1) if max(abs(x[i]) for x in xs) > 0)
        spreads.append(f"{name} `{v}` {100 * spread:.2g}%")
  lines += _table(header, rows)
  if spreads:
    lines += ["", "Largest difference between a variant's added flops or bytes across its "
              "model's shapes, relative to the largest: " + ", ".join(spreads) + "."]
  return "\n".join(lines)


def render_eval(
  res: dict[str, Any], title: str = "Evaluation throughput of the exported model"
) -> str:
  """Evaluation throughput of the exported model (step.json's eval_throughput)."""
  ev = res.get("eval_throughput", res)
  s = ev["settings"]
  lines = (
    [f"### {title}", ""]
    + _provenance({**res, "date": ev.get("date", res.get("date", "?"))})
    + [
      "",
      f"Model {ev['model']['num_hidden_layers']} layers, hidden {ev['model']['hidden_size']}; "
      f"batch {s['batch_size']} x seq {s['seq_len']}, deterministic forward. The pruned export "
      f"has {100 * ev['zero_fraction_of_pruned_matrices']['pruned']:.1f}% zeros in its pruned "
      "matrices, stored dense.",
      "",
    ]
  )
  rows = []
  for v, r in ev["variants"].items():
    fw = v.split("_", 1)[0]
    dense = ev["variants"].get(f"{fw}_dense", {}).get("examples_per_s")
    rows.append(
      [
        f"`{v}`",
        _ms(r["median_s"]),
        _f(r["examples_per_s"], "{:.0f}"),
        _ratio(r["examples_per_s"] / dense if dense else None),
      ]
    )
  lines += _table(["variant", "ms / batch (median)", "examples / s", "throughput / dense"], rows)
  return "\n".join(lines)


def _device(res: dict[str, Any]) -> str:
  return res.get("device", res.get("backend", "accelerator"))


def render_accelerator(res: dict[str, Any]) -> str:
  """step_accelerator.json (step.py on a GPU/TPU, --out): train step, then eval throughput."""
  device = _device(res)
  parts = [render_step(res, title=f"Train step on an accelerator ({device})")]
  if "eval_throughput" in res:
    parts.append(render_eval(res, title=f"Evaluation throughput on an accelerator ({device})"))
  return "\n\n".join(parts)


def render_masks_accelerator(res: dict[str, Any]) -> str:
  """masks_accelerator.json (masks.py on a GPU/TPU, --out)."""
  return render_masks(res, title=f"Top-k threshold on an accelerator ({_device(res)})")


def fit_launch_costs(
  programs: dict[str, dict[str, Any]], measured: dict[str, dict[str, float]]
) -> dict[str, Any] | None:
  """Least-squares fit of measured step times to what the programs launch.

  ``ms = base[model] + us_per_kernel / 1000 * kernels + ms_per_gb * GB moved``, one base per
  model, over every (model, variant) with both a program description (`gpu_program.py`) and a
  measured median (ms). None with fewer points than unknowns + 2.

  Args:
    programs: {model: {variant: hlo_program.describe(...)}}.
    measured: {model: {variant: median step ms}}.

  Returns:
    base_ms {model}, us_per_kernel, ms_per_gb, and points: (model, variant, measured ms,
    fitted ms) each.
  """
  points = [(m, v) for m in sorted(measured) for v in measured[m] if v in programs.get(m, {})]
  models = sorted({m for m, _ in points})
  if len(points) < len(models) + 4:
    return None
  x = np.array([[float(m == mm) for mm in models]
                + [programs[m][v]["kernels"], programs[m][v]["bytes"] / 1e9] for m, v in points])
  y = np.array([measured[m][v] for m, v in points])
  coef = np.linalg.lstsq(x, y, rcond=None)[0]
  fitted = x @ coef
  return {
    "base_ms": dict(zip(models, coef[: len(models)].tolist(), strict=True)),
    "us_per_kernel": float(coef[len(models)] * 1000),
    "ms_per_gb": float(coef[len(models) + 1]),
    "points": [(m, v, float(t), float(f)) for (m, v), t, f in zip(points, y, fitted, strict=True)],
  }


def _predict(fit: dict[str, Any], model: str, program: dict[str, Any]) -> float | None:
  if model not in fit["base_ms"]:
    return None
  return (fit["base_ms"][model] + fit["us_per_kernel"] / 1000 * program["kernels"]
          + fit["ms_per_gb"] * program["bytes"] / 1e9)


def render_gpu_program(src: dict[str, Any]) -> str:
  """gpu_program.json (this code's train steps compiled for a GPU, no device), and
  gpu_program_<commit>.json (the code a GPU run timed) with step_accelerator.json's medians."""
  current, timed, accel = src.get("current"), src.get("timed"), src.get("measured")
  measured: dict[str, dict[str, float]] = {}
  if accel is not None:
    for model, sec in accel.get("models", {}).items():
      measured[model] = {v: r["median_s"] * 1000 for v, r in sec["variants"].items()
                         if not v.startswith("torch_") and r.get("median_s")}
  timed_programs = {} if timed is None else {
    m: sec["variants"] for m, sec in timed["models"].items()}
  fit = fit_launch_costs(timed_programs, measured) if timed_programs else None
  lines = ["### What the train step launches on a GPU (compiled for an H100, no device)", ""]
  for label, res in (("This code", current), ("The code the GPU run timed", timed)):
    if res is None:
      continue
    env = res["environment"]
    lines += [
      f"{label}: commit `{env.get('commit')}`, compiled {env['date']} by jax {env['jax']} "
      f"({env.get('cuda_plugin')}) for `{env['device']}`, on a machine without a GPU.",
      "",
    ]
  if fit is not None:
    lines += [
      f"Fit to the GPU run's medians ({accel.get('device')}, {accel.get('date')}; "
      f"{len(fit['points'])} steps of the timed code): step ms = base + "
      f"{fit['us_per_kernel']:.2f} us per kernel + {fit['ms_per_gb']:.2f} ms per GB moved, "
      "base " + ", ".join(f"{m} {b:.2f} ms" for m, b in fit["base_ms"].items()) + ".",
      "",
    ]
    lines += _table(
      ["model", "variant (timed code)", "kernels", "GB moved", "host round trips",
       "measured ms", "fitted ms", "fitted / measured"],
      [[m, f"`{v}`", f"{timed_programs[m][v]['kernels']:,}",
        f"{timed_programs[m][v]['bytes'] / 1e9:.2f}", str(timed_programs[m][v]["host_syncs"]),
        f"{t:.1f}", f"{f:.1f}", _ratio(f / t)] for m, v, t, f in fit["points"]],
    )
    lines.append("")
  if current is not None:
    for model, sec in current["models"].items():
      variants = sec["variants"]
      dense = variants.get("dense")
      b, t = sec.get("batch_shape", ["?", "?"])
      lines += [f"#### {model}: batch {b} x seq {t}, this code", ""]
      pred_dense = None if fit is None or dense is None else _predict(fit, model, dense)
      rows = []
      for v, d in variants.items():
        pred = None if fit is None else _predict(fit, model, d)
        peak = d["memory"]["peak"]
        rows.append([
          f"`{v}`", f"{d['kernels']:,}", f"{d['bytes'] / 1e9:.2f}", str(d["host_syncs"]),
          " ".join(f"{lp['trip_count']}x{lp['body_kernels']}" for lp in d["loops"]) or "-",
          _mib(peak), _ratio(None if dense is None else peak / dense["memory"]["peak"]),
          _f(pred, "{:.1f}"),
          _ratio(None if pred is None or pred_dense is None else pred / pred_dense),
        ])
      lines += _table(
        ["variant", "kernels", "GB moved", "host round trips", "loops (trips x kernels)",
         "peak MiB (compiled)", "memory / dense", "fitted ms", "fitted / dense"], rows)
      lines.append("")
  lines.append(
    "Kernels: launches per step (loops counted by their trip count; of a conditional, the "
    "branch an untied step takes). GB moved: operands + results of every kernel, an upper "
    "bound. Fitted ms: the fit above applied to this program: an estimate, not a measurement.")
  return "\n".join(lines)


def _gpu_program_source(results_dir: pathlib.Path) -> dict[str, Any] | None:
  timed = sorted(results_dir.glob("gpu_program_*.json"))
  src = {
    "current": _load(results_dir / "gpu_program.json"),
    "timed": _load(timed[-1]) if timed else None,
    "measured": _load(results_dir / "step_accelerator.json"),
  }
  return src if src["current"] or src["timed"] else None


def _eval_source(results_dir: pathlib.Path) -> dict[str, Any] | None:
  own = _load(results_dir / "eval_throughput.json")
  if own is not None:
    return own
  step = _load(results_dir / "step.json")
  return step if step and "eval_throughput" in step else None


def _tokens_source(results_dir: pathlib.Path, kept: bool) -> list[dict[str, Any]] | None:
  """The step_tokens_*.json runs with glibc's malloc (``kept=False``) or with the host memory
  kept (``--reuse-host-memory``, ``kept=True``): one table each, never mixed."""
  runs = [_load(p) for p in sorted(results_dir.glob("step_tokens_*.json"))]
  runs = [r for r in runs if r is not None and (r.get("host_memory") == "reuse") == kept]
  return runs or None


def _load(path: pathlib.Path) -> dict[str, Any] | None:
  return json.loads(path.read_text()) if path.exists() else None


BLOCKS: dict[str, tuple[Callable[[pathlib.Path], Any], Callable[[Any], str]]] = {
  "masks": (lambda d: _load(d / "masks.json"), render_masks),
  "step": (lambda d: _load(d / "step.json"), render_step),
  # step.py --variants with the stacked searches (pruning.stack_search), --out step_stacked.json.
  "step_stacked": (
    lambda d: _load(d / "step_stacked.json"),
    lambda res: render_step(res, title="Train step with stacked threshold searches"),
  ),
  # step.py --variants with the conds forced per matrix or shared, --out step_conds.json.
  "step_conds": (
    lambda d: _load(d / "step_conds.json"),
    lambda res: render_step(res, title="Train step: one cond per matrix vs one shared cond"),
  ),
  # step.py --variants with L0's noise removed or drawn by rbg, --out step_l0.json.
  "step_l0": (
    lambda d: _load(d / "step_l0.json"),
    lambda res: render_step(res, title="Train step: where L0's cost goes"),
  ),
  # step.py --batch-size/--seq-len, one shape per file: step_tokens_<model>_<batch>x<seq>.json.
  "step_tokens": (lambda d: _tokens_source(d, kept=False), render_step_tokens),
  # The same with --reuse-host-memory (step_tokens_reuse_<model>_<batch>x<seq>.json).
  "step_tokens_reuse": (
    lambda d: _tokens_source(d, kept=True),
    lambda runs: render_step_tokens(runs, kept=True),
  ),
  # step_work.py: the compiled steps' flops and bytes at the tokens tables' shapes.
  "step_work": (lambda d: _load(d / "step_work.json"), render_step_work),
  "eval": (_eval_source, render_eval),
  # host_memory.py: glibc's malloc vs mvp_jax.host_memory.reuse_freed_memory.
  "host_memory": (lambda d: _load(d / "host_memory.json"), render_host_memory),
  # step.py --reuse-host-memory --no-torch --no-eval --out step_reuse.json: as train.py runs.
  "step_reuse": (
    lambda d: _load(d / "step_reuse.json"),
    lambda res: render_step(res, title="Train step with kept host memory (as train.py runs)"),
  ),
  # checkpoint_save.py: orbax's replica-parallel copy vs mvp_jax.checkpoint's one replica.
  "checkpoint_save": (lambda d: _load(d / "checkpoint_save.json"), render_checkpoint_save),
  # Runs on a GPU/TPU (step.py / masks.py --out benchmarks/results/<name>_accelerator.json).
  "step_accelerator": (lambda d: _load(d / "step_accelerator.json"), render_accelerator),
  "masks_accelerator": (lambda d: _load(d / "masks_accelerator.json"), render_masks_accelerator),
  # gpu_program.py (compiled for a GPU, no device): gpu_program.json, gpu_program_<commit>.json.
  "gpu_program": (_gpu_program_source, render_gpu_program),
}


# ----------------------------------------------------------------------------------------------
# Document update
# ----------------------------------------------------------------------------------------------


def render_blocks(results_dir: pathlib.Path = RESULTS_DIR) -> dict[str, str]:
  """{block name: markdown} for every result file that exists."""
  out = {}
  for name, (load, render) in BLOCKS.items():
    res = load(results_dir)
    if res is not None:
      out[name] = render(res)
  return out


def replace_blocks(text: str, blocks: dict[str, str]) -> str:
  """``text`` with each named block's content replaced (appended when its markers are absent)."""
  for name, body in blocks.items():
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    block = f"{begin}\n{body}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
      text = pattern.sub(lambda _, b=block: b, text, count=1)
    else:
      text = text.rstrip("\n") + "\n\n" + block + "\n"
  return text


def update_doc(doc: pathlib.Path = DOC, results_dir: pathlib.Path = RESULTS_DIR) -> str:
  """Rewrites the generated blocks of ``doc`` (created with a header if missing)."""
  text = doc.read_text() if doc.exists() else DOC_HEADER + "\n## Speed and memory\n"
  text = replace_blocks(text, render_blocks(results_dir))
  doc.parent.mkdir(parents=True, exist_ok=True)
  doc.write_text(text)
  return text


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument(
    "--results-dir",
    type=pathlib.Path,
    default=RESULTS_DIR,
    help=f"folder of the result JSON files (default {RESULTS_DIR})",
  )
  parser.add_argument(
    "--doc", type=pathlib.Path, default=DOC, help=f"markdown file to update (default {DOC})"
  )
  parser.add_argument(
    "--print", action="store_true", help="print the rendered blocks instead of writing --doc"
  )
  args = parser.parse_args(argv)
  if args.print:
    for name, body in render_blocks(args.results_dir).items():
      print(f"<!-- bench:{name} -->\n{body}\n")
    return
  update_doc(args.doc, args.results_dir)
  print(f"updated {args.doc}")


if __name__ == "__main__":
  main()

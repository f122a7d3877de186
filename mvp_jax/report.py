"""Per-layer sparsity tables and plots of a fine-pruned model (the run's `report/` folder).

Writes `remaining.md` and `remaining.csv` (one row per pruned matrix: layer, matrix type, shape,
kept, remaining %), `remaining_by_layer.png` (remaining % per layer and matrix type) and
`scores_vs_weights.png` (the paper's Figure 4 kind: weight value against score, kept vs pruned,
with the marginal distributions of the kept weights).
"""

from __future__ import annotations

import csv
import pathlib
import re
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from mvp_jax import pruning

_LAYER = re.compile(r"layer/(\d+)/")
_TYPES = (("attention/self/query", "query"), ("attention/self/key", "key"),
          ("attention/self/value", "value"), ("attention/output/dense", "attn_out"),
          ("intermediate/dense", "ffn_in"), ("output/dense", "ffn_out"))


def matrix_type(path: str) -> str:
  """Short name of a BERT matrix ('query', ..., 'ffn_out'), or the path itself."""
  for needle, name in _TYPES:
    if needle in path:
      return name
  return path


def layer_index(path: str) -> int | None:
  m = _LAYER.search(path)
  return int(m.group(1)) if m else None


def sparsity_rows(masks: dict[str, Any]) -> list[dict[str, Any]]:
  """One row per mask leaf: path, layer, type, shape, kept (mask > 0), total, remaining %.

  Args:
    masks: nested dict of masks (float [in, out]), as from `pruning.compute_masks`.
  """
  rows = []
  for path, m in sorted(traverse_util.flatten_dict(masks, sep="/").items()):
    m = np.asarray(m)
    kept = int((m > 0).sum())
    rows.append({"path": path, "layer": layer_index(path), "type": matrix_type(path),
                 "shape": "x".join(map(str, m.shape)), "kept": kept, "total": int(m.size),
                 "remaining_pct": 100.0 * kept / max(m.size, 1)})
  return rows


def write_report(out_dir: str | pathlib.Path, params: Any, scores: Any, level: float,
                 spec: pruning.PruningSpec, *, masks: Any = None) -> pathlib.Path:
  """Writes the tables and plots for `params`/`scores` masked at `level`; returns out_dir.

  `masks`: the deterministic masks at `level` if already computed
  (`pruning.compute_masks(params, scores, level, spec)`); computed here when None.
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  if masks is None:
    masks = pruning.compute_masks(params, scores, level, spec)
  masks = jax.device_get(masks)
  rows = sparsity_rows(masks)
  rem = pruning.remaining_weights(params, masks)

  with open(out / "remaining.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  lines = [f"# Remaining weights ({spec.method}, {spec.scope}, level {level:g})", "",
           f"Encoder, paper rule (biases and LayerNorm count as remaining): "
           f"**{100 * rem['paper']:.2f}%**; pruned matrices only: **{100 * rem['plain']:.2f}%**.",
           "", "| layer | matrix | shape | kept | remaining % |", "|---|---|---|---|---|"]
  lines += [f"| {r['layer']} | {r['type']} | {r['shape']} | {r['kept']} | "
            f"{r['remaining_pct']:.2f} |" for r in rows]
  (out / "remaining.md").write_text("\n".join(lines) + "\n")

  # Remaining % per layer, one bar group per matrix type.
  layers = sorted({r["layer"] for r in rows if r["layer"] is not None})
  types = [t for _, t in _TYPES if any(r["type"] == t for r in rows)]
  if layers and types:
    fig, ax = plt.subplots(figsize=(max(6, len(layers) * 0.9), 3.5))
    width = 0.8 / len(types)
    for j, t in enumerate(types):
      vals = [next((r["remaining_pct"] for r in rows if r["layer"] == li and r["type"] == t),
                   np.nan) for li in layers]
      ax.bar(np.arange(len(layers)) + j * width, vals, width, label=t)
    ax.set_xticks(np.arange(len(layers)) + 0.4 - width / 2, [str(li) for li in layers])
    ax.set_xlabel("encoder layer")
    ax.set_ylabel("remaining weights (%)")
    ax.legend(ncol=len(types), fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 1.18))
    fig.tight_layout()
    fig.savefig(out / "remaining_by_layer.png", dpi=120)
    plt.close(fig)

  # Weight vs score, kept vs pruned (a subsample, so huge matrices stay cheap to plot).
  flat_p = traverse_util.flatten_dict(params, sep="/")
  flat_s = traverse_util.flatten_dict(scores, sep="/") if scores else {}
  flat_m = traverse_util.flatten_dict(masks, sep="/")
  rng = np.random.default_rng(0)
  ws, ss, ks = [], [], []
  for path, m in flat_m.items():
    w = np.asarray(flat_p[path]).ravel()
    s = np.asarray(flat_s[path]).ravel() if path in flat_s else np.abs(w)
    idx = rng.choice(w.size, size=min(w.size, 4000), replace=False)
    ws.append(w[idx])
    ss.append(s[idx])
    ks.append(np.asarray(m).ravel()[idx] > 0)
  if ws:
    w, s, k = np.concatenate(ws), np.concatenate(ss), np.concatenate(ks)
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(10, 4))
    a0.scatter(w[~k], s[~k], s=1, alpha=0.3, c="tab:gray", label="pruned")
    a0.scatter(w[k], s[k], s=1, alpha=0.5, c="tab:red", label="kept")
    a0.set_xlabel("weight value")
    a0.set_ylabel("score" if flat_s else "|weight|")
    a0.legend(markerscale=8)
    a0.set_title("weights vs scores (subsample)")
    a1.hist(w[k], bins=100, color="tab:red", alpha=0.7, label="kept")
    a1.hist(w[~k], bins=100, color="tab:gray", alpha=0.5, label="pruned")
    a1.set_xlabel("weight value")
    a1.set_yscale("log")
    a1.legend()
    a1.set_title("distribution of weights")
    fig.tight_layout()
    fig.savefig(out / "scores_vs_weights.png", dpi=120)
    plt.close(fig)
  return out

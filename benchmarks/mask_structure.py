"""Where a run's mask removes weights at a checkpoint, and which part of it breaks the model.

Restores a score-based `train.py` run at each given checkpoint step, computes the mask its forward
used there (the schedule's level at that step) and reports:

* per matrix type (query, key, value, attention output, intermediate, output; layers pooled):
  the pruned share, and how unevenly it falls on rows (input dimensions) and columns (output
  dimensions): the variance of the per-row (per-column) pruned share over that of a uniformly
  random mask of the same density (1 = as random; large = whole rows or columns go together);
* per residual-stream dimension (hidden unit): the pruned share of the weights that read it
  (rows of query, key, value and intermediate) or write it (columns of the two output denses),
  next to its activation scale (mean |LayerNorm output| over the eval set's first batch), to see
  whether the mask falls on the few high-activation "outlier" dimensions BERTs have;
* the eval metric (no retraining) with no mask, the whole mask, the mask on one matrix type only,
  in one layer only, and the whole mask with the weights of K hidden dimensions restored: the K
  most pruned, the K with the largest activations, and K random ones (the control);
* for a two-class task, the margin logit[1] - logit[0] on the eval set with no mask, the mask,
  and a random mask of the same level: its mean and spread, and its ROC AUC (does the mask
  destroy the ranking of the examples, or shift and squeeze the margins of a model that still
  ranks them?);
* per LayerNorm and Dense output (embeddings', then each layer's query ... output dense and two
  LayerNorms), how much the first ([CLS]) token, the one the classifier reads, still depends on
  the input: the std over eval sentences of its vector, averaged over dimensions, divided by its
  mean |value|, and the norm of its mean vector (the input-independent part a module writes),
  with and without the mask, and how alike the tokens of a sentence are there (mean cosine
  between two tokens' vectors: ~1 when every token carries the same vector, the "rank collapse"
  of deep attention stacks). `--spread-only` computes just this, the pruned shares, the metric
  with the mask lifted from the bottom 1, 2, ... layers (with the constant each layer's MLP then
  writes into [CLS]) and, per layer, where [CLS]'s attention goes (its mass on itself, on [SEP],
  on the other tokens, its entropy, and every token's mass on [CLS] and [SEP]) with and without
  the mask, and the metric with the input-independent vector each layer's MLP writes into [CLS]
  subtracted (in every layer, the bottom half, the top half), instead of the other evaluations.

`--level` replaces the schedule's level, e.g. to ask what the first pruning steps would remove
from the last dense checkpoint.

Used to look for why hard movement pruning collapses on SST-2 at 10% when it survives on TREC
(docs/results.md): train with checkpoints every 25 steps (a probe run, stopped early) and compare.

  python train.py ... --workdir runs/probe/sst2 --config.train.checkpoint_every_steps=25 \\
      --config.train.keep_checkpoints=30
  python benchmarks/mask_structure.py runs/probe/sst2 --steps 100,125,150,200 --out /tmp/s.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from mask_quality import make_evaluator, write_results  # noqa: E402

from mvp_jax import pruning, run_io, trainer  # noqa: E402
from mvp_jax.data import batching  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "mask_structure.json"
# Matrix type from a kernel's path; "reads" index the residual stream on rows, "writes" on columns.
TYPES = (("query", r"attention/self/query/"), ("key", r"attention/self/key/"),
         ("value", r"attention/self/value/"), ("attn_out", r"attention/output/dense/"),
         ("intermediate", r"intermediate/dense/"), ("output", r"layer/\d+/output/dense/"))
READS = ("query", "key", "value", "intermediate")
WRITES = ("attn_out", "output")


def matrix_type(path: str) -> str:
  """'query' ... 'output' for an encoder kernel's '/'-joined path; ValueError otherwise."""
  for name, pattern in TYPES:
    if re.search(pattern, path):
      return name
  raise ValueError(f"{path} is not one of BERT's six encoder kernels")


def layer_index(path: str) -> int:
  """The encoder layer a kernel's path names ('.../layer/3/...' -> 3)."""
  m = re.search(r"layer/(\d+)/", path)
  if m is None:
    raise ValueError(f"{path} names no encoder layer")
  return int(m.group(1))


def flat_paths(tree) -> dict[str, np.ndarray]:
  """{'a/b/kernel': leaf} for a nested dict of arrays (host numpy)."""
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


def unevenness(mask: np.ndarray, axis: int) -> float:
  """Variance of the pruned share along `axis`'s slices over that of a random mask of equal density.

  mask: [in, out] 0/1. axis=1 gives one share per row (input dimension), axis=0 per column. A
  uniformly random mask has variance p(1-p)/n for slices of n entries (binomial), so the ratio
  is ~1 for it and grows as pruning concentrates on some rows (columns). nan if p is 0 or 1.
  """
  pruned = 1.0 - mask.astype(np.float64)
  p = pruned.mean()
  if p <= 0.0 or p >= 1.0:
    return float("nan")
  shares = pruned.mean(axis=axis)
  return float(shares.var() / (p * (1 - p) / mask.shape[axis]))


def hidden_dim_pruned_share(masks: dict[str, np.ndarray], hidden: int) -> np.ndarray:
  """[hidden] pruned share of every weight that reads (rows of READS) or writes (columns of
  WRITES) each residual-stream dimension, pooled over layers."""
  pruned = np.zeros(hidden)
  total = np.zeros(hidden)
  for path, m in masks.items():
    kind = matrix_type(path)
    if kind in READS:
      pruned += (1 - m).sum(axis=1)
      total += m.shape[1]
    elif kind in WRITES:
      pruned += (1 - m).sum(axis=0)
      total += m.shape[0]
  return pruned / np.maximum(total, 1)


def restore_dims(masks: dict[str, np.ndarray], dims: np.ndarray) -> dict[str, np.ndarray]:
  """The masks with every weight that reads or writes a hidden dimension in `dims` kept (1)."""
  out = {}
  for path, m in masks.items():
    m = m.copy()
    kind = matrix_type(path)
    if kind in READS:
      m[dims, :] = 1
    elif kind in WRITES:
      m[:, dims] = 1
    out[path] = m
  return out


def nest(flat: dict[str, np.ndarray]) -> dict:
  """Inverse of `flat_paths`."""
  return traverse_util.unflatten_dict(flat, sep="/")


def module_outputs(run: run_io.Run, params, features, n: int,
                   kinds: tuple[type, ...]) -> tuple[dict, dict[str, np.ndarray]]:
  """(batch, {module path: output}) of one forward of `params` on the first `n` eval examples,
  the outputs of every module of one of `kinds` (flax capture_intermediates)."""
  batch = next(iter(batching.eval_batches(features, n)))
  _, state = run.model.apply(
      {"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
      deterministic=True, mutable=["intermediates"],
      capture_intermediates=lambda mdl, _: isinstance(mdl, kinds))
  flat = traverse_util.flatten_dict(state["intermediates"], sep="/")
  return batch, {path.removesuffix("/__call__"): np.asarray(v[0]) for path, v in flat.items()}


def activation_scale(run: run_io.Run, features, hidden: int) -> np.ndarray:
  """[hidden] mean |LayerNorm output| per dimension over the real tokens of the first eval batch,
  the largest over the model's LayerNorms (embedding's and each layer's two), unmasked params."""
  batch, outs = module_outputs(run, run.params, features, 64, (nn.LayerNorm,))
  real = np.asarray(batch["attention_mask"], bool)
  scale = np.zeros(hidden)
  for out in outs.values():
    x = np.abs(out.astype(np.float64))
    if x.ndim == 3 and x.shape[-1] == hidden:
      scale = np.maximum(scale, x[real].mean(axis=0))
  return scale


def roc_auc(margin: np.ndarray, labels: np.ndarray) -> float:
  """Area under the ROC curve of `margin` [N] for binary `labels` [N] (ties count one half)."""
  pos, neg = margin[labels == 1], margin[labels != 1]
  if len(pos) == 0 or len(neg) == 0:
    return float("nan")
  greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
  return float(greater / (len(pos) * len(neg)))


def margin_stats(margin: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """Mean, standard deviation and ROC AUC of a binary classifier's margins [N]."""
  return {"mean": float(margin.mean()), "std": float(margin.std()),
          "auc": roc_auc(margin, labels)}


def first_token_spread(x: np.ndarray) -> dict[str, float]:
  """For hidden states x [N sentences, L, H]: the std over sentences of the first token's vector,
  averaged over its H dimensions, over its mean |value| (0: the same vector for every input), and
  the largest |mean over sentences| of one dimension (BERTs' outlier dimensions show there) and
  the norm of the mean vector (what the module writes whatever the input)."""
  first = np.asarray(x, np.float64)[:, 0]
  return {"spread": float(first.std(axis=0).mean() / np.abs(first).mean()),
          "max_abs_mean": float(np.abs(first.mean(axis=0)).max()),
          "mean_norm": float(np.linalg.norm(first.mean(axis=0)))}


def token_cosine(x: np.ndarray, real: np.ndarray, centre: bool = False) -> float:
  """Mean cosine similarity between the hidden states of two different real tokens of the same
  sentence, for x [N, L, H] and real [N, L] (True on real tokens), averaged over sentences: ~1
  when every token carries the same vector ("rank collapse"), lower while tokens stay distinct.
  A vector every token carries (BERTs' large constant dimensions) pushes it towards 1; `centre`
  first subtracts the mean over all real tokens of all sentences, which removes it."""
  x = np.asarray(x, np.float64)
  if centre:
    x = x - x[np.asarray(real, bool)].mean(axis=0)
  unit = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-30)
  out = []
  for u, keep in zip(unit, np.asarray(real, bool), strict=True):
    u = u[keep]
    m = len(u)
    if m > 1:
      total = np.square(u.sum(axis=0)).sum()  # sum over all ordered pairs, self-pairs included
      out.append((total - m) / (m * (m - 1)))
  return float(np.mean(out)) if out else float("nan")


def capture(run: run_io.Run, params, features, n: int = 128) -> tuple[dict, dict]:
  """`module_outputs` of every LayerNorm and Dense (and the attention probabilities the model
  sows) on the first `n` eval examples: what `layer_spread`, `layer_attention` and
  `cls_constants` read, from one forward."""
  return module_outputs(run, params, features, n, (nn.LayerNorm, nn.Dense))


def real_tokens(batch: dict) -> tuple[int, np.ndarray]:
  """(number of real examples, [that many, L] True on real tokens) of an eval batch (a short
  last batch is padded with examples of weight 0)."""
  real = int(np.asarray(batch["weights"]).sum())
  return real, np.asarray(batch["attention_mask"], bool)[:real]


def layer_spread(batch: dict, outs: dict[str, np.ndarray]) -> dict[str, dict]:
  """`first_token_spread` and `token_cosine` of every LayerNorm and per-token Dense output of a
  `capture`, by module path (embeddings' LayerNorm, then each encoder layer's query, key, value,
  attention-output dense and LayerNorm, intermediate and output dense and LayerNorm)."""
  real, tokens = real_tokens(batch)
  return {path: {**first_token_spread(x[:real]), "token_cosine": token_cosine(x[:real], tokens),
                 "token_cosine_centred": token_cosine(x[:real], tokens, centre=True)}
          for path, x in outs.items() if x.ndim == 3}  # pooler, classifier: [N, H]


def attention_focus(probs: np.ndarray, real: np.ndarray) -> dict[str, float]:
  """Where one layer's attention goes, for probs [N, heads, L query, L key] and real [N, L]
  (True on real tokens; each sentence's last real token is its [SEP]), averaged over heads and
  sentences: [CLS]'s (the first query's) mass on itself, on [SEP] and on the other tokens, and
  its entropy in nats (log of the number of tokens it spreads over); and the mean over every
  real query token of its mass on [CLS] and on [SEP] (the "sink" tokens)."""
  p = np.asarray(probs, np.float64)
  n = p.shape[0]
  sep = np.asarray(real, bool).sum(axis=1) - 1  # [N]
  rows = np.arange(n)
  cls = p[:, :, 0, :]  # [N, heads, L key]
  cls_self = cls[:, :, 0]
  cls_sep = cls[rows, :, sep]  # [N, heads]
  entropy = -(cls * np.log(np.where(cls > 0, cls, 1.0))).sum(axis=-1)
  on_cls = p[:, :, :, 0].mean(axis=1)  # [N, L query]
  on_sep = p[rows, :, :, sep].mean(axis=1)
  q = np.asarray(real, bool)
  return {"cls_self": float(cls_self.mean()), "cls_sep": float(cls_sep.mean()),
          "cls_rest": float((1.0 - cls_self - cls_sep).mean()),
          "cls_entropy": float(entropy.mean()),
          "all_on_cls": float(on_cls[q].mean()), "all_on_sep": float(on_sep[q].mean())}


def layer_attention(batch: dict, outs: dict[str, np.ndarray]) -> list[dict[str, float]]:
  """`attention_focus` of every encoder layer of a `capture`, in order (the attention
  probabilities BertSelfAttention sows)."""
  real, tokens = real_tokens(batch)
  probs = {layer_index(p): x for p, x in outs.items() if p.endswith("/attention_probs")}
  return [attention_focus(probs[i][:real], tokens) for i in sorted(probs)]


def make_logits(run: run_io.Run, features, batch_size: int):
  """logits(params) -> [N, C] logits over every eval example, params already masked."""
  fwd = jax.jit(lambda p, b: trainer.eval_step(p, b, model=run.model))

  def logits(params) -> np.ndarray:
    outs, weights = [], []
    for batch in batching.eval_batches(features, batch_size):
      outs.append(np.asarray(fwd(params, batch)))
      weights.append(np.asarray(batch["weights"]))
    return batching.collect_eval(outs, weights)

  return logits


def make_margins(run: run_io.Run, features, batch_size: int):
  """margins(params) -> [N] logit[1] - logit[0] over every eval example, params already masked."""
  logits = make_logits(run, features, batch_size)

  def margins(params) -> np.ndarray:
    z = logits(params)
    return z[:, 1] - z[:, 0]

  return margins


def step_level(run: run_io.Run, level: float | None) -> float:
  """`level` if given, else the keep fraction the run's schedule had at the checkpoint's step."""
  if level is None:
    level_fn, _ = trainer.level_schedules(run.config, int(run.config.train.max_steps))
    level = float(level_fn(run.step))
  return level


def masks_by_type(masks: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
  """{matrix type: [its masks, one per layer]} of flat kernel masks."""
  return {name: [m for p, m in masks.items() if matrix_type(p) == name] for name, _ in TYPES}


def analyse_step(run: run_io.Run, evaluate, features, k: int, seeds: int,
                 level: float | None = None) -> dict:
  """The statistics and ablations above for one restored checkpoint; `level` (None: the
  schedule's at the checkpoint's step) is the keep fraction of the mask."""
  level = step_level(run, level)
  masks = flat_paths(pruning.compute_masks(run.params, run.scores, level, run.spec))
  hidden = int(run.model.config.hidden_size)
  by_type = {}
  for name, ms in masks_by_type(masks).items():
    by_type[name] = {"pruned": float(np.mean([1 - m.mean() for m in ms])),
                     "row_unevenness": float(np.nanmean([unevenness(m, 1) for m in ms])),
                     "col_unevenness": float(np.nanmean([unevenness(m, 0) for m in ms]))}
  share = hidden_dim_pruned_share(masks, hidden)
  scale = activation_scale(run, features, hidden)
  most_pruned = np.argsort(-share)[:k]
  loudest = np.argsort(-scale)[:k]
  params = run.params

  def masked(flat):
    return pruning.multiply_masks(params, nest(flat))

  ones = {p: np.ones_like(m) for p, m in masks.items()}
  acc = {"unmasked": evaluate(params), "masked": evaluate(masked(masks))}
  for name, _ in TYPES:
    acc[f"only_{name}"] = evaluate(masked({p: (m if matrix_type(p) == name else ones[p])
                                          for p, m in masks.items()}))
  for layer in sorted({layer_index(p) for p in masks}):
    acc[f"only_layer{layer}"] = evaluate(masked({p: (m if layer_index(p) == layer else ones[p])
                                                for p, m in masks.items()}))
  acc[f"restore_{k}_most_pruned_dims"] = evaluate(masked(restore_dims(masks, most_pruned)))
  acc[f"restore_{k}_loudest_dims"] = evaluate(masked(restore_dims(masks, loudest)))
  rng = np.random.default_rng(0)
  acc[f"restore_{k}_random_dims"] = [
      evaluate(masked(restore_dims(masks, rng.choice(hidden, k, replace=False))))
      for _ in range(seeds)]
  margins = None
  if run.head == "classification" and len(run.label_names) == 2:
    labels = np.asarray(features["labels"])
    margin = make_margins(run, features, int(run.config.train.eval_batch_size))
    uniform = jax.tree.map(lambda s: rng.random(s.shape).astype(np.float32), run.scores)
    margins = {"unmasked": margin_stats(margin(params), labels),
               "masked": margin_stats(margin(masked(masks)), labels),
               "random_mask": margin_stats(margin(pruning.apply_masks(params, uniform, level,
                                                                      run.spec)), labels)}
  order = np.argsort(-scale)
  return {
    "step": run.step, "level": level, "by_type": by_type, "accuracy": acc, "margins": margins,
    "first_token_spread": {"unmasked": layer_spread(*capture(run, params, features)),
                           "masked": layer_spread(*capture(run, masked(masks), features))},
    "hidden_pruned_share": {"mean": float(share.mean()), "max": float(share.max()),
                            "min": float(share.min()),
                            "most_pruned": [[int(d), float(share[d]), float(scale[d])]
                                            for d in most_pruned]},
    "loudest_dims": [[int(d), float(scale[d]), float(share[d])] for d in order[:k]],
    "scale_median": float(np.median(scale)),
    "corr_share_vs_log_scale": float(np.corrcoef(share, np.log(scale + 1e-12))[0, 1]),
  }


def is_mlp_output(path: str) -> bool:
  """Whether a '/'-joined module path is an encoder layer's MLP output dense (not the attention
  output's)."""
  return path.endswith("/output/dense") and "/attention/" not in path


def mlp_constants(spread: dict[str, dict]) -> list[float]:
  """Per encoder layer, the norm of the input-independent vector its MLP output dense writes into
  [CLS] (`first_token_spread`'s mean_norm; BERTs' "massive activations" show there)."""
  return [v["mean_norm"] for k, v in spread.items() if is_mlp_output(k)]


def cls_constants(batch: dict, outs: dict[str, np.ndarray]) -> dict[int, np.ndarray]:
  """{layer: [H] the mean over a `capture`'s sentences of what its MLP output dense writes into
  [CLS]}: the input-independent part `mlp_constants` measures the norm of."""
  real, _ = real_tokens(batch)
  return {layer_index(p): x[:real, 0].mean(axis=0) for p, x in outs.items() if is_mlp_output(p)}


def remove_cls_constants(constants: dict[int, np.ndarray]):
  """A `flax.linen.intercept_methods` interceptor that subtracts constants[layer] from the [CLS]
  position of each listed layer's MLP output dense, leaving its input-dependent part."""

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    path = "/".join(context.module.path)
    if (context.method_name == "__call__" and isinstance(context.module, nn.Dense)
        and is_mlp_output(path) and layer_index(path + "/") in constants):
      out = out.at[:, 0].add(-constants[layer_index(path + "/")].astype(out.dtype))
    return out

  return interceptor


def constant_ablation(params, evaluate, consts: dict[int, np.ndarray]) -> dict[str, float]:
  """The metric of (masked) `params` with `remove_cls_constants` of their `cls_constants` in
  every layer, in the bottom half and in the top half: does what the MLPs write into [CLS]
  whatever the input drown what the input writes? (The constants are measured on eval
  sentences, as a diagnostic.)"""
  half = (max(consts) + 1) // 2
  parts = {"all": consts, "bottom": {i: c for i, c in consts.items() if i < half},
           "top": {i: c for i, c in consts.items() if i >= half}}
  return {name: evaluate(params, remove_cls_constants(c)) for name, c in parts.items()}


def spread_step(run: run_io.Run, evaluate, features, level: float | None = None) -> dict:
  """`analyse_step`'s pruned share per matrix type and the [CLS] spread with and without the
  mask, and the metric with the mask lifted from the bottom 0, 1, ... layers (0: the whole mask;
  all: none), each with `mlp_constants` of the resulting model; and `layer_attention` with and
  without the mask."""
  level = step_level(run, level)
  flat = flat_paths(pruning.compute_masks(run.params, run.scores, level, run.spec))
  spare, spreads, ends = [], [], {}
  last = max(layer_index(p) for p in flat)
  for top in range(-1, last + 1):  # -1: the whole mask; last: no mask
    params = pruning.multiply_masks(run.params, nest(
        {p: (np.ones_like(m) if layer_index(p) <= top else m) for p, m in flat.items()}))
    captured = capture(run, params, features)
    spreads.append(layer_spread(*captured))
    spare.append({"unmasked_layers": top + 1, "metric": evaluate(params),
                  "mlp_constants": mlp_constants(spreads[-1])})
    if top in (-1, last):
      ends["masked" if top == -1 else "unmasked"] = (params, captured)
  return {"step": run.step, "level": level, "spare_bottom_layers": spare,
          "without_cls_constants": {
              name: constant_ablation(params, evaluate, cls_constants(*captured))
              for name, (params, captured) in ends.items()},
          "pruned_by_type": {name: float(np.mean([1 - m.mean() for m in ms]))
                             for name, ms in masks_by_type(flat).items()},
          "first_token_spread": {"unmasked": spreads[-1], "masked": spreads[0]},
          "attention": {name: layer_attention(*captured) for name, (_, captured) in ends.items()}}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("workdir", type=pathlib.Path)
  ap.add_argument("--steps", required=True, help="comma-separated checkpoint steps")
  ap.add_argument("--dims", type=int, default=8, help="K: hidden dimensions restored at once")
  ap.add_argument("--random-draws", type=int, default=3, help="draws of K random dimensions")
  ap.add_argument("--level", type=float, default=None,
                  help="keep fraction of the masks (default: the schedule's at each step)")
  ap.add_argument("--spread-only", action="store_true",
                  help="only the pruned shares, the [CLS] spread per module and the metric with "
                       "the mask lifted from the bottom 1, 2, ... layers")
  ap.add_argument("--out", type=pathlib.Path, default=RESULTS)
  args = ap.parse_args(argv)
  steps = [int(s) for s in args.steps.split(",")]

  first = run_io.load_run(args.workdir, steps[0])
  if first.spec is None or first.spec.method != "topk":
    raise SystemExit(f"{args.workdir} is not a top-k (hard movement) run.")
  evaluate, metric, task = make_evaluator(first)
  rows = []
  for step in steps:
    run = first if step == steps[0] else run_io.load_run(args.workdir, step)
    if args.spread_only:
      rows.append(spread_step(run, evaluate, task.eval_features, args.level))
      print(json.dumps({"step": step, "level": round(rows[-1]["level"], 4), **{
          k: {p.split("encoder/")[-1]: round(v["spread"], 4) for p, v in d.items()
              if p.endswith("LayerNorm")}
          for k, d in rows[-1]["first_token_spread"].items()}}), flush=True)
      for key in ("token_cosine", "token_cosine_centred"):
        print(json.dumps({"step": step, key: {
            k: [round(v[key], 3) for p, v in d.items() if p.endswith("LayerNorm")]
            for k, d in rows[-1]["first_token_spread"].items()}}), flush=True)
      print(json.dumps({"step": step, "attention": {
          k: [[round(a["cls_self"], 3), round(a["cls_sep"], 3), round(a["cls_entropy"], 2),
               round(a["all_on_sep"], 3)] for a in layers]
          for k, layers in rows[-1]["attention"].items()}}), flush=True)
      print(json.dumps({"step": step, "without_cls_constants": {
          k: {kk: round(vv, 4) for kk, vv in v.items()}
          for k, v in rows[-1]["without_cls_constants"].items()}}), flush=True)
      print(json.dumps({"step": step, "spare_bottom_layers": [
          [r["unmasked_layers"], round(r["metric"], 4), [round(c) for c in r["mlp_constants"]]]
          for r in rows[-1]["spare_bottom_layers"]]}), flush=True)
      continue
    row = analyse_step(run, evaluate, task.eval_features, args.dims, args.random_draws,
                       args.level)
    print(json.dumps({"step": step, "level": round(row["level"], 4),
                      **{k: (round(v, 4) if isinstance(v, float) else [round(x, 4) for x in v])
                         for k, v in row["accuracy"].items()}}), flush=True)
    print(json.dumps({"step": step, "by_type": {k: {kk: round(vv, 2) for kk, vv in v.items()}
                                                for k, v in row["by_type"].items()},
                      "hidden_pruned_share": row["hidden_pruned_share"],
                      "loudest_dims": row["loudest_dims"],
                      "corr": round(row["corr_share_vs_log_scale"], 3),
                      "margins": row["margins"]}), flush=True)
    rows.append(row)
  write_results(args.out, args.workdir, metric, task, rows, data=dict(first.config.data),
                seed=int(first.config.seed))
  return 0


if __name__ == "__main__":
  sys.exit(main())

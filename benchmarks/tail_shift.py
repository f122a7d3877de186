"""Do a hard-movement run's scores single out weights that push every example the same way?

A test of our reading of why hard movement pruning dies on two-class tasks at short horizons
(docs/results.md, "What sets SST-2 on the path"). For each checkpoint step of a top-k run and a
keep fraction (default: the schedule's level at the step), on the run's eval set:

* **Tail alignment.** For each class c, the sensitivity of weight w to the mean centred logit,
  ``sens_c(w) = w * d/dw mean_i zc_i`` (zc_i: logit c of example i minus the mean of its logits;
  unmasked params, the first `--examples` eval examples), i.e. how much keeping w raises class c
  for *all* examples, to first order. Over the weights the mask removes (the lowest scores,
  local top-k as the run) we report ``mean sign(sens_c)``: +-1 when every removed weight pushes
  class c the same way, so that removing them shifts every example together; ~0 when they push
  both ways. The same over the same number of highest-scored weights (``top``), over all scored
  weights, and the Pearson correlation of the scores with ``sign(sens_c)`` (Adam's per-weight
  normalisation leaves a score the sign of its gradient's drift, not its size).
* **Logit shift.** What removing that tail does, no retraining: with d_i the change of example
  i's centred logits, the common-mode fraction ``|mean_i d_i|^2 / mean_i |d_i|^2`` (1: every
  example moves the same way; the class it favours is ``favoured``), the spread of the centred
  logits over examples masked / unmasked (below 1: the examples are squeezed together), the
  share of the most-predicted class, and accuracy; for the run's mask, the same fraction of the
  smallest weights (magnitude) and random masks (`--random-draws`).

Used on 10%-movement probe runs of six-class TREC, TREC's questions in two classes
(`benchmarks/trec_regrouped.py`) and SST-2, checkpointed every 25 steps and stopped at step 150:

  python benchmarks/tail_shift.py runs/probe/cm-trec2 --steps 100,125 --level 0.907 \\
      --out benchmarks/results/tail_shift_trec2.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from mask_quality import make_evaluator, write_results  # noqa: E402
from mask_structure import flat_paths, make_logits, step_level  # noqa: E402

from mvp_jax import pruning, run_io, trainer  # noqa: E402
from mvp_jax.data import batching  # noqa: E402


def centred(logits: np.ndarray) -> np.ndarray:
  """[N, C] logits minus each row's mean (what softmax sees)."""
  return logits - logits.mean(axis=-1, keepdims=True)


def shift_stats(base: np.ndarray, masked: np.ndarray, labels: np.ndarray,
                names: tuple[str, ...]) -> dict:
  """How `masked` [N, C] logits moved from `base` [N, C]: common-mode fraction of the change,
  favoured class, spread ratio, the most-predicted class's share, accuracy."""
  zb, zm = centred(base), centred(masked)
  d = zm - zb
  mean = d.mean(axis=0)
  energy = float((d ** 2).sum(-1).mean())
  pred = zm.argmax(-1)
  return {
      "common_mode": float((mean ** 2).sum() / energy) if energy > 0 else 0.0,
      "mean_shift_norm": float(np.linalg.norm(mean)),
      "rms_shift": float(np.sqrt(energy)),
      "favoured": names[int(mean.argmax())],
      "spread_ratio": float(np.linalg.norm(zm.std(0)) / np.linalg.norm(zb.std(0))),
      "top_class_share": float(np.bincount(pred, minlength=len(names)).max() / len(pred)),
      "accuracy": float((pred == labels).mean()),
  }


def sensitivities(run: run_io.Run, params, features, n: int, batch_size: int) -> list[dict]:
  """Per class c, {scored path: [in, out] w * d/dw mean_i zc_i} over the first `n` eval
  examples (unmasked `params`; zc centred logits)."""
  paths = set(flat_paths(run.scores))

  def mean_centred(p, batch):
    z = trainer.eval_step(p, batch, model=run.model).astype(jnp.float32)
    z = z - z.mean(-1, keepdims=True)
    return (z * batch["weights"][:, None]).sum(0)  # [C], summed over real rows

  jac = jax.jit(jax.jacrev(mean_centred))
  sub = {k: v[:n] for k, v in features.items()}
  total = None
  for batch in batching.eval_batches(sub, batch_size):
    g = jac(params, {k: jnp.asarray(v) for k, v in batch.items()})
    total = g if total is None else jax.tree.map(jnp.add, total, g)
  grads = {p: np.asarray(v) for p, v in flat_paths(total).items() if p in paths}
  weights = {p: np.asarray(v) for p, v in flat_paths(params).items() if p in paths}
  classes = next(iter(grads.values())).shape[0]
  return [{p: weights[p] * grads[p][c] / n for p in grads} for c in range(classes)]


def score_gradients(run: run_io.Run, masked_params, features, n: int, batch_size: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(whole, common, mean error): the scores' gradient and its input-independent part, on the
  first `n` of `features`.

  The movement score gradient is ``W * dL/dW'`` (W' = the masked weights, straight-through).
  With e_i = softmax(z_i) - onehot(y_i) [C] and J_i = dz_i/dW', the loss gradient
  ``mean_i e_i J_i`` splits exactly into ``mean(e) . mean(J)`` (every example asking for the
  same change of its logits: the part an input-independent shift serves) and the covariance of
  e and J (the part that depends on which example is which). Returns the two score gradients
  flattened over the scored paths (sorted), [P] each, and mean(e) [C].
  """
  paths = set(flat_paths(run.scores))
  weights = {p: np.asarray(v) for p, v in flat_paths(run.params).items() if p in paths}
  sub = {k: np.asarray(v)[:n] for k, v in features.items()}

  def parts(p, batch, mean_err):
    z = trainer.eval_step(p, batch, model=run.model).astype(jnp.float32)
    w = batch["weights"][:, None]
    err = jax.nn.softmax(z) - jax.nn.one_hot(batch["labels"], z.shape[-1])
    ce = trainer.task_loss(z, batch, "classification") * batch["weights"].sum()  # summed
    return ce, (z * mean_err * w).sum(), (err * w).sum(0)

  full_fn = jax.jit(jax.grad(lambda p, b, e: parts(p, b, e)[0]))
  common_fn = jax.jit(jax.grad(lambda p, b, e: parts(p, b, e)[1]))
  err_fn = jax.jit(lambda p, b, e: parts(p, b, e)[2])
  batches = [{k: jnp.asarray(v) for k, v in b.items()}
             for b in batching.eval_batches(sub, batch_size)]
  zero = jnp.zeros((len(run.label_names),), jnp.float32)
  mean_err = sum(err_fn(masked_params, b, zero) for b in batches) / n

  def total(fn):
    acc = None
    for b in batches:
      g = fn(masked_params, b, mean_err)
      acc = g if acc is None else jax.tree.map(jnp.add, acc, g)
    flat = flat_paths(acc)
    return np.concatenate([(weights[p] * np.asarray(flat[p])).ravel() / n
                           for p in sorted(paths)])

  return total(full_fn), total(common_fn), np.asarray(mean_err)


def split_stats(full: np.ndarray, common: np.ndarray, mean_err: np.ndarray) -> dict:
  """The common part's squared norm over the whole's (above 1 when the rest opposes it), their
  cosine, the share of weights where both have the same sign (what Adam's normalised steps
  follow), and |mean(e)|."""
  return {"common_share": float((common ** 2).sum() / (full ** 2).sum()),
          "cos_common_full": float(common @ full / np.linalg.norm(common) / np.linalg.norm(full)),
          "sign_agreement": float((np.sign(common) == np.sign(full)).mean()),
          "mean_error_norm": float(np.linalg.norm(mean_err))}


def tail_alignment(scores: dict, removed: dict, top: dict, sens: dict) -> dict:
  """mean sign(sens) over the removed tail, the same-size top tail and all scored weights, and
  corr(scores, sign(sens)); flat {path: [in, out]} trees."""
  sign = np.concatenate([np.sign(sens[p]).ravel() for p in sorted(sens)])
  s = np.concatenate([scores[p].ravel() for p in sorted(sens)])
  rem = np.concatenate([removed[p].ravel() for p in sorted(sens)])
  tp = np.concatenate([top[p].ravel() for p in sorted(sens)])
  return {"removed_mean_sign": float(sign[rem].mean()), "top_mean_sign": float(sign[tp].mean()),
          "all_mean_sign": float(sign.mean()),
          "corr_score_sign": float(np.corrcoef(s, sign)[0, 1])}


def analyse(run: run_io.Run, features, train_features, level: float, n: int, draws: int
            ) -> dict:
  """Tail alignment per class and the logit shifts of the run's mask, -scores, magnitude and
  random masks at `level`, for checkpoint `run`."""
  names = run.label_names
  labels = np.asarray(features["labels"])
  bs = int(run.config.train.eval_batch_size)
  logits = make_logits(run, features, bs)
  params = run.params
  base = logits(params)
  masks = flat_paths(pruning.compute_masks(params, run.scores, level, run.spec))
  top = flat_paths(pruning.compute_masks(params, jax.tree.map(jnp.negative, run.scores), level,
                                         run.spec))
  removed = {p: m == 0 for p, m in masks.items()}
  highest = {p: m == 0 for p, m in top.items()}
  scores = {p: np.asarray(v) for p, v in flat_paths(run.scores).items()}
  sens = sensitivities(run, params, features, n, bs)
  align = {names[c]: tail_alignment(scores, removed, highest, s) for c, s in enumerate(sens)}

  magnitude = pruning.PruningSpec(method="magnitude", include=run.spec.include)
  shifts = {
      "scores": shift_stats(base, logits(pruning.apply_masks(params, run.scores, level,
                                                             run.spec)), labels, names),
      "neg_scores": shift_stats(base, logits(pruning.apply_masks(
          params, jax.tree.map(jnp.negative, run.scores), level, run.spec)), labels, names),
      "magnitude": shift_stats(base, logits(pruning.apply_masks(params, {}, level, magnitude)),
                               labels, names),
  }
  rng = np.random.default_rng(0)
  shifts["random"] = [
      shift_stats(base, logits(pruning.apply_masks(
          params, jax.tree.map(lambda s: rng.random(s.shape).astype(np.float32), run.scores),
          level, run.spec)), labels, names) for _ in range(draws)]
  masked = pruning.apply_masks(params, run.scores, level, run.spec)
  grad_split = split_stats(*score_gradients(run, masked, train_features, n, bs))
  return {"step": int(run.step), "level": level, "score_gradient": grad_split,
          "unmasked_accuracy":
          float((centred(base).argmax(-1) == labels).mean()),
          "unmasked_top_class_share": float(np.bincount(base.argmax(-1)).max() / len(base)),
          "alignment": align, "shifts": shifts}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("workdir", type=pathlib.Path)
  ap.add_argument("--steps", required=True, help="comma-separated checkpoint steps")
  ap.add_argument("--level", type=float, default=None,
                  help="keep fraction (default: the schedule's at each step)")
  ap.add_argument("--examples", type=int, default=512,
                  help="eval examples the sensitivities average over")
  ap.add_argument("--random-draws", type=int, default=3)
  ap.add_argument("--out", type=pathlib.Path, required=True)
  args = ap.parse_args(argv)
  steps = [int(s) for s in args.steps.split(",")]

  first = run_io.load_run(args.workdir, steps[0])
  if first.spec is None or first.spec.method != "topk" or first.head != "classification":
    raise SystemExit(f"{args.workdir} is not a top-k (hard movement) classification run.")
  _, metric, task = make_evaluator(first)
  rng = np.random.default_rng(0)
  pick = rng.choice(len(task.train_features["input_ids"]), args.examples, replace=False)
  train_sample = {k: np.asarray(v)[pick] for k, v in task.train_features.items()}
  rows = []
  for step in steps:
    run = first if step == steps[0] else run_io.load_run(args.workdir, step)
    row = analyse(run, task.eval_features, train_sample, step_level(run, args.level), args.examples,
                  args.random_draws)
    rows.append(row)
    print(json.dumps({"step": step, "level": round(row["level"], 4), "score_gradient": {
        k: round(v, 3) for k, v in row["score_gradient"].items()}, "alignment": {
        c: {k: round(v, 3) for k, v in a.items()} for c, a in row["alignment"].items()}}),
        flush=True)
    print(json.dumps({"step": step, "shifts": {
        k: ([{kk: (round(vv, 3) if isinstance(vv, float) else vv) for kk, vv in r.items()}
             for r in v] if isinstance(v, list) else
            {kk: (round(vv, 3) if isinstance(vv, float) else vv) for kk, vv in v.items()})
        for k, v in row["shifts"].items()}}), flush=True)
  write_results(args.out, args.workdir, metric, task, rows, data=dict(first.config.data),
                seed=int(first.config.seed), examples=args.examples)
  return 0


if __name__ == "__main__":
  sys.exit(main())

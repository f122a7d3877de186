"""Train a hard-movement run with its scores' gradient or update changed, or the scores frozen.

An intervention test of our reading of why hard movement pruning dies on two-class tasks at
short horizons (docs/results.md, "Testing that reading"): `benchmarks/tail_shift.py` found that,
after the first cuts, the two-class runs' score gradients point along the change that serves a
shift of every example alike, and six-class TREC's do not. If that is what drives the scores
into the dead mask, taking it out of the scores' gradient (and only theirs: the weights train on
the whole loss gradient) should let the two-class runs live; freezing the scores tells whether
their updates after the cuts matter at all.

Takes `train.py`'s flags plus ``--intervention``; every step computes the masked forward once and
pulls back several logit cotangents through it (`jax.vjp`):

* ``none``: the loss's own cotangent dz = dL/dz only, i.e. `trainer.train_step` (a control).
* ``centred``: the scores get the gradient of the covariance part alone: with e_i the error of
  example i (dz_i = w_i e_i / sum w), the common part is what the batch's mean error mean(e),
  sent back by every example, asks for; the scores get ``vjp(dz) - vjp(common)``.
* ``project``: the scores' gradient g minus its projection on the span of
  ``g_c = W * d(mean_i zc_i)/dW'`` (zc: centred logit of class c, over the batch's real rows),
  the score changes that move every example's logits alike, to first order. Stronger than
  ``centred``: it also removes the part of the covariance term that points that way.
* ``project_update``: the scores' gradient untouched (so Adam's moments are the plain run's),
  and the scores' *update* Delta s minus its projection on that span: Adam normalises each
  score's step, so a gradient orthogonal to the span need not give a step orthogonal to it;
  this one is: the applied score changes move no mean logit to first order in the
  straight-through estimate (the mask itself changes by discrete swaps).
* ``frozen``: the scores stop changing at the first pruning step (level below 1), so the masks
  follow the schedule on the scores learnt during the dense warm-up; the weights train as
  ``none``. Tells whether the scores' own updates after the cuts are needed for the collapse.
* ``centred_weights``: as ``centred``, but for the weights (every param, the classifier's bias
  included, which then stops learning) while the scores get their whole gradient: tells whether
  the weights' input-independent updates are needed for it.

Each acts from the first pruning step on (``--intervention_start=cut``, the default: until then
the run is the plain run, so the first cut is the same) or from the first step
(``--intervention_start=start``; the scores learnt during the dense warm-up change too).

Every mode logs ``train/score_grad_norm`` (|g|, before the change; the weights' gradient is
the rest of ``train/grad_norm``, which is after it); ``centred``, ``project`` and
``project_update`` also ``train/score_removed_share`` (|removed|^2 / |g|^2) and
``train/score_removed_cos`` (cosine of the removed part with g; for ``project_update``, of the
update instead), ``centred_weights`` ``train/weight_removed_share`` and
``train/weight_removed_cos`` (of the weights' gradient). The optimizer clips weights and scores
jointly, as always. Hard movement (``pruning.method=topk``) on a classification task, without
distillation, only. The mode is written to the workdir's ``intervention.json``; a resume with
another mode is refused.
For instance (two-class TREC from `benchmarks/trec_regrouped.py`):

  python benchmarks/score_gradient_intervention.py --intervention=project \\
      --config configs/default.py --workdir runs/probe/trec2-project-s0 \\
      --config.data.source=files --config.data.task=trec2 ... (the cell's flags)
"""

from __future__ import annotations

import functools
import json
import pathlib
import sys
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import train  # noqa: E402  (defines --config and --workdir)
from mvp_jax import optim, pruning, run_io, trainer  # noqa: E402
from mvp_jax.errors import UserError  # noqa: E402

MODES = ("none", "centred", "project", "project_update", "frozen", "centred_weights")
STARTS = ("cut", "start")
_MODE = flags.DEFINE_enum("intervention", None, MODES,
                          "How to change the step (see the module docstring).")
_START = flags.DEFINE_enum("intervention_start", "cut", STARTS,
                           "cut: from the first pruning step (level below 1; the run is the "
                           "plain run's until then); start: from the first step.")
flags.mark_flag_as_required("intervention")


def tree_dot(a: Any, b: Any) -> jax.Array:
  """Sum over the leaves of <a, b> (float32 scalar)."""
  return sum(jnp.vdot(x.astype(jnp.float32), y.astype(jnp.float32))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def common_cotangent(dz: jax.Array, weights: jax.Array) -> jax.Array:
  """[B, C] the cotangent of every real row asking for the batch's mean error.

  With dz_i = w_i e_i / max(sum w, 1) (`trainer.task_loss`'s gradient), the common part of the
  loss gradient is mean(e) . mean(J), the pull-back of w_i mean(e) / max(sum w, 1) =
  w_i sum_j dz_j / sum w. Args: dz [B, C]; weights [B] (0 for padding rows).
  """
  w = weights.astype(dz.dtype)
  return w[:, None] * dz.sum(0)[None, :] / jnp.maximum(w.sum(), 1e-9)


def class_cotangents(weights: jax.Array, classes: int, dtype: Any) -> jax.Array:
  """[C, B, C]: cotangent c pulls back the gradient of the mean over real rows of example i's
  centred logit c, z_ic - mean_d z_id. Args: weights [B]."""
  w = weights.astype(jnp.float32)
  w = w / jnp.maximum(w.sum(), 1e-9)
  basis = jnp.eye(classes, dtype=jnp.float32) - 1.0 / classes  # row c: d(zc centred)/dz
  return (w[None, :, None] * basis[:, None, :]).astype(dtype)


def span_part(g: Any, basis: Any) -> Any:
  """The part of `g` in the span of `basis` (leaves with a leading [K] axis), least squares."""
  k = jax.tree.leaves(basis)[0].shape[0]
  rows = [jax.tree.map(lambda x, i=i: x[i], basis) for i in range(k)]
  gram = jnp.stack([jnp.stack([tree_dot(a, b) for b in rows]) for a in rows])
  rhs = jnp.stack([tree_dot(a, g) for a in rows])
  coef = jnp.linalg.pinv(gram, rtol=1e-5) @ rhs  # the centred classes span C - 1 directions
  return jax.tree.map(lambda x: jnp.tensordot(coef, x.astype(jnp.float32), axes=1)
                      .astype(x.dtype), basis)


def intervened_grads(trainable: Mapping[str, Any], batch: Mapping[str, jax.Array], *,
                     model: Any, spec: pruning.PruningSpec, level: jax.Array,
                     dropout_rng: jax.Array, mode: str, active: Any = True
                     ) -> tuple[jax.Array, dict[str, Any], Any, dict[str, jax.Array], Any]:
  """The task loss and its gradients, the scores' changed as `mode` says (weights untouched).

  Args:
    trainable: {"params": ..., "scores": ...} as `trainer.TrainState` holds them.
    batch: a classification batch (input_ids ... [B, L], weights [B], labels [B]).
    model, spec, level, dropout_rng: the step's, as `trainer.train_step` uses them.
    mode: one of `MODES`.
    active: bool scalar; where false, the scores' gradient is left as it is (and the removed
      share logged as 0).

  Returns:
    (loss, grads {"params", "scores"}, the forward's masks, metrics, basis). metrics:
    score_grad_norm (the scores' gradient before the change) and, for "centred" and "project",
    score_removed_share and score_removed_cos (for "centred_weights": weight_removed_share and
    weight_removed_cos, of the weights' gradient). basis: for "project" and "project_update", the
    per-class score gradients g_c (scores-shaped leaves with a leading [C] axis), else None.
    "project_update" and "frozen" change the update, not the gradients (`intervened_train_step`).
  """
  if mode not in MODES:
    raise ValueError(f"mode {mode!r}: one of {MODES}")

  def logits(tr):
    masks = pruning.compute_masks(tr["params"], tr["scores"], level, spec)
    params = pruning.multiply_masks(tr["params"], masks)
    return trainer.forward(model, params, batch, deterministic=False,
                           dropout_rng=dropout_rng), masks

  out, pull_back, masks = jax.vjp(logits, trainable, has_aux=True)
  loss, dz = jax.value_and_grad(lambda z: trainer.task_loss(z, batch, "classification"))(out)
  w = batch["weights"]
  if mode in ("none", "frozen"):
    cotangents = dz[None]
  elif mode in ("centred", "centred_weights"):
    cotangents = jnp.stack([dz, common_cotangent(dz, w)])
  else:
    cotangents = jnp.concatenate([dz[None], class_cotangents(w, dz.shape[-1], dz.dtype)])
  pulled = jax.vmap(lambda ct: pull_back(ct)[0])(cotangents)
  grads = jax.tree.map(lambda x: x[0], pulled)
  extra = jax.tree.map(lambda x: x[1:], pulled["scores"])
  g = grads["scores"]
  metrics = {"score_grad_norm": jnp.sqrt(tree_dot(g, g))}
  if mode in ("centred", "project"):
    removed = (jax.tree.map(lambda x: x[0], extra) if mode == "centred"
               else span_part(g, extra))
    removed = jax.tree.map(lambda r: jnp.where(active, r, jnp.zeros_like(r)), removed)
    grads = {"params": grads["params"], "scores": jax.tree.map(jnp.subtract, g, removed)}
    metrics.update(removal_metrics(g, removed))
  if mode == "centred_weights":
    gp = grads["params"]
    removed = jax.tree.map(lambda x: jnp.where(active, x[1], jnp.zeros_like(x[1])),
                           pulled["params"])
    grads = {"params": jax.tree.map(jnp.subtract, gp, removed), "scores": g}
    metrics.update({k.replace("score_", "weight_"): v
                    for k, v in removal_metrics(gp, removed).items()})
  basis = extra if mode in ("project", "project_update") else None
  return loss, grads, masks, metrics, basis


def removal_metrics(g: Any, removed: Any) -> dict[str, jax.Array]:
  """score_removed_share |removed|^2 / |g|^2 and score_removed_cos, cosine(removed, g)."""
  norm_g, norm_r = jnp.sqrt(tree_dot(g, g)), jnp.sqrt(tree_dot(removed, removed))
  return {"score_removed_share": (norm_r / jnp.maximum(norm_g, 1e-30)) ** 2,
          "score_removed_cos": tree_dot(removed, g) / jnp.maximum(norm_g * norm_r, 1e-30)}


def intervened_train_step(state: trainer.TrainState, batch: Mapping[str, jax.Array],
                          teacher_params: Any, *, model: Any, teacher_model: Any, tx: Any,
                          opts: trainer.StepOptions, mode: str, start: str = "cut"
                          ) -> tuple[trainer.TrainState, dict[str, jax.Array]]:
  """`trainer.train_step` with `intervened_grads` in place of the loss gradient, and for
  "project_update" and "frozen" the scores' update changed (`trainer.apply_gradients`'s
  edit_scores, so the logged mask churn is of the applied update).

  Same signature and state as `trainer.train_step` (plus `mode` and `start`, one of `STARTS`),
  so `train_and_evaluate` runs it in place of the real step; `teacher_params` and
  `teacher_model` are unused. "frozen" always starts at the cut.
  """
  del teacher_params, teacher_model
  spec = opts.spec
  if spec is None or spec.method != "topk" or opts.kind != "classification" or opts.distill:
    raise UserError("score_gradient_intervention: hard movement (pruning.method=topk) on a "
                    "classification task without distillation only; got method "
                    f"{getattr(spec, 'method', 'none')}, task kind {opts.kind}, "
                    f"distill {opts.distill}.")
  key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  dropout_rng, _ = jax.random.split(key)  # as train_step (its second key is for l0 only)
  if start not in STARTS:
    raise ValueError(f"start {start!r}: one of {STARTS}")
  level = optim.schedule_values(state.opt_state)["level"]
  active = level < 1.0 if start == "cut" else jnp.bool_(True)
  trainable = {"params": state.params, "scores": state.scores}
  loss, grads, masks, extra, basis = intervened_grads(
      trainable, batch, model=model, spec=spec, level=level, dropout_rng=dropout_rng, mode=mode,
      active=active)
  zero = jnp.zeros((), jnp.float32)
  metrics = {"loss": loss, "task_loss": loss, "distill_loss": zero, "regularizer": zero, **extra}
  edit, removed = None, {}
  if mode == "frozen":  # keep the scores from the first step below level 1 on
    def edit(old, new):
      return jax.tree.map(lambda o, n: jnp.where(level < 1.0, o, n), old, new)
  elif mode == "project_update":
    def edit(old, new):
      delta = jax.tree.map(jnp.subtract, new, old)
      removed["tree"] = jax.tree.map(lambda r: jnp.where(active, r, jnp.zeros_like(r)),
                                     span_part(delta, basis))
      removed["delta"] = delta
      return jax.tree.map(jnp.subtract, new, removed["tree"])
  new_state, metrics = trainer.apply_gradients(state, grads, masks, metrics, tx=tx, opts=opts,
                                               edit_scores=edit)
  if removed:
    metrics.update(removal_metrics(removed["delta"], removed["tree"]))
  return new_state, metrics


def record_mode(workdir: pathlib.Path, mode: str, start: str = "cut") -> None:
  """Writes workdir/intervention.json; refuses a workdir trained another way (or plainly)."""
  path = workdir / "intervention.json"
  want = {"intervention": mode, "start": start}
  if path.exists():
    had = json.loads(path.read_text())
    if had != want:
      raise UserError(f"{workdir} was trained with --intervention={had['intervention']} "
                      f"--intervention_start={had['start']}; use those or a new --workdir.")
    return
  if (workdir / "checkpoints").exists():
    raise UserError(f"{workdir} holds a run trained without this script; use a new --workdir.")
  workdir.mkdir(parents=True, exist_ok=True)
  run_io.write_atomic(path, json.dumps(want) + "\n")


def main(argv):
  mode = _MODE.value
  if mode == "frozen" and _START.value != "cut":
    print("error: --intervention=frozen starts at the cut; drop --intervention_start.",
          file=sys.stderr)
    sys.exit(2)
  config = train._CONFIG.value
  if config.pruning.method != "topk" or config.distill.teacher:
    print("error: score_gradient_intervention: --config.pruning.method=topk without "
          "--config.distill.teacher only.", file=sys.stderr)
    sys.exit(2)
  try:
    record_mode(pathlib.Path(train._WORKDIR.value), mode, _START.value)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  train.main(argv, step_fn=functools.partial(intervened_train_step, mode=mode,
                                             start=_START.value))


if __name__ == "__main__":
  app.run(main, flags_parser=train.parse_flags)

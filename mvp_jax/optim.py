"""The optimizer of movement pruning, as optax transforms.

It reproduces the reference scripts (`masked_run_glue.py` / `masked_run_squad.py`, spec §4.1)
over the trainable tree ``{'params': P, 'scores': S}``:

* three trained groups, chosen by regexes over '/'-joined leaf paths:
  scores -> Adam with ``score_learning_rate`` and no weight decay;
  weights -> AdamW(``weight_decay``); biases and LayerNorm -> AdamW(0);
  plus a frozen group (embeddings) that never moves;
* one linear warm-up (0 -> peak) and linear decay (peak -> 0 at ``total_steps``) shared by every
  group, each with its own peak;
* one global-norm clip over weights and scores together, before the per-group Adam;
* optional gradient accumulation (``optax.MultiSteps``, outermost);
* the pruning level and the regularisation weight carried in the optimizer state
  (:func:`track_schedules`), so they are checkpointed with it and read inside the jitted step
  (:func:`schedule_values`).

Steps are *optimizer* steps (one per ``grad_accum_steps`` micro-batches) everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from absl import logging

# Group labels of `optax.multi_transform`.
SCORES = "scores"
DECAY = "decay"
NO_DECAY = "no_decay"
FROZEN = "frozen"

DEFAULT_FROZEN = (r"(^|/)embeddings/",)
DEFAULT_NO_DECAY = (r"/bias$", r"LayerNorm/scale$", r"LayerNorm/bias$")


# ----------------------------------------------------------------------------------------------
# Learning-rate shape
# ----------------------------------------------------------------------------------------------


def learning_rate_schedule(
    peak_value: float, warmup_steps: int, total_steps: int
) -> optax.Schedule:
  """Linear warm-up from 0 to ``peak_value``, then linear decay to 0 at ``total_steps``.

  The same shape as transformers' ``get_linear_schedule_with_warmup`` stepped once per optimizer
  step: the first update (count 0) uses ``lr(0) = 0`` when ``warmup_steps > 0``, exactly like the
  reference, whose scheduler is stepped after the optimizer.

  Args:
    peak_value: the learning rate reached at ``warmup_steps``.
    warmup_steps: optimizer steps of the linear warm-up (0: start at the peak).
    total_steps: optimizer steps of the whole run; the rate is 0 from here on.

  Returns:
    ``schedule(count) -> float32 scalar``.

  >>> sched = learning_rate_schedule(1.0, warmup_steps=10, total_steps=110)
  >>> [float(sched(s)) for s in (0, 5, 10, 60, 110, 200)]
  [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]
  """
  if warmup_steps < 0:
    raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
  if total_steps <= 0:
    raise ValueError(f"total_steps must be > 0 (optimizer steps of the run), got {total_steps}")
  # Same guards as the reference (max(1, .)): no division by zero when warmup_steps == 0 or
  # warmup_steps == total_steps.
  warm_div = float(max(1, warmup_steps))
  decay_div = float(max(1, total_steps - warmup_steps))

  def schedule(count: jax.typing.ArrayLike) -> jax.Array:
    step = jnp.asarray(count, jnp.float32)
    warm = step / warm_div
    decay = jnp.maximum(0.0, (total_steps - step) / decay_div)
    return (peak_value * jnp.where(step < warmup_steps, warm, decay)).astype(jnp.float32)

  return schedule


# ----------------------------------------------------------------------------------------------
# Pruning level / lambda carried in the optimizer state
# ----------------------------------------------------------------------------------------------


class PruningScheduleState(NamedTuple):
  """State of :func:`track_schedules`: the values the *next* optimizer step must use.

  Attributes:
    count: [] int32, optimizer steps taken so far.
    level: [] float32, ``level_schedule(count)`` (keep fraction, or tau for soft movement).
    lam: [] float32, ``lambda_schedule(count)`` (regularisation weight).
  """

  count: jax.Array
  level: jax.Array
  lam: jax.Array


def _constant(value: float) -> optax.Schedule:
  return lambda count: jnp.full((), value, jnp.float32)


def track_schedules(
    level_schedule: optax.Schedule | None = None,
    lambda_schedule: optax.Schedule | None = None,
) -> optax.GradientTransformation:
  """A pass-through transform whose state holds the pruning level and lambda of the next step.

  Updates are returned unchanged. Put it inside ``optax.MultiSteps`` so that the count advances
  once per optimizer step, not per micro-batch. After ``n`` updates the state holds
  ``level_schedule(n)`` and ``lambda_schedule(n)``; at init, ``schedule(0)``. This matches the GLUE
  reference (``global_step`` from 0); for the SQuAD script (from 1) pass ``lambda t: s(t + 1)``.

  Args:
    level_schedule: ``count -> level``; None means a constant 1.0 (keep everything for top-k and
      magnitude; do not use None with sigmoid_threshold, whose level is tau).
    lambda_schedule: ``count -> lambda``; None means a constant 0.0.

  Returns:
    An ``optax.GradientTransformation`` with a :class:`PruningScheduleState` state.

  >>> tx = track_schedules(lambda t: 1.0 - 0.1 * t, lambda t: 2.0 * t)
  >>> state = tx.init({"w": jnp.zeros(3)})
  >>> float(state.level), float(state.lam)
  (1.0, 0.0)
  >>> _, state = tx.update({"w": jnp.ones(3)}, state)
  >>> int(state.count), round(float(state.level), 4), float(state.lam)
  (1, 0.9, 2.0)
  """
  level_fn = level_schedule if level_schedule is not None else _constant(1.0)
  lam_fn = lambda_schedule if lambda_schedule is not None else _constant(0.0)

  def values(count: jax.Array) -> PruningScheduleState:
    return PruningScheduleState(
        count=count,
        level=jnp.asarray(level_fn(count), jnp.float32).reshape(()),
        lam=jnp.asarray(lam_fn(count), jnp.float32).reshape(()),
    )

  def init_fn(params: optax.Params) -> PruningScheduleState:
    del params
    return values(jnp.zeros([], jnp.int32))

  def update_fn(
      updates: optax.Updates, state: PruningScheduleState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, PruningScheduleState]:
    del params
    return updates, values(optax.safe_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)


def _find_schedule_states(opt_state: Any) -> list[PruningScheduleState]:
  is_state = lambda x: isinstance(x, PruningScheduleState)
  return [x for x in jax.tree.leaves(opt_state, is_leaf=is_state) if is_state(x)]


def schedule_values(opt_state: Any) -> dict[str, jax.Array]:
  """The level and lambda for the next step, read from anywhere in an optimizer state.

  Works inside ``jit`` and on a ``MultiSteps``-wrapped state, or a restored one.

  Args:
    opt_state: the state of an optimizer built by :func:`make_optimizer` (or any optax state
      containing exactly one :func:`track_schedules` state).

  Returns:
    ``{"level": [] float32, "lam": [] float32, "step": [] int32}``; ``step`` counts optimizer steps.

  >>> tx = make_optimizer({"params": {"w": jnp.zeros(2)}}, learning_rate=1e-3,
  ...                     score_learning_rate=1e-2, weight_decay=0.0, warmup_steps=0,
  ...                     total_steps=10, level_schedule=lambda t: 0.5)
  >>> float(schedule_values(tx.init({"params": {"w": jnp.zeros(2)}}))["level"])
  0.5
  """
  found = _find_schedule_states(opt_state)
  if len(found) != 1:
    raise ValueError(
        f"expected exactly one PruningScheduleState in the optimizer state, found {len(found)}: "
        "build the optimizer with mvp_jax.optim.make_optimizer (or include track_schedules once)"
    )
  state = found[0]
  return {"level": state.level, "lam": state.lam, "step": state.count}


# ----------------------------------------------------------------------------------------------
# Parameter groups
# ----------------------------------------------------------------------------------------------


def _key_str(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def path_str(path: Sequence[Any]) -> str:
  """'/'-joined keys of a ``jax.tree_util`` key path, e.g. ``params/bert/pooler/dense/kernel``."""
  return "/".join(_key_str(k) for k in path)


def _compile(patterns: Sequence[str], what: str) -> list[re.Pattern[str]]:
  if isinstance(patterns, str):
    raise TypeError(f"{what} must be a tuple of regexes, got the string {patterns!r}")
  compiled = []
  for p in patterns:
    try:
      compiled.append(re.compile(p))
    except re.error as e:
      raise ValueError(f"invalid regex {p!r} in {what}: {e}") from e
  return compiled


def make_label_fn(
    frozen: Sequence[str] = DEFAULT_FROZEN, no_decay: Sequence[str] = DEFAULT_NO_DECAY
) -> Callable[[Any], Any]:
  """Returns ``tree -> tree of group labels`` for a ``{'params': P, 'scores': S}`` tree.

  Leaves under the top-level ``scores`` key are labelled ``"scores"``. Every other leaf is matched
  (``re.search``) on its path *inside* its collection, i.e. without the leading ``params/``
  (``bert/embeddings/word_embeddings/embedding``): ``frozen`` first, then ``no_decay``, else
  ``"decay"``. Scores are never frozen: masks may be learnt over frozen weights.

  >>> dense = {"bias": 0, "kernel": 0}
  >>> labels = make_label_fn()({
  ...     "params": {"bert": {"embeddings": {"e": 0}, "pooler": {"dense": dense}}},
  ...     "scores": {"bert": {"pooler": {"dense": {"kernel": 0}}}}})
  >>> labels["params"]["bert"]["embeddings"]["e"], labels["params"]["bert"]["pooler"]["dense"]
  ('frozen', {'bias': 'no_decay', 'kernel': 'decay'})
  >>> labels["scores"]["bert"]["pooler"]["dense"]["kernel"]
  'scores'
  """
  frozen_re = _compile(frozen, "frozen")
  no_decay_re = _compile(no_decay, "no_decay")

  def label(path: Sequence[Any], _: Any) -> str:
    keys = [_key_str(k) for k in path]
    if keys and keys[0] == "scores":
      return SCORES
    inner = "/".join(keys[1:] if keys and keys[0] == "params" else keys)
    if any(r.search(inner) for r in frozen_re):
      return FROZEN
    if any(r.search(inner) for r in no_decay_re):
      return NO_DECAY
    return DECAY

  return lambda tree: jax.tree_util.tree_map_with_path(label, tree)


def _zero_frozen(label_fn: Callable[[Any], Any]) -> optax.GradientTransformation:
  """Zeroes the gradients of frozen leaves, so that they do not count in the clipping norm.

  The reference freezes embeddings with ``requires_grad=False``: they have no gradient at all and
  are absent from ``clip_grad_norm_``.
  """

  def update_fn(updates: optax.Updates, params: optax.Params | None = None) -> optax.Updates:
    del params
    labels = label_fn(updates)
    return jax.tree.map(lambda g, lab: jnp.zeros_like(g) if lab == FROZEN else g, updates, labels)

  return optax.stateless(update_fn)


def make_optimizer(
    tree: Any,
    *,
    learning_rate: float,
    score_learning_rate: float,
    weight_decay: float,
    warmup_steps: int,
    total_steps: int,
    max_grad_norm: float = 1.0,
    adam_eps: float = 1e-8,
    grad_accum_steps: int = 1,
    frozen: tuple[str, ...] = DEFAULT_FROZEN,
    no_decay: tuple[str, ...] = DEFAULT_NO_DECAY,
    level_schedule: optax.Schedule | None = None,
    lambda_schedule: optax.Schedule | None = None,
) -> optax.GradientTransformation:
  """The reference optimizer (spec §4.1) over ``{'params': P, 'scores': S}``.

  Per optimizer step: zero frozen grads -> clip by global norm (weights and scores together) ->
  per-group Adam/AdamW with the shared warm-up/decay shape -> record level/lambda for the next step.
  With ``grad_accum_steps > 1`` all of it is wrapped in ``optax.MultiSteps``, which averages the
  micro-batch gradients (the reference divides the loss by the accumulation count).

  Notes on fidelity: optax's Adam puts eps outside the bias-corrected sqrt (as ``torch.optim``);
  the old ``transformers.AdamW`` adds eps before correcting, i.e. an effective
  ``eps / sqrt(1 - b2^t)``. optax's AdamW decays with the pre-update weights, transformers with
  the post-Adam ones: a difference of order ``lr^2 * weight_decay``.

  Args:
    tree: the trainable tree (arrays or ``ShapeDtypeStruct``); used to validate the groups and
      log their sizes. Must have the top-level key ``params`` and may have ``scores``
      (possibly ``{}``).
    learning_rate: peak LR of the weights (both decay and no-decay groups).
    score_learning_rate: peak LR of the scores.
    weight_decay: decoupled weight decay of the decay group.
    warmup_steps: optimizer steps of the linear warm-up (all groups).
    total_steps: optimizer steps of the run (LR reaches 0 here).
    max_grad_norm: global-norm clipping threshold; ``<= 0`` or ``inf`` disables clipping.
    adam_eps: Adam epsilon (betas are fixed at the reference's (0.9, 0.999)).
    grad_accum_steps: micro-batches per optimizer step.
    frozen: regexes (``re.search`` on the path inside ``params``) of leaves that never move.
    no_decay: regexes of weights trained without weight decay.
    level_schedule: pruning level per optimizer step (see :func:`track_schedules`).
    lambda_schedule: regularisation weight per optimizer step.

  Returns:
    An ``optax.GradientTransformation``; read the level with :func:`schedule_values`.

  >>> tree = {"params": {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)}},
  ...         "scores": {"dense": {"kernel": jnp.zeros((2, 2))}}}
  >>> tx = make_optimizer(tree, learning_rate=1e-3, score_learning_rate=1e-2, weight_decay=0.01,
  ...                     warmup_steps=0, total_steps=100)
  >>> updates, state = tx.update(jax.tree.map(jnp.ones_like, tree), tx.init(tree), tree)
  >>> round(float(updates["scores"]["dense"]["kernel"][0, 0]), 6)  # first Adam step: -lr * sign(g)
  -0.01
  """
  if grad_accum_steps < 1:
    raise ValueError(f"grad_accum_steps must be >= 1, got {grad_accum_steps}")
  if adam_eps <= 0:
    raise ValueError(f"adam_eps must be > 0, got {adam_eps}")
  if weight_decay < 0:
    raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
  if not isinstance(tree, Mapping) or "params" not in tree:
    raise ValueError("make_optimizer expects the trainable tree {'params': P, 'scores': S}")
  extra_keys = set(tree) - {"params", "scores"}
  if extra_keys:
    raise ValueError(
        f"unexpected top-level keys {sorted(extra_keys)} in the trainable tree: "
        "expected only 'params' and 'scores'"
    )

  label_fn = make_label_fn(frozen, no_decay)
  labels = jax.tree.leaves(label_fn(tree))
  counts = {g: labels.count(g) for g in (SCORES, DECAY, NO_DECAY, FROZEN)}
  logging.info("optimizer groups (leaf counts): %s", counts)
  if counts[DECAY] + counts[NO_DECAY] + counts[SCORES] == 0:
    raise ValueError(f"every leaf of the trainable tree is frozen by {frozen!r}")

  b1, b2 = 0.9, 0.999
  weight_lr = learning_rate_schedule(learning_rate, warmup_steps, total_steps)
  score_lr = learning_rate_schedule(score_learning_rate, warmup_steps, total_steps)
  groups = {
      SCORES: optax.adam(score_lr, b1=b1, b2=b2, eps=adam_eps),
      DECAY: optax.adamw(weight_lr, b1=b1, b2=b2, eps=adam_eps, weight_decay=weight_decay),
      NO_DECAY: optax.adam(weight_lr, b1=b1, b2=b2, eps=adam_eps),
      FROZEN: optax.set_to_zero(),
  }
  chain = [_zero_frozen(label_fn)]
  if 0 < max_grad_norm < float("inf"):
    chain.append(optax.clip_by_global_norm(max_grad_norm))
  chain.append(optax.multi_transform(groups, label_fn))
  chain.append(track_schedules(level_schedule, lambda_schedule))
  tx = optax.chain(*chain)
  if grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=grad_accum_steps).gradient_transformation()
  return tx

"""Pruning as a pure function over parameter pytrees: spec, score init, masking, counting.

A leaf's path is its keys joined by '/' (`bert/encoder/layer/0/attention/self/query/kernel`); the
leaves to prune are picked by `re.search` of the spec's include regexes minus its exclude regexes.
Any pytree of arrays works: nested dicts (Linen params, HF Flax BERT trees), flax ``FrozenDict``,
and ``nnx.State`` (its ``.value`` attribute level is dropped from paths) or its ``to_pure_dict()``.

Typical use inside a jitted step (``spec`` static, ``level`` traced)::

  scores = init_scores(params, spec, rng)
  masked = apply_masks(params, scores, level, spec)   # W' = W * M(S), straight-through grads
  logits = model.apply({"params": masked}, batch)

Called outside a trace (analysis, export, notebooks), `apply_masks`, `compute_masks` and
`fold_masks` build the masks with one cached compiled function per spec and shapes, so a repeated
call, at any level, costs milliseconds instead of recompiling the threshold search.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mvp_jax import masks as masks_lib

PyTree = Any

# The six encoder kernels per BERT layer masked by the reference code (spec §1.0).
DEFAULT_INCLUDE: tuple[str, ...] = (
  r"encoder/layer/\d+/(attention/(self/(query|key|value)|output/dense)|intermediate/dense"
  r"|output/dense)/kernel$",
)
METHODS = ("topk", "magnitude", "sigmoid_threshold", "l0")
SCOPES = ("local", "global")
SCORE_INITS = ("constant", "uniform", "kaiming")
_GLOBAL_METHODS = ("topk", "magnitude")
_LEVEL_IN_UNIT = ("topk", "magnitude")


def _choice_error(field: str, value: Any, choices: tuple[str, ...]) -> ValueError:
  return ValueError(f"PruningSpec.{field}={value!r} is not valid; choose one of {choices}")


def _as_regex_tuple(field: str, value: Any) -> tuple[str, ...]:
  if isinstance(value, str):
    value = (value,)
  try:
    value = tuple(value)
  except TypeError as e:
    raise ValueError(f"PruningSpec.{field} must be a tuple of regex strings, got {value!r}") from e
  for rx in value:
    if not isinstance(rx, str):
      raise ValueError(f"PruningSpec.{field} must hold regex strings, got {rx!r}")
    try:
      re.compile(rx)
    except re.error as e:
      raise ValueError(f"PruningSpec.{field}: invalid regex {rx!r}: {e}") from e
  return value


@dataclasses.dataclass(frozen=True)
class PruningSpec:
  """What to prune and how. Frozen and hashable, so it can be a jit static argument.

  Attributes:
    method: "topk" (movement, hard), "magnitude", "sigmoid_threshold" (soft movement) or "l0".
    scope: "local" (per matrix) or "global" (one top-k over all selected leaves; only for
      topk and magnitude: sigmoid_threshold uses one tau for all matrices already, and l0 has
      no threshold, so "global" is rejected for them).
    include: regexes (`re.search` on '/'-joined paths); a leaf is selected if any matches.
      Default: BERT's six encoder kernels per layer.
    exclude: regexes; a leaf matching any of them is never selected.
    score_init: "constant" (S = score_scale), "uniform" (U(-score_scale, score_scale)) or
      "kaiming" (PyTorch's kaiming_uniform with a=sqrt(5): U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
      fan_in = prod(shape[:-1]), i.e. shape[0] for a Flax [in, out] kernel; score_scale unused).
    score_scale: see score_init. Paper runs: 0.0 (topk, sigmoid_threshold), 2.197 (l0).
    min_retention: sigmoid_threshold keeps at least int(min_retention * size) + 1 entries per
      matrix; 0 disables the rule.
    stack_search: topk and magnitude: search the thresholds of same-shaped matrices whose
      paths differ only in numbers (the same kernel in every layer) as one stacked block, so
      that a pass of the search is one reduction per block instead of one per matrix (fewer,
      larger kernels: for GPU/TPU, where the per-matrix search is launch-bound). The masks
      are identical; the scores are copied into the stacks once per step. Off by default: on
      CPU it is slower (benchmarks/masks.py), and its gain on an accelerator is not yet
      measured. Partition rules must not tell layers apart (the stack would move scores
      between devices); the shipped rules do not.
  """

  method: str = "topk"
  scope: str = "local"
  include: tuple[str, ...] = DEFAULT_INCLUDE
  exclude: tuple[str, ...] = ()
  score_init: str = "constant"
  score_scale: float = 0.0
  min_retention: float = 0.005
  stack_search: bool = False

  def __post_init__(self):
    if self.method not in METHODS:
      raise _choice_error("method", self.method, METHODS)
    if self.scope not in SCOPES:
      raise _choice_error("scope", self.scope, SCOPES)
    if self.score_init not in SCORE_INITS:
      raise _choice_error("score_init", self.score_init, SCORE_INITS)
    if self.scope == "global" and self.method not in _GLOBAL_METHODS:
      raise ValueError(
        f"PruningSpec: scope='global' is only defined for {_GLOBAL_METHODS}, not "
        f"method={self.method!r} (its threshold/regulariser is already shared by all matrices); "
        "use scope='local'"
      )
    # Lists would make the spec unhashable: normalise to tuples (frozen, hence object.__setattr__).
    object.__setattr__(self, "include", _as_regex_tuple("include", self.include))
    object.__setattr__(self, "exclude", _as_regex_tuple("exclude", self.exclude))
    if not self.include:
      raise ValueError("PruningSpec.include is empty: give at least one regex")
    if not isinstance(self.score_scale, int | float) or not math.isfinite(self.score_scale):
      raise ValueError(f"PruningSpec.score_scale={self.score_scale!r} must be a finite number")
    object.__setattr__(self, "score_scale", float(self.score_scale))
    if not 0.0 <= float(self.min_retention) < 1.0:
      raise ValueError(f"PruningSpec.min_retention={self.min_retention!r} must be in [0, 1)")
    object.__setattr__(self, "min_retention", float(self.min_retention))
    if not isinstance(self.stack_search, bool):
      raise ValueError(f"PruningSpec.stack_search={self.stack_search!r} must be True or False")

  @property
  def uses_scores(self) -> bool:
    """False for magnitude pruning, which ranks |W| and has no score parameters."""
    return self.method != "magnitude"


# ----------------------------------------------------------------------------------------------
# Paths
# ----------------------------------------------------------------------------------------------


def _key_parts(keypath) -> list[tuple[str, Any]]:
  """(string, raw key) per path entry; nnx Variables' trailing `.value` is dropped."""
  parts = []
  for k in keypath:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append((str(k.key), k.key))
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append((str(k.idx), k.idx))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      if k.name != "value":
        parts.append((k.name, k.name))
    elif isinstance(k, jax.tree_util.FlattenedIndexKey):
      parts.append((str(k.key), k.key))
    else:
      parts.append((str(k), k))
  return parts


def _flatten(tree: PyTree) -> tuple[list[tuple[str, tuple, Any]], Any]:
  """[(path, raw keys, leaf)] in tree order, and the treedef to rebuild ``tree``."""
  if tree is None:
    tree = {}
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  out = []
  for keypath, leaf in leaves:
    parts = _key_parts(keypath)
    out.append(("/".join(p for p, _ in parts), tuple(r for _, r in parts), leaf))
  return out, treedef


def _nest(items: list[tuple[tuple, Any]]) -> dict:
  """Nested plain dict from (raw keys, value) pairs."""
  root: dict = {}
  for keys, value in items:
    node = root
    for k in keys[:-1]:
      node = node.setdefault(k, {})
    node[keys[-1]] = value
  return root


@functools.lru_cache(maxsize=256)
def _compiled(regexes: tuple[str, ...]) -> tuple[re.Pattern, ...]:
  return tuple(re.compile(rx) for rx in regexes)


def _is_selected(path: str, spec: PruningSpec) -> bool:
  return any(rx.search(path) for rx in _compiled(spec.include)) and not any(
    rx.search(path) for rx in _compiled(spec.exclude)
  )


def _selected(params: PyTree, spec: PruningSpec) -> list[tuple[str, tuple, Any]]:
  """Selected (path, raw keys, leaf), sorted by path; raises if nothing is selected."""
  flat, _ = _flatten(params)
  chosen = sorted(
    (item for item in flat if hasattr(item[2], "shape") and _is_selected(item[0], spec)),
    key=lambda item: item[0],
  )
  if not chosen:
    examples = [p for p, _, _ in flat[:6]]
    raise ValueError(
      f"PruningSpec selects no parameter: include={spec.include}, exclude={spec.exclude} "
      f"matched none of the {len(flat)} leaf paths (e.g. {examples}). Paths are '/'-joined keys "
      "searched with re.search."
    )
  return chosen


def select_paths(params: PyTree, spec: PruningSpec) -> tuple[str, ...]:
  """The '/'-paths of the leaves ``spec`` prunes, sorted.

  Args:
    params: pytree of arrays (dict, FrozenDict, nnx.State, ...).
    spec: the pruning spec.

  Returns:
    Sorted tuple of paths (this order is also the global tie-breaking order).

  Raises:
    ValueError: when the regexes select nothing (the message shows example paths).
  """
  return tuple(p for p, _, _ in _selected(params, spec))


# ----------------------------------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------------------------------


def _init_one(shape: tuple[int, ...], spec: PruningSpec, rng: jax.Array | None) -> jax.Array:
  if spec.score_init == "constant":
    return jnp.full(shape, spec.score_scale, jnp.float32)
  if spec.score_init == "uniform":
    return jax.random.uniform(
      rng, shape, jnp.float32, minval=-spec.score_scale, maxval=spec.score_scale
    )
  # kaiming_uniform(a=sqrt(5)): gain sqrt(2 / (1 + a^2)) times sqrt(3 / fan_in) = 1/sqrt(fan_in).
  fan_in = math.prod(shape[:-1]) if len(shape) >= 2 else max(1, math.prod(shape))
  bound = 1.0 / math.sqrt(max(fan_in, 1))
  return jax.random.uniform(rng, shape, jnp.float32, minval=-bound, maxval=bound)


def init_scores(params: PyTree, spec: PruningSpec, rng: jax.Array | None = None) -> dict:
  """Initial importance scores, one float32 array per selected leaf.

  Args:
    params: pytree of arrays; kernels like [in, out].
    spec: the pruning spec.
    rng: PRNG key, required for "uniform" and "kaiming" (leaf i uses fold_in(rng, i) in sorted
      path order, so the result does not depend on the tree's container types).

  Returns:
    Nested dict with the same keys as ``params`` but only the selected leaves, each
    [in, out] float32 (scores stay float32 even for bf16 weights: they accumulate small updates).
    ``{}`` for magnitude pruning.
  """
  chosen = _selected(params, spec)
  if not spec.uses_scores:
    return {}
  if spec.score_init != "constant" and rng is None:
    raise ValueError(f"init_scores: score_init={spec.score_init!r} needs an rng key")
  items = []
  for i, (_, keys, leaf) in enumerate(chosen):
    leaf_rng = None if rng is None else jax.random.fold_in(rng, i)
    items.append((keys, _init_one(tuple(leaf.shape), spec, leaf_rng)))
  return _nest(items)


def _scores_by_path(scores: PyTree, chosen, spec: PruningSpec) -> dict[str, jax.Array]:
  """Scores as {path: array}, checked against the selected params (names the bad path)."""
  if not spec.uses_scores:
    return {}
  flat, _ = _flatten(scores)
  by_path = {p: leaf for p, _, leaf in flat}
  wanted = {p: leaf for p, _, leaf in chosen}
  missing = [p for p in wanted if p not in by_path]
  extra = [p for p in by_path if p not in wanted]
  if missing:
    raise ValueError(
      f"scores have no entry for selected param {missing[0]!r} ({len(missing)} missing); "
      "build them with init_scores(params, spec, rng) using the same spec"
    )
  if extra:
    raise ValueError(
      f"scores have {extra[0]!r}, which the spec does not select ({len(extra)} extra); "
      "build them with init_scores(params, spec, rng) using the same spec"
    )
  for p, w in wanted.items():
    if tuple(by_path[p].shape) != tuple(w.shape):
      raise ValueError(
        f"scores[{p!r}] has shape {tuple(by_path[p].shape)} but the param has {tuple(w.shape)}"
      )
  return by_path


# ----------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------


def _check_level(level: Any, spec: PruningSpec) -> None:
  """Validates a concrete level; a traced one cannot be checked (the binarizers clamp it)."""
  if spec.method == "l0":
    return
  try:
    value = float(level)
  except jax.errors.ConcretizationTypeError:
    return
  except TypeError as e:
    raise ValueError(f"level must be a scalar number, got {level!r}") from e
  if spec.method in _LEVEL_IN_UNIT and not 0.0 <= value <= 1.0:
    raise ValueError(
      f"level={value} is the keep fraction for method={spec.method!r} and must be in [0, 1]"
    )
  if not math.isfinite(value):
    raise ValueError(f"level={value} must be finite")


def stack_keys(paths: Sequence[str]) -> list[str]:
  """The stacking key of each path for `PruningSpec.stack_search`: the path with every run of
  digits replaced by '#', so that one kernel's copies in all layers share a key
  ('encoder/layer/#/attention/self/query/kernel')."""
  return [re.sub(r"\d+", "#", p) for p in paths]


def _flat_masks(
  paths: tuple[str, ...], weights: list[jax.Array], scores: dict[str, jax.Array], level,
  spec: PruningSpec, rng: jax.Array | None
) -> dict[str, jax.Array]:
  """{path: float32 mask} for the selected leaves (``paths`` sorted; ``weights`` in that order,
  read by magnitude only)."""
  keys = stack_keys(paths) if spec.stack_search else None
  if spec.method == "magnitude":
    if spec.scope == "global":
      got = masks_lib.global_magnitude_masks(weights, level, stack_keys=keys)
    else:
      got = masks_lib.local_magnitude_masks(weights, level, stack_keys=keys)
    return dict(zip(paths, got, strict=True))
  if spec.method == "topk":
    ranked = [scores[p] for p in paths]
    if spec.scope == "global":
      got = masks_lib.global_topk_masks(ranked, level, stack_keys=keys)
    else:
      got = masks_lib.local_topk_masks(ranked, level, stack_keys=keys)
    return dict(zip(paths, got, strict=True))
  if spec.method == "sigmoid_threshold":
    got = masks_lib.sigmoid_threshold_masks([scores[p] for p in paths], level, spec.min_retention)
    return dict(zip(paths, got, strict=True))
  # l0: one independent draw per leaf, derived from the leaf's position in sorted path order.
  return {
    p: masks_lib.l0_mask(scores[p], None if rng is None else jax.random.fold_in(rng, i))
    for i, p in enumerate(paths)
  }


_flat_masks_compiled = jax.jit(_flat_masks, static_argnums=(0, 4))


def _masks(chosen, scores: dict[str, jax.Array], level, spec: PruningSpec,
           rng: jax.Array | None) -> dict[str, jax.Array]:
  """`_flat_masks` of the selected leaves; concrete inputs go through one cached compiled function.

  Op by op, the threshold searches' loops would be traced and compiled afresh on every call
  (about 2 s for a small MLP on CPU); compiled, a repeated call costs milliseconds. Under a trace
  (the user's jit or grad) the masks are built inline as before.
  """
  paths = tuple(p for p, _, _ in chosen)
  weights = [leaf for _, _, leaf in chosen] if spec.method == "magnitude" else []
  args = (weights, scores, level, rng)
  if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(args)):
    return _flat_masks(paths, weights, scores, level, spec, rng)
  return _flat_masks_compiled(paths, weights, scores, level, spec, rng)


def apply_masks(
  params: PyTree,
  scores: PyTree,
  level: jax.typing.ArrayLike | None,
  spec: PruningSpec,
  rng: jax.Array | None = None,
) -> PyTree:
  """``W' = W * M`` on the selected leaves; every other leaf is returned unchanged.

  Args:
    params: pytree of arrays (same container types come back).
    scores: from `init_scores` (ignored for magnitude; pass ``{}``).
    level: [] keep fraction in [0, 1] (topk, magnitude), sigmoid cut-off tau
      (sigmoid_threshold), ignored (l0; may be None). May be traced: changing it does not
      recompile. A concrete value is validated; a traced one is clamped to [0, 1].
    spec: the pruning spec.
    rng: only for l0: a key gives the sampled hard-concrete training mask, None the
      deterministic one.

  Returns:
    The tree of ``params`` with masked kernels (dtype of each kernel kept). Gradients:
    dL/dS = dL/dW' * W and dL/dW = dL/dW' * M for topk / sigmoid_threshold; dL/dW = dL/dW' * M
    for magnitude; autodiff through the mask for l0.
  """
  _check_level(level, spec)
  chosen = _selected(params, spec)
  by_path = _scores_by_path(scores, chosen, spec)
  return _multiply(params, _masks(chosen, by_path, level, spec, rng))


def _multiply(params: PyTree, masks: dict[str, jax.Array]) -> PyTree:
  """``params`` with each leaf whose path is a key of ``masks`` multiplied by that mask."""
  flat, treedef = _flatten(params)
  leaves = [leaf * masks[p].astype(leaf.dtype) if p in masks else leaf for p, _, leaf in flat]
  return jax.tree_util.tree_unflatten(treedef, leaves)


def compute_masks(
  params: PyTree, scores: PyTree, level: jax.typing.ArrayLike | None, spec: PruningSpec,
  rng: jax.Array | None = None,
) -> dict:
  """The masks `apply_masks` multiplies in: deterministic by default (evaluation, statistics,
  export).

  ``multiply_masks(params, compute_masks(params, scores, level, spec, rng))`` equals
  ``apply_masks(params, scores, level, spec, rng)``, gradients included: a step that also needs
  the masks themselves (to log or compare them) computes them once this way.

  Args:
    params: pytree of arrays.
    scores: from `init_scores` (``{}`` for magnitude).
    level: as in `apply_masks`.
    spec: the pruning spec.
    rng: only for l0, as in `apply_masks`: a key gives the sampled hard-concrete training mask.

  Returns:
    Nested dict with the structure of ``scores`` (for magnitude: of the selected leaves), each
    [in, out] float32: 0/1, or in [0, 1] for l0 (continuous when deterministic).
  """
  _check_level(level, spec)
  chosen = _selected(params, spec)
  by_path = _scores_by_path(scores, chosen, spec)
  masks = _masks(chosen, by_path, level, spec, rng)
  return _nest([(keys, masks[p]) for p, keys, _ in chosen])


def multiply_masks(params: PyTree, masks: PyTree) -> PyTree:
  """``W' = W * M`` for every leaf of ``params`` that ``masks`` names; the others unchanged.

  Args:
    params: pytree of arrays (same container types come back).
    masks: a tree from `compute_masks` on ``params`` (leaf paths as in ``params``).

  Returns:
    The tree of ``params`` with the masked kernels (dtype of each kernel kept).

  Raises:
    ValueError: a mask whose path is not a leaf of ``params``, or of another shape.
  """
  by_path = {p: m for p, _, m in _flatten(masks)[0]}
  leaves = {p: leaf for p, _, leaf in _flatten(params)[0]}
  for p, m in by_path.items():
    if p not in leaves:
      raise ValueError(f"multiply_masks: mask {p!r} names no leaf of params")
    if tuple(m.shape) != tuple(leaves[p].shape):
      raise ValueError(f"multiply_masks: mask {p!r} has shape {tuple(m.shape)}, the leaf "
                       f"{tuple(leaves[p].shape)}")
  return _multiply(params, by_path)


def fold_masks(
  params: PyTree, scores: PyTree, level: jax.typing.ArrayLike | None, spec: PruningSpec
) -> PyTree:
  """Params with the deterministic masks multiplied in, for export (no scores needed after).

  For l0 this is the continuous mask ``clip(sigmoid(S) * 1.2 - 0.1, 0, 1)``, so surviving
  weights are rescaled, as in the reference ``bertarize.py``.

  Args:
    params: pytree of arrays.
    scores: from `init_scores` (``{}`` for magnitude).
    level: as in `apply_masks` (usually the schedule's final level).
    spec: the pruning spec.

  Returns:
    The tree of ``params`` (same container types and dtypes), pruned entries exactly 0.
  """
  return apply_masks(params, scores, level, spec, rng=None)


# ----------------------------------------------------------------------------------------------
# Counting
# ----------------------------------------------------------------------------------------------


def _count_positive(mask: Any) -> int:
  if isinstance(mask, np.ndarray):
    return int(np.count_nonzero(mask > 0))
  return int(jnp.sum(jnp.asarray(mask) > 0, dtype=jnp.int32))


def remaining_weights(
  params: PyTree, masks: PyTree, encoder_pattern: str = r"(^|/)encoder/"
) -> dict[str, Any]:
  """Remaining-weights fractions: the paper's rule (spec §5.2) and the plain one.

  Paper rule: only leaves whose path matches ``encoder_pattern`` count. Denominator: all of them
  (pruned kernels, biases, LayerNorms). Numerator: mask entries > 0 in the pruned kernels
  (> 0 also counts l0's continuous masks) plus every other encoder entry, counted as remaining.
  For BERT-base the denominator is 85,054,464. Plain: entries > 0 over the pruned leaves only.

  Args:
    params: pytree whose leaves have ``.shape`` (arrays or jax.ShapeDtypeStruct: only sizes
      are read).
    masks: from `compute_masks` (paths must exist in ``params``).
    encoder_pattern: regex (`re.search`) picking the encoder leaves.

  Returns:
    dict with "paper" (fraction in [0, 1]; NaN if no leaf matches ``encoder_pattern``),
    "plain" (fraction), "per_leaf" ({path: kept fraction} for each masked leaf), "kept" and
    "total" (the paper numerator and denominator, ints).
  """
  flat, _ = _flatten(params)
  sizes = {p: math.prod(leaf.shape) for p, _, leaf in flat if hasattr(leaf, "shape")}
  mask_flat, _ = _flatten(masks)
  rx = re.compile(encoder_pattern)
  per_leaf: dict[str, float] = {}
  kept_by_path: dict[str, int] = {}
  for p, _, m in mask_flat:
    if p not in sizes:
      raise ValueError(f"remaining_weights: mask {p!r} has no matching leaf in params")
    if math.prod(m.shape) != sizes[p]:
      raise ValueError(f"remaining_weights: mask {p!r} has shape {tuple(m.shape)}, param differs")
    kept_by_path[p] = _count_positive(m)
    per_leaf[p] = kept_by_path[p] / sizes[p] if sizes[p] else 1.0
  total = kept = 0
  for p, size in sizes.items():
    if rx.search(p):
      total += size
      kept += kept_by_path.get(p, size)
  masked_size = sum(sizes[p] for p in kept_by_path)
  return {
    "paper": kept / total if total else float("nan"),
    "plain": sum(kept_by_path.values()) / masked_size if masked_size else float("nan"),
    "per_leaf": per_leaf,
    "kept": kept,
    "total": total,
  }


def mask_change(before: PyTree, after: PyTree) -> jax.Array:
  """Mask churn: the fraction of masked entries that changed between two mask trees.

  ``mean |M_after - M_before|`` over every entry of every leaf: for 0/1 masks (topk, magnitude,
  sigmoid_threshold) the fraction of weights that were pruned or revived; for l0's continuous
  deterministic masks the mean absolute change. The trainer logs it per optimizer step as
  ``train/mask_churn`` (masks of the state before and after the update, at the step's level), the
  quantity to watch when the mask is not settling (docs/results.md).

  Args:
    before, after: mask trees of the same structure and shapes (from `compute_masks`).

  Returns:
    float32 scalar in [0, 1] (0 for empty trees). Jit-compatible.

  >>> a = {"k": jnp.array([[1., 0.], [1., 1.]])}
  >>> float(mask_change(a, {"k": jnp.array([[1., 1.], [0., 1.]])}))
  0.5
  """
  leaves_a, tree_a = jax.tree.flatten(before)
  leaves_b, tree_b = jax.tree.flatten(after)
  if tree_a != tree_b or any(x.shape != y.shape for x, y in zip(leaves_a, leaves_b, strict=True)):
    raise ValueError("mask_change: the two mask trees differ in structure or shapes")
  total = sum(x.size for x in leaves_a)
  if not total:
    return jnp.zeros((), jnp.float32)
  diff = sum(jnp.sum(jnp.abs(y.astype(jnp.float32) - x.astype(jnp.float32)))
             for x, y in zip(leaves_a, leaves_b, strict=True))
  return (diff / total).astype(jnp.float32)


__all__ = [
  "DEFAULT_INCLUDE",
  "METHODS",
  "SCOPES",
  "SCORE_INITS",
  "PruningSpec",
  "apply_masks",
  "compute_masks",
  "fold_masks",
  "init_scores",
  "mask_change",
  "multiply_masks",
  "remaining_weights",
  "select_paths",
]

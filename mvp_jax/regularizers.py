"""Score regularisers (spec §3.1), on the code's normalised scale: a per-matrix mean, averaged
over matrices (the README/sheet lambdas, e.g. 400 or 125, are on this scale)."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from mvp_jax import masks as masks_lib

# beta * log(-l / r) = (2/3) * log(0.1 / 1.1) = -1.5986: sigmoid(S + 1.5986) = P(gate != 0).
L0_SHIFT = masks_lib.L0_BETA * math.log(-masks_lib.L0_LEFT / masks_lib.L0_RIGHT)


def _mean_of_means(scores: Any, fn) -> jax.Array:
  leaves = jax.tree_util.tree_leaves(scores)
  if not leaves:
    return jnp.zeros((), jnp.float32)
  return sum(jnp.mean(fn(s.astype(jnp.float32))) for s in leaves) / len(leaves)


def l1_sigmoid(scores: Any) -> jax.Array:
  """Mean over matrices of mean(sigmoid(S)) (soft movement's L1 penalty).

  Args:
    scores: pytree of [in, out] float32 score arrays.

  Returns:
    [] float32 (0 for an empty tree).
  """
  return _mean_of_means(scores, jax.nn.sigmoid)


def expected_l0(scores: Any) -> jax.Array:
  """Mean over matrices of mean(sigmoid(S - beta * log(-l / r))): the expected L0 fraction.

  Args:
    scores: pytree of [in, out] float32 score arrays.

  Returns:
    [] float32 (0 for an empty tree).
  """
  return _mean_of_means(scores, lambda s: jax.nn.sigmoid(s - L0_SHIFT))


def regularizer(scores: Any, params: Any = None, spec: Any = None) -> jax.Array:
  """The spec's regulariser R(S) (the loss adds lambda(t) * R).

  Args:
    scores: pytree of score arrays.
    params: unused (kept so weight-aware penalties fit the same signature). For convenience
      ``regularizer(scores, spec)`` also works.
    spec: a `pruning.PruningSpec` (anything with ``.method``).

  Returns:
    [] float32: l1_sigmoid for sigmoid_threshold, expected_l0 for l0, 0 for topk/magnitude.
  """
  if spec is None and hasattr(params, "method"):
    params, spec = None, params
  if spec is None:
    raise ValueError("regularizer needs a PruningSpec: regularizer(scores, params, spec)")
  if spec.method == "sigmoid_threshold":
    return l1_sigmoid(scores)
  if spec.method == "l0":
    return expected_l0(scores)
  if spec.method in ("topk", "magnitude"):
    return jnp.zeros((), jnp.float32)
  raise ValueError(f"regularizer: unknown method {spec.method!r}")

"""Regularisers: per-matrix means averaged over matrices (the reference's normalised scale)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mvp_jax import pruning, regularizers


def _sig(x):
  return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


SCORES = {
  "a": {"kernel": jnp.array([[0.0, 1.0], [-1.0, 2.0]], jnp.float32)},
  "b": {"kernel": jnp.linspace(-3.0, 3.0, 30, dtype=jnp.float32).reshape(5, 6) + 0.7},
}


def test_l1_sigmoid_is_mean_of_means():
  a, b = np.asarray(SCORES["a"]["kernel"]), np.asarray(SCORES["b"]["kernel"])
  want = (_sig(a).mean() + _sig(b).mean()) / 2
  assert float(regularizers.l1_sigmoid(SCORES)) == pytest.approx(want, rel=1e-6)
  pooled = _sig(np.concatenate([a.ravel(), b.ravel()])).mean()
  assert abs(want - pooled) > 1e-3  # the test can tell the two normalisations apart


def test_expected_l0():
  assert regularizers.L0_SHIFT == pytest.approx(-1.5986, abs=1e-4)
  assert regularizers.L0_SHIFT == pytest.approx((2 / 3) * math.log(0.1 / 1.1))
  a, b = np.asarray(SCORES["a"]["kernel"]), np.asarray(SCORES["b"]["kernel"])
  want = (_sig(a + 1.5986).mean() + _sig(b + 1.5986).mean()) / 2
  assert float(regularizers.expected_l0(SCORES)) == pytest.approx(want, rel=1e-4)


def test_dispatch_and_gradient():
  soft = pruning.PruningSpec(method="sigmoid_threshold")
  l0 = pruning.PruningSpec(method="l0")
  assert float(regularizers.regularizer(SCORES, None, soft)) == pytest.approx(
    float(regularizers.l1_sigmoid(SCORES))
  )
  assert float(regularizers.regularizer(SCORES, soft)) == pytest.approx(
    float(regularizers.l1_sigmoid(SCORES))
  )
  assert float(regularizers.regularizer(SCORES, None, l0)) == pytest.approx(
    float(regularizers.expected_l0(SCORES))
  )
  for method in ("topk", "magnitude"):
    assert float(regularizers.regularizer(SCORES, None, pruning.PruningSpec(method=method))) == 0
  assert float(regularizers.l1_sigmoid({})) == 0.0
  g = jax.grad(lambda s: regularizers.regularizer(s, None, soft))(SCORES)
  a = np.asarray(SCORES["a"]["kernel"])
  np.testing.assert_allclose(g["a"]["kernel"], _sig(a) * (1 - _sig(a)) / a.size / 2, rtol=1e-5)
  with pytest.raises(ValueError, match="needs a PruningSpec"):
    regularizers.regularizer(SCORES)

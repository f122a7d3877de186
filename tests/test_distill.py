"""Tests of mvp_jax.distill against PyTorch's kl_div (the reference's formula)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mvp_jax import distill


def _torch_kd(s, t, temperature):
  s, t = torch.from_numpy(np.asarray(s, np.float64)), torch.from_numpy(np.asarray(t, np.float64))
  loss = F.kl_div(F.log_softmax(s / temperature, dim=-1), F.softmax(t / temperature, dim=-1),
                  reduction="batchmean") * temperature**2
  return float(loss)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.5])
@pytest.mark.parametrize("shape", [(8, 3), (5, 2), (4, 384)])
def test_kd_matches_torch(temperature, shape):
  rng = np.random.default_rng(0)
  s = rng.normal(scale=3.0, size=shape).astype(np.float32)
  t = rng.normal(scale=3.0, size=shape).astype(np.float32)
  got = float(jax.jit(distill.kd_loss, static_argnums=2)(jnp.asarray(s), jnp.asarray(t),
                                                        temperature))
  np.testing.assert_allclose(got, _torch_kd(s, t, temperature), rtol=1e-5, atol=1e-6)
  assert got > 0


def test_extreme_teacher_logits_stay_finite():
  s = jnp.asarray([[0.0, 0.0, 0.0]])
  t = jnp.asarray([[200.0, -200.0, 0.0]])  # softmax(t/T) underflows to 0 for two classes
  got = float(distill.kd_loss(s, t, 1.0))
  np.testing.assert_allclose(got, _torch_kd(s, t, 1.0), rtol=1e-5)


def test_zero_when_equal_and_for_regression():
  z = jnp.asarray(np.random.default_rng(1).normal(size=(6, 4)), jnp.float32)
  assert abs(float(distill.kd_loss(z, z, 2.0))) < 1e-6
  s, t = jnp.asarray([[0.3], [-2.0]]), jnp.asarray([[5.0], [1.0]])
  assert float(distill.kd_loss(s, t, 2.0)) == 0.0


def test_weights_and_gradient():
  rng = np.random.default_rng(2)
  s = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
  t = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
  w = jnp.asarray([1.0, 1.0, 0.0, 0.0])
  np.testing.assert_allclose(float(distill.kd_loss(s, t, 2.0, w)),
                             _torch_kd(s[:2], t[:2], 2.0), rtol=1e-5)
  assert float(distill.kd_loss(s, t, 2.0, jnp.zeros(4))) == 0.0
  # Gradient w.r.t. the student is T * (softmax(s/T) - softmax(t/T)) / B; none flows to the teacher.
  gs, gt = jax.grad(distill.kd_loss, argnums=(0, 1))(s, t, 2.0)
  want = 2.0 * (jax.nn.softmax(s / 2.0) - jax.nn.softmax(t / 2.0)) / 4
  np.testing.assert_allclose(np.asarray(gs), np.asarray(want), rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(np.asarray(gt), 0.0)


def test_qa_kd_and_combine():
  rng = np.random.default_rng(3)
  ss, se, ts, te = (rng.normal(size=(3, 16)).astype(np.float32) for _ in range(4))
  got = float(distill.qa_kd_loss((jnp.asarray(ss), jnp.asarray(se)),
                                 (jnp.asarray(ts), jnp.asarray(te)), 2.0))
  want = (_torch_kd(ss, ts, 2.0) + _torch_kd(se, te, 2.0)) / 2
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(float(distill.combine(jnp.asarray(2.0), jnp.asarray(1.0), 0.1, 0.9)),
                             1.1, rtol=1e-6)


@pytest.mark.parametrize("alpha_ce,alpha_distil,temperature,match", [
    (0.5, 0.0, 2.0, "alpha_distil must be > 0"),
    (-0.1, 0.9, 2.0, ">= 0"),
    (0.1, 0.9, 0.0, "temperature"),
])
def test_validation(alpha_ce, alpha_distil, temperature, match):
  distill.validate_kd_config(0.0, 1.0, 1.0)
  with pytest.raises(ValueError, match=match):
    distill.validate_kd_config(alpha_ce, alpha_distil, temperature)
  with pytest.raises(ValueError, match="differ"):
    distill.kd_loss(jnp.zeros((2, 3)), jnp.zeros((2, 4)), 1.0)

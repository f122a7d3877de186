"""Cubic level schedule and lambda schedule against a direct transcription of the reference."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mvp_jax import schedules


def reference_threshold(t, total, t_i, t_f, initial, final):
  """spec §2, transcribed line by line (Python floats)."""
  if t <= t_i:
    return initial
  if t > total - t_f:
    return final
  p = (t - t_i) / (total - t_i - t_f)
  return final + (initial - final) * (1 - p) ** 3


CASES = [
  # (initial, final, T, t_i, t_f): script defaults with warmup_steps=0, topk to 10%, soft MvP,
  # L0 (constant), the SQuAD README example (W_lr 5400, warm-ups 1/2), a one-step span.
  (1.0, 0.7, 1000, 0, 0),
  (1.0, 0.10, 120, 10, 20),
  (0.0, 0.1, 300, 30, 30),
  (1.0, 1.0, 50, 5, 5),
  (1.0, 0.15, 55_400, 5_400, 10_800),
  (1.0, 0.03, 3, 1, 1),
]


@pytest.mark.parametrize("initial, final, total, t_i, t_f", CASES)
def test_cubic_equals_reference_at_every_step(initial, final, total, t_i, t_f):
  sched = schedules.cubic_schedule(initial, final, total, t_i, t_f)
  steps = np.arange(total + 5)  # a few steps past the end too
  got = np.asarray(jax.jit(sched)(jnp.asarray(steps)))
  want = np.array([reference_threshold(t, total, t_i, t_f, initial, final) for t in steps])
  np.testing.assert_allclose(got, want, rtol=0, atol=3e-7)
  # Boundaries are exact: dense warm-up, start of the cubic, end of the cubic, cool-down.
  assert got[t_i] == np.float32(initial) and got[0] == np.float32(initial)
  assert got[total - t_f] == np.float32(final)
  assert (got[total - t_f + 1 :] == np.float32(final)).all()
  # Scalar python-int steps work the same as arrays, and values are monotone.
  assert float(sched(t_i + 1)) == pytest.approx(float(got[t_i + 1]), rel=1e-6, abs=1e-7)
  diffs = np.diff(got)
  assert (diffs <= 0).all() if initial >= final else (diffs >= 0).all()


def test_cubic_matches_optax_polynomial():
  # platform_notes: the reference equals optax.polynomial_schedule with power 3.
  sched = schedules.cubic_schedule(1.0, 0.1, 1000, 100, 200)
  poly = optax.polynomial_schedule(1.0, 0.1, power=3, transition_steps=700, transition_begin=100)
  steps = jnp.arange(1001)
  np.testing.assert_allclose(sched(steps), poly(steps), atol=2e-7)


@pytest.mark.parametrize(
  "args, match",
  [
    ((1.0, 0.1, 30, 10, 20), r"total_steps=30 must exceed initial_warmup \+ final_warmup"),
    ((1.0, 0.1, 10, 20, 0), "must exceed"),
    ((1.0, 0.1, 100, -1, 0), "initial_warmup=-1"),
    ((1.0, 0.1, 100, 1.5, 0), "initial_warmup=1.5"),
    ((1.0, 0.1, 10.5, 1, 0), "total_steps=10.5"),
    ((float("nan"), 0.1, 100, 1, 1), "initial=nan"),
  ],
)
def test_cubic_rejects_bad_arguments(args, match):
  with pytest.raises(ValueError, match=match):
    schedules.cubic_schedule(*args)


def test_lambda_schedule_soft_and_l0():
  level = schedules.cubic_schedule(0.0, 0.1, 300, 30, 30)
  lam = schedules.lambda_schedule(400.0, level, 0.1)
  steps = np.arange(301)
  want = [400.0 * reference_threshold(t, 300, 30, 30, 0.0, 0.1) / 0.1 for t in steps]
  np.testing.assert_allclose(np.asarray(lam(jnp.asarray(steps))), want, rtol=1e-6, atol=1e-4)
  assert float(lam(0)) == 0.0 and float(lam(30)) == 0.0
  assert float(lam(280)) == pytest.approx(400.0)
  # soft MvP: lambda_f (1 - (1-p)^3) during pruning.
  p = (100 - 30) / 240
  assert float(lam(100)) == pytest.approx(400.0 * (1 - (1 - p) ** 3), rel=1e-5)
  l0 = schedules.lambda_schedule(125.0, schedules.cubic_schedule(1.0, 1.0, 100, 10, 10), 1.0)
  assert np.allclose(np.asarray(l0(jnp.arange(101))), 125.0)


def test_lambda_schedule_zero_final_level():
  level = schedules.cubic_schedule(1.0, 0.0, 100, 10, 10)
  with pytest.raises(ValueError, match="final_level=0"):
    schedules.lambda_schedule(10.0, level, 0.0)
  zero = schedules.lambda_schedule(0.0, level, 0.0)
  assert float(zero(50)) == 0.0

"""Level and regularisation-weight schedules as optax schedules (spec §2).

Warm-ups are in optimizer STEPS: the reference multiplies its `initial_warmup`/`final_warmup`
factors by the LR warm-up length; callers do that multiplication before calling here.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import optax


def _check_steps(name: str, value) -> int:
  if isinstance(value, bool) or not float(value).is_integer() or value < 0:
    raise ValueError(f"{name}={value!r} must be a non-negative integer number of steps")
  return int(value)


def cubic_schedule(
  initial: float, final: float, total_steps: int, initial_warmup: int, final_warmup: int
) -> optax.Schedule:
  """The reference cubic level schedule with a dense warm-up and a final cool-down.

  With t the step, t_i = initial_warmup, t_f = final_warmup, T = total_steps:
  ``t <= t_i``: initial; ``t > T - t_f``: final; otherwise
  ``final + (initial - final) * (1 - p)**3`` with ``p = (t - t_i) / (T - t_i - t_f)``.

  Args:
    initial: level at the start (keep fraction 1.0 for topk/magnitude, tau 0 for soft).
    final: level after ``T - t_f``.
    total_steps: T, number of optimizer steps.
    initial_warmup: t_i in steps.
    final_warmup: t_f in steps.

  Returns:
    step ([] int) -> [] float32.

  Raises:
    ValueError: non-integer/negative step counts, non-finite levels, or ``T <= t_i + t_f``
      (the reference divides by zero or runs backwards there).
  """
  total = _check_steps("total_steps", total_steps)
  t_i = _check_steps("initial_warmup", initial_warmup)
  t_f = _check_steps("final_warmup", final_warmup)
  for name, value in (("initial", initial), ("final", final)):
    if not math.isfinite(float(value)):
      raise ValueError(f"cubic_schedule: {name}={value!r} must be finite")
  span = total - t_i - t_f
  if span <= 0:
    raise ValueError(
      f"cubic_schedule: total_steps={total} must exceed initial_warmup + final_warmup = "
      f"{t_i} + {t_f}; shorten the warm-ups or train longer"
    )
  initial, final = float(initial), float(final)

  def schedule(step):
    t = jnp.asarray(step)
    # float32 is exact for step counts below 2**24.
    p = (t.astype(jnp.float32) - t_i) / span
    cubic = final + (initial - final) * (1.0 - p) ** 3
    value = jnp.where(t <= t_i, initial, jnp.where(t > total - t_f, final, cubic))
    return value.astype(jnp.float32)

  return schedule


def lambda_schedule(
  final_lambda: float, level_schedule: optax.Schedule, final_level: float
) -> optax.Schedule:
  """Regulariser weight ``lambda(t) = final_lambda * level(t) / final_level`` (spec §2).

  Soft movement (tau 0 -> 0.1) ramps lambda from 0 to final_lambda; L0 (level 1 -> 1) holds it.

  Args:
    final_lambda: lambda at the end.
    level_schedule: the level schedule (e.g. from `cubic_schedule`).
    final_level: its final value.

  Returns:
    step -> [] float32. Constant 0 when final_lambda == 0 (whatever final_level is).

  Raises:
    ValueError: final_level == 0 with final_lambda != 0 (the ratio is undefined; use a
      non-zero final level, or your own schedule).
  """
  final_lambda = float(final_lambda)
  final_level = float(final_level)
  if final_lambda == 0.0:
    return lambda step: jnp.zeros((), jnp.float32)
  if final_level == 0.0:
    raise ValueError(
      f"lambda_schedule: final_level=0 makes final_lambda * level(t) / final_level undefined "
      f"(final_lambda={final_lambda}); the reference needs a non-zero final threshold"
    )
  scale = final_lambda / final_level

  def schedule(step):
    return (scale * jnp.asarray(level_schedule(step), jnp.float32)).astype(jnp.float32)

  return schedule

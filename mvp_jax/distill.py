"""Knowledge-distillation losses of the reference scripts (spec §3.2).

``KD = T^2 * KL(softmax(z_t / T) || softmax(z_s / T))`` averaged over the batch (PyTorch's
``kl_div(log_softmax(z_s/T), softmax(z_t/T), reduction="batchmean") * T**2``), and
``loss = alpha_distil * KD + alpha_ce * task_loss``. The teacher is a dense fine-tuned model run
without dropout; its logits never receive gradients here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def validate_kd_config(alpha_ce: float, alpha_distil: float, temperature: float) -> None:
  """Raises ``ValueError`` for settings the reference script rejects (or that make no sense).

  >>> validate_kd_config(alpha_ce=0.1, alpha_distil=0.9, temperature=2.0)
  """
  if alpha_ce < 0 or alpha_distil < 0:
    raise ValueError(f"alpha_ce ({alpha_ce}) and alpha_distil ({alpha_distil}) must be >= 0")
  if alpha_distil <= 0:
    raise ValueError(
        f"alpha_distil must be > 0 when distilling from a teacher, got {alpha_distil} "
        "(disable the teacher instead)"
    )
  if alpha_ce + alpha_distil <= 0:
    raise ValueError("alpha_ce + alpha_distil must be > 0")
  if not temperature > 0:
    raise ValueError(f"the distillation temperature must be > 0, got {temperature}")


def _weighted_mean(per_example: jax.Array, weights: jax.Array | None) -> jax.Array:
  if weights is None:
    return jnp.mean(per_example)
  weights = jnp.asarray(weights, jnp.float32)
  if weights.shape != per_example.shape:
    raise ValueError(f"weights {weights.shape} must have the batch shape {per_example.shape}")
  total = jnp.sum(weights)
  # An all-padding batch (total 0) contributes 0 rather than NaN.
  return jnp.where(total > 0, jnp.sum(weights * per_example) / jnp.maximum(total, 1e-12), 0.0)


def kd_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    temperature: float,
    weights: jax.Array | None = None,
) -> jax.Array:
  """``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, averaged over the batch.

  Args:
    student_logits: [B, C] (any float dtype; computed in float32).
    teacher_logits: [B, C]; treated as constants (``stop_gradient``).
    temperature: T > 0.
    weights: optional [B] float32 example weights (0 for padding rows): the mean becomes
      ``sum(w * KL) / sum(w)``. None is PyTorch's ``batchmean`` (sum over classes, mean over B).

  Returns:
    [] float32.

  >>> z = jnp.array([[1.0, 2.0, 3.0]])
  >>> float(kd_loss(z, z, 2.0))
  0.0
  >>> float(kd_loss(jnp.zeros((2, 1)), jnp.ones((2, 1)), 2.0))  # regression head: always 0
  0.0
  """
  if student_logits.shape != teacher_logits.shape:
    raise ValueError(
        f"student logits {student_logits.shape} and teacher logits {teacher_logits.shape} differ"
    )
  t = jnp.asarray(temperature, jnp.float32)
  log_p_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t, axis=-1)
  log_p_t = jax.nn.log_softmax(
      jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / t, axis=-1)
  # exp(log_p_t) * (log_p_t - log_p_s): a teacher probability that underflows to 0 contributes 0,
  # as torch's xlogy-based kl_div does.
  per_example = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
  return (t**2) * _weighted_mean(per_example, weights)


def qa_kd_loss(
    student: tuple[jax.Array, jax.Array],
    teacher: tuple[jax.Array, jax.Array],
    temperature: float,
    weights: jax.Array | None = None,
) -> jax.Array:
  """SQuAD distillation: the mean of the start and end KD, over all sequence positions.

  Padding positions are not masked out of the softmax, as in the reference.

  Args:
    student: (start_logits [B, L], end_logits [B, L]).
    teacher: (start_logits [B, L], end_logits [B, L]).
    temperature: T > 0.
    weights: optional [B] example weights.

  Returns:
    [] float32 ``(KD_start + KD_end) / 2``.
  """
  start = kd_loss(student[0], teacher[0], temperature, weights)
  end = kd_loss(student[1], teacher[1], temperature, weights)
  return (start + end) / 2.0


def combine(
    task_loss: jax.Array, kd: jax.Array, alpha_ce: float, alpha_distil: float
) -> jax.Array:
  """``alpha_distil * kd + alpha_ce * task_loss`` (the regulariser is added by the caller).

  >>> round(float(combine(jnp.array(2.0), jnp.array(1.0), alpha_ce=0.1, alpha_distil=0.9)), 6)
  1.1
  """
  return alpha_distil * kd + alpha_ce * task_loss

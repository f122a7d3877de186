"""Validation and derived values of a run config (the ml_collections tree of `configs/`).

Everything here runs before any model is loaded or compiled, so a bad value stops the run in a
second with a message naming the field and the fix.
"""

from __future__ import annotations

import json
import math
from typing import Any

import ml_collections

from mvp_jax import pruning
from mvp_jax.errors import UserError

METHODS = ("none", "topk", "magnitude", "sigmoid_threshold", "l0")
SOURCES = ("offline_movies", "offline_trec", "glue", "squad", "files")
DTYPES = ("float32", "bfloat16")
MESH_RULES = ("data_parallel", "tensor_parallel")

# Fields that may differ when a run is resumed: they do not change what is computed.
RESUMABLE_FIELDS = (
  "pruning.stack_search",
  "train.eval_every_steps",
  "train.log_every_steps",
  "train.log_mask_churn",
  "train.checkpoint_every_steps",
  "train.keep_checkpoints",
  "train.progress_bar",
  "train.reuse_host_memory",
  "train.allow_config_change",
  "train.export",
  "train.report",
  "data.cache_dir",
  "distributed.coordinator_address",
  "distributed.num_processes",
  "distributed.process_id",
)


def _fail(field: str, problem: str, fix: str) -> None:
  raise UserError(f"config.{field}: {problem}. {fix}")


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks every value a user can get wrong; raises `UserError` naming field and fix."""
  p, o, t, d, dist = config.pruning, config.optim, config.train, config.data, config.distill
  if p.method not in METHODS:
    _fail("pruning.method", f"unknown method {p.method!r}", f"Use one of {METHODS}.")
  if p.scope not in ("local", "global"):
    _fail("pruning.scope", f"unknown scope {p.scope!r}", "Use 'local' or 'global'.")
  if p.scope == "global" and p.method in ("sigmoid_threshold", "l0"):
    _fail("pruning.scope", f"'global' has no meaning for {p.method!r} (one threshold already "
          "spans all matrices)", "Use scope='local'.")
  for name in ("initial_level", "final_level"):
    v = p[name]
    if not 0.0 <= v <= 1.0:
      _fail(f"pruning.{name}", f"{v} is outside [0, 1]",
            "It is a keep fraction (topk, magnitude) or a sigmoid cut-off (soft movement).")
  if p.method in ("topk", "magnitude") and p.final_level > p.initial_level:
    _fail("pruning.final_level", f"{p.final_level} is above initial_level={p.initial_level}: "
          f"{p.method} keeps a fraction that must shrink", "Use final_level <= initial_level.")
  if p.method in ("sigmoid_threshold", "l0") and p.final_lambda < 0:
    _fail("pruning.final_lambda", f"{p.final_lambda} is negative", "Use a value >= 0.")
  if p.method == "sigmoid_threshold" and p.final_lambda > 0 and p.final_level == 0:
    _fail("pruning.final_level", "lambda follows level/final_level, so final_level must be > 0 "
          "when final_lambda > 0", "Use the reference's 0.1.")
  if p.initial_warmup < 0 or p.final_warmup < 0:
    _fail("pruning.initial_warmup", "warm-ups must be >= 0", "Use whole multiples of warmup_steps.")
  if not isinstance(p.get("stack_search", False), bool):
    _fail("pruning.stack_search", f"{p.stack_search!r} is not a boolean", "Use True or False.")
  if p.score_init not in ("constant", "uniform", "kaiming"):
    _fail("pruning.score_init", f"unknown init {p.score_init!r}",
          "Use 'constant', 'uniform' or 'kaiming'.")
  for name in ("learning_rate", "score_learning_rate", "adam_eps", "max_grad_norm"):
    if not o[name] > 0:
      _fail(f"optim.{name}", f"{o[name]} must be > 0", "Give a positive number.")
  if o.weight_decay < 0:
    _fail("optim.weight_decay", f"{o.weight_decay} is negative", "Use a value >= 0.")
  if o.warmup_steps < 0:
    _fail("optim.warmup_steps", f"{o.warmup_steps} is negative", "Use a value >= 0.")
  if o.grad_accum_steps < 1:
    _fail("optim.grad_accum_steps", f"{o.grad_accum_steps} must be >= 1", "Use 1 for none.")
  if t.batch_size < 1 or t.eval_batch_size < 1:
    _fail("train.batch_size", "batch sizes must be >= 1", "Give a positive batch size.")
  if t.max_steps < 0 or t.num_epochs < 0:
    _fail("train.max_steps", "max_steps and num_epochs must be >= 0", "Give a positive length.")
  if t.max_steps == 0 and t.num_epochs == 0:
    _fail("train.max_steps", "both max_steps and num_epochs are 0", "Set one of them.")
  for name in ("eval_every_steps", "log_every_steps", "checkpoint_every_steps"):
    if t[name] < 0:
      _fail(f"train.{name}", f"{t[name]} is negative", "Use 0 to disable or a positive period.")
  if t.keep_checkpoints < 1:
    _fail("train.keep_checkpoints", f"{t.keep_checkpoints} must be >= 1", "Keep at least one.")
  if d.source not in SOURCES:
    _fail("data.source", f"unknown source {d.source!r}", f"Use one of {SOURCES}.")
  if d.max_seq_length != 0 and not 8 <= d.max_seq_length <= 512:
    _fail("data.max_seq_length", f"{d.max_seq_length} is outside [8, 512]",
          "BERT's position table has 512 entries (0 = the task's default).")
  if config.model.dtype not in DTYPES:
    _fail("model.dtype", f"unknown dtype {config.model.dtype!r}", f"Use one of {DTYPES}.")
  if dist.teacher:
    if not dist.alpha_distil > 0:
      _fail("distill.alpha_distil", "must be > 0 when a teacher is given", "Use e.g. 0.9.")
    if dist.alpha_ce < 0 or dist.alpha_ce + dist.alpha_distil <= 0:
      _fail("distill.alpha_ce", "alpha_ce must be >= 0 and alpha_ce + alpha_distil > 0",
            "Use e.g. alpha_ce=0.1, alpha_distil=0.9.")
    if not dist.temperature > 0:
      _fail("distill.temperature", f"{dist.temperature} must be > 0", "Use e.g. 2.0.")
  if config.mesh.rules not in MESH_RULES:
    _fail("mesh.rules", f"unknown rules {config.mesh.rules!r}", f"Use one of {MESH_RULES}.")
  if len(tuple(config.mesh.shape)) != 2:
    _fail("mesh.shape", f"{tuple(config.mesh.shape)} is not (data, model)", "Use e.g. (-1, 1).")


def total_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> int:
  """Optimizer steps of the run: `max_steps`, or epochs over full (micro-batch x accum) batches."""
  t = config.train
  if t.max_steps > 0:
    return int(t.max_steps)
  per_step = t.batch_size * config.optim.grad_accum_steps
  steps_per_epoch = num_train_examples // per_step
  if steps_per_epoch == 0:
    raise UserError(f"config.train.batch_size: the training set has {num_train_examples} examples, "
                    f"fewer than one optimizer step's {per_step}. Lower the batch size.")
  return max(1, int(math.floor(steps_per_epoch * t.num_epochs)))


def pruning_window(config: ml_collections.ConfigDict, steps: int) -> tuple[int, int]:
  """(t_i, t_f): the dense warm-up and final cool-down in optimizer steps; validated vs `steps`."""
  p, w = config.pruning, config.optim.warmup_steps
  t_i, t_f = int(p.initial_warmup * w), int(p.final_warmup * w)
  if p.method in ("topk", "magnitude", "sigmoid_threshold") and t_i + t_f >= steps:
    raise UserError(
      f"config.pruning: the schedule is longer than the run: initial_warmup*warmup_steps={t_i} + "
      f"final_warmup*warmup_steps={t_f} >= {steps} steps, leaving no step to prune. Train longer "
      "(train.max_steps / num_epochs) or shorten optim.warmup_steps or the warm-ups.")
  return t_i, t_f


def to_json(config: ml_collections.ConfigDict) -> str:
  """The resolved config as stable, sorted JSON (tuples as lists)."""
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = list(v) if isinstance(v, tuple) else v
  return out


def config_differences(saved: dict[str, Any], config: ml_collections.ConfigDict) -> list[str]:
  """Fields (dotted) whose values differ between a saved config dict and `config`, except those
  in RESUMABLE_FIELDS."""
  a = _flatten(saved)
  b = _flatten(json.loads(to_json(config)))
  keys = sorted(set(a) | set(b))
  missing = "<absent>"
  return [k for k in keys if k not in RESUMABLE_FIELDS and a.get(k, missing) != b.get(k, missing)]


def pruning_spec(config: ml_collections.ConfigDict) -> pruning.PruningSpec | None:
  """The PruningSpec of a config (None for dense fine-tuning, method "none")."""
  p = config.pruning
  if p.method == "none":
    return None
  return pruning.PruningSpec(method=p.method, scope=p.scope, include=tuple(p.include),
                             exclude=tuple(p.exclude), score_init=p.score_init,
                             score_scale=float(p.score_scale),
                             stack_search=bool(p.get("stack_search", False)))


def eval_level(config: ml_collections.ConfigDict) -> float:
  """The level of evaluation and export: always the final one (reference behaviour)."""
  return 1.0 if config.pruning.method in ("l0", "none") else float(config.pruning.final_level)

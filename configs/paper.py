"""Shared builder of the paper-faithful BERT-base configs (spec §4.2; the paper's hyper-parameter
sheet). Not a config file itself: `squad.py`, `mnli.py` and `qqp.py` call `build()`.

The config argument picks the method and distillation, e.g. `configs/squad.py:topk`,
`configs/mnli.py:soft,distil`, `configs/qqp.py:dense` (the dense teacher run). Methods:
dense, magnitude, topk (movement), soft (soft movement), l0.
"""

from __future__ import annotations

import ml_collections

from configs import default

METHOD_NAMES = {"dense": "none", "magnitude": "magnitude", "topk": "topk",
                "soft": "sigmoid_threshold", "l0": "l0"}


def parse_arg(arg: str | None) -> tuple[str, bool]:
  """'soft,distil' -> ('soft', True). Raises ValueError on an unknown word."""
  words = [w for w in (arg or "topk").split(",") if w]
  method = words[0]
  if method not in METHOD_NAMES:
    raise ValueError(f"config argument {arg!r}: unknown method {method!r}; use one of "
                     f"{sorted(METHOD_NAMES)}, optionally followed by ',distil'")
  extra = set(words[1:])
  if extra - {"distil"}:
    raise ValueError(f"config argument {arg!r}: unknown option(s) {sorted(extra - {'distil'})}; "
                     "only 'distil' is known")
  return method, "distil" in extra


def build(task: str, arg: str | None, *, batch_size: int, warmup_steps: int, epochs: float,
          warmups: tuple[int, int], l0_warmups: tuple[int, int], l0_epochs: float,
          soft_lambda: float, l0_lambda: float, l0_score_lr: float,
          dense_epochs: float) -> ml_collections.ConfigDict:
  """The common part: BERT-base uncased from the Hub, the reference optimizer and schedule."""
  method, distil = parse_arg(arg)
  c = default.get_config()
  c.model.name_or_path = "bert-base-uncased"  # Hub id (needs network), or a local copy.
  c.train.batch_size = batch_size  # Per step, as one V100 in the paper.
  c.train.max_steps = 0  # Derived from num_epochs.
  c.train.num_epochs = epochs
  c.train.eval_every_steps = 0
  c.train.checkpoint_every_steps = 1000
  c.train.log_every_steps = 50
  c.train.eval_batch_size = 128
  c.optim.learning_rate = 3e-5
  c.optim.warmup_steps = warmup_steps
  c.optim.score_learning_rate = 1e-2
  c.pruning.initial_warmup, c.pruning.final_warmup = warmups
  c.pruning.method = METHOD_NAMES[method]
  c.pruning.final_level = 0.10  # 10% of encoder weights; 0.03 for the paper's 3% rows.
  if method == "dense":
    c.train.num_epochs = dense_epochs
    c.pruning.final_level = 1.0
  elif method == "soft":
    c.pruning.initial_level = 0.0  # tau: 0 -> 0.1; sparsity is set by final_lambda.
    c.pruning.final_level = 0.1
    c.pruning.final_lambda = soft_lambda
  elif method == "l0":
    c.pruning.initial_level = c.pruning.final_level = 1.0  # unused by L0
    c.pruning.final_lambda = l0_lambda
    c.pruning.score_scale = 2.197  # sigmoid(S0) = 0.9
    c.optim.score_learning_rate = l0_score_lr
    c.pruning.initial_warmup, c.pruning.final_warmup = l0_warmups
    c.train.num_epochs = l0_epochs
  if distil:
    # A dense fine-tuned teacher: by default the export of this file's 'dense' run.
    c.distill.teacher = f"runs/{task}_dense/export"
    c.distill.alpha_ce = 0.1
    c.distill.alpha_distil = 0.9
    c.distill.temperature = 2.0
  return c

"""mvp_jax: movement pruning (Sanh, Wolf & Rush, NeurIPS 2020) for JAX/Flax.

The public API is exactly what this file lists.

>>> import jax, mvp_jax as mvp
>>> spec = mvp.PruningSpec(method="topk", include=(r"kernel$",))
>>> params = {"dense": {"kernel": jax.numpy.ones((4, 4)), "bias": jax.numpy.zeros(4)}}
>>> scores = mvp.init_scores(params, spec, jax.random.key(0))
>>> masked = mvp.apply_masks(params, scores, 0.25, spec)
>>> int((masked["dense"]["kernel"] != 0).sum())
4
"""

from mvp_jax.errors import UserError
from mvp_jax.models.bert import (
  BertConfig,
  BertForQuestionAnswering,
  BertForSequenceClassification,
  BertModel,
)
from mvp_jax.models.hf import load_pretrained
from mvp_jax.pruning import (
  DEFAULT_INCLUDE,
  PruningSpec,
  apply_masks,
  compute_masks,
  fold_masks,
  init_scores,
  mask_change,
  multiply_masks,
  remaining_weights,
  select_paths,
)
from mvp_jax.regularizers import expected_l0, l1_sigmoid, regularizer
from mvp_jax.schedules import cubic_schedule, lambda_schedule

__version__ = "0.1.0"

_LAZY = {"export_pretrained": "mvp_jax.export", "load_sparse": "mvp_jax.export",
         "save_sparse": "mvp_jax.export"}


def __getattr__(name: str):
  # Export is imported on first use, so `python -m mvp_jax.export` does not find it half-imported.
  if name in _LAZY:
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'mvp_jax' has no attribute {name!r}")

__all__ = [
  "DEFAULT_INCLUDE",
  "BertConfig",
  "BertForQuestionAnswering",
  "BertForSequenceClassification",
  "BertModel",
  "PruningSpec",
  "UserError",
  "apply_masks",
  "compute_masks",
  "cubic_schedule",
  "expected_l0",
  "export_pretrained",
  "fold_masks",
  "init_scores",
  "l1_sigmoid",
  "lambda_schedule",
  "load_pretrained",
  "load_sparse",
  "mask_change",
  "multiply_masks",
  "regularizer",
  "remaining_weights",
  "save_sparse",
  "select_paths",
]

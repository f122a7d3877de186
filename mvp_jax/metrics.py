"""Evaluation metrics: accuracy, F1, MCC, Pearson/Spearman, and the official SQuAD v1.1 EM/F1.

Classification metrics take class ids; GLUE-style values are fractions in [0, 1]. SQuAD EM/F1
follow the official v1.1 evaluation script and are percentages in [0, 100], as that script prints.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Iterable, Mapping, Sequence

import numpy as np


def accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
  """Fraction of exact matches. labels, preds: int [N]."""
  labels, preds = np.asarray(labels), np.asarray(preds)
  _check_same_length(labels, preds)
  return float(np.mean(labels == preds))


def f1(labels: np.ndarray, preds: np.ndarray, positive: int = 1) -> float:
  """Binary F1 of the positive class (MRPC, QQP). labels, preds: int [N]."""
  from sklearn.metrics import f1_score

  _check_same_length(labels, preds)
  return float(
    f1_score(
      np.asarray(labels), np.asarray(preds), pos_label=positive, average="binary", zero_division=0.0
    )
  )


def f1_macro(labels: np.ndarray, preds: np.ndarray) -> float:
  """Unweighted mean of the per-class F1 scores (multi-class tasks). labels, preds: int [N]."""
  from sklearn.metrics import f1_score

  _check_same_length(labels, preds)
  return float(f1_score(np.asarray(labels), np.asarray(preds), average="macro", zero_division=0.0))


def mcc(labels: np.ndarray, preds: np.ndarray) -> float:
  """Matthews correlation coefficient (CoLA); 0 when a prediction is constant."""
  from sklearn.metrics import matthews_corrcoef

  _check_same_length(labels, preds)
  return float(matthews_corrcoef(np.asarray(labels), np.asarray(preds)))


def _correlation(name: str, labels: np.ndarray, preds: np.ndarray) -> float:
  """scipy.stats.<name>(labels, preds) statistic; nan if either input is constant."""
  import scipy.stats

  _check_same_length(labels, preds)
  labels, preds = np.asarray(labels, np.float64), np.asarray(preds, np.float64)
  if np.ptp(labels) == 0 or np.ptp(preds) == 0:
    return float("nan")
  return float(getattr(scipy.stats, name)(labels, preds)[0])


def pearson(labels: np.ndarray, preds: np.ndarray) -> float:
  """Pearson correlation (STS-B). labels, preds: float [N]; nan if either is constant."""
  return _correlation("pearsonr", labels, preds)


def spearman(labels: np.ndarray, preds: np.ndarray) -> float:
  """Spearman rank correlation (STS-B). labels, preds: float [N]; nan if either is constant."""
  return _correlation("spearmanr", labels, preds)


# Which metrics each GLUE task reports (the GLUE leaderboard's choice).
GLUE_METRICS: dict[str, tuple[str, ...]] = {
  "cola": ("mcc",),
  "sst2": ("accuracy",),
  "mrpc": ("accuracy", "f1"),
  "qqp": ("accuracy", "f1"),
  "stsb": ("pearson", "spearmanr"),
  "mnli": ("accuracy",),
  "qnli": ("accuracy",),
  "rte": ("accuracy",),
  "wnli": ("accuracy",),
}

_FUNCS = {
  "accuracy": accuracy,
  "f1": f1,
  "f1_macro": f1_macro,
  "mcc": mcc,
  "pearson": pearson,
  "spearmanr": spearman,
}


def classification_metrics(
  names: Iterable[str], labels: np.ndarray, predictions: np.ndarray, regression: bool = False
) -> dict[str, float]:
  """Metrics by name from model outputs.

  Args:
    names: metric names among accuracy, f1, f1_macro, mcc, pearson, spearmanr.
    labels: int32 [N] class ids, or float32 [N] targets when ``regression``.
    predictions: logits float [N, C] (argmax taken), or for regression [N] / [N, 1] values.
    regression: treat predictions as values rather than logits.

  Returns:
    {name: value}.
  """
  predictions = np.asarray(predictions)
  if regression:
    preds = predictions.reshape(predictions.shape[0], -1)[:, 0]
  else:
    preds = predictions.argmax(-1) if predictions.ndim == 2 else predictions
  out = {}
  for n in names:
    if n not in _FUNCS:
      raise ValueError(f"unknown metric {n!r}; known: {sorted(_FUNCS)}")
    out[n] = _FUNCS[n](labels, preds)
  return out


def glue_metrics(task: str, labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
  """The metrics GLUE reports for ``task`` ('sst2', 'SST-2', ...); see classification_metrics."""
  key = task.lower().replace("-", "").replace("_", "")
  if key not in GLUE_METRICS:
    raise ValueError(f"unknown GLUE task {task!r}; known: {sorted(GLUE_METRICS)}")
  return classification_metrics(GLUE_METRICS[key], labels, predictions, regression=key == "stsb")


def _check_same_length(a: np.ndarray, b: np.ndarray) -> None:
  if len(a) != len(b):
    raise ValueError(f"labels and predictions differ in length: {len(a)} vs {len(b)}")
  if len(a) == 0:
    raise ValueError("no examples to score")


# --- SQuAD v1.1, as the official evaluate-v1.1.py computes it -----------------------------------

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
  """Official SQuAD v1.1 normalisation: lowercase, drop ASCII punctuation, drop the articles
  a/an/the (whole words), collapse whitespace. Unicode punctuation and accents are kept, as in
  the official script."""
  s = s.lower()
  s = "".join(ch for ch in s if ch not in _PUNCT)
  s = _ARTICLES.sub(" ", s)
  return " ".join(s.split())


def squad_exact_match(prediction: str, ground_truth: str) -> float:
  """1.0 if the normalised strings are equal, else 0.0."""
  return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def squad_f1(prediction: str, ground_truth: str) -> float:
  """Token-level F1 between the normalised strings (bag of whitespace tokens)."""
  pred_tokens = normalize_answer(prediction).split()
  gold_tokens = normalize_answer(ground_truth).split()
  common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
  num_same = sum(common.values())
  if num_same == 0:
    return 0.0
  precision = num_same / len(pred_tokens)
  recall = num_same / len(gold_tokens)
  return 2 * precision * recall / (precision + recall)


def squad_metrics(
  predictions: Mapping[str, str], gold_answers: Mapping[str, Sequence[str]]
) -> dict[str, float]:
  """Official SQuAD v1.1 EM and F1 (percent), each the max over an example's gold answers.

  Args:
    predictions: question id -> predicted answer text.
    gold_answers: question id -> its gold answer texts (one or more).

  Returns:
    {"exact_match": float, "f1": float} over all questions in ``gold_answers``; a question with
    no prediction scores 0 (the official script does the same and prints a message).
  """
  if not gold_answers:
    raise ValueError("no questions to score")
  em = f1_total = 0.0
  for qid, golds in gold_answers.items():
    if not golds:
      raise ValueError(f"question {qid!r} has no gold answers")
    if qid not in predictions:
      continue
    pred = predictions[qid]
    em += max(squad_exact_match(pred, g) for g in golds)
    f1_total += max(squad_f1(pred, g) for g in golds)
  n = len(gold_answers)
  return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1_total / n}

"""Metrics against hand-computed values, and the official SQuAD v1.1 normalisation."""

import math

import numpy as np
import pytest

from mvp_jax import metrics


def test_accuracy_f1_mcc_known_values():
  y = np.array([1, 1, 1, 0, 0, 0, 1, 0])
  p = np.array([1, 1, 0, 0, 0, 1, 1, 1])
  assert metrics.accuracy(y, p) == 5 / 8
  # tp=3, fp=2, fn=1 -> precision 3/5, recall 3/4, f1 = 2/3
  assert metrics.f1(y, p) == pytest.approx(2 * 0.6 * 0.75 / 1.35)
  # mcc = (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)), tn=2
  expected = (3 * 2 - 2 * 1) / math.sqrt(5 * 4 * 4 * 3)
  assert metrics.mcc(y, p) == pytest.approx(expected)
  assert metrics.mcc(y, np.ones_like(y)) == 0.0  # constant prediction


def test_f1_macro_known_value():
  y = np.array([0, 0, 1, 2])
  p = np.array([0, 1, 1, 2])
  # class 0: p=1 r=.5 f=2/3; class 1: p=.5 r=1 f=2/3; class 2: 1
  assert metrics.f1_macro(y, p) == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)


def test_pearson_spearman_known_values():
  y = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
  p = np.array([2.0, 4.0, 6.0, 8.0, 10.0]) ** 2  # monotone, not linear
  assert metrics.spearman(y, p) == pytest.approx(1.0)
  assert metrics.pearson(y, p) == pytest.approx(np.corrcoef(y, p)[0, 1])
  assert metrics.pearson(y, -y) == pytest.approx(-1.0)
  assert math.isnan(metrics.pearson(y, np.ones(5)))


def test_glue_metric_names_per_task():
  logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
  labels = np.array([1, 0, 0])
  assert set(metrics.glue_metrics("CoLA", labels, logits)) == {"mcc"}
  assert metrics.glue_metrics("SST-2", labels, logits) == {"accuracy": pytest.approx(2 / 3)}
  assert set(metrics.glue_metrics("mrpc", labels, logits)) == {"accuracy", "f1"}
  assert set(metrics.glue_metrics("QQP", labels, logits)) == {"accuracy", "f1"}
  for t in ("mnli", "qnli", "rte", "wnli"):
    assert set(metrics.glue_metrics(t, labels, logits)) == {"accuracy"}
  sts = metrics.glue_metrics("STS-B", np.array([0.0, 2.5, 5.0]), np.array([[0.5], [2.0], [4.0]]))
  assert set(sts) == {"pearson", "spearmanr"} and sts["spearmanr"] == pytest.approx(1.0)
  with pytest.raises(ValueError, match="unknown GLUE task"):
    metrics.glue_metrics("squad", labels, logits)


def test_length_mismatch_is_an_error():
  with pytest.raises(ValueError, match="differ in length"):
    metrics.accuracy(np.array([1, 0]), np.array([1]))


@pytest.mark.parametrize(
  "pred, gold, em",
  [
    ("The Eiffel Tower", "Eiffel Tower", 1.0),  # leading article
    ("an apple", "apple", 1.0),
    ("A", "", 1.0),  # the article alone normalises to empty
    ("theater", "ater", 0.0),  # 'the' inside a word stays
    ("the  Denver   Broncos.", "denver broncos", 1.0),  # case, whitespace, ASCII punctuation
    ("U.S.", "US", 1.0),
    ("$1,000", "1000", 1.0),
    ("rock—and—roll", "rockandroll", 0.0),  # unicode dash is not string.punctuation
    ("café", "cafe", 0.0),  # accents are kept by the official script
    ("«Paris»", "paris", 0.0),  # so are unicode quotes
    ("Anne", "Anne", 1.0),  # 'an' only as a whole word
    ("the the a", "", 1.0),
  ],
)
def test_squad_exact_match_tricky(pred, gold, em):
  assert metrics.squad_exact_match(pred, gold) == em


def test_squad_f1_and_several_golds():
  # pred tokens [cat, sat]; gold [cat, sat, on, mat]: precision 1, recall 1/2
  assert metrics.squad_f1("the cat sat", "a cat sat on the mat") == pytest.approx(2 / 3)
  assert metrics.squad_f1("dog", "cat") == 0.0
  assert metrics.squad_f1("", "cat") == 0.0
  # repeated tokens count with multiplicity: common = min counts
  assert metrics.squad_f1("a b b", "b b b c") == pytest.approx(2 * 1 * 0.5 / 1.5)
  golds = {"q1": ["Denver Broncos", "The Broncos"], "q2": ["1990s", "the 1990s"], "q3": ["x"]}
  preds = {"q1": "Broncos", "q2": "1990s"}  # q3 has no prediction: scores 0
  out = metrics.squad_metrics(preds, golds)
  assert out["exact_match"] == pytest.approx(100 * 2 / 3)  # q1 matches 'The Broncos'
  assert out["f1"] == pytest.approx(100 * 2 / 3)

"""``build_task``: from a data config and a tokenizer to a Task (features + metrics).

Eval sets: every task has ``eval_sets`` (name -> features) and ``eval_features`` is the default
one (``eval_sets[default_eval_set]``). Single-dev tasks name theirs ``"dev"``; MNLI has
``"matched"`` (default) and ``"mismatched"``. ``compute_metrics(predictions, eval_set=None)``
scores predictions over one eval set's features, in order; metric keys carry no set name (the
caller prefixes them, e.g. ``mismatched/accuracy``).

Metrics: GLUE tasks report what GLUE reports (CoLA mcc; SST-2 accuracy; MRPC/QQP accuracy + f1;
STS-B pearson + spearmanr; MNLI/QNLI/RTE/WNLI accuracy) as fractions; other classification tasks
report accuracy and f1 (binary) or f1_macro (more classes); regression pearson + spearmanr;
SQuAD exact_match + f1 in percent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from mvp_jax import metrics
from mvp_jax.data import files, glue, offline, readers, squad
from mvp_jax.data.errors import DataError
from mvp_jax.data.examples import TextExamples
from mvp_jax.data.tokenization import SEQ_KEYS, encode_examples

SOURCES = ("offline_movies", "offline_trec", "glue", "squad", "files")


@dataclasses.dataclass
class Task:
  """Everything the trainer needs from the data side.

  Attributes:
    name: e.g. 'sst2', 'mnli', 'squad', 'offline_movies', or the files task name.
    kind: 'classification' | 'regression' | 'qa'.
    num_labels: classes (1 for regression, 2 for QA: start and end).
    label_names: id -> name for classification, else None. Store it with the run.
    train_features: input_ids/attention_mask/token_type_ids int32 [N, L] and labels [N] (int32,
      or float32 for regression) or start_positions/end_positions int32 [N].
    eval_features: the default eval set's features (same keys; QA: model inputs only).
    eval_sets: eval set name -> features.
    default_eval_set: the key of eval_features in eval_sets.
    metric_names: the metric keys compute_metrics returns.
    info: sizes and sources, for logs and reports.
    scorers: eval set name -> predictions -> metrics (use compute_metrics).
    qa: for QA, the post-processor (``qa.predict_text(start, end)`` gives answer texts by id).
  """

  name: str
  kind: str
  num_labels: int
  label_names: list[str] | None
  train_features: dict[str, np.ndarray]
  eval_features: dict[str, np.ndarray]
  eval_sets: dict[str, dict[str, np.ndarray]]
  default_eval_set: str
  metric_names: tuple[str, ...]
  info: dict[str, Any]
  scorers: dict[str, Callable[[Any], dict[str, float]]] = dataclasses.field(repr=False)
  qa: squad.SquadEval | None = dataclasses.field(default=None, repr=False)

  def compute_metrics(self, predictions: Any, eval_set: str | None = None) -> dict[str, float]:
    """Scores predictions over an eval set's features, in order.

    Args:
      predictions: logits float [N, C] (classification), values [N] or [N, 1] (regression), or
        (start_logits [N, L], end_logits [N, L]) for QA.
      eval_set: a key of eval_sets; None -> default_eval_set.

    Returns:
      {metric name: value}.
    """
    name = eval_set or self.default_eval_set
    if name not in self.scorers:
      raise KeyError(f"unknown eval set {name!r}; this task has {list(self.scorers)}")
    return self.scorers[name](predictions)

  def label_mapping(self) -> dict[str, Any]:
    """{'id2label': {id: name}, 'label2id': {name: id}} (empty for regression and QA)."""
    if not self.label_names:
      return {"id2label": {}, "label2id": {}}
    return {
      "id2label": dict(enumerate(self.label_names)),
      "label2id": {n: i for i, n in enumerate(self.label_names)},
    }


def _get(cfg: Any, key: str, default: Any = None) -> Any:
  value = getattr(cfg, key, default) if not isinstance(cfg, dict) else cfg.get(key, default)
  return default if value is None else value


def _label_names(value: Any) -> list[str] | None:
  if not value:
    return None
  if isinstance(value, str):
    return [s.strip() for s in value.split(",") if s.strip()]
  return [str(v) for v in value]


def _classifier_scorer(labels: np.ndarray, names: tuple[str, ...], regression: bool):
  n = len(labels)

  def score(predictions: Any) -> dict[str, float]:
    p = np.asarray(predictions)
    if p.shape[0] != n:
      raise ValueError(
        f"predictions have {p.shape[0]} rows, the eval set {n} (pass predictions "
        "for every eval feature, in order, without padding rows)."
      )
    return metrics.classification_metrics(names, labels, p, regression=regression)

  return score


def _text_task(
  name: str,
  train: TextExamples,
  evals: dict[str, TextExamples],
  label_names: list[str] | None,
  metric_names: tuple[str, ...],
  tokenizer: Any,
  cfg: Any,
) -> Task:
  regression = label_names is None
  max_len = int(_get(cfg, "max_seq_length", 0)) or 128
  cache_dir = _get(cfg, "cache_dir", "") or None
  train = train.head(int(_get(cfg, "max_train_examples", 0)))
  evals = {k: v.head(int(_get(cfg, "max_eval_examples", 0))) for k, v in evals.items()}
  train_f = encode_examples(train, tokenizer, max_len, regression, cache_dir, f"{name}-train")
  eval_sets = {
    k: encode_examples(v, tokenizer, max_len, regression, cache_dir, f"{name}-{k}")
    for k, v in evals.items()
  }
  scorers = {
    k: _classifier_scorer(f["labels"], metric_names, regression) for k, f in eval_sets.items()
  }
  default = next(iter(eval_sets))
  info = {
    "source": train.source,
    "num_train": len(train),
    "num_eval": {k: len(v) for k, v in evals.items()},
    "eval_sources": {k: v.source for k, v in evals.items()},
    "max_seq_length": max_len,
  }
  return Task(
    name=name,
    kind="regression" if regression else "classification",
    num_labels=1 if regression else len(label_names),
    label_names=label_names,
    train_features=train_f,
    eval_features=eval_sets[default],
    eval_sets=eval_sets,
    default_eval_set=default,
    metric_names=metric_names,
    info=info,
    scorers=scorers,
  )


def _default_metrics(label_names: list[str] | None) -> tuple[str, ...]:
  if label_names is None:
    return ("pearson", "spearmanr")
  return ("accuracy", "f1") if len(label_names) == 2 else ("accuracy", "f1_macro")


def _glue_task(cfg: Any, tokenizer: Any) -> Task:
  task = _get(cfg, "task", "")
  if not task:
    raise DataError("data.source='glue' needs data.task (e.g. 'sst2', 'MNLI').")
  spec = glue.get_spec(task)
  glue_dir = _get(cfg, "glue_dir", "")
  train_file, eval_file = _get(cfg, "train_file", ""), _get(cfg, "eval_file", "")
  if glue_dir:
    train, evals = glue.read_glue_local(glue_dir, task)
  elif train_file or eval_file:
    if not (train_file and eval_file):
      raise DataError("GLUE from local files needs both data.train_file and data.eval_file.")
    text_a = _hub_or(cfg, "text_column", "text", spec.hub_text_a)
    text_b = spec.hub_text_b and _hub_or(cfg, "text_pair_column", "", spec.hub_text_b)
    label = _get(cfg, "label_column", "") or "label"
    train = glue.table_to_examples(readers.read_table(train_file), spec, text_a, text_b, label)
    dev = glue.table_to_examples(readers.read_table(eval_file), spec, text_a, text_b, label)
    evals = {spec.eval_set_names[0]: dev}
  else:
    train, evals = glue.read_glue_hub(task)
  names = list(spec.label_names) if spec.label_names else None
  return _text_task(spec.key, train, evals, names, metrics.GLUE_METRICS[spec.key], tokenizer, cfg)


def _hub_or(cfg: Any, key: str, default: str, hub_name: str) -> str:
  """The configured column, unless it is the generic default: then the Hub's column name."""
  value = _get(cfg, key, "")
  return hub_name if value in ("", default) else value


def _squad_task(cfg: Any, tokenizer: Any) -> Task:
  train_file, eval_file = _get(cfg, "train_file", ""), _get(cfg, "eval_file", "")
  cache_dir = _get(cfg, "cache_dir", "") or None
  if train_file or eval_file:
    if not (train_file and eval_file):
      raise DataError("SQuAD from local files needs both data.train_file and data.eval_file.")
    train, dev = squad.read_squad_files(train_file), squad.read_squad_files(eval_file)
  else:
    train, dev = squad.read_squad_hub("train"), squad.read_squad_hub("validation")
  train = train.head(int(_get(cfg, "max_train_examples", 0)))
  dev = dev.head(int(_get(cfg, "max_eval_examples", 0)))
  kw = dict(
    max_seq_length=int(_get(cfg, "max_seq_length", 0)) or 384,
    doc_stride=int(_get(cfg, "doc_stride", 128)),
    max_query_length=int(_get(cfg, "max_query_length", 64)),
    cache_dir=cache_dir,
  )
  train_f = squad.prepare_features(train, tokenizer, True, name="squad-train", **kw)
  train_f.pop("example_index")
  eval_all = squad.prepare_features(dev, tokenizer, False, name="squad-dev", **kw)
  scorer = squad.SquadEval.from_features(dev, eval_all)
  n_best, max_answer = int(_get(cfg, "n_best_size", 20)), int(_get(cfg, "max_answer_length", 30))
  eval_f = {k: eval_all[k] for k in SEQ_KEYS}
  info = {
    "source": train.source,
    "eval_sources": {"dev": dev.source},
    "num_train": len(train),
    "num_train_features": len(train_f["input_ids"]),
    "num_eval": {"dev": len(dev)},
    "num_eval_features": {"dev": len(eval_f["input_ids"])},
    **kw,
  }
  info.pop("cache_dir")
  return Task(
    name="squad",
    kind="qa",
    num_labels=2,
    label_names=None,
    train_features=train_f,
    eval_features=eval_f,
    eval_sets={"dev": eval_f},
    default_eval_set="dev",
    metric_names=("exact_match", "f1"),
    info=info,
    scorers={"dev": lambda p: scorer.compute_metrics(p, n_best, max_answer)},
    qa=scorer,
  )


def build_task(data_config: Any, tokenizer: Any) -> Task:
  """Reads, tokenises (cached) and wraps a task as configured.

  Args:
    data_config: a ConfigDict (or dict / attribute object) with the fields of
      ``config.default_data_config()``.
    tokenizer: a fast tokenizer from ``tokenization.load_tokenizer``.

  Returns:
    The Task.
  """
  source = _get(data_config, "source", "")
  if source == "offline_movies":
    train, dev = offline.read_movies()
    names = list(offline.MOVIE_LABELS)
    return _text_task(
      source, train, {"dev": dev}, names, _default_metrics(names), tokenizer, data_config
    )
  if source == "offline_trec":
    train, dev = offline.read_trec()
    names = list(offline.TREC_LABELS)
    return _text_task(
      source, train, {"dev": dev}, names, _default_metrics(names), tokenizer, data_config
    )
  if source == "glue":
    return _glue_task(data_config, tokenizer)
  if source == "squad":
    return _squad_task(data_config, tokenizer)
  if source == "files":
    train, dev, names = files.read_text_files(
      _get(data_config, "train_file", ""),
      _get(data_config, "eval_file", ""),
      text_column=_get(data_config, "text_column", "text"),
      text_pair_column=_get(data_config, "text_pair_column", "") or None,
      label_column=_get(data_config, "label_column", "label"),
      label_names=_label_names(_get(data_config, "label_names", "")),
      task_kind=_get(data_config, "task_kind", "classification"),
    )
    name = _get(data_config, "task", "") or "files"
    return _text_task(
      name, train, {"dev": dev}, names, _default_metrics(names), tokenizer, data_config
    )
  raise DataError(f"unknown data.source {source!r}; use one of {list(SOURCES)}.")

"""GLUE: the nine tasks, read from a local folder in the GLUE-baseline layout or from the Hub.

Local layout (what ``download_glue_data.py`` writes): ``<glue_dir>/<TASK>/train.tsv`` and
``dev.tsv`` (MNLI: ``dev_matched.tsv`` and ``dev_mismatched.tsv``). ``glue_dir`` may also be the
task folder itself. Per-task quirks handled here:

* CoLA: no header; columns are source, label, original label, sentence.
* MRPC: a UTF-8 BOM; the label column is ``Quality``; texts are ``#1 String`` / ``#2 String``.
* STS-B: regression on ``score`` (0-5), read as float32.
* QQP: the train file has a few rows with missing fields; they are skipped (as the GLUE
  baseline's processor does) and the count is logged.
* All TSVs contain stray quote characters: read with QUOTE_NONE semantics (see readers.py).

Label ids follow the GLUE-baseline / transformers processors (the reference scripts), so a model
fine-tuned by the reference code agrees with ours: MNLI ``[contradiction, entailment, neutral]``,
QNLI/RTE ``[entailment, not_entailment]``, the others ``['0', '1']``. Hub datasets number MNLI
differently (entailment, neutral, contradiction); Hub ids are mapped by name. Numeric labels in
local CSV/JSON/Parquet files for a GLUE task are read as Hub ids for the name-labelled tasks.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Any

from mvp_jax.data import readers
from mvp_jax.data.errors import DataError
from mvp_jax.data.examples import (
  TextExamples,
  make_label_mapper,
  parse_float,
  parse_text,
)


@dataclasses.dataclass(frozen=True)
class GlueSpec:
  """How one GLUE task is stored and labelled.

  Attributes:
    key: normalised name ('sst2').
    folder: the task folder in the GLUE layout ('SST-2').
    hub_config: the config name in nyu-mll/glue.
    text_a, text_b, label: TSV column names (text_b None for single-sentence tasks).
    hub_text_a, hub_text_b: the Hub / Parquet column names.
    label_names: id -> name, None for regression (STS-B).
    hub_label_names: the Hub ClassLabel names, in Hub id order.
    eval_files: eval-set name -> dev file name.
    hub_eval_splits: eval-set name -> Hub split.
    headerless: column names for headerless files (CoLA), else None.
    skip_bad_rows: skip rows with a wrong field count (QQP) instead of raising.
  """

  key: str
  folder: str
  hub_config: str
  text_a: str
  text_b: str | None
  label: str
  hub_text_a: str
  hub_text_b: str | None
  label_names: tuple[str, ...] | None
  hub_label_names: tuple[str, ...] | None
  eval_files: tuple[tuple[str, str], ...] = (("dev", "dev.tsv"),)
  hub_eval_splits: tuple[tuple[str, str], ...] = (("dev", "validation"),)
  headerless: tuple[str, ...] | None = None
  skip_bad_rows: bool = False

  @property
  def regression(self) -> bool:
    return self.label_names is None

  @property
  def eval_set_names(self) -> tuple[str, ...]:
    return tuple(n for n, _ in self.eval_files)


_BIN = ("0", "1")
GLUE_TASKS: dict[str, GlueSpec] = {
  s.key: s
  for s in [
    GlueSpec(
      "cola",
      "CoLA",
      "cola",
      "sentence",
      None,
      "label",
      "sentence",
      None,
      _BIN,
      ("unacceptable", "acceptable"),
      headerless=("source", "label", "original_label", "sentence"),
    ),
    GlueSpec(
      "sst2",
      "SST-2",
      "sst2",
      "sentence",
      None,
      "label",
      "sentence",
      None,
      _BIN,
      ("negative", "positive"),
    ),
    GlueSpec(
      "mrpc",
      "MRPC",
      "mrpc",
      "#1 String",
      "#2 String",
      "Quality",
      "sentence1",
      "sentence2",
      _BIN,
      ("not_equivalent", "equivalent"),
    ),
    GlueSpec(
      "stsb",
      "STS-B",
      "stsb",
      "sentence1",
      "sentence2",
      "score",
      "sentence1",
      "sentence2",
      None,
      None,
    ),
    GlueSpec(
      "qqp",
      "QQP",
      "qqp",
      "question1",
      "question2",
      "is_duplicate",
      "question1",
      "question2",
      _BIN,
      ("not_duplicate", "duplicate"),
      skip_bad_rows=True,
    ),
    GlueSpec(
      "mnli",
      "MNLI",
      "mnli",
      "sentence1",
      "sentence2",
      "gold_label",
      "premise",
      "hypothesis",
      ("contradiction", "entailment", "neutral"),
      ("entailment", "neutral", "contradiction"),
      eval_files=(("matched", "dev_matched.tsv"), ("mismatched", "dev_mismatched.tsv")),
      hub_eval_splits=(("matched", "validation_matched"), ("mismatched", "validation_mismatched")),
    ),
    GlueSpec(
      "qnli",
      "QNLI",
      "qnli",
      "question",
      "sentence",
      "label",
      "question",
      "sentence",
      ("entailment", "not_entailment"),
      ("entailment", "not_entailment"),
    ),
    GlueSpec(
      "rte",
      "RTE",
      "rte",
      "sentence1",
      "sentence2",
      "label",
      "sentence1",
      "sentence2",
      ("entailment", "not_entailment"),
      ("entailment", "not_entailment"),
    ),
    GlueSpec(
      "wnli",
      "WNLI",
      "wnli",
      "sentence1",
      "sentence2",
      "label",
      "sentence1",
      "sentence2",
      _BIN,
      ("not_entailment", "entailment"),
    ),
  ]
}


def normalize_task_name(task: str) -> str:
  """'SST-2' / 'sst2' / 'STS_B' / 'MNLI' -> the key in GLUE_TASKS."""
  return task.strip().lower().replace("-", "").replace("_", "")


def get_spec(task: str) -> GlueSpec:
  """The spec of a GLUE task by any common spelling; DataError listing the tasks otherwise."""
  key = normalize_task_name(task)
  if key not in GLUE_TASKS:
    raise DataError(
      f"unknown GLUE task {task!r}; use one of {[s.folder for s in GLUE_TASKS.values()]}."
    )
  return GLUE_TASKS[key]


def _hub_alias(spec: GlueSpec):
  """Maps a Hub label (id or Hub name) to our label name."""

  def alias(value: Any) -> str | None:
    hub = spec.hub_label_names
    if hub is None or spec.label_names is None:
      return None
    name = str(value).strip()
    hub_name = None
    if name.lstrip("-").isdigit() and 0 <= int(name) < len(hub):
      hub_name = hub[int(name)]
    elif name in hub:
      hub_name = name
    if hub_name is None:
      return None
    if hub_name in spec.label_names:
      return hub_name
    return spec.label_names[hub.index(hub_name)]  # binary tasks: Hub id i is GLUE label 'i'

  return alias


def table_to_examples(
  table: readers.Table, spec: GlueSpec, text_a: str, text_b: str | None, label: str
) -> TextExamples:
  """Converts rows of a GLUE file (TSV or Hub-style CSV/JSON/Parquet) into TextExamples."""
  cols_a, cols_b = table.column(text_a), table.column(text_b) if text_b else None
  raw_labels = table.column(label)
  a, b, labels = [], [] if text_b else None, []
  mapper = None
  if not spec.regression:
    mapper = make_label_mapper(spec.label_names, table.path, label, alias=_hub_alias(spec))
  for i, line in enumerate(table.lines):
    a.append(parse_text(cols_a[i], table.path, line, text_a))
    if b is not None:
      b.append(parse_text(cols_b[i], table.path, line, text_b))
    if spec.regression:
      labels.append(parse_float(raw_labels[i], table.path, line, label))
    else:
      labels.append(mapper(raw_labels[i], line))
  return TextExamples(a, b, labels, source=str(table.path))


def task_folder(glue_dir: str | pathlib.Path, spec: GlueSpec) -> pathlib.Path:
  """``<glue_dir>/<TASK>`` (case-insensitive), or ``glue_dir`` itself if it holds the files."""
  root = pathlib.Path(glue_dir).expanduser()
  if not root.is_dir():
    raise DataError(
      f"{root}: GLUE folder not found. Set data.glue_dir to the folder holding "
      f"{spec.folder}/train.tsv (or leave it empty to use the Hub)."
    )
  for child in root.iterdir():
    if child.is_dir() and normalize_task_name(child.name) == spec.key:
      return child
  if any((root / f).is_file() for f in ["train.tsv", *[f for _, f in spec.eval_files]]):
    return root
  raise DataError(
    f"{root}: no {spec.folder}/ folder. Expected the GLUE layout "
    f"<glue_dir>/{spec.folder}/{{train,dev}}.tsv."
  )


def read_glue_file(path: str | pathlib.Path, task: str) -> TextExamples:
  """Reads one GLUE-layout TSV file (train.tsv, dev.tsv, dev_matched.tsv, ...) of ``task``."""
  spec = get_spec(task)
  path = pathlib.Path(path)
  table = readers.read_tsv(path, columns=spec.headerless, skip_bad_rows=spec.skip_bad_rows)
  if spec.skip_bad_rows:
    total = sum(1 for _ in readers.iter_tsv_lines(path)) - 1
    if total > len(table.rows):
      logging.warning(
        "%s: skipped %d malformed rows (as the GLUE baseline does).", path, total - len(table.rows)
      )
  return table_to_examples(table, spec, spec.text_a, spec.text_b, spec.label)


def read_glue_local(
  glue_dir: str | pathlib.Path, task: str
) -> tuple[TextExamples, dict[str, TextExamples]]:
  """Reads a task's train file and its eval sets from a local GLUE folder.

  Returns:
    (train examples, {eval set name: examples}); eval set names are 'dev', or 'matched' and
    'mismatched' for MNLI.
  """
  spec = get_spec(task)
  folder = task_folder(glue_dir, spec)
  train = read_glue_file(folder / "train.tsv", task)
  evals = {name: read_glue_file(folder / fname, task) for name, fname in spec.eval_files}
  return train, evals


def read_glue_hub(
  task: str, cache_dir: str | None = None
) -> tuple[TextExamples, dict[str, TextExamples]]:
  """Loads a task from the Hub (``nyu-mll/glue``); DataError with the fix when offline."""
  import datasets

  spec = get_spec(task)
  try:
    ds = datasets.load_dataset("nyu-mll/glue", spec.hub_config, cache_dir=cache_dir)
  except Exception as e:  # offline, no cache, Hub errors: all surface the same fix
    raise DataError(
      f"could not load glue/{spec.hub_config} from the Hugging Face Hub ({type(e).__name__}: "
      f"{e}). Offline? Set data.glue_dir to a local GLUE folder ({spec.folder}/train.tsv, ...) "
      "or data.train_file / data.eval_file to local files."
    ) from None

  def convert(split: str) -> TextExamples:
    d = ds[split]
    label_feature = d.features["label"]
    a = list(d[spec.hub_text_a])
    b = list(d[spec.hub_text_b]) if spec.hub_text_b else None
    raw = list(d["label"])
    if spec.regression:
      labels = [float(x) for x in raw]
    else:
      names = getattr(label_feature, "names", None) or spec.hub_label_names
      alias = _hub_alias(dataclasses.replace(spec, hub_label_names=tuple(names)))
      labels = [spec.label_names.index(alias(x)) for x in raw]
    return TextExamples(a, b, labels, source=f"hub:nyu-mll/glue/{spec.hub_config}/{split}")

  return convert("train"), {name: convert(split) for name, split in spec.hub_eval_splits}

"""Your own text: local CSV / TSV / JSON lines / JSON / Parquet files for sentence or
sentence-pair classification or regression.

Columns are chosen by the data config (``text_column``, ``text_pair_column``, ``label_column``).
Classification labels are mapped to ids through ``label_names``: given explicitly, or the sorted
distinct labels of the train file (numeric names sorted as numbers: '2' before '10'). The
mapping is returned with the examples, so the trainer can store it with the run. A label in the
eval file that the train file lacks is an error (name it in ``label_names`` if it is real).
TSV files are read with QUOTE_NONE semantics (like GLUE); CSV with standard quoting.
"""

from __future__ import annotations

from collections.abc import Sequence

from mvp_jax.data import readers
from mvp_jax.data.errors import DataError
from mvp_jax.data.examples import (
  TextExamples,
  infer_label_names,
  make_label_mapper,
  parse_float,
  parse_text,
)


def table_examples(
  table: readers.Table,
  text_column: str,
  text_pair_column: str | None,
  label_column: str,
  label_names: Sequence[str] | None,
  regression: bool,
) -> TextExamples:
  """Rows of one table as TextExamples (labels as ids, or floats when ``regression``)."""
  a_raw = table.column(text_column)
  b_raw = table.column(text_pair_column) if text_pair_column else None
  y_raw = table.column(label_column)
  mapper = None if regression else make_label_mapper(label_names, table.path, label_column)
  a, b, y = [], [] if b_raw is not None else None, []
  for i, line in enumerate(table.lines):
    a.append(parse_text(a_raw[i], table.path, line, text_column))
    if b is not None:
      b.append(parse_text(b_raw[i], table.path, line, text_pair_column))
    if regression:
      y.append(parse_float(y_raw[i], table.path, line, label_column))
    else:
      y.append(mapper(y_raw[i], line))
  return TextExamples(a, b, y, source=str(table.path))


def read_text_files(
  train_file: str,
  eval_file: str,
  text_column: str = "text",
  text_pair_column: str | None = None,
  label_column: str = "label",
  label_names: Sequence[str] | None = None,
  task_kind: str = "classification",
) -> tuple[TextExamples, TextExamples, list[str] | None]:
  """Reads a train and an eval file.

  Args:
    train_file, eval_file: paths (.csv, .tsv, .jsonl, .json, .parquet).
    text_column: the sentence column.
    text_pair_column: the second sentence column for pair tasks ('' or None: single sentence).
    label_column: the label column.
    label_names: id -> name; None or empty: the sorted labels of the train file.
    task_kind: 'classification' or 'regression'.

  Returns:
    (train, eval, label_names); label_names is None for regression.
  """
  if task_kind not in ("classification", "regression"):
    raise DataError(f"data.task_kind must be 'classification' or 'regression', got {task_kind!r}.")
  if not train_file or not eval_file:
    raise DataError("data.source='files' needs both data.train_file and data.eval_file.")
  regression = task_kind == "regression"
  train_table = readers.read_table(train_file)
  eval_table = readers.read_table(eval_file)
  names = None
  if not regression:
    if label_names:
      names = [str(n) for n in label_names]
      if len(set(names)) != len(names):
        raise DataError(f"data.label_names has duplicates: {names}.")
    else:
      names = infer_label_names(train_table.column(label_column))
    if len(names) < 2:
      raise DataError(
        f"{train_table.path}: column {label_column!r} has {len(names)} distinct label(s) "
        f"{names}; classification needs at least 2 (or set data.task_kind='regression')."
      )
  pair = text_pair_column or None
  train = table_examples(train_table, text_column, pair, label_column, names, regression)
  evals = table_examples(eval_table, text_column, pair, label_column, names, regression)
  return train, evals, names

"""Low-level readers for tabular text files (TSV, CSV, JSON lines, JSON, Parquet).

Every reader returns ``(header, rows, line_numbers)``-style records as a list of dicts plus the
1-based source line of each row, so callers can name the exact line in an error.

TSV files are read with ``csv.QUOTE_NONE`` semantics, as the GLUE baseline does: a line is one
row, split on tabs, quote characters are kept as text. (GLUE's TSVs contain unbalanced ``"``; a
quote-aware reader would merge rows.) A UTF-8 byte-order mark (MRPC) is removed.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any

from mvp_jax.data.errors import DataError, where


@dataclasses.dataclass
class Table:
  """Rows read from one file.

  Attributes:
    path: the file.
    columns: column names (from the header, or given for headerless files).
    rows: one dict per data row, column name -> value (str for TSV/CSV; any JSON value otherwise).
    lines: the 1-based line number of each row in the file (row index + 1 for Parquet).
  """

  path: pathlib.Path
  columns: list[str]
  rows: list[dict[str, Any]]
  lines: list[int]

  def column(self, name: str) -> list[Any]:
    """All values of one column; raises DataError naming the file and the columns it has."""
    if name not in self.columns:
      raise DataError(
        f"{where(self.path)}: no column {name!r}; the file has columns {self.columns}. "
        "Set the data config's text_column / text_pair_column / label_column to one of them."
      )
    return [r.get(name) for r in self.rows]


def check_file(path: str | pathlib.Path) -> pathlib.Path:
  """Returns ``path`` as a Path, raising DataError if it is missing or empty."""
  p = pathlib.Path(path).expanduser()
  if not p.is_file():
    raise DataError(
      f"{p}: file not found. Check the path in the data config (it is read as given)."
    )
  if p.stat().st_size == 0:
    raise DataError(f"{p}: the file is empty.")
  return p


def iter_tsv_lines(path: pathlib.Path) -> Iterator[tuple[int, list[str]]]:
  """Yields ``(line_number, fields)`` for each non-blank line, QUOTE_NONE semantics.

  Only ``\\n`` ends a line (a stray ``\\r`` inside a field does not split it); a trailing
  ``\\r`` is dropped, and so is a UTF-8 BOM.
  """
  with open(path, encoding="utf-8-sig", newline="\n") as f:
    for lineno, line in enumerate(f, 1):
      line = line.rstrip("\n").rstrip("\r")
      if not line.strip():
        continue
      yield lineno, line.split("\t")


def read_tsv(
  path: str | pathlib.Path,
  columns: Sequence[str] | None = None,
  skip_bad_rows: bool = False,
) -> Table:
  """Reads a tab-separated file with QUOTE_NONE semantics.

  Args:
    path: the file.
    columns: names for a headerless file (CoLA); None -> the first line is the header.
    skip_bad_rows: drop rows whose field count differs from the header's instead of raising
      (QQP's train file has a few such rows; the GLUE baseline skips them too).

  Returns:
    A Table; every value is a str.
  """
  p = check_file(path)
  header = list(columns) if columns is not None else None
  rows, lines = [], []
  for lineno, fields in iter_tsv_lines(p):
    if header is None:
      header = [h.strip() for h in fields]
      continue
    if len(fields) != len(header):
      if skip_bad_rows:
        continue
      raise DataError(
        f"{where(p, lineno)}: {len(fields)} tab-separated fields, expected {len(header)} "
        f"({header}). Is the file tab-separated with one row per line?"
      )
    rows.append(dict(zip(header, fields, strict=True)))
    lines.append(lineno)
  if header is None or not rows:
    raise DataError(f"{where(p)}: no data rows (only a header or blank lines).")
  return Table(p, header, rows, lines)


def read_csv(path: str | pathlib.Path) -> Table:
  """Reads a comma-separated file with a header (standard CSV quoting, as written by pandas)."""
  p = check_file(path)
  with open(p, encoding="utf-8-sig", newline="") as f:
    reader = csv.reader(f)
    try:
      header = next(reader)
    except StopIteration:
      raise DataError(f"{where(p)}: the file is empty.") from None
    except csv.Error as e:
      raise DataError(f"{where(p, reader.line_num)}: malformed CSV: {e}") from None
    header = [h.strip() for h in header]
    rows, lines = [], []
    while True:
      try:
        fields = next(reader)
      except StopIteration:
        break
      except csv.Error as e:
        raise DataError(f"{where(p, reader.line_num)}: malformed CSV: {e}") from None
      if not fields or not any(x.strip() for x in fields):
        continue
      if len(fields) != len(header):
        raise DataError(
          f"{where(p, reader.line_num)}: {len(fields)} fields, expected {len(header)} ({header}). "
          "Quote fields that contain commas."
        )
      rows.append(dict(zip(header, fields, strict=True)))
      lines.append(reader.line_num)
  if not rows:
    raise DataError(f"{where(p)}: no data rows (only a header).")
  return Table(p, header, rows, lines)


def _json_error(p: pathlib.Path, e: json.JSONDecodeError, line_offset: int = 0) -> DataError:
  return DataError(
    f"{where(p, e.lineno + line_offset)}, column {e.colno}: malformed JSON: {e.msg}."
  )


def read_json_records(path: str | pathlib.Path) -> Table:
  """Reads JSON lines (one object per line) or a JSON array of objects.

  Malformed JSON raises DataError with the line and column of the fault.
  """
  p = check_file(path)
  text = p.read_text(encoding="utf-8-sig")
  if not text.strip():
    raise DataError(f"{where(p)}: the file is empty.")
  rows, lines = [], []
  if text.lstrip().startswith("["):
    try:
      data = json.loads(text)
    except json.JSONDecodeError as e:
      raise _json_error(p, e) from None
    for i, r in enumerate(data):
      rows.append(r)
      lines.append(i + 1)  # element index + 1: a JSON array has no line per record
  else:
    for lineno, line in enumerate(text.split("\n"), 1):
      if not line.strip():
        continue
      try:
        r = json.loads(line)
      except json.JSONDecodeError as e:
        raise _json_error(p, e, line_offset=lineno - 1) from None
      rows.append(r)
      lines.append(lineno)
  for r, ln in zip(rows, lines, strict=True):
    if not isinstance(r, dict):
      raise DataError(f"{where(p, ln)}: expected a JSON object per record, got {type(r).__name__}.")
  if not rows:
    raise DataError(f"{where(p)}: no records.")
  columns = list(dict.fromkeys(k for r in rows for k in r))
  return Table(p, columns, rows, lines)


def read_parquet(path: str | pathlib.Path) -> Table:
  """Reads a Parquet file (through pyarrow, which `datasets` depends on)."""
  import pyarrow.parquet as pq

  p = check_file(path)
  try:
    table = pq.read_table(p)
  except Exception as e:  # pyarrow raises several types for corrupt files
    raise DataError(f"{where(p)}: cannot read Parquet: {e}") from None
  rows = table.to_pylist()
  if not rows:
    raise DataError(f"{where(p)}: no rows.")
  return Table(p, list(table.column_names), rows, list(range(1, len(rows) + 1)))


def read_table(path: str | pathlib.Path) -> Table:
  """Reads a file by its extension: .tsv, .csv, .jsonl/.json, .parquet."""
  p = pathlib.Path(path).expanduser()
  suffix = p.suffix.lower()
  if suffix == ".tsv":
    return read_tsv(p)
  if suffix == ".csv":
    return read_csv(p)
  if suffix in (".jsonl", ".json", ".ndjson"):
    return read_json_records(p)
  if suffix in (".parquet", ".pq"):
    return read_parquet(p)
  raise DataError(f"{p}: unknown file type {suffix!r}; use .tsv, .csv, .jsonl, .json or .parquet.")

"""Text examples before tokenisation, and label <-> id mapping."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

from mvp_jax.data.errors import DataError, where


@dataclasses.dataclass
class TextExamples:
  """Single sentences or sentence pairs with their labels.

  Attributes:
    text_a: first sentences, length N.
    text_b: second sentences (length N) for pair tasks, else None.
    labels: class ids (int) or regression targets (float), length N.
    source: where they came from (for messages and the cache key).
  """

  text_a: list[str]
  text_b: list[str] | None
  labels: list[int] | list[float]
  source: str = ""

  def __len__(self) -> int:
    return len(self.text_a)

  def head(self, n: int) -> TextExamples:
    """The first ``n`` examples (all of them when ``n <= 0``)."""
    if n <= 0 or n >= len(self):
      return self
    return TextExamples(
      self.text_a[:n],
      None if self.text_b is None else self.text_b[:n],
      self.labels[:n],
      self.source,
    )


def _natural_key(name: str) -> tuple[int, float | str]:
  """Sorts numeric label names numerically ('2' < '10'), others as strings, numbers first."""
  try:
    return (0, float(name))
  except ValueError:
    return (1, name)


def label_to_name(value: Any) -> str:
  """Canonical string form of a label value: 1 / 1.0 / '1' -> '1'; strings are stripped."""
  if isinstance(value, bool):
    return str(int(value))
  if isinstance(value, float) and value.is_integer():
    return str(int(value))
  return str(value).strip()


def infer_label_names(values: Sequence[Any]) -> list[str]:
  """Sorted distinct label names (numeric names sorted as numbers)."""
  names = {label_to_name(v) for v in values if v is not None and label_to_name(v) != ""}
  return sorted(names, key=_natural_key)


def make_label_mapper(
  label_names: Sequence[str],
  path: Any,
  column: str,
  alias: Callable[[Any], str | None] | None = None,
) -> Callable[[Any, int], int]:
  """Returns ``f(value, line) -> id`` mapping a label to its index in ``label_names``.

  Args:
    label_names: the id -> name list.
    path: the file, for messages.
    column: the label column, for messages.
    alias: optional hook mapping a raw value to a name when it is not a name itself (GLUE: Hub
      integer ids -> names).
  """
  index = {n: i for i, n in enumerate(label_names)}

  def f(value: Any, line: int) -> int:
    name = label_to_name(value) if value is not None else ""
    if name in index:
      return index[name]
    if alias is not None and name != "":
      other = alias(value)
      if other is not None and other in index:
        return index[other]
    raise DataError(
      f"{where(path, line, column)}: unknown label {name!r}; known labels: {list(label_names)}. "
      "Fix the row, or list every label in data.label_names."
    )

  return f


def parse_float(value: Any, path: Any, line: int, column: str) -> float:
  """Parses a regression target, raising DataError naming file, line and column."""
  try:
    x = float(value)
  except (TypeError, ValueError):
    raise DataError(
      f"{where(path, line, column)}: {value!r} is not a number; a regression label must be numeric."
    ) from None
  if not math.isfinite(x):
    raise DataError(f"{where(path, line, column)}: label {value!r} is not finite.")
  return x


def parse_text(value: Any, path: Any, line: int, column: str) -> str:
  """Checks a text cell is a non-missing string (numbers are converted)."""
  if value is None:
    raise DataError(f"{where(path, line, column)}: missing text.")
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return str(value)
  if not isinstance(value, str):
    raise DataError(f"{where(path, line, column)}: expected text, got {type(value).__name__}.")
  return value

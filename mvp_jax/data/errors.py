"""The one exception type the data pipeline raises for problems a user can fix."""

from __future__ import annotations

import pathlib

from mvp_jax.errors import UserError


class DataError(UserError):
  """Bad input data or data configuration; the message names the file/line/column and the fix.

  A UserError (so a ValueError): train.py prints it as one line, without a traceback.
  """


def where(
  path: str | pathlib.Path, line: int | None = None, column: str | int | None = None
) -> str:
  """Formats a location as ``file:line, column 'x'`` for error messages."""
  out = str(path)
  if line is not None:
    out += f":{line}"
  if column is not None:
    out += f", column {column!r}"
  return out

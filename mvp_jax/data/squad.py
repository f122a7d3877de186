"""SQuAD v1.1: reading, features (sliding windows over the context), and post-processing.

Features follow the reference (``run_squad``) settings: ``max_seq_length`` 384, ``doc_stride``
128, ``max_query_length`` 64, built with the fast tokenizer (``truncation="only_second"``,
``return_overflowing_tokens``, ``stride``, ``return_offsets_mapping``):

* The question is left-stripped and cut to ``max_query_length`` tokens.
* ``doc_stride`` is, as in the reference run_squad and BERT's original code, the step between the
  starts of consecutive context windows (window k starts at context token k * doc_stride; the last
  window ends at the context's end). The fast tokenizer's ``stride`` argument is the overlap
  between windows, so each question length gets ``stride = capacity - doc_stride`` with
  ``capacity = max_seq_length - question tokens - 3`` (examples are grouped by question length).
  If ``doc_stride`` exceeds the capacity, windows do not overlap (stride 0).
* Training features: the first answer's token span, from the offsets; an answer not entirely
  inside the window is mapped to the [CLS] token (start = end = 0), as the reference does.
  Leading/trailing spaces in an answer text are ignored.
* Evaluation features keep, per token, the character offsets into the context (-1 for question,
  special and padding tokens), whether this window is the token's "max context" window (BERT's
  rule: the window where the token has the most context on its shorter side, first on ties), and
  the index of their example.
* Post-processing: per feature the ``n_best_size`` (20) best start and end logits; valid spans lie
  in the context, start at a max-context token, have end >= start and at most
  ``max_answer_length`` (30) tokens; the best start+end score over all of an example's features
  wins and is mapped back to the context text through the offsets.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from mvp_jax import metrics
from mvp_jax.data import cache, readers
from mvp_jax.data.errors import DataError, where
from mvp_jax.data.tokenization import SEQ_KEYS, tokenizer_fingerprint


@dataclasses.dataclass
class SquadExamples:
  """Questions with their contexts and gold answers (all lists of length N).

  Attributes:
    ids: question ids (unique).
    contexts: the paragraph of each question.
    questions: question texts.
    answers: gold answer texts per question (one or more; SQuAD dev has up to 6).
    answer_starts: character start of each gold answer in its context.
    source: where they came from.
  """

  ids: list[str]
  contexts: list[str]
  questions: list[str]
  answers: list[list[str]]
  answer_starts: list[list[int]]
  source: str = ""

  def __len__(self) -> int:
    return len(self.ids)

  def head(self, n: int) -> SquadExamples:
    """The first ``n`` questions (all when ``n <= 0``)."""
    if n <= 0 or n >= len(self):
      return self
    return SquadExamples(
      self.ids[:n],
      self.contexts[:n],
      self.questions[:n],
      self.answers[:n],
      self.answer_starts[:n],
      self.source,
    )

  def concat(self, other: SquadExamples) -> SquadExamples:
    """Both sets of questions; question ids must stay unique."""
    dup = set(self.ids) & set(other.ids)
    if dup:
      raise DataError(
        f"{other.source}: question ids also in {self.source}, e.g. {sorted(dup)[0]!r}."
      )
    return SquadExamples(
      self.ids + other.ids,
      self.contexts + other.contexts,
      self.questions + other.questions,
      self.answers + other.answers,
      self.answer_starts + other.answer_starts,
      f"{self.source},{other.source}",
    )


def _line_of(text: str, needle: str) -> int | None:
  pos = text.find(needle)
  return None if pos < 0 else text.count("\n", 0, pos) + 1


def read_squad_json(path: str | pathlib.Path) -> SquadExamples:
  """Reads a file in the official SQuAD v1.1 layout, checking every answer against its context.

  Raises:
    DataError: missing/empty file, malformed JSON (with line and column), a wrong layout, a
      duplicate question id, or an answer whose text is not at ``answer_start`` in its context.
  """
  p = readers.check_file(path)
  text = p.read_text(encoding="utf-8-sig")
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise DataError(f"{where(p, e.lineno)}, column {e.colno}: malformed JSON: {e.msg}.") from None
  if not isinstance(data, dict) or not isinstance(data.get("data"), list):
    raise DataError(f"{p}: not the SQuAD layout; expected {{'data': [articles], 'version': ...}}.")
  out = SquadExamples([], [], [], [], [], str(p))
  seen = set()
  for a, article in enumerate(data["data"]):
    title = article.get("title", f"#{a}") if isinstance(article, dict) else f"#{a}"
    paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
    if not isinstance(paragraphs, list):
      raise DataError(f"{p}: article {title!r} has no 'paragraphs' list.")
    for g, para in enumerate(paragraphs):
      try:
        context, qas = para["context"], para["qas"]
      except (KeyError, TypeError):
        raise DataError(
          f"{p}: article {title!r}, paragraph {g}: needs 'context' and 'qas'."
        ) from None
      for qa in qas:
        try:
          qid, question, answers = str(qa["id"]), qa["question"], qa["answers"]
        except (KeyError, TypeError):
          raise DataError(
            f"{p}: article {title!r}, paragraph {g}: each question needs 'id', "
            "'question' and 'answers'."
          ) from None

        def loc(qid=qid) -> str:  # computed only for an error: finding the line is O(file)
          return where(p, _line_of(text, f'"{qid}"'))

        if qid in seen:
          raise DataError(f"{loc()}: duplicate question id {qid!r}.")
        seen.add(qid)
        if not answers:
          raise DataError(
            f"{loc()}: question {qid!r} has no answers (SQuAD v2 unanswerable "
            "questions are not supported)."
          )
        texts, starts = [], []
        for j, ans in enumerate(answers):
          try:
            ans_text, start = ans["text"], int(ans["answer_start"])
          except (KeyError, TypeError, ValueError):
            raise DataError(
              f"{loc()}: question {qid!r}, answer {j}: needs 'text' and an integer 'answer_start'."
            ) from None
          found = context[start : start + len(ans_text)]
          if found != ans_text:
            raise DataError(
              f"{loc()}: question {qid!r}, answer {j}: the context at answer_start={start} reads "
              f"{found!r}, not the answer text {ans_text!r}. Fix answer_start (the character "
              "offset of the answer in the context)."
            )
          texts.append(ans_text)
          starts.append(start)
        out.ids.append(qid)
        out.contexts.append(context)
        out.questions.append(question)
        out.answers.append(texts)
        out.answer_starts.append(starts)
  if not out.ids:
    raise DataError(f"{p}: no questions.")
  return out


def read_squad_files(paths: str | Sequence[str]) -> SquadExamples:
  """Reads one or more SQuAD JSON files (a list, or a comma-separated string) into one set."""
  if isinstance(paths, str):
    paths = [s.strip() for s in paths.split(",") if s.strip()]
  if not paths:
    raise DataError("no SQuAD file given.")
  out = read_squad_json(paths[0])
  for path in paths[1:]:
    out = out.concat(read_squad_json(path))
  return out


def read_squad_hub(split: str, cache_dir: str | None = None) -> SquadExamples:
  """Loads ``rajpurkar/squad`` ('train' or 'validation') from the Hub; DataError when offline."""
  import datasets

  try:
    ds = datasets.load_dataset("rajpurkar/squad", split=split, cache_dir=cache_dir)
  except Exception as e:  # offline, no cache, Hub errors
    raise DataError(
      f"could not load rajpurkar/squad ({split}) from the Hugging Face Hub ({type(e).__name__}: "
      f"{e}). Offline? Set data.train_file and data.eval_file to local SQuAD JSON files."
    ) from None
  return SquadExamples(
    list(ds["id"]),
    list(ds["context"]),
    list(ds["question"]),
    [list(a["text"]) for a in ds["answers"]],
    [list(a["answer_start"]) for a in ds["answers"]],
    source=f"hub:rajpurkar/squad/{split}",
  )


# --- features -------------------------------------------------------------------------------------


def _truncate_questions(tokenizer: Any, questions: list[str], max_query_length: int) -> list[str]:
  """Cuts each question after its ``max_query_length``-th token (by character offset)."""
  enc = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
  out = []
  for q, offs in zip(questions, enc["offset_mapping"], strict=True):
    out.append(q[: offs[max_query_length - 1][1]] if len(offs) > max_query_length else q)
  return out


def _max_context(starts: list[int], lengths: list[int]) -> list[np.ndarray]:
  """For each window (start token, length), a bool per context token: is this the token's
  max-context window (BERT: min(left, right) + 0.01 * length, first window on ties)."""
  total = starts[-1] + lengths[-1]
  scores = np.full((len(starts), total), -np.inf)
  for k, (s, n) in enumerate(zip(starts, lengths, strict=True)):
    pos = np.arange(n)
    scores[k, s : s + n] = np.minimum(pos, n - 1 - pos) + 0.01 * n
  best = scores.argmax(0)
  return [best[s : s + n] == k for k, (s, n) in enumerate(zip(starts, lengths, strict=True))]


def _featurize(tokenizer, batch, indices, max_seq_length, doc_stride, max_query_length, train):
  questions = _truncate_questions(
    tokenizer, [q.lstrip() for q in batch["question"]], max_query_length
  )
  qlens = [len(x) for x in tokenizer(questions, add_special_tokens=False)["input_ids"]]
  specials = tokenizer.num_special_tokens_to_add(pair=True)
  groups: dict[int, list[int]] = defaultdict(list)
  steps = {}
  for i, q in enumerate(qlens):
    capacity = max_seq_length - q - specials
    if capacity <= 0:
      raise DataError(
        f"max_seq_length={max_seq_length} leaves no room for the context after a "
        f"{q}-token question; raise max_seq_length or lower max_query_length."
      )
    stride = max(0, capacity - doc_stride)
    groups[stride].append(i)
    steps[stride] = capacity - stride
  per_example: list[list[dict]] = [[] for _ in questions]
  for stride, idxs in groups.items():
    enc = tokenizer(
      [questions[i] for i in idxs],
      [batch["context"][i] for i in idxs],
      truncation="only_second",
      max_length=max_seq_length,
      stride=stride,
      return_overflowing_tokens=True,
      return_offsets_mapping=True,
      padding="max_length",
      return_token_type_ids=True,
      return_attention_mask=True,
    )
    for f, j in enumerate(enc["overflow_to_sample_mapping"]):
      seq_ids = np.array([-1 if s is None else s for s in enc.sequence_ids(f)])
      offs = np.asarray(enc["offset_mapping"][f], dtype=np.int64).reshape(-1, 2)
      per_example[idxs[j]].append(
        {
          **{k: enc[k][f] for k in SEQ_KEYS},
          "seq_ids": seq_ids,
          "offsets": offs,
          "step": steps[stride],
        }
      )
  out = defaultdict(list)
  for i, feats in enumerate(per_example):
    ctx_idx = [np.flatnonzero(f["seq_ids"] == 1) for f in feats]
    if train:
      text = batch["answer_text"][i]
      sc = batch["answer_start"][i] + len(text) - len(text.lstrip())
      ec = batch["answer_start"][i] + len(text.rstrip())
    else:
      starts = [k * feats[0]["step"] for k in range(len(feats))]
      flags = _max_context(starts, [len(c) for c in ctx_idx])
    for k, f in enumerate(feats):
      for key in SEQ_KEYS:
        out[key].append(f[key])
      out["example_index"].append(indices[i])
      ctx, offs = ctx_idx[k], f["offsets"]
      if train:
        start = end = 0
        if len(ctx) and offs[ctx[0], 0] <= sc and offs[ctx[-1], 1] >= ec:
          start = int(ctx[np.flatnonzero(offs[ctx, 0] <= sc)[-1]])
          end = int(ctx[np.flatnonzero(offs[ctx, 1] >= ec)[0]])
        out["start_positions"].append(start)
        out["end_positions"].append(end)
      else:
        o_start = np.full(max_seq_length, -1, np.int64)
        o_end = np.full(max_seq_length, -1, np.int64)
        o_start[ctx], o_end[ctx] = offs[ctx, 0], offs[ctx, 1]
        mc = np.zeros(max_seq_length, bool)
        mc[ctx] = flags[k]
        out["offset_start"].append(o_start.tolist())
        out["offset_end"].append(o_end.tolist())
        out["max_context"].append(mc.tolist())
  return dict(out)


TRAIN_KEYS = SEQ_KEYS + ("start_positions", "end_positions", "example_index")
EVAL_KEYS = SEQ_KEYS + ("example_index", "offset_start", "offset_end", "max_context")


def prepare_features(
  examples: SquadExamples,
  tokenizer: Any,
  train: bool,
  max_seq_length: int = 384,
  doc_stride: int = 128,
  max_query_length: int = 64,
  cache_dir: str | pathlib.Path | None = None,
  name: str = "squad",
) -> dict[str, np.ndarray]:
  """Tokenises questions with sliding windows over their contexts (cached on disk).

  Args:
    examples: the questions.
    tokenizer: a fast tokenizer from load_tokenizer.
    train: training features (answer positions) or evaluation features (offsets).
    max_seq_length, doc_stride, max_query_length: see the module docstring.
    cache_dir: the feature cache folder.
    name: a prefix for the cache file and the progress bar.

  Returns:
    input_ids, attention_mask, token_type_ids: int32 [F, L]; example_index: int32 [F] (the
    feature's question in ``examples``); training: start_positions, end_positions int32 [F];
    evaluation: offset_start, offset_end int32 [F, L] (-1 outside the context) and
    max_context bool [F, L].
  """
  import datasets

  if len(examples) == 0:
    raise DataError(f"{examples.source}: no questions.")
  columns = {"question": examples.questions, "context": examples.contexts}
  if train:
    columns["answer_text"] = [a[0] for a in examples.answers]
    columns["answer_start"] = [s[0] for s in examples.answer_starts]
  key = cache.fingerprint(
    "squad-v1",
    tokenizer_fingerprint(tokenizer),
    train,
    max_seq_length,
    doc_stride,
    max_query_length,
    columns,
  )

  def fn(batch, indices):
    return _featurize(
      tokenizer, batch, indices, max_seq_length, doc_stride, max_query_length, train
    )

  def build():
    return datasets.Dataset.from_dict(columns)

  mode = "train" if train else "eval"
  ds = cache.cached_map(
    build,
    fn,
    cache_dir,
    f"{name}-{mode}-{key}",
    desc=f"Tokenising {name} ({mode})",
    remove_columns=list(columns),
    with_indices=True,
  )
  keys = TRAIN_KEYS if train else EVAL_KEYS
  out = cache.to_numpy(ds, keys)
  for k in keys:
    out[k] = out[k].astype(bool if k == "max_context" else np.int32)
  return out


# --- post-processing ------------------------------------------------------------------------------


@dataclasses.dataclass
class SquadEval:
  """What post-processing needs besides the logits: the examples and per-feature offsets.

  Attributes:
    examples: the questions, in order.
    example_index: int32 [F], the question of each eval feature.
    offset_start, offset_end: int32 [F, L] character offsets (-1 outside the context).
    max_context: bool [F, L].
  """

  examples: SquadExamples
  example_index: np.ndarray
  offset_start: np.ndarray
  offset_end: np.ndarray
  max_context: np.ndarray

  @classmethod
  def from_features(cls, examples: SquadExamples, features: dict[str, np.ndarray]) -> SquadEval:
    return cls(
      examples,
      features["example_index"],
      features["offset_start"],
      features["offset_end"],
      features["max_context"],
    )

  def predict_text(
    self,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    n_best_size: int = 20,
    max_answer_length: int = 30,
  ) -> dict[str, str]:
    """Best answer text per question id.

    Args:
      start_logits, end_logits: float [F, L'] over the eval features in order; L' <= L (a
        shorter width, e.g. from a bucketed batch, is padded with -inf).
      n_best_size: start/end candidates per feature.
      max_answer_length: the longest answer in tokens.

    Returns:
      {question id: answer text} ('' if no valid span exists).
    """
    start = self._pad(start_logits, "start_logits")
    end = self._pad(end_logits, "end_logits")
    f, length = start.shape
    k = min(n_best_size, length)
    rows = np.arange(f)[:, None]
    s_idx = np.argsort(-start, axis=1, kind="stable")[:, :k]
    e_idx = np.argsort(-end, axis=1, kind="stable")[:, :k]
    valid_s = (self.offset_start[rows, s_idx] >= 0) & self.max_context[rows, s_idx]
    valid_e = self.offset_start[rows, e_idx] >= 0
    span = e_idx[:, None, :] - s_idx[:, :, None]
    valid = valid_s[:, :, None] & valid_e[:, None, :] & (span >= 0) & (span < max_answer_length)
    score = start[rows, s_idx][:, :, None] + end[rows, e_idx][:, None, :]
    score = np.where(valid, score, -np.inf).reshape(f, k * k)
    flat = score.argmax(1)
    best_score = score[np.arange(f), flat]
    best_s = s_idx[np.arange(f), flat // k]
    best_e = e_idx[np.arange(f), flat % k]
    n_ex = len(self.examples)
    best_feature = np.full(n_ex, -1)
    best_value = np.full(n_ex, -np.inf)
    for i in range(f):  # features of an example are contiguous; the first maximum wins
      ex = self.example_index[i]
      if best_score[i] > best_value[ex]:
        best_value[ex], best_feature[ex] = best_score[i], i
    out = {}
    for ex, qid in enumerate(self.examples.ids):
      i = best_feature[ex]
      if i < 0:
        out[qid] = ""
        continue
      a, b = self.offset_start[i, best_s[i]], self.offset_end[i, best_e[i]]
      out[qid] = self.examples.contexts[ex][a:b]
    return out

  def compute_metrics(
    self,
    predictions: tuple[np.ndarray, np.ndarray],
    n_best_size: int = 20,
    max_answer_length: int = 30,
  ) -> dict[str, float]:
    """Official SQuAD v1.1 exact_match and f1 (percent) from (start_logits, end_logits)."""
    if not isinstance(predictions, (tuple, list)) or len(predictions) != 2:
      raise ValueError("SQuAD predictions must be (start_logits [F, L], end_logits [F, L]).")
    texts = self.predict_text(predictions[0], predictions[1], n_best_size, max_answer_length)
    golds = dict(zip(self.examples.ids, self.examples.answers, strict=True))
    return metrics.squad_metrics(texts, golds)

  def _pad(self, x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, np.float32)
    f, length = self.offset_start.shape
    if x.ndim != 2 or x.shape[0] != f or x.shape[1] > length:
      raise ValueError(
        f"{name} has shape {x.shape}; expected [{f}, <= {length}] (one row per "
        "eval feature, in order)."
      )
    if x.shape[1] < length:
      x = np.pad(x, ((0, 0), (0, length - x.shape[1])), constant_values=-np.inf)
    return x

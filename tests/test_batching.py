"""Batching: determinism, resume, multi-host slices, eval padding, buckets."""

import numpy as np
import pytest

from mvp_jax.data import batching


def make_features(n=103, width=128, seed=0):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(3, width + 1, size=n)
  ids = np.zeros((n, width), np.int32)
  mask = np.zeros((n, width), np.int32)
  for i, ln in enumerate(lengths):
    ids[i, :ln] = rng.integers(1000, 2000, size=ln)
    mask[i, :ln] = 1
  return {
    "input_ids": ids,
    "attention_mask": mask,
    "token_type_ids": np.zeros_like(ids),
    "labels": np.arange(n, dtype=np.int32),  # the row id, to track rows through batches
  }, lengths


def take(it, k):
  return [next(it) for _ in range(k)]


def test_deterministic_by_seed_and_epoch():
  f, _ = make_features()
  a = take(batching.BatchIterator(f, 8, seed=3), 30)
  b = take(batching.BatchIterator(f, 8, seed=3), 30)
  c = take(batching.BatchIterator(f, 8, seed=4), 30)
  for x, y in zip(a, b, strict=True):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert any(not np.array_equal(x["labels"], y["labels"]) for x, y in zip(a, c, strict=True))
  it = batching.BatchIterator(f, 8, seed=3)
  steps = it.steps_per_epoch
  assert steps == 103 // 8
  epochs = take(it, 2 * steps)
  e0 = np.concatenate([b["labels"] for b in epochs[:steps]])
  e1 = np.concatenate([b["labels"] for b in epochs[steps:]])
  assert len(set(e0)) == len(e0) == steps * 8  # no repeats within an epoch
  assert not np.array_equal(e0, e1)  # reshuffled every epoch
  np.testing.assert_array_equal(e0, it.epoch_order(0)[: steps * 8])


def test_resume_from_state_gives_identical_batches():
  f, _ = make_features()
  full = batching.BatchIterator(f, 8, seed=1)
  ref = take(full, 40)
  for cut in (0, 5, 12, 13, 27):
    it = batching.BatchIterator(f, 8, seed=1)
    take(it, cut)
    state = dict(it.state())
    resumed = batching.BatchIterator(f, 8, seed=1)
    resumed.restore(state)
    for want, got in zip(ref[cut:], take(resumed, 40 - cut), strict=True):
      for k in want:
        np.testing.assert_array_equal(want[k], got[k])
  with pytest.raises(ValueError, match="batch_size"):
    batching.BatchIterator(f, 16, seed=1).restore(state)


def test_process_slices_partition_the_global_batch():
  f, _ = make_features()
  glob = take(batching.BatchIterator(f, 12, seed=2), 8)
  parts = [
    take(batching.BatchIterator(f, 12, seed=2, process_index=i, process_count=3), 8)
    for i in range(3)
  ]
  for step, g in enumerate(glob):
    pieces = [p[step] for p in parts]
    assert all(len(x["labels"]) == 4 for x in pieces)
    for k in g:  # contiguous slices in process order, same bucket length everywhere
      np.testing.assert_array_equal(np.concatenate([x[k] for x in pieces]), g[k])
  with pytest.raises(ValueError, match="divisible"):
    batching.BatchIterator(f, 10, process_count=3)


def test_eval_padding_counts_every_example_once():
  f, _ = make_features(n=103)
  for count in (1, 2, 4):
    seen = []
    for pi in range(count):
      it = batching.eval_batches(f, 16, process_index=pi, process_count=count)
      assert it.steps_per_epoch == 7
      batches = list(it)
      assert len(batches) == 7
      seen.append(batches)
    labels, weights = [], []
    for step in range(7):  # reassemble global batches from the process slices
      labels.append(np.concatenate([s[step]["labels"] for s in seen]))
      weights.append(np.concatenate([s[step]["weights"] for s in seen]))
    assert np.concatenate(weights).sum() == 103
    assert weights[-1].tolist() == [1.0] * 7 + [0.0] * 9
    out = batching.collect_eval(labels, weights)
    np.testing.assert_array_equal(out, np.arange(103))  # each once, in order


def test_collect_eval_pads_bucketed_outputs():
  outs = [np.ones((2, 32)), np.ones((2, 64))]
  w = [np.ones(2), np.array([1.0, 0.0])]
  got = batching.collect_eval(outs, w, pad_value=-5.0)
  assert got.shape == (3, 64)
  assert (got[:2, 32:] == -5.0).all() and (got[2] == 1.0).all()


def test_bucket_lengths_bounded_and_fitting():
  f, lengths = make_features(n=300, width=384)
  it = batching.BatchIterator(f, 4, seed=0, max_epochs=2)
  seen = set()
  for b in it:
    width = b["input_ids"].shape[1]
    seen.add(width)
    rows = b["labels"]
    assert lengths[rows].max() <= width  # nothing real is cut off
    smaller = [x for x in batching.DEFAULT_BUCKETS if x < width]
    assert not smaller or lengths[rows].max() > smaller[-1]  # the smallest bucket that fits
    assert b["attention_mask"].shape[1] == b["token_type_ids"].shape[1] == width
    assert b["labels"].shape == (4,) and b["weights"].dtype == np.float32
  assert seen <= {32, 64, 128, 256, 384}
  assert batching.bucket_lengths(100) == (32, 64, 100)
  assert batching.bucket_lengths(128) == (32, 64, 128)
  fixed = next(batching.BatchIterator(f, 4, buckets=None))
  assert fixed["input_ids"].shape == (4, 384)


def test_drop_remainder_and_errors():
  f, _ = make_features(n=20)
  it = batching.BatchIterator(f, 8, seed=0, max_epochs=3)
  batches = list(it)
  assert len(batches) == 6 and all(b["weights"].sum() == 8 for b in batches)
  it = batching.BatchIterator(f, 8, shuffle=False, drop_remainder=False, max_epochs=1)
  assert [b["weights"].sum() for b in it] == [8, 8, 4]
  with pytest.raises(ValueError, match="drop_remainder"):
    batching.BatchIterator(f, 32)
  with pytest.raises(ValueError, match="differ in length"):
    batching.BatchIterator({"input_ids": np.zeros((3, 4)), "labels": np.zeros(2)}, 1)

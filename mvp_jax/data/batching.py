"""Deterministic, resumable, multi-host batching of tokenised features, with length buckets.

* Order: epoch ``e`` visits the rows in ``np.random.default_rng([seed, e]).permutation(N)``
  (or in order when ``shuffle=False``). It depends only on (seed, epoch), so every process
  computes the same global batches without communicating.
* Resuming: the position in the stream (epoch, batch within the epoch) is the iterator's state;
  ``restore(state)`` continues with exactly the batches an uninterrupted run would have seen.
* Multi-host: a global batch of ``batch_size`` rows is cut into ``process_count`` contiguous
  slices; process ``process_index`` gets rows ``[i * b, (i + 1) * b)`` with
  ``b = batch_size // process_count``.
* Buckets: each global batch is cut to the smallest bucket length (default 32, 64, 128, 256, 384,
  512, capped at the features' width) that holds its longest row. The bucket is chosen on the
  global batch, so all processes agree and the train step compiles at most once per bucket.
* The last partial batch: with ``drop_remainder=True`` (training default) it is dropped, so every
  training batch is full and has the same shape; the dropped rows are different ones each epoch
  because the order is reshuffled. With ``drop_remainder=False`` (evaluation) it is padded to the
  full batch size with copies of a real row whose ``weights`` are 0, so every example is counted
  exactly once when metrics and losses are weighted (or padded rows are dropped, see
  ``collect_eval``).

Each batch is a dict of numpy arrays: the feature arrays cut to the batch's rows and bucket
(input_ids/attention_mask/token_type_ids int32 [B, L_bucket], labels [B] or
start_positions/end_positions [B], ...) plus ``weights`` float32 [B] (1 real row, 0 padding),
where B is the per-process batch size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from mvp_jax.data.tokenization import SEQ_KEYS

DEFAULT_BUCKETS = (32, 64, 128, 256, 384, 512)


def bucket_lengths(width: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> tuple[int, ...]:
  """The bucket lengths usable for features of padded width ``width`` (always includes it)."""
  return tuple(sorted({b for b in buckets if b < width} | {width}))


def row_lengths(features: Mapping[str, np.ndarray]) -> np.ndarray:
  """Tokens per row: int [N], from attention_mask (last non-zero position + 1)."""
  mask = np.asarray(features["attention_mask"])
  nonzero = mask != 0
  last = mask.shape[1] - np.argmax(nonzero[:, ::-1], axis=1)
  return np.where(nonzero.any(1), last, 0)


class BatchIterator:
  """An iterator of batches over in-memory features; see the module docstring.

  Args:
    features: name -> array with N rows (sequence arrays [N, L], others [N, ...]).
    batch_size: the global batch size (over all processes).
    seed: the shuffle seed.
    shuffle: reshuffle every epoch (else rows in order).
    drop_remainder: drop the last partial batch (else pad it with weight-0 rows).
    process_index, process_count: this process and how many share the global batch.
    buckets: allowed sequence lengths; None disables bucketing (always the full width).
    max_epochs: stop after this many epochs; None repeats forever.
    seq_keys: the arrays whose second axis is the sequence (cut to the bucket).
  """

  def __init__(
    self,
    features: Mapping[str, np.ndarray],
    batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
    drop_remainder: bool = True,
    process_index: int = 0,
    process_count: int = 1,
    buckets: Sequence[int] | None = DEFAULT_BUCKETS,
    max_epochs: int | None = None,
    seq_keys: Sequence[str] = SEQ_KEYS,
  ):
    if not features:
      raise ValueError("no features to batch")
    sizes = {k: len(v) for k, v in features.items()}
    self.num_examples = next(iter(sizes.values()))
    if any(n != self.num_examples for n in sizes.values()):
      raise ValueError(f"feature arrays differ in length: {sizes}")
    if batch_size <= 0 or process_count <= 0 or not 0 <= process_index < process_count:
      raise ValueError(
        f"bad batch_size={batch_size} / process_index={process_index} / "
        f"process_count={process_count}"
      )
    if batch_size % process_count:
      raise ValueError(
        f"batch_size={batch_size} is not divisible by process_count={process_count};"
        " every process needs the same number of rows."
      )
    if drop_remainder and self.num_examples < batch_size:
      raise ValueError(
        f"only {self.num_examples} examples for batch_size={batch_size} with "
        "drop_remainder=True: every epoch would be empty. Lower the batch size."
      )
    self.features = {k: np.asarray(v) for k, v in features.items()}
    self.batch_size = batch_size
    self.seed = seed
    self.shuffle = shuffle
    self.drop_remainder = drop_remainder
    self.process_index = process_index
    self.process_count = process_count
    self.max_epochs = max_epochs
    self.seq_keys = tuple(k for k in seq_keys if k in self.features)
    self.width = self.features[self.seq_keys[0]].shape[1] if self.seq_keys else 0
    self.buckets = bucket_lengths(self.width, buckets) if buckets and self.seq_keys else None
    self.lengths = row_lengths(self.features) if "attention_mask" in self.features else None
    self.epoch = 0
    self.position = 0
    self._order_epoch = -1
    self._order = np.arange(0)

  @property
  def steps_per_epoch(self) -> int:
    """Batches per epoch."""
    if self.drop_remainder:
      return self.num_examples // self.batch_size
    return math.ceil(self.num_examples / self.batch_size)

  @property
  def per_process_batch_size(self) -> int:
    return self.batch_size // self.process_count

  def __len__(self) -> int:
    if self.max_epochs is None:
      raise TypeError("an iterator with max_epochs=None is infinite")
    return self.max_epochs * self.steps_per_epoch - (
      self.epoch * self.steps_per_epoch + self.position
    )

  def state(self) -> dict[str, int]:
    """The position in the stream (JSON-serialisable; store it in the checkpoint)."""
    return {
      "epoch": self.epoch,
      "position": self.position,
      "seed": self.seed,
      "num_examples": self.num_examples,
      "batch_size": self.batch_size,
    }

  def restore(self, state: Mapping[str, Any]) -> None:
    """Continues from ``state()``; raises ValueError if it was taken over other data."""
    for key in ("seed", "num_examples", "batch_size"):
      if key in state and int(state[key]) != getattr(self, key):
        raise ValueError(
          f"cannot restore the data position: the checkpoint has {key}="
          f"{state[key]}, this run {getattr(self, key)}. Resume with the same data "
          "and batch size, or start the data stream afresh."
        )
    self.epoch, self.position = int(state["epoch"]), int(state["position"])

  def epoch_order(self, epoch: int) -> np.ndarray:
    """The row order of an epoch: int [N]."""
    if epoch != self._order_epoch:
      if self.shuffle:
        self._order = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
      else:
        self._order = np.arange(self.num_examples)
      self._order_epoch = epoch
    return self._order

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self.position >= self.steps_per_epoch:
      self.epoch += 1
      self.position = 0
    if self.max_epochs is not None and self.epoch >= self.max_epochs:
      raise StopIteration
    order = self.epoch_order(self.epoch)
    rows = order[self.position * self.batch_size : (self.position + 1) * self.batch_size]
    weights = np.ones(self.batch_size, np.float32)
    if len(rows) < self.batch_size:  # only without drop_remainder
      weights[len(rows) :] = 0.0
      rows = np.concatenate([rows, np.full(self.batch_size - len(rows), rows[-1])])
    self.position += 1
    return self._make_batch(rows, weights)

  def _make_batch(self, rows: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    length = self.width
    if self.buckets is not None and self.lengths is not None:
      longest = int(self.lengths[rows].max())
      length = next(b for b in self.buckets if b >= longest)
    b = self.per_process_batch_size
    mine = slice(self.process_index * b, (self.process_index + 1) * b)
    batch = {}
    for k, v in self.features.items():
      x = v[rows[mine]]
      if k in self.seq_keys:
        x = x[:, :length]
      batch[k] = x
    batch["weights"] = weights[mine]
    return batch


def eval_batches(
  features: Mapping[str, np.ndarray],
  batch_size: int,
  process_index: int = 0,
  process_count: int = 1,
  buckets: Sequence[int] | None = DEFAULT_BUCKETS,
) -> BatchIterator:
  """One pass over all eval features in order, the last batch padded with weight-0 rows.

  Concatenating the global batches and keeping the rows with weight 1 gives the features in
  their original order, each exactly once (see collect_eval).
  """
  return BatchIterator(
    features,
    batch_size,
    shuffle=False,
    drop_remainder=False,
    process_index=process_index,
    process_count=process_count,
    buckets=buckets,
    max_epochs=1,
  )


def collect_eval(
  outputs: Sequence[np.ndarray], weights: Sequence[np.ndarray], pad_value: float = -1e9
) -> np.ndarray:
  """Joins per-batch model outputs (global batches, in order) and drops the padding rows.

  Args:
    outputs: per batch, an array [B, ...]; arrays [B, L_b, ...] with different bucket lengths
      are padded on axis 1 with ``pad_value`` (e.g. QA logits) to the longest.
    weights: per batch, float [B] (0 marks padding rows).

  Returns:
    [N, ...] with N the number of weight-1 rows.
  """
  outputs = [np.asarray(o) for o in outputs]
  if not outputs:
    raise ValueError("no outputs to collect")
  if outputs[0].ndim >= 2 and len({o.shape[1] for o in outputs}) > 1:
    width = max(o.shape[1] for o in outputs)
    outputs = [
      np.pad(
        o, [(0, 0), (0, width - o.shape[1])] + [(0, 0)] * (o.ndim - 2), constant_values=pad_value
      )
      for o in outputs
    ]
  keep = np.concatenate([np.asarray(w) > 0 for w in weights])
  return np.concatenate(outputs)[keep]

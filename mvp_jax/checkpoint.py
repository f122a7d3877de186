"""Checkpoints: the only module that talks to orbax.

A checkpoint step holds two items:

* ``state``: any pytree of jax arrays (params, scores, optimizer state, step, RNG key data),
  saved with orbax's ``PyTreeCheckpointHandler`` and restored *with the shardings of an abstract
  state*;
* ``extra``: a JSON dict (data-iterator position, RNG as a list, config hash, metrics).

Retention keeps the last ``max_to_keep`` steps **plus** the best step by a metric (orbax's own
``best_fn`` + ``max_to_keep`` would keep the top-k by metric instead). Writes are atomic: orbax
writes to ``<step>.orbax-checkpoint-tmp-*`` and renames on success, and unfinished tmp dirs are
neither listed nor restored (they are deleted when a ``Checkpointer`` opens the directory).
All processes must call ``save``/``restore``; orbax writes each array shard once and the JSON on
process 0.

In a single process, replicated arrays are copied to the host from one device: orbax's default
on CPUs and TPUs ("replica-parallel") cuts each into one slice per replica so that several hosts
can share the writing, which buys nothing when one process writes every slice, and costs a small
compiled program per slice shape and a dispatch per slice (MiniLM's train state on 8 CPU devices:
the loop blocked 0.18 s a save instead of 1.16 s, committed in 1.38 s instead of 2.97 s;
benchmarks/checkpoint_save.py). Several processes keep orbax's default. Checkpoints written
with orbax's ``StandardCheckpointHandler`` restore here, and the other way round.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

STATE = "state"
EXTRA = "extra"


def state_handler(replica_parallel: bool | None = None) -> ocp.PyTreeCheckpointHandler:
  """orbax's pytree handler for the state, replica-parallel only where it helps.

  Args:
    replica_parallel: whether orbax cuts each replicated array into one slice per replica
      (``ArrayHandler(use_replica_parallel=...)``). None: not in a single process (one process
      writes every slice anyway), orbax's platform default with several.
  """
  if replica_parallel is None and jax.process_count() == 1:
    replica_parallel = False
  arrays = ocp.type_handlers.ArrayHandler(use_replica_parallel=replica_parallel)
  scalars = ocp.type_handlers.ScalarHandler()
  registry = ocp.type_handlers.create_type_handler_registry(
      (int, scalars), (float, scalars), (np.number, scalars),
      (np.ndarray, ocp.type_handlers.NumpyHandler()), (jax.Array, arrays))
  return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


class CheckpointMismatchError(ValueError):
  """A saved state that differs from the one to restore into.

  Attributes:
    shapes: '/'-path -> (saved shape, expected shape) for the leaves present in both whose
      shapes differ (paths missing on either side are named in the message only).
  """

  def __init__(self, message: str, shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]):
    super().__init__(message)
    self.shapes = shapes


def _key_str(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _flat_shapes(tree: Any) -> dict[str, tuple[int, ...] | None]:
  """'/'-path -> shape of every leaf (None for leaves without one).

  Orbax's metadata tree turns NamedTuples into dicts/lists and dataclasses into dicts, so the
  comparison is by normalised key names, which both sides share.
  """
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  out = {}
  for path, leaf in leaves:
    shape = getattr(leaf, "shape", None)
    out["/".join(_key_str(k) for k in path)] = None if shape is None else tuple(shape)
  return out


def _to_json(value: Any, where: str) -> Any:
  """JSON-safe copy of ``value``: numpy/jax scalars and arrays become Python numbers/lists."""
  if isinstance(value, Mapping):
    return {str(k): _to_json(v, f"{where}/{k}") for k, v in value.items()}
  if isinstance(value, list | tuple):
    return [_to_json(v, f"{where}/{i}") for i, v in enumerate(value)]
  if isinstance(value, str | bool | int | float) or value is None:
    return value
  if isinstance(value, np.generic | np.ndarray | jax.Array):
    return np.asarray(value).tolist()
  raise TypeError(f"{where}: {type(value).__name__} is not JSON-serialisable")


class Checkpointer:
  """Save and restore ``(state, extra)`` per step; keep the last k and the best.

  Args:
    directory: where the step folders go (created if missing); local path or a URL orbax
      supports (``gs://...``).
    max_to_keep: how many of the most recent steps to keep (None: keep all).
    keep_best: also keep the best step by ``best_metric`` (ignored when ``best_metric`` is None).
    best_metric: key of the ``metrics`` dict passed to :meth:`save` that ranks steps.
    best_mode: ``"max"`` or ``"min"``: whether larger or smaller ``best_metric`` is better.
    async_save: write in a background thread (call :meth:`wait` before reading the files).
    replica_parallel: see :func:`state_handler` (None: only across processes).

  >>> import tempfile, jax.numpy as jnp
  >>> ckpt = Checkpointer(tempfile.mkdtemp(), best_metric="accuracy", async_save=False)
  >>> ckpt.save(1, {"w": jnp.ones(2)}, {"position": 10}, metrics={"accuracy": 0.5})
  True
  >>> state, extra = ckpt.restore(1, {"w": jax.ShapeDtypeStruct((2,), jnp.float32)})
  >>> extra["position"], ckpt.latest_step(), ckpt.best_step()
  (10, 1, 1)
  >>> ckpt.close()
  """

  def __init__(
      self,
      directory: str | os.PathLike[str],
      *,
      max_to_keep: int | None = 2,
      keep_best: bool = True,
      best_metric: str | None = None,
      best_mode: str = "max",
      async_save: bool = True,
      replica_parallel: bool | None = None,
  ):
    if max_to_keep is not None and max_to_keep < 1:
      raise ValueError(f"max_to_keep must be >= 1 or None, got {max_to_keep}")
    if best_mode not in ("max", "min"):
      raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
    directory = os.fspath(directory)
    if "://" not in directory:
      # orbax resolves relative paths differently across processes; make them absolute.
      directory = os.path.abspath(directory)
    self.directory = directory
    self.best_metric = best_metric if keep_best else None
    self.best_mode = best_mode

    policies: list[Any] = [ocp.checkpoint_managers.LatestN(n=max_to_keep)]
    best_fn = None
    if self.best_metric is not None:
      metric = self.best_metric

      def best_fn(metrics: Mapping[str, Any]) -> float:
        return float(metrics[metric])

      # BestN sorts ascending and keeps the last n, so "min" reverses. Steps saved without
      # metrics are not kept by this policy (LatestN keeps them while they are recent).
      policies.append(ocp.checkpoint_managers.BestN(
          get_metric_fn=best_fn, reverse=(best_mode == "min"), n=1,
          keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        # best_fn is still needed: orbax only writes metrics (and ranks best_step) when it is set.
        # Retention is decided by preservation_policy alone (max_to_keep must stay unset).
        best_fn=best_fn,
        best_mode=best_mode,
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,
        create=True,
    )
    self._manager = ocp.CheckpointManager(
        directory,
        options=options,
        item_names=(STATE, EXTRA),
        # Registered up front so that a fresh process can read metadata before any save.
        item_handlers={STATE: state_handler(replica_parallel),
                       EXTRA: ocp.JsonCheckpointHandler()},
    )

  # ------------------------------------------------------------------------------------------
  def save(
      self,
      step: int,
      state: Any,
      extra: Mapping[str, Any] | None = None,
      metrics: Mapping[str, Any] | None = None,
      force: bool = False,
  ) -> bool:
    """Saves ``state`` and ``extra`` as step ``step`` (asynchronously unless ``async_save=False``).

    Args:
      step: the training step (must grow from save to save).
      state: pytree of jax arrays (sharded or not) and Python/numpy scalars.
      extra: JSON-serialisable dict; numpy/jax scalars and arrays are converted to numbers/lists.
      metrics: numbers ranking this step for ``best_metric`` (must contain it when given).
      force: save even if orbax's save policy would skip this step.

    Returns:
      Whether a checkpoint was started (False if orbax skipped the step, e.g. already saved).
    """
    extra_json = _to_json(dict(extra or {}), "extra")
    metrics_json = None
    if metrics is not None:
      metrics_json = _to_json(dict(metrics), "metrics")
      if self.best_metric is not None and self.best_metric not in metrics_json:
        raise ValueError(
            f"metrics {sorted(metrics_json)} lack best_metric {self.best_metric!r}: pass it, or "
            "build the Checkpointer with another best_metric"
        )
    args = ocp.args.Composite(**{
        STATE: ocp.args.PyTreeSave(state),
        EXTRA: ocp.args.JsonSave(extra_json),
    })
    saved = self._manager.save(int(step), args=args, metrics=metrics_json, force=force)
    if not saved:
      logging.info("checkpoint: step %d not saved (latest is %s)", step, self.latest_step())
    return bool(saved)

  def restore(self, step: int | None, abstract_state: Any | None) -> tuple[Any, dict[str, Any]]:
    """Restores ``(state, extra)`` of ``step`` (None: the latest).

    Args:
      step: the step to restore; None for :meth:`latest_step`.
      abstract_state: a tree of ``jax.ShapeDtypeStruct`` with ``.sharding`` (e.g.
        ``jax.eval_shape`` of the init, with shardings from ``sharding.tree_shardings``): arrays
        come back with that structure, dtype and sharding. None restores the saved structure
        with every array on this process's first device (works whatever device count the
        checkpoint was written with, e.g. for export on a laptop).

    Returns:
      ``(state, extra)``.

    Raises:
      FileNotFoundError: no such step.
      CheckpointMismatchError: a ValueError, the saved tree differs from ``abstract_state``
        (paths and shapes are named).
    """
    if step is None:
      step = self.latest_step()
      if step is None:
        raise FileNotFoundError(f"no checkpoint in {self.directory}")
    step = int(step)
    if step not in self.all_steps():
      raise FileNotFoundError(
          f"no checkpoint for step {step} in {self.directory}; available: {self.all_steps()}"
      )
    if abstract_state is not None:
      self._check_compatible(step, abstract_state)
    else:
      abstract_state = self._local_target(step)
    state_args = ocp.args.PyTreeRestore(
        abstract_state, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state))
    restored = self._manager.restore(
        step, args=ocp.args.Composite(**{STATE: state_args, EXTRA: ocp.args.JsonRestore()})
    )
    return restored[STATE], dict(restored[EXTRA] or {})

  def restore_extra(self, step: int) -> dict[str, Any]:
    """The ``extra`` dict saved with ``step``, without reading the state (e.g. to check, before
    restoring arrays, that this process can continue the run)."""
    restored = self._manager.restore(int(step), args=ocp.args.Composite(
        **{EXTRA: ocp.args.JsonRestore()}))
    return dict(restored[EXTRA] or {})

  def _local_target(self, step: int) -> Any:
    """The saved tree as ShapeDtypeStructs placed on the first local device."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def leaf(meta: Any) -> Any:
      if hasattr(meta, "shape") and hasattr(meta, "dtype"):
        return jax.ShapeDtypeStruct(tuple(meta.shape), meta.dtype, sharding=device)
      return meta

    tree = self._manager.item_metadata(step)[STATE]
    tree = getattr(tree, "tree", tree)
    return jax.tree.map(leaf, tree, is_leaf=lambda x: hasattr(x, "shape"))

  def _check_compatible(self, step: int, abstract_state: Any) -> None:
    saved = _flat_shapes(self._manager.item_metadata(step)[STATE])
    wanted = _flat_shapes(abstract_state)
    missing = sorted(set(wanted) - set(saved))
    unexpected = sorted(set(saved) - set(wanted))
    shapes = sorted(p for p in set(saved) & set(wanted)
                    if None not in (saved[p], wanted[p]) and saved[p] != wanted[p])
    if not (missing or unexpected or shapes):
      return
    lines = [f"checkpoint step {step} in {self.directory} does not match the state to restore:"]
    if missing:
      lines.append(f"  not in the checkpoint: {', '.join(missing[:10])}"
                   + (f" (+{len(missing) - 10} more)" if len(missing) > 10 else ""))
    if unexpected:
      lines.append(f"  only in the checkpoint: {', '.join(unexpected[:10])}"
                   + (f" (+{len(unexpected) - 10} more)" if len(unexpected) > 10 else ""))
    for p in shapes[:10]:
      lines.append(f"  {p}: checkpoint shape {saved[p]} vs expected {wanted[p]}")
    lines.append("  (a different model/pruning/optimizer config than the run that saved it?)")
    raise CheckpointMismatchError("\n".join(lines), {p: (saved[p], wanted[p]) for p in shapes})

  # ------------------------------------------------------------------------------------------
  def latest_step(self) -> int | None:
    """The newest finished step, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """All finished steps still on disk, ascending."""
    return sorted(int(s) for s in self._manager.all_steps())

  def best_step(self) -> int | None:
    """The kept step with the best ``best_metric``; None if not tracking or no step has metrics."""
    if self.best_metric is None:
      return None
    # orbax ranks the cached step infos with best_fn; steps saved without metrics are ignored.
    return self._manager.best_step()

  def metrics(self, step: int) -> dict[str, Any] | None:
    """The metrics saved with ``step`` (None if none were)."""
    return self._manager.metrics(step)

  def wait(self) -> None:
    """Blocks until pending asynchronous saves (and the deletions they cause) are finished."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases orbax's resources."""
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()

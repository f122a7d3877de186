"""Tests of mvp_jax.checkpoint (orbax) on the 8 fake CPU devices of conftest.py."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mvp_jax import checkpoint, optim, sharding


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _state(mesh):
  rng = np.random.default_rng(0)
  trainable = {
      "params": {"bert": {"encoder": {"layer": {"0": {"attention": {"self": {"query": {
          "kernel": jnp.asarray(rng.normal(size=(8, 4)), jnp.float32),
          "bias": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}}}}}}},
          "classifier": {"kernel": jnp.asarray(rng.normal(size=(4, 2)), jnp.bfloat16)}},
      "scores": {"bert": {"encoder": {"layer": {"0": {"attention": {"self": {"query": {
          "kernel": jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)}}}}}}}},
  }
  rules = ((r"query/kernel$", P("data", "model")), (r"query/bias$", P("model")), (r".*", P()))
  trainable = jax.device_put(trainable, sharding.tree_shardings(trainable, mesh, rules))
  tx = optim.make_optimizer(trainable, learning_rate=1e-3, score_learning_rate=1e-2,
                            weight_decay=0.01, warmup_steps=0, total_steps=10, grad_accum_steps=2,
                            level_schedule=lambda t: 1.0 - 0.1 * t)
  opt_state = tx.init(trainable)
  grads = jax.tree.map(jnp.ones_like, trainable)
  for _ in range(2):  # one full optimizer step, so the state is not all zeros
    _, opt_state = tx.update(grads, opt_state, trainable)
  return {
      "step": jnp.asarray(7, jnp.int32),
      "rng": jax.random.key_data(jax.random.key(3)),
      "trainable": trainable,
      "opt_state": opt_state,
  }


def test_round_trip_sharded_state_and_extra(tmp_path):
  mesh = sharding.make_mesh((4, 2))
  state = _state(mesh)
  kernel = state["trainable"]["params"]["bert"]["encoder"]["layer"]["0"]["attention"]["self"][
      "query"]["kernel"]
  assert kernel.sharding.spec == P("data", "model")
  extra = {"data": {"epoch": 1, "position": np.int64(96)}, "rng": [0, 3],
           "config_hash": "abc", "metrics": {"loss": np.float32(0.25)}}
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt")
  assert ckpt.save(7, state, extra)
  ckpt.wait()
  ckpt.close()

  # A new Checkpointer (as after a restart) restores onto the abstract state's shardings.
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt")
  assert ckpt.latest_step() == 7 and ckpt.all_steps() == [7]
  abstract = _abstract(state)
  restored, restored_extra = ckpt.restore(None, abstract)
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.sharding == want.sharding
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert restored["step"].dtype == jnp.int32 and int(restored["step"]) == 7
  key = jax.random.wrap_key_data(restored["rng"])
  np.testing.assert_array_equal(jax.random.normal(key, (3,)), jax.random.normal(jax.random.key(3),
                                                                                (3,)))
  # The optimizer state keeps its optax types, so the level can still be read from it.
  values = optim.schedule_values(restored["opt_state"])
  assert int(values["step"]) == 1
  np.testing.assert_allclose(float(values["level"]), 0.9, rtol=1e-6)
  assert restored_extra == {"data": {"epoch": 1, "position": 96}, "rng": [0, 3],
                            "config_hash": "abc", "metrics": {"loss": 0.25}}
  assert ckpt.restore_extra(7) == restored_extra  # alone, without a target for the arrays
  # Restoring onto a different sharding reshards.
  replicated = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, P())),
      state["trainable"])
  other, _ = ckpt.restore(7, {**abstract, "trainable": replicated})
  k = other["trainable"]["params"]["bert"]["encoder"]["layer"]["0"]["attention"]["self"]["query"]
  assert k["kernel"].sharding.spec == P()
  np.testing.assert_array_equal(np.asarray(k["kernel"]), np.asarray(kernel))
  ckpt.close()


def _save_seq(ckpt, seq):
  kept = []
  state = {"w": jnp.zeros((2,))}
  for step, metric in seq:
    metrics = None if metric is None else {"acc": metric, "loss": -1.0}
    assert ckpt.save(step, {"w": state["w"] + step}, {"step": step}, metrics=metrics)
    ckpt.wait()
    kept.append((ckpt.all_steps(), ckpt.best_step()))
  return kept


def test_keep_last_k_plus_best(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path, max_to_keep=2, best_metric="acc", async_save=False)
  kept = _save_seq(ckpt, [(1, 0.5), (2, 0.9), (3, 0.6), (4, 0.7), (5, 0.95), (6, 0.1), (7, None),
                          (8, 0.2)])
  assert kept == [
      ([1], 1),
      ([1, 2], 2),
      ([2, 3], 2),  # 1 is neither among the last 2 nor the best
      ([2, 3, 4], 2),  # last 2 plus the best
      ([4, 5], 5),
      ([5, 6], 5),
      ([5, 6, 7], 5),  # a step saved without metrics is kept while it is recent
      ([5, 7, 8], 5),
  ]
  assert ckpt.metrics(5)["acc"] == 0.95
  ckpt.close()
  # Retention and best survive a restart.
  ckpt = checkpoint.Checkpointer(tmp_path, max_to_keep=2, best_metric="acc", async_save=False)
  assert ckpt.all_steps() == [5, 7, 8] and ckpt.best_step() == 5
  state, extra = ckpt.restore(ckpt.best_step(), {"w": jax.ShapeDtypeStruct((2,), jnp.float32)})
  np.testing.assert_array_equal(np.asarray(state["w"]), [5.0, 5.0])
  assert extra == {"step": 5}
  ckpt.close()


def test_keep_best_min_mode_and_no_best(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path / "min", max_to_keep=1, best_metric="acc",
                                 best_mode="min", async_save=False)
  kept = _save_seq(ckpt, [(1, 0.5), (2, 0.1), (3, 0.6), (4, 0.7)])
  assert kept == [([1], 1), ([2], 2), ([2, 3], 2), ([2, 4], 2)]
  ckpt.close()
  ckpt = checkpoint.Checkpointer(tmp_path / "plain", max_to_keep=2, keep_best=False,
                                 best_metric="acc", async_save=False)
  kept = _save_seq(ckpt, [(1, 0.9), (2, 0.1), (3, 0.2)])
  assert kept == [([1], None), ([1, 2], None), ([2, 3], None)]
  ckpt.close()


def test_tmp_dirs_are_never_listed_or_restored(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path, async_save=False)
  ckpt.save(1, {"w": jnp.ones((2,))}, {})
  ckpt.close()
  # What a save killed half-way leaves behind: orbax writes here and renames on success.
  tmp = tmp_path / "9.orbax-checkpoint-tmp-1700000000"
  (tmp / "state").mkdir(parents=True)
  (tmp / "state" / "garbage").write_bytes(b"\x00" * 10)
  ckpt = checkpoint.Checkpointer(tmp_path, async_save=False)
  assert ckpt.all_steps() == [1] and ckpt.latest_step() == 1
  with pytest.raises(FileNotFoundError, match="step 9"):
    ckpt.restore(9, {"w": jax.ShapeDtypeStruct((2,), jnp.float32)})
  state, _ = ckpt.restore(None, {"w": jax.ShapeDtypeStruct((2,), jnp.float32)})
  np.testing.assert_array_equal(np.asarray(state["w"]), [1.0, 1.0])
  assert not tmp.exists(), os.listdir(tmp_path)  # cleaned up when the directory is opened
  ckpt.close()


def test_mismatch_errors_name_the_path(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path, async_save=False)
  ckpt.save(3, {"params": {"dense": {"kernel": jnp.ones((2, 3))}, "head": jnp.ones((3,))}}, {})
  f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
  with pytest.raises(checkpoint.CheckpointMismatchError,
                     match=r"params/dense/kernel: checkpoint shape \(2, 3\) vs "
                           r"expected \(3, 3\)") as err:
    ckpt.restore(3, {"params": {"dense": {"kernel": f32(3, 3)}, "head": f32(3)}})
  assert err.value.shapes == {"params/dense/kernel": ((2, 3), (3, 3))}
  with pytest.raises(ValueError, match="not in the checkpoint: params/extra"):
    ckpt.restore(3, {"params": {"dense": {"kernel": f32(2, 3)}, "head": f32(3), "extra": f32(1)}})
  with pytest.raises(ValueError, match="only in the checkpoint: params/head"):
    ckpt.restore(3, {"params": {"dense": {"kernel": f32(2, 3)}}})
  with pytest.raises(FileNotFoundError, match="available: \\[3\\]"):
    ckpt.restore(4, None)
  # Saving the same step again is skipped, not an error.
  assert not ckpt.save(3, {"w": jnp.ones(1)}, {})
  with pytest.raises(TypeError, match="extra/bad"):
    ckpt.save(4, {"w": jnp.ones(1)}, {"bad": object()})
  ckpt.close()
  ckpt = checkpoint.Checkpointer(tmp_path / "b", best_metric="acc", async_save=False)
  with pytest.raises(ValueError, match="best_metric 'acc'"):
    ckpt.save(1, {"w": jnp.ones(1)}, {}, metrics={"loss": 1.0})
  ckpt.close()
  with pytest.raises(ValueError, match="max_to_keep"):
    checkpoint.Checkpointer(tmp_path / "c", max_to_keep=0)


def _standard_manager(directory):
  """A CheckpointManager with orbax's StandardCheckpointHandler for the state: how this module
  saved before it chose its own array handler (2026-12-06), and how other orbax users save."""
  import orbax.checkpoint as ocp

  return ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False),
      item_names=(checkpoint.STATE, checkpoint.EXTRA),
      item_handlers={checkpoint.STATE: ocp.StandardCheckpointHandler(),
                     checkpoint.EXTRA: ocp.JsonCheckpointHandler()})


@pytest.mark.parametrize("replica_parallel", [None, True])
def test_checkpoints_of_orbaxs_standard_handler_restore_both_ways(tmp_path, caplog,
                                                                  replica_parallel):
  """A state with replicated, sharded and bfloat16 leaves: what orbax's standard handler wrote
  restores here bit for bit, and what this module writes (copying replicated arrays from one
  device by default, or orbax's replica-parallel way) restores with the standard handler."""
  import orbax.checkpoint as ocp

  mesh = sharding.make_mesh((4, 2))
  state = _state(mesh)
  abstract = _abstract(state)
  with _standard_manager(tmp_path / "standard") as manager:
    manager.save(3, args=ocp.args.Composite(**{
        checkpoint.STATE: ocp.args.StandardSave(state),
        checkpoint.EXTRA: ocp.args.JsonSave({"position": 5})}))
  with checkpoint.Checkpointer(tmp_path / "standard", replica_parallel=replica_parallel) as ckpt:
    got, extra = ckpt.restore(3, abstract)
  assert extra == {"position": 5}
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(state), strict=True):
    assert a.sharding == b.sharding
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  with caplog.at_level("INFO"), checkpoint.Checkpointer(
      tmp_path / "ours", async_save=False, replica_parallel=replica_parallel) as ckpt:
    ckpt.save(3, state, {"position": 5})
  # orbax logs the copy's options (None: one process here, so no replica-parallel copy).
  want = f"use_replica_parallel={replica_parallel is True}"
  assert any(want in r.getMessage() for r in caplog.records), [
      r.getMessage() for r in caplog.records if "use_replica_parallel" in r.getMessage()]
  with _standard_manager(tmp_path / "ours") as manager:
    back = manager.restore(3, args=ocp.args.Composite(**{
        checkpoint.STATE: ocp.args.StandardRestore(abstract),
        checkpoint.EXTRA: ocp.args.JsonRestore()}))
  assert back[checkpoint.EXTRA] == {"position": 5}
  for a, b in zip(jax.tree.leaves(back[checkpoint.STATE]), jax.tree.leaves(state), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

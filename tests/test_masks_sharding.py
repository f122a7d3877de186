"""Masks under sharding (8 fake CPU devices): same masks, scalar all-reduces only."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mvp_jax import masks, pruning, sharding

COLLECTIVES = r"\b(all-gather|all-reduce|collective-permute|all-to-all|reduce-scatter)"


@pytest.fixture(scope="module")
def mesh():
  assert len(jax.devices()) == 8, "tests/conftest.py should give 8 fake CPU devices"
  # Auto axes: jax.make_mesh would default to Explicit axes in this JAX version.
  return Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))


def _scores(kind):
  shapes = [(16, 24), (24, 16), (8, 12)]
  if kind == "ties":  # constant init: every tie is resolved by the index search
    return [jnp.zeros(s, jnp.float32) for s in shapes]
  keys = jax.random.split(jax.random.PRNGKey(0), len(shapes))
  return [jax.random.normal(k, s) for k, s in zip(keys, shapes, strict=True)]


SPECS = [P(None, "model"), P("data", "model"), P("model", None)]


@pytest.mark.parametrize("joint", [False, True])
@pytest.mark.parametrize("kind", ["normal", "ties"])
def test_sharded_masks_equal_single_device(mesh, kind, joint, monkeypatch):
  # joint: every block's tie rule (and soft movement's minimum retention) behind one cond, as
  # off CPU (`masks.default_joint_conds`).
  monkeypatch.setattr(masks, "default_joint_conds", lambda: joint)
  scores = _scores(kind)
  sharded = [
    jax.device_put(s, NamedSharding(mesh, sp)) for s, sp in zip(scores, SPECS, strict=True)
  ]
  glob = jax.jit(lambda ss, level: masks.global_topk_masks(ss, level))
  loc = jax.jit(lambda ss, level: masks.local_topk_masks(ss, level, shared_loop=True))
  soft = jax.jit(lambda ss, tau: masks.sigmoid_threshold_masks([s - 6.0 for s in ss], tau))
  for fn, level in ((glob, 0.3), (loc, 0.3), (soft, 0.1)):
    want = fn(scores, level)
    got = fn(sharded, level)
    for w, g, s in zip(want, got, sharded, strict=True):
      np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
      assert g.sharding.is_equivalent_to(s.sharding, g.ndim)  # masks follow their scores


def _compiled_text(fn, *args) -> str:
  # A fresh wrapper, so that the program is traced again (jit caches traces per function, and
  # the one-bit test changes the default radix width under it).
  return jax.jit(lambda *a: fn(*a)).lower(*args).compile().as_text()


def _collectives(fn, *args):
  return set(re.findall(COLLECTIVES, _compiled_text(fn, *args)))


_OPERANDS = re.compile(r"= \(?([^=]*?)\)? " + COLLECTIVES[2:] + r"\(")


def _collective_operands(fn, *args) -> list[tuple[str, tuple[int, ...]]]:
  """(dtype, shape) of every array a collective of the compiled ``fn`` moves."""
  text = _compiled_text(fn, *args)
  out = []
  for m in _OPERANDS.finditer(text):
    for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", m.group(1)):
      out.append((dtype, tuple(int(d) for d in dims.split(",") if d)))
  assert out, "expected collectives in a sharded search"
  return out


def _binarizers(scores):
  grad = jax.grad(
    lambda ss: sum(
      jnp.sum(m * s) for m, s in zip(masks.global_topk_masks(ss, 0.3), ss, strict=True)
    )
  )
  yield masks.global_topk_masks, (scores, 0.3)
  yield (lambda s, lv: masks.topk_mask(s, lv)), (scores[1], 0.3)
  for shared in (True, False):
    yield (lambda ss, lv, shared=shared: masks.local_topk_masks(ss, lv, shared_loop=shared),
           (scores, 0.3))
  yield grad, (scores,)


def _sharded_scores(mesh):
  return [
    jax.device_put(s, NamedSharding(mesh, sp))
    for s, sp in zip(_scores("normal"), SPECS, strict=True)
  ]


def _search(ss, k, bits=None):
  return masks.kth_largest_key([masks.ordered_key(s) for s in ss], k, bits=bits)


def test_one_bit_search_only_all_reduces(mesh, monkeypatch):
  # The one-bit bisection with one shared cond (the defaults off CPU): scalar count
  # all-reduces, nothing else.
  monkeypatch.setattr(masks, "default_radix_bits", lambda: 1)
  monkeypatch.setattr(masks, "default_joint_conds", lambda: True)
  scores = _sharded_scores(mesh)
  assert _collectives(_search, scores, jnp.int32(100)) == {"all-reduce"}
  # The whole binarizer, tie-breaking branch included, and its straight-through gradient.
  for fn, args in _binarizers(scores):
    assert _collectives(fn, *args) <= {"all-reduce"}


def test_two_bit_search_moves_counts_only(mesh):
  # The CPU default counts three candidates in one variadic reduction, which the partitioner
  # combines by all-gathering partial counts: integers of at most rows x shards entries, never
  # the float32 scores, their uint32 keys or the masks.
  assert masks.default_radix_bits() == 2
  scores = _sharded_scores(mesh)
  bound = max(s.shape[0] for s in scores) * len(jax.devices())
  for fn, args in [(_search, (scores, jnp.int32(100))), *_binarizers(scores)]:
    for dtype, shape in _collective_operands(fn, *args):
      assert dtype in ("u16", "s32"), (dtype, shape)
      assert int(np.prod(shape)) <= bound, (dtype, shape)


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_search_bits_agree_sharded(mesh, bits):
  scores = _sharded_scores(mesh)
  sizes = sum(int(s.size) for s in scores)
  f = jax.jit(_search, static_argnums=2)
  for k in (0, 1, 7, sizes // 3, sizes - 1, sizes):
    want = f(_scores("normal"), jnp.int32(k), 1)
    assert int(f(scores, jnp.int32(k), bits)) == int(want), (bits, k)


def test_apply_masks_on_sharded_tree(mesh):
  params = {
    "encoder": {
      "layer": {
        str(i): {
          "intermediate": {"dense": {"kernel": jax.random.normal(jax.random.PRNGKey(i), (16, 32))}}
        }
        for i in range(2)
      }
    }
  }
  spec = pruning.PruningSpec(
    scope="global", include=(r"kernel$",), score_init="uniform", score_scale=1.0
  )
  scores = pruning.init_scores(params, spec, jax.random.PRNGKey(0))
  shard = lambda t: jax.tree.map(
    lambda x: jax.device_put(x, NamedSharding(mesh, P("data", "model"))), t
  )
  f = jax.jit(pruning.apply_masks, static_argnums=3)
  want = f(params, scores, 0.25, spec)
  got = f(shard(params), shard(scores), 0.25, spec)
  assert jax.tree.all(
    jax.tree.map(lambda a, b: bool((np.asarray(a) == np.asarray(b)).all()), got, want)
  )
  # Only integer counts cross devices: no weights, scores, keys or masks.
  ops = _collective_operands(
    lambda p, s: pruning.apply_masks(p, s, 0.25, spec), shard(params), shard(scores)
  )
  assert {dtype for dtype, _ in ops} <= {"u16", "s32"}, ops


def _tensor_parallel_bert(layers: int = 3):
  """Params shaped like a BERT encoder's six kernels per layer (hidden 16, FFN 32)."""
  names = ["attention/self/query", "attention/self/key", "attention/self/value",
           "attention/output/dense", "intermediate/dense", "output/dense"]
  shapes = [(16, 16)] * 4 + [(16, 32), (32, 16)]
  params, rng = {}, jax.random.PRNGKey(0)
  for i in range(layers):
    for name, shape in zip(names, shapes, strict=True):
      rng, key = jax.random.split(rng)
      node = params.setdefault("encoder", {}).setdefault("layer", {}).setdefault(str(i), {})
      for part in name.split("/"):
        node = node.setdefault(part, {})
      node["kernel"] = jax.random.normal(key, shape)
  return params


@pytest.mark.parametrize("scope", ["local", "global"])
def test_stacked_search_under_tensor_parallel_rules(mesh, scope):
  # pruning.stack_keys stacks each kernel's copies across layers; under the Megatron rules
  # those share a sharding, so the stacked search moves only counts, as the unstacked one does,
  # and the masks are the same.
  params = _tensor_parallel_bert()
  base = pruning.PruningSpec(scope=scope, score_init="uniform", score_scale=1.0)
  stacked = pruning.PruningSpec(scope=scope, score_init="uniform", score_scale=1.0,
                                stack_search=True)
  scores = pruning.init_scores(params, base, jax.random.PRNGKey(1))
  put = lambda t: jax.device_put(  # noqa: E731
    t, sharding.tree_shardings(t, mesh, sharding.BERT_TENSOR_PARALLEL_RULES)
  )
  params, scores = put(params), put(scores)
  f = jax.jit(pruning.compute_masks, static_argnums=3)
  want, got = f(params, scores, 0.2, base), f(params, scores, 0.2, stacked)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool((np.asarray(a) == np.asarray(b)).all()),
                                   got, want))
  ops = _collective_operands(lambda p, s: pruning.compute_masks(p, s, 0.2, stacked),
                             params, scores)
  assert {dtype for dtype, _ in ops} <= {"u16", "s32"}, ops
  # The check can fail: one stack for all same-shaped matrices mixes column- and row-split
  # kernels, and the partitioner moves scores (or their keys) between devices to build it.
  mixed = _collective_operands(
    lambda ss: masks.local_topk_masks(ss, 0.2, stack_keys=["all"] * len(ss)),
    jax.tree.leaves(scores))
  assert {dtype for dtype, _ in mixed} - {"u16", "s32"}, mixed

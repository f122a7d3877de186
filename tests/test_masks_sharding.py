"""Masks under sharding (8 fake CPU devices): same masks, scalar all-reduces only."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mvp_jax import masks, pruning

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


@pytest.mark.parametrize("kind", ["normal", "ties"])
def test_sharded_masks_equal_single_device(mesh, kind):
  scores = _scores(kind)
  sharded = [
    jax.device_put(s, NamedSharding(mesh, sp)) for s, sp in zip(scores, SPECS, strict=True)
  ]
  glob = jax.jit(masks.global_topk_masks)
  loc = jax.jit(lambda ss, level: masks.local_topk_masks(ss, level, shared_loop=True))
  soft = jax.jit(lambda ss, tau: [masks.sigmoid_threshold_mask(s - 6.0, tau) for s in ss])
  for fn, level in ((glob, 0.3), (loc, 0.3), (soft, 0.1)):
    want = fn(scores, level)
    got = fn(sharded, level)
    for w, g, s in zip(want, got, sharded, strict=True):
      np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
      assert g.sharding.is_equivalent_to(s.sharding, g.ndim)  # masks follow their scores


def _collectives(fn, *args):
  return set(re.findall(COLLECTIVES, jax.jit(fn).lower(*args).compile().as_text()))


def test_threshold_search_only_all_reduces(mesh):
  scores = [
    jax.device_put(s, NamedSharding(mesh, sp))
    for s, sp in zip(_scores("normal"), SPECS, strict=True)
  ]
  keys = lambda ss: [masks.ordered_key(s) for s in ss]
  search = lambda ss, k: masks.kth_largest_key(keys(ss), k)
  assert _collectives(search, scores, jnp.int32(100)) == {"all-reduce"}
  # The whole binarizer, tie-breaking branch included, and its straight-through gradient.
  assert _collectives(masks.global_topk_masks, scores, 0.3) == {"all-reduce"}
  assert _collectives(lambda s, lv: masks.topk_mask(s, lv), scores[1], 0.3) == {"all-reduce"}
  for shared in (True, False):
    local = lambda ss, lv, shared=shared: masks.local_topk_masks(ss, lv, shared_loop=shared)
    assert _collectives(local, scores, 0.3) == {"all-reduce"}
  grad = jax.grad(
    lambda ss: sum(
      jnp.sum(m * s) for m, s in zip(masks.global_topk_masks(ss, 0.3), ss, strict=True)
    )
  )
  assert _collectives(grad, scores) <= {"all-reduce"}


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
  text = f.lower(shard(params), shard(scores), 0.25, spec).compile().as_text()
  assert "all-gather" not in text

"""PruningSpec, score init, apply/compute/fold masks on parameter trees, remaining weights."""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _oracles import keep_count as oracle_keep_count
from _oracles import topk as oracle_topk
from flax.core import FrozenDict

from mvp_jax import masks, pruning

KERNELS = (
  "attention/self/query",
  "attention/self/key",
  "attention/self/value",
  "attention/output/dense",
  "intermediate/dense",
  "output/dense",
)


def bert_tree(layers=2, hidden=8, ffn=16, make=np.ones):
  """A BERT-shaped param tree with HF Flax names; ``make(shape)`` builds each leaf."""

  def dense(i, o):
    return {"kernel": make((i, o)), "bias": make((o,))}

  def ln():
    return {"scale": make((hidden,)), "bias": make((hidden,))}

  layer = lambda: {
    "attention": {
      "self": {n: dense(hidden, hidden) for n in ("query", "key", "value")},
      "output": {"dense": dense(hidden, hidden), "LayerNorm": ln()},
    },
    "intermediate": {"dense": dense(hidden, ffn)},
    "output": {"dense": dense(ffn, hidden), "LayerNorm": ln()},
  }
  return {
    "bert": {
      "embeddings": {"word_embeddings": {"embedding": make((30, hidden))}, "LayerNorm": ln()},
      "encoder": {"layer": {str(i): layer() for i in range(layers)}},
      "pooler": {"dense": dense(hidden, hidden)},
    },
    "classifier": dense(hidden, 2),
  }


def random_tree(seed=0, layers=1, **kw):
  rng = np.random.default_rng(seed)
  return jax.tree.map(
    jnp.asarray,
    bert_tree(layers=layers, make=lambda s: rng.standard_normal(s).astype(np.float32), **kw),
  )


def flat(tree):
  return {
    "/".join(str(getattr(k, "key", k)) for k in kp): v
    for kp, v in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


# ------------------------------------------------------------------------------------------------
# Spec validation


def test_spec_is_hashable_and_normalised():
  spec = pruning.PruningSpec(method="topk", include=[r"kernel$"], exclude="pooler")
  assert spec.include == (r"kernel$",) and spec.exclude == ("pooler",)
  assert hash(spec) == hash(pruning.PruningSpec(include=(r"kernel$",), exclude=("pooler",)))
  assert pruning.PruningSpec().include == pruning.DEFAULT_INCLUDE


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"method": "movement"}, r"method='movement'.*topk"),
    ({"scope": "layer"}, r"scope='layer'.*local"),
    ({"score_init": "normal"}, r"score_init='normal'.*kaiming"),
    ({"method": "sigmoid_threshold", "scope": "global"}, r"global.*sigmoid_threshold"),
    ({"method": "l0", "scope": "global"}, r"global.*l0"),
    ({"include": ("(",)}, r"invalid regex"),
    ({"include": ()}, r"include is empty"),
    ({"score_scale": float("nan")}, r"score_scale"),
    ({"min_retention": 1.5}, r"min_retention"),
    ({"stack_search": "yes"}, r"stack_search='yes'"),
  ],
)
def test_spec_rejects_bad_values(kwargs, match):
  with pytest.raises(ValueError, match=match):
    pruning.PruningSpec(**kwargs)


# ------------------------------------------------------------------------------------------------
# Selection and scores


def test_default_selection_is_the_six_encoder_kernels():
  params = bert_tree(layers=3)
  paths = pruning.select_paths(params, pruning.PruningSpec())
  want = sorted(f"bert/encoder/layer/{i}/{k}/kernel" for i in range(3) for k in KERNELS)
  assert list(paths) == want


def test_selecting_nothing_is_a_clear_error():
  spec = pruning.PruningSpec(include=(r"decoder/",))
  with pytest.raises(ValueError, match=r"selects no parameter.*decoder/.*e\.g\. \['bert/"):
    pruning.select_paths(bert_tree(), spec)
  with pytest.raises(ValueError, match="selects no parameter"):
    pruning.init_scores(bert_tree(), spec)


def test_init_scores():
  params = bert_tree(hidden=8, ffn=32)
  spec = pruning.PruningSpec(score_scale=2.197)
  scores = pruning.init_scores(params, spec)
  fs = flat(scores)
  assert sorted(fs) == list(pruning.select_paths(params, spec))
  assert all(
    v.dtype == jnp.float32 and (np.asarray(v) == np.float32(2.197)).all() for v in fs.values()
  )
  assert fs["bert/encoder/layer/0/intermediate/dense/kernel"].shape == (8, 32)
  uni = flat(
    pruning.init_scores(
      params, pruning.PruningSpec(score_init="uniform", score_scale=0.3), jax.random.PRNGKey(0)
    )
  )
  vals = np.concatenate([np.ravel(v) for v in uni.values()])
  assert vals.min() >= -0.3 and vals.max() <= 0.3 and vals.std() > 0.1
  kai = flat(
    pruning.init_scores(params, pruning.PruningSpec(score_init="kaiming"), jax.random.PRNGKey(0))
  )
  for v in kai.values():
    bound = 1 / math.sqrt(v.shape[0])  # fan_in of a Flax [in, out] kernel
    assert np.abs(np.asarray(v)).max() <= bound and np.abs(np.asarray(v)).max() > 0.5 * bound
  with pytest.raises(ValueError, match="needs an rng"):
    pruning.init_scores(params, pruning.PruningSpec(score_init="uniform"))
  assert pruning.init_scores(params, pruning.PruningSpec(method="magnitude")) == {}


def test_scores_mismatch_names_the_path():
  params = bert_tree()
  spec = pruning.PruningSpec()
  scores = pruning.init_scores(params, spec)
  del scores["bert"]["encoder"]["layer"]["1"]["output"]
  with pytest.raises(ValueError, match=r"no entry for selected param 'bert/encoder/layer/1/output"):
    pruning.apply_masks(params, scores, 0.5, spec)
  scores = pruning.init_scores(params, spec)
  scores["bert"]["encoder"]["layer"]["0"]["intermediate"]["dense"]["kernel"] = jnp.zeros((3, 3))
  with pytest.raises(ValueError, match=r"layer/0/intermediate/dense/kernel'\] has shape \(3, 3\)"):
    pruning.compute_masks(params, scores, 0.5, spec)
  scores = pruning.init_scores(params, spec)
  scores["classifier"] = {"kernel": jnp.zeros((8, 2))}
  with pytest.raises(ValueError, match=r"'classifier/kernel', which the spec does not select"):
    pruning.apply_masks(params, scores, 0.5, spec)


@pytest.mark.parametrize("method, level", [("topk", 1.5), ("topk", -0.1), ("magnitude", 2.0)])
def test_level_out_of_range(method, level):
  params = bert_tree()
  spec = pruning.PruningSpec(method=method)
  with pytest.raises(ValueError, match=r"level=.*must be in \[0, 1\]"):
    pruning.apply_masks(params, pruning.init_scores(params, spec), level, spec)


def test_bad_level_for_sigmoid():
  params = bert_tree()
  spec = pruning.PruningSpec(method="sigmoid_threshold")
  with pytest.raises(ValueError, match="scalar number"):
    pruning.compute_masks(params, pruning.init_scores(params, spec), None, spec)


# ------------------------------------------------------------------------------------------------
# Masks on trees


@pytest.mark.parametrize("stack", [False, True])
@pytest.mark.parametrize("scope", ["local", "global"])
@pytest.mark.parametrize("method", ["topk", "magnitude"])
def test_apply_masks_matches_oracle(method, scope, stack):
  # Three layers, so that stack_search puts each kernel's three copies in one stack.
  params = random_tree(seed=1, layers=3)
  spec = pruning.PruningSpec(method=method, scope=scope, score_init="uniform", score_scale=1.0,
                             stack_search=stack)
  scores = pruning.init_scores(params, spec, jax.random.PRNGKey(1))
  level = 0.37
  masked = jax.jit(pruning.apply_masks, static_argnums=3)(params, scores, level, spec)
  paths = pruning.select_paths(params, spec)
  fp, fm = flat(params), flat(masked)
  ranked = (
    [np.abs(fp[p]) for p in paths]
    if method == "magnitude"
    else [np.asarray(flat(scores)[p]) for p in paths]
  )
  if scope == "global":
    want = oracle_topk(ranked, oracle_keep_count(level, sum(r.size for r in ranked)))
  else:
    want = [oracle_topk([r], oracle_keep_count(level, r.size))[0] for r in ranked]
  for p, w in zip(paths, want, strict=True):
    np.testing.assert_array_equal(np.asarray(fm[p]), np.asarray(fp[p]) * w)
  for p in fp:
    if p not in paths:
      np.testing.assert_array_equal(np.asarray(fm[p]), np.asarray(fp[p]))
  got = flat(pruning.compute_masks(params, scores, level, spec))
  assert sorted(got) == list(paths)
  for p, w in zip(paths, want, strict=True):
    assert got[p].dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(got[p]).astype(bool), w)


def test_l0_apply_and_fold():
  params = random_tree(seed=2)
  spec = pruning.PruningSpec(method="l0", score_init="uniform", score_scale=3.0)
  scores = pruning.init_scores(params, spec, jax.random.PRNGKey(0))
  det = pruning.compute_masks(params, scores, None, spec)
  folded = flat(pruning.fold_masks(params, scores, None, spec))
  fp, fs, fd = flat(params), flat(scores), flat(det)
  for p in pruning.select_paths(params, spec):
    m = np.clip(np.asarray(jax.nn.sigmoid(fs[p])) * 1.2 - 0.1, 0, 1)
    np.testing.assert_allclose(fd[p], m, atol=1e-6)
    np.testing.assert_allclose(folded[p], np.asarray(fp[p]) * m, atol=1e-6)
  a = flat(pruning.apply_masks(params, scores, None, spec, rng=jax.random.PRNGKey(5)))
  b = flat(pruning.apply_masks(params, scores, None, spec, rng=jax.random.PRNGKey(6)))
  p = "bert/encoder/layer/0/intermediate/dense/kernel"
  assert not np.allclose(a[p], b[p])
  assert np.all(np.abs(np.asarray(a[p])) <= np.abs(np.asarray(fp[p])) + 1e-7)


def test_apply_masks_gradients_are_straight_through():
  params = random_tree(seed=3)
  spec = pruning.PruningSpec(method="topk")
  scores = jax.tree.map(
    lambda s: s + jax.random.normal(jax.random.PRNGKey(0), s.shape),
    pruning.init_scores(params, spec),
  )

  def loss(params, scores):
    m = pruning.apply_masks(params, scores, 0.3, spec)
    return sum(jnp.sum(x**2) for x in jax.tree.leaves(m)) / 2  # dL/dW' = W'

  gp, gs = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, scores)
  fm = flat(pruning.compute_masks(params, scores, 0.3, spec))
  fp, fgp, fgs = flat(params), flat(gp), flat(gs)
  for p, m in fm.items():
    wm = np.asarray(fp[p]) * np.asarray(m)
    np.testing.assert_allclose(fgs[p], wm * np.asarray(fp[p]), rtol=1e-6)
    np.testing.assert_allclose(fgp[p], wm * np.asarray(m), rtol=1e-6)
  np.testing.assert_allclose(fgp["classifier/kernel"], fp["classifier/kernel"], rtol=1e-6)


@pytest.mark.parametrize("method,scope,level", [
  ("topk", "local", 0.23), ("topk", "global", 0.23), ("magnitude", "local", 0.23),
  ("magnitude", "global", 0.23), ("sigmoid_threshold", "local", 0.4), ("l0", "local", None),
])
def test_eager_calls_equal_traced_ones_and_reuse_one_compilation(method, scope, level):
  # Called outside jit, the masks go through a cached compiled function; the values must be those
  # of the same call traced inside the user's jit, and a new level must not compile again.
  params = random_tree(seed=6, layers=2)
  spec = pruning.PruningSpec(method=method, scope=scope, score_init="uniform", score_scale=2.0)
  scores = pruning.init_scores(params, spec, jax.random.PRNGKey(2))
  rng = jax.random.PRNGKey(3) if method == "l0" else None
  traced = jax.jit(pruning.apply_masks, static_argnums=3)(params, scores, level, spec, rng)
  eager = pruning.apply_masks(params, scores, level, spec, rng)
  jax.tree.map(np.testing.assert_array_equal, eager, traced)
  traced_masks = jax.jit(pruning.compute_masks, static_argnums=3)(params, scores, level, spec)
  jax.tree.map(np.testing.assert_array_equal, pruning.compute_masks(params, scores, level, spec),
               traced_masks)
  compiled = pruning._flat_masks_compiled._cache_size()
  other = None if level is None else level / 2
  pruning.compute_masks(params, scores, other, spec)
  assert pruning._flat_masks_compiled._cache_size() == compiled


@pytest.mark.parametrize("method,scope,level", [
  ("topk", "local", 0.23), ("topk", "global", 0.3), ("magnitude", "global", 0.23),
  ("sigmoid_threshold", "local", 0.4), ("l0", "local", None),
])
def test_multiply_computed_masks_is_apply_masks_with_gradients(method, scope, level):
  # The trainer computes the step's masks once (to log churn) and multiplies them in: values and
  # gradients must be those of apply_masks, the sampled l0 training mask included.
  params = random_tree(seed=8, layers=2)
  spec = pruning.PruningSpec(method=method, scope=scope, score_init="uniform", score_scale=2.0)
  scores = pruning.init_scores(params, spec, jax.random.PRNGKey(4))
  rng = jax.random.PRNGKey(5) if method == "l0" else None

  def loss(apply, p, s):
    out = apply(p, s)
    return sum(jnp.sum(jnp.sin(x) * (i + 1)) for i, x in enumerate(jax.tree.leaves(out)))

  def one(p, s):
    return pruning.apply_masks(p, s, level, spec, rng)

  def two(p, s):
    return pruning.multiply_masks(p, pruning.compute_masks(p, s, level, spec, rng))

  jax.tree.map(np.testing.assert_array_equal, jax.jit(two)(params, scores), one(params, scores))
  g1 = jax.jit(jax.grad(functools.partial(loss, one), argnums=(0, 1)))(params, scores)
  g2 = jax.jit(jax.grad(functools.partial(loss, two), argnums=(0, 1)))(params, scores)
  jax.tree.map(np.testing.assert_array_equal, g2, g1)
  if method == "l0":  # the key gives the sampled mask, not the deterministic one
    sampled = jax.tree.leaves(pruning.compute_masks(params, scores, None, spec, rng))
    fixed = jax.tree.leaves(pruning.compute_masks(params, scores, None, spec))
    assert not all(np.array_equal(a, b) for a, b in zip(sampled, fixed, strict=True))


def test_multiply_masks_refuses_masks_that_do_not_fit():
  params = random_tree(seed=9, layers=1)
  spec = pruning.PruningSpec()
  masks = pruning.compute_masks(params, pruning.init_scores(params, spec), 0.5, spec)
  with pytest.raises(ValueError, match="names no leaf"):
    pruning.multiply_masks({"classifier": params["classifier"]}, masks)
  with pytest.raises(ValueError, match="has shape"):
    pruning.multiply_masks(random_tree(seed=9, layers=1, hidden=6, ffn=12), masks)


def test_frozendict_in_frozendict_out():
  params = FrozenDict(random_tree(seed=4))
  spec = pruning.PruningSpec()
  scores = pruning.init_scores(params, spec)
  out = pruning.apply_masks(params, scores, 1.0, spec)
  assert isinstance(out, FrozenDict)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), out, params))
  out = pruning.apply_masks(params, scores, 0.0, spec)
  assert (
    float(jnp.abs(out["bert"]["encoder"]["layer"]["0"]["output"]["dense"]["kernel"]).sum()) == 0
  )


# ------------------------------------------------------------------------------------------------
# Remaining weights


def test_remaining_weights_small_tree():
  params = bert_tree(layers=1, hidden=4, ffn=8)
  spec = pruning.PruningSpec()
  paths = pruning.select_paths(params, spec)
  masks_tree = pruning.compute_masks(params, pruning.init_scores(params, spec), 0.5, spec)
  out = pruning.remaining_weights(params, masks_tree)
  kernels = 4 * 16 + 2 * 32
  other_encoder = 4 * 4 + 8 + 4 + 2 * 2 * 4  # q,k,v,o biases, FFN biases, 2 LayerNorms
  assert out["total"] == kernels + other_encoder
  assert out["kept"] == kernels // 2 + other_encoder
  assert out["paper"] == pytest.approx(out["kept"] / out["total"])
  assert out["plain"] == pytest.approx(0.5)
  assert set(out["per_leaf"]) == set(paths) and all(v == 0.5 for v in out["per_leaf"].values())
  # l0: continuous masks count where > 0.
  l0 = {
    p: jnp.where(jnp.arange(math.prod(s.shape)).reshape(s.shape) % 4 == 0, 0.0, 0.3)
    for p, s in ((p, flat(params)[p]) for p in paths)
  }
  assert pruning.remaining_weights(params, nest(l0))["plain"] == pytest.approx(0.75)
  with pytest.raises(ValueError, match="no matching leaf"):
    pruning.remaining_weights(params, {"nope": jnp.ones(3)})


def nest(flat_items):
  """{'a/b/c': v} -> {'a': {'b': {'c': v}}}."""
  root = {}
  for path, v in flat_items.items():
    *head, last = path.split("/")
    node = root
    for k in head:
      node = node.setdefault(k, {})
    node[last] = v
  return root


@pytest.mark.parametrize("level, paper_pct", [(0.10, 10.127), (0.03, 3.137)])
def test_remaining_weights_bert_base_paper_rule(level, paper_pct):
  # Shapes only for the params (no memory); one real mask per kernel shape, shared by all layers.
  params = bert_tree(
    layers=12, hidden=768, ffn=3072, make=lambda s: jax.ShapeDtypeStruct(s, jnp.float32)
  )
  by_shape = {
    shape: np.asarray(masks.topk_mask(jax.random.normal(jax.random.PRNGKey(0), shape), level))
    for shape in ((768, 768), (768, 3072), (3072, 768))
  }
  paths = pruning.select_paths(params, pruning.PruningSpec())
  assert len(paths) == 72
  masks_tree = nest({p: by_shape[flat(params)[p].shape] for p in paths})
  out = pruning.remaining_weights(params, masks_tree)
  assert out["total"] == 85_054_464
  assert round(100 * out["paper"], 3) == paper_pct
  kept_kernels = 12 * (4 * int(level * 768 * 768) + 2 * int(level * 768 * 3072))
  assert out["kept"] == kept_kernels + 82_944 + 36_864
  assert out["plain"] == pytest.approx(kept_kernels / 84_934_656)


def test_stack_keys_join_one_kernel_across_layers():
  paths = pruning.select_paths(bert_tree(layers=12), pruning.PruningSpec())
  keys = pruning.stack_keys(paths)
  assert len(set(keys)) == 6  # the six kernels, each over its 12 layers
  assert "bert/encoder/layer/#/attention/self/query/kernel" in keys
  assert len({k for k, p in zip(keys, paths, strict=True) if "/11/" in p}) == 6


def test_regex_anchor_semantics_are_search():
  params = bert_tree()
  spec = pruning.PruningSpec(include=(r"query/kernel",), exclude=(r"layer/1/",))
  assert pruning.select_paths(params, spec) == ("bert/encoder/layer/0/attention/self/query/kernel",)
  assert all(re.search(r"query", p) for p in pruning.select_paths(params, spec))


@pytest.mark.parametrize("seed", range(3))
def test_mask_change_is_the_mean_absolute_difference(seed):
  rng = np.random.default_rng(seed)
  shapes = [(3, 5), (7,), (2, 2, 4)]
  a = {f"m{i}": jnp.asarray(rng.integers(0, 2, s), jnp.float32) for i, s in enumerate(shapes)}
  b = {f"m{i}": jnp.asarray(rng.random(s), jnp.float32) for i, s in enumerate(shapes)}
  flat_a = np.concatenate([np.ravel(a[k]) for k in sorted(a)])
  flat_b = np.concatenate([np.ravel(b[k]) for k in sorted(b)])
  assert float(pruning.mask_change(a, b)) == pytest.approx(np.abs(flat_a - flat_b).mean(), rel=1e-6)
  assert float(jax.jit(pruning.mask_change)(a, a)) == 0.0
  assert float(pruning.mask_change({}, {})) == 0.0


def test_mask_change_refuses_different_trees():
  with pytest.raises(ValueError, match="structure or shapes"):
    pruning.mask_change({"a": jnp.ones(3)}, {"a": jnp.ones(4)})
  with pytest.raises(ValueError, match="structure or shapes"):
    pruning.mask_change({"a": jnp.ones(3)}, {"b": jnp.ones(3)})

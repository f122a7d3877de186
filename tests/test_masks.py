"""Binarizers: exact counts and tie order against a sort oracle, gradients, no recompiles."""

from fractions import Fraction

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _bench import load_benchmark
from _oracles import keep_count as oracle_keep_count
from _oracles import topk as oracle_topk
from hypothesis import given, settings

from mvp_jax import masks

# The jaxpr walkers and the joint-conds switch that benchmarks/step.py counts conds with.
_step = load_benchmark("step")

SETTINGS = settings(max_examples=60, deadline=None)


# Shapes come from a fixed pool (tiny, 1x1, odd, 1-D, 3-D) so that jit compiles each only once:
# the values, tie patterns and levels vary freely (levels are traced, so they never recompile).
SHAPES = [(1, 1), (1,), (7,), (3, 5), (2, 3, 4), (9, 7), (4, 1), (16, 33)]
LEAF_SETS = [[(1, 1)], [(3, 5), (1,)], [(9, 7), (2, 3, 4), (4, 1)], [(16, 33), (7,)]]


@st.composite
def score_arrays(draw, leaf_sets=None):
  """Float32 arrays; values continuous, from a small set (many ties, +-0), or all equal."""
  shapes = draw(st.sampled_from(leaf_sets or [[s] for s in SHAPES]))
  kind = draw(st.sampled_from(["normal", "few", "equal"]))
  rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
  if kind == "normal":
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]
  if kind == "few":
    values = np.array([-1.0, -0.0, 0.0, 0.5, 2.0], np.float32)
    return [rng.choice(values, size=s) for s in shapes]
  value = np.float32(rng.standard_normal())
  return [np.full(s, value, np.float32) for s in shapes]


_topk = jax.jit(masks.topk_mask)
_global_topk = jax.jit(masks.global_topk_masks)
_magnitude = jax.jit(masks.magnitude_mask)
_global_magnitude = jax.jit(masks.global_magnitude_masks)
_sigmoid = jax.jit(masks.sigmoid_threshold_mask)


levels = st.one_of(st.sampled_from([0.0, 1.0, 0.5, 0.1, 0.7, 1e-3]), st.floats(0.0, 1.0))


def _check_topk(arrays, got, k):
  """Exact count, every kept >= every dropped, and the oracle's deterministic tie order."""
  got = [np.asarray(g) for g in got]
  assert all(set(np.unique(g)) <= {0.0, 1.0} for g in got)
  assert sum(int(g.sum()) for g in got) == k
  flat = np.concatenate([a.ravel() for a in arrays])
  keep = np.concatenate([g.ravel() for g in got]).astype(bool)
  if keep.any() and (~keep).any():
    assert flat[keep].min() >= flat[~keep].max()
  for g, want in zip(got, oracle_topk(arrays, k), strict=True):
    np.testing.assert_array_equal(g.astype(bool), want)


# ------------------------------------------------------------------------------------------------
# Counts


@given(level=levels, n=st.one_of(st.integers(0, 400), st.integers(0, 2**31 - 1)))
@settings(max_examples=200, deadline=None)
def test_keep_count_is_exact_floor(level, n):
  want = int(Fraction(float(np.float32(level))) * n)
  assert int(masks.keep_count(level, n)) == want


def test_keep_count_edges():
  assert int(masks.keep_count(1.0, 85_054_464)) == 85_054_464
  assert int(masks.keep_count(0.0, 85_054_464)) == 0
  assert int(masks.keep_count(0.5, 2**31 - 1)) == (2**31 - 1) // 2
  # float32 product rounding would be off here (ulp is 8 at 85M): the exact floor is not.
  v = float(np.float32(0.3))
  assert int(masks.keep_count(v, 85_054_464)) == int(Fraction(v) * 85_054_464)
  # BERT-base shapes at the paper levels agree with Python's int(v * n).
  for v in (0.1, 0.03, 0.15):
    for n in (768 * 768, 768 * 3072):
      assert int(masks.keep_count(v, n)) == int(v * n)
  # Traced levels are clamped, NaN counts as 0.
  f = jax.jit(masks.keep_count, static_argnums=1)
  assert int(f(1.5, 10)) == 10 and int(f(-1.0, 10)) == 0 and int(f(jnp.nan, 10)) == 0


def test_ordered_key_preserves_order():
  # (Denormals are left out: XLA on CPU flushes them to zero, so they tie with 0 there.)
  x = np.array([-np.inf, -3e38, -1.0, -1e-30, -0.0, 0.0, 1e-30, 1.0, 3e38, np.inf], np.float32)
  keys = np.asarray(masks.ordered_key(jnp.asarray(x))).astype(np.int64)
  assert keys[4] == keys[5]  # -0.0 == +0.0
  assert (np.diff(np.delete(keys, 4)) > 0).all()



@pytest.mark.parametrize(
  "shape", [(), (1,), (7,), (3, 1), (5, 300), (2, 3, 255), (1, 2**16 - 1), (1, 2**16), (2**17,)]
)
def test_count_true_is_exact(shape):
  # Last axes at and just below the uint16 limit: full rows of True must not wrap around.
  rng = np.random.default_rng(sum(shape) + len(shape))
  for x in (np.ones(shape, bool), rng.random(shape) < 0.3, np.zeros(shape, bool)):
    got = jax.jit(masks.count_true)(jnp.asarray(x))
    assert got.dtype == jnp.int32 and int(got) == int(np.count_nonzero(x))

@pytest.mark.parametrize("shape", [(), (7,), (5, 300), (2, 3, 255), (1, 2**16), (2**17,)])
def test_count_true_many_is_exact(shape):
  # Several counts from one variadic reduction: each equals its own count, full rows included.
  rng = np.random.default_rng(len(shape))
  xs = [np.ones(shape, bool), rng.random(shape) < 0.3, np.zeros(shape, bool)]
  xs.append(rng.random(shape) < 0.9)
  got = jax.jit(masks.count_true_many)([jnp.asarray(x) for x in xs])
  assert got.dtype == jnp.int32 and got.shape == (len(xs),)
  assert [int(c) for c in got] == [int(np.count_nonzero(x)) for x in xs]
  with pytest.raises(ValueError, match="different shapes"):
    masks.count_true_many([jnp.ones((2, 3), bool), jnp.ones((3, 2), bool)])


_kth = jax.jit(masks.kth_largest_key, static_argnums=(2, 3))


@given(arrays=score_arrays(LEAF_SETS), frac=st.floats(0.0, 1.0))
@SETTINGS
def test_kth_largest_key_any_bits_matches_sort(arrays, frac):
  # Every radix width gives the k-th largest key of a sort, ties and k = 0 / k = n included.
  keys = [masks.ordered_key(jnp.asarray(a)) for a in arrays]
  flat = np.sort(np.concatenate([np.asarray(x).ravel() for x in keys]))[::-1]
  k = int(frac * flat.size)
  want = 0xFFFFFFFF if k == 0 else int(flat[k - 1])
  for bits in (1, 2, 4):
    assert int(_kth(keys, jnp.int32(k), None, bits)) == want, bits
  with pytest.raises(ValueError, match="bits=3"):
    masks.kth_largest_key(keys, jnp.int32(k), bits=3)


# ------------------------------------------------------------------------------------------------
# Top-k against the sort oracle


@given(arrays=score_arrays(), level=levels)
@SETTINGS
def test_local_topk_matches_oracle(arrays, level):
  s = arrays[0]
  got = _topk(jnp.asarray(s), level)
  _check_topk([s], [got], oracle_keep_count(level, s.size))
  again = _topk(jnp.asarray(s), level)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(again))


@given(arrays=score_arrays(LEAF_SETS), level=levels)
@SETTINGS
def test_global_topk_matches_oracle(arrays, level):
  got = _global_topk([jnp.asarray(a) for a in arrays], level)
  _check_topk(arrays, got, oracle_keep_count(level, sum(a.size for a in arrays)))


_local_shared = jax.jit(lambda ss, lv: masks.local_topk_masks(ss, lv, shared_loop=True))
_local_separate = jax.jit(lambda ss, lv: masks.local_topk_masks(ss, lv, shared_loop=False))


@given(arrays=score_arrays(LEAF_SETS), level=levels)
@SETTINGS
def test_local_topk_over_many_matrices(arrays, level):
  # One shared search loop for all matrices (GPU/TPU default) or one loop each (CPU default).
  ss = [jnp.asarray(a) for a in arrays]
  shared, separate = _local_shared(ss, level), _local_separate(ss, level)
  for a, m1, m2 in zip(arrays, shared, separate, strict=True):
    _check_topk([a], [m1], oracle_keep_count(level, a.size))
    np.testing.assert_array_equal(np.asarray(m1), np.asarray(m2))


@given(arrays=score_arrays(LEAF_SETS), level=levels, scope=st.sampled_from(["local", "global"]))
@SETTINGS
def test_magnitude_matches_oracle(arrays, level, scope):
  ws = [jnp.asarray(a) for a in arrays]
  mags = [np.abs(a) for a in arrays]
  if scope == "global":
    got = _global_magnitude(ws, level)
    _check_topk(mags, got, oracle_keep_count(level, sum(a.size for a in arrays)))
  else:
    for w, m in zip(ws, mags, strict=True):
      _check_topk([m], [_magnitude(w, level)], oracle_keep_count(level, m.size))


# Repeated shapes, interleaved: stacks gather leaves that are not neighbours in leaf order.
STACK_SETS = [
  [(3, 5), (1,), (3, 5), (3, 5)],
  [(9, 7), (4, 1), (9, 7), (4, 1), (9, 7)],
  [(2, 3, 4), (2, 3, 4)],
  [(1, 1), (1, 1), (1, 1)],
]


def _stacked_fns(keys):
  keys = tuple(keys)
  return (
    jax.jit(lambda ss, lv: masks.local_topk_masks(ss, lv, stack_keys=keys)),
    jax.jit(lambda ss, lv: masks.global_topk_masks(ss, lv, stack_keys=keys)),
    jax.jit(lambda ws, lv: masks.local_magnitude_masks(ws, lv, stack_keys=keys)),
    jax.jit(lambda ws, lv: masks.global_magnitude_masks(ws, lv, stack_keys=keys)),
  )


_STACKED = {}


@given(arrays=score_arrays(STACK_SETS), level=levels, split=st.booleans())
@SETTINGS
def test_stacked_search_matches_oracle(arrays, level, split):
  # One key for all (every same-shaped leaf in one stack) or two alternating keys (two stacks
  # per shape, members interleaved): the masks are the oracle's, tie order included.
  keys = ["a" if i % 2 or not split else "b" for i in range(len(arrays))]
  shapes = tuple(a.shape for a in arrays)
  fns = _STACKED.setdefault((shapes, tuple(keys)), _stacked_fns(keys))
  local, glob, local_mag, global_mag = (f([jnp.asarray(a) for a in arrays], level) for f in fns)
  for a, m in zip(arrays, local, strict=True):
    _check_topk([a], [m], oracle_keep_count(level, a.size))
  total = sum(a.size for a in arrays)
  _check_topk(arrays, glob, oracle_keep_count(level, total))
  mags = [np.abs(a) for a in arrays]
  for a, m in zip(mags, local_mag, strict=True):
    _check_topk([a], [m], oracle_keep_count(level, a.size))
  _check_topk(mags, global_mag, oracle_keep_count(level, total))


def _first_loop(jaxpr):
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ("scan", "while"):
      return eqn
    for sub in _step.sub_jaxprs(eqn):
      if (found := _first_loop(sub)) is not None:
        return found
  return None


def _count_reductions(jaxpr, size: int) -> int:
  n = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ("reduce", "reduce_sum") and eqn.invars[0].aval.size >= size:
      n += 1
    n += sum(_count_reductions(sub, size) for sub in _step.sub_jaxprs(eqn))
  return n


def _search_reductions(fn, ss) -> int:
  """Reductions that read whole matrices or stacks of them (not the per-row partial counts) in
  one pass of the threshold search (the body of the program's first loop)."""
  loop = _first_loop(jax.make_jaxpr(fn)(ss).jaxpr)
  return sum(_count_reductions(sub, min(s.size for s in ss)) for sub in _step.sub_jaxprs(loop))


@pytest.mark.parametrize("bits", [1, 2])
def test_stacked_search_counts_each_block_once_per_pass(bits, monkeypatch):
  # The point of stacking: a pass of the search reduces each block once (a variadic reduce
  # for two bits), not each matrix. 12 matrices of two shapes, keyed by kind as
  # `pruning.stack_keys` keys six layers: 2 blocks, against 12 without stacking.
  monkeypatch.setattr(masks, "default_radix_bits", lambda: bits)
  ss = [jnp.ones(s) for s in [(8, 16), (16, 8)] * 6]
  kinds = ["up", "down"] * 6
  assert _search_reductions(lambda s: masks.local_topk_masks(s, 0.1, stack_keys=kinds), ss) == 2
  assert _search_reductions(lambda s: masks.global_topk_masks(s, 0.1, stack_keys=kinds), ss) == 2
  assert _search_reductions(lambda s: masks.local_topk_masks(s, 0.1, shared_loop=True), ss) == 12


def _conds(fn, ss, joint: bool) -> int:
  with _step.joint_conds(joint):  # a fresh wrapper: make_jaxpr caches traces per function
    return _step.unconditional_conds(jax.make_jaxpr(lambda s: fn(s))(ss).jaxpr)


def test_joint_conds_put_every_branch_behind_one():
  # Off CPU (`default_joint_conds`) an untied mask computation meets one cond, not one per
  # matrix: XLA's GPU runtime syncs the host on every conditional's predicate.
  ss = [jnp.ones(s) for s in [(8, 16), (16, 8)] * 6]
  kinds = ["up", "down"] * 6
  fns = {
    "local": lambda s: masks.local_topk_masks(s, 0.1, shared_loop=True),
    "global": lambda s: masks.global_topk_masks(s, 0.1),
    "magnitude": lambda s: masks.local_magnitude_masks(s, 0.1, shared_loop=True),
    "stacked": lambda s: masks.local_topk_masks(s, 0.1, stack_keys=kinds),
    "sigmoid": lambda s: masks.sigmoid_threshold_masks(s, 0.5),
  }
  per_block = {name: _conds(fn, ss, joint=False) for name, fn in fns.items()}
  assert per_block == {"local": 12, "global": 12, "magnitude": 12, "stacked": 2, "sigmoid": 12}
  assert {name: _conds(fn, ss, joint=True) for name, fn in fns.items()} == dict.fromkeys(fns, 1)
  # One matrix, or no minimum retention: nothing to share (and no cond at all for the latter).
  assert _conds(lambda s: masks.local_topk_masks(s[:1], 0.1, shared_loop=True), ss, True) == 1
  assert _conds(lambda s: masks.sigmoid_threshold_masks(s, 0.5, 0.0), ss, True) == 0


_JOINT_FNS = {
  joint: (
    jax.jit(lambda ss, lv: masks.local_topk_masks(ss, lv, shared_loop=True)),
    jax.jit(masks.global_topk_masks),
    jax.jit(lambda ws, lv: masks.local_magnitude_masks(ws, lv, shared_loop=True)),
    jax.jit(lambda ss, lv: masks.local_topk_masks(ss, lv, stack_keys=["k"] * len(ss))),
  )
  for joint in (False, True)
}


@given(arrays=score_arrays(LEAF_SETS + STACK_SETS), level=levels)
@SETTINGS
def test_joint_conds_same_masks(arrays, level):
  # Ties of every kind (partial in one matrix, in several, none): one shared cond gives the
  # per-block conds' masks, which are the oracle's.
  ss = [jnp.asarray(a) for a in arrays]
  got = {}
  for joint, fns in _JOINT_FNS.items():
    with _step.joint_conds(joint):
      got[joint] = [f(ss, level) for f in fns]
  for m_sep, m_joint in zip(got[False], got[True], strict=True):
    for a, b in zip(m_sep, m_joint, strict=True):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for a, m in zip(arrays, got[True][0], strict=True):
    _check_topk([a], [m], oracle_keep_count(level, a.size))
  _check_topk(arrays, got[True][1], oracle_keep_count(level, sum(a.size for a in arrays)))


def test_topk_large_ties_and_extremes():
  s = jnp.zeros((256, 3072))  # the constant-0 init: every score tied
  for level in (0.0, 0.1, 0.5, 1.0):
    m = np.asarray(_topk(s, level))
    k = oracle_keep_count(level, s.size)
    assert m.sum() == k
    assert m.ravel()[:k].all() and not m.ravel()[k:].any()  # first k in flat index order
  x = jnp.array([[np.inf, -np.inf, 3e38, -3e38, 0.0, -0.0]], jnp.float32)
  _check_topk([np.asarray(x)], [masks.topk_mask(x, 0.5)], 3)


# ------------------------------------------------------------------------------------------------
# Sigmoid threshold and L0


def _sigmoid_oracle(s, tau, min_retention=0.005):
  hard = np.asarray(jax.nn.sigmoid(jnp.asarray(s))) > np.float32(tau)
  n_min = int(min_retention * s.size) + 1 if min_retention > 0 else 0
  if hard.sum() < min(n_min, s.size):
    return oracle_topk([s], min(n_min, s.size))[0]
  return hard


@given(
  arrays=score_arrays(),
  tau=st.one_of(st.sampled_from([0.0, 0.1, 0.5, 0.99]), st.floats(0.0, 1.0)),
  shift=st.sampled_from([-6.0, -2.0, 0.0, 3.0]),
)
@SETTINGS
def test_sigmoid_threshold_matches_oracle(arrays, tau, shift):
  s = arrays[0] + np.float32(shift)
  got = np.asarray(_sigmoid(jnp.asarray(s), tau))
  np.testing.assert_array_equal(got.astype(bool), _sigmoid_oracle(s, tau))


def test_sigmoid_min_retention_rule():
  rng = np.random.default_rng(0)
  s = rng.standard_normal((40, 50)).astype(np.float32) - 8.0  # sigmoid < 0.01 everywhere
  got = np.asarray(masks.sigmoid_threshold_mask(jnp.asarray(s), 0.1))
  assert got.sum() == int(0.005 * s.size) + 1 == 11
  np.testing.assert_array_equal(got.astype(bool), _sigmoid_oracle(s, 0.1))
  # Enough survivors: the rule is not applied; tau = 0 keeps everything.
  assert np.asarray(masks.sigmoid_threshold_mask(jnp.asarray(s + 8.0), 0.5)).sum() > 11
  assert np.asarray(masks.sigmoid_threshold_mask(jnp.asarray(s + 8.0), 0.0)).all()
  # The rule can be switched off, and all-tied scores still give exactly n_min.
  assert np.asarray(masks.sigmoid_threshold_mask(jnp.asarray(s), 0.1, 0.0)).sum() == 0
  tied = np.asarray(masks.sigmoid_threshold_mask(jnp.full((40, 50), -9.0), 0.1))
  assert tied.sum() == 11 and tied.ravel()[:11].all()


_SIGMOID_MANY = {
  joint: jax.jit(lambda ss, tau: masks.sigmoid_threshold_masks(ss, tau)) for joint in (False, True)
}


@given(
  arrays=score_arrays(LEAF_SETS),
  tau=st.sampled_from([0.0, 0.1, 0.5, 0.99]),
  shifts=st.lists(st.sampled_from([-8.0, -2.0, 0.0, 3.0]), min_size=3, max_size=3),
)
@SETTINGS
def test_sigmoid_threshold_masks_joint_matches_oracle(arrays, tau, shifts):
  # Some matrices short of the minimum, some not: one shared cond or one per matrix, the
  # oracle's masks either way.
  ss = [a + np.float32(sh) for a, sh in zip(arrays, shifts, strict=False)]
  for joint, fn in _SIGMOID_MANY.items():
    with _step.joint_conds(joint):
      got = fn([jnp.asarray(s) for s in ss], tau)
    for s, m in zip(ss, got, strict=True):
      np.testing.assert_array_equal(np.asarray(m).astype(bool), _sigmoid_oracle(s, tau))


def test_l0_masks():
  s = jnp.linspace(-4.0, 4.0, 77).reshape(7, 11)
  det = np.asarray(masks.l0_mask(s))
  want = np.clip(1.0 / (1.0 + np.exp(-np.asarray(s, np.float64))) * 1.2 - 0.1, 0.0, 1.0)
  np.testing.assert_allclose(det, want, atol=1e-6)
  assert ((det > 0) & (det < 1)).any() and (det == 0).any() and (det == 1).any()
  a = np.asarray(masks.l0_mask(s, jax.random.PRNGKey(0)))
  b = np.asarray(masks.l0_mask(s, jax.random.PRNGKey(1)))
  assert a.min() >= 0.0 and a.max() <= 1.0 and b.min() >= 0.0 and b.max() <= 1.0
  assert not np.array_equal(a, b)
  np.testing.assert_array_equal(a, np.asarray(masks.l0_mask(s, jax.random.PRNGKey(0))))
  # Over many draws the gate is open more often for higher scores.
  many = jax.vmap(lambda k: masks.l0_mask(s, k))(jax.random.split(jax.random.PRNGKey(2), 400))
  rate = np.asarray((many > 0).mean(0)).ravel()
  assert rate[0] < 0.2 and rate[-1] > 0.9


# ------------------------------------------------------------------------------------------------
# Gradients


def _loss_terms():
  rng = np.random.default_rng(1)
  w = jnp.asarray(rng.standard_normal((6, 5)), jnp.float32)
  s = jnp.asarray(rng.standard_normal((6, 5)), jnp.float32)
  c = jnp.asarray(rng.standard_normal((6, 5)), jnp.float32)
  return w, s, c


def _loss(masked, c):
  return jnp.sum(masked * c) + 0.5 * jnp.sum(masked**2)  # dL/dW' = c + W'


@pytest.mark.parametrize(
  "binarize",
  [lambda s: masks.topk_mask(s, 0.4), lambda s: masks.sigmoid_threshold_mask(s, 0.5)],
  ids=["topk", "sigmoid_threshold"],
)
def test_straight_through_gradients(binarize):
  w, s, c = _loss_terms()
  gw, gs = jax.grad(lambda w, s: _loss(w * binarize(s), c), argnums=(0, 1))(w, s)
  m = binarize(s)
  assert 0 < float(m.sum()) < m.size
  upstream = c + w * m
  np.testing.assert_allclose(gs, upstream * w, rtol=1e-6)  # no mask factor
  np.testing.assert_allclose(gw, upstream * m, rtol=1e-6)
  assert np.abs(np.asarray(gs)[np.asarray(m) == 0]).min() > 0  # pruned scores still move


def test_global_topk_gradients():
  w, s, c = _loss_terms()
  ws, ss = [w, w[:2] * 2], [s, s[:2] + 0.3]

  def loss(ws, ss):
    ms = masks.global_topk_masks(ss, 0.3)
    return sum(_loss(wi * mi, c[: wi.shape[0]]) for wi, mi in zip(ws, ms, strict=True))

  gw, gs = jax.grad(loss, argnums=(0, 1))(ws, ss)
  ms = masks.global_topk_masks(ss, 0.3)
  for wi, mi, gwi, gsi in zip(ws, ms, gw, gs, strict=True):
    up = c[: wi.shape[0]] + wi * mi
    np.testing.assert_allclose(gsi, up * wi, rtol=1e-6)
    np.testing.assert_allclose(gwi, up * mi, rtol=1e-6)


def test_magnitude_gradient_only_through_w():
  w, _, c = _loss_terms()
  m = masks.magnitude_mask(w, 0.5)
  gw = jax.grad(lambda w: _loss(w * masks.magnitude_mask(w, 0.5), c))(w)
  np.testing.assert_allclose(gw, (c + w * m) * m, rtol=1e-6)
  assert float(jnp.abs(jax.grad(lambda w: masks.magnitude_mask(w, 0.5).sum())(w)).sum()) == 0.0


def test_l0_gradients_closed_form_and_finite_difference():
  w, s, c = _loss_terms()
  r_minus_l, beta = masks.L0_RIGHT - masks.L0_LEFT, masks.L0_BETA
  # Deterministic: M = clip(sigmoid(S) (r-l) + l, 0, 1).
  gs = jax.grad(lambda s: _loss(w * masks.l0_mask(s), c))(s)
  m = masks.l0_mask(s)
  sig = jax.nn.sigmoid(s)
  inside = (m > 0) & (m < 1)
  np.testing.assert_allclose(gs, (c + w * m) * w * r_minus_l * sig * (1 - sig) * inside, rtol=2e-5)
  # Sampled: dM/dS = (r-l)/beta s(1-s) on the open gates, with s recovered from M itself.
  key = jax.random.PRNGKey(3)
  gs = jax.grad(lambda s: _loss(w * masks.l0_mask(s, key), c))(s)
  m = masks.l0_mask(s, key)
  sbar = (m - masks.L0_LEFT) / r_minus_l
  inside = (m > 0) & (m < 1)
  want = (c + w * m) * w * r_minus_l / beta * sbar * (1 - sbar) * inside
  np.testing.assert_allclose(gs, want, rtol=1e-3, atol=1e-6)
  # And a central finite difference on one open gate.
  i = np.argwhere(np.asarray(inside))[0]
  eps = 1e-2
  f = lambda s: _loss(w * masks.l0_mask(s, key), c)
  fd = (f(s.at[tuple(i)].add(eps)) - f(s.at[tuple(i)].add(-eps))) / (2 * eps)
  np.testing.assert_allclose(float(gs[tuple(i)]), float(fd), rtol=2e-2)


# ------------------------------------------------------------------------------------------------
# Traced level: no recompiles


def test_changing_level_does_not_recompile():
  s = jax.random.normal(jax.random.PRNGKey(0), (32, 48))

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(s, level):
    return masks.topk_mask(s, level).sum(), masks.global_topk_masks([s, s.T], level)[1].sum()

  for level in np.linspace(1.0, 0.05, 12):
    local, glob = step(s, jnp.float32(level))
    assert int(local) == oracle_keep_count(level, s.size)
    assert int(glob) + int(step(s, jnp.float32(level))[0]) > 0


def test_target_platform_traces_the_gpu_choices_on_a_cpu_host_and_same_masks():
  # Compiling ahead of time for a GPU on a CPU host (benchmarks/gpu_program.py): the masks must
  # trace with the GPU's choices (one-bit passes, int32 counts, one shared cond, one loop), and
  # these give the same masks.
  ss = [jnp.asarray(np.random.default_rng(3).normal(size=s), jnp.float32)
        for s in [(8, 16), (16, 8)] * 3]
  assert masks.traced_platform() == "cpu"
  assert (masks.default_radix_bits(), masks.default_joint_conds()) == (2, False)
  fn = jax.jit(lambda s, lv: masks.local_topk_masks(s, lv))
  cpu = fn(ss, 0.3)
  cpu_jaxpr = jax.make_jaxpr(lambda s: masks.local_topk_masks(s, 0.3))(ss)
  with masks.target_platform("gpu"):
    assert masks.traced_platform() == "gpu"
    assert (masks.default_radix_bits(), masks.default_joint_conds()) == (1, True)
    with masks.target_platform("cpu"):  # nested blocks restore the outer one
      assert masks.traced_platform() == "cpu"
    assert masks.traced_platform() == "gpu"
    gpu = jax.jit(lambda s, lv: masks.local_topk_masks(s, lv))(ss, 0.3)
    gpu_jaxpr = jax.make_jaxpr(lambda s: masks.local_topk_masks(s, 0.3))(ss)
  assert masks.traced_platform() == "cpu"
  conds = [_step.unconditional_conds(j.jaxpr) for j in (cpu_jaxpr, gpu_jaxpr)]
  assert conds == [6, 1]
  assert "u16" in str(cpu_jaxpr) and "u16" not in str(gpu_jaxpr)  # narrow counts: CPU only
  for a, b in zip(cpu, gpu, strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(ValueError, match="unknown platform 'cuda'"):
    with masks.target_platform("cuda"):
      pass

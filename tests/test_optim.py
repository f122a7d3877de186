"""Tests of mvp_jax.optim against a hand-written Adam/AdamW (spec §4.1)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mvp_jax import optim

B1, B2 = 0.9, 0.999
LAYER = "bert/encoder/layer/0"


def _tree(rng: np.random.Generator):
  """A BERT-shaped trainable tree: one leaf of every group."""

  def r(*shape):
    return jnp.asarray(rng.normal(size=shape), jnp.float32)

  params = {
      "bert": {
          "embeddings": {"word_embeddings": {"embedding": r(5, 4)}},
          "encoder": {
              "layer": {
                  "0": {
                      "attention": {
                          "self": {"query": {"kernel": r(4, 4), "bias": r(4)}},
                          "output": {"LayerNorm": {"scale": r(4), "bias": r(4)}},
                      }
                  }
              }
          },
      },
      "classifier": {"kernel": r(4, 2), "bias": r(2)},
  }
  scores = {"bert": {"encoder": {"layer": {"0": {"attention": {"self": {"query": {
      "kernel": r(4, 4)}}}}}}}}
  return {"params": params, "scores": scores}


def _flat(tree):
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {optim.path_str(p): np.asarray(x) for p, x in leaves}


def _expected_group(path: str) -> str:
  if path.startswith("scores/"):
    return "scores"
  if "/embeddings/" in path:
    return "frozen"
  if path.endswith("/bias") or path.endswith("LayerNorm/scale"):
    return "no_decay"
  return "decay"


def _reference_updates(params, grads_seq, *, lr, score_lr, wd, eps, max_norm):
  """numpy Adam/AdamW in the textbook form; returns the parameter sequence after each step."""
  p = {k: v.astype(np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  history = []
  for t, grads in enumerate(grads_seq):
    g = {k: (np.zeros_like(x) if _expected_group(k) == "frozen" else x.astype(np.float64))
         for k, x in grads.items()}
    norm = np.sqrt(sum(np.sum(x**2) for x in g.values()))
    scale = min(1.0, max_norm / norm)
    new_p = {}
    for k in p:
      group = _expected_group(k)
      if group == "frozen":
        new_p[k] = p[k]
        continue
      gk = g[k] * scale
      m[k] = B1 * m[k] + (1 - B1) * gk
      v[k] = B2 * v[k] + (1 - B2) * gk**2
      mhat = m[k] / (1 - B1 ** (t + 1))
      vhat = v[k] / (1 - B2 ** (t + 1))
      step_lr = (score_lr if group == "scores" else lr)(t)
      upd = mhat / (np.sqrt(vhat) + eps)
      if group == "decay":
        upd = upd + wd * p[k]
      new_p[k] = p[k] - step_lr * upd
    p = new_p
    history.append(dict(p))
  return history


def _run(tx, tree, grads_seq):
  state = tx.init(tree)
  update = jax.jit(tx.update)
  out = []
  for grads in grads_seq:
    updates, state = update(grads, state, tree)
    tree = optax.apply_updates(tree, updates)
    out.append(tree)
  return out, state


def _linear(peak, warmup, total):
  def lr(t):
    if t < warmup:
      return peak * t / max(1, warmup)
    return peak * max(0.0, (total - t) / max(1, total - warmup))

  return lr


@pytest.mark.parametrize("max_norm,eps", [(1e6, 1e-8), (1.0, 0.5)])
def test_groups_match_reference_adamw(max_norm, eps):
  rng = np.random.default_rng(0)
  tree = _tree(rng)
  grads_seq = [jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), tree)
               for _ in range(2)]
  kw = dict(learning_rate=1e-2, score_learning_rate=5e-2, weight_decay=0.1, warmup_steps=1,
            total_steps=4)
  tx = optim.make_optimizer(tree, **kw, max_grad_norm=max_norm, adam_eps=eps)
  got, _ = _run(tx, tree, grads_seq)
  ref = _reference_updates(
      _flat(tree), [_flat(g) for g in grads_seq], lr=_linear(1e-2, 1, 4),
      score_lr=_linear(5e-2, 1, 4), wd=0.1, eps=eps, max_norm=max_norm)
  init = _flat(tree)
  for step in range(2):
    flat = _flat(got[step])
    for path, value in flat.items():
      np.testing.assert_allclose(value, ref[step][path], rtol=1e-5, atol=1e-6, err_msg=path)
  final = _flat(got[1])
  # Warm-up of 1 step: the first update has lr 0, the second moves every trained group.
  np.testing.assert_array_equal(_flat(got[0])["params/classifier/kernel"],
                                init["params/classifier/kernel"])
  emb = "params/bert/embeddings/word_embeddings/embedding"
  np.testing.assert_array_equal(final[emb], init[emb])
  for path in final:
    if _expected_group(path) != "frozen":
      assert np.all(final[path] != init[path]), path


def test_labels():
  tree = _tree(np.random.default_rng(0))
  labels = _flat(optim.make_label_fn()(tree))
  for path, label in labels.items():
    assert str(label) == _expected_group(path), path
  assert labels[f"params/{LAYER}/attention/output/LayerNorm/bias"] == "no_decay"
  assert labels[f"scores/{LAYER}/attention/self/query/kernel"] == "scores"


def test_weight_decay_and_score_lr_isolated():
  """Zero gradients: only decoupled weight decay moves weights; scores and biases do not move."""
  tree = _tree(np.random.default_rng(1))
  tx = optim.make_optimizer(tree, learning_rate=0.1, score_learning_rate=1.0, weight_decay=0.5,
                            warmup_steps=0, total_steps=10)
  zeros = jax.tree.map(jnp.zeros_like, tree)
  updates, _ = tx.update(zeros, tx.init(tree), tree)
  for path, u in _flat(updates).items():
    p = _flat(tree)[path]
    if _expected_group(path) == "decay":
      np.testing.assert_allclose(u, -0.1 * 0.5 * p, rtol=1e-6)
    else:
      np.testing.assert_array_equal(u, 0.0)
  # With unit gradients, the first Adam step is -lr * g / (|g| + eps): lr per group.
  ones = jax.tree.map(jnp.ones_like, tree)
  tx = optim.make_optimizer(tree, learning_rate=0.1, score_learning_rate=1.0, weight_decay=0.0,
                            warmup_steps=0, total_steps=10, max_grad_norm=0.0)
  updates = _flat(tx.update(ones, tx.init(tree), tree)[0])
  # rtol 1e-5: float32 bias correction (1 - 0.999 is 9.99987e-4 in float32).
  score = updates[f"scores/{LAYER}/attention/self/query/kernel"]
  np.testing.assert_allclose(score, -1.0, rtol=1e-5)
  np.testing.assert_allclose(updates[f"params/{LAYER}/attention/self/query/bias"], -0.1, rtol=1e-5)


def test_learning_rate_schedule_boundaries():
  sched = optim.learning_rate_schedule(3e-5, warmup_steps=100, total_steps=1100)
  ref = _linear(3e-5, 100, 1100)
  for step in (0, 1, 50, 99, 100, 101, 600, 1099, 1100, 5000):
    np.testing.assert_allclose(float(sched(step)), ref(step), rtol=1e-6, atol=1e-12,
                               err_msg=str(step))
  assert float(sched(0)) == 0.0 and float(sched(1100)) == 0.0
  np.testing.assert_allclose(float(sched(100)), 3e-5, rtol=1e-6)
  no_warmup = optim.learning_rate_schedule(1.0, warmup_steps=0, total_steps=10)
  assert [float(no_warmup(s)) for s in (0, 5, 10)] == [1.0, 0.5, 0.0]
  with pytest.raises(ValueError, match="total_steps"):
    optim.learning_rate_schedule(1.0, warmup_steps=0, total_steps=0)


def test_clipping_is_one_norm_over_weights_and_scores_without_frozen():
  """Each half has norm 0.8 < 1, the joint norm 1.13 > 1: only a joint clip scales them."""
  params = {"dense": {"kernel": jnp.zeros((2,))}, "embeddings": {"e": jnp.zeros((2,))}}
  scores = {"dense": {"kernel": jnp.zeros((2,))}}
  tree = {"params": params, "scores": scores}
  g = jnp.asarray([0.8, 0.0])
  grads = {"params": {"dense": {"kernel": g}, "embeddings": {"e": jnp.asarray([1e3, 1e3])}},
           "scores": {"dense": {"kernel": g}}}
  # eps = 1 makes the first Adam step depend on the gradient's scale: -lr * g / (|g| + 1).
  tx = optim.make_optimizer(tree, learning_rate=1.0, score_learning_rate=1.0, weight_decay=0.0,
                            warmup_steps=0, total_steps=10, max_grad_norm=1.0, adam_eps=1.0,
                            frozen=(r"(^|/)embeddings/",))
  updates, _ = tx.update(grads, tx.init(tree), tree)
  clipped = 0.8 / np.sqrt(0.8**2 * 2)
  expected = -clipped / (clipped + 1.0)
  for u in (updates["params"]["dense"]["kernel"], updates["scores"]["dense"]["kernel"]):
    np.testing.assert_allclose(np.asarray(u), [expected, 0.0], rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(updates["params"]["embeddings"]["e"]), 0.0)
  # Unclipped would be -0.8 / 1.8: make sure the test can tell them apart.
  assert abs(expected - (-0.8 / 1.8)) > 1e-2


def test_accumulation_equals_mean_gradient_step():
  rng = np.random.default_rng(2)
  tree = _tree(rng)
  micro = [jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), tree)
           for _ in range(6)]
  kw = dict(learning_rate=1e-2, score_learning_rate=5e-2, weight_decay=0.1, warmup_steps=0,
            total_steps=5, max_grad_norm=1.0, level_schedule=lambda t: 1.0 - 0.1 * t)
  acc_tx = optim.make_optimizer(tree, **kw, grad_accum_steps=3)
  state = acc_tx.init(tree)
  update = jax.jit(acc_tx.update)
  got = tree
  levels = []
  for i, g in enumerate(micro):
    updates, state = update(g, state, got)
    if i % 3 != 2:
      assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))
    got = optax.apply_updates(got, updates)
    levels.append(float(optim.schedule_values(state)["level"]))
  np.testing.assert_allclose(levels, [1.0, 1.0, 0.9, 0.9, 0.9, 0.8], rtol=1e-6)

  plain_tx = optim.make_optimizer(tree, **kw)
  means = [jax.tree.map(lambda *xs: sum(xs) / 3, *micro[i:i + 3]) for i in (0, 3)]
  want, plain_state = _run(plain_tx, tree, means)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want[-1]), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
  assert int(optim.schedule_values(state)["step"]) == 2
  assert int(optim.schedule_values(plain_state)["step"]) == 2


def test_schedule_values_carried_in_state():
  level = lambda t: 1.0 - 0.25 * jnp.minimum(t, 4)
  lam = lambda t: 10.0 * t
  tree = {"params": {"w": jnp.ones((3,))}, "scores": {}}
  tx = optim.make_optimizer(tree, learning_rate=1e-3, score_learning_rate=1e-2, weight_decay=0.0,
                            warmup_steps=0, total_steps=10, level_schedule=level,
                            lambda_schedule=lam)
  state = tx.init(tree)
  values = optim.schedule_values(state)
  assert float(values["level"]) == 1.0 and float(values["lam"]) == 0.0 and int(values["step"]) == 0
  assert values["level"].dtype == jnp.float32 and values["step"].dtype == jnp.int32

  @jax.jit
  def step(state):
    # The trainer's pattern: read the level inside the jitted step, then update.
    level_now = optim.schedule_values(state)["level"]
    updates, state = tx.update({"params": {"w": jnp.ones((3,))}, "scores": {}}, state, tree)
    return level_now, state

  seen = []
  for _ in range(5):
    level_now, state = step(state)
    seen.append(float(level_now))
  assert seen == [1.0, 0.75, 0.5, 0.25, 0.0]
  values = optim.schedule_values(state)
  assert int(values["step"]) == 5 and float(values["level"]) == 0.0 and float(values["lam"]) == 50.0


def test_defaults_and_errors():
  state = optim.track_schedules().init({})
  assert float(state.level) == 1.0 and float(state.lam) == 0.0
  with pytest.raises(ValueError, match="exactly one"):
    optim.schedule_values(optax.adam(1e-3).init({"w": jnp.zeros(2)}))
  tree = {"params": {"embeddings": {"e": jnp.zeros(2)}}}
  common = dict(learning_rate=1e-3, score_learning_rate=1e-2, weight_decay=0.0, warmup_steps=0,
                total_steps=10)
  with pytest.raises(ValueError, match="frozen"):
    optim.make_optimizer(tree, **common)
  with pytest.raises(ValueError, match="invalid regex"):
    optim.make_optimizer({"params": {"w": jnp.zeros(2)}}, **common, no_decay=("(",))
  with pytest.raises(ValueError, match="top-level"):
    optim.make_optimizer({"params": {}, "other": {}}, **common)
  with pytest.raises(ValueError, match="grad_accum_steps"):
    optim.make_optimizer({"params": {"w": jnp.zeros(2)}}, **common, grad_accum_steps=0)

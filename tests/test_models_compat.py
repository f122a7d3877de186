"""The masking API on real models, unchanged: Flax Linen, Flax NNX, and a BERT-shaped dict."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mvp_jax import pruning


class LinenMLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(12)(x))
    x = nn.relu(nn.Dense(10)(x))
    return nn.Dense(3)(x)


class NNXMLP(nnx.Module):
  def __init__(self, rngs):
    self.layers = nnx.List([nnx.Linear(6, 12, rngs=rngs), nnx.Linear(12, 10, rngs=rngs)])
    self.head = nnx.Linear(10, 3, rngs=rngs)

  def __call__(self, x):
    for layer in self.layers:
      x = nnx.relu(layer(x))
    return self.head(x)


def _manual_forward(kernels, biases, masks, x):
  """Reference forward with explicitly masked kernels (the head is unmasked)."""
  for i, (k, b) in enumerate(zip(kernels, biases, strict=True)):
    k = k * masks[i] if i < len(masks) else k
    x = x @ k + b
    x = jax.nn.relu(x) if i < len(kernels) - 1 else x
  return x


def test_linen_model():
  model = LinenMLP()
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 6))
  variables = model.init(jax.random.PRNGKey(1), x)
  spec = pruning.PruningSpec(
    include=(r"Dense_[01]/kernel$",), score_init="uniform", score_scale=1.0
  )
  params = variables["params"]
  scores = pruning.init_scores(params, spec, jax.random.PRNGKey(2))
  assert pruning.select_paths(params, spec) == ("Dense_0/kernel", "Dense_1/kernel")

  @jax.jit
  def loss(params, scores, level):
    out = model.apply({"params": pruning.apply_masks(params, scores, level, spec)}, x)
    return jnp.sum(out**2), out

  (_, out), (gp, gs) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, scores, 0.5)
  m = pruning.compute_masks(params, scores, 0.5, spec)
  names = ["Dense_0", "Dense_1", "Dense_2"]
  want = _manual_forward(
    [params[n]["kernel"] for n in names],
    [params[n]["bias"] for n in names],
    [m[n]["kernel"] for n in names[:2]],
    x,
  )
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
  for n in names[:2]:  # pruned weights get no loss gradient; their scores do
    dead = np.asarray(m[n]["kernel"]) == 0
    assert (np.asarray(gp[n]["kernel"])[dead] == 0).all()
    assert np.abs(np.asarray(gs[n]["kernel"])).sum() > 0


def test_nnx_model():
  model = NNXMLP(nnx.Rngs(0))
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 6))
  graphdef, state = nnx.split(model)
  pure = nnx.to_pure_dict(state)
  spec = pruning.PruningSpec(method="magnitude", include=(r"layers/\d+/kernel$",))
  assert pruning.select_paths(pure, spec) == ("layers/0/kernel", "layers/1/kernel")
  # nnx.State itself works too (Variable `.value` levels are not part of paths).
  assert pruning.select_paths(state, spec) == pruning.select_paths(pure, spec)

  @jax.jit
  def forward(pure, level):
    masked = pruning.apply_masks(pure, {}, level, spec)
    st = nnx.state(nnx.merge(graphdef, state))
    nnx.replace_by_pure_dict(st, masked)
    return nnx.merge(graphdef, st)(x)

  out = forward(pure, 0.4)
  m = pruning.compute_masks(pure, {}, 0.4, spec)
  layers = [pure["layers"][0], pure["layers"][1], pure["head"]]
  want = _manual_forward(
    [lay["kernel"] for lay in layers],
    [lay["bias"] for lay in layers],
    [m["layers"][0]["kernel"], m["layers"][1]["kernel"]],
    x,
  )
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
  for i in (0, 1):
    assert np.asarray(m["layers"][i]["kernel"]).sum() == int(0.4 * pure["layers"][i]["kernel"].size)
  masked_state = pruning.apply_masks(state, {}, 0.4, spec)
  assert isinstance(masked_state, nnx.State)
  np.testing.assert_allclose(nnx.merge(graphdef, masked_state)(x), want, rtol=1e-5, atol=1e-6)


def test_bert_shaped_dict():
  from test_pruning import random_tree

  params = random_tree(seed=7, layers=2)
  spec = pruning.PruningSpec(method="sigmoid_threshold", score_init="uniform", score_scale=4.0)
  scores = pruning.init_scores(params, spec, jax.random.PRNGKey(0))
  masked = jax.jit(pruning.apply_masks, static_argnums=3)(params, scores, 0.5, spec)
  masks = jax.jit(pruning.compute_masks, static_argnums=3)(params, scores, 0.5, spec)
  flat = lambda t: {
    "/".join(str(k.key) for k in kp): v for kp, v in jax.tree_util.tree_flatten_with_path(t)[0]
  }
  fp, fo, fm = flat(params), flat(masked), flat(masks)
  assert sorted(fm) == list(pruning.select_paths(params, spec)) and len(fm) == 12
  assert set(fo) == set(fp)
  for path, w in fp.items():
    want = np.asarray(w) * np.asarray(fm[path]) if path in fm else np.asarray(w)
    np.testing.assert_array_equal(np.asarray(fo[path]), want)
  assert 0 < sum(float(m.sum()) for m in fm.values()) < sum(m.size for m in fm.values())

"""Tests of mvp_jax.sharding on the 8 fake CPU devices of conftest.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mvp_jax import optim, sharding

H, FF = 8, 16
LAYER = "bert/encoder/layer/0"


def _bert_like():
  """Shapes of one HF-named BERT layer plus embeddings, pooler and head."""

  def dense(i, o):
    return {"kernel": jax.ShapeDtypeStruct((i, o), jnp.float32),
            "bias": jax.ShapeDtypeStruct((o,), jnp.float32)}

  ln = {"scale": jax.ShapeDtypeStruct((H,), jnp.float32),
        "bias": jax.ShapeDtypeStruct((H,), jnp.float32)}
  layer = {
      "attention": {"self": {"query": dense(H, H), "key": dense(H, H), "value": dense(H, H)},
                    "output": {"dense": dense(H, H), "LayerNorm": ln}},
      "intermediate": {"dense": dense(H, FF)},
      "output": {"dense": dense(FF, H), "LayerNorm": ln},
  }
  return {"bert": {
      "embeddings": {"word_embeddings": {"embedding": jax.ShapeDtypeStruct((30, H), jnp.float32)},
                     "LayerNorm": ln},
      "encoder": {"layer": {"0": layer}},
      "pooler": {"dense": dense(H, H)},
  }, "classifier": dense(H, 3)}


def _specs(shardings):
  leaves = jax.tree_util.tree_flatten_with_path(shardings)[0]
  return {"/".join(str(k.key) for k in p): s.spec for p, s in leaves}


@pytest.mark.parametrize("shape,expected", [((8, 1), (8, 1)), ((4, 2), (4, 2)), ((2, 4), (2, 4)),
                                            ((-1, 2), (4, 2)), ((-1, 1), (8, 1))])
def test_make_mesh_shapes(shape, expected):
  mesh = sharding.make_mesh(shape)
  assert tuple(mesh.shape.values()) == expected
  assert mesh.axis_names == ("data", "model")
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize("shape", [(3, 1), (-1, 3), (16, 1), (-1, -1), (8,)])
def test_make_mesh_bad_shape(shape):
  with pytest.raises(ValueError, match="mesh_shape"):
    sharding.make_mesh(shape)


def test_bert_tensor_parallel_rules():
  mesh = sharding.make_mesh((4, 2))
  specs = _specs(sharding.tree_shardings(_bert_like(), mesh, sharding.BERT_TENSOR_PARALLEL_RULES))
  expected = {
      f"{LAYER}/attention/self/query/kernel": P(None, "model"),
      f"{LAYER}/attention/self/key/bias": P("model"),
      f"{LAYER}/attention/self/value/kernel": P(None, "model"),
      f"{LAYER}/attention/output/dense/kernel": P("model", None),
      f"{LAYER}/attention/output/dense/bias": P(),
      f"{LAYER}/attention/output/LayerNorm/scale": P(),
      f"{LAYER}/intermediate/dense/kernel": P(None, "model"),
      f"{LAYER}/intermediate/dense/bias": P("model"),
      f"{LAYER}/output/dense/kernel": P("model", None),
      f"{LAYER}/output/dense/bias": P(),
      "bert/embeddings/word_embeddings/embedding": P(),
      "bert/pooler/dense/kernel": P(),
      "classifier/kernel": P(),
  }
  for path, spec in expected.items():
    assert specs[path] == spec, path
  dp = _specs(sharding.tree_shardings(_bert_like(), mesh, sharding.DATA_PARALLEL_RULES))
  assert set(dp.values()) == {P()}


def test_scores_and_optimizer_moments_follow_kernels():
  mesh = sharding.make_mesh((2, 4))
  params = _bert_like()
  q = params["bert"]["encoder"]["layer"]["0"]["attention"]["self"]["query"]["kernel"]
  o = params["bert"]["encoder"]["layer"]["0"]["output"]["dense"]["kernel"]
  scores = {"bert": {"encoder": {"layer": {"0": {
      "attention": {"self": {"query": {"kernel": q}}}, "output": {"dense": {"kernel": o}}}}}}}
  state = {"params": params, "scores": scores, "opt": {"mu": {"params": params}}}
  specs = _specs(sharding.tree_shardings(state, mesh, sharding.BERT_TENSOR_PARALLEL_RULES))
  for kernel in ("attention/self/query/kernel", "output/dense/kernel"):
    want = specs[f"params/{LAYER}/{kernel}"]
    assert want != P()
    assert specs[f"scores/{LAYER}/{kernel}"] == want
    assert specs[f"opt/mu/params/{LAYER}/{kernel}"] == want


def test_indivisible_dim_falls_back_to_replicated():
  mesh = sharding.make_mesh((2, 4))
  tree = {"a": {"query": {"kernel": jax.ShapeDtypeStruct((6, 6), jnp.float32),
                          "bias": jax.ShapeDtypeStruct((6,), jnp.float32)}},
          "scalar": 1.0}
  rules = ((r"query/kernel$", P("data", "model")), (r"query/bias$", P("model", None)),
           (r".*", P()))
  specs = _specs(sharding.tree_shardings(tree, mesh, rules))
  assert specs["a/query/kernel"] == P("data", None)  # 6 % 2 == 0 but 6 % 4 != 0
  assert specs["a/query/bias"] == P()  # rank 1 < spec rank 2
  assert specs["scalar"] == P()


@pytest.mark.parametrize("shape", [(8, 1), (4, 2), (2, 4)])
def test_sharded_jit_matches_unsharded(shape):
  mesh = sharding.make_mesh(shape)
  rng = np.random.default_rng(0)
  params = {"intermediate": {"dense": {"kernel": rng.normal(size=(H, FF)).astype(np.float32),
                                       "bias": rng.normal(size=(FF,)).astype(np.float32)}},
            "output": {"dense": {"kernel": rng.normal(size=(FF, H)).astype(np.float32)}}}
  batch = {"x": rng.normal(size=(16, H)).astype(np.float32)}

  def fn(params, batch):
    h = jax.nn.gelu(batch["x"] @ params["intermediate"]["dense"]["kernel"]
                    + params["intermediate"]["dense"]["bias"])
    y = h @ params["output"]["dense"]["kernel"]
    return y, jnp.mean(y**2)

  p_sh = sharding.tree_shardings(params, mesh, sharding.BERT_TENSOR_PARALLEL_RULES)
  if shape[1] > 1:
    assert p_sh["output"]["dense"]["kernel"].spec == P("model", None)
  b_sh = {"x": sharding.batch_sharding(mesh)}
  jitted = jax.jit(fn, in_shardings=(p_sh, b_sh),
                   out_shardings=(sharding.batch_sharding(mesh), NamedSharding(mesh, P())))
  y, loss = jitted(jax.device_put(params, p_sh), sharding.global_batch(batch, mesh))
  y_ref, loss_ref = jax.jit(fn)(params, batch)
  assert y.sharding.spec == P("data")
  np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(float(loss), float(loss_ref), rtol=1e-5)


def test_batch_divisibility_errors():
  mesh = sharding.make_mesh((4, 2))
  sharding.check_batch_divisible(8, mesh)
  with pytest.raises(ValueError, match="not divisible by the mesh 'data' axis"):
    sharding.check_batch_divisible(6, mesh)
  with pytest.raises(ValueError, match="not divisible"):
    sharding.global_batch({"x": np.zeros((6, 2))}, mesh)
  with pytest.raises(ValueError, match="same leading"):
    sharding.global_batch({"x": np.zeros((8, 2)), "y": np.zeros((4,))}, mesh)


def test_global_batch_single_process():
  mesh = sharding.make_mesh((8, 1))
  local = {"ids": np.arange(32, dtype=np.int32).reshape(16, 2),
           "weights": np.ones((16,), np.float32)}
  out = sharding.global_batch(local, mesh)
  assert out["ids"].shape == (16, 2) and out["ids"].dtype == jnp.int32
  assert len(out["ids"].addressable_shards) == 8
  np.testing.assert_array_equal(np.asarray(out["ids"]), local["ids"])
  assert sharding.is_main_process()
  assert sharding.local_data_shards(mesh) == 8


def test_optimizer_state_sharded_like_params():
  """The trainer's pattern: eval_shape -> rules -> jit(init, out_shardings); moments follow."""
  mesh = sharding.make_mesh((4, 2))
  shapes = _bert_like()
  params = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), shapes)
  kernel = params["bert"]["encoder"]["layer"]["0"]["intermediate"]["dense"]["kernel"]
  trainable = {"params": params,
               "scores": {"bert": {"encoder": {"layer": {"0": {"intermediate": {"dense": {
                   "kernel": kernel}}}}}}}}
  rules = sharding.BERT_TENSOR_PARALLEL_RULES
  t_sh = sharding.tree_shardings(trainable, mesh, rules)
  trainable = jax.device_put(trainable, t_sh)
  tx = optim.make_optimizer(trainable, learning_rate=1e-3, score_learning_rate=1e-2,
                            weight_decay=0.01, warmup_steps=0, total_steps=10, grad_accum_steps=2)
  o_sh = sharding.tree_shardings(jax.eval_shape(tx.init, trainable), mesh, rules)
  opt_state = jax.jit(tx.init, out_shardings=o_sh)(trainable)
  specs = _specs_any(opt_state)
  want = P(None, "model")
  mu = [s for p, s in specs.items() if p.endswith(f"mu/scores/{LAYER}/intermediate/dense/kernel")]
  acc = [s for p, s in specs.items()
         if p.endswith(f"acc_grads/params/{LAYER}/intermediate/dense/kernel")]
  assert mu == [want] and acc == [want]

  @jax.jit
  def step(trainable, opt_state):
    grads = jax.tree.map(jnp.ones_like, trainable)
    updates, opt_state = tx.update(grads, opt_state, trainable)
    return optax_apply(trainable, updates), opt_state

  # Without out_shardings, propagation keeps every leaf's sharding (P('model') == P('model', None)).
  new_trainable, new_state = step(trainable, opt_state)
  for before, after in [(opt_state, new_state), (trainable, new_trainable)]:
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
      assert x.sharding.is_equivalent_to(y.sharding, x.ndim), (x.sharding, y.sharding)


def optax_apply(params, updates):
  return jax.tree.map(lambda p, u: p + u, params, updates)


def _specs_any(tree):
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {optim.path_str(p): x.sharding.spec for p, x in leaves}

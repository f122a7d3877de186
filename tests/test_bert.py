"""Tests of the Linen BERT: HF Flax parameter names, config validation, masking, dropout, dtypes.

Parity with transformers' PyTorch BERT is in test_hf.py (it needs the checkpoint converter).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from mvp_jax.errors import UserError
from mvp_jax.models import bert

TINY = bert.BertConfig(vocab_size=99, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                       intermediate_size=80, max_position_embeddings=32, type_vocab_size=3,
                       num_labels=3)


def _inputs(batch: int = 3, length: int = 10, seed: int = 0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, TINY.vocab_size, size=(batch, length)).astype(np.int32)
  mask = np.ones((batch, length), np.int32)
  mask[1, 6:] = 0
  mask[2, 2:] = 0
  types = np.zeros((batch, length), np.int32)
  types[0, 5:] = 1
  types[1, 3:] = 2
  return jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types)


@pytest.fixture(scope="module")
def cls_model_params():
  model = bert.BertForSequenceClassification(TINY)
  params = model.init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))["params"]
  return model, params


def _layer_paths(i: int) -> list[tuple[str, tuple[int, ...]]]:
  h, f = TINY.hidden_size, TINY.intermediate_size
  base = f"encoder/layer/{i}"
  out = []
  for name in ("query", "key", "value"):
    out += [(f"{base}/attention/self/{name}/kernel", (h, h)),
            (f"{base}/attention/self/{name}/bias", (h,))]
  out += [(f"{base}/attention/output/dense/kernel", (h, h)),
          (f"{base}/attention/output/dense/bias", (h,)),
          (f"{base}/attention/output/LayerNorm/scale", (h,)),
          (f"{base}/attention/output/LayerNorm/bias", (h,)),
          (f"{base}/intermediate/dense/kernel", (h, f)),
          (f"{base}/intermediate/dense/bias", (f,)),
          (f"{base}/output/dense/kernel", (f, h)),
          (f"{base}/output/dense/bias", (h,)),
          (f"{base}/output/LayerNorm/scale", (h,)),
          (f"{base}/output/LayerNorm/bias", (h,))]
  return out


def _encoder_paths(pooler: bool) -> dict[str, tuple[int, ...]]:
  h = TINY.hidden_size
  paths = [("embeddings/word_embeddings/embedding", (TINY.vocab_size, h)),
           ("embeddings/position_embeddings/embedding", (TINY.max_position_embeddings, h)),
           ("embeddings/token_type_embeddings/embedding", (TINY.type_vocab_size, h)),
           ("embeddings/LayerNorm/scale", (h,)), ("embeddings/LayerNorm/bias", (h,))]
  for i in range(TINY.num_hidden_layers):
    paths += _layer_paths(i)
  if pooler:
    paths += [("pooler/dense/kernel", (h, h)), ("pooler/dense/bias", (h,))]
  return dict(paths)


def _shapes(params) -> dict[str, tuple[int, ...]]:
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(params, sep="/").items()}


def test_parameter_tree_is_named_like_hf_flax(cls_model_params):
  _, params = cls_model_params
  expected = {f"bert/{k}": v for k, v in _encoder_paths(pooler=True).items()}
  expected |= {"classifier/kernel": (48, 3), "classifier/bias": (3,)}
  assert _shapes(params) == expected
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(params))


def test_qa_and_base_trees():
  ids = jnp.ones((1, 4), jnp.int32)
  qa = bert.BertForQuestionAnswering(TINY).init(jax.random.key(0), ids)["params"]
  expected = {f"bert/{k}": v for k, v in _encoder_paths(pooler=False).items()}
  expected |= {"qa_outputs/kernel": (48, 2), "qa_outputs/bias": (2,)}
  assert _shapes(qa) == expected
  base = bert.BertModel(TINY).init(jax.random.key(0), ids)["params"]
  assert _shapes(base) == _encoder_paths(pooler=True)  # no 'bert' level, like FlaxBertModel


def test_initialisers_follow_hf():
  cfg = dataclasses.replace(TINY, initializer_range=0.05, hidden_size=96, intermediate_size=384)
  params = bert.BertModel(cfg).init(jax.random.key(1), jnp.ones((1, 4), jnp.int32))["params"]
  kernel = np.asarray(params["encoder"]["layer"]["0"]["intermediate"]["dense"]["kernel"])
  assert abs(kernel.std() - 0.05) < 0.005 and abs(kernel.mean()) < 0.005
  assert not np.asarray(params["encoder"]["layer"]["0"]["intermediate"]["dense"]["bias"]).any()
  ln = params["embeddings"]["LayerNorm"]
  assert np.all(np.asarray(ln["scale"]) == 1) and not np.asarray(ln["bias"]).any()


def test_output_shapes_and_heads(cls_model_params):
  model, params = cls_model_params
  ids, mask, types = _inputs()
  logits = model.apply({"params": params}, ids, mask, types)
  assert logits.shape == (3, 3) and logits.dtype == jnp.float32
  reg = bert.BertForSequenceClassification(TINY.with_labels(1))
  p = reg.init(jax.random.key(0), ids)["params"]
  assert reg.apply({"params": p}, ids, mask, types).shape == (3, 1)
  qa = bert.BertForQuestionAnswering(TINY)
  p = qa.init(jax.random.key(0), ids)["params"]
  start, end = qa.apply({"params": p}, ids, mask, types)
  assert start.shape == end.shape == (3, 10)
  base = bert.BertModel(TINY, add_pooling_layer=False)
  p = base.init(jax.random.key(0), ids)["params"]
  seq, pooled = base.apply({"params": p}, ids, mask, types)
  assert seq.shape == (3, 10, 48) and pooled is None


def test_padding_does_not_leak(cls_model_params):
  """Valid positions ignore padded ones: same outputs as the unpadded sequence alone."""
  model, params = cls_model_params
  base = bert.BertModel(TINY)
  ids, mask, types = _inputs()
  seq, pooled = base.apply({"params": params["bert"]}, ids, mask, types)
  # Different garbage in the padding changes nothing on the valid tokens.
  ids2 = jnp.where(mask == 1, ids, 7)
  types2 = jnp.where(mask == 1, types, 1)
  seq2, pooled2 = base.apply({"params": params["bert"]}, ids2, mask, types2)
  np.testing.assert_allclose(np.asarray(seq)[np.asarray(mask) == 1],
                             np.asarray(seq2)[np.asarray(mask) == 1], atol=1e-6)
  np.testing.assert_allclose(pooled, pooled2, atol=1e-6)
  alone, _ = base.apply({"params": params["bert"]}, ids[1:2, :6], None, types[1:2, :6])
  np.testing.assert_allclose(seq[1, :6], alone[0], atol=1e-5)


def test_token_types_change_outputs(cls_model_params):
  model, params = cls_model_params
  ids, mask, types = _inputs()
  a = model.apply({"params": params}, ids, mask, types)
  b = model.apply({"params": params}, ids, mask, jnp.zeros_like(types))
  assert not np.allclose(a[0], b[0])
  np.testing.assert_allclose(a[2], b[2], atol=1e-6)  # row 2 has only type-0 tokens


def test_dropout_is_controlled_by_deterministic_and_rng(cls_model_params):
  model, params = cls_model_params
  ids, mask, types = _inputs()
  v = {"params": params}
  det_a = model.apply(v, ids, mask, types, deterministic=True, rngs={"dropout": jax.random.key(1)})
  det_b = model.apply(v, ids, mask, types)
  np.testing.assert_array_equal(det_a, det_b)
  drop1 = model.apply(v, ids, mask, types, deterministic=False, rngs={"dropout": jax.random.key(1)})
  drop1b = model.apply(v, ids, mask, types, deterministic=False,
                       rngs={"dropout": jax.random.key(1)})
  drop2 = model.apply(v, ids, mask, types, deterministic=False, rngs={"dropout": jax.random.key(2)})
  np.testing.assert_array_equal(drop1, drop1b)
  assert not np.allclose(drop1, drop2)
  assert not np.allclose(drop1, det_a)


def test_bfloat16_compute_keeps_float32_params(cls_model_params):
  _, params = cls_model_params
  model16 = bert.BertForSequenceClassification(TINY, dtype=jnp.bfloat16)
  ids, mask, types = _inputs()
  p16 = model16.init(jax.random.key(0), ids)["params"]
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(p16))
  out16 = model16.apply({"params": params}, ids, mask, types)
  out32 = bert.BertForSequenceClassification(TINY).apply({"params": params}, ids, mask, types)
  assert out16.dtype == jnp.float32
  np.testing.assert_allclose(out16, out32, atol=0.05)
  seq16, _ = bert.BertModel(TINY, dtype=jnp.bfloat16).apply({"params": params["bert"]}, ids)
  assert seq16.dtype == jnp.bfloat16


def test_gradient_checkpointing_gives_same_values_and_grads(cls_model_params):
  model, params = cls_model_params
  remat = bert.BertForSequenceClassification(TINY, gradient_checkpointing=True)
  ids, mask, types = _inputs()

  def loss(m, p):
    return jnp.sum(m.apply({"params": p}, ids, mask, types) ** 2)

  np.testing.assert_allclose(loss(model, params), loss(remat, params), rtol=1e-6)
  g1 = jax.grad(lambda p: loss(model, p))(params)
  g2 = jax.grad(lambda p: loss(remat, p))(params)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_sequence_longer_than_positions_fails(cls_model_params):
  model, params = cls_model_params
  with pytest.raises(UserError, match="max_position_embeddings=32"):
    model.apply({"params": params}, jnp.ones((1, 33), jnp.int32))


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "relu", "silu", "tanh", "quick_gelu"])
def test_activations(act):
  x = jnp.linspace(-3, 3, 7)
  y = bert.ACTIVATIONS[act](x)
  assert y.shape == x.shape and np.all(np.isfinite(y))
  cfg = dataclasses.replace(TINY, hidden_act=act)
  m = bert.BertModel(cfg)
  p = m.init(jax.random.key(0), jnp.ones((1, 3), jnp.int32))
  assert np.all(np.isfinite(m.apply(p, jnp.ones((1, 3), jnp.int32))[0]))


def test_exact_gelu_differs_from_tanh_approximation():
  x = jnp.asarray([1.5])
  assert float(bert.ACTIVATIONS["gelu"](x)[0]) == pytest.approx(1.3997892, abs=1e-6)
  assert float(bert.ACTIVATIONS["gelu_new"](x)[0]) == pytest.approx(1.3995715, abs=1e-6)


# ------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("changes, match", [
  ({"hidden_size": 50}, "not divisible by num_attention_heads=3"),
  ({"position_embedding_type": "relative_key"}, "only 'absolute'"),
  ({"hidden_act": "mish"}, "hidden_act='mish' is not supported"),
  ({"num_hidden_layers": 0}, "num_hidden_layers must be a positive integer"),
  ({"hidden_dropout_prob": 1.5}, r"hidden_dropout_prob must be in \[0, 1\)"),
  ({"id2label": ((0, "a"), (1, "b"))}, "num_labels=3"),
])
def test_config_validation(changes, match):
  with pytest.raises(UserError, match=match):
    dataclasses.replace(TINY, **changes)


def test_config_from_dict_rejects_other_models():
  with pytest.raises(UserError, match="model_type='roberta' is not BERT"):
    bert.BertConfig.from_dict({"model_type": "roberta"})


def test_config_hf_round_trip():
  cfg = TINY.with_labels(3, {0: "neg", 1: "neu", 2: "pos"})
  d = cfg.to_hf_dict(architectures=["BertForSequenceClassification"])
  assert d["model_type"] == "bert" and d["architectures"] == ["BertForSequenceClassification"]
  assert d["id2label"] == {"0": "neg", "1": "neu", "2": "pos"}
  assert bert.BertConfig.from_dict(d) == cfg
  assert cfg.label_names == ("neg", "neu", "pos") and TINY.label_names == ()
  assert hash(cfg) == hash(bert.BertConfig.from_dict(d))


def test_config_from_transformers_dict():
  transformers = pytest.importorskip("transformers")
  tcfg = transformers.BertConfig(vocab_size=99, hidden_size=48, num_hidden_layers=2,
                                 num_attention_heads=3, intermediate_size=80,
                                 hidden_act="gelu_new", num_labels=4, classifier_dropout=0.2)
  cfg = bert.BertConfig.from_dict(tcfg.to_dict())
  assert (cfg.hidden_size, cfg.num_labels, cfg.hidden_act, cfg.classifier_dropout) == \
    (48, 4, "gelu_new", 0.2)
  assert cfg.id2label_dict() == {i: f"LABEL_{i}" for i in range(4)}
  # transformers reads our dict back
  back = transformers.BertConfig.from_dict(cfg.to_hf_dict())
  assert back.num_labels == 4 and back.hidden_size == 48 and back.hidden_act == "gelu_new"


def test_config_json_errors(tmp_path):
  with pytest.raises(UserError, match="config.json does not exist"):
    bert.BertConfig.from_json_file(tmp_path / "config.json")
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(UserError, match="config.json is not valid JSON"):
    bert.BertConfig.from_json_file(tmp_path / "config.json")
  (tmp_path / "config.json").write_text('{"hidden_size": 50, "num_attention_heads": 3}')
  with pytest.raises(UserError, match=r"config.json: .*not divisible"):
    bert.BertConfig.from_json_file(tmp_path / "config.json")


def test_model_for_head_rejects_unknown_head():
  with pytest.raises(UserError, match="unknown head 'tagging'"):
    bert.model_for_head(TINY, "tagging")

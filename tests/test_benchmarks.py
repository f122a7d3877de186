"""Smoke tests of the benchmark scripts: they still run, and the sort-based top-k they compare
against is the same mask as ours. No timing is asserted.

The default run (`make test`) runs each script once; the deeper checks of the benchmark
variants and of the research diagnostics (mask quality, tail shift, score-gradient
interventions: several tiny training runs each) are marked slow and run with `make test-all`."""

import collections
import functools
import json
import pathlib
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mvp_jax import masks, pruning

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _bench import load_benchmark  # noqa: E402


@pytest.fixture(scope="module")
def step():
  return load_benchmark("step")


@pytest.fixture(scope="module")
def report():
  return load_benchmark("report")


def _tied_scores():
  """Scores with many ties (rounded to 0.1), a -0.0 next to a +0.0, several shapes."""
  rng = np.random.default_rng(3)
  shapes = [(16, 24), (24, 16), (7, 5), (1, 1)]
  out = [jnp.asarray(np.round(rng.standard_normal(s), 1), jnp.float32) for s in shapes]
  out[2] = out[2].at[0, 0].set(-0.0).at[0, 1].set(0.0)
  return out


@pytest.mark.parametrize("level", [0.0, 0.03, 0.1, 0.37, 0.5, 0.999, 1.0])
def test_sort_masks_equal_sort_free(step, level):
  scores = _tied_scores()
  ours_local = jax.jit(masks.local_topk_masks)(scores, jnp.float32(level))
  sort_local = jax.jit(step.sort_topk_masks)(scores, jnp.float32(level))
  for a, b, s in zip(ours_local, sort_local, scores, strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(b.sum()) == int(masks.keep_count(level, s.size))
  ours_global = jax.jit(masks.global_topk_masks)(scores, jnp.float32(level))
  sort_global = jax.jit(step.sort_global_topk_masks)(scores, jnp.float32(level))
  for a, b in zip(ours_global, sort_global, strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sort_masks_are_straight_through(step):
  s = _tied_scores()[0]
  w = jnp.arange(s.size, dtype=jnp.float32).reshape(s.shape)
  grad = jax.grad(lambda x: (step.sort_topk_masks([x], 0.3)[0] * w).sum())(s)
  np.testing.assert_array_equal(np.asarray(grad), np.asarray(w))


def test_step_benchmark_runs_and_writes_results(step, report, tmp_path):
  out = tmp_path / "step.json"
  args = step.parse_args(
    [
      "--quick",
      "--only",
      "minilm",
      "--rounds",
      "1",
      "--steps",
      "1",
      "--out",
      str(out),
    ]
  )
  step.run(
    args,
    log=lambda _: None,
    compiler_options=step.FAST_COMPILE,
    quick_config=step.tiny_config(layers=1),
  )
  res = json.loads(out.read_text())
  assert res["quick"] is True and res["benchmark"] == "step"
  for key in ("date", "machine", "versions", "backend", "device"):
    assert key in res
  assert {"jax", "flax", "torch"} <= set(res["versions"])
  sec = res["models"]["minilm"]
  # The default variants (the global sort variant is checked by the mask-equality test).
  assert set(sec["variants"]) == set(step.DEFAULT_VARIANTS) | set(step.TORCH_VARIANTS)
  for name, row in sec["variants"].items():
    assert row["n"] == 1 and row["median_s"] > 0, name
    ratio = "ratio_to_torch_dense" if name.startswith("torch_") else "ratio_to_dense"
    assert row[ratio] > 0, name
    if not name.startswith("torch_"):
      assert row["memory_bytes"]["peak"] > 0, name
  assert sec["variants"]["dense"]["ratio_to_dense"] == 1.0
  # The conds every step meets: one per pruned matrix (six in the one-layer model) for the
  # tie rule and for soft movement's minimum retention on CPU; none for dense, L0 or the sort.
  conds = {n: r.get("conds_per_step") for n, r in sec["variants"].items()}
  assert conds["dense"] == conds["l0"] == conds["topk_local_sort"] == 0, conds
  assert conds["topk_local"] == conds["magnitude"] == conds["sigmoid_threshold"] == 6, conds
  assert set(sec["sort_over_sort_free"]) == {"topk_local"}
  assert sec["one_bit_over_default"] > 0
  assert "topk_local" in sec["target"]["within"]
  assert "topk_local_1bit" not in sec["target"]["within"]
  ev = res["eval_throughput"]
  assert set(ev["variants"]) == {"jax_dense", "jax_pruned", "torch_dense", "torch_pruned"}
  assert ev["zero_fraction_of_pruned_matrices"]["dense"] < 0.5
  assert ev["zero_fraction_of_pruned_matrices"]["pruned"] >= 0.89
  assert set(ev["pruned_over_dense_throughput"]) == {"jax", "torch"}

  # The report renders it, and re-rendering only replaces the marked blocks.
  doc = tmp_path / "results.md"
  doc.write_text("# Results\n\nhand-written accuracy notes\n")
  report.update_doc(doc, tmp_path)
  first = doc.read_text()
  assert "hand-written accuracy notes" in first
  assert first.count("<!-- bench:step:begin -->") == 1
  assert first.count("<!-- bench:eval:begin -->") == 1
  assert "`topk_local_sort`" in first and "`torch_topk_sort`" in first
  report.update_doc(doc, tmp_path)
  assert doc.read_text() == first


@pytest.mark.slow
def test_forced_cond_variants_count_their_conds(step):
  # `_jointcond` / `_percond` force where the masks' branches sit, whatever the backend: one
  # shared cond a step, or one per matrix (six here). The masks do not depend on it (tests in
  # test_masks.py); the step variants exist to time the difference on an accelerator.
  model, params = step.random_model(step.tiny_config(layers=1))
  batch = step.make_batch(model.config, 8, 8)
  got = {
    name: step.build_jax_variant(name, model, params, batch, level=0.1, tau=0.69, l0_lambda=1.0,
                                 sigmoid_lambda=1.0, compiler_options=step.FAST_COMPILE).conds
    for name in ("topk_local_jointcond", "topk_local_percond", "sigmoid_threshold_jointcond",
                 "sigmoid_threshold_percond")
  }
  assert got == {"topk_local_jointcond": 1, "topk_local_percond": 6,
                 "sigmoid_threshold_jointcond": 1, "sigmoid_threshold_percond": 6}
  assert {"topk_local_percond", "sigmoid_threshold_percond"} <= set(step.ACCELERATOR_VARIANTS)


@pytest.mark.slow
def test_l0_noise_variants_draw_what_they_say(step):
  # The diagnostics that split L0's step cost: `l0` draws one random word per pruned weight on
  # top of dropout's, `l0_nonoise` none (the dense step's draws only), `l0_rbg` as many from
  # rbg keys (uint32[4] key data in the state); each step runs and stays finite.
  model, params = step.random_model(step.tiny_config(layers=1))
  batch = step.make_batch(model.config, 8, 8)
  pruned = sum(s.size for s in jax.tree.leaves(
    pruning.init_scores(params, pruning.PruningSpec(method="l0"))))
  built = {
    name: step.build_jax_variant(name, model, params, batch, level=0.1, tau=0.69, l0_lambda=1.0,
                                 sigmoid_lambda=1.0, compiler_options=step.FAST_COMPILE)
    for name in ("dense", "l0", "l0_nonoise", "l0_rbg")
  }
  draws = {n: v.draws for n, v in built.items()}
  assert draws["dense"] > 0  # dropout
  assert draws["l0"] - draws["dense"] == pruned
  assert draws["l0_nonoise"] == draws["dense"]
  assert draws["l0_rbg"] == draws["l0"]
  assert {n: v.prng_impl for n, v in built.items()}["l0_rbg"] == "rbg"
  for name, v in built.items():
    v.start_round()
    assert v.state.rng.shape == ((4,) if name == "l0_rbg" else (2,))
    v.step()
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(v.state.scores))
    v.end_round()


@pytest.mark.slow
def test_search_variants_train_exactly_as_the_default_search(step):
  # Bits per pass and stacking change how the threshold is found, not the masks: one step of
  # each variant gives the default's params and scores bitwise (the GPU candidates timed by
  # benchmarks/accelerator.sh and described by gpu_program.py).
  model, params = step.random_model(step.tiny_config(layers=2))
  batch = step.make_batch(model.config, 8, 8)
  after = {}
  for name in ("topk_local", "topk_local_4bit", "topk_local_stacked", "topk_local_stacked_4bit"):
    v = step.build_jax_variant(name, model, params, batch, level=0.3, tau=0.69, l0_lambda=1.0,
                               sigmoid_lambda=1.0, compiler_options=step.FAST_COMPILE)
    v.start_round()
    v.step()
    after[name] = jax.device_get((v.state.params, v.state.scores))
    v.end_round()
  for name, got in after.items():
    jax.tree.map(lambda a, b, n=name: np.testing.assert_array_equal(a, b, err_msg=n), got,
                 after["topk_local"])
  assert {"topk_local_4bit", "topk_local_stacked_4bit"} <= set(step.ACCELERATOR_VARIANTS)


def test_minilm_config_is_the_packaged_models_shape(step):
  from mvp_jax.models import hf

  packaged = hf.load_config(hf.resolve_model_dir(step.MINILM))
  ours = step.minilm_config()
  fields = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
  )
  assert {f: getattr(ours, f) for f in fields} == {f: getattr(packaged, f) for f in fields}


def test_random_weights_runs_without_the_packaged_checkpoint(step, report, tmp_path, monkeypatch):
  from mvp_jax.models import hf

  resolve = hf.resolve_model_dir

  def no_package(name, *args, **kwargs):
    if str(name).startswith("packaged:"):
      raise AssertionError("--random-weights must not read the packaged checkpoint")
    return resolve(name, *args, **kwargs)

  monkeypatch.setattr(hf, "resolve_model_dir", no_package)
  monkeypatch.setattr(step, "minilm_config", lambda: step.tiny_config(layers=1))
  monkeypatch.setitem(
    step.PLANS, "minilm", dict(batch_size=8, seq_len=8, rounds=1, steps=1, warmup=0)
  )
  out = tmp_path / "step.json"
  args = step.parse_args(
    [
      "--only",
      "minilm",
      "--random-weights",
      "--variants",
      "dense,topk_local,topk_local_2bit",
      "--batch-size",
      "16",
      "--seq-len",
      "6",
      "--out",
      str(out),
    ]
  )
  step.run(args, log=lambda _: None, compiler_options=step.FAST_COMPILE)
  res = json.loads(out.read_text())
  sec = res["models"]["minilm"]
  assert (sec["settings"]["batch_size"], sec["settings"]["seq_len"]) == (16, 6)  # not the plan's
  assert "random" in sec["model"]["weights"]
  assert sec["model"]["hidden_size"] == 32  # the monkeypatched shape, so no checkpoint was read
  assert set(sec["variants"]) == {"dense", "topk_local", "topk_local_2bit", *step.TORCH_VARIANTS}
  assert sec["two_bit_over_default"] > 0
  assert set(sec["target"]["within"]) == {"topk_local"}  # forced-bits variants are not targets
  assert sec["settings"]["torch_device"] == "cpu"
  assert res["eval_throughput"]["zero_fraction_of_pruned_matrices"]["pruned"] >= 0.89

  # As one point of the tokens-per-step block, beside a larger shape of another run.
  big = json.loads(out.read_text())
  big_sec = big["models"]["minilm"]
  big_sec["settings"].update(batch_size=64, seq_len=6)
  for name, row in big_sec["variants"].items():
    row["median_s"] = {"dense": 1.0, "topk_local": 1.25}.get(name, row["median_s"])
  big_sec["variants"]["topk_local"]["token_elements_per_step"] *= 2  # as if it masked activations
  (tmp_path / "step_tokens_minilm_16x6.json").write_text(out.read_text())
  (tmp_path / "step_tokens_minilm_0_big.json").write_text(json.dumps(big))  # first by name
  kept = {**json.loads(out.read_text()), "host_memory": "reuse"}  # --reuse-host-memory
  (tmp_path / "step_tokens_reuse_minilm_16x6.json").write_text(json.dumps(kept))
  doc = tmp_path / "results.md"
  doc.write_text("# Results\n")
  text = report.update_doc(doc, tmp_path)
  block = text.split("bench:step_tokens:begin")[1].split("bench:step_tokens:end")[0]
  rows = [line for line in block.splitlines() if line.startswith("| minilm")]
  assert [r.split(" | ")[1] for r in rows] == ["16 x 6", "64 x 6"]  # ordered by tokens
  assert rows[1].split(" | ")[2:5] == ["384", "1 x 1", "1000.0"]
  assert "| 1.25x (+250.0) |" in rows[1]
  assert "`topk_local_2bit`" in block and "`dense`" not in block and "torch_" not in block
  assert "(2 of 2 runs record it" in block
  assert "differs from dense in minilm 384 tokens `topk_local`: 2.00x." in block
  # Runs that kept their host memory have their own table; the two are never mixed.
  block = text.split("bench:step_tokens_reuse:begin")[1].split("bench:step_tokens_reuse:end")[0]
  assert "by tokens per step (kept host memory, as train.py runs)" in block
  assert "host memory kept" in block
  assert [r.split(" | ")[1] for r in block.splitlines() if r.startswith("| minilm")] == ["16 x 6"]


@pytest.mark.slow
def test_pruned_steps_compute_the_same_per_token_values_as_dense(step):
  # What pruning adds is per weight: every variant's step program computes exactly as many
  # token-shaped elements as the dense step's (the tokens block of docs/results.md reads its
  # overheads by this), and the count is per-token work: twice the batch, twice the elements.
  cfg = step.tiny_config(layers=1)
  model, params = step.random_model(cfg)

  def tokens(name, batch_size):
    v = step.build_jax_variant(
      name, model, params, step.make_batch(cfg, batch_size, 6), level=0.1, tau=0.69,
      l0_lambda=1.0, sigmoid_lambda=1.0, compiler_options=step.FAST_COMPILE,
    )
    return v.tokens

  dense = tokens("dense", 8)
  assert dense > 0 and tokens("dense", 16) == 2 * dense
  for name in ("topk_local", "sigmoid_threshold", "l0", "topk_local_sort"):
    assert tokens(name, 8) == dense, name


def test_accelerator_blocks_render_gpu_results(report, tmp_path):
  """An accelerator run (backend gpu, PyTorch on CUDA with its peak memory) gets its own blocks."""
  variant = {"median_s": 0.01, "compile_s": 1.0, "ratio_to_dense": 1.0, "memory_bytes": {}}
  sec = {
    "model": {
      "hidden_size": 8,
      "num_hidden_layers": 1,
      "num_attention_heads": 2,
      "intermediate_size": 16,
      "parameters": 100,
      "pruned_parameters": 50,
      "weights": "random, test shape",
    },
    "settings": {
      "batch_size": 2,
      "seq_len": 4,
      "level": 0.1,
      "tau": 0.69,
      "score_init": "U(-1, 1)",
      "dropout": 0.1,
      "rounds": 1,
      "steps": 1,
      "torch_device": "cuda",
    },
    "variants": {
      "dense": variant,
      "topk_local": {**variant, "ratio_to_dense": 1.5},
      "topk_local_1bit": {**variant, "ratio_to_dense": 1.6},
      "torch_dense": {
        "median_s": 0.02,
        "ratio_to_torch_dense": 1.0,
        "memory_bytes": {"peak": 300 * 2**20},
        "memory_ratio_to_torch_dense": 1.0,
      },
    },
    "one_bit_over_default": 1.07,
  }
  res = {
    "benchmark": "step",
    "date": "d",
    "backend": "gpu",
    "device": "Test GPU",
    "host_memory": "reuse",  # step.py --reuse-host-memory
    "models": {"m": sec},
  }
  (tmp_path / "step_accelerator.json").write_text(json.dumps(res))
  doc = tmp_path / "results.md"
  doc.write_text("# Results\n")
  text = report.update_doc(doc, tmp_path)
  assert "### Train step on an accelerator (Test GPU)" in text
  assert "<!-- bench:step_accelerator:begin -->" in text
  assert "on CUDA" in text and "| 300 | 1.00x |" in text  # PyTorch's peak memory column
  assert "compile the same program; their medians differ by 1.07x" in text
  assert "weights random, test shape" in text
  assert "host memory kept (`mvp_jax.host_memory`)" in text


@pytest.fixture(scope="module")
def masks_bench():
  return load_benchmark("masks")


def test_masks_benchmark_runs_and_renders(masks_bench, report, tmp_path):
  out = tmp_path / "masks.json"
  masks_bench.main(["--quick", "--repeats", "1", "--step-repeats", "1", "--out", str(out)])
  res = json.loads(out.read_text())
  alt = masks_bench.alt_bits()
  assert alt == (1 if masks.default_radix_bits() == 2 else 2)
  for row in res["threshold"]:
    for scope in ("local", "global"):
      assert row[f"ours_{scope}_s"] > 0 and row[f"sort_over_ours_{scope}"] > 0
      assert row[f"{alt}bit_over_ours_{scope}"] > 0
      assert row[f"stacked_over_ours_{scope}"] > 0
  assert res["train_step"][f"masked_{alt}bit_over_dense"] > 0
  text = report.render_masks(res)
  assert f"{alt}-bit local ms" in text and "sort / ours (global)" in text
  assert "stacked / ours (local)" in text and "`pruning.stack_search`" in text
  assert res["machine"]["cpu_model"] and "unrecorded" not in text  # the machine is named


def test_masks_block_renders_an_accelerator_run(report):
  """Off CPU masks.py times two bits per pass next to the default and the one-loop search."""
  row = {"name": "n", "leaves": 2, "radix_bits": 1, "ours_local_shared_loop_s": 0.002}
  for scope in ("local", "global"):
    row |= {
      f"ours_{scope}_s": 0.004,
      f"ours_2bit_{scope}_s": 0.002,
      f"2bit_over_ours_{scope}": 0.5,
      f"sort_{scope}_s": 0.001,
      f"top_k_{scope}_s": 0.003,
      f"sort_over_ours_{scope}": 0.25,
    }
  res = {"backend": "gpu", "device": "Test GPU", "repeats": 3, "threshold": [row]}
  text = report.render_masks_accelerator(res)
  assert "### Top-k threshold on an accelerator (Test GPU)" in text
  assert "2-bit local ms" in text and "ours local, one loop ms" in text
  assert "| n | 2 | 4.0 | 2.0 | 2.0 | 0.50x | 1.0 | 3.0 | 0.25x |" in text


@pytest.fixture(scope="module")
def structure():
  return load_benchmark("mask_structure")


def _layer_masks(rng, hidden=6, inter=10, layers=2, p=0.3):
  """Random 0/1 masks under BERT's six kernel paths, [in, out] as Flax stores them."""
  shapes = {"attention/self/query": (hidden, hidden), "attention/self/key": (hidden, hidden),
            "attention/self/value": (hidden, hidden), "attention/output/dense": (hidden, hidden),
            "intermediate/dense": (hidden, inter), "output/dense": (inter, hidden)}
  return {f"bert/encoder/layer/{i}/{name}/kernel": (rng.random(s) > p).astype(np.float32)
          for i in range(layers) for name, s in shapes.items()}


def test_mask_structure_names_every_kernel_type_and_layer(structure):
  masks = _layer_masks(np.random.default_rng(0))
  kinds = {structure.matrix_type(p) for p in masks}
  assert kinds == {"query", "key", "value", "attn_out", "intermediate", "output"}
  assert structure.matrix_type("bert/encoder/layer/1/output/dense/kernel") == "output"
  assert structure.matrix_type("bert/encoder/layer/1/attention/output/dense/kernel") == "attn_out"
  assert {structure.layer_index(p) for p in masks} == {0, 1}
  with pytest.raises(ValueError, match="pooler"):
    structure.matrix_type("bert/pooler/dense/kernel")
  assert structure.flat_paths(structure.nest(masks)).keys() == masks.keys()


def test_unevenness_is_one_for_random_masks_and_large_for_whole_rows(structure):
  rng = np.random.default_rng(1)
  random_mask = (rng.random((384, 1536)) > 0.2).astype(np.float32)
  assert 0.85 < structure.unevenness(random_mask, 1) < 1.15
  assert 0.85 < structure.unevenness(random_mask, 0) < 1.15
  rows = np.ones((384, 1536), np.float32)
  rows[:77] = 0  # 20% pruned, all of it in whole rows: every column loses exactly 20%
  assert structure.unevenness(rows, 1) > 1000
  assert structure.unevenness(rows, 0) == pytest.approx(0.0)
  assert np.isnan(structure.unevenness(np.ones((4, 4)), 1))


def test_hidden_dim_share_and_restore_follow_reads_and_writes(structure):
  hidden = 6
  masks = _layer_masks(np.random.default_rng(2), hidden=hidden)
  share = structure.hidden_dim_pruned_share(masks, hidden)
  for d in range(hidden):  # brute force: rows of the four readers, columns of the two writers
    pruned = total = 0
    for path, m in masks.items():
      line = m[:, d] if path.endswith(("output/dense/kernel",)) else m[d, :]
      pruned += (1 - line).sum()
      total += line.size
    assert share[d] == pytest.approx(pruned / total)
  restored = structure.restore_dims(masks, np.array([1, 4]))
  after = structure.hidden_dim_pruned_share(restored, hidden)
  assert after[1] == 0 and after[4] == 0
  assert np.all(after <= share + 1e-12)
  for path, m in masks.items():  # nothing outside the two dims' rows/columns changes
    keep = np.ones_like(m, bool)
    if structure.matrix_type(path) in structure.WRITES:
      keep[:, [1, 4]] = False
    else:
      keep[[1, 4], :] = False
    np.testing.assert_array_equal(restored[path][keep], m[keep])


def test_roc_auc_matches_the_rank_formula(structure):
  rng = np.random.default_rng(4)
  labels = rng.integers(0, 2, 200)
  margin = rng.standard_normal(200) + labels  # no ties
  ranks = np.empty(200)
  ranks[np.argsort(margin)] = np.arange(1, 201)
  n_pos = labels.sum()
  mann_whitney = (ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (200 - n_pos))
  assert structure.roc_auc(margin, labels) == pytest.approx(mann_whitney)
  assert structure.roc_auc(labels.astype(float), labels) == 1.0
  assert structure.roc_auc(-labels.astype(float), labels) == 0.0
  assert structure.roc_auc(np.zeros(200), labels) == 0.5  # a constant classifier ranks nothing
  assert np.isnan(structure.roc_auc(margin, np.ones(200)))


def test_first_token_spread_is_zero_for_identical_inputs_and_the_std_ratio_otherwise(structure):
  rng = np.random.default_rng(5)
  x = rng.standard_normal((64, 7, 12))
  same = np.repeat(x[:1], 64, axis=0)
  same[:, 1:] = x[:, 1:]  # other tokens vary: only the first token counts
  assert structure.first_token_spread(same)["spread"] == pytest.approx(0.0, abs=1e-12)
  got = structure.first_token_spread(x)
  first = x[:, 0]
  assert got["spread"] == pytest.approx(first.std(0).mean() / np.abs(first).mean())
  assert 0.8 < got["spread"] < 1.6  # unit Gaussians: std 1 over mean |x| sqrt(2/pi) ~ 1.25
  shifted = x.copy()
  shifted[:, 0, 3] += 30.0  # an outlier dimension: shows in max_abs_mean, shrinks the ratio
  out = structure.first_token_spread(shifted)
  assert out["max_abs_mean"] == pytest.approx(30.0 + first[:, 3].mean())
  assert out["spread"] < got["spread"] / 2
  assert got["mean_norm"] == pytest.approx(np.linalg.norm(first.mean(0)))
  assert out["mean_norm"] > 29.0  # the constant 30 in one dimension dominates the mean vector


def test_mlp_constants_pick_each_layers_mlp_output_dense_not_the_attention_output(structure):
  spread = {}
  for layer in range(3):
    for name, norm in (("attention/output/dense", 1.0 + layer), ("output/dense", 100.0 * layer),
                       ("output/LayerNorm", -1.0), ("intermediate/dense", -2.0)):
      spread[f"bert/encoder/layer/{layer}/{name}"] = {"mean_norm": norm, "spread": 0.5}
  assert structure.mlp_constants(spread) == [0.0, 100.0, 200.0]


def test_attention_focus_against_a_loop_on_random_probabilities_and_two_extremes(structure):
  rng = np.random.default_rng(7)
  n, heads, length = 5, 3, 9
  real = np.zeros((n, length), bool)
  lengths = rng.integers(3, length + 1, size=n)
  for i, m in enumerate(lengths):
    real[i, :m] = True
  logits = rng.standard_normal((n, heads, length, length))
  logits = np.where(real[:, None, None, :], logits, -np.inf)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  got = structure.attention_focus(probs, real)
  # A plain loop over sentences, heads and tokens.
  self_, sep_, ent, on_cls, on_sep = [], [], [], [], []
  for i in range(n):
    s = lengths[i] - 1
    for h in range(heads):
      row = probs[i, h, 0, :lengths[i]]
      self_.append(row[0])
      sep_.append(row[s])
      ent.append(-sum(p * np.log(p) for p in row))
    for q in range(lengths[i]):
      on_cls.append(probs[i, :, q, 0].mean())
      on_sep.append(probs[i, :, q, s].mean())
  assert got["cls_self"] == pytest.approx(np.mean(self_))
  assert got["cls_sep"] == pytest.approx(np.mean(sep_))
  assert got["cls_rest"] == pytest.approx(1 - np.mean(self_) - np.mean(sep_))
  assert got["cls_entropy"] == pytest.approx(np.mean(ent))
  assert got["all_on_cls"] == pytest.approx(np.mean(on_cls))
  assert got["all_on_sep"] == pytest.approx(np.mean(on_sep))
  # Every token attending only to [SEP]: mass 1 there, entropy 0; uniform: log(length).
  sink = np.zeros_like(probs)
  sink[np.arange(n), :, :, lengths - 1] = 1.0
  out = structure.attention_focus(sink, real)
  assert (out["cls_sep"], out["all_on_sep"], out["cls_self"]) == (1.0, 1.0, 0.0)
  assert out["cls_entropy"] == pytest.approx(0.0, abs=1e-12)
  full = np.ones((2, 1, 4, 4), bool)
  uniform = structure.attention_focus(np.full((2, 1, 4, 4), 0.25), full[:, 0, 0])
  assert uniform["cls_entropy"] == pytest.approx(np.log(4))
  assert uniform["cls_rest"] == pytest.approx(0.5)


def test_token_cosine_against_pairwise_loop_and_one_for_identical_tokens(structure):
  rng = np.random.default_rng(8)
  x = rng.standard_normal((4, 6, 5)) + 0.5
  real = np.ones((4, 6), bool)
  real[1, 4:] = False
  real[3, 1:] = False  # one real token: no pair, left out
  want = []
  for i in range(3):
    v = x[i][real[i]]
    v = v / np.linalg.norm(v, axis=-1, keepdims=True)
    want.append(np.mean([v[a] @ v[b] for a in range(len(v)) for b in range(len(v)) if a != b]))
  assert structure.token_cosine(x, real) == pytest.approx(np.mean(want))
  same = np.repeat(x[:, :1], 6, axis=1) * rng.uniform(0.5, 2.0, size=(4, 6, 1))  # scale only
  assert structure.token_cosine(same, real) == pytest.approx(1.0)
  assert np.isnan(structure.token_cosine(x[3:], real[3:]))
  # A constant every token carries: raw cosine near 1, centred back to the constant-free value.
  big = x + 100.0
  assert structure.token_cosine(big, real) > 0.99
  assert structure.token_cosine(big, real, centre=True) == pytest.approx(
      structure.token_cosine(x, real, centre=True))
  centred = x - x[real].mean(axis=0)
  assert structure.token_cosine(x, real, centre=True) == pytest.approx(
      structure.token_cosine(centred, real))


@pytest.fixture(scope="module")
def tiny_topk_run(tmp_path_factory):
  """A real, tiny top-k run's workdir: 6 steps, checkpoints 2, 4 and 6 kept."""
  from tiny_bert import make_tiny_bert, tiny_config

  from mvp_jax import trainer

  tmp = tmp_path_factory.mktemp("tiny_topk")
  run = tmp / "run"
  trainer.train_and_evaluate(tiny_config(make_tiny_bert(tmp / "bert"), **{
      "train.max_steps": 6, "train.eval_every_steps": 0, "train.keep_checkpoints": 5}), run)
  return run


@pytest.mark.slow
def test_checkpoint_analyses_run_end_to_end_on_a_tiny_topk_run(tmp_path, structure,
                                                               tiny_topk_run):
  """mask_quality.py and mask_structure.py (full and --spread-only) on a real, tiny top-k run:
  every field they write is there, and the probabilities and shares are what they claim."""
  from mvp_jax import run_io

  run = tiny_topk_run
  quality = load_benchmark("mask_quality")
  quality.main([str(run), "--steps", "2,6", "--levels", "0.5", "--out", str(tmp_path / "q.json")])
  q = json.loads((tmp_path / "q.json").read_text())
  assert q["metric"] == "accuracy" and q["eval_examples"] == 40 and q["run_config"]["seed"] == 42
  assert [r["step"] for r in q["rows"]] == [2, 6]
  assert set(q["rows"][1]["by_level"]["0.5"]) == set(quality.CRITERIA)

  structure.main([str(run), "--steps", "4", "--spread-only", "--out", str(tmp_path / "s.json")])
  s = json.loads((tmp_path / "s.json").read_text())
  (row,) = s["rows"]
  assert row["step"] == 4 and 0.1 < row["level"] < 1.0
  assert [r["unmasked_layers"] for r in row["spare_bottom_layers"]] == [0, 1, 2]
  for kind in ("masked", "unmasked"):
    layers = row["attention"][kind]
    assert len(layers) == 2
    for a in layers:
      assert a["cls_self"] + a["cls_sep"] + a["cls_rest"] == pytest.approx(1.0)
      assert 0.0 <= a["cls_entropy"] <= np.log(32) and 0.0 <= a["all_on_sep"] <= 1.0
    for v in row["first_token_spread"][kind].values():
      assert -1.0 <= v["token_cosine_centred"] <= 1.0 and -1.0 <= v["token_cosine"] <= 1.0

  assert set(row["without_cls_constants"]["masked"]) == {"all", "bottom", "top"}
  assert all(0.0 <= v <= 1.0 for v in row["without_cls_constants"]["unmasked"].values())

  # The interceptor: with no constants it changes nothing; with layer 0's measured constant,
  # the [CLS] output of layer 0's MLP averages to zero over the sentences it was measured on
  # (later layers' inputs change with it, so only layer 0 is exact).
  import flax.linen as nn

  loaded = run_io.load_run(run, 4)
  evaluate, _, task = quality.make_evaluator(loaded)
  feats = task.eval_features
  assert evaluate(loaded.params, structure.remove_cls_constants({})) == evaluate(loaded.params)
  consts = structure.cls_constants(*structure.capture(loaded, loaded.params, feats))
  assert sorted(consts) == [0, 1] and np.linalg.norm(consts[0]) > 0
  with nn.intercept_methods(structure.remove_cls_constants({0: consts[0]})):
    _, outs = structure.module_outputs(loaded, loaded.params, feats, 128, (nn.Dense,))
  first = outs["bert/encoder/layer/0/output/dense"][:, 0]
  assert np.abs(first.mean(axis=0)).max() < 0.01 * np.abs(consts[0]).max()  # float32 sums

  structure.main([str(run), "--steps", "4", "--dims", "2", "--random-draws", "1",
                  "--out", str(tmp_path / "f.json")])
  (full,) = json.loads((tmp_path / "f.json").read_text())["rows"]
  # The lift-the-mask loop's last entry (every layer unmasked) is the unmasked model.
  assert full["accuracy"]["unmasked"] == pytest.approx(row["spare_bottom_layers"][-1]["metric"])
  assert set(full["margins"]) == {"unmasked", "masked", "random_mask"}
  assert sum(k.startswith("only_layer") for k in full["accuracy"]) == 2


def test_tail_shift_statistics_on_known_shifts_and_signs():
  """shift_stats: a constant shift is all common mode and squeezes nothing; a zero-mean one has
  no common mode. tail_alignment: the mean sign over each tail, by hand."""
  ts = load_benchmark("tail_shift")
  rng = np.random.default_rng(0)
  base = rng.standard_normal((200, 3))
  labels = base.argmax(-1)
  names = ("a", "b", "c")
  const = ts.shift_stats(base, base + np.array([2.0, 0.0, -1.0]), labels, names)
  assert const["common_mode"] == pytest.approx(1.0) and const["favoured"] == "a"
  assert const["spread_ratio"] == pytest.approx(1.0) and const["accuracy"] < 1.0
  noise = rng.standard_normal((200, 3))
  zero_mean = ts.shift_stats(base, base + noise - noise.mean(0), labels, names)
  assert zero_mean["common_mode"] < 1e-12 and zero_mean["rms_shift"] > 0.5
  same = ts.shift_stats(base, base, labels, names)
  assert same["accuracy"] == 1.0 and same["common_mode"] == 0.0

  scores = {"k": np.array([[-2.0, 1.0], [-1.0, 3.0]]), "q": np.array([[0.5, -3.0]])}
  sens = {"k": np.array([[1.0, -1.0], [1.0, 1.0]]), "q": np.array([[-1.0, 1.0]])}
  removed = {p: v < 0 for p, v in scores.items()}  # sens +1, +1, +1
  top = {p: v > 0.7 for p, v in scores.items()}  # sens -1, +1
  a = ts.tail_alignment(scores, removed, top, sens)
  assert a["removed_mean_sign"] == 1.0 and a["top_mean_sign"] == 0.0
  assert a["all_mean_sign"] == pytest.approx(2 / 6)


@pytest.mark.slow
def test_tail_shift_gradient_split_matches_the_sensitivities_on_a_tiny_run(tmp_path,
                                                                          tiny_topk_run):
  """Two code paths agree: unmasked, the common part of the scores' gradient is
  sum_c mean_error_c * sensitivity_c; the mean error is the logits' own; the whole gradient is
  more than its common part. Then tail_shift.py writes its fields."""
  from mvp_jax import run_io

  ts = load_benchmark("tail_shift")
  quality = load_benchmark("mask_quality")
  structure = load_benchmark("mask_structure")
  run = run_io.load_run(tiny_topk_run, 6)
  _, _, task = quality.make_evaluator(run)
  feats = {k: np.asarray(v)[:24] for k, v in task.train_features.items()}
  full, common, err = ts.score_gradients(run, run.params, feats, 24, 8)
  sens = ts.sensitivities(run, run.params, feats, 24, 8)
  expect = sum(err[c] * np.concatenate([s[p].ravel() for p in sorted(s)])
               for c, s in enumerate(sens))
  np.testing.assert_allclose(common, expect, rtol=1e-3, atol=1e-4 * np.abs(expect).max())
  assert np.abs(full - common).max() > 0.1 * np.abs(full).max()
  logits = structure.make_logits(run, feats, 8)(run.params)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  onehot = np.eye(logits.shape[-1])[feats["labels"]]
  np.testing.assert_allclose(err, (probs - onehot).mean(0), atol=1e-5)

  ts.main([str(tiny_topk_run), "--steps", "4", "--examples", "24", "--random-draws", "1",
           "--out", str(tmp_path / "t.json")])
  (row,) = json.loads((tmp_path / "t.json").read_text())["rows"]
  assert row["step"] == 4 and 0.1 < row["level"] < 1.0
  assert set(row["shifts"]) == {"scores", "neg_scores", "magnitude", "random"}
  assert set(row["alignment"]) == set(run.label_names)
  assert -1.0 <= row["score_gradient"]["cos_common_full"] <= 1.0


@pytest.fixture(scope="module")
def intervention():
  """benchmarks/score_gradient_intervention.py, loaded once (it defines absl flags)."""
  return load_benchmark("score_gradient_intervention")


def _flat_vector(tree) -> np.ndarray:
  return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


@pytest.mark.slow
def test_score_gradient_interventions_against_direct_gradients_on_a_tiny_run(intervention,
                                                                             tiny_topk_run):
  """Each mode's gradients against ones taken directly with jax.grad of the quantities the
  docstring names (no cotangents): the weights' gradient is the loss's but for
  `centred_weights`; `none` gives the
  loss's score gradient, `centred` that minus the gradient of the batch's mean error sent back
  by every example, `project` a score gradient orthogonal to every class's mean-centred-logit
  gradient, differing from the loss's by a vector in their span; `centred_weights` does to the
  weights what `centred` does to the scores (the classifier bias is left no gradient)."""
  from mvp_jax import pruning, run_io, trainer
  from mvp_jax.data import batching

  run = run_io.load_run(tiny_topk_run, 6)
  quality = load_benchmark("mask_quality")
  _, _, task = quality.make_evaluator(run)
  feats = {k: np.asarray(v)[:8] for k, v in task.train_features.items()}
  (batch,) = [{k: jnp.asarray(v) for k, v in b.items()}
              for b in batching.eval_batches(feats, 8)]
  batch["weights"] = batch["weights"].at[-1].set(0.0)  # a padding row must not count
  level, rng = jnp.float32(0.6), jax.random.key(3)
  trainable = {"params": run.params, "scores": run.scores}

  def logits(tr):
    masked = pruning.multiply_masks(tr["params"], pruning.compute_masks(
        tr["params"], tr["scores"], level, run.spec))
    return trainer.forward(run.model, masked, batch, deterministic=False,
                           dropout_rng=rng).astype(jnp.float32)

  w = batch["weights"]
  z = logits(trainable)
  err = jax.nn.softmax(z) - jax.nn.one_hot(batch["labels"], z.shape[-1])
  mean_err = (err * w[:, None]).sum(0) / w.sum()
  # Jitted: op by op, these gradients and the modes' vmapped pull-backs take twice as long.
  whole = jax.jit(jax.grad(
      lambda tr: trainer.task_loss(logits(tr), batch, "classification")))(trainable)
  common = jax.jit(jax.grad(lambda tr: ((logits(tr) @ mean_err) * w).sum() / w.sum()))(trainable)
  per_class = [_flat_vector(jax.jit(jax.grad(lambda s, c=c: ((
      logits({"params": run.params, "scores": s})[:, c]
      - logits({"params": run.params, "scores": s}).mean(-1)) * w).sum() / w.sum()))(
          run.scores)) for c in range(z.shape[-1])]

  compiled = {mode: jax.jit(functools.partial(intervention.intervened_grads, model=run.model,
                                              spec=run.spec, mode=mode))
              for mode in intervention.MODES}

  def intervened(mode, active=True):
    return compiled[mode](trainable, batch, level=level, dropout_rng=rng,
                          active=jnp.bool_(active))

  got = {}
  for mode in intervention.MODES:
    loss, grads, _, metrics, basis = intervened(mode)
    np.testing.assert_allclose(float(loss), float(trainer.task_loss(z, batch, "classification")),
                               rtol=1e-6)
    want = whole["params"]
    if mode == "centred_weights":
      want = jax.tree.map(jnp.subtract, whole["params"], common["params"])
      bias = grads["params"]["classifier"]["bias"]  # its gradient is all common part
      assert np.abs(bias).max() <= 1e-5 * np.abs(whole["params"]["classifier"]["bias"]).max()
    np.testing.assert_allclose(_flat_vector(grads["params"]), _flat_vector(want),
                               rtol=1e-4, atol=1e-6)
    got[mode] = _flat_vector(grads["scores"])
    assert float(metrics["score_grad_norm"]) == pytest.approx(
        np.linalg.norm(_flat_vector(whole["scores"])), rel=1e-4)
    if mode in ("project", "project_update"):  # the span both project on: each class's g_c
      for c, gc in enumerate(per_class):
        np.testing.assert_allclose(_flat_vector(jax.tree.map(lambda x, c=c: x[c], basis)), gc,
                                   atol=1e-4 * np.abs(gc).max())
    else:
      assert basis is None
  for mode in ("centred", "project"):  # inactive (before the cut): the gradient as it is
    _, grads, _, metrics, _ = intervened(mode, active=False)
    # A batched vjp, fused differently: float32 rounding at ~1e-7 of the largest entry.
    np.testing.assert_allclose(_flat_vector(grads["scores"]), got["none"],
                               rtol=1e-5, atol=1e-6 * np.abs(got["none"]).max())
    assert float(metrics["score_removed_share"]) == 0.0
  g = _flat_vector(whole["scores"])
  scale = np.abs(g).max()
  np.testing.assert_allclose(got["none"], g, atol=1e-5 * scale)
  for mode in ("frozen", "project_update", "centred_weights"):  # the scores' gradient as is
    np.testing.assert_allclose(got[mode], got["none"], rtol=1e-5, atol=1e-6 * scale)
  np.testing.assert_allclose(got["centred"], g - _flat_vector(common["scores"]),
                             atol=1e-4 * scale)
  assert np.abs(got["centred"] - g).max() > 0.01 * scale  # it did remove something
  new = got["project"]
  for gc in per_class:
    assert abs(new @ gc) <= 1e-4 * np.linalg.norm(new) * np.linalg.norm(gc)
  span = np.stack(per_class, axis=1)
  coef, *_ = np.linalg.lstsq(span, g - new, rcond=None)
  assert np.linalg.norm(span @ coef - (g - new)) <= 1e-3 * np.linalg.norm(g - new)
  assert np.linalg.norm(g - new) > 0.01 * np.linalg.norm(g)


@pytest.mark.slow
def test_centred_score_gradient_vanishes_when_every_example_is_the_same(intervention,
                                                                        tiny_topk_run):
  """The same sentence eight times, with both labels, and no dropout: every example's logits
  depend on the scores alike, so the loss's score gradient is all common part and `centred`
  leaves nothing of it (while `none` does)."""
  import dataclasses

  from mvp_jax import run_io
  from mvp_jax.data import batching

  run = run_io.load_run(tiny_topk_run, 6)
  quality = load_benchmark("mask_quality")
  _, _, task = quality.make_evaluator(run)
  feats = {k: np.repeat(np.asarray(v)[:1], 8, axis=0) for k, v in task.train_features.items()}
  feats["labels"] = np.arange(8) % 2
  (batch,) = [{k: jnp.asarray(v) for k, v in b.items()}
              for b in batching.eval_batches(feats, 8)]
  model = run.model.clone(config=dataclasses.replace(
      run.model.config, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
  norms = {}
  for mode in ("none", "centred"):
    _, grads, _, _, _ = intervention.intervened_grads(
        {"params": run.params, "scores": run.scores}, batch, model=model, spec=run.spec,
        level=jnp.float32(0.6), dropout_rng=jax.random.key(0), mode=mode)
    norms[mode] = np.linalg.norm(_flat_vector(grads["scores"]))
  assert norms["none"] > 0 and norms["centred"] <= 1e-4 * norms["none"]


@pytest.mark.slow
def test_intervention_none_trains_exactly_as_train_step_and_modes_are_not_mixed(
    tmp_path, intervention):
  """`none` through train_and_evaluate reproduces a plain run's weights and scores; `project`
  trains (and logs what it removed); a workdir of one mode refuses another; non-top-k refused."""
  import functools

  from tiny_bert import compare_runs, make_tiny_bert, read_metrics, tiny_config

  from mvp_jax import run_io, trainer
  from mvp_jax.errors import UserError

  bert = make_tiny_bert(tmp_path / "bert")
  config = tiny_config(bert, **{"train.max_steps": 4, "train.eval_every_steps": 0})
  trainer.train_and_evaluate(config, tmp_path / "plain")
  step = functools.partial(intervention.intervened_train_step, mode="none")
  trainer.train_and_evaluate(config, tmp_path / "none", step_fn=step)
  diff = compare_runs(tmp_path / "plain", tmp_path / "none")
  assert diff["params_max_abs_diff"] <= 1e-6 and diff["scores_max_abs_diff"] <= 1e-6, diff

  intervention.record_mode(tmp_path / "proj", "project")
  trainer.train_and_evaluate(config, tmp_path / "proj", step_fn=functools.partial(
      intervention.intervened_train_step, mode="project"))
  trainer.train_and_evaluate(config, tmp_path / "proj_update", step_fn=functools.partial(
      intervention.intervened_train_step, mode="project_update"))
  for name in ("proj", "proj_update"):  # a projection removes a share in [0, 1]
    rows = [r for r in read_metrics(tmp_path / name) if "train/score_removed_share" in r]
    assert len(rows) == 4, name
    assert all(0.0 <= r["train/score_removed_share"] <= 1.0 + 1e-4 for r in rows), rows
    assert any(r["train/score_removed_share"] > 0 for r in rows), rows
  # frozen: the scores stop at the last step of level 1; the weights go on training.
  frozen_config = tiny_config(bert, **{"train.max_steps": 4, "train.eval_every_steps": 0,
                                       "train.checkpoint_every_steps": 1,
                                       "train.keep_checkpoints": 5})
  trainer.train_and_evaluate(frozen_config, tmp_path / "frozen", step_fn=functools.partial(
      intervention.intervened_train_step, mode="frozen"))
  levels = {r["step"]: r["train/level"] for r in read_metrics(tmp_path / "frozen")
            if "train/level" in r}
  last_dense = max(s for s, v in levels.items() if v == 1.0)
  assert last_dense < 4, levels
  runs = [run_io.load_run(tmp_path / "frozen", s) for s in range(last_dense, 5)]
  for before, after in zip(runs, runs[1:], strict=False):
    for x, y in zip(jax.tree.leaves(before.scores), jax.tree.leaves(after.scores), strict=True):
      np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(
        jax.tree.leaves(before.params), jax.tree.leaves(after.params), strict=True))
  assert any(np.abs(x).max() > 0 for x in jax.tree.leaves(runs[0].scores))  # learnt, not 0

  with pytest.raises(UserError, match="--intervention=project"):
    intervention.record_mode(tmp_path / "proj", "centred")
  with pytest.raises(UserError, match="--intervention_start=cut"):
    intervention.record_mode(tmp_path / "proj", "project", "start")
  intervention.record_mode(tmp_path / "proj", "project", "cut")  # the same: accepted
  with pytest.raises(UserError, match="without this script"):
    intervention.record_mode(tmp_path / "plain", "centred")
  with pytest.raises(UserError, match="pruning.method=topk"):
    trainer.train_and_evaluate(tiny_config(bert, **{"pruning.method": "magnitude"}),
                               tmp_path / "mag", step_fn=step)


def test_run_dynamics_medians_per_window(tmp_path):
  dyn = load_benchmark("run_dynamics")
  rng = np.random.default_rng(0)
  run = tmp_path / "run"
  run.mkdir()
  rows = []
  for step in range(5, 101, 5):
    rows.append({"step": step, "train/loss": 1.0, "train/grad_norm": float(rng.random()),
                 "train/task_loss": float(rng.random()), "train/level": 1.0 - step / 200})
    if step % 10 == 0:  # churn is logged on some steps only
      rows[-1]["train/mask_churn"] = float(rng.random())
    if step == 50:
      rows.append({"step": 50, "eval/accuracy": 0.5})  # eval rows do not count
  (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  out = tmp_path / "d.json"
  dyn.main([str(run), "--windows", "5-50,55-100,200-300", "--out", str(out)])
  got = json.loads(out.read_text())["runs"][str(run)]
  assert got["last_eval"] == {"step": 50, "eval/accuracy": 0.5}
  assert got["evals"] == [{"step": 50, "eval/accuracy": 0.5}] and got["intervention"] is None
  (run / "intervention.json").write_text('{"intervention": "project"}\n')
  dyn.main([str(run), "--windows", "5-50", "--out", str(out)])
  assert json.loads(out.read_text())["runs"][str(run)]["intervention"] == "project"
  train = [r for r in rows if "train/loss" in r]
  for window, (a, b) in zip(got["windows"], [(5, 50), (55, 100), (200, 300)], strict=True):
    inside = [r for r in train if a <= r["step"] <= b]
    assert window["n"] == len(inside)
    for name, key in dyn.KEYS.items():
      values = [r[key] for r in inside if key in r]
      assert window[name] == (float(np.median(values)) if values else None), (name, window)
  with pytest.raises(ValueError, match="start 9 is after end 3"):
    dyn.parse_windows("9-3")
  with pytest.raises(SystemExit):
    dyn.main([str(tmp_path / "missing"), "--windows", "1-2", "--out", str(out)])


def test_run_dynamics_course_dead_and_back():
  # Blocks of 25 steps, from the first pruning step on: dead where two blocks in a row have a
  # median task loss >= 0.66, back where two later blocks in a row are below 0.65.
  dyn = load_benchmark("run_dynamics")

  def rows(losses, prune_from=101):
    return [{"step": s, "train/task_loss": x, "train/level": 1.0 if s < prune_from else 0.5}
            for s, x in zip(range(5, 5 * len(losses) + 1, 5), losses, strict=True)]

  # 0.69 during the dense warm-up does not count; dead over 126-175, back over 226-275.
  losses = [0.69] * 20 + [0.5] * 5 + [0.7] * 10 + [0.67, 0.6, 0.6, 0.6, 0.6] + [0.7] * 5
  losses += [0.3] * 10 + [0.7] * 5
  assert dyn.course(rows(losses)) == {"dead_by": 150, "back_by": 250}
  # One block above the line is not death; a single block below it is not a return.
  flicker = [0.5] * 25 + [0.7] * 5 + [0.5] * 5 + [0.7] * 10 + [0.6] * 5 + [0.7] * 10
  assert dyn.course(rows(flicker)) == {"dead_by": 200, "back_by": None}
  assert dyn.course(rows([0.4] * 60)) == {"dead_by": None, "back_by": None}
  assert dyn.course(rows([0.7] * 60, prune_from=10**6)) == {"dead_by": None, "back_by": None}


def test_trec_regrouped_keeps_questions_and_merges_classes(tmp_path, capsys):
  """The files hold TREC's questions, split and order unchanged, with each question's coarse
  class replaced by its group, and read back through data.source='files' as 2 or 3 classes."""
  from mvp_jax.data.files import read_text_files
  from mvp_jax.data.offline import TREC_LABELS, read_trec

  tr = load_benchmark("trec_regrouped")
  trec = read_trec()
  for classes, names in [(2, ["ABBR+DESC+ENTY", "HUM+LOC+NUM"]),
                         (3, ["ABBR+DESC+ENTY", "HUM", "LOC+NUM"])]:
    out = tmp_path / str(classes)
    tr.main([str(out), "--classes", str(classes)])
    assert "4848 questions" in capsys.readouterr().out
    train, dev, got_names = read_text_files(str(out / "train.csv"), str(out / "dev.csv"))
    assert got_names == names
    for got, want in zip((train, dev), trec, strict=True):
      assert got.text_a == want.text_a
      groups = [names.index(next(n for n in names if TREC_LABELS[y] in n.split("+")))
                for y in want.labels]
      assert got.labels == groups
      assert sorted(set(groups)) == list(range(classes))
    assert not list(out.glob("*.tmp"))


def test_host_memory_benchmark_runs_both_settings_and_renders(report, tmp_path):
  """benchmarks/host_memory.py end to end on the tiny model: two workers, round-robin, block."""
  host_memory = load_benchmark("host_memory")
  out = tmp_path / "host_memory.json"
  host_memory.main(["--models", "tiny", "--rounds", "2", "--steps", "1", "--out", str(out)])
  res = json.loads(out.read_text())
  sec = res["models"]["tiny"]
  assert sec["workers"]["glibc"]["applied"] is False
  glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
  assert sec["workers"]["reuse"]["applied"] is glibc
  for v in ("dense", "topk_local"):
    for s in ("glibc", "reuse"):
      assert len(sec["variants"][v][s]["times_s"]) == 2  # rounds x steps
      assert len(sec["variants"][v][s]["faults"]) == 2
  doc = tmp_path / "results.md"
  doc.write_text("# Results\n")
  text = report.update_doc(doc, tmp_path)
  assert "### Train step: glibc's malloc vs kept host memory" in text
  assert "| tiny | `topk_local` |" in text


def test_checkpoint_save_benchmark_runs_both_savers_and_renders(report, tmp_path):
  """benchmarks/checkpoint_save.py on the tiny model's state over the 8 test devices."""
  bench = load_benchmark("checkpoint_save")
  out = tmp_path / "checkpoint_save.json"
  bench.main(["--models", "tiny", "--rounds", "2", "--out", str(out)])
  res = json.loads(out.read_text())
  sec = res["models"]["tiny"]
  assert res["device_count"] == 8 and sec["arrays"] > 0 and sec["state_bytes"] > 0
  for saver in ("replica_parallel", "one_replica"):
    row = sec["savers"][saver]
    assert len(row["blocked_s"]) == len(row["total_s"]) == 2
    assert all(0 < b <= t for b, t in zip(row["blocked_s"], row["total_s"], strict=True))
    assert row["bytes_on_disk"] > 0
  doc = tmp_path / "results.md"
  doc.write_text("# Results\n")
  text = report.update_doc(doc, tmp_path)
  assert "### Checkpoint save: replica-parallel copy vs one replica" in text
  assert "| tiny | " in text and "replicated over 8 devices" in text


def test_profile_step_attributes_self_time_and_shares_concurrent_time():
  """profile_step.attribute on a hand-made trace: nested thunks' time leaves their parent's
  self time, concurrent thunks share each moment, non-kernel spans are left out."""
  prof = load_benchmark("profile_step")
  ms = 1e6
  events = [
    ("tf_XLAEigen/1", "while.3", 0, 10 * ms),  # its body's kernel runs inside it
    ("tf_XLAEigen/1", "convert_reduce_fusion.7", 2 * ms, 3 * ms),
    ("tf_XLAEigen/1", "end: convert_reduce_fusion.7", 4 * ms, 1 * ms),
    ("tf_XLAEigen/2", "multiply_add_fusion.757", 3 * ms, 4 * ms),
    ("tf_XLAEigen/2", "ThunkExecutor::Execute", 0, 50 * ms),
    ("tf_XLAPjRtCpuClient/9", "PjRtCpuExecutable::Execute", 0, 60 * ms),
    ("python", "multiply_add_fusion.1", 0, 9 * ms),
  ]
  got = prof.attribute(events, steps=2)
  assert got["self_ms_by_kind"] == pytest.approx(
    {"while": 3.5, "multiply_add_fusion": 2.0, "convert_reduce_fusion": 1.0,
     "end: convert_reduce_fusion": 0.5})
  # [0,2) while; [2,3) reduce; [3,4) reduce + multiply_add; [4,5) end + multiply_add;
  # [5,7) while + multiply_add; [7,10) while.
  assert got["wall_ms_by_kind"] == pytest.approx(
    {"while": 3.0, "multiply_add_fusion": 1.0, "convert_reduce_fusion": 0.75,
     "end: convert_reduce_fusion": 0.25})
  assert list(got["wall_ms_by_kind"])[0] == "while"  # largest first
  assert got["busy_ms"] == pytest.approx(5.0)
  # Only the step windows' time counts: [1, 2) while; [2, 3) reduce; [6, 7) while +
  # multiply_add; [7, 8) while. Per step (steps=2), half of each.
  spans = [("python", prof.STEP_SPAN, 6 * ms, 2 * ms), ("python", prof.STEP_SPAN, 1 * ms, 2 * ms)]
  windows = prof.step_windows(events + spans)
  assert windows == [(1 * ms, 3 * ms), (6 * ms, 8 * ms)]
  got = prof.attribute(events + spans, steps=2, windows=windows)
  assert got["wall_ms_by_kind"] == pytest.approx(
    {"while": 1.25, "convert_reduce_fusion": 0.5, "multiply_add_fusion": 0.25})
  assert got["self_ms_by_kind"] == pytest.approx(
    {"while": 1.5, "convert_reduce_fusion": 0.5, "multiply_add_fusion": 0.5})
  assert got["busy_ms"] == pytest.approx(2.0)
  assert got["outside_busy_ms"] == pytest.approx(3.0)  # [0, 1), [3, 6), [8, 10)
  assert prof.kernel_kind("ynn_fusion.295") == "ynn_fusion"
  assert prof.kernel_kind("dot") == "dot"


def test_profile_step_attribution_against_a_unit_grid_on_random_traces():
  """On random nested traces over several threads, with and without random step windows: each
  thread's self time is its top-level spans' total, and the shared times add up to the union of
  all kernel spans (all counted on a grid of whole units, only units inside the windows)."""
  prof = load_benchmark("profile_step")
  rng = np.random.default_rng(0)
  for trial in range(40):
    events, owner = [], {}
    for line in range(int(rng.integers(1, 4))):
      t = 0
      for _ in range(int(rng.integers(1, 6))):
        t += int(rng.integers(0, 4))
        length = int(rng.integers(1, 12))
        events.append((f"t{line}", f"k{len(events)}", t, length))
        owner.update({(line, u): f"k{len(events) - 1}" for u in range(t, t + length)})
        if length > 2:  # one child strictly inside
          c = t + int(rng.integers(1, length - 1))
          c_len = int(rng.integers(1, t + length - c + 1))
          events.append((f"t{line}", f"c{len(events)}", c, c_len))
          owner.update({(line, u): f"c{len(events) - 1}" for u in range(c, c + c_len)})
        t += length
    windows, every = None, {u for _, u in owner}
    if trial % 2:  # 1-3 disjoint windows of whole units
      edges = np.sort(rng.choice(np.arange(0, 60), size=2 * int(rng.integers(1, 4)),
                                 replace=False))
      windows = [(float(a) * 1e6, float(b) * 1e6) for a, b in edges.reshape(-1, 2)]
      inside = {u for a, b in edges.reshape(-1, 2) for u in range(a, b)}
      owner = {k: v for k, v in owner.items() if k[1] in inside}
    got = prof.attribute([(a, b, c * 1e6, d * 1e6) for a, b, c, d in events], steps=1,
                         windows=windows)
    units = {u for _, u in owner}
    assert got["busy_ms"] == pytest.approx(len(units))
    if windows:
      assert got["outside_busy_ms"] == pytest.approx(len(every - units))
    expect = collections.Counter()
    for u in units:
      here = [name for (line, v), name in owner.items() if v == u]
      for name in here:
        expect[name] += 1 / len(here)
    assert got["wall_ms_by_kind"] == pytest.approx(dict(expect))
    assert sum(got["self_ms_by_kind"].values()) == pytest.approx(len(owner))


def test_profile_step_runs_on_a_tiny_model(step):
  """profile_step's two measurements end to end on the tiny model: a traced step per variant
  whose kernels ran for at most the step's time inside it, and the optimizer update alone,
  whose score count is the pruned matrices' size."""
  prof = load_benchmark("profile_step")
  model, params = step.random_model(step.tiny_config())
  got = prof.profile(step, model, params, "minilm", ["dense", "topk_local"], steps=1,
                     log=lambda _: None)
  for v in got.values():
    # Only kernel time inside the step counts (CI once saw 983 ms of kernels in a trace around
    # a 144 ms step, when the step's time was not yet clipped to an annotation).
    assert 0 < v["busy_ms"] <= v["median_ms"] * 1.01
    assert v["outside_busy_ms"] >= -1e-6
    assert sum(v["self_ms_by_kind"].values()) >= v["busy_ms"] * 0.99
  opt = prof.optimizer_update(step, params, rounds=2, log=lambda _: None)
  spec = pruning.PruningSpec(method="topk")
  assert opt["scores"] == sum(x.size for x in jax.tree.leaves(pruning.init_scores(params, spec)))
  assert opt["params_ms"] > 0 and opt["params_and_scores_ms"] > 0


def test_step_work_finds_pruning_adds_the_same_work_at_every_shape(step, report, tmp_path):
  """benchmarks/step_work.py on the tiny model: local top-k adds flops and bytes to the compiled
  step, and the same amount at 4x the tokens (its extra work is per weight)."""
  bench = load_benchmark("step_work")
  out = tmp_path / "step_work.json"
  args = bench.parse_args(["--quick", "--shapes", "8x8,32x8", "--variants", "topk_local",
                           "--out", str(out)])
  bench.run(args, log=lambda _: None, compiler_options=step.FAST_COMPILE)
  rows = json.loads(out.read_text())["models"]["tiny"]["rows"]
  assert [(r["batch_size"], r["seq_len"]) for r in rows] == [(8, 8), (32, 8)]
  added = []
  for r in rows:
    dense, topk = r["variants"]["dense"], r["variants"]["topk_local"]
    assert dense["flops"] > 0 and dense["kernels"] > 0 and dense["peak_bytes"] > 0
    added.append((topk["flops"] - dense["flops"], topk["bytes"] - dense["bytes"]))
  assert rows[1]["variants"]["dense"]["flops"] > 3 * rows[0]["variants"]["dense"]["flops"]
  assert all(f > 0 and b > 0 for f, b in added)
  assert added[1][0] == pytest.approx(added[0][0], rel=1e-3)
  assert added[1][1] == pytest.approx(added[0][1], rel=1e-3)
  doc = tmp_path / "results.md"
  doc.write_text("# Results\n")
  text = report.update_doc(doc, tmp_path)
  assert "what pruning adds to the compiled program, by tokens per step" in text
  assert "| tiny | 32 x 8 | 256 |" in text and "tiny `topk_local`" in text
  with pytest.raises(SystemExit):
    bench.parse_args(["--shapes", "32by64"])

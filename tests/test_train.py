"""End-to-end runs of the trainer on a tiny BERT: every method, distillation, 8 fake devices,
tensor parallelism, gradient accumulation, resume after SIGKILL, and the train.py command line."""

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from mvp_jax import run_config, trainer
from mvp_jax.errors import UserError

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tiny_bert import make_tiny_bert, read_metrics, tiny_config  # noqa: E402


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  return make_tiny_bert(tmp_path_factory.mktemp("tiny") / "bert")


@pytest.mark.parametrize("method,extra", [
  ("topk", {}),
  ("topk", {"pruning.scope": "global"}),
  ("magnitude", {}),
  # Scores must travel from 0 to below logit(0.1) = -2.2 in a few steps: a large score lr.
  ("sigmoid_threshold", {"pruning.initial_level": 0.0, "pruning.final_level": 0.1,
                         "pruning.final_lambda": 50.0, "optim.score_learning_rate": 2.0}),
  ("l0", {"pruning.initial_level": 1.0, "pruning.final_level": 1.0, "pruning.final_lambda": 5.0,
          "pruning.score_scale": 2.197}),
  ("none", {"pruning.final_level": 1.0}),
])
def test_every_method_trains_on_8_devices(tiny_dir, tmp_path, method, extra):
  c = tiny_config(tiny_dir, **{"pruning.method": method, **extra})
  results = trainer.train_and_evaluate(c, tmp_path)
  assert results["step"] == 6
  assert set(results["metrics"]) == {"accuracy", "f1"}
  rows = read_metrics(tmp_path)
  train_rows = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train_rows] == [1, 2, 3, 4, 5, 6]
  assert all(np.isfinite(r["train/loss"]) for r in train_rows)
  assert [r["step"] for r in rows if "eval/accuracy" in r] == [3, 6]
  if method in ("topk", "magnitude"):
    # Cubic schedule with t_i = 1, t_f = 2 over 6 steps: dense at step 1, final from step 4.
    levels = [r["train/level"] for r in train_rows]
    assert levels[0] == 1.0 and levels[-1] == pytest.approx(0.1)
    assert results["remaining_weights_plain"] == pytest.approx(0.1, abs=1e-3)
    assert results["remaining_weights_paper"] > results["remaining_weights_plain"]
  if method == "sigmoid_threshold":
    assert max(r["train/lambda"] for r in train_rows) > 0
    assert results["remaining_weights_plain"] < 1.0
  if method == "none":
    assert results["remaining_weights_paper"] == 1.0
    assert not any("train/mask_churn" in r for r in train_rows)
  else:
    churn = [r["train/mask_churn"] for r in train_rows]
    assert all(0.0 <= x <= 1.0 for x in churn), churn
    if method != "l0":  # step 1 keeps every weight before and after (level 1, or tau 0)
      assert churn[0] == 0.0, churn
  assert (tmp_path / "eval_results.json").is_file()
  assert json.loads((tmp_path / "config.json").read_text())["pruning"]["method"] == method


def test_logged_mask_churn_matches_the_checkpoints_with_accumulation(tiny_dir, tmp_path):
  """train/mask_churn at optimizer step s = mask_change(masks of checkpoint s-1, masks of
  checkpoint s), both at the level logged for step s; with 2 micro-batches per step."""
  from mvp_jax import pruning, run_io

  c = tiny_config(tiny_dir, **{"optim.grad_accum_steps": 2, "train.checkpoint_every_steps": 1,
                               "train.keep_checkpoints": 10, "train.eval_every_steps": 0})
  trainer.train_and_evaluate(c, tmp_path)
  rows = {r["step"]: r for r in read_metrics(tmp_path) if "train/loss" in r}
  assert sorted(rows) == [1, 2, 3, 4, 5, 6]
  spec = pruning.PruningSpec(method="topk", include=c.pruning.include)
  runs = {s: run_io.load_run(tmp_path, step=2 * s) for s in range(1, 7)}
  for s in range(2, 7):
    level = np.float32(rows[s]["train/level"])
    before = pruning.compute_masks(runs[s - 1].params, runs[s - 1].scores, level, spec)
    after = pruning.compute_masks(runs[s].params, runs[s].scores, level, spec)
    assert rows[s]["train/mask_churn"] == pytest.approx(
      float(pruning.mask_change(before, after)), abs=1e-7), s
  assert max(r["train/mask_churn"] for r in rows.values()) > 0


def test_report_export_and_cli_export(tiny_dir, tmp_path):
  c = tiny_config(tiny_dir, **{"train.report": True, "train.export": True})
  results = trainer.train_and_evaluate(c, tmp_path / "run")
  for name in ("remaining.md", "remaining.csv", "remaining_by_layer.png", "scores_vs_weights.png"):
    assert (tmp_path / "run" / "report" / name).is_file(), name
  export = tmp_path / "run" / "export"
  assert {"config.json", "model.safetensors", "flax_model.msgpack", "README.md"} <= {
    p.name for p in export.iterdir()}
  # The exported weights hold exactly the kept fraction of each pruned kernel.
  from mvp_jax.models import hf
  _, params = hf.load_pretrained(str(export), head="classification")
  q = np.asarray(params["bert"]["encoder"]["layer"]["0"]["attention"]["self"]["query"]["kernel"])
  assert (q != 0).mean() == pytest.approx(0.1, abs=1 / q.size)
  card = (export / "README.md").read_text()
  assert "topk" in card
  # The export command line rebuilds the same folder from the checkpoint (its own threshold
  # search; the trainer folded in the masks it had computed for the final evaluation).
  r = subprocess.run([sys.executable, "-m", "mvp_jax.export", "--workdir", str(tmp_path / "run"),
                      "--out", str(tmp_path / "again")], capture_output=True, text=True,
                     timeout=300, cwd=REPO)
  assert r.returncode == 0, r.stderr[-2000:]
  _, again = hf.load_pretrained(str(tmp_path / "again"), head="classification")
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again), strict=True):
    np.testing.assert_array_equal(a, b)
  summaries = [json.loads((d / "pruning.json").read_text()) for d in (export, tmp_path / "again")]
  for key in ("remaining_weights_paper", "remaining_weights_plain"):
    assert summaries[0][key] == summaries[1][key] == results[key], key
  assert results["metrics"]


def test_distillation_from_a_dense_teacher(tiny_dir, tmp_path):
  teacher = tiny_config(tiny_dir, **{"pruning.method": "none", "pruning.final_level": 1.0,
                                     "train.export": True})
  trainer.train_and_evaluate(teacher, tmp_path / "teacher")
  student = tiny_config(tiny_dir, **{"distill.teacher": str(tmp_path / "teacher" / "export"),
                                     "distill.alpha_ce": 0.1, "distill.alpha_distil": 0.9})
  trainer.train_and_evaluate(student, tmp_path / "student")
  rows = [r for r in read_metrics(tmp_path / "student") if "train/loss" in r]
  kd = [r["train/distill_loss"] for r in rows]
  assert all(k > 0 for k in kd)
  for r in rows:
    expected = 0.1 * r["train/task_loss"] + 0.9 * r["train/distill_loss"]
    assert r["train/loss"] == pytest.approx(expected, rel=1e-5)


def test_teacher_without_head_is_refused(tiny_dir, tmp_path):
  c = tiny_config(tiny_dir, **{"distill.teacher": str(tiny_dir)})
  with pytest.raises(UserError, match="teacher|head"):
    trainer.train_and_evaluate(c, tmp_path)


def test_tensor_parallel_mesh_and_accumulation_match_data_parallel(tiny_dir, tmp_path):
  base = tiny_config(tiny_dir, **{"train.max_steps": 4, "train.eval_every_steps": 0})
  dp = trainer.train_and_evaluate(base, tmp_path / "dp")
  tp_cfg = tiny_config(tiny_dir, **{"train.max_steps": 4, "train.eval_every_steps": 0,
                                    "mesh.shape": (4, 2), "mesh.rules": "tensor_parallel"})
  tp = trainer.train_and_evaluate(tp_cfg, tmp_path / "tp")
  dp_loss = [r["train/loss"] for r in read_metrics(tmp_path / "dp") if "train/loss" in r]
  tp_loss = [r["train/loss"] for r in read_metrics(tmp_path / "tp") if "train/loss" in r]
  np.testing.assert_allclose(tp_loss, dp_loss, rtol=2e-4)
  assert tp["metrics"]["accuracy"] == pytest.approx(dp["metrics"]["accuracy"], abs=1 / 40)
  # Two micro-batches of 4 accumulate to the same optimizer step as one batch of 8 (no dropout).
  nodrop = {"model.hidden_dropout_prob": 0.0, "model.attention_probs_dropout_prob": 0.0,
            "train.max_steps": 4, "train.eval_every_steps": 0}
  one = trainer.train_and_evaluate(tiny_config(tiny_dir, **nodrop), tmp_path / "one")
  acc = trainer.train_and_evaluate(
    tiny_config(tiny_dir, **nodrop, **{"train.batch_size": 4, "optim.grad_accum_steps": 2,
                                       "mesh.shape": (4, 2)}),
    tmp_path / "acc")
  assert one["step"] == acc["step"] == 4
  l_one = [r["train/level"] for r in read_metrics(tmp_path / "one") if "train/level" in r]
  l_acc = [r["train/level"] for r in read_metrics(tmp_path / "acc") if "train/level" in r]
  assert l_one == l_acc
  assert acc["metrics"]["accuracy"] == pytest.approx(one["metrics"]["accuracy"], abs=1 / 40)
  assert acc["remaining_weights_plain"] == one["remaining_weights_plain"]


# Global in the default run (one search over every stack); local with `make test-all`.
@pytest.mark.parametrize("scope", [pytest.param("local", marks=pytest.mark.slow), "global"])
def test_stacked_search_trains_the_same_run(tiny_dir, tmp_path, scope):
  # pruning.stack_search changes how the thresholds are searched, not the masks: under the
  # tensor-parallel rules (each kernel's stack has one sharding) the run is the same.
  over = {"train.max_steps": 4, "train.eval_every_steps": 0, "mesh.shape": (4, 2),
          "mesh.rules": "tensor_parallel", "pruning.scope": scope}
  runs = {}
  for stack in (False, True):
    c = tiny_config(tiny_dir, **over, **{"pruning.stack_search": stack})
    runs[stack] = trainer.train_and_evaluate(c, tmp_path / str(stack))
    rows = [r for r in read_metrics(tmp_path / str(stack)) if "train/loss" in r]
    runs[stack]["rows"] = rows
  plain, stacked = runs[False], runs[True]
  for key in ("train/level", "train/mask_churn"):
    assert [r[key] for r in stacked["rows"]] == [r[key] for r in plain["rows"]], key
  np.testing.assert_allclose([r["train/loss"] for r in stacked["rows"]],
                             [r["train/loss"] for r in plain["rows"]], rtol=1e-5)
  assert stacked["remaining_weights_plain"] == plain["remaining_weights_plain"]
  assert stacked["metrics"] == pytest.approx(plain["metrics"])


def test_mesh_that_does_not_divide_the_batch_is_a_user_error(tiny_dir, tmp_path):
  c = tiny_config(tiny_dir, **{"train.batch_size": 12})
  with pytest.raises(UserError, match="train.batch_size.*12"):
    trainer.train_and_evaluate(c, tmp_path)


def test_finished_run_is_not_retrained_and_changed_config_refused(tiny_dir, tmp_path):
  c = tiny_config(tiny_dir, **{"train.max_steps": 4, "train.eval_every_steps": 0})
  first = trainer.train_and_evaluate(c, tmp_path)
  n_rows = len(read_metrics(tmp_path))
  again = trainer.train_and_evaluate(c, tmp_path)
  assert again == first
  assert len(read_metrics(tmp_path)) == n_rows
  c2 = tiny_config(tiny_dir, **{"train.max_steps": 4, "train.eval_every_steps": 0,
                                "pruning.final_level": 0.03})
  before = sorted(p.name for p in tmp_path.rglob("*"))
  with pytest.raises(UserError, match="different config.*pruning.final_level"):
    trainer.train_and_evaluate(c2, tmp_path)
  assert sorted(p.name for p in tmp_path.rglob("*")) == before




def test_cli_user_error_is_one_line_and_leaves_no_workdir(tmp_path):
  r = subprocess.run([sys.executable, "train.py", "--config", "configs/default.py", "--workdir",
                      str(tmp_path / "w"), "--config.model.name_or_path=/nonexistent/model"],
                     cwd=REPO, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2
  assert "Traceback" not in r.stderr
  assert "/nonexistent/model" in r.stderr
  assert not (tmp_path / "w").exists()
  assert run_config.METHODS  # the module is importable without JAX devices


def test_hard_topk_does_not_depend_on_the_score_learning_rate(tiny_dir, tmp_path):
  """Top-k with scores initialised to 0: scaling the score lr by 2**-3 scales every score by 2**-3
  exactly (Adam's step does not depend on the scores, and a power of two commutes with rounding),
  so the ranking, the masks and the whole run are bitwise the same: tuning the score lr of hard
  movement pruning changes nothing. Soft movement's fixed threshold tau does depend on it, which
  this test checks too, so it can fail."""

  def losses(method, score_lr, name, **extra):
    # Only the final evaluation and checkpoint: the run's logged rows are what is compared.
    c = tiny_config(tiny_dir, **{"pruning.method": method, "optim.score_learning_rate": score_lr,
                                 "train.eval_every_steps": 0, "train.checkpoint_every_steps": 0,
                                 **extra})
    results = trainer.train_and_evaluate(c, tmp_path / name)
    rows = [r for r in read_metrics(tmp_path / name) if "train/loss" in r]
    return [(r["train/loss"], r["train/mask_churn"]) for r in rows], results["metrics"]

  base = losses("topk", 1e-2, "a")
  assert any(churn > 0 for _, churn in base[0])  # the masks do move during the run
  assert losses("topk", 1e-2 / 8, "b") == base
  soft = {"pruning.initial_level": 0.0, "pruning.final_level": 0.1, "pruning.final_lambda": 50.0}
  assert losses("sigmoid_threshold", 2.0, "c", **soft) != losses(
    "sigmoid_threshold", 2.0 / 8, "d", **soft
  )

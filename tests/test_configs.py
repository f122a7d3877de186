"""Every config file parses and validates; bad values fail early with a clear message."""

import importlib.util
import pathlib
import subprocess
import sys

import pytest

from mvp_jax import run_config
from mvp_jax.errors import UserError

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the configs package, as train.py sees it

CONFIG_FILES = sorted(p for p in (REPO / "configs").glob("*.py")
                      if p.name not in ("__init__.py", "paper.py"))
PAPER_ARGS = [f"{m}{d}" for m in ("dense", "magnitude", "topk", "soft", "l0")
              for d in ("", ",distil")]


def _load(path: pathlib.Path):
  spec = importlib.util.spec_from_file_location(f"cfg_{path.stem}", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_config_files_found():
  names = {p.name for p in CONFIG_FILES}
  assert {"default.py", "squad.py", "mnli.py", "qqp.py"} <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_every_config_file_parses_and_validates(path):
  mod = _load(path)
  args = [None] if path.name == "default.py" else PAPER_ARGS
  for arg in args:
    c = mod.get_config() if arg is None else mod.get_config(arg)
    run_config.validate(c)
    assert c.train.batch_size > 0


@pytest.mark.parametrize("task,batch,warmup,seq", [
  ("squad", 16, 5400, 384), ("mnli", 32, 12000, 128), ("qqp", 32, 11000, 128)])
def test_paper_hyperparameters(task, batch, warmup, seq):
  mod = _load(REPO / "configs" / f"{task}.py")
  c = mod.get_config("soft,distil")
  assert (c.train.batch_size, c.optim.warmup_steps, c.data.max_seq_length) == (batch, warmup, seq)
  assert c.pruning.method == "sigmoid_threshold"
  assert (c.pruning.initial_level, c.pruning.final_level) == (0.0, 0.1)
  assert (c.distill.alpha_ce, c.distill.alpha_distil) == (0.1, 0.9)
  assert c.optim.learning_rate == 3e-5 and c.optim.score_learning_rate == 1e-2
  l0 = mod.get_config("l0")
  assert l0.pruning.score_scale == pytest.approx(2.197)
  assert l0.optim.score_learning_rate == (1e-2 if task == "qqp" else 1e-1)


def test_unknown_paper_argument():
  mod = _load(REPO / "configs" / "squad.py")
  with pytest.raises(ValueError, match="unknown method 'topK'"):
    mod.get_config("topK")
  with pytest.raises(ValueError, match="unknown option"):
    mod.get_config("topk,distill")


def _default():
  return _load(REPO / "configs" / "default.py").get_config()


@pytest.mark.parametrize("field,value,match", [
  ("pruning.method", "movement", "unknown method 'movement'"),
  ("pruning.final_level", 1.5, r"pruning.final_level: 1.5 is outside \[0, 1\]"),
  ("pruning.initial_level", -0.1, "outside"),
  ("pruning.scope", "globl", "unknown scope"),
  ("optim.learning_rate", 0.0, "optim.learning_rate"),
  ("optim.grad_accum_steps", 0, "grad_accum_steps"),
  ("train.batch_size", 0, "batch sizes"),
  ("data.source", "imdb", "unknown source 'imdb'"),
  ("data.max_seq_length", 1024, "512"),
  ("model.dtype", "float16", "unknown dtype"),
  ("mesh.rules", "fsdp", "unknown rules"),
])
def test_bad_values_name_the_field(field, value, match):
  c = _default()
  group, name = field.split(".")
  c[group][name] = value
  with pytest.raises(UserError, match=match):
    run_config.validate(c)


def test_final_level_above_initial_for_topk():
  c = _default()
  c.pruning.initial_level, c.pruning.final_level = 0.5, 0.8
  with pytest.raises(UserError, match="above initial_level"):
    run_config.validate(c)


def test_schedule_longer_than_run():
  c = _default()
  c.train.max_steps = 100
  c.optim.warmup_steps = 40  # 1*40 + 2*40 >= 100
  run_config.validate(c)
  with pytest.raises(UserError, match="schedule is longer than the run"):
    run_config.pruning_window(c, run_config.total_steps(c, 10_000))


def test_total_steps_from_epochs():
  c = _default()
  c.train.max_steps, c.train.num_epochs, c.train.batch_size = 0, 2, 32
  c.optim.grad_accum_steps = 2
  assert run_config.total_steps(c, 1000) == (1000 // 64) * 2
  with pytest.raises(UserError, match="fewer than one optimizer step"):
    run_config.total_steps(c, 10)


def test_config_differences_ignores_logging_fields():
  import json
  c = _default()
  saved = json.loads(run_config.to_json(c))
  c.train.log_every_steps = 1
  assert run_config.config_differences(saved, c) == []
  c.pruning.final_level = 0.03
  assert run_config.config_differences(saved, c) == ["pruning.final_level"]


@pytest.mark.parametrize("flag,match", [
  ("--config.pruning.final_levl=0.03", "final_levl"),
  ("--config.train.batch_size=abc", "batch_size"),
])
def test_cli_override_errors_before_compiling(tmp_path, flag, match):
  r = subprocess.run([sys.executable, "train.py", "--config", "configs/default.py",
                      "--workdir", str(tmp_path / "w"), flag],
                     cwd=REPO, capture_output=True, text=True, timeout=120)
  assert r.returncode != 0
  assert match in r.stderr
  assert "Traceback" not in r.stderr
  assert not (tmp_path / "w").exists()


def test_cli_invalid_value_is_one_clean_line(tmp_path):
  r = subprocess.run([sys.executable, "train.py", "--config", "configs/default.py",
                      "--workdir", str(tmp_path / "w"), "--config.pruning.final_level=2.0"],
                     cwd=REPO, capture_output=True, text=True, timeout=120)
  assert r.returncode == 2, r.stderr
  assert "config.pruning.final_level: 2.0 is outside [0, 1]" in r.stderr
  assert "Traceback" not in r.stderr
  assert not (tmp_path / "w").exists()

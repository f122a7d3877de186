"""The bad-input catalogue of docs/reliability.md: one row per mistake a user can make, each run
through the real `train.py` command line.

Every row must exit with status 2, print one `error:` line that names the problem and the fix,
print no Python traceback, and leave what was already in the workdir untouched (file list, sizes,
mtimes and content hashes are compared before and after). All rows fail before JAX compiles
anything, so each costs one interpreter start-up.
"""

import json
import pathlib
import re
import shutil
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from tiny_bert import (  # noqa: E402
  cli_args,
  cli_env,
  make_tiny_bert,
  run_cli,
  snapshot,
  tiny_config,
)

from mvp_jax import checkpoint, run_config  # noqa: E402

TRAIN_CSV = "text,label\n" + "".join(
  f"{w} movie number {i},{'pos' if i % 2 else 'neg'}\n"
  for i, w in enumerate(["a fine", "an awful", "a great", "a dull"] * 4))


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  """The tiny BERT, good and bad data files, bad model folders and a teacher."""
  root = tmp_path_factory.mktemp("bad_input")
  tiny = make_tiny_bert(root / "bert")
  files = root / "data"
  files.mkdir()
  (files / "train.csv").write_text(TRAIN_CSV)
  (files / "eval.csv").write_text(TRAIN_CSV)
  (files / "empty.csv").write_text("")
  (files / "bad.jsonl").write_text('{"text": "ok", "label": "pos"}\n{"text": "broken, "label\n')
  (files / "eval_unknown_label.csv").write_text(TRAIN_CSV + "a new one,neutral\n")
  # A model folder of another architecture: BERT weights under a GPT-2 config.
  gpt2 = root / "gpt2"
  shutil.copytree(tiny, gpt2)
  cfg = json.loads((gpt2 / "config.json").read_text())
  cfg.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
  (gpt2 / "config.json").write_text(json.dumps(cfg))
  # A truncated weights file (a download or copy cut short).
  truncated = root / "truncated"
  shutil.copytree(tiny, truncated)
  (truncated / "flax_model.msgpack").unlink()
  data = (truncated / "model.safetensors").read_bytes()
  (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
  # A "fine-tuned" teacher whose labels are not the task's (offline movies: neg, pos).
  from mvp_jax.models import hf
  model, params = hf.load_pretrained(str(tiny), head="classification", num_labels=3)
  config = model.config.with_labels(3, {0: "contradiction", 1: "entailment", 2: "neutral"})
  teacher = hf.save_pretrained(params, config, root / "teacher", head="classification")
  return {"tiny": tiny, "files": files, "gpt2": gpt2, "truncated": truncated,
          "teacher": teacher, "root": root}


def _files(a, train="train.csv", eval_="eval.csv"):
  return ["--config.data.source=files", f"--config.data.train_file={a['files'] / train}",
          f"--config.data.eval_file={a['files'] / eval_}"]


def _other_run(workdir, a):
  """A workdir holding a run with another config (final_level 0.03)."""
  c = tiny_config(a["tiny"], **{"train.max_steps": 8, "pruning.final_level": 0.03})
  (workdir / "config.json").write_text(run_config.to_json(c))


def _incompatible_checkpoint(workdir, a):
  """A workdir whose checkpoint holds a state of another shape (config changes allowed)."""
  import jax.numpy as jnp
  _other_run(workdir, a)
  with checkpoint.Checkpointer(workdir / "checkpoints", async_save=False) as ckpt:
    ckpt.save(2, {"params": {"w": jnp.zeros((3,))}}, extra={"data": {}})


# id: (extra flags(assets) , setup(workdir, assets) or None, problem regex, fix regex)
ROWS = {
  "unknown_config_key": (lambda a: ["--config.pruning.final_levl=0.03"], None,
                         r"final_levl", r"Did you mean|--helpfull"),
  "wrong_type": (lambda a: ["--config.train.batch_size=abc"], None,
                 r"batch_size.*abc|abc.*batch_size", r"--helpfull|int"),
  "level_outside_range": (lambda a: ["--config.pruning.final_level=1.5"], None,
                          r"pruning.final_level: 1.5 is outside \[0, 1\]", r"keep fraction"),
  "final_above_initial_topk": (
    lambda a: ["--config.pruning.initial_level=0.5", "--config.pruning.final_level=0.8"], None,
    r"final_level: 0.8 is above initial_level=0.5", r"Use final_level <= initial_level"),
  "schedule_longer_than_run": (lambda a: ["--config.optim.warmup_steps=4"], None,
                               r"schedule is longer than the run", r"Train longer|shorten"),
  "missing_data_file": (lambda a: _files(a, train="nope.csv"), None,
                        r"nope\.csv", r"(?i)pass|check|path|exist"),
  "empty_data_file": (lambda a: _files(a, train="empty.csv"), None,
                      r"empty\.csv: the file is empty", r"."),
  "malformed_data_file": (lambda a: _files(a, train="bad.jsonl"), None,
                          r"bad\.jsonl:2", r"(?i)json"),
  "unknown_label_in_eval": (lambda a: _files(a, eval_="eval_unknown_label.csv"), None,
                            r"eval_unknown_label\.csv.*neutral", r"label_names"),
  "missing_text_column": (lambda a: _files(a) + ["--config.data.text_column=sentence"], None,
                          r"'sentence'", r"text|column"),
  "checkpoint_of_another_architecture": (
    lambda a: [f"--config.model.name_or_path={a['gpt2']}"], None, r"model_type='gpt2'.*not BERT",
    r"(?i)bert"),
  "truncated_checkpoint": (lambda a: [f"--config.model.name_or_path={a['truncated']}"], None,
                           r"model\.safetensors", r"(?i)re-?download|copy|again|replace"),
  "teacher_with_other_labels": (
    lambda a: [f"--config.distill.teacher={a['teacher']}"], None,
    r"trained on 3 labels \('contradiction', 'entailment', 'neutral'\), but the task has 2",
    r"teacher fine-tuned on this task"),
  "workdir_with_another_config": (lambda a: [], _other_run,
                                  r"different config \(pruning.final_level",
                                  r"allow_config_change=True"),
  "workdir_checkpoint_of_another_shape": (
    lambda a: ["--config.train.allow_config_change=True"], _incompatible_checkpoint,
    r"does not match the state to restore", r"Use a new --workdir"),
  "mesh_does_not_divide_batch": (lambda a: ["--config.train.batch_size=12"], None,
                                 r"batch_size=12.*not divisible by the mesh 'data' axis \(8",
                                 r"multiple of 8"),
}


@pytest.mark.parametrize("row", sorted(ROWS))
def test_bad_input_is_one_clean_error_and_leaves_the_workdir_alone(assets, tmp_path, row):
  flags, setup, problem, fix = ROWS[row]
  workdir = tmp_path / "w"
  workdir.mkdir()
  (workdir / "notes.txt").write_text("the user's own file\n")
  if setup is not None:
    setup(workdir, assets)
  before = snapshot(workdir)
  args = cli_args(workdir, assets["tiny"], *flags(assets))
  r = run_cli(args, cli_env(devices=8), timeout=300)
  assert r.returncode == 2, f"rc={r.returncode}\n{r.stderr[-3000:]}"
  assert "Traceback" not in r.stderr, r.stderr[-3000:]
  errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
  assert len(errors) == 1, r.stderr[-3000:]
  assert re.search(problem, errors[0]), errors[0]
  assert re.search(fix, errors[0] + r.stderr[-300:]), errors[0]
  assert snapshot(workdir) == before

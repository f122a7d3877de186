"""A run's files: writing them atomically, and reading a finished or interrupted run back from
its workdir (for export and inspection).

A run's workdir holds `config.json` (the resolved config), `labels.json` (task kind and label
names) and `checkpoints/` (orbax). `load_run` rebuilds the model and returns the params and
scores of a checkpoint, without the optimizer or the data.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import ml_collections

from mvp_jax import checkpoint, pruning, run_config
from mvp_jax.errors import UserError
from mvp_jax.models import hf


@dataclasses.dataclass
class Run:
  """A run restored from its workdir.

  Attributes:
    config: the run's resolved config.
    model: the Linen module (classification or QA head).
    params: host params tree (HF Flax names), unmasked.
    scores: host scores tree ({} for magnitude and dense runs).
    spec: the PruningSpec (None for dense runs).
    level: the evaluation/export level (the final one).
    head: "classification" or "qa".
    label_names: class names in id order (() for regression and QA).
    model_dir: the pretrained model's folder (tokenizer files).
    step: the checkpoint's micro-step.
    metrics: eval_results.json's metrics when the run finished, else {}.
    remaining: eval_results.json's remaining-weight figures when the run finished, else {}.
  """

  config: ml_collections.ConfigDict
  model: Any
  params: Any
  scores: Any
  spec: pruning.PruningSpec | None
  level: float
  head: str
  label_names: tuple[str, ...]
  model_dir: pathlib.Path
  step: int
  metrics: dict[str, float]
  remaining: dict[str, float]


def write_atomic(path: pathlib.Path, text: str) -> None:
  """Writes a file so that a reader sees the old or the new content, never a half."""
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  tmp.write_text(text)
  os.replace(tmp, path)


def _read_json(path: pathlib.Path, what: str) -> dict[str, Any]:
  if not path.is_file():
    raise UserError(f"{path} is missing: {path.parent} is not a run's workdir ({what}).")
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise UserError(f"{path} is not valid JSON ({e}).") from e


def load_run(workdir: str | pathlib.Path, step: int | None = None) -> Run:
  """Restores the params and scores of `workdir`'s checkpoint `step` (None: the latest)."""
  workdir = pathlib.Path(workdir)
  config = ml_collections.ConfigDict(_read_json(workdir / "config.json", "no config.json"))
  labels = _read_json(workdir / "labels.json", "no labels.json")
  kind = labels["kind"]
  label_names = tuple(labels.get("label_names") or ())
  head = "qa" if kind == "qa" else "classification"
  num_labels = 2 if kind == "qa" else (1 if kind == "regression" else len(label_names))
  model_dir = hf.resolve_model_dir(config.model.name_or_path)
  model, _ = hf.load_pretrained(str(model_dir), head=head, num_labels=num_labels)
  ckpt_dir = workdir / "checkpoints"
  if not ckpt_dir.is_dir():
    raise UserError(f"{ckpt_dir} is missing: the run in {workdir} saved no checkpoint yet.")
  ckpt = checkpoint.Checkpointer(ckpt_dir)
  try:
    chosen = step if step is not None else ckpt.latest_step()
    if chosen is None:
      raise UserError(f"{ckpt_dir} holds no complete checkpoint.")
    state, _ = ckpt.restore(chosen, None)
  finally:
    ckpt.close()
  results = {}
  if (workdir / "eval_results.json").is_file():
    results = _read_json(workdir / "eval_results.json", "")
  return Run(config=config, model=model, params=state["params"], scores=state["scores"] or {},
             spec=run_config.pruning_spec(config), level=run_config.eval_level(config),
             head=head, label_names=label_names, model_dir=model_dir, step=int(chosen),
             metrics=results.get("metrics", {}),
             remaining={"paper": results["remaining_weights_paper"],
                        "plain": results["remaining_weights_plain"]} if results else {})

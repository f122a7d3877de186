"""Export of a fine-pruned model: masks folded into the weights, a stock transformers folder.

`export_pretrained` writes, atomically (a temp folder renamed into place):

  config.json              BertForSequenceClassification / BertForQuestionAnswering, labels
  model.safetensors        PyTorch names and layout: `AutoModelFor*.from_pretrained` loads it
  flax_model.msgpack       HF Flax layout: `mvp_jax.models.hf.load_pretrained` loads it too
  tokenizer files          from `tokenizer.save_pretrained`
  sparse_model.safetensors the same weights, pruned matrices as bitmask + non-zero values
  pruning.json             method, level, spec, remaining weights, metrics, sizes
  README.md                model card

As in the reference `bertarize.py`, the pruned weights are zeros in dense matrices (no structural
compaction); the sparse file is the compact storage. Scores are dropped.

Command line: `python -m mvp_jax.export --workdir RUN --out DIR`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import safetensors
import safetensors.numpy
from flax import traverse_util

from mvp_jax import pruning
from mvp_jax.errors import UserError
from mvp_jax.models import bert, hf

SPARSE_FORMAT = "mvp_jax.sparse/1"
SPARSE_FILE = "sparse_model.safetensors"
ENCODER_PATTERN = r"(^|/)encoder/"
_VALUE_DTYPES = {"float32": np.float32, "float16": np.float16}
_PIPELINES = {"classification": "text-classification", "qa": "question-answering",
              "base": "feature-extraction"}


# ----------------------------------------------------------------------------------------------
# Sparse storage


def _flat_numpy(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  flat = traverse_util.flatten_dict(dict(params), sep="/")
  return {k: np.asarray(jax.device_get(v)) for k, v in flat.items()}


def _sparse_wins(array: np.ndarray, value_bytes: int) -> bool:
  """Whether bitmask + non-zero values take fewer bytes than the dense array."""
  if array.ndim < 2 or not np.issubdtype(array.dtype, np.floating):
    return False
  mask_bytes = math.ceil(array.size / 8)
  return mask_bytes + int(np.count_nonzero(array)) * value_bytes < array.size * value_bytes


def save_sparse(params: Mapping[str, Any], path: str | pathlib.Path, *,
                values_dtype: str = "float32") -> pathlib.Path:
  """Stores a (masked) parameter tree compactly in one safetensors file.

  Each floating matrix whose zeros make it worthwhile is stored as a bitmask of its non-zeros
  (`np.packbits` of the flattened [rows * cols] bool, uint8) plus the non-zero values in row-major
  order; every other leaf (embeddings, biases, LayerNorms, dense heads) is stored whole. Shapes
  and kinds are in the file's metadata.

  Args:
    params: nested dict of arrays (any float dtype; stored as `values_dtype`).
    path: the file to write.
    values_dtype: "float32" (exact round trip) or "float16" (half the size, rounded).

  Returns:
    path as a Path.
  """
  if values_dtype not in _VALUE_DTYPES:
    raise UserError(f"values_dtype={values_dtype!r}: use one of {sorted(_VALUE_DTYPES)}")
  dtype = _VALUE_DTYPES[values_dtype]
  tensors: dict[str, np.ndarray] = {}
  leaves: dict[str, dict[str, Any]] = {}
  for key, array in _flat_numpy(params).items():
    info = {"shape": list(array.shape), "dtype": str(array.dtype)}
    if _sparse_wins(array, np.dtype(dtype).itemsize):
      flat = array.reshape(-1)
      keep = flat != 0
      tensors[f"{key}:mask"] = np.packbits(keep)
      tensors[f"{key}:values"] = np.ascontiguousarray(flat[keep].astype(dtype))
      info["kind"] = "sparse"
    else:
      stored = array.astype(dtype) if np.issubdtype(array.dtype, np.floating) else array
      tensors[f"{key}:dense"] = np.ascontiguousarray(stored)
      info["kind"] = "dense"
    leaves[key] = info
  metadata = {"format": SPARSE_FORMAT, "values_dtype": values_dtype, "leaves": json.dumps(leaves)}
  path = pathlib.Path(path)
  safetensors.numpy.save_file(tensors, str(path), metadata=metadata)
  return path


def load_sparse(path: str | pathlib.Path) -> dict[str, Any]:
  """Reads a file of `save_sparse` back into a dense nested dict of numpy arrays.

  Args:
    path: a file written by `save_sparse` (e.g. an export's ``sparse_model.safetensors``).

  Returns:
    The parameter tree; float leaves have their original dtype (e.g. float32), pruned entries 0.

  Raises:
    UserError: the file is missing, corrupt or not in this format.
  """
  path = pathlib.Path(path)
  try:
    with safetensors.safe_open(str(path), framework="np") as f:
      metadata = f.metadata() or {}
      if metadata.get("format") != SPARSE_FORMAT:
        raise UserError(f"{path} is not a {SPARSE_FORMAT} file (format="
                        f"{metadata.get('format')!r}); write it with mvp_jax.export.save_sparse")
      leaves = json.loads(metadata["leaves"])
      flat = {}
      for key, info in leaves.items():
        shape, dtype = tuple(info["shape"]), np.dtype(info["dtype"])
        if info["kind"] == "sparse":
          size = math.prod(shape)
          keep = np.unpackbits(f.get_tensor(f"{key}:mask"), count=size).astype(bool)
          values = f.get_tensor(f"{key}:values")
          if values.size != int(keep.sum()):
            raise UserError(f"{path}: tensor {key!r} has {values.size} values for "
                            f"{int(keep.sum())} mask bits: the file is corrupt")
          dense = np.zeros(size, dtype)
          dense[keep] = values.astype(dtype)
          flat[key] = dense.reshape(shape)
        else:
          flat[key] = f.get_tensor(f"{key}:dense").astype(dtype).reshape(shape)
  except UserError:
    raise
  except Exception as e:  # noqa: BLE001 -- safetensors/json raise their own types for bad files
    raise UserError(f"could not read sparse weights {path} ({type(e).__name__}: {e}): the file "
                    "is missing, truncated or corrupt; export it again") from None
  return traverse_util.unflatten_dict(flat, sep="/")


def sparse_size_report(params: Mapping[str, Any], sparse_path: str | pathlib.Path,
                       encoder_pattern: str = ENCODER_PATTERN) -> dict[str, float]:
  """Size on disk of a `save_sparse` file against the dense safetensors of the same tree.

  Args:
    params: the tree that was saved (dense float32 arrays with zeros).
    sparse_path: the file `save_sparse` wrote.
    encoder_pattern: regex (re.search on '/'-paths) selecting the encoder leaves.

  Returns:
    dense_bytes (dense float32 safetensors file of the whole tree), sparse_bytes (the file),
    ratio (sparse / dense), and encoder_dense_bytes / encoder_sparse_bytes / encoder_ratio: the
    tensor bytes of the encoder leaves alone (no file header), where pruning acts.
  """
  flat = {k: np.ascontiguousarray(v, np.float32) if np.issubdtype(v.dtype, np.floating) else v
          for k, v in _flat_numpy(params).items()}
  dense_bytes = len(safetensors.numpy.save(flat))
  sparse_path = pathlib.Path(sparse_path)
  sparse_bytes = sparse_path.stat().st_size
  encoder_dense = sum(a.nbytes for k, a in flat.items() if re.search(encoder_pattern, k))
  encoder_sparse = 0
  with safetensors.safe_open(str(sparse_path), framework="np") as f:
    for name in f.keys():
      if re.search(encoder_pattern, name.rsplit(":", 1)[0]):
        encoder_sparse += f.get_tensor(name).nbytes
  return {"dense_bytes": dense_bytes, "sparse_bytes": sparse_bytes,
          "ratio": sparse_bytes / dense_bytes,
          "encoder_dense_bytes": encoder_dense, "encoder_sparse_bytes": encoder_sparse,
          "encoder_ratio": encoder_sparse / encoder_dense if encoder_dense else float("nan")}


# ----------------------------------------------------------------------------------------------
# Export


def fold(params: Mapping[str, Any], scores: Mapping[str, Any], level: float | None,
         spec: pruning.PruningSpec | None, *,
         masks: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Params with the deterministic masks at `level` multiplied in (host numpy, float32).

  spec None means a dense (unpruned) model: params are returned unchanged. `masks`, when given,
  are the deterministic masks already computed (`pruning.compute_masks(params, scores, level,
  spec)`, as the trainer has them at the end of a run): they are multiplied in instead of
  searching the thresholds again.
  """
  if spec is not None:
    if masks is not None:
      params = pruning.multiply_masks(params, masks)
    else:
      # Called eagerly, the core compiles the masks once per spec and shapes, validates level.
      params = pruning.fold_masks(params, scores, level, spec)
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float32), dict(params))


def compute_remaining(params: Mapping[str, Any], scores: Mapping[str, Any], level: float | None,
                      spec: pruning.PruningSpec | None, *,
                      masks: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """`pruning.remaining_weights` of the deterministic masks at `level` (all kept without spec).

  `masks`: those masks if already computed (see `fold`).
  """
  if spec is None:
    return pruning.remaining_weights(dict(params), {})
  if masks is None:
    masks = pruning.compute_masks(params, scores, level, spec)
  return pruning.remaining_weights(dict(params), jax.device_get(masks))


def _fmt_pct(x: float | None) -> str:
  return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.3f}%"


def model_card(*, head: str, spec: pruning.PruningSpec | None, level: float | None,
               remaining: Mapping[str, Any], metrics: Mapping[str, float] | None,
               config: bert.BertConfig, sizes: Mapping[str, float] | None) -> str:
  """README.md text: what was pruned, how much remains, metrics, how to load."""
  method = "none (dense fine-tuning)" if spec is None else spec.method
  lines = [
    "---", "library_name: transformers", f"pipeline_tag: {_PIPELINES[head]}",
    "tags:", "- bert", "- movement-pruning", "- pruned", "- mvp_jax", "---", "",
    f"# Fine-pruned BERT ({method})", "",
    "Fine-pruned with mvp_jax (movement pruning, Sanh, Wolf & Rush 2020). "
    "The masks are folded into the weights: pruned weights are zeros in dense matrices, so the "
    "folder loads as a standard `" + hf.ARCHITECTURES[head] + "`.", "",
    "## Pruning", "",
    f"- method: `{method}`",
  ]
  if spec is not None:
    shown = "n/a" if level is None else f"{float(level):g}"
    lines += [f"- scope: `{spec.scope}`", f"- level at export: `{shown}` "
              "(keep fraction for topk/magnitude, sigmoid threshold for sigmoid_threshold, "
              "unused by l0)",
              f"- pruned tensors (regex include): `{', '.join(spec.include)}`"]
    if spec.exclude:
      lines.append(f"- excluded: `{', '.join(spec.exclude)}`")
  lines += [
    f"- encoder: {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
    f"{config.num_attention_heads} heads, FFN {config.intermediate_size}", "",
    "## Remaining weights", "",
    "| rule | remaining |", "|---|---|",
    "| paper (encoder; biases and LayerNorms count as kept) | "
    f"{_fmt_pct(remaining.get('paper'))} |",
    f"| plain (non-zero fraction of the pruned matrices) | {_fmt_pct(remaining.get('plain'))} |",
  ]
  if "kept" in remaining and "total" in remaining:
    lines.append(f"| encoder parameters kept / total | {remaining['kept']:,} / "
                 f"{remaining['total']:,} |")
  lines.append("")
  if metrics:
    lines += ["## Evaluation", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {float(v):.4f} |" for k, v in sorted(metrics.items())]
    lines.append("")
  if sizes:
    lines += ["## Storage", "",
              f"- dense `model.safetensors` tensors: {sizes['dense_bytes'] / 2**20:.2f} MiB",
              f"- `{SPARSE_FILE}` (bitmask + non-zero values): {sizes['sparse_bytes'] / 2**20:.2f} "
              f"MiB ({100 * sizes['ratio']:.1f}% of dense; encoder alone "
              f"{100 * sizes['encoder_ratio']:.1f}%)", ""]
  auto = {"classification": "AutoModelForSequenceClassification",
          "qa": "AutoModelForQuestionAnswering", "base": "AutoModel"}[head]
  lines += [
    "## Usage", "", "```python",
    f"from transformers import AutoTokenizer, {auto}",
    f"model = {auto}.from_pretrained('PATH')",
    "tokenizer = AutoTokenizer.from_pretrained('PATH')",
    "```", "", "In JAX:", "", "```python",
    "from mvp_jax.models import hf",
    f"model, params = hf.load_pretrained('PATH', head='{head}')",
    "```", "",
    f"`{SPARSE_FILE}` reads back with `mvp_jax.export.load_sparse` (HF Flax parameter names).", "",
  ]
  return "\n".join(lines)


def _spec_dict(spec: pruning.PruningSpec | None) -> dict[str, Any] | None:
  if spec is None:
    return None
  if dataclasses.is_dataclass(spec):
    return {k: (list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(spec).items()}
  return {"repr": repr(spec)}


def _jsonable(x: Any) -> Any:
  if isinstance(x, Mapping):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.generic, np.ndarray)) or hasattr(x, "__array__"):
    x = np.asarray(x).tolist()
  if isinstance(x, float) and not math.isfinite(x):
    return None  # strict JSON has no NaN
  return x


def export_pretrained(params: Mapping[str, Any], scores: Mapping[str, Any],
                      level: float | None,
                      spec: pruning.PruningSpec | None, config: bert.BertConfig, tokenizer: Any,
                      out_dir: str | pathlib.Path, *, head: str,
                      metrics: Mapping[str, float] | None = None,
                      remaining: Mapping[str, Any] | None = None,
                      label_names: Sequence[str] | None = None, sparse: bool = True,
                      sparse_values_dtype: str = "float32",
                      overwrite: bool = True,
                      masks: Mapping[str, Any] | None = None) -> pathlib.Path:
  """Folds the masks into the weights and writes a standard Hugging Face model folder.

  Args:
    params: the 'params' tree of the `head` model (HF Flax names, float32 kernels [in, out]).
    scores: the pruning scores (the 'scores' collection); {} for magnitude or spec None.
    level: pruning level at export (the final level of the schedule).
    spec: the PruningSpec of the run; None for a dense fine-tune.
    config: the model's BertConfig.
    tokenizer: an object with `save_pretrained(folder)` (a transformers tokenizer), or None.
    out_dir: the folder to create.
    head: "classification", "qa" or "base".
    metrics: evaluation metrics for the model card and pruning.json.
    remaining: `pruning.remaining_weights` output; computed from the folded weights when None.
    label_names: class names by id (sets config id2label/label2id).
    sparse: also write the compact `sparse_model.safetensors`.
    sparse_values_dtype: "float32" (exact) or "float16" values in the sparse file.
    overwrite: replace an existing out_dir (only after the new folder is complete).
    masks: the deterministic masks at `level` if the caller has them already
      (`pruning.compute_masks(params, scores, level, spec)`, the nested tree of float
      [in, out] masks); they are folded in instead of computed again. Ignored for spec None.

  Returns:
    out_dir as a Path.

  Raises:
    UserError: out_dir exists and overwrite is False, or params do not fit config.
  """
  if head not in hf.HEAD_PARAMS:
    raise UserError(f"unknown head {head!r}: use one of {tuple(hf.HEAD_PARAMS)}")
  out_dir = pathlib.Path(out_dir)
  if out_dir.exists() and not overwrite:
    raise UserError(f"{out_dir} already exists: choose another folder or allow overwriting")
  if label_names and head == "classification":
    names = [str(n) for n in label_names]
    config = config.with_labels(len(names), dict(enumerate(names)))
  try:
    if remaining is None:
      remaining = compute_remaining(params, scores, level, spec, masks=masks)
    folded = fold(params, scores, level, spec, masks=masks)
  except ValueError as e:  # masks that do not fit params
    raise UserError(f"cannot export: {e}") from None
  try:
    hf.check_params(folded, config, head)
  except hf.CheckpointError as e:
    raise UserError(f"cannot export: {e}") from None

  out_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
  try:
    hf.save_pretrained(folded, config, tmp, head=head, tokenizer=tokenizer)
    sizes = None
    if sparse:
      save_sparse(folded, tmp / SPARSE_FILE, values_dtype=sparse_values_dtype)
      sizes = sparse_size_report(folded, tmp / SPARSE_FILE)
    summary = {
      "head": head, "architecture": hf.ARCHITECTURES[head],
      "method": None if spec is None else spec.method,
      "level": None if level is None else float(level),
      "spec": _spec_dict(spec),
      "remaining_weights_paper": remaining.get("paper"),
      "remaining_weights_plain": remaining.get("plain"),
      "remaining": remaining, "metrics": dict(metrics or {}), "sizes": sizes,
    }
    (tmp / "pruning.json").write_text(json.dumps(_jsonable(summary), indent=2, sort_keys=True))
    card = model_card(head=head, spec=spec, level=level, remaining=remaining,
                      metrics=metrics, config=config, sizes=sizes)
    (tmp / "README.md").write_text(card)
    _replace_dir(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out_dir


def _replace_dir(new: pathlib.Path, target: pathlib.Path) -> None:
  """Moves `new` to `target`; an old `target` is removed only once `new` is in place."""
  if not target.exists():
    new.rename(target)
    return
  old = target.with_name(f".{target.name}.old-{new.name.rsplit('-', 1)[-1]}")
  target.rename(old)
  try:
    new.rename(target)
  except BaseException:
    old.rename(target)
    raise
  shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Command line


def export_from_workdir(workdir: str | pathlib.Path, out: str | pathlib.Path, *,
                        overwrite: bool = False) -> pathlib.Path:
  """Exports the latest checkpoint of a training run (masks at the run's final level folded in).

  Args:
    workdir: the run's --workdir (config.json, labels.json, checkpoints/).
    out: the folder to write (a standard HF folder, as `export_pretrained`).
    overwrite: replace an existing `out`.
  """
  from mvp_jax import run_io
  from mvp_jax.data import tokenization

  out = pathlib.Path(out)
  if out.exists() and not overwrite:
    raise UserError(f"{out} exists; pass --overwrite to replace it.")
  run = run_io.load_run(workdir)
  tokenizer = tokenization.load_tokenizer(run.model_dir)
  return export_pretrained(run.params, run.scores, run.level, run.spec, run.model.config,
                           tokenizer, out, head=run.head, metrics=run.metrics or None,
                           remaining=run.remaining or None, label_names=run.label_names or None,
                           overwrite=overwrite)


def main(argv: Sequence[str] | None = None) -> int:
  """`python -m mvp_jax.export --workdir RUN --out DIR [--overwrite]`."""
  parser = argparse.ArgumentParser(
    prog="python -m mvp_jax.export",
    description="Export a fine-pruned run as a Hugging Face folder (masks folded in).")
  parser.add_argument("--workdir", required=True, help="the run's --workdir")
  parser.add_argument("--out", required=True, help="the folder to write")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
  args = parser.parse_args(argv)
  try:
    out = export_from_workdir(args.workdir, args.out, overwrite=args.overwrite)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"exported to {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())

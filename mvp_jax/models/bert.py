"""BERT encoder and task heads in Flax Linen, with parameter names identical to HF's FlaxBert.

The parameter tree of `BertForSequenceClassification` is

  bert/embeddings/{word_embeddings,position_embeddings,token_type_embeddings}/embedding
  bert/embeddings/LayerNorm/{scale,bias}
  bert/encoder/layer/{i}/attention/self/{query,key,value}/{kernel,bias}
  bert/encoder/layer/{i}/attention/output/{dense,LayerNorm}/...
  bert/encoder/layer/{i}/intermediate/dense/{kernel,bias}
  bert/encoder/layer/{i}/output/{dense,LayerNorm}/...
  bert/pooler/dense/{kernel,bias}
  classifier/{kernel,bias}

so Hub `flax_model.msgpack` files load as they are and PyTorch checkpoints convert with one rule
(Linear weights are transposed: kernels here are `[in, out]`). `BertModel` used as the root module
has the same tree without the `bert/` prefix, like HF's `FlaxBertModel`.

The modules know nothing of pruning: masks are applied to the parameter tree before `apply`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mvp_jax.errors import UserError

Array = jax.Array

# Activations by their transformers name. "gelu" is the exact erf form (torch.nn.functional.gelu),
# the tanh approximation goes by "gelu_new" / "gelu_pytorch_tanh" / "gelu_fast".
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
  "gelu": lambda x: jax.nn.gelu(x, approximate=False),
  "gelu_python": lambda x: jax.nn.gelu(x, approximate=False),
  "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
  "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
  "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
  "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
  "relu": jax.nn.relu,
  "silu": jax.nn.silu,
  "swish": jax.nn.silu,
  "tanh": jnp.tanh,
}

# model_type values whose checkpoints are plain BERT ("masked_bert" is the movement-pruning
# reference code's name for BERT with mask scores).
SUPPORTED_MODEL_TYPES = ("bert", "masked_bert")


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """BERT hyper-parameters, the fields of transformers' `BertConfig` that change the computation.

  Frozen and hashable, so a module holding it can be a jit static argument. Label maps are tuples
  of pairs (hashable); `id2label_dict()` / `label2id_dict()` give dicts.

  Attributes:
    vocab_size: rows of the word-embedding table.
    hidden_size: width H of the encoder; a multiple of `num_attention_heads`.
    num_hidden_layers: number of transformer layers.
    num_attention_heads: attention heads per layer.
    intermediate_size: width of the feed-forward layer.
    hidden_act: activation of the feed-forward layer, a key of `ACTIVATIONS`.
    hidden_dropout_prob: dropout after embeddings and every residual branch.
    attention_probs_dropout_prob: dropout on the attention probabilities.
    max_position_embeddings: longest sequence the position table covers.
    type_vocab_size: number of token types (segments).
    initializer_range: standard deviation of the normal initialiser.
    layer_norm_eps: LayerNorm epsilon.
    pad_token_id: id of the padding token (kept for export; masking uses `attention_mask`).
    position_embedding_type: only "absolute" is supported.
    classifier_dropout: dropout before the classifier; None means `hidden_dropout_prob`.
    num_labels: outputs of the classification head (1 means regression).
    problem_type: transformers' problem_type ("regression", "single_label_classification", ...).
    id2label: ((id, name), ...) of length `num_labels`; filled with LABEL_i when empty.
    label2id: ((name, id), ...); filled from `id2label` when empty.
  """

  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  initializer_range: float = 0.02
  layer_norm_eps: float = 1e-12
  pad_token_id: int = 0
  position_embedding_type: str = "absolute"
  classifier_dropout: float | None = None
  num_labels: int = 2
  problem_type: str | None = None
  id2label: tuple[tuple[int, str], ...] = ()
  label2id: tuple[tuple[str, int], ...] = ()

  def __post_init__(self) -> None:
    for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                 "intermediate_size", "max_position_embeddings", "type_vocab_size", "num_labels"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"BertConfig.{name} must be a positive integer, got {value!r}")
    if self.hidden_size % self.num_attention_heads:
      raise UserError(
        f"BertConfig.hidden_size={self.hidden_size} is not divisible by "
        f"num_attention_heads={self.num_attention_heads}: pick a head count that divides it")
    if self.hidden_act not in ACTIVATIONS:
      raise UserError(f"BertConfig.hidden_act={self.hidden_act!r} is not supported; "
                      f"use one of {sorted(ACTIVATIONS)}")
    if self.position_embedding_type != "absolute":
      raise UserError(
        f"BertConfig.position_embedding_type={self.position_embedding_type!r} is not supported: "
        "only 'absolute' position embeddings are implemented")
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
      value = getattr(self, name)
      if value is not None and not 0.0 <= value < 1.0:
        raise UserError(f"BertConfig.{name} must be in [0, 1), got {value!r}")
    if self.layer_norm_eps <= 0 or self.initializer_range <= 0:
      raise UserError("BertConfig.layer_norm_eps and initializer_range must be positive")
    # Canonical label maps: sorted by id, LABEL_i when not given.
    id2label = tuple(sorted((int(i), str(n)) for i, n in self.id2label))
    if not id2label:
      id2label = tuple((i, f"LABEL_{i}") for i in range(self.num_labels))
    if [i for i, _ in id2label] != list(range(self.num_labels)):
      raise UserError(
        f"BertConfig.id2label has ids {[i for i, _ in id2label]} but num_labels={self.num_labels}: "
        "give one name per label id 0..num_labels-1 (or leave id2label empty)")
    label2id = tuple(sorted((str(n), int(i)) for n, i in self.label2id))
    if not label2id:
      label2id = tuple(sorted((n, i) for i, n in id2label))
    object.__setattr__(self, "id2label", id2label)
    object.__setattr__(self, "label2id", label2id)

  @property
  def head_dim(self) -> int:
    """Width of one attention head."""
    return self.hidden_size // self.num_attention_heads

  @property
  def label_names(self) -> tuple[str, ...]:
    """Label names by id; () when they are transformers' generic LABEL_i placeholders."""
    names = tuple(n for _, n in self.id2label)
    if names == tuple(f"LABEL_{i}" for i in range(self.num_labels)):
      return ()
    return names

  def id2label_dict(self) -> dict[int, str]:
    return dict(self.id2label)

  def label2id_dict(self) -> dict[str, int]:
    return dict(self.label2id)

  def with_labels(self, num_labels: int, id2label: Mapping[int, str] | None = None) -> BertConfig:
    """A copy with another head size; label names reset to LABEL_i unless given."""
    pairs = tuple((int(k), str(v)) for k, v in (id2label or {}).items())
    problem_type = self.problem_type
    if num_labels != self.num_labels and problem_type == "regression" and num_labels != 1:
      problem_type = None
    return dataclasses.replace(self, num_labels=num_labels, id2label=pairs, label2id=(),
                               problem_type=problem_type)

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> BertConfig:
    """Builds a config from a transformers config dict; keys that do not change BERT are ignored.

    Raises:
      UserError: the dict is for another architecture, or a value is invalid.
    """
    model_type = values.get("model_type", "bert")
    if model_type not in SUPPORTED_MODEL_TYPES:
      raise UserError(f"config model_type={model_type!r} is not BERT: mvp_jax.models.bert supports "
                      f"{SUPPORTED_MODEL_TYPES}")
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in values.items() if k in names}
    if "id2label" in kwargs and kwargs["id2label"] is not None:
      id2label = {int(k): str(v) for k, v in dict(kwargs["id2label"]).items()}
      kwargs["id2label"] = tuple(id2label.items())
      kwargs.setdefault("num_labels", len(id2label))
      # transformers regenerates id2label when num_labels disagrees with it; do the same.
      if kwargs["num_labels"] != len(id2label):
        kwargs["id2label"] = ()
        kwargs.pop("label2id", None)
    if "label2id" in kwargs and kwargs["label2id"] is not None:
      kwargs["label2id"] = tuple((str(k), int(v)) for k, v in dict(kwargs["label2id"]).items())
    kwargs = {k: v for k, v in kwargs.items() if v is not None or k in ("classifier_dropout",
                                                                          "problem_type")}
    if kwargs.get("id2label") and kwargs.get("label2id"):
      if {n for n, _ in kwargs["label2id"]} != {n for _, n in kwargs["id2label"]}:
        kwargs["label2id"] = ()  # inconsistent maps: trust id2label
    return cls(**kwargs)

  @classmethod
  def from_json_file(cls, path: str | pathlib.Path) -> BertConfig:
    """Reads a transformers `config.json`.

    Raises:
      UserError: the file is missing, not JSON, or describes an unsupported model.
    """
    path = pathlib.Path(path)
    try:
      values = json.loads(path.read_text())
    except FileNotFoundError:
      raise UserError(f"{path} does not exist: a model folder needs a config.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise UserError(f"{path} is not valid JSON ({e}): restore or re-export the config") from None
    try:
      return cls.from_dict(values)
    except UserError as e:
      raise UserError(f"{path}: {e}") from None
    except TypeError as e:
      raise UserError(f"{path}: bad config value ({e})") from None

  def to_hf_dict(self, architectures: tuple[str, ...] | list[str] | None = None) -> dict[str, Any]:
    """The transformers `config.json` dict (label ids as string keys, like transformers writes)."""
    out: dict[str, Any] = {"model_type": "bert"}
    if architectures:
      out["architectures"] = list(architectures)
    for field in dataclasses.fields(self):
      out[field.name] = getattr(self, field.name)
    out["id2label"] = {str(i): n for i, n in self.id2label}
    out["label2id"] = dict(self.label2id)
    if out["problem_type"] is None:
      del out["problem_type"]
    return out


def _dense_init(config: BertConfig) -> nn.initializers.Initializer:
  return nn.initializers.normal(stddev=config.initializer_range)


class BertEmbeddings(nn.Module):
  """Word + position + token-type embeddings, LayerNorm and dropout."""

  config: BertConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids: Array, token_type_ids: Array, deterministic: bool) -> Array:
    """input_ids, token_type_ids: [B, L] int -> [B, L, H] in `dtype`."""
    cfg = self.config
    init = _dense_init(cfg)
    seq_len = input_ids.shape[-1]
    if seq_len > cfg.max_position_embeddings:
      raise UserError(f"sequence length {seq_len} exceeds max_position_embeddings="
                      f"{cfg.max_position_embeddings}: truncate the inputs")

    def embed(name: str, rows: int) -> nn.Embed:
      return nn.Embed(rows, cfg.hidden_size, embedding_init=init, dtype=self.dtype,
                      param_dtype=jnp.float32, name=name)

    words = embed("word_embeddings", cfg.vocab_size)(input_ids.astype(jnp.int32))
    positions = embed("position_embeddings", cfg.max_position_embeddings)(
      jnp.arange(seq_len, dtype=jnp.int32)[None, :])
    types = embed("token_type_embeddings", cfg.type_vocab_size)(token_type_ids.astype(jnp.int32))
    x = words + positions + types
    x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, param_dtype=jnp.float32,
                     name="LayerNorm")(x)
    return nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)


class BertSelfAttention(nn.Module):
  """Multi-head self-attention; query/key/value are plain [H, H] Dense layers as in HF.

  An apply with ``mutable=["intermediates"]`` also returns each layer's attention probabilities
  [B, heads, L query, L key] (transformers' ``output_attentions``) under
  ``intermediates/.../layer/<i>/attention/self/attention_probs``.
  """

  config: BertConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, attention_mask: Array, deterministic: bool) -> Array:
    """x: [B, L, H]; attention_mask: [B, L] (1 keep, 0 padding) -> [B, L, H]."""
    cfg = self.config
    batch, length, _ = x.shape

    def project(name: str) -> Array:
      y = nn.Dense(cfg.hidden_size, kernel_init=_dense_init(cfg), dtype=self.dtype,
                   param_dtype=jnp.float32, name=name)(x)
      return y.reshape(batch, length, cfg.num_attention_heads, cfg.head_dim)

    q, k, v = project("query"), project("key"), project("value")
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.asarray(math.sqrt(cfg.head_dim), q.dtype)
    # Softmax in float32 so bf16 runs do not lose the large negative padding bias.
    logits = logits.astype(jnp.float32)
    keep = attention_mask[:, None, None, :].astype(bool)
    logits = jnp.where(keep, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    # [B, heads, L query, L key], kept only when an apply makes "intermediates" mutable (not
    # by init, whose variables then hold parameters only).
    if not self.is_initializing():
      self.sow("intermediates", "attention_probs", probs)
    probs = nn.Dropout(cfg.attention_probs_dropout_prob)(probs, deterministic=deterministic)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    return out.reshape(batch, length, cfg.hidden_size)


class BertSelfOutput(nn.Module):
  """Dense + dropout + residual LayerNorm (HF's `attention/output`, and `output` as BertOutput)."""

  config: BertConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden: Array, residual: Array, deterministic: bool) -> Array:
    cfg = self.config
    y = nn.Dense(cfg.hidden_size, kernel_init=_dense_init(cfg), dtype=self.dtype,
                 param_dtype=jnp.float32, name="dense")(hidden)
    y = nn.Dropout(cfg.hidden_dropout_prob)(y, deterministic=deterministic)
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, param_dtype=jnp.float32,
                        name="LayerNorm")(y + residual)


class BertAttention(nn.Module):
  config: BertConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, attention_mask: Array, deterministic: bool) -> Array:
    y = BertSelfAttention(self.config, self.dtype, name="self")(x, attention_mask, deterministic)
    return BertSelfOutput(self.config, self.dtype, name="output")(y, x, deterministic)


class BertIntermediate(nn.Module):
  config: BertConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    y = nn.Dense(cfg.intermediate_size, kernel_init=_dense_init(cfg), dtype=self.dtype,
                 param_dtype=jnp.float32, name="dense")(x)
    return ACTIVATIONS[cfg.hidden_act](y)


# The feed-forward block ends exactly like attention: dense, dropout, residual LayerNorm (HF's
# `output` has the same parameters as `attention/output`).
BertOutput = BertSelfOutput


class BertLayer(nn.Module):
  """One transformer layer: attention, then the feed-forward block."""

  config: BertConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, attention_mask: Array, deterministic: bool = True) -> Array:
    x = BertAttention(self.config, self.dtype, name="attention")(x, attention_mask, deterministic)
    y = BertIntermediate(self.config, self.dtype, name="intermediate")(x)
    return BertOutput(self.config, self.dtype, name="output")(y, x, deterministic)


class BertLayerCollection(nn.Module):
  """The stack of layers, named "0", "1", ... as in HF (`encoder/layer/{i}/...`)."""

  config: BertConfig
  dtype: jnp.dtype = jnp.float32
  gradient_checkpointing: bool = False

  @nn.compact
  def __call__(self, x: Array, attention_mask: Array, deterministic: bool) -> Array:
    # remat trades compute for memory; `deterministic` must stay static (argnum 3 counts self).
    layer_cls = BertLayer
    if self.gradient_checkpointing:
      layer_cls = nn.remat(BertLayer, static_argnums=(3,))
    for i in range(self.config.num_hidden_layers):
      x = layer_cls(self.config, self.dtype, name=str(i))(x, attention_mask, deterministic)
    return x


class BertEncoder(nn.Module):
  config: BertConfig
  dtype: jnp.dtype = jnp.float32
  gradient_checkpointing: bool = False

  @nn.compact
  def __call__(self, x: Array, attention_mask: Array, deterministic: bool) -> Array:
    return BertLayerCollection(self.config, self.dtype, self.gradient_checkpointing,
                               name="layer")(x, attention_mask, deterministic)


class BertPooler(nn.Module):
  """tanh(Dense(first token))."""

  config: BertConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, sequence_output: Array) -> Array:
    cfg = self.config
    y = nn.Dense(cfg.hidden_size, kernel_init=_dense_init(cfg), dtype=self.dtype,
                 param_dtype=jnp.float32, name="dense")(sequence_output[:, 0])
    return jnp.tanh(y)


def _default_inputs(input_ids: Array, attention_mask: Array | None,
                    token_type_ids: Array | None) -> tuple[Array, Array]:
  if attention_mask is None:
    attention_mask = jnp.ones_like(input_ids)
  if token_type_ids is None:
    token_type_ids = jnp.zeros_like(input_ids)
  return attention_mask, token_type_ids


class BertModel(nn.Module):
  """The BERT encoder (HF's `FlaxBertModule`).

  Attributes:
    config: hyper-parameters.
    dtype: compute dtype (e.g. jnp.bfloat16); parameters stay float32.
    add_pooling_layer: whether to build the pooler (the QA head does not use it).
    gradient_checkpointing: rematerialise each layer in the backward pass to save memory.
  """

  config: BertConfig
  dtype: jnp.dtype = jnp.float32
  add_pooling_layer: bool = True
  gradient_checkpointing: bool = False

  @nn.compact
  def __call__(self, input_ids: Array, attention_mask: Array | None = None,
               token_type_ids: Array | None = None,
               deterministic: bool = True) -> tuple[Array, Array | None]:
    """Encodes a batch.

    Args:
      input_ids: [B, L] int token ids.
      attention_mask: [B, L] int/bool, 1 for real tokens and 0 for padding; default all ones.
      token_type_ids: [B, L] int segment ids; default zeros.
      deterministic: False enables dropout (needs the 'dropout' rng).

    Returns:
      sequence_output [B, L, H] and pooled [B, H] (None without the pooler), in `dtype`.
    """
    attention_mask, token_type_ids = _default_inputs(input_ids, attention_mask, token_type_ids)
    x = BertEmbeddings(self.config, self.dtype, name="embeddings")(
      input_ids, token_type_ids, deterministic)
    x = BertEncoder(self.config, self.dtype, self.gradient_checkpointing, name="encoder")(
      x, attention_mask, deterministic)
    pooled = None
    if self.add_pooling_layer:
      pooled = BertPooler(self.config, self.dtype, name="pooler")(x)
    return x, pooled


class BertForSequenceClassification(nn.Module):
  """BERT + pooler + dropout + linear classifier (regression when `num_labels == 1`)."""

  config: BertConfig
  dtype: jnp.dtype = jnp.float32
  gradient_checkpointing: bool = False

  @nn.compact
  def __call__(self, input_ids: Array, attention_mask: Array | None = None,
               token_type_ids: Array | None = None, deterministic: bool = True) -> Array:
    """Same inputs as `BertModel`; returns logits [B, num_labels] float32."""
    cfg = self.config
    _, pooled = BertModel(cfg, self.dtype, True, self.gradient_checkpointing, name="bert")(
      input_ids, attention_mask, token_type_ids, deterministic)
    rate = cfg.hidden_dropout_prob if cfg.classifier_dropout is None else cfg.classifier_dropout
    pooled = nn.Dropout(rate)(pooled, deterministic=deterministic)
    logits = nn.Dense(cfg.num_labels, kernel_init=_dense_init(cfg), dtype=self.dtype,
                      param_dtype=jnp.float32, name="classifier")(pooled)
    # Losses and metrics want float32 even when the body runs in bf16.
    return logits.astype(jnp.float32)


class BertForQuestionAnswering(nn.Module):
  """BERT (no pooler) + a linear span head giving start and end logits per token."""

  config: BertConfig
  dtype: jnp.dtype = jnp.float32
  gradient_checkpointing: bool = False

  @nn.compact
  def __call__(self, input_ids: Array, attention_mask: Array | None = None,
               token_type_ids: Array | None = None,
               deterministic: bool = True) -> tuple[Array, Array]:
    """Same inputs as `BertModel`; returns (start_logits [B, L], end_logits [B, L]) float32."""
    cfg = self.config
    sequence, _ = BertModel(cfg, self.dtype, False, self.gradient_checkpointing, name="bert")(
      input_ids, attention_mask, token_type_ids, deterministic)
    logits = nn.Dense(2, kernel_init=_dense_init(cfg), dtype=self.dtype, param_dtype=jnp.float32,
                      name="qa_outputs")(sequence).astype(jnp.float32)
    return logits[..., 0], logits[..., 1]


HEADS = ("classification", "qa", "base")


def model_for_head(config: BertConfig, head: str, dtype: jnp.dtype = jnp.float32,
                   gradient_checkpointing: bool = False) -> nn.Module:
  """The module for a head name: "classification", "qa" or "base"."""
  if head == "classification":
    return BertForSequenceClassification(config, dtype, gradient_checkpointing)
  if head == "qa":
    return BertForQuestionAnswering(config, dtype, gradient_checkpointing)
  if head == "base":
    return BertModel(config, dtype, gradient_checkpointing=gradient_checkpointing)
  raise UserError(f"unknown head {head!r}: use one of {HEADS}")

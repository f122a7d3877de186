"""A tiny random BERT saved as an HF folder with the packaged MiniLM tokenizer (test fixture)."""

import pathlib

import jax
import jax.numpy as jnp

from mvp_jax.data import tokenization
from mvp_jax.models import bert, hf


def make_tiny_bert(out_dir: pathlib.Path, *, hidden: int = 32, layers: int = 2, heads: int = 2,
                   ffn: int = 64, seed: int = 0) -> pathlib.Path:
  """Writes a randomly initialised base BERT (MiniLM vocabulary) to out_dir and returns it."""
  config = bert.BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, intermediate_size=ffn,
                           max_position_embeddings=128, hidden_dropout_prob=0.1,
                           attention_probs_dropout_prob=0.1)
  model = bert.model_for_head(config, "base")
  ids = jnp.zeros((1, 8), jnp.int32)
  params = model.init(jax.random.PRNGKey(seed), ids, jnp.ones_like(ids), jnp.zeros_like(ids))
  tok = tokenization.load_tokenizer("packaged:minilm-l6")
  return hf.save_pretrained(params["params"], config, out_dir, head="base", tokenizer=tok)

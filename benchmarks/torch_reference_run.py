"""Fine-prunes MiniLM in PyTorch the way the reference code does, on the same batches as ours.

A cross-check of semantics and of training dynamics, independent of our JAX code: transformers'
BertForSequenceClassification with its six encoder Linears per layer masked by a sort-per-forward
top-k of learned scores (straight-through backward, scores initialised to 0), AdamW groups as the
reference (scores lr 1e-2 without decay, embeddings frozen), one linear warm-up/decay schedule,
joint clipping at 1.0, and the reference's cubic level schedule. Batches come from our data
pipeline with the same seed, so `train.py` with the flags printed below sees the same examples.

  python benchmarks/torch_reference_run.py --steps 160 --warmup 16 --final-level 0.5
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
MASKED = ("attention.self.query", "attention.self.key", "attention.self.value",
          "attention.output.dense", "intermediate.dense", "output.dense")


def cubic(step: int, total: int, t_i: int, t_f: int, initial: float, final: float) -> float:
  """The reference's schedule_threshold, transcribed."""
  if step <= t_i:
    return initial
  if step > total - t_f:
    return final
  p = (step - t_i) / (total - t_i - t_f)
  return final + (initial - final) * (1 - p) ** 3


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--steps", type=int, default=160)
  ap.add_argument("--warmup", type=int, default=16)
  ap.add_argument("--initial-warmup", type=int, default=2)
  ap.add_argument("--final-warmup", type=int, default=2)
  ap.add_argument("--final-level", type=float, default=0.5)
  ap.add_argument("--lr", type=float, default=1e-4)
  ap.add_argument("--batch-size", type=int, default=32)
  ap.add_argument("--eval-examples", type=int, default=300)
  ap.add_argument("--seed", type=int, default=42)
  ap.add_argument("--threads", type=int, default=2)
  ap.add_argument("--out", type=pathlib.Path, default=REPO / "benchmarks" / "results" /
                  "torch_reference_run.json")
  args = ap.parse_args()

  import torch
  import transformers

  from mvp_jax.data import batching, config, tasks, tokenization
  from mvp_jax.models import hf

  torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)
  model_dir = hf.resolve_model_dir("packaged:minilm-l6")
  d = config.default_data_config()
  d.max_seq_length = 64
  d.max_eval_examples = args.eval_examples
  task = tasks.build_task(d, tokenization.load_tokenizer(model_dir))
  transformers.logging.set_verbosity_error()
  model = transformers.BertForSequenceClassification.from_pretrained(str(model_dir), num_labels=2)
  for p in model.bert.embeddings.parameters():
    p.requires_grad_(False)

  class TopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores, level):
      k = int(level * scores.numel())
      mask = torch.zeros_like(scores)
      mask.view(-1)[torch.sort(scores.flatten(), descending=True).indices[:k]] = 1.0
      return mask

    @staticmethod
    def backward(ctx, grad):
      return grad, None

  state = {"level": 1.0}
  scores = []
  for layer in model.bert.encoder.layer:
    for dotted in MASKED:
      lin = layer.get_submodule(dotted)
      lin.mask_scores = torch.nn.Parameter(torch.zeros_like(lin.weight))

      def forward(x, lin=lin):
        return torch.nn.functional.linear(x, lin.weight * TopK.apply(lin.mask_scores,
                                                                      state["level"]), lin.bias)

      lin.forward = forward
      scores.append(lin.mask_scores)
  sid = {id(s) for s in scores}
  decay, no_decay = [], []
  for n, p in model.named_parameters():
    if p.requires_grad and id(p) not in sid:
      (no_decay if n.endswith("bias") or "LayerNorm" in n else decay).append(p)
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.0},
                           {"params": no_decay, "weight_decay": 0.0},
                           {"params": scores, "lr": 1e-2, "weight_decay": 0.0}],
                          lr=args.lr, eps=1e-8)
  sched = transformers.get_linear_schedule_with_warmup(opt, args.warmup, args.steps)
  t_i, t_f = args.initial_warmup * args.warmup, args.final_warmup * args.warmup
  it = batching.BatchIterator(task.train_features, batch_size=args.batch_size, seed=args.seed,
                              shuffle=True, drop_remainder=True)
  losses = []
  t0 = time.time()
  model.train()
  for step in range(args.steps):
    state["level"] = cubic(step, args.steps, t_i, t_f, 1.0, args.final_level)
    b = next(it)
    batch = {k: torch.from_numpy(np.asarray(b[k], np.int64)) for k in
             ("input_ids", "attention_mask", "token_type_ids", "labels")}
    loss = model(**batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    losses.append(float(loss))
    if (step + 1) % 10 == 0:
      print(f"step {step + 1} level {state['level']:.3f} loss {np.mean(losses[-10:]):.4f}",
            flush=True)
  model.eval()
  state["level"] = args.final_level
  correct = 0
  with torch.no_grad():
    for b in batching.eval_batches(task.eval_features, 100):
      logits = model(**{k: torch.from_numpy(np.asarray(b[k], np.int64)) for k in
                        ("input_ids", "attention_mask", "token_type_ids")}).logits.numpy()
      keep = b["weights"] > 0
      correct += int((logits.argmax(-1)[keep] == b["labels"][keep]).sum())
  acc = correct / len(task.eval_features["labels"])
  result = {"accuracy": acc, "losses_per_10": [float(np.mean(losses[i:i + 10]))
                                               for i in range(0, len(losses), 10)],
            "args": {k: str(v) for k, v in vars(args).items()}, "wall_s": time.time() - t0,
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(result, indent=2) + "\n")
  print(json.dumps({"accuracy": acc}))
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""SQuAD v1.1, BERT-base, paper hyper-parameters (spec §4.2).

  python train.py --config configs/squad.py:topk --workdir runs/squad_topk
  python train.py --config configs/squad.py:dense --workdir runs/squad_dense   # the teacher
  python train.py --config configs/squad.py:soft,distil --workdir runs/squad_soft_distil
Soft movement and L0 reach a sparsity through final_lambda: sweep it (sheet values: soft
{1, 10, 50, 100, 200, 500, 800, 1100, 1400, 2300}, L0 {0, 1, 10, 75, 100, 175, 300, 600}).
"""

from configs import paper


def get_config(arg: str | None = None):
  c = paper.build("squad", arg, batch_size=16, warmup_steps=5400, epochs=10, warmups=(1, 2),
                  l0_warmups=(1, 1), l0_epochs=10, soft_lambda=400.0, l0_lambda=125.0,
                  l0_score_lr=1e-1, dense_epochs=3)
  c.data.source = "squad"
  c.data.train_file = ""  # "" = the Hub's squad; or a local train-v1.1.json
  c.data.eval_file = ""  # "" = the Hub's squad validation; or a local dev-v1.1.json
  c.data.max_seq_length = 384
  c.data.doc_stride = 128
  c.data.max_query_length = 64
  return c

"""MNLI (matched and mismatched dev), BERT-base, paper hyper-parameters (spec §4.2).

  python train.py --config configs/mnli.py:topk --workdir runs/mnli_topk
Soft movement lambdas in the sheet: {1, 10, 100, 150, 200, 300, 400, 500}; L0:
{0, 0.1, 1, 10, 50, 75, 100, 150, 250}.
"""

from configs import paper


def get_config(arg: str | None = None):
  c = paper.build("mnli", arg, batch_size=32, warmup_steps=12000, epochs=6, warmups=(1, 1),
                  l0_warmups=(1, 1), l0_epochs=6, soft_lambda=300.0, l0_lambda=50.0,
                  l0_score_lr=1e-1, dense_epochs=3)
  c.data.source = "glue"
  c.data.task = "mnli"
  c.data.glue_dir = ""  # "" = the Hub's nyu-mll/glue; or a local GLUE folder
  c.data.max_seq_length = 128
  return c

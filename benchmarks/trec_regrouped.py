"""Write TREC regrouped into two (or three) classes, for the SST-2 collapse diagnosis.

In docs/results.md hard movement pruning to 10% kills the model on the two-class sentiment sets
(SST-2 and the offline movie reviews) and not on six-class TREC. Regrouping TREC's classes,
{ABBR, DESC, ENTY} ("what is it") against {HUM, LOC, NUM} ("who, where, how many"), keeps its
questions, its train/dev split, order and size, and changes only the number of classes: runs
on it tell whether two classes alone put a task on the path to the dead state (they do, see
"What sets SST-2 on the path" there). Class balance: 2,253 / 2,595 train (46% / 54%), 231 / 302
dev (43% / 57%); SST-2's train set is 44% / 56%. ``--classes 3`` splits the second group into
{HUM} and {LOC, NUM} (1,084 and 1,511 train questions).

Writes ``train.csv`` and ``dev.csv`` (columns ``text``, ``label``) into OUT, for
``--config.data.source=files``:

  python benchmarks/trec_regrouped.py /tmp/trec2
  python train.py --config configs/default.py --workdir runs/probe/trec2-topk-0.1-s0 \\
      --config.data.source=files --config.data.task=trec2 \\
      --config.data.train_file=/tmp/trec2/train.csv --config.data.eval_file=/tmp/trec2/dev.csv \\
      ... (the TREC sweep cell's other settings)
"""

from __future__ import annotations

import argparse
import csv
import io
import pathlib
import sys
from collections.abc import Sequence

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from mvp_jax.data.examples import TextExamples  # noqa: E402
from mvp_jax.data.offline import TREC_LABELS, read_trec  # noqa: E402
from mvp_jax.run_io import write_atomic  # noqa: E402

WHAT = "ABBR+DESC+ENTY"
GROUPINGS = {  # number of classes -> coarse TREC class -> group name
  2: {"ABBR": WHAT, "DESC": WHAT, "ENTY": WHAT,
      "HUM": "HUM+LOC+NUM", "LOC": "HUM+LOC+NUM", "NUM": "HUM+LOC+NUM"},
  3: {"ABBR": WHAT, "DESC": WHAT, "ENTY": WHAT, "HUM": "HUM", "LOC": "LOC+NUM", "NUM": "LOC+NUM"},
}


def grouped_rows(examples: TextExamples, groups: dict[str, str]) -> list[tuple[str, str]]:
  """(question, group name) per example, in the examples' order."""
  pairs = zip(examples.text_a, examples.labels, strict=True)
  return [(t, groups[TREC_LABELS[y]]) for t, y in pairs]


def csv_text(rows: Sequence[tuple[str, str]]) -> str:
  """``text,label`` rows as CSV, header first."""
  buf = io.StringIO()
  writer = csv.writer(buf)
  writer.writerow(["text", "label"])
  writer.writerows(rows)
  return buf.getvalue()


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("out", type=pathlib.Path, help="folder to write train.csv and dev.csv into")
  parser.add_argument("--classes", type=int, choices=sorted(GROUPINGS), default=2,
                      help="number of classes to regroup TREC's six into")
  args = parser.parse_args(argv)
  groups = GROUPINGS[args.classes]
  args.out.mkdir(parents=True, exist_ok=True)
  for name, part in zip(("train", "dev"), read_trec(), strict=True):
    rows = grouped_rows(part, groups)
    write_atomic(args.out / f"{name}.csv", csv_text(rows))
    counts = {g: sum(r[1] == g for r in rows) for g in sorted(set(groups.values()))}
    print(f"{args.out / f'{name}.csv'}: {len(rows)} questions, {counts}")


if __name__ == "__main__":
  main()

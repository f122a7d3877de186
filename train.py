"""Fine-prunes a BERT: `python train.py --config configs/default.py --workdir runs/x`.

The only file that defines flags. Overrides: `--config.pruning.final_level=0.03`. A user error
(bad config value, missing file, mismatched checkpoint) prints one line naming the problem and the
fix and exits with status 2; a run stopped by SIGTERM/SIGINT saves a checkpoint first and exits
with 128 + the signal number; re-running the same command resumes it.
"""

import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py",
                                          "Config file (ml_collections get_config()).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the run (resumed if it exists).")
flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Imported here so that `--help` and flag errors come back before JAX initialises.
  from mvp_jax import trainer
  from mvp_jax.errors import UserError

  try:
    results = trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (UserError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except FloatingPointError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(3)
  except trainer.Preempted as e:
    print(f"{e}; re-run the same command to resume.", file=sys.stderr)
    sys.exit(128 + e.signum)
  summary = trainer.summarize(results, _WORKDIR.value)
  logging.info("%s", summary)
  print(summary)


if __name__ == "__main__":
  app.run(main)

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


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with a misspelled or ill-typed config key reported as one clean line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    if any(ln.startswith("Traceback") for ln in lines):  # a config file raised: keep its message
      lines = [lines[0], lines[-1]]
    print("error: " + "\n".join(lines) + "\nPass --helpfull to see the flags.", file=sys.stderr)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # ml_collections reports an unknown --config.<key> as AttributeError('...Did you mean ...').
    msg = str(e).strip("'\"").replace("\\n", " ").replace("\n", " ")
    print(f"error: bad --config override: {msg}", file=sys.stderr)
  sys.exit(2)


def _quiet_libraries() -> None:
  """Keeps orbax's per-save INFO chatter out of the run's log (warnings still show)."""
  import logging as pylogging

  def keep(record: pylogging.LogRecord) -> bool:
    return record.levelno >= pylogging.WARNING or "/orbax/" not in record.pathname

  logging.get_absl_handler().addFilter(keep)


def main(argv, step_fn=None):
  """Runs `trainer.train_and_evaluate` on the flags (`step_fn`: see there)."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  _quiet_libraries()
  # Before JAX runs anything and starts its threads (mvp_jax.host_memory).
  from mvp_jax import host_memory

  if _CONFIG.value.train.get("reuse_host_memory", True):
    reused = host_memory.reuse_freed_memory()
    logging.info("host memory: %s", "malloc keeps freed memory (one arena, no mmap, no trim)"
                 if reused else "left to the C library (not glibc)")
  # Imported here so that `--help` and flag errors come back before JAX initialises.
  from mvp_jax import trainer
  from mvp_jax.errors import UserError

  try:
    results = trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value, step_fn=step_fn)
  except (UserError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except FloatingPointError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(3)
  except trainer.Preempted as e:
    print(f"{e}; re-run the same command to resume.", file=sys.stderr)
    sys.exit(128 + e.signum)
  print(trainer.summarize(results, _WORKDIR.value))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)

"""The error type for problems a user can fix (config values, files, checkpoints).

`train.py` prints these as one clear line and exits non-zero without a traceback; anything else
is a bug and keeps its traceback.
"""


class UserError(ValueError):
  """A problem with user input: the message names the problem and the fix."""

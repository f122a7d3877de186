"""The README's library quick start runs as written and does what it says."""

import contextlib
import io
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_quick_start_block_runs():
  text = README.read_text()
  section = text[text.index("## Quick start: prune your own Flax model"):]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(compile(code, "README.md", "exec"), {})
  assert abs(float(out.getvalue().strip()) - 0.1) < 1e-3

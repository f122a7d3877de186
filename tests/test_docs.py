"""docs/api.md is generated from the docstrings: it must match what tools/api_docs.py writes."""

import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_api_reference_is_up_to_date():
  proc = subprocess.run([sys.executable, str(REPO / "tools" / "api_docs.py"), "--check"],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr + "\nRun: python tools/api_docs.py --write"


def test_api_reference_covers_the_public_api():
  import mvp_jax

  text = (REPO / "docs" / "api.md").read_text()
  for name in mvp_jax.__all__:
    assert f"`{name}`" in text, f"{name} of mvp_jax.__all__ is missing from docs/api.md"
  assert "mvp_jax.trainer.train_and_evaluate" in text

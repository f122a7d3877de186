"""Prints the config reference (every field of configs/default.py, its default and meaning) as a
markdown table, from the one-line comments in that file. `--check README.md` exits 1 when the
README's table is out of date (a test runs it), `--write README.md` refreshes it in place.
"""

import argparse
import pathlib
import re
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"
_FIELD = re.compile(r"^\s*c\.(?P<name>[a-z_.]+) = (?P<value>.+?)(\s+# (?P<doc>.+))?$")
_COMMENT = re.compile(r"^\s*# (?P<doc>.+)$")


def field_docs(path: pathlib.Path, prefix: str = "") -> dict[str, str]:
  """Field name -> its comment (inline, or the comment lines right above it)."""
  docs, pending = {}, []
  for line in path.read_text().splitlines():
    c = _COMMENT.match(line)
    if c:  # comment lines on their own document the field below them
      pending.append(c.group("doc"))
      continue
    m = _FIELD.match(line)
    if m and not m.group("value").startswith(("ml_collections.", "data_config.")):
      doc = m.group("doc") or " ".join(pending)
      if doc:
        docs.setdefault(prefix + m.group("name"), doc)
    pending = []
  return docs


def table() -> str:
  sys.path.insert(0, str(REPO))
  from configs import default

  config = default.get_config()
  docs = field_docs(REPO / "configs" / "default.py")
  for name, doc in field_docs(REPO / "mvp_jax" / "data" / "config.py", "data.").items():
    docs.setdefault(name, doc)
  rows = ["| field | default | meaning |", "|---|---|---|"]
  for name in _leaves(config.to_dict()):
    doc = docs.get(name, "(undocumented)")
    value = config
    for part in name.split("."):
      value = value[part]
    shown = repr(tuple(value) if isinstance(value, list) else value)
    if len(shown) > 40:
      shown = "see configs/default.py"
    doc = doc.replace("|", "\\|")  # a bar would end the markdown cell
    rows.append(f"| `{name}` | `{shown}` | {doc} |")
  return "\n".join(rows)


def _leaves(d: dict, prefix: str = "") -> list[str]:
  out = []
  for k, v in d.items():
    out += _leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [prefix + k]
  return out


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--check", type=pathlib.Path)
  ap.add_argument("--write", type=pathlib.Path)
  args = ap.parse_args()
  new = f"{BEGIN}\n{table()}\n{END}"
  path = args.check or args.write
  if path is None:
    print(table())
    return 0
  text = path.read_text()
  old = re.search(re.escape(BEGIN) + ".*?" + re.escape(END), text, re.S)
  if old is None:
    print(f"{path} has no {BEGIN} ... {END} block", file=sys.stderr)
    return 1
  if args.check:
    if old.group(0) != new:
      print(f"{path}: config reference out of date; run python tools/config_reference.py "
            f"--write {path}", file=sys.stderr)
      return 1
    return 0
  path.write_text(text.replace(old.group(0), new))
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""Write conf/default.toml and the README's configuration table from the config declarations
(mf_spark/core/config.py): each key's default, doc and rule are declared there once, and
tests/core/test_config.py fails when either file differs from what this script writes.

    python scripts/config_docs.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mf_spark.core import config

START, END = "<!-- config table: scripts/config_docs.py writes it -->", "<!-- /config table -->"


def readme_with_table(text: str) -> str:
    """The README with the block between the markers replaced by the table of the declarations."""
    pattern = re.compile(re.escape(START) + r"\n.*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no {START} ... {END} block")
    return pattern.sub(lambda _: f"{START}\n{config.markdown_table()}{END}", text)


def main() -> None:
    (ROOT / "conf" / "default.toml").write_text(config.defaults_toml())
    readme = ROOT / "README.md"
    readme.write_text(readme_with_table(readme.read_text()))
    print("wrote conf/default.toml and README.md's configuration table")


if __name__ == "__main__":
    main()

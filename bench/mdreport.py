"""Keeping one section of a Markdown results file current (shared by the bench scripts)."""

from __future__ import annotations

import re
from pathlib import Path


def replace_section(path: Path, section: str, title: str) -> None:
    """Put ``section`` (starting with the ``## ...`` line ``title``) in ``path``.

    An older section of that title is replaced in place; otherwise the section
    is appended, so each script keeps its own part of a shared file.
    """
    text = path.read_text() if path.exists() else "# Benchmark results\n\n"
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## (?!#)|\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip("\n") + "\n\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")

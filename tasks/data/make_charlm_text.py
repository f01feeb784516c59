"""Generates ``tasks/data/charlm.txt``, the small corpus of the ``charlm`` tasks.

Source: the data-set descriptions (``sklearn/datasets/descr/*.rst``) that ship inside
scikit-learn, concatenated in sorted file order. They are part of scikit-learn, distributed under
the BSD-3-Clause license, Copyright (c) 2007-2026 The scikit-learn developers. The text is
normalized to a small alphabet (``ALPHABET``): lower case, reStructuredText directives and table
rules dropped, runs of spaces collapsed, other characters mapped to near equivalents or spaces.

Run it with the project's environment (scikit-learn is a dependency)::

    .venv/bin/python tasks/data/make_charlm_text.py
"""

from __future__ import annotations

import argparse
import re
from importlib import resources
from pathlib import Path

# Must equal tasks.charlm.ALPHABET.
ALPHABET = "\n !\"%'(),-./0123456789:;?abcdefghijklmnopqrstuvwxyz"
_MAP = {"`": "'", "×": "x", "[": "(", "]": ")", "{": "(", "}": ")", "&": " and "}
_RULE = re.compile(r"^[\s=\-*~^+#|]*$")


def clean(text: str) -> str:
    """Normalizes one reStructuredText file to ``ALPHABET``."""
    lines = []
    for line in text.splitlines():
        if line.lstrip().startswith(".. ") or (line.strip() and _RULE.match(line)):
            continue
        line = "".join(_MAP.get(c, c) for c in line.lower())
        line = "".join(c if c in ALPHABET else " " for c in line)
        lines.append(re.sub(" +", " ", line).strip())
    return re.sub("\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def build() -> str:
    """The whole corpus: every description, cleaned, separated by a blank line."""
    descr = resources.files("sklearn.datasets") / "descr"
    names = sorted(p.name for p in descr.iterdir() if p.name.endswith(".rst"))
    return "\n".join(clean((descr / n).read_text(encoding="utf-8")) for n in names)


def main() -> None:
    """Writes the corpus beside this script (or to ``--out``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("charlm.txt"))
    out = parser.parse_args().out
    text = build()
    assert set(text) <= set(ALPHABET), sorted(set(text) - set(ALPHABET))
    out.write_text(text, encoding="ascii")
    print(f"wrote {out}: {len(text)} characters, {len(set(text))} distinct")


if __name__ == "__main__":
    main()

"""Suggestions for mistyped names: the one "did you mean" of the lab."""

from __future__ import annotations

import difflib
from collections.abc import Collection
from typing import Any


def closest(word: Any, choices: Collection[Any]) -> list[str]:
    """Up to three closest names, best first.

    A case slip (``Open_Es`` -> ``Open_ES``) ranks first, then a shared 3-letter prefix
    (``popsize`` -> ``population``), then difflib's nearest.
    """
    names = [str(c) for c in choices]
    lower = {n.lower(): n for n in names}
    word = str(word).lower()
    same = [n for n in names if n.lower() == word]
    prefix = [n for n in names if len(word) >= 3 and n.lower().startswith(word[:3])]
    near = difflib.get_close_matches(word, list(lower), n=3, cutoff=0.5)
    return list(dict.fromkeys(same + prefix + [lower[n] for n in near]))[:3]


def hint(word: Any, choices: Collection[Any]) -> str:
    """``"; did you mean X or Y?"``, or the valid names when none is close and they are few."""
    close = closest(word, choices)
    if close:
        return f"; did you mean {' or '.join(close)}?"
    names = sorted(str(c) for c in choices)
    return f" (valid: {', '.join(names)})" if len(names) <= 16 else ""

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


def family_name(spec: Any, family: str) -> str:
    """``family`` at a dataclass's defaults, else ``family(key=value,...)`` with the fields that
    differ (tuples joined by ``/``, booleans as 0/1): the name stored with candidates and
    artifacts, read back by ``parse_family``."""
    import dataclasses
    def num(x) -> str:  # short, and exact: parse_family reads back the same value
        if isinstance(x, bool | int):
            return str(int(x))
        return f"{x:g}" if float(f"{x:g}") == x else repr(float(x))

    parts = []
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if value != f.default:
            text = "/".join(num(x) for x in value) if isinstance(value, tuple) else num(value)
            parts.append(f"{f.name}={text}")
    return family + (f"({','.join(parts)})" if parts else "")


def parse_family(cls: type, family: str, name: str, what: str) -> Any:
    """Inverse of ``family_name`` for dataclass ``cls``; ValueError naming the bad part
    (``what`` names the thing in messages, e.g. "learned rule family")."""
    import dataclasses
    import re
    m = re.fullmatch(rf"{re.escape(family)}(?:\((.*)\))?", name.strip())
    if m is None:
        raise ValueError(f"{what} {name!r}: expected {family!r} or {family}(key=value,...)")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for part in filter(None, (m.group(1) or "").split(",")):
        key, eq, text = part.partition("=")
        key = key.strip()
        if not eq or key not in fields:
            raise ValueError(f"{what} {name!r}: unknown setting {part!r}" + hint(key, fields))
        default = fields[key].default
        try:
            if isinstance(default, tuple):
                kwargs[key] = tuple(float(x) for x in text.split("/"))
            elif isinstance(default, bool):
                kwargs[key] = bool(int(text))
            elif isinstance(default, int):
                if not float(text).is_integer():
                    raise ValueError(text)
                kwargs[key] = int(float(text))
            else:
                kwargs[key] = float(text)
        except ValueError:
            raise ValueError(f"{what} {name!r}: bad value in {part!r}") from None
    return cls(**kwargs)

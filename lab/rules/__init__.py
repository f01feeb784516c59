"""What is being discovered: update rules, all behind one interface (``base.UpdateRule``)."""

from __future__ import annotations

from collections.abc import Callable

from lab.rules.base import UpdateRule

# kind -> rebuilds the rule family from the name stored with a candidate or an artifact.
_FROM_NAME: dict[str, Callable[[str], UpdateRule]] = {}


def register_kind(kind: str, from_name: Callable[[str], UpdateRule]) -> None:
    _FROM_NAME[kind] = from_name


def rule_from_name(kind: str, name: str) -> UpdateRule:
    """The rule family of a stored candidate or artifact, e.g. ("baseline", "adam")."""
    if kind not in _FROM_NAME:
        raise ValueError(f"unknown rule kind {kind!r} (known: {', '.join(sorted(_FROM_NAME))})")
    return _FROM_NAME[kind](name)


def _baseline(name: str) -> UpdateRule:
    from lab.rules.baselines import baseline_from_target
    return baseline_from_target(name)


register_kind("baseline", _baseline)

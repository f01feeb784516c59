"""What is being discovered: update rules, all behind one interface (``base.UpdateRule``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lab.rules.base import UpdateRule

# kind -> rebuilds the rule family from the name stored with a candidate or an artifact.
_FROM_NAME: dict[str, Callable[[str], UpdateRule]] = {}
# kind -> (genome -> text, text -> genome) for kinds with a text form (programs).
_TEXT: dict[str, tuple[Callable[[Any], str], Callable[[str], Any]]] = {}


def register_kind(kind: str, from_name: Callable[[str], UpdateRule],
                  text: tuple[Callable[[Any], str], Callable[[str], Any]] | None = None) -> None:
    _FROM_NAME[kind] = from_name
    if text is not None:
        _TEXT[kind] = text


def rule_from_name(kind: str, name: str) -> UpdateRule:
    """The rule family of a stored candidate or artifact, e.g. ("baseline", "adam")."""
    if kind not in _FROM_NAME:
        raise ValueError(f"unknown rule kind {kind!r} (known: {', '.join(sorted(_FROM_NAME))})")
    return _FROM_NAME[kind](name)


def source_of(rule: UpdateRule, genome: Any) -> str | None:
    """The text form of a genome (programs), or None for kinds without one."""
    return _TEXT[rule.kind][0](genome) if rule.kind in _TEXT else None


def genome_from_source(kind: str, text: str) -> Any:
    """Text form -> genome, for kinds with one; ValueError otherwise (or if malformed)."""
    if kind not in _TEXT:
        raise ValueError(f"rule kind {kind!r} has no text form")
    return _TEXT[kind][1](text)


def _baseline(name: str) -> UpdateRule:
    from lab.rules.baselines import baseline_from_target
    return baseline_from_target(name)


def _program(name: str) -> UpdateRule:
    from lab.rules.program import KIND, program_rule
    if name != KIND:
        raise ValueError(f"unknown program family {name!r} (expected {KIND!r})")
    return program_rule()


def _program_source(genome: Any) -> str:
    from lab.rules.program import source_of as program_source
    return program_source(genome)


def _program_from_source(text: str) -> Any:
    from lab.rules.program import from_source
    return from_source(text)


def _learned(name: str) -> UpdateRule:
    from lab.rules.learned import Features, learned_rule
    return learned_rule(Features.parse(name))


register_kind("baseline", _baseline)
register_kind("program", _program, (_program_source, _program_from_source))
register_kind("learned", _learned)


def _drift(name: str):
    from lab.rl.objectives import objective_from_name
    return objective_from_name(name)


register_kind("drift", _drift)  # PPO objectives (lab.rl.objectives.Objective), not update rules

"""The Kind record and its registry: how the core and the commands meet a kind they do not know.

A kind (what is discovered: optax hyperparameters, symbolic programs, learned optimizers, RL
objectives, or one from another package) is one record of pure functions, in optax's style
(``GradientTransformation`` is a pair of functions; a ``Kind`` is a few more). The package that
owns a kind builds its record and calls ``register``; kinds in other installed packages are found
through the entry point group ``lab.kinds`` (each entry point names a ``Kind`` or a function
returning one). The core and the command layer only ever call ``get(name)`` and ``registry()``:
nothing outside a kind's package compares against its name.

What each field is for:

* config: ``rule_config`` and ``search_config`` are the frozen dataclasses of the ``rule`` and
  ``search`` sections (``lab.core.config`` checks every key against them); ``config_domain``
  where the suites a config trains on depend on it (a program kind searching RL objectives),
  ``config_problems`` for what no single section can check;
* search: ``make_rule(cfg)`` (the family and its start genome), ``make_scorer(cfg, rule, store,
  mesh)`` (a ``lab.core.fitness.Scorer``) and ``make_driver(cfg, setup)`` (its step in the one
  generation loop, ``lab.core.loop.Driver``);
* stored candidates and artifacts: ``rule_from_name(name)`` rebuilds a family; ``text`` is the
  text form of a genome where the kind has one (programs);
* functional identity: ``fingerprint(rule, genome, jit)`` and ``describe_function(rule, genome)``
  (hash, equals, closest, ...);
* the commands: ``views`` (what ``lab inspect`` adds), ``replay`` (``lab replay``), ``export``
  (the metrics ``lab export`` writes) and ``readme`` (their tables in the artifact README), a
  target ``prefix`` with its resolver, and ``artifact_fields`` (extra keys of rule.json);
* ``conformance()``: the cases the test suite runs for this kind (``Conformance``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

GROUP = "lab.kinds"  # the entry point group of kinds in other packages
# the tuned optimizers of an update rule's held-out tables: the common three, LAMB, and
# schedule-free AdamW (optax.contrib; the AlgoPerf entry that beat the tuned baseline), each
# tuned on the same learning-rate grid
HELDOUT_BASELINES = ("adam", "adamw", "lion", "lamb", "schedule_free_adamw")


class TextForm(NamedTuple):
    """A readable, parseable form of a genome: ``to_text(rule, genome)`` (a genome of the family
    ``rule``: one kind's families may read the same arrays differently) and ``from_text(text)``
    (ValueError naming the line when malformed). Loading text never executes it."""

    to_text: Callable[[Any, Any], str]
    from_text: Callable[[str], Any]


class ReplayRequest(NamedTuple):
    """What ``lab replay`` asks of a kind's ``replay``."""

    suite: str
    seeds: int
    baselines: tuple[str, ...]
    store: Any = None
    mesh: Any = None
    plot: Any = None  # a PNG path, or None
    tune_lr: bool = False
    horizon_scale: int = 1


class RuleCase(NamedTuple):
    """One rule under the conformance suite (``tests/test_kinds.py``).

    Attributes:
      id: the pytest id.
      rule: the family.
      population: three distinct genomes of it (a population for the vmap check).
      apply: ``apply(rule, genome) -> pytree`` of float arrays: a pure function that exercises
        the rule on a small fixed problem (a few update steps, or a drift on a grid); checked
        under jit against eager, vmapped over ``population`` against a loop, for float32 outputs
        and under ``jax.debug_nans``.
      exported: ``exported(rule, genome) -> pytree``, the same computation through the kind's
        export form (``to_optax``, or the family rebuilt from its stored name and genome):
        must equal ``apply``.
    """

    id: str
    rule: Any
    population: tuple[Any, ...]
    apply: Callable[[Any, Any], Any]
    exported: Callable[[Any, Any], Any]


class LaunchCase(NamedTuple):
    """The end-to-end case of a kind: a config (path, relative to the project root or absolute)
    and ``--set`` overrides for a run of a few generations on a tiny suite of the kind's domain
    (the test replaces ``suite``). Every compiled shape should be used in generation 0."""

    config: str
    overrides: tuple[str, ...] = ()


class Conformance(NamedTuple):
    rules: Sequence[RuleCase]
    launch: LaunchCase


def _no_views(target, store, info) -> dict:
    return {}


def _no_fields(target) -> dict:
    return {}


@dataclasses.dataclass(frozen=True)
class Kind:
    """One kind of discovery: the record its package registers (module docstring)."""

    name: str
    summary: str
    rule_config: type
    search_config: type
    make_rule: Callable[[Any], Any]
    rule_from_name: Callable[[str], Any]
    make_scorer: Callable[[Any, Any, Any, Any], Any]
    make_driver: Callable[[Any, Any], Any]
    fingerprint: Callable[..., tuple[Any, str]]
    describe_function: Callable[[Any, Any], dict]
    replay: Callable[[Any, ReplayRequest], dict]
    export: Callable[[Any, Any, str, int], dict]
    readme: Callable[[dict], list[str]]
    conformance: Callable[[], Conformance]
    domain: str = "supervised"  # the suites it trains and replays on (``tasks.domain_of``)
    noun: str = "update rule"  # what one candidate is, in READMEs and messages
    fitness_zero: str = "tuned Adam"  # what fitness 0 means
    replay_suite: str = "heldout"
    replay_seeds: int = 5
    replay_baselines: tuple[str, ...] = HELDOUT_BASELINES
    check_baseline: Callable[[str], None] = lambda name: None
    # the domain a config of this kind trains on, where it depends on the config (default:
    # ``domain``), and problems across a config's sections: ``[(dotted key, message)]``
    config_domain: Callable[[Any], str] | None = None
    config_problems: Callable[[Any], list[tuple[str, str]]] = lambda cfg: []
    views: Callable[[Any, Any, dict], dict] = _no_views
    artifact_fields: Callable[[Any], dict] = _no_fields
    text: TextForm | None = None
    prefix: str | None = None  # ``PREFIX:REST`` targets, e.g. ``baseline:adam``
    resolve: Callable[[str], Any] | None = None  # REST -> lab.core.target.Target


_REGISTERED: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    """Adds ``kind`` to the registry (the same record again is a no-op); returns it."""
    old = _REGISTERED.get(kind.name)
    if old is not None and old is not kind:
        raise ValueError(f"kind {kind.name!r} is registered twice ({old.summary!r} and "
                         f"{kind.summary!r})")
    _REGISTERED[kind.name] = kind
    return kind


@functools.lru_cache(maxsize=1)
def _plugins() -> tuple[str, ...]:
    """Loads the kinds of other installed packages (entry point group ``lab.kinds``), once."""
    from importlib.metadata import entry_points
    loaded = []
    for ep in entry_points(group=GROUP):
        try:
            obj = ep.load()
        except Exception as e:  # noqa: BLE001 - a broken plugin names itself, not a traceback
            raise ValueError(f"entry point {ep.name!r} ({ep.value}) in group {GROUP!r} "
                             f"cannot be loaded: {e}") from e
        kind = obj() if callable(obj) and not isinstance(obj, Kind) else obj
        if not isinstance(kind, Kind):
            raise ValueError(f"entry point {ep.name!r} ({ep.value}) in group {GROUP!r} gives "
                             f"a {type(kind).__name__}, not a lab.core.kind.Kind")
        register(kind)
        loaded.append(kind.name)
    return tuple(loaded)


def registry() -> dict[str, Kind]:
    """Every registered kind by name: those registered in this process (the lab's own, once
    ``lab.kinds`` is imported) and those of installed plugins."""
    _plugins()
    return dict(_REGISTERED)


def get(name: str) -> Kind:
    """The kind called ``name``; ValueError naming the known ones otherwise."""
    kinds = registry()
    if name not in kinds:
        from lab.names import hint
        raise ValueError(f"unknown kind {name!r}{hint(name, kinds)} (known: "
                         f"{', '.join(sorted(kinds)) or 'none: import lab.kinds'})")
    return kinds[name]


def by_prefix(prefix: str) -> Kind | None:
    """The kind whose targets start with ``prefix:``, if any."""
    return next((k for k in registry().values() if k.prefix == prefix), None)

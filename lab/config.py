"""Run configs: YAML -> frozen dataclasses, strictly validated.

Every key has a default, so an empty file (or ``path=None``) is a valid config. Validation
reports every problem of the first pass that finds any: unknown keys (with the closest valid
names), then types, then values (ranges and registry names: suite, strategy, baseline, optax
optimizer). Each problem names the file and line, or the ``--set`` override, and the dotted key.

Overrides are ``KEY=VALUE`` strings (the CLI's ``--set``), VALUE read with ``yaml.safe_load``.
A value replaces whatever is at its key: ``rule.init={b1: 0.5}`` replaces the whole dict,
``rule.init.b1=0.5`` sets one entry and keeps the others, ``search={population: 4}`` replaces
the section (its other keys fall back to their defaults).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib
import inspect
import json
import operator
import os
import re
import typing
from collections.abc import Callable, Collection, Sequence
from typing import Any

import yaml

from lab.names import hint

Scalar = bool | int | float | str | None
Path = tuple[str, ...]


class ConfigError(ValueError):
    """A config that cannot be used; names file, line, dotted key and fix (``.problems``: lines)."""

    def __init__(self, message: str, problems: Sequence[str] = ()):
        super().__init__(message)
        self.problems = list(problems) or [message]


# Registries are looked up when a config is validated (not on import, so reading a config never
# imports evosax), through these functions so that tests can patch them.
def _suites() -> Collection[str]:
    return importlib.import_module("tasks").SUITES


def _strategies() -> Collection[str]:
    return importlib.import_module("lab.search.es").STRATEGIES


def _baselines() -> dict[str, Any]:
    return importlib.import_module("lab.rules.baselines").BASELINES


def _optimizers() -> Collection[str]:
    """optax optimizer aliases: public callables whose first parameter is ``learning_rate``."""
    import inspect
    optax = importlib.import_module("optax")
    out = set()
    for n in dir(optax):
        f = getattr(optax, n)
        if n.startswith("_") or not inspect.isfunction(f):
            continue
        params = list(inspect.signature(f).parameters)
        if params and params[0] == "learning_rate":
            out.add(n)
    return out


def _field(default: Any, *, ge: float | None = None, gt: float | None = None,
           le: float | None = None, lt: float | None = None,
           choices: Callable[[], Collection[str]] | None = None, what: str = "name",
           nonempty: bool = False) -> Any:
    """A dataclass field carrying its checks: bounds and a registry of valid names (for a tuple,
    checked on each item)."""
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "what": what,
            "nonempty": nonempty}
    if isinstance(default, dict):  # dicts stay out of __hash__, so configs remain hashable
        return dataclasses.field(default_factory=dict, hash=False, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class BaselineRuleConfig:
    """The ``rule`` section for ``kind: baseline``: an optax optimizer whose genome is searched."""

    name: str = _field("adam", choices=lambda: _baselines(), what="baseline")  # BASELINES key
    lr: float = _field(1.0, gt=0)  # outer learning-rate multiplier
    init: dict[str, float] = _field({})  # initial hyperparameters by optax keyword: {b1: 0.9}
    fixed: dict[str, Scalar] = _field({})  # static optax keyword arguments: {nesterov: true}

    def problems(self) -> list[tuple[str, str]]:
        """(relative key, message) for entries that the chosen baseline does not accept."""
        spec, out = _baselines().get(self.name), []
        searchable = getattr(spec, "searchable", None)
        for key, value in self.init.items() if searchable is not None else ():
            how = searchable.get(key, (None, None))[1]
            if key not in searchable:
                out.append((f"init.{key}", f"baseline {self.name!r} does not search {key!r}"
                            + hint(key, searchable)))
            elif (how == "log" and not value > 0) or (how == "log1m" and not 0 < value < 1):
                bound = "> 0" if how == "log" else "in (0, 1)"
                out.append((f"init.{key}", f"must be {bound}, got {value}"))
        factory = getattr(spec, "factory", None)
        valid = list(inspect.signature(factory).parameters) if factory else []
        for key in [k for k in self.fixed if k not in valid] if factory else ():
            out.append((f"fixed.{key}", f"optax.{factory.__name__} has no keyword {key!r}"
                        + hint(key, valid)))
        return out


def _seed_programs() -> Collection[str]:
    return importlib.import_module("lab.rules.program").seed_names()


@dataclasses.dataclass(frozen=True)
class ProgramRuleConfig:
    """The ``rule`` section for ``kind: program``: where the search starts and how long
    programs may grow."""

    seed: str = _field("adamw", choices=lambda: _seed_programs(), what="seed program")
    file: str = ""  # a .prog file to start from instead of ``seed`` (relative to the cwd)
    max_len: int = _field(20, ge=2, le=64)  # statements a program may have
    lr: float = _field(1.0, gt=0)  # outer learning rate (Ctx.lr)

    def problems(self) -> list[tuple[str, str]]:
        if self.file:
            from lab.rules.program import ProgramError, read_program
            try:
                p = read_program(self.file)
            except ProgramError as e:
                return [("file", str(e))]
            if len(p) > self.max_len:
                return [("file", f"{self.file} has {len(p)} statements, more than "
                                 f"max_len {self.max_len}")]
        return []


@dataclasses.dataclass(frozen=True)
class LearnedRuleConfig:
    """The ``rule`` section for ``kind: learned``: the learned optimizer's features and network
    (``lab.rules.learned.Features``) and where its weights start."""

    hidden: int = _field(16, ge=1)  # width of each hidden layer
    depth: int = _field(2, ge=0)  # hidden layers
    momenta: tuple[float, ...] = _field((0.5, 0.9, 0.99, 0.999), ge=0, lt=1, nonempty=True)
    rms: float = _field(0.999, ge=0, lt=1)  # decay of the second moments
    factored: bool = True  # Adafactor row/column second moments for matrices
    scales: bool = True  # per-tensor log RMS(p) and log RMS(g) features
    taus: tuple[float, ...] = _field((1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0), gt=0)
    step: float = _field(1e-3, gt=0)  # initial step multiplier exp(log_step)
    exp_mult: float = _field(1e-3, ge=0)  # step = d * exp(exp_mult * m) * exp(log_step)
    init: str = _field("adam", choices=lambda: ("adam", "random"), what="init")  # "adam": the
    # direction's skip weight on Adam's direction starts at 1 (the rule starts as Adam at
    # ``step``); "random": every skip starts at 0
    init_seed: int = 0  # PRNG seed of the initial weights
    lr: float = _field(1.0, gt=0)  # outer learning rate (Ctx.lr)

    def features(self):
        from lab.rules.learned import Features
        return Features(self.hidden, self.depth, self.momenta, self.rms, self.factored,
                        self.scales, self.taus, self.step, self.exp_mult)


RULE_CONFIGS: dict[str, type] = {"baseline": BaselineRuleConfig, "program": ProgramRuleConfig,
                                 "learned": LearnedRuleConfig}


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """The ``search`` section: the evosax strategy and the optimizer of its mean."""

    strategy: str = _field("Open_ES", choices=lambda: _strategies(), what="strategy")
    population: int = _field(16, ge=2)  # candidates per generation
    generations: int = _field(10, ge=1)
    sigma: float = _field(0.1, gt=0)  # initial perturbation scale
    lr: float = _field(0.05, gt=0)  # learning rate of the optimizer that moves the ES mean
    optimizer: str = _field("adam", choices=lambda: _optimizers(), what="optax optimizer")
    elite_ratio: float = _field(0.5, gt=0, le=1)
    seed: int = 0  # the search's own randomness (ES samples and per-generation task keys)

    def problems(self) -> list[tuple[str, str]]:
        info = _strategies().get(self.strategy) if isinstance(_strategies(), dict) else None
        if getattr(info, "antithetic", False) and self.population % 2:
            return [("population", f"{self.strategy} samples mirrored pairs: the population "
                                   f"must be even, got {self.population}")]
        return []


@dataclasses.dataclass(frozen=True)
class ConstantsESConfig:
    """``search.es``: evosax on the constants of the best structures (0 structures: off)."""

    top: int = _field(0, ge=0)  # structures tuned
    strategy: str = _field("Open_ES", choices=lambda: _strategies(), what="strategy")
    population: int = _field(8, ge=2)
    generations: int = _field(5, ge=1)
    sigma: float = _field(0.1, gt=0)  # perturbation of log|k|
    lr: float = _field(0.05, gt=0)


@dataclasses.dataclass(frozen=True)
class EvolutionConfig:
    """The ``search`` section for ``kind: program``: batched regularized evolution.

    References: Real et al. 2019 (arXiv 1802.01548); Chen et al. 2023 (arXiv 2302.06675).
    """

    strategy: str = _field("regularized_evolution", choices=lambda: ("regularized_evolution",),
                           what="program search strategy")
    population: int = _field(64, ge=2)  # the evolving population (1000 on an accelerator)
    children: int = _field(16, ge=1)  # children per generation (B, a fixed batch)
    generations: int = _field(10, ge=1)
    tournament: int = _field(2, ge=1)
    seed: int = 0
    lr_grid: tuple[float, ...] = _field((0.3, 1.0, 3.0), gt=0, nonempty=True)  # x ctx.lr
    retries: int = _field(3, ge=0)  # re-mutations while a child behaves like its parent
    evaluations: int = _field(1, ge=1)  # evaluations averaged per function (noisy fitness)
    confirm: bool = True  # a new best-so-far is scored again on fresh data before it counts
    forget: float = _field(0.0, ge=0, le=1)  # chance a full cache hit is evaluated again
    hurdle: float = _field(0.0, ge=0, lt=1)  # fraction cut after a short run (0: no hurdle)
    hurdle_budget: int = _field(0, ge=0)  # inner steps of the short run; 0: budget / 5
    hurdle_window: int = _field(256, ge=1)  # recent short-run fitnesses the quantile is over
    plateau: int = _field(0, ge=0)  # generations without improvement before a restart; 0: off
    es: ConstantsESConfig = dataclasses.field(default_factory=ConstantsESConfig)
    funnel: int = _field(0, ge=0)  # finalists re-scored at funnel_scale x budget
    funnel_scale: int = _field(10, ge=2)
    meta_validate_every: int = _field(0, ge=0)  # best-so-far at funnel_scale x budget
    simplify: bool = True  # knock-out ablation of the best program after the search
    simplify_tolerance: float = _field(0.02, ge=0)  # fitness a dropped statement may cost

    def problems(self) -> list[tuple[str, str]]:
        if self.children > self.population:
            return [("children", f"{self.children} children per generation, more than the "
                                 f"population {self.population}")]
        return []


def _meta_losses() -> Collection[str]:
    return importlib.import_module("lab.unroll").META_LOSSES


@dataclasses.dataclass(frozen=True)
class MetaTrainConfig(SearchConfig):
    """The ``search`` section for ``kind: learned``: ES over the network's weights, scored on
    truncated unrolls of the suite's tasks.

    References: Metz et al. 2019 (arXiv 1810.10180); Vicol et al. 2021 (arXiv 2112.13835).
    """

    population: int = _field(32, ge=2)
    generations: int = _field(100, ge=1)
    sigma: float = _field(0.01, gt=0)  # perturbation of every weight
    lr: float = _field(0.01, gt=0)
    unroll: int = _field(20, ge=1)  # inner steps per truncation (static)
    horizon_min: int = _field(100, ge=1)  # inner-run horizons, log-uniform, in multiples of
    horizon_max: int = _field(1000, ge=1)  # ``unroll``; a dynamic input (no recompiles)
    meta_loss: str = _field("mean_loss", choices=lambda: _meta_losses(), what="meta_loss")
    persistent: bool = False  # PES: accumulated perturbations per member, reset with its run
    validate_every: int = _field(10, ge=0)  # the ES mean on full runs (fixed seeds); 0: at end

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if self.horizon_max < self.horizon_min:
            out.append(("horizon_max", f"{self.horizon_max} is below horizon_min "
                                       f"{self.horizon_min}"))
        if self.horizon_max < self.unroll:
            out.append(("horizon_max", f"{self.horizon_max} is shorter than one unroll "
                                       f"({self.unroll} steps)"))
        if self.persistent and self.strategy != "Open_ES":
            out.append(("persistent", f"persistent ES estimates its gradient from accumulated "
                                      f"perturbations, which needs Open_ES, not "
                                      f"{self.strategy}"))
        return out


SEARCH_CONFIGS: dict[str, type] = {"baseline": SearchConfig, "program": EvolutionConfig,
                                   "learned": MetaTrainConfig}


@dataclasses.dataclass(frozen=True)
class EvaluatorConfig:
    """The ``evaluator`` section: chunking, memory and devices."""

    chunk: int = _field(0, ge=0)  # candidates per compiled call; 0: the whole population
    memory_mb: float = _field(0.0, ge=0)  # device memory bound per call; 0: no bound
    devices: int = _field(0, ge=0)  # devices in the mesh; 0: all
    unroll: int = _field(1, ge=1)  # lax.scan unroll of the inner loop

    def problems(self) -> list[tuple[str, str]]:
        if self.devices > 1:
            import jax
            have = jax.device_count()
            if self.devices > have:
                return [("devices", f"{self.devices} devices asked for, JAX sees {have}")]
        return []


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    """The ``output`` section: where and what a run writes."""

    checkpoint_every: int = _field(0, ge=0)  # generations between checkpoints; 0: never
    plots: bool = True  # fitness over generations as runs/<id>/fitness.png
    top_k: int = _field(5, ge=1)  # finalists re-scored on the fixed evaluation seeds


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole run config; ``kind`` picks the dataclass of ``rule`` from ``RULE_CONFIGS``."""

    name: str = "run"
    kind: str = _field("baseline", choices=lambda: RULE_CONFIGS, what="kind")
    suite: str = _field("train", choices=lambda: _suites(), what="suite")  # tasks.SUITES
    budget: int = _field(0, ge=0)  # inner steps (RL: environment steps) per task; 0: default
    seeds: int = _field(2, ge=1)
    rule: Any = dataclasses.field(default_factory=BaselineRuleConfig)  # kind-specific
    search: Any = dataclasses.field(default_factory=SearchConfig)  # kind-specific
    evaluator: EvaluatorConfig = dataclasses.field(default_factory=EvaluatorConfig)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)

    def problems(self) -> list[tuple[str, str]]:
        """RL objectives train on RL suites (``rl-...``) and update rules on the others."""
        rl = self.suite.startswith("rl-")
        if (self.kind == "drift") != rl and self.suite in _suites():
            want = [s for s in _suites() if s.startswith("rl-") != rl]
            return [("suite", f"kind {self.kind!r} cannot train on suite {self.suite!r}; "
                              f"use one of {', '.join(want)}")]
        return []


def _describe(value: Any) -> str:
    kind = {type(None): "null", bool: "boolean", dict: "a mapping", list: "a list", int: "integer",
            float: "number", str: "string"}
    name = kind.get(type(value), type(value).__name__)
    return name if isinstance(value, dict | list | type(None)) else f"{name} {value!r}"


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


# PyYAML reads YAML 1.1, where a float needs a dot: ``1e-6`` comes back as a string.
_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _convert(value: Any, tp: Any) -> Any:
    """``value`` as type ``tp`` (an int is a float; a bool is not an int), or TypeError."""
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
        return float(value)
    if tp is int and isinstance(value, bool):
        raise TypeError(f"must be an integer, got {_describe(value)}")
    if isinstance(value, tp):
        return value
    want = _TYPE_NAMES.get(tp, "a number, string, boolean or null")
    raise TypeError(f"must be {want}, got {_describe(value)}")


class _Checker:
    """Walks raw YAML data against the dataclasses, collecting problems with their origins."""

    def __init__(self, file: str | None, lines: dict[Path, int], overrides: dict[Path, str]):
        self.file, self.lines, self.overrides = file, lines, overrides
        self.found: dict[str, list[str]] = {"unknown": [], "type": [], "value": []}
        self.kind: str | None = None

    def where(self, path: Path) -> str:
        """``file:line`` or ``--set TEXT``: what set ``path`` (or created it on the way)."""
        for n in range(len(path), 0, -1):
            if path[:n] in self.overrides:
                return f"--set {self.overrides[path[:n]]}"
        if path in self.lines:
            return f"{self.file}:{self.lines[path]}"
        for key, text in reversed(self.overrides.items()):
            if key[:len(path)] == path:
                return f"--set {text}"
        for n in range(len(path), 0, -1):
            if path[:n] in self.lines:
                return f"{self.file}:{self.lines[path[:n]]}"
        return self.file or "<defaults>"

    def add(self, category: str, path: Path, message: str) -> None:
        self.found[category].append(f"{self.where(path)}: {'.'.join(path)}: {message}")

    def build(self, cls: type, raw: dict, path: Path) -> Any:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        for key in raw:
            if key not in fields:
                self.add("unknown", (*path, str(key)), "unknown key" + hint(key, fields))
        kwargs = {}
        for name, f in fields.items():
            tp, value, p = hints[name], raw.get(name), (*path, name)
            if cls is Config and name in ("rule", "search"):  # built by kind, always
                tp = (RULE_CONFIGS if name == "rule" else SEARCH_CONFIGS).get(self.kind)
                if tp is None:
                    continue
            elif name not in raw:
                continue
            if dataclasses.is_dataclass(tp) or typing.get_origin(tp) is dict:
                value = {} if value is None else value
                if not isinstance(value, dict):
                    self.add("type", p, f"must be a mapping, got {_describe(value)}")
                elif dataclasses.is_dataclass(tp):
                    kwargs[name] = self.build(tp, value, p)
                else:
                    kwargs[name] = self.entries(value, typing.get_args(tp)[1], p)
                continue
            if typing.get_origin(tp) is tuple:
                items = self.items(value, typing.get_args(tp)[0], p)
                if items is not None:
                    kwargs[name] = items
                    for message in _value_problems(items, f.metadata):
                        self.add("value", p, message)
                continue
            try:
                kwargs[name] = value = _convert(value, tp)
            except TypeError as e:
                self.add("type", p, str(e))
                continue
            for message in _value_problems(value, f.metadata):
                self.add("value", p, message)
        obj = cls(**kwargs)
        for key, message in getattr(obj, "problems", list)():
            self.add("value", (*path, *key.split(".")), message)
        return obj

    def items(self, raw: Any, tp: Any, path: Path) -> tuple | None:
        """A YAML list as a tuple of ``tp`` (a lone scalar is a list of one)."""
        values = raw if isinstance(raw, list) else [raw]
        out = []
        for i, value in enumerate(values):
            try:
                out.append(_convert(value, tp))
            except TypeError as e:
                self.add("type", (*path, str(i)), str(e))
                return None
        return tuple(out)

    def entries(self, raw: dict, tp: Any, path: Path) -> dict:
        out = {}
        for key, value in raw.items():
            if not isinstance(key, str):
                self.add("type", (*path, str(key)), f"keys must be strings, got {_describe(key)}")
                continue
            try:
                out[key] = _convert(value, tp)
            except TypeError as e:
                self.add("type", (*path, key), str(e))
        return out

    def check(self) -> None:
        for problems in self.found.values():
            if len(problems) == 1:
                raise ConfigError(problems[0], problems)
            if problems:
                head = f"{len(problems)} problems in {self.file or 'the config'}:"
                raise ConfigError("\n  ".join([head, *problems]), problems)


def _value_problems(value: Any, meta: dict) -> list[str]:
    if isinstance(value, tuple):
        if meta.get("nonempty") and not value:
            return ["must list at least one value"]
        return [f"[{i}]: {m}" for i, v in enumerate(value) for m in _value_problems(v, meta)]
    for key, holds, text in (("ge", operator.ge, ">="), ("gt", operator.gt, ">"),
                             ("le", operator.le, "<="), ("lt", operator.lt, "<")):
        if meta.get(key) is not None and not holds(value, meta[key]):  # NaN fails every bound
            return [f"must be {text} {meta[key]}, got {value}"]
    if meta.get("choices") is not None and value not in (choices := meta["choices"]()):
        return [f"unknown {meta['what']} {value!r}" + hint(value, choices)]
    return []


def _key_lines(node: yaml.Node, path: Path, out: dict[Path, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                out.setdefault((*path, key.value), key.start_mark.line + 1)
                _key_lines(value, (*path, key.value), out)


def _read(file: str) -> tuple[dict, dict[Path, int]]:
    """The mapping in ``file`` and the line of every key path in it."""
    try:
        with open(file, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such config file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{file}: cannot read config: {e}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{file}:{mark.line + 1}" if mark is not None else file
        raise ConfigError(f"{where}: invalid YAML: {getattr(e, 'problem', None) or e}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"{file}:{node.start_mark.line + 1}: the top level must be a mapping "
                          f"(name: ..., suite: ..., search: ...), got {_describe(data)}")
    lines: dict[Path, int] = {}
    _key_lines(node, (), lines)
    return data, lines


def _apply(raw: dict, text: str, applied: dict[Path, str]) -> None:
    """Applies one ``KEY=VALUE`` override to ``raw``; remembers where each key path came from."""
    key, eq, value_text = text.partition("=")
    path = tuple(part.strip() for part in key.strip().split("."))
    if not eq or not all(path):
        raise ConfigError(f"--set {text}: expected KEY=VALUE with a dotted KEY, "
                          "e.g. search.population=32")
    try:
        value = yaml.safe_load(value_text)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {text}: cannot read the value: "
                          f"{getattr(e, 'problem', None) or e}") from None
    node = raw
    for i, part in enumerate(path[:-1]):
        if node.get(part) is None:
            node[part] = {}
        if not isinstance(node[part], dict):
            raise ConfigError(f"--set {text}: {'.'.join(path[:i + 1])} is "
                              f"{_describe(node[part])}, not a section")
        node = node[part]
    node[path[-1]] = value
    for old in [p for p in applied if p[:len(path)] == path]:
        del applied[old]
    applied[path] = text


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> Config:
    """Reads, overrides and validates a config.

    Args:
      path: a YAML file, or None for all defaults.
      overrides: ``KEY=VALUE`` strings applied in order, e.g. ``["search.population=32"]``.

    Returns:
      The validated, frozen ``Config``.

    Raises:
      ConfigError: the file is missing or not YAML, an override is malformed, or the config has
        unknown keys, wrong types or bad values (all of the first such category are reported).
    """
    file = None if path is None else os.fspath(path)
    raw, lines = ({}, {}) if file is None else _read(file)
    raw, applied = copy.deepcopy(raw), {}  # YAML aliases share objects; overrides must not
    for text in overrides:
        _apply(raw, text, applied)
    checker = _Checker(file, lines, applied)
    kind = raw.get("kind", Config.kind)
    if isinstance(kind, str) and kind in RULE_CONFIGS:
        checker.kind = kind
    else:  # without a kind the rule section cannot be checked, so this counts as an unknown name
        checker.add("unknown", ("kind",), f"unknown kind {kind!r}" + hint(kind, RULE_CONFIGS))
    config = checker.build(Config, raw, ())
    checker.check()
    return config


def config_to_dict(config: Config) -> dict[str, Any]:
    """The config as plain, JSON-able nested dicts (the form stored with a run)."""
    return dataclasses.asdict(config)


def config_hash(config: Config) -> str:
    """First 16 hex digits of the sha256 of the config's canonical JSON."""
    text = json.dumps(config_to_dict(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def dump_yaml(config: Config) -> str:
    """The config as YAML that ``load_config`` reads back to an equal config."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=False)


# kind: drift (lab/rl/config.py), registered here so that every config reads the same registries
from lab.rl.config import DriftRuleConfig, DriftSearchConfig  # noqa: E402

RULE_CONFIGS["drift"] = DriftRuleConfig
SEARCH_CONFIGS["drift"] = DriftSearchConfig

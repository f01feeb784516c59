"""The config loader: YAML -> the frozen dataclasses of ``lab.core.schema``, strictly validated.

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
import json
import operator
import os
import re
import typing
from collections.abc import Sequence
from typing import Any

import yaml

from lab.core.kind import registry
from lab.core.schema import Config
from lab.names import hint

Path = tuple[str, ...]


class ConfigError(ValueError):
    """A config that cannot be used; names file, line, dotted key and fix (``.problems``: lines)."""

    def __init__(self, message: str, problems: Sequence[str] = ()):
        super().__init__(message)
        self.problems = list(problems) or [message]


def _sections(kind: str | None) -> dict[str, type]:
    """The ``rule`` and ``search`` dataclasses of ``kind`` (from the kind registry)."""
    if kind is None:
        return {}
    k = registry()[kind]
    return {"rule": k.rule_config, "search": k.search_config}


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
                tp = _sections(self.kind).get(name)
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


def _read(file: str, text: str | None = None) -> tuple[dict, dict[Path, int]]:
    """The mapping in ``file`` (or in ``text``, read from ``file`` elsewhere) and the line of
    every key path in it."""
    try:
        if text is None:
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


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = (),
                text: str | None = None) -> Config:
    """Reads, overrides and validates a config.

    Args:
      path: a YAML file, or None for all defaults.
      overrides: ``KEY=VALUE`` strings applied in order, e.g. ``["search.population=32"]``.
      text: the file's text, read elsewhere (another process); ``path`` then names it.

    Returns:
      The validated, frozen ``Config``.

    Raises:
      ConfigError: the file is missing or not YAML, an override is malformed, or the config has
        unknown keys, wrong types or bad values (all of the first such category are reported).
    """
    file = None if path is None else os.fspath(path)
    raw, lines = ({}, {}) if file is None else _read(file, text)
    raw, applied = copy.deepcopy(raw), {}  # YAML aliases share objects; overrides must not
    for text in overrides:
        _apply(raw, text, applied)
    checker = _Checker(file, lines, applied)
    kind, kinds = raw.get("kind", Config.kind), registry()
    if isinstance(kind, str) and kind in kinds:
        checker.kind = kind
    else:  # without a kind the rule section cannot be checked, so this counts as an unknown name
        checker.add("unknown", ("kind",), f"unknown kind {kind!r}" + hint(kind, kinds))
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

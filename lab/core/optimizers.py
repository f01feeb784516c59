"""optax optimizers as update rules whose genome is their log-hyperparameters: the lab's yardstick.

Tuned optax baselines define fitness 0 for every update-rule kind (``lab.core.references``) and
fill the baseline rows of every replay, so they live in the core; the ``baseline`` kind
(``lab.kinds.baseline``) searches their hyperparameters by ES, with rules labelled as its own.

Nothing is re-implemented: every update is the optax transformation built from the decoded
genome. Positive hyperparameters (learning rate, epsilons, weight decay) are stored as ``log(x)``;
decay rates in (0, 1) as ``log(1 - x)``, so that every real genome is a valid optimizer and an ES
step is a relative change.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lab.core.rule import Ctx, UpdateRule
from lab.names import hint

LOG = "log"      # x > 0 stored as log(x)
LOG1M = "log1m"  # 0 < x < 1 stored as log(1 - x)
KIND = "optax"  # the kind label of these rules where no kind searches them


@dataclasses.dataclass(frozen=True)
class BaselineSpec:
    """How one optax optimizer becomes a rule.

    Attributes:
      factory: the optax alias (e.g. ``optax.adam``).
      searchable: optax keyword -> (default value, encoding); the genome's keys.
      fixed: static optax keyword arguments.
    """

    factory: Callable[..., optax.GradientTransformation]
    searchable: Mapping[str, tuple[float, str]]
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)


BASELINES: dict[str, BaselineSpec] = {
    "sgd": BaselineSpec(optax.sgd, {"learning_rate": (1e-2, LOG)}),
    "momentum": BaselineSpec(optax.sgd, {"learning_rate": (1e-2, LOG), "momentum": (0.9, LOG1M)}),
    "nesterov": BaselineSpec(optax.sgd, {"learning_rate": (1e-2, LOG), "momentum": (0.9, LOG1M)},
                             {"nesterov": True}),
    "adam": BaselineSpec(optax.adam, {"learning_rate": (1e-3, LOG), "b1": (0.9, LOG1M),
                                      "b2": (0.999, LOG1M), "eps": (1e-8, LOG)}),
    "adamw": BaselineSpec(optax.adamw, {"learning_rate": (1e-3, LOG), "b1": (0.9, LOG1M),
                                        "b2": (0.999, LOG1M), "eps": (1e-8, LOG),
                                        "weight_decay": (1e-4, LOG)}),
    "lion": BaselineSpec(optax.lion, {"learning_rate": (1e-4, LOG), "b1": (0.9, LOG1M),
                                      "b2": (0.99, LOG1M), "weight_decay": (1e-3, LOG)}),
    "rmsprop": BaselineSpec(optax.rmsprop, {"learning_rate": (1e-3, LOG), "decay": (0.9, LOG1M),
                                            "eps": (1e-8, LOG)}),
    "adafactor": BaselineSpec(optax.adafactor, {"learning_rate": (1e-2, LOG),
                                                "decay_rate": (0.8, LOG),
                                                "clipping_threshold": (1.0, LOG),
                                                "eps": (1e-30, LOG)}),
    "adan": BaselineSpec(optax.adan, {"learning_rate": (1e-3, LOG), "b1": (0.98, LOG1M),
                                      "b2": (0.92, LOG1M), "b3": (0.99, LOG1M),
                                      "eps": (1e-8, LOG), "eps_root": (1e-8, LOG)}),
    "sign_sgd": BaselineSpec(optax.sign_sgd, {"learning_rate": (1e-3, LOG)}),
    "lamb": BaselineSpec(optax.lamb, {"learning_rate": (1e-3, LOG), "b1": (0.9, LOG1M),
                                      "b2": (0.999, LOG1M), "eps": (1e-6, LOG),
                                      "weight_decay": (1e-4, LOG)}),
}


# Optimizers whose runs are scored at an average of their iterates (the gradients are taken
# elsewhere), and the optax function that gives those parameters from (state, params).
SCORED_AT = {optax.contrib.schedule_free_adamw: optax.contrib.schedule_free_eval_params,
             optax.contrib.schedule_free_sgd: optax.contrib.schedule_free_eval_params}


def optax_factory(name: str) -> Callable[..., optax.GradientTransformation] | None:
    """The optax or ``optax.contrib`` optimizer alias called ``name`` (a public function whose
    first parameter is ``learning_rate``), or None."""
    for module in (optax, optax.contrib):
        f = vars(module).get(name)  # not getattr: deprecated aliases are left out, unwarned
        if name.startswith("_") or not inspect.isfunction(f):
            continue
        params = list(inspect.signature(f).parameters)
        if params and params[0] == "learning_rate":
            return f
    return None


def optax_optimizer_names(contrib: bool = True) -> list[str]:
    """Every optax (and ``optax.contrib``) optimizer alias ``optax_factory`` accepts."""
    modules = (optax, optax.contrib) if contrib else (optax,)
    return sorted({n for m in modules for n in vars(m)
                   if optax_factory(n) is not None and vars(m)[n] is optax_factory(n)})


def _encode(value: float, how: str, key: str) -> float:
    if how == LOG:
        if not value > 0:
            raise ValueError(f"hyperparameter {key}={value} must be > 0")
        return math.log(value)
    if not 0 < value < 1:
        raise ValueError(f"hyperparameter {key}={value} must be in (0, 1)")
    return math.log1p(-value)


def _decode(x, how: str):
    return jnp.exp(x) if how == LOG else -jnp.expm1(x)


def decode(name: str, genome: Mapping[str, Any]) -> dict[str, Any]:
    """Genome of baseline ``name`` -> optax keyword values (traceable)."""
    spec = spec_for(name)
    return {k: _decode(genome[k], how) for k, (_, how) in spec.searchable.items()}


@functools.cache
def spec_for(name: str) -> BaselineSpec:
    """The spec of ``name``: a ``BASELINES`` entry, else any optax or ``optax.contrib``
    optimizer alias (``optax_factory``) with its learning rate as the genome (its default, or
    1e-3) and every other keyword at optax's default (settable as ``NAME(key=value)``)."""
    if name in BASELINES:
        return BASELINES[name]
    factory = optax_factory(name)
    if factory is None:
        known = [*BASELINES, *optax_optimizer_names()]
        raise ValueError(f"unknown baseline {name!r}{hint(name, known)} (known: "
                         f"{', '.join(BASELINES)}, or any optax or optax.contrib optimizer "
                         f"taking learning_rate)")
    default = inspect.signature(factory).parameters["learning_rate"].default
    lr = float(default) if isinstance(default, int | float) and default > 0 else 1e-3
    return BaselineSpec(factory, {"learning_rate": (lr, LOG)})


def is_baseline(name: str) -> bool:
    """Whether ``name`` is a baseline ``spec_for`` knows."""
    return name in BASELINES or optax_factory(name) is not None


def optax_keywords(name: str) -> list[str]:
    """Every keyword the optax factory of ``name`` accepts."""
    return list(inspect.signature(spec_for(name).factory).parameters)


def make_baseline(name: str, hyperparameters: Mapping[str, Any] | None = None,
                  kind: str = KIND) -> UpdateRule:
    """The rule for optax optimizer ``name``, its default genome set from ``hyperparameters``.

    Searchable keywords go into the genome; any other optax keyword becomes a static argument.

    Args:
      name: a key of ``BASELINES``.
      hyperparameters: optax keyword -> value, e.g. ``{"learning_rate": 0.01, "b1": 0.5}``.
      kind: the rule's kind label (the kind that searches it; ``optax`` when none does).

    Returns:
      An ``UpdateRule`` with ``genome`` = {keyword: [] float32 log-hyperparameter}.
    """
    spec = spec_for(name)
    hyperparameters = dict(hyperparameters or {})
    valid = optax_keywords(name)
    fixed = dict(spec.fixed)
    genome = {}
    for key, (default, how) in spec.searchable.items():
        genome[key] = np.float32(_encode(float(hyperparameters.pop(key, default)), how, key))
    for key, value in hyperparameters.items():
        if key not in valid:
            raise ValueError(f"optax.{spec.factory.__name__} has no keyword {key!r}"
                             f"{hint(key, valid)}")
        fixed[key] = _check_static(spec, key, value)

    init, update, scored_at = _functions(name, tuple(sorted(fixed.items())))
    describe = _describer(name, tuple(sorted(fixed.items())), kind)
    extra = {k: v for k, v in fixed.items() if spec.fixed.get(k, object()) != v}
    args = ", ".join(f"{k}={_fmt(v)}" for k, v in extra.items())
    label = f"{name}({args})" if extra else name
    return UpdateRule(kind, label, init, update, genome, describe, scored_at)


@functools.cache
def _functions(name: str, fixed_items: tuple) -> tuple:
    """(init, update, scored_at) of one baseline family, built once so that every rule of the
    family shares them (and with them the compiled evaluators and fingerprint probes);
    ``scored_at`` is None but for the ``SCORED_AT`` optimizers (schedule-free's average)."""
    spec, fixed = spec_for(name), dict(fixed_items)

    def build(g, lr_scale):
        h = decode(name, g)
        h["learning_rate"] = h["learning_rate"] * lr_scale
        return spec.factory(**h, **fixed)

    def init(g, params):
        return build(g, 1.0).init(params)

    def update(g, grads, state, params, ctx: Ctx):
        delta, new = build(g, ctx.lr).update(grads, state, params)
        # the genome and ctx are float32: keep the params' and state's own dtypes (bfloat16)
        delta = jax.tree.map(lambda d, p: d.astype(p.dtype), delta, params)
        new = jax.tree.map(lambda n, o: n.astype(jnp.asarray(o).dtype), new, state)
        return delta, new

    average = SCORED_AT.get(spec.factory)

    def scored_at(g, state, params):
        return jax.tree.map(lambda x, p: x.astype(p.dtype), average(state, params), params)

    return init, update, (scored_at if average is not None else None)


@functools.cache
def _describer(name: str, fixed_items: tuple, kind: str):
    """``describe(genome)``: ``KIND:NAME(key=value, ...)``, every hyperparameter decoded."""
    fixed = dict(fixed_items)

    def describe(g) -> str:
        h = {k: float(v) for k, v in decode(name, g).items()}
        h.update(fixed)
        args = ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={_fmt(v)}"
                         for k, v in h.items())
        return f"{kind}:{name}({args})"

    return describe


def _check_static(spec: BaselineSpec, key: str, value: Any) -> Any:
    """A static optax keyword must have the type of its default (bool for bool, a number...)."""
    default = inspect.signature(spec.factory).parameters[key].default
    where = f"optax.{spec.factory.__name__} keyword {key!r}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
    elif isinstance(default, int | float) or default is None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where} must be a number, got {value!r}")
    else:
        raise ValueError(f"{where} cannot be set from a target or config")
    return value


def _fmt(v) -> str:
    return repr(v) if isinstance(v, (float, str)) else str(v)


_TARGET = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*$", re.S)


def parse_literal(text: str, where: str = "") -> Any:
    """A config-style scalar (number, bool, None, bare or quoted string); never evaluates code."""
    t = text.strip()
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        pass
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"":
        return t[1:-1]
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", t):
        return t
    raise ValueError(f"cannot read value {text!r}{where}")


def parse_baseline(text: str) -> tuple[str, dict[str, Any]]:
    """Parses ``NAME`` or ``NAME(key=value, ...)`` (the part after ``baseline:``)."""
    m = _TARGET.match(text)
    if not m:
        raise ValueError(f"cannot read baseline {text!r}: expected NAME or NAME(key=value, ...)")
    name, args = m.group(1), m.group(2)
    spec_for(name)
    kwargs: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in (args or "").split(","))):
        if "=" not in part:
            raise ValueError(f"baseline:{text}: argument {part!r} is not key=value")
        key, value = (s.strip() for s in part.split("=", 1))
        kwargs[key] = parse_literal(value, f" for {key} in baseline:{text}")
    return name, kwargs


def baseline_from_target(text: str, kind: str = KIND) -> UpdateRule:
    """``adam(b1=0.5)`` -> the rule with that default genome."""
    name, kwargs = parse_baseline(text)
    return make_baseline(name, kwargs, kind)

"""Kind ``baseline``: an optax optimizer's hyperparameters, searched by ES.

The genome is the optimizer's log-hyperparameters (``lab.core.optimizers``: positive values as
``log x``, decay rates as ``log(1 - x)``, so every real genome is a valid optimizer); the search
is the core's ES driver; targets ``baseline:NAME`` or ``baseline:NAME(key=value, ...)`` name any
optax optimizer the lab knows, at any settings; its known rules (for ``equals`` and
``closest``) are the optimizers at their optax defaults.
"""

from __future__ import annotations

import jax
import numpy as np

from lab.core import hashing
from lab.core.conformance import update_rule_case
from lab.core.es import ESDriver, SearchConfig
from lab.core.kind import Conformance, LaunchCase, register
from lab.core.optimizers import BASELINES, baseline_from_target, decode, make_baseline
from lab.core.replay import log_rate_tuner, replay, replay_update_rule
from lab.core.rule_kind import update_rule_kind
from lab.core.target import Target
from lab.kinds.baseline.config import BaselineRuleConfig

NAME = "baseline"


def make_rule(cfg):
    return make_baseline(cfg.rule.name, {**cfg.rule.fixed, **cfg.rule.init}, NAME)


def rule_from_name(name: str):
    return baseline_from_target(name, NAME)


def resolve(rest: str) -> Target:
    rule = rule_from_name(rest)
    return Target(f"{NAME}:{rest}", rule, rule.genome, 1.0, f"{NAME}:{rest}")


def artifact_fields(target: Target) -> dict:
    """rule.json's ``hyperparameters``: the genome decoded to optax keyword values."""
    genome = jax.tree.map(np.asarray, target.genome)
    base = target.rule.name.split("(")[0]
    return {"hyperparameters": {k: float(v) for k, v in decode(base, genome).items()}}


# ``--tune-lr``: the optimizer at every multiplier of its learning rate, as the shift
# ``log(multiplier)`` of its genome's log learning rate, the other hyperparameters as found (the
# hyperparameters-only baseline held out with its rate tuned per task, as the discoveries'); the
# row gives the learning rate it ran at
tune_lr = log_rate_tuner("learning_rate", absolute=True)


def replay_baseline(target: Target, req) -> dict:
    return replay_update_rule(target, req, tuner=tune_lr)


def export(target: Target, store, suite: str, seeds: int) -> dict:
    """Held-out scores at the optimizer's own learning rate and with it tuned per task on the
    baselines' grid step."""
    return {"heldout": replay(target, suite, seeds, store=store, tuner=tune_lr)}


def _known():
    return [(name, make_baseline(name, kind=NAME)) for name in BASELINES]


hashing.register_known(_known, jit=False)  # small rules: eager probes beat compiling ten

CONVERGE = (0.3, 1.0, 3.0)  # the conformance population: the default lr times these


def conformance() -> Conformance:
    cases = []
    for name, spec in BASELINES.items():
        lr = spec.searchable["learning_rate"][0]
        cases.append(update_rule_case(
            f"{NAME}:{name}", make_baseline(name, kind=NAME),
            [make_baseline(name, {"learning_rate": lr * s}, NAME).genome for s in CONVERGE]))
    return Conformance(cases, LaunchCase("configs/smoke.yaml", (
        "search.population=4", "search.generations=3", "output.top_k=2")))


KIND = register(update_rule_kind(
    name=NAME,
    summary="an optax optimizer's log-hyperparameters, searched by ES",
    rule_config=BaselineRuleConfig,
    search_config=SearchConfig,
    make_rule=make_rule,
    rule_from_name=rule_from_name,
    make_driver=ESDriver,
    conformance=conformance,
    artifact_fields=artifact_fields,
    replay=replay_baseline,
    export=export,
    prefix=NAME,
    resolve=resolve,
))

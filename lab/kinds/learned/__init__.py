"""Kind ``learned``: learned optimizers, a small per-parameter MLP meta-trained by ES.

The rule (``rule``) reads RMS-normalized features of each parameter (gradient, parameter, momenta
at several decays, second moments, Adam's direction, training progress) and outputs
``direction * exp(magnitude)`` with a small step multiplier; its genome is the network's weights.
Meta-training (``search``) is evosax over those weights, scored on truncated unrolls of the
suite's tasks (``unroll``), with the ES mean validated on full runs. ``views`` plots what a
learned rule does: its update against the gradient and its step size over a training run.

References: Metz et al. 2019 (arXiv 1810.10180); Metz et al. 2022, VeLO (arXiv 2211.09760).
"""

from __future__ import annotations

import jax

from lab.core.conformance import update_rule_case
from lab.core.kind import Conformance, LaunchCase, register
from lab.core.replay import log_rate_tuner, replay, replay_update_rule
from lab.core.rule_kind import update_rule_kind
from lab.core.target import Target
from lab.kinds.learned.config import INITS, LearnedRuleConfig, LearnedSearchConfig
from lab.kinds.learned.rule import KIND, Features, artifact_genome, init_genome, learned_rule
from lab.kinds.learned.search import LearnedDriver
from lab.kinds.learned.views import inspect_view

LONGER = 4  # an exported learned rule is also replayed at this multiple of every task's horizon


def make_rule(cfg):
    features = cfg.rule.features()
    if cfg.rule.init in INITS:
        genome = init_genome(features, jax.random.key(cfg.rule.init_seed),
                             skip="adam" if cfg.rule.init == "adam" else None)
    else:  # warm start: an artifact's weights
        genome = artifact_genome(cfg.rule.init, features)
    return learned_rule(features, genome)


def rule_from_name(name: str):
    return learned_rule(Features.parse(name))


# ``--tune-lr``: the learned rule at every multiplier of its rate, as the shift
# ``log(multiplier)`` of its ``log_step`` (the step is linear in ``exp(log_step)``)
tune_lr = log_rate_tuner("log_step")


def replay_learned(target: Target, req) -> dict:
    return replay_update_rule(target, req, tuner=tune_lr)


def export(target: Target, store, suite: str, seeds: int) -> dict:
    """Held-out scores at the rule's own rate and with its rate tuned per task on the
    baselines' grid step (as the baselines' are), and the same against tuned Adam at ``LONGER``
    times every horizon."""
    from lab.console import log
    held = replay(target, suite, seeds, store=store, tuner=tune_lr)
    log(f"export {target.label}: replaying on {suite} at {LONGER}x the horizons")
    longer = replay(target, suite, seeds, baselines=("adam",), store=store, tuner=tune_lr,
                    horizon_scale=LONGER)
    return {"heldout": held, f"heldout_x{LONGER}": longer}


def conformance() -> Conformance:
    # a lean structure: every feature family, few of each (the checks run it eagerly too)
    features = Features(hidden=4, depth=1, momenta=(0.9,), taus=(10.0,))
    population = [init_genome(features, jax.random.key(i)) for i in range(3)]
    return Conformance(
        [update_rule_case(f"{KIND}:mlp", learned_rule(features, population[0]), population)],
        LaunchCase("configs/lopt_smoke.yaml", (
            "search.population=4", "search.generations=3", "search.validate_every=1",
            "search.unroll=4", "search.horizon_min=8", "search.horizon_max=16",
            "output.top_k=2")))


KIND_RECORD = register(update_rule_kind(
    name=KIND,
    summary="learned optimizers: a per-parameter MLP meta-trained by ES over truncated unrolls",
    rule_config=LearnedRuleConfig,
    search_config=LearnedSearchConfig,
    make_rule=make_rule,
    rule_from_name=rule_from_name,
    make_driver=LearnedDriver,
    replay=replay_learned,
    export=export,
    conformance=conformance,
    views=inspect_view,
))

"""Kind ``drift``: meta-learned RL objectives (LPO-style drift functions, PPO inner loop).

PPO on gymnax (``ppo``) whose clipped surrogate is replaced by a drift ``D(ratio, advantage,
progress)`` from a family of ``objectives`` (PPO-clip, DPO, LPO and TA-LPO networks); the genome
is the drift's parameters, meta-trained by the core's ES driver over whole PPO runs scored by
``scoring.DriftScorer`` (normalized by PPO-clip's and a random policy's returns, members that
break the Mirror-Learning constraints rejected before training). A drift's identity is its
surface on a fixed grid; ``views`` draws it beside PPO-clip's and DPO's.

References: Lu et al. 2022 (arXiv 2210.05639); Jackson et al. 2024 (arXiv 2402.05828).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lab import treeio
from lab.core.es import ESDriver
from lab.core.kind import Conformance, Kind, LaunchCase, RuleCase, register
from lab.kinds.drift import objectives
from lab.kinds.drift.config import DriftRuleConfig, DriftSearchConfig
from lab.kinds.drift.objectives import (
    KIND,
    LPOSpec,
    artifact_genome,
    dpo,
    lpo,
    objective_from_name,
    ppo_clip,
    programs,
)
from lab.kinds.drift.ppo import policy_loss
from lab.kinds.drift.replay import BASELINES, export, readme_tables, replay_drift
from lab.kinds.drift.scoring import drift_scorer
from lab.kinds.drift.views import inspect_view


def make_rule(cfg):
    objective = objective_from_name(cfg.rule.family_name())
    if cfg.rule.init:  # warm start: an artifact's genome
        return objective._replace(genome=artifact_genome(cfg.rule.init, objective.name))
    return objective


def make_driver(cfg, setup):
    """ES over the drift's genome; on sampled environment levels where ``search.curriculum``
    says so (``lab.kinds.drift.curriculum``)."""
    if cfg.search.curriculum == "fixed":
        return ESDriver(cfg, setup)
    from lab.kinds.drift.curriculum import CurriculumDriver
    return CurriculumDriver(cfg, setup)


def check_baseline(name: str) -> None:
    objective_from_name(name)


# ---- conformance: the drift on a grid and PPO's policy loss with its gradient ------------------

# numpy, not jax: importing a kind must not start a JAX backend (several processes join first)
_R = np.exp(np.linspace(-0.5, 0.5, 7, dtype=np.float32))
_A = np.linspace(-2.0, 2.0, 5, dtype=np.float32)


def apply_drift(objective, genome) -> dict:
    """The drift on a small (r, A) grid at three progress values, and the policy loss of a
    fixed minibatch with its gradient in the new log-probabilities."""
    r, a = jnp.meshgrid(_R, _A, indexing="ij")
    values = jnp.stack([objective.drift(genome, r, a, jnp.float32(p)) for p in (0.0, 0.5, 1.0)])
    log_prob = jnp.log(_R)
    old = jnp.zeros_like(log_prob)
    adv = jnp.linspace(-1.0, 1.5, log_prob.size)

    def loss(lp):
        return policy_loss(objective, genome, lp, old, adv, jnp.float32(0.5))
    value, grad = jax.value_and_grad(loss)(log_prob)
    return {"drift": values, "loss": value, "grad": grad}


def apply_exported(objective, genome) -> dict:
    """``apply_drift`` of the family rebuilt from its stored name and the genome read back from
    the bytes of an artifact's ``weights.npz``."""
    data = treeio.tree_to_npz(jax.tree.map(np.asarray, genome))
    back = treeio.tree_from_npz(data)
    return apply_drift(objective_from_name(objective.name), back)


def drift_program_genomes() -> tuple:
    """PPO-clip and DPO as programs, and PPO-clip's program at eps 0.3 (one length)."""
    from lab.kinds.program.compiled import with_constants
    from lab.kinds.program.programs import genome_of, load_seed
    clip, dpo_prog = load_seed("ppo_clip", "drift"), load_seed("dpo", "drift")
    wide = with_constants(clip, [0.3 if s.k == np.float32(0.2) else s.k for s in clip.stmts])
    return tuple(genome_of(p, objectives.PROGRAM_LEN) for p in (clip, dpo_prog, wide))


def conformance() -> Conformance:
    small = lpo(LPOSpec(hidden=4, ppo_init=False))
    w = small.genome
    cases = [
        RuleCase(f"{KIND}:lpo", small, tuple({"w0": w["w0"] * s, "w1": w["w1"] * s}
                                             for s in (0.5, 1.0, 2.0)),
                 apply_drift, apply_exported),
        RuleCase(f"{KIND}:ppo_clip", ppo_clip(), tuple({"eps": np.float32(e)}
                                                       for e in (0.1, 0.2, 0.3)),
                 apply_drift, apply_exported),
        RuleCase(f"{KIND}:dpo", dpo(), tuple({"alpha": np.float32(a), "beta": np.float32(b)}
                                             for a, b in ((2.0, 0.6), (1.0, 0.3), (3.0, 0.9))),
                 apply_drift, apply_exported),
        RuleCase(f"{KIND}:program", programs(), drift_program_genomes(), apply_drift,
                 apply_exported),
    ]
    return Conformance(cases, LaunchCase("configs/lpo_smoke.yaml", (
        "search.population=4", "search.generations=3", "rule.hidden=4", "output.top_k=2")))


KIND_RECORD = register(Kind(
    name=KIND,
    summary="PPO objectives: drift functions D(r, A, n/N) meta-trained by ES over PPO runs",
    rule_config=DriftRuleConfig,
    search_config=DriftSearchConfig,
    make_rule=make_rule,
    rule_from_name=objective_from_name,
    make_scorer=drift_scorer,
    make_driver=make_driver,
    fingerprint=objectives.fingerprint,
    describe_function=objectives.describe_function,
    replay=replay_drift,
    export=export,
    readme=readme_tables,
    conformance=conformance,
    domain="rl",
    noun="PPO objective (a drift function D(r, A, n/N))",
    replay_suite="rl-heldout",
    replay_seeds=8,
    replay_baselines=BASELINES,
    check_baseline=check_baseline,
    views=inspect_view,
))

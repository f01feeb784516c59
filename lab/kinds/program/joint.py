"""Joint programs: an update rule and its learning-rate schedule searched as one program.

A joint program (``signatures.JOINT``: ``g, w, lr, t, T, m, v -> update, m, v``) is an update
rule that also reads the horizon ``T``; ``programs.compose(update, schedule)`` writes any pair of
an update program and a schedule program as one (seeds ``UPDATE+SCHEDULE``, e.g.
``adam+cosine``), and the search mutates the pair as one program.

Its fingerprint is the update-rule probe (``lab.core.hashing``) run twice: at the probe's own
horizon (1000 steps: the streams see ``t / T`` below 0.05, the part of a run every update rule is
compared on) and at a horizon as long as the probe's long stream (``SHORT_HORIZON``, 48 steps:
the long stream then covers ``t / T`` from 0 to 1, where schedules differ). The two are
concatenated and hashed; the evaluation key adds the first probe's step scale, as for every
update rule. A rule that ignores ``T`` gives the same probe twice, so a joint program equals a
known update rule (``adam``) exactly when both probes match it.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from lab.core import hashing
from lab.core.rule import Ctx, UpdateRule

SHORT_HORIZON = hashing.LONG_STEPS  # the second probe's horizon: the long stream spans one run


def short_horizon(rule: UpdateRule) -> UpdateRule:
    """``rule`` with every update told the horizon is ``SHORT_HORIZON`` (its update function
    cached per rule's: one compiled probe per family)."""
    return rule._replace(name=f"{rule.name}@T={SHORT_HORIZON}", update=_short(rule.update))


@functools.cache
def _short(update):
    def short(genome, grads, state, params, ctx: Ctx):
        horizon = jnp.asarray(SHORT_HORIZON, jnp.asarray(ctx.horizon).dtype)
        return update(genome, grads, state, params, ctx._replace(horizon=horizon))
    return short


def _joined(first: tuple, second: tuple) -> tuple[np.ndarray, str, str]:
    (fp1, h1, key1), (fp2, _, _) = first, second
    fp = np.concatenate([fp1, fp2])
    h = hashing.digest(fp)
    return fp, h, h + key1[len(h1):]  # the first probe's step scale, as ``evaluation_key``


def fingerprints(rule: UpdateRule, genomes: list) -> list[tuple[np.ndarray, str, str]]:
    """``(fingerprint, hash, evaluation key)`` of many joint genomes, batched (two compiled
    probes)."""
    long = hashing.fingerprints(rule, genomes)
    short = hashing.fingerprints(short_horizon(rule), genomes)
    return [_joined(a, b) for a, b in zip(long, short, strict=True)]


def fingerprint(rule: UpdateRule, genome=None) -> tuple[np.ndarray, str]:
    """``(fingerprint, hash)`` of one joint genome (equal to ``fingerprints``')."""
    fp, h, _ = _single(rule, genome)
    return fp, h


def _single(rule: UpdateRule, genome=None) -> tuple[np.ndarray, str, tuple]:
    g = rule.genome if genome is None else genome
    fp1, _ = hashing.fingerprint(rule, g)
    fp2, _ = hashing.fingerprint(short_horizon(rule), g)
    fp = np.concatenate([fp1, fp2])
    return fp, hashing.digest(fp), (fp1, fp2)


def describe_function(rule: UpdateRule, genome=None) -> dict:
    """``{"hash", "fingerprint", "equals", "closest", "closest_at_T48"}``: the update rules it
    equals over a whole run (both probes match), the closest one at the probe's horizon and at
    the short one."""
    fp, h, (fp1, fp2) = _single(rule, genome)
    short = hashing.equals(fp2)
    return {"hash": h, "fingerprint": fp, "equals": [n for n in hashing.equals(fp1) if n in short],
            "closest": hashing.closest(fp1), f"closest_at_T{SHORT_HORIZON}": hashing.closest(fp2)}

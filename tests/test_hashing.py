"""Tests of lab/hashing.py: functional fingerprints, hashes, the known-rule table, rounding."""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lab.core import hashing
from lab.core.hashing import (
    MANTISSA_BITS,
    closest,
    digest,
    distance,
    equals,
    fingerprint,
    known_rules,
    round_mantissa,
)
from lab.core.optimizers import BASELINES, baseline_from_target, make_baseline
from lab.core.rule import UpdateRule


@pytest.fixture(scope="module")
def known():
    """name -> Known, for every baseline at optax defaults (computed once per session)."""
    return {k.name: k for k in known_rules()}


@functools.cache
def fp_of(target: str) -> tuple[np.ndarray, str]:
    """(fingerprint, hash) of a baseline target, computed once per session."""
    return fingerprint(baseline_from_target(target))


def hash_of(target: str) -> str:
    return fp_of(target)[1]


def test_hash_is_128_bit_hex(known):
    for k in known.values():
        assert re.fullmatch(r"[0-9a-f]{32}", k.hash), k.name
        assert k.fingerprint.dtype == np.float64 and k.fingerprint.ndim == 1


@pytest.mark.parametrize("name", ["adam", "lion", "nesterov"])
def test_jit_and_eager_give_the_same_hash(name, known):
    fp_eager, h_eager = fingerprint(make_baseline(name), jit=False)
    assert h_eager == known[name].hash  # the table is computed under jit
    np.testing.assert_array_equal(fp_eager, known[name].fingerprint)


def test_every_baseline_at_defaults_has_a_distinct_hash(known):
    assert set(known) >= set(BASELINES)
    hashes = [known[name].hash for name in BASELINES]
    assert len(set(hashes)) == len(hashes)


def test_learning_rate_drops_out(known):
    assert hash_of("adam(learning_rate=0.01)") == known["adam"].hash
    assert hash_of("sgd(learning_rate=3.0)") == known["sgd"].hash


def test_different_rules_have_different_hashes(known):
    assert hash_of("adam(b1=0.5)") != known["adam"].hash
    assert known["adamw"].hash != known["adam"].hash
    assert known["lion"].hash != known["adam"].hash


def test_equals_names_the_rule_itself(known):
    for name in ("adam", "lion", "sgd"):
        assert name in equals(known[name].fingerprint)
    fp, _ = fp_of("adam(learning_rate=0.01)")
    assert "adam" in equals(fp)
    assert "adamw" not in equals(fp)
    assert equals(fp_of("adam(b1=0.5)")[0]) == []


def test_closest_names_the_nearest_known_rule(known):
    fp, _ = fp_of("adam(b1=0.85)")
    assert "adam" not in equals(fp)
    near = closest(fp)
    assert near["name"] == "adam"
    distances = {name: distance(fp, k.fingerprint) for name, k in known.items()}
    assert near["distance"] == pytest.approx(min(distances.values()))
    assert near["distance"] > 0


def test_closest_of_a_known_rule_is_itself_at_distance_zero(known):
    near = closest(known["lion"].fingerprint)
    assert near == {"name": "lion", "distance": 0.0}


def _hand_built_adam() -> UpdateRule:
    """Adam assembled by hand from optax pieces, with a different step scale: same function."""
    def tx(genome, lr):
        return optax.chain(optax.scale_by_adam(), optax.scale(-3.0 * lr * genome["step"]))

    def init(genome, params):
        return tx(genome, 1.0).init(params)

    def update(genome, grads, state, params, ctx):
        return tx(genome, ctx.lr).update(grads, state, params)

    return UpdateRule("baseline", "hand_adam", init, update, {"step": np.float32(0.7)},
                      lambda g: "hand_adam")


def test_same_function_written_differently_has_the_same_hash(known):
    fp, h = fingerprint(_hand_built_adam())
    assert h == known["adam"].hash
    assert "adam" in equals(fp)


def test_second_genome_of_a_rule_does_not_recompile():
    traces = []
    rule = make_baseline("sgd")

    def update(genome, grads, state, params, ctx):
        traces.append(1)  # runs at trace time only
        return rule.update(genome, grads, state, params, ctx)

    counted = rule._replace(update=update)
    fingerprint(counted)
    first = len(traces)
    fingerprint(counted, make_baseline("sgd", {"learning_rate": 0.5}).genome)
    assert len(traces) == first


def test_sign_flip_is_not_a_scale(known):
    """Normalizing by a positive scalar keeps the sign: ascent is not descent."""
    rule = make_baseline("sgd")

    def ascent(genome, grads, state, params, ctx):
        delta, state = rule.update(genome, grads, state, params, ctx)
        return jax.tree.map(jnp.negative, delta), state

    assert fingerprint(rule._replace(update=ascent))[1] != known["sgd"].hash


# ---------------------------------------------------------------------------------------------
# Rounding and digests: closed forms.


def test_round_mantissa_keeps_twelve_significant_bits():
    assert MANTISSA_BITS == 12
    ulp = 2.0 ** -11  # spacing of 12-significant-bit numbers in [1, 2)
    x = np.array([1.0, 1.0 + ulp, 1.0 + ulp / 2, 1.0 + 1.5 * ulp, 1.0 + 0.75 * ulp,
                  1.0 + 0.25 * ulp, 2.0 - ulp / 4, 3.0, 0.1, 1e-300, 1e300])
    r = round_mantissa(x)
    np.testing.assert_array_equal(r[:8], [1.0, 1.0 + ulp, 1.0,        # tie -> even
                                          1.0 + 2 * ulp,             # tie -> even
                                          1.0 + ulp, 1.0, 2.0, 3.0])
    # 0.1 = 0.8 * 2**-3: 0.8 * 4096 = 3276.8 -> 3277
    assert r[8] == 3277 * 2.0 ** -12 * 2.0 ** -3
    # every result has at most 12 significant bits, within half a unit of the input
    m, _ = np.frexp(r)
    np.testing.assert_array_equal(m * 4096, np.round(m * 4096))
    np.testing.assert_array_less(np.abs(r - x), np.abs(x) * 2.0 ** -12 * (1 + 1e-12))


def test_round_mantissa_random_values_properties():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(1000) * np.exp(rng.uniform(-30, 30, 1000))
    r = round_mantissa(x)
    assert np.all(np.abs(r - x) <= np.abs(x) * 2.0 ** -12)
    np.testing.assert_array_equal(round_mantissa(r), r)  # idempotent
    np.testing.assert_array_equal(round_mantissa(-x), -r)  # odd
    assert np.all(np.sign(r) == np.sign(x))


def test_round_mantissa_canonical_zero_nan_inf():
    neg_nan = np.frombuffer(np.array([0xFFF8000000000001], np.uint64).tobytes(), np.float64)[0]
    x = np.array([-0.0, 0.0, np.nan, neg_nan, np.inf, -np.inf])
    r = round_mantissa(x)
    assert r[0] == 0.0 and not np.signbit(r[0])
    assert not np.signbit(r[1])
    canonical = np.array([np.nan]).view(np.uint64)[0]
    assert r[2:4].view(np.uint64).tolist() == [canonical, canonical]
    assert r[4] == np.inf and r[5] == -np.inf


def test_digest_is_canonical():
    neg_nan = np.frombuffer(np.array([0xFFF8000000000001], np.uint64).tobytes(), np.float64)[0]
    a = np.array([1.0, np.nan, 0.0])
    b = np.array([1.0, neg_nan, 0.0])
    assert digest(a) == digest(b)
    assert digest(a) != digest(np.array([1.0, np.nan, 1.0]))
    assert re.fullmatch(r"[0-9a-f]{32}", digest(a))


def test_matches_within_rounding():
    fp = round_mantissa(np.linspace(-3, 3, 50))
    assert hashing.matches(fp, fp)
    assert hashing.matches(fp, fp * (1 + 2.0 ** -13))
    assert not hashing.matches(fp, fp * (1 + 2.0 ** -8))
    assert not hashing.matches(fp, fp[:-1])
    assert distance(fp, fp) == 0.0


def test_distance_past_float64_range_is_infinite_without_a_warning():
    """A rule whose probe steps reach 1e200 is infinitely far from one at 1e-3 (``lab inspect``'s
    closest known rule): no overflow warning on the way."""
    import warnings
    big, small = np.full(8, 1e200), np.full(8, 1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert distance(big, small) == float("inf")
        assert distance(big, -big) == float("inf")
        assert distance(small, 2 * small) == pytest.approx(1e-3)
    assert distance(np.asarray([np.nan, 1.0]), np.asarray([np.nan, 1.0])) == 0.0

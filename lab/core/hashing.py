"""Functional fingerprints: equal behaviour, equal hash, whatever the rule's form.

The procedure (the same for every rule kind):
  * probes: fixed, seeded streams of parameters and gradients, gradient magnitudes log-uniform in
    [1e-3, 1e2] with random signs (never near zero): short streams (6 steps) at several scales,
    with a sign flip and at three learning rates, and one long stream (48 steps, 7 of them
    recorded) so that behaviour which changes with the step count shows;
  * open loop: the rule runs from a fresh state; its deltas are recorded but the probe
    parameters are not moved; ``ctx`` is fixed per stream (lr, horizon, and the step counting
    from 0);
  * float64 on the CPU, so jit and eager agree and a scale cancels exactly;
  * each stream is divided by one positive scalar (its RMS), so the learning rate and any
    constant step factor drop out while the sign is kept; the log-ratios of the streams' RMS to
    the first one's are kept (how the step scales with the gradient and the lr);
  * mantissas rounded to nearest at 12 bits; NaN, +-Inf and -0 mapped to canonical values.
The rounded vector is the fingerprint; its blake2b-128 digest is the hash and the cache key.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from lab.core.rule import UpdateRule, make_ctx

# fp2 probed 6 steps at one lr: AdamW with its bias correction clipped by 0.9^t (differs from
# step 7) got AdamW's hash, and so did a rule scaled by min(lr, 0.9^t); the cache served them
FINGERPRINT_VERSION = "fp3"
MANTISSA_BITS = 12
PROBE_SEED = 20230213
PROBE_STEPS = 6
PROBE_SHAPES = {"matrix": (3, 5), "vector": (5,)}
PROBE_SCALES = (1.0, 1e-2, 30.0)  # gradient scales of the separate streams
PROBE_CTX = (1000, 0.01)  # (horizon, lr) of every update; the step counts 0, 1, ... from the fresh
# state, as optax's own step counters do, so bias corrections agree across representations
PROBE_LRS = (1.0, 30.0)  # short streams at these lr (the first stream's grads), steps 0 and 5
# recorded: a rule whose step is not proportional to lr (min(lr, ...)) differs there
PROBE_LR_RECORDED = (0, PROBE_STEPS - 1)
LONG_STEPS = 48  # the long stream (the first stream's scale and lr)
LONG_RECORDED = (6, 8, 11, 16, 23, 32, 47)
MATCH_TOL = 2.0 ** (1 - MANTISSA_BITS)


def _probe_streams() -> list[dict]:
    """Fixed probe streams: ``params`` [..], ``grads`` [steps, ..] (float64 numpy), ``lr`` and
    ``record`` (the steps whose deltas are kept), in fingerprint order."""
    rng = np.random.default_rng(PROBE_SEED)

    def away_from_zero(shape, lo, hi):
        mag = np.exp(rng.uniform(np.log(lo), np.log(hi), size=shape))
        return mag * rng.choice([-1.0, 1.0], size=shape)

    params = {k: away_from_zero(s, 1e-2, 1e2) for k, s in PROBE_SHAPES.items()}
    grads = {k: away_from_zero((PROBE_STEPS, *s), 1e-3, 1e2) for k, s in PROBE_SHAPES.items()}
    long = {k: away_from_zero((LONG_STEPS, *s), 1e-3, 1e2) for k, s in PROBE_SHAPES.items()}
    lr, every = PROBE_CTX[1], tuple(range(PROBE_STEPS))

    def stream(g, lr=lr, record=every):
        return {"params": params, "grads": g, "lr": lr, "record": record}

    return ([stream({k: g * c for k, g in grads.items()}) for c in PROBE_SCALES]
            + [stream({k: -g for k, g in grads.items()})]
            + [stream(grads, x, PROBE_LR_RECORDED) for x in PROBE_LRS]
            + [stream(long, record=LONG_RECORDED)])


def _length(stream: dict) -> int:
    return max(stream["record"]) + 1


def _raw_deltas(rule: UpdateRule, genome, streams) -> jax.Array:
    """The probe's delta stream, step by step in Python (what eager probing runs)."""
    out = []
    for s in streams:
        params = jax.tree.map(jnp.asarray, s["params"])
        state = rule.init(genome, params)
        for t in range(_length(s)):
            ctx = make_ctx(t, PROBE_CTX[0], s["lr"], dtype=jnp.float64)
            grads = {k: jnp.asarray(g[t]) for k, g in s["grads"].items()}
            delta, state = rule.update(genome, grads, state, params, ctx)
            if t in s["record"]:
                out.extend(jnp.ravel(delta[k]) for k in PROBE_SHAPES)
    return jnp.concatenate([jnp.asarray(x, jnp.float64) for x in out])


def _raw_deltas_scanned(rule: UpdateRule, genome, streams) -> jax.Array:
    """``_raw_deltas`` as one traced update: a ``lax.scan`` over the longest stream's steps,
    vmapped over the streams (what jitted probing compiles: a rule's graph once, not once per
    step and stream; a short stream's steps past its end are computed and dropped). The same
    values in the same order."""
    params = jax.tree.map(jnp.asarray, streams[0]["params"])
    steps = max(_length(s) for s in streams)

    def padded(g):  # [steps, ...]: the stream's gradients, its last one repeated past its end
        return np.concatenate([g, np.repeat(g[-1:], steps - g.shape[0], axis=0)])

    grads = {k: jnp.stack([padded(s["grads"][k][:_length(s)]) for s in streams])
             for k in PROBE_SHAPES}
    lrs = jnp.asarray([s["lr"] for s in streams], jnp.float64)

    def one(stream_grads, lr):
        def step(state, t):
            ctx = make_ctx(t, PROBE_CTX[0], lr, dtype=jnp.float64)
            g = {k: stream_grads[k][t] for k in PROBE_SHAPES}
            delta, state = rule.update(genome, g, state, params, ctx)
            return state, jnp.concatenate([jnp.ravel(jnp.asarray(delta[k], jnp.float64))
                                           for k in PROBE_SHAPES])
        _, out = jax.lax.scan(step, rule.init(genome, params), jnp.arange(steps, dtype=jnp.int32))
        return out  # [steps, n]

    out = jax.vmap(one)(grads, lrs)  # [streams, steps, n]
    return jnp.concatenate([jnp.ravel(out[i, np.asarray(s["record"])])
                            for i, s in enumerate(streams)])


def round_mantissa(x: np.ndarray, bits: int = MANTISSA_BITS) -> np.ndarray:
    """Rounds to nearest at ``bits`` mantissa bits; canonical NaN and +0."""
    x = np.asarray(x, np.float64)
    finite = np.isfinite(x)
    m, e = np.frexp(np.where(finite, x, 0.0))
    r = np.ldexp(np.round(m * 2.0**bits) / 2.0**bits, e)
    r = np.where(finite, r, x)
    r = np.where(np.isnan(r), np.nan, r) + 0.0  # + 0.0 turns -0 into +0
    return r


@functools.cache
def _segments() -> tuple[int, ...]:
    """The size of each stream's part of the raw delta stream, in order."""
    n = sum(int(np.prod(shape)) for shape in PROBE_SHAPES.values())
    return tuple(len(s["record"]) * n for s in _probe_streams())


def _rms(x: np.ndarray) -> float:
    finite = x[np.isfinite(x)]
    with np.errstate(over="ignore"):  # a stream too large to square counts as zero, quietly
        rms = float(np.sqrt(np.mean(finite**2))) if finite.size else 0.0
    return rms if np.isfinite(rms) and rms > 0 else 0.0


def _normalize(raw: np.ndarray) -> np.ndarray:
    """Each stream divided by its own RMS, then per stream the log2 of its RMS over the first
    stream's, over 16 (NaN where a stream is all zero); all rounded. An lr multiplier or a
    constant step factor cancels; how the step grows with the gradient's scale or with the lr
    stays in the ratios (one normalization over every stream would let the lr-30 stream drown
    the others)."""
    cuts = np.cumsum((0, *_segments()))
    if cuts[-1] != raw.size:
        raise ValueError(f"a raw probe of {raw.size} values, expected {cuts[-1]}")
    parts, logs = [], []
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        rms = _rms(raw[a:b])
        parts.append(raw[a:b] / (rms or 1.0))
        logs.append(np.log2(rms) if rms else np.nan)
    ratios = (np.asarray(logs) - logs[0]) / 16
    return round_mantissa(np.concatenate([*parts, ratios]))


def digest(fp: np.ndarray) -> str:
    """blake2b-128 of the canonical bytes of a fingerprint (hex)."""
    canon = np.where(np.isnan(fp), np.nan, fp).astype("<f8")
    canon[np.isnan(canon)] = np.float64("nan")
    h = hashlib.blake2b(FINGERPRINT_VERSION.encode(), digest_size=16)
    h.update(canon.tobytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=256)
def _probe_jitted(init, update):
    """One jitted probe per rule family (keyed by its functions), reused for every genome."""
    rule = UpdateRule("", "", init, update, None, str)
    streams = _probe_streams()
    return jax.jit(lambda g: _raw_deltas_scanned(rule, g, streams))


def _cast64(genome):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float64)
                        if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else jnp.asarray(x),
                        genome)


def fingerprint(rule: UpdateRule, genome=None, jit: bool = True) -> tuple[np.ndarray, str]:
    """The functional fingerprint and hash of one genome of ``rule``.

    Args:
      rule: any UpdateRule.
      genome: one genome (defaults to ``rule.genome``).
      jit: run the probe under ``jax.jit`` (True) or eagerly; both give the same result.

    Returns:
      (fingerprint [n] float64, hash hex string of 32 characters).
    """
    genome = rule.genome if genome is None else genome
    # float64 on the CPU whatever the default device: exp, log and pow must agree everywhere
    with jax.enable_x64(True), jax.default_device(jax.local_devices(backend="cpu")[0]):
        g = _cast64(genome)
        if jit:
            raw = _probe_jitted(rule.init, rule.update)(g)
        else:
            raw = _raw_deltas(rule, g, _probe_streams())
        raw = np.asarray(raw, np.float64)
    fp = _normalize(raw)
    return fp, digest(fp)


SCALE_STEPS_PER_OCTAVE = 16
PROBE_BATCH = 64  # genomes per compiled call of the batched probe (padded)


def scale_bucket(raw: np.ndarray) -> int | None:
    """The RMS of the raw delta stream in 1/16 octaves (None if zero or non-finite)."""
    rms = _rms(raw)
    return int(np.round(SCALE_STEPS_PER_OCTAVE * np.log2(rms))) if rms else None


def evaluation_key(hash_: str, bucket: int | None) -> str:
    """The cache key of a candidate's *evaluations*: its functional hash plus the scale of its
    steps, 4 more hex digits (the fingerprint divides the scale out, but a score depends on it:
    Adam at two learning rates is one function, two evaluations). Programs and baselines with
    the same behaviour at the same scale share it, whatever their form."""
    return f"{hash_}{(0xFFFF if bucket is None else (bucket + 0x8000) & 0xFFFF):04x}"


@functools.lru_cache(maxsize=64)
def _probe_batched(init, update):
    rule = UpdateRule("", "", init, update, None, str)
    streams = _probe_streams()
    return jax.jit(jax.vmap(lambda g: _raw_deltas_scanned(rule, g, streams)))


def fingerprints(rule: UpdateRule, genomes: list) -> list[tuple[np.ndarray, str, str]]:
    """``(fingerprint, hash, evaluation key)`` of many genomes of one rule family, batched: one
    compiled probe (``PROBE_BATCH`` genomes per call, padded) for any number of genomes of the
    same shapes. Equal to ``fingerprint`` genome by genome."""
    out = []
    with jax.enable_x64(True), jax.default_device(jax.local_devices(backend="cpu")[0]):
        probe = _probe_batched(rule.init, rule.update)
        for start in range(0, len(genomes), PROBE_BATCH):
            part = genomes[start:start + PROBE_BATCH]
            padded = part + [part[-1]] * (PROBE_BATCH - len(part))
            batch = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *padded)
            raw = np.asarray(probe(_cast64(batch)), np.float64)
            for i in range(len(part)):
                fp = _normalize(raw[i])
                h = digest(fp)
                out.append((fp, h, evaluation_key(h, scale_bucket(raw[i]))))
    return out


def function_key(rule: UpdateRule, genome=None) -> str:
    """The evaluation cache key of one genome (see ``evaluation_key``)."""
    genome = rule.genome if genome is None else genome
    with jax.enable_x64(True), jax.default_device(jax.local_devices(backend="cpu")[0]):
        raw = np.asarray(_probe_jitted(rule.init, rule.update)(_cast64(genome)), np.float64)
    return evaluation_key(digest(_normalize(raw)), scale_bucket(raw))


# ---- rules that read the horizon: the probe over a whole run ----------------------------------
# The probe's streams run at horizon PROBE_CTX[0] (1000 steps), so they see t / T below 0.05: a
# rule that reads the horizon (a schedule inside it, a hyperparameter trajectory) is probed again
# at a horizon as long as the long stream (RUN_HORIZON), which then spans a whole run. The two
# fingerprints are concatenated and hashed; the evaluation key adds the first probe's step scale.
# A rule that ignores the horizon gives the same probe twice, so it equals a known rule exactly
# when both probes match it.
RUN_HORIZON = LONG_STEPS


def over_run(rule: UpdateRule) -> UpdateRule:
    """``rule`` told, at every update, that the horizon is ``RUN_HORIZON`` (its update function
    cached per rule's: one compiled probe per family)."""
    return rule._replace(name=f"{rule.name}@T={RUN_HORIZON}", update=_at_run_horizon(rule.update))


@functools.cache
def _at_run_horizon(update):
    def short(genome, grads, state, params, ctx):
        horizon = jnp.asarray(RUN_HORIZON, jnp.asarray(ctx.horizon).dtype)
        return update(genome, grads, state, params, ctx._replace(horizon=horizon))
    return short


def run_fingerprints(rule: UpdateRule, genomes: list) -> list[tuple[np.ndarray, str, str]]:
    """``fingerprints`` over a whole run (both probes), batched."""
    out = []
    for (fp1, h1, key1), (fp2, _, _) in zip(fingerprints(rule, genomes),
                                            fingerprints(over_run(rule), genomes), strict=True):
        fp = np.concatenate([fp1, fp2])
        h = digest(fp)
        out.append((fp, h, h + key1[len(h1):]))  # the first probe's step scale
    return out


def run_fingerprint(rule: UpdateRule, genome=None, jit: bool = True) -> tuple[np.ndarray, str]:
    """``fingerprint`` over a whole run (equal to ``run_fingerprints``')."""
    fp = np.concatenate([fingerprint(rule, genome, jit)[0],
                         fingerprint(over_run(rule), genome, jit)[0]])
    return fp, digest(fp)


def describe_over_run(rule: UpdateRule, genome=None) -> dict:
    """``describe_function`` over a whole run: the known rules it equals at both horizons, the
    closest one at the probe's horizon and at ``RUN_HORIZON`` (``closest_over_run``)."""
    fp1, _ = fingerprint(rule, genome)
    fp2, _ = fingerprint(over_run(rule), genome)
    fp = np.concatenate([fp1, fp2])
    late = equals(fp2)
    return {"hash": digest(fp), "fingerprint": fp,
            "equals": [n for n in equals(fp1) if n in late], "closest": closest(fp1),
            "closest_over_run": closest(fp2)}


def matches(a: np.ndarray, b: np.ndarray, tol: float = MATCH_TOL) -> bool:
    """Equal within rounding: same shape, same NaN/Inf pattern, relative gap <= ``tol``."""
    if a.shape != b.shape:
        return False
    na, nb = ~np.isfinite(a), ~np.isfinite(b)
    if not np.array_equal(na, nb) or not np.array_equal(
            np.nan_to_num(a[na], nan=0.0), np.nan_to_num(b[nb], nan=0.0)):
        return False
    fa, fb = a[~na], b[~nb]
    return bool(np.all(np.abs(fa - fb) <= tol * np.maximum(np.maximum(np.abs(fa), np.abs(fb)),
                                                             2.0**-20)))


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """RMS gap between two fingerprints (non-finite entries count as a gap of 2)."""
    if a.shape != b.shape:
        return float("inf")
    both = np.isfinite(a) & np.isfinite(b)
    with np.errstate(over="ignore"):  # a gap past float64's range is infinitely far, quietly
        gap = np.where(both, np.nan_to_num(a - b),
                       np.where(np.isnan(a) & np.isnan(b), 0.0, 2.0))
        return float(np.sqrt(np.mean(gap**2)))


def relative_distance(a: np.ndarray, b: np.ndarray) -> float:
    """RMS gap between two value fingerprints (a drift surface, a schedule curve) over the RMS
    of the second (0 = the same; inf where either is not finite)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return float("inf")
    return float(np.sqrt(np.mean((a - b) ** 2)) / max(np.sqrt(np.mean(b**2)), 1e-12))


@dataclasses.dataclass(frozen=True)
class Known:
    name: str
    fingerprint: np.ndarray
    hash: str


_KNOWN_SOURCES: list[tuple[Callable[[], Iterable[tuple[str, UpdateRule]]], bool]] = []


def register_known(source: Callable[[], Iterable[tuple[str, UpdateRule]]],
                   jit: bool = True) -> None:
    """Adds a source of named rules to the known-rule table (kinds register theirs: the
    baseline kind optax's optimizers at their defaults, the program kind its seeds). ``jit``:
    how their probes run (both give the same fingerprint; eager is faster for a few small
    rules, jit for an interpreter)."""
    _KNOWN_SOURCES.append((source, jit))
    if "known_rules" in globals():
        known_rules.cache_clear()


@functools.lru_cache(maxsize=1)
def known_rules() -> tuple[Known, ...]:
    """Every known rule of the registered sources."""
    out = []
    for source, jit in _KNOWN_SOURCES:
        for name, rule in source():
            fp, h = fingerprint(rule, jit=jit)
            out.append(Known(name, fp, h))
    return tuple(out)


def equals(fp: np.ndarray) -> list[str]:
    """Names of the known rules whose fingerprint matches ``fp`` within rounding."""
    return [k.name for k in known_rules() if matches(fp, k.fingerprint)]


def closest(fp: np.ndarray) -> dict:
    """The nearest known rule by fingerprint distance: ``{"name", "distance"}``."""
    best = min(known_rules(), key=lambda k: distance(fp, k.fingerprint))
    return {"name": best.name, "distance": distance(fp, best.fingerprint)}


def describe_function(rule: UpdateRule, genome=None) -> dict:
    """``{"hash", "equals", "closest", "fingerprint"}`` of one genome of an update rule (the
    ``describe_function`` of every update-rule kind)."""
    fp, h = fingerprint(rule, genome)
    return {"hash": h, "equals": equals(fp), "closest": closest(fp), "fingerprint": fp}


def genome_digest(rule, genome) -> str:
    """Identity of a continuous genome: its float32 values in canonical (sorted-key) order,
    with its family's kind and name.

    ES members almost never collide functionally, so they are not fingerprinted (DESIGN.md);
    what is reported, exported or checked is.
    """
    flat, _ = ravel_pytree(jax.tree.map(lambda x: np.asarray(x, np.float32), genome))
    h = hashlib.blake2b(f"{rule.kind}:{rule.name}:".encode(), digest_size=16)
    h.update(np.asarray(flat, np.float32).tobytes())
    return h.hexdigest()

"""Policy objectives as data: drift functions D(r, A, progress) for PPO's inner loop.

Mirror Learning (Kuba et al. 2022) says that a policy update maximizing ``r * A - D`` improves
monotonically when the drift D is >= 0 and equals 0 with zero gradient at ``r = 1``
(``r = pi_new / pi_old``). PPO's clipped surrogate is one such drift; LPO (Lu et al. 2022)
meta-learns one with a small network; DPO is LPO's closed form; TA-LPO (Jackson et al. 2024) adds
training progress ``n / N`` as an input. The policy loss of every objective here is
``-mean(r * A - D(r, A, progress))``.

Families (``kind: drift``), each with a genome of arrays so that a population is one vmap:

* ``ppo_clip``: genome ``{eps}``; ``D = relu((r - clip(r, 1 - eps, 1 + eps)) * A)``, which makes
  ``r * A - D`` exactly ``min(r * A, clip(r) * A)``.
* ``dpo``: genome ``{alpha, beta}`` (2 and 0.6); ``A >= 0: relu((r-1) A - alpha tanh((r-1) A /
  alpha))``, ``A < 0: relu(log(r) A - beta tanh(log(r) A / beta))``.
* ``lpo(hidden=..,ppo_init=..,progress=..)``: genome ``{w0 [F, H], w1 [H]}``, a bias-free
  ``tanh`` MLP over the 8 features ``[r-1, (r-1)^2, log r, (log r)^2]`` and the same times A
  (every one 0 at r = 1), with ``progress`` the TA-LPO features (the 8 again, times n/N) as well.
  ``D = relu(net - 1e-4)``, or ``relu(D_ppo_clip + net - 1e-4)`` with ``ppo_init`` (the net is a
  residual on PPO-clip, and its output layer starts at zero, so the family starts as PPO).

The constraints hold by construction for ``lpo``; ``check`` tests any objective on the fixed grid
(``GRID``) before it is trained, and the grid's values are its fingerprint (``fingerprint``).

References:
  Kuba et al. 2022, https://arxiv.org/abs/2201.02373 (Mirror Learning);
  Lu et al. 2022, https://arxiv.org/abs/2210.05639 (LPO, DPO);
  Jackson et al. 2024, https://arxiv.org/abs/2402.05828 (TA-LPO).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

KIND = "drift"
DEAD_ZONE = 1e-4  # LPO's relu(x - 1e-4): D and dD/dr are exactly 0 near r = 1
DPO_ALPHA, DPO_BETA = 2.0, 0.6
PPO_EPS = 0.2


class Objective(NamedTuple):
    """A family of drift functions indexed by a genome (the drift kind's "rule").

    Attributes:
      kind: ``"drift"``.
      name: the family name (``ppo_clip``, ``dpo``, ``lpo(...)``), which rebuilds it.
      drift: ``drift(genome, ratio, advantage, progress) -> D`` elementwise (broadcasting).
      genome: the default genome.
      describe: ``describe(genome) -> str``.
      features: the names of the inputs a network family sees (empty for closed forms).
    """

    kind: str
    name: str
    drift: Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]
    genome: Any
    describe: Callable[[Any], str]
    features: tuple[str, ...] = ()


def ppo_clip_drift(eps, r, adv):
    return jax.nn.relu((r - jnp.clip(r, 1.0 - eps, 1.0 + eps)) * adv)


def _ppo_clip(genome, r, adv, progress):
    return ppo_clip_drift(genome["eps"], r, adv)


def _dpo(genome, r, adv, progress):
    alpha, beta = genome["alpha"], genome["beta"]
    pos = (r - 1.0) * adv
    neg = jnp.log(r) * adv
    return jnp.where(adv >= 0, jax.nn.relu(pos - alpha * jnp.tanh(pos / alpha)),
                     jax.nn.relu(neg - beta * jnp.tanh(neg / beta)))


@functools.cache
def ppo_clip(eps: float = PPO_EPS) -> Objective:
    return Objective(KIND, "ppo_clip", _ppo_clip, {"eps": np.float32(eps)},
                     lambda g: f"PPO-clip (eps={float(g['eps']):.4g})")


@functools.cache
def dpo() -> Objective:
    return Objective(KIND, "dpo", _dpo,
                     {"alpha": np.float32(DPO_ALPHA), "beta": np.float32(DPO_BETA)},
                     lambda g: f"DPO (alpha={float(g['alpha']):.4g}, beta={float(g['beta']):.4g})")


@dataclasses.dataclass(frozen=True)
class LPOSpec:
    """The structure of an LPO drift network (its family name round-trips through ``name``)."""

    hidden: int = 128
    ppo_init: bool = True
    progress: bool = False  # TA-LPO: the features again, times n/N
    init_seed: int = 0

    @property
    def name(self) -> str:
        from lab.names import family_name
        return family_name(self, "lpo")

    @classmethod
    def parse(cls, name: str) -> LPOSpec:
        from lab.names import parse_family
        spec = parse_family(cls, "lpo", name, "drift family")
        if spec.hidden < 1:
            raise ValueError(f"drift family {name!r}: hidden must be at least 1")
        return spec

    @property
    def features(self) -> tuple[str, ...]:
        base = ("r-1", "(r-1)^2", "log r", "(log r)^2")
        names = base + tuple(f"A*{b}" for b in base)
        return names + tuple(f"n/N*{x}" for x in names) if self.progress else names


def lpo_features(r, adv, progress, with_progress: bool):
    """``[..., F]``: the LPO inputs, every one 0 at r = 1."""
    r1, lr = r - 1.0, jnp.log(r)
    base = jnp.stack([r1, r1 * r1, lr, lr * lr], axis=-1)
    x = jnp.concatenate([base, adv[..., None] * base], axis=-1)
    if with_progress:
        x = jnp.concatenate([x, jnp.asarray(progress, x.dtype)[..., None] * x], axis=-1)
    return x


@functools.cache
def lpo(spec: LPOSpec = LPOSpec()) -> Objective:
    """The LPO (or TA-LPO) family of ``spec``; its default genome starts as PPO-clip when
    ``ppo_init`` (zero output layer), else as LPO's random network."""
    n_in = len(spec.features)
    k0, k1 = jax.random.split(jax.random.key(spec.init_seed))
    w0 = np.asarray(jax.random.normal(k0, (n_in, spec.hidden)) / np.sqrt(n_in), np.float32)
    w1 = (np.zeros(spec.hidden, np.float32) if spec.ppo_init else
          np.asarray(jax.random.normal(k1, (spec.hidden,)) / np.sqrt(spec.hidden), np.float32))

    def drift(genome, r, adv, progress):
        r, adv = jnp.broadcast_arrays(r, adv)
        progress = jnp.broadcast_to(jnp.asarray(progress, r.dtype), r.shape)
        x = lpo_features(r, adv, progress, spec.progress)
        net = jnp.tanh(x @ genome["w0"].astype(r.dtype)) @ genome["w1"].astype(r.dtype)
        base = ppo_clip_drift(PPO_EPS, r, adv) if spec.ppo_init else 0.0
        return jax.nn.relu(base + net - DEAD_ZONE)

    def describe(genome):
        what = "TA-LPO" if spec.progress else "LPO"
        size = sum(np.size(v) for v in genome.values())
        res = " residual on PPO-clip" if spec.ppo_init else ""
        return f"{what} drift network ({len(spec.features)} features, {spec.hidden} tanh units, " \
               f"no biases, {size} weights){res}"

    return Objective(KIND, spec.name, drift, {"w0": w0, "w1": w1}, describe, spec.features)


PROGRAM_LEN = 32  # padded statements of a drift program's default genome


@functools.cache
def programs(length: int = PROGRAM_LEN) -> Objective:
    """Drift programs (the program engine's ``drift`` signature: ``def f(r, A, progress): ...
    return drift``) through its interpreter: the genome is a program's arrays, so a population of
    different programs is one vmap and one compilation per padded length. Its default genome is
    PPO-clip as a program (``seeds/drift/ppo_clip.prog``, equal to ``ppo_clip()`` by
    fingerprint)."""
    from lab.kinds.program import interpreted
    from lab.kinds.program.programs import genome_of, load_seed, program_of
    from lab.kinds.program.signatures import DRIFT
    from lab.kinds.program.text import to_source

    def drift(genome, r, adv, progress):
        return interpreted.apply(genome, r, adv, progress)

    def describe(genome):
        return to_source(program_of(genome, "drift", DRIFT))

    return Objective(KIND, "program", drift, genome_of(load_seed("ppo_clip", DRIFT.name), length),
                     describe)


def artifact_genome(path: str, family: str):
    """The genome of the drift artifact folder ``path`` (``discovered/NAME``), to start a search
    from (``rule.init``); ValueError naming the folder and what does not match when it is not a
    drift of the family ``family``."""
    from lab.commands.artifacts import artifact_start  # lazily: commands sit above the kinds
    target = artifact_start(path, KIND)
    if target.rule.name != family:
        raise ValueError(f"{path}: a drift of family {target.rule.name!r}, the rule section "
                         f"builds {family!r}")
    return jax.tree.map(lambda x: np.asarray(x, np.float32), target.genome)


def objective_from_name(name: str) -> Objective:
    """The family called ``name`` (``ppo_clip``, ``dpo``, ``lpo(...)``, ``program``)."""
    name = name.strip()
    if name == "ppo_clip":
        return ppo_clip()
    if name == "dpo":
        return dpo()
    if name == "program":
        return programs()
    if name.startswith("lpo"):
        return lpo(LPOSpec.parse(name))
    from lab.names import hint
    raise ValueError(f"unknown drift family {name!r}" + hint(name, ("ppo_clip", "dpo", "lpo",
                                                                    "program")))


# ---- the grid: constraints and fingerprint ----------------------------------------------------
# r off the identity on a log scale, A over a normalized advantage's range, progress over a run.
GRID_R = np.exp(np.linspace(-1.0, 1.0, 21))
GRID_A = np.linspace(-3.0, 3.0, 13)
GRID_P = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
TOL_ZERO = 1e-6  # |D(1, A, p)|
TOL_GRAD = 1e-4  # |dD/dr (1, A, p)|
TOL_NEG = 1e-6  # D >= -TOL_NEG


def _grid():
    r, a, p = np.meshgrid(GRID_R, GRID_A, GRID_P, indexing="ij")
    return r, a, p


@functools.lru_cache(maxsize=64)
def _grid_fn(drift: Callable):
    """One jitted grid evaluation per family: ``genomes [pop, ...] -> (values [pop, R, A, P],
    at one [pop, A, P], slope at one [pop, A, P])``."""
    r, a, p = (jnp.asarray(x, jnp.float32) for x in _grid())
    a1, p1 = (jnp.asarray(x, jnp.float32) for x in np.meshgrid(GRID_A, GRID_P, indexing="ij"))

    def one(genome):
        values = drift(genome, r, a, p)
        d = jax.vmap(jax.vmap(jax.grad(lambda rr, aa, pp: drift(genome, rr, aa, pp)),
                              (None, 0, 0)), (None, 0, 0))
        at_one = drift(genome, jnp.ones_like(a1), a1, p1)
        slope = d(jnp.ones((), jnp.float32), a1, p1)
        return values, at_one, slope

    return jax.jit(jax.vmap(one))


def _cast(genomes, dtype):
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), genomes)


def grid_values(objective: Objective, genomes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(D on the grid, D at r = 1, dD/dr at r = 1) for a population, float32 (any device)."""
    out = _grid_fn(objective.drift)(_cast(genomes, jnp.float32))
    return tuple(np.asarray(x, np.float64) for x in out)


def check(objective: Objective, genomes) -> tuple[np.ndarray, list[str]]:
    """The Mirror-Learning constraints on the grid, for a population.

    Returns:
      ``(valid [pop] bool, reasons)``: a reason per population member ("" when valid), naming
      the first violated constraint and where (r, A, progress).
    """
    values, at_one, slope = grid_values(objective, genomes)
    r, a, p = _grid()
    a1, p1 = np.meshgrid(GRID_A, GRID_P, indexing="ij")
    reasons = []
    for i in range(values.shape[0]):
        v, z, s = values[i], at_one[i], slope[i]
        reason = ""
        if not (np.all(np.isfinite(v)) and np.all(np.isfinite(z)) and np.all(np.isfinite(s))):
            j = np.unravel_index(np.argmax(~np.isfinite(v)), v.shape)
            reason = f"not finite (e.g. r={r[j]:.3g}, A={a[j]:.3g}, progress={p[j]:.3g})"
        elif v.min() < -TOL_NEG:
            j = np.unravel_index(np.argmin(v), v.shape)
            reason = f"negative drift {v[j]:.3g} at r={r[j]:.3g}, A={a[j]:.3g}, " \
                     f"progress={p[j]:.3g}"
        elif np.abs(z).max() > TOL_ZERO:
            j = np.unravel_index(np.argmax(np.abs(z)), z.shape)
            reason = f"drift {z[j]:.3g} at r=1 (must be 0), A={a1[j]:.3g}, progress={p1[j]:.3g}"
        elif np.abs(s).max() > TOL_GRAD:
            j = np.unravel_index(np.argmax(np.abs(s)), s.shape)
            reason = f"slope dD/dr = {s[j]:.3g} at r=1 (must be 0), A={a1[j]:.3g}, " \
                     f"progress={p1[j]:.3g}"
        reasons.append(reason)
    return np.array([not x for x in reasons]), reasons


FINGERPRINT_BATCH = 64  # genomes per compiled call of ``fingerprints`` (padded)


@functools.lru_cache(maxsize=16)
def _grid_values64(drift: Callable):
    """``jit(vmap(genome -> D on the grid))``; called under float64 on the CPU."""
    def one(genome):
        r, a, p = (jnp.asarray(x, jnp.float64) for x in _grid())
        return drift(genome, r, a, p)
    return jax.jit(jax.vmap(one))


def fingerprints(objective: Objective, genomes: list) -> list[tuple[np.ndarray, str]]:
    """``fingerprint`` of many genomes of one family, batched (``FINGERPRINT_BATCH`` per
    compiled call, padded): equal to ``fingerprint`` genome by genome."""
    from lab.core.hashing import digest, round_mantissa
    out = []
    with jax.enable_x64(True), jax.default_device(jax.local_devices(backend="cpu")[0]):
        fn = _grid_values64(objective.drift)
        for start in range(0, len(genomes), FINGERPRINT_BATCH):
            part = genomes[start:start + FINGERPRINT_BATCH]
            padded = part + [part[-1]] * (FINGERPRINT_BATCH - len(part))
            batch = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *padded)
            values = np.asarray(fn(_cast(batch, jnp.float64)), np.float64)
            for i in range(len(part)):
                fp = round_mantissa(values[i].reshape(-1))
                out.append((fp, digest(fp)))
    return out


def fingerprint(objective: Objective, genome=None, jit: bool = True) -> tuple[np.ndarray, str]:
    """(fingerprint, hash): D on the grid in float64 on the CPU, mantissas rounded as every
    fingerprint in the lab (``lab.core.hashing.round_mantissa``). Unlike update rules, a drift is
    not divided by its RMS: its scale against ``r * A`` is what makes it strict or lax."""
    from lab.core.hashing import digest, round_mantissa
    with jax.enable_x64(True), jax.default_device(jax.local_devices(backend="cpu")[0]):
        r, a, p = (jnp.asarray(x, jnp.float64) for x in _grid())
        g = _cast(objective.genome if genome is None else genome, jnp.float64)
        drift = jax.jit(objective.drift) if jit else objective.drift
        values = np.asarray(drift(g, r, a, p), np.float64)
    fp = round_mantissa(values.reshape(-1))
    return fp, digest(fp)


@functools.lru_cache(maxsize=1)
def known_objectives() -> tuple[tuple[str, np.ndarray], ...]:
    """The named objectives a drift is compared with: PPO-clip (eps 0.2) and DPO (2, 0.6)."""
    return tuple((name, fingerprint(o, o.genome)[0]) for name, o in
                 (("ppo_clip", ppo_clip()), ("dpo", dpo())))


def describe_function(objective: Objective, genome) -> dict:
    """``{"hash", "equals", "closest", "fingerprint", "constraints"}`` of one drift: the lab's
    ``describe_function`` for kind ``drift``."""
    from lab.core.hashing import matches, relative_distance
    fp, h = fingerprint(objective, genome)
    known = known_objectives()
    dist = {name: relative_distance(fp, k) for name, k in known}
    best = min(dist, key=dist.get)
    valid, reasons = check(objective, jax.tree.map(lambda x: np.asarray(x)[None], genome))
    return {"hash": h, "fingerprint": fp,
            "equals": [name for name, k in known if matches(fp, k)],
            "closest": {"name": best, "distance": dist[best]}, "distances": dist,
            "constraints": {"valid": bool(valid[0]), "reason": reasons[0]}}

"""Learned optimizers: a small per-parameter MLP over optimizer features, as an UpdateRule.

The genome is the MLP's weights, so a population of learned optimizers is one vmap. For every
parameter tensor the rule keeps momenta at several decays, a second moment and (for matrices)
Adafactor's row and column second moments; each feature is RMS-normalized over its tensor,
clipped, and joined by training-progress features (``t / horizon`` and ``tanh(t / tau - 1)``);
the MLP (plus a linear skip from the features) gives a direction ``d`` and a magnitude ``m`` per
element and the step is ``d * exp(exp_mult * m) * exp(log_step)``, times ``ctx.lr``. The small
multipliers (``exp(log_step)`` = 1e-3 at init, ``exp_mult`` = 1e-3) make a random rule take tiny
steps, so it cannot blow up an inner run.

References:
  Metz et al. 2019, https://arxiv.org/abs/1810.10180 (LOLv2 MLP learned optimizer);
  Metz et al. 2022, https://arxiv.org/abs/2203.11860 (AdafacMLP features);
  Shazeer & Stern 2018, https://arxiv.org/abs/1804.04235 (Adafactor's factored moments).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lab.core.rule import Ctx, UpdateRule, to_optax

KIND = "learned"
FAMILY = "mlp"
CLIP = 10.0   # normalized features are clipped to +-CLIP
GRAD_CLIP = 1000.0  # raw gradients, before anything accumulates them
EPS = 1e-30  # inside rsqrt: safe for an all-zero tensor
LOG_MIN, LOG_MAX = -20.0, 10.0  # range of the log-scale features


@dataclasses.dataclass(frozen=True)
class Features:
    """The static structure of a learned optimizer: its features and its network.

    Attributes:
      hidden: width of each hidden layer.
      depth: hidden layers (ReLU).
      momenta: decays of the gradient momenta (one feature each, and one ``m * rsqrt(v)``).
      rms: decay of the second moment ``v`` (and of the factored row/column moments).
      factored: Adafactor row/column second moments for tensors with two or more axes (others
        use ``v``): features ``g * rsqrt(v_factored)`` and ``v_factored``.
      scales: per-tensor scale features ``log RMS(p)`` and ``log RMS(g)`` (everything else is
        normalized away, so without them one step size serves every tensor of every task).
      taus: timescales of the ``tanh(t / tau - 1)`` progress features.
      step: the initial step multiplier, ``exp(log_step)`` (``log_step`` is in the genome).
      exp_mult: the multiplier of the magnitude output inside ``exp``.
    """

    hidden: int = 16
    depth: int = 2
    momenta: tuple[float, ...] = (0.5, 0.9, 0.99, 0.999)
    rms: float = 0.999
    factored: bool = True
    scales: bool = True
    taus: tuple[float, ...] = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
    step: float = 1e-3
    exp_mult: float = 1e-3

    def __post_init__(self):
        if self.hidden < 1 or self.depth < 0:
            raise ValueError(f"hidden must be >= 1 and depth >= 0, got {self.hidden}, "
                             f"{self.depth}")
        if not self.momenta or not all(0 <= b < 1 for b in (*self.momenta, self.rms)):
            raise ValueError("momenta (at least one) and rms must be decays in [0, 1)")
        if not all(t > 0 for t in self.taus) or not self.step > 0 or self.exp_mult < 0:
            raise ValueError("taus and step must be > 0 and exp_mult >= 0")

    @property
    def names(self) -> tuple[str, ...]:
        """The input features, in the order the MLP sees them."""
        per_param = ["g", "p", *[f"m{b:g}" for b in self.momenta], "v",
                     *[f"m{b:g}*rsqrt(v)" for b in self.momenta]]
        if self.factored:
            per_param += ["g*rsqrt(v_fac)", "v_fac"]
        per_param.append("adam")
        scales = ["log_rms(p)", "log_rms(g)"] if self.scales else []
        return (*per_param, *scales, "t/horizon", *[f"tanh(t/{t:g}-1)" for t in self.taus])

    @property
    def adam_momentum(self) -> int:
        """The momentum (index into ``momenta``) of the ``adam`` feature: the one nearest 0.9."""
        return int(np.argmin([abs(b - 0.9) for b in self.momenta]))

    @property
    def inputs(self) -> int:
        return len(self.names)

    @property
    def name(self) -> str:
        """``mlp`` at the defaults, else ``mlp(key=value,...)`` with the keys that differ
        (tuples joined by ``/``): the family name stored with candidates and artifacts."""
        from lab.names import family_name
        return family_name(self, FAMILY)

    @classmethod
    def parse(cls, name: str) -> Features:
        """Inverse of ``name``; ValueError naming the bad part."""
        from lab.names import parse_family
        return parse_family(cls, FAMILY, name, "learned rule family")

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "names": list(self.names)}


# ---- the network ---------------------------------------------------------------------------

def init_genome(features: Features, key: jax.Array, skip: str | None = "adam") -> dict:
    """MLP weights (LeCun-normal hidden layers, a small output layer) and the step scale.

    Args:
      features: the structure.
      key: PRNG key.
      skip: a feature whose linear skip weight into the direction starts at 1; the default,
        ``adam``, makes the rule start as Adam (b1 the momentum nearest 0.9, b2 = ``rms``, no
        epsilon) at step ``features.step`` plus the network's small output; None: every skip
        starts at 0 (a blank rule).

    Returns:
      ``{"w0".."w{depth}", "b0".., "skip": [F, 2], "log_step": []}``.
    """
    sizes = [features.inputs] + [features.hidden] * features.depth + [2]
    keys = jax.random.split(key, len(sizes) - 1)
    genome = {}
    for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:], strict=True)):
        last = i == len(sizes) - 2
        std = (0.01 if last else 1.0) / math.sqrt(n_in)
        genome[f"w{i}"] = std * jax.random.normal(k, (n_in, n_out), jnp.float32)
        genome[f"b{i}"] = jnp.zeros(n_out, jnp.float32)
    skip_w = np.zeros((features.inputs, 2), np.float32)
    if skip is not None:
        if skip not in features.names:
            raise ValueError(f"skip feature {skip!r} is not one of {list(features.names)}")
        skip_w[features.names.index(skip), 0] = 1.0
    genome["skip"] = jnp.asarray(skip_w)
    genome["log_step"] = jnp.asarray(math.log(features.step), jnp.float32)
    return genome


def artifact_genome(path: str, features: Features) -> dict:
    """The weights of the learned artifact folder ``path`` (``discovered/NAME``), to start
    meta-training from (``rule.init``); ValueError naming the file and what does not match when
    it is not a learned artifact of ``features``."""
    from lab.commands.artifacts import artifact_start  # lazily: commands sit above the kinds
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"{path!r} is neither 'adam', 'random' nor an artifact folder")
    target = artifact_start(path, KIND)
    have = features_of(target.rule)
    if have != features:
        diff = [f"{f.name} {getattr(have, f.name)!r} (the config: {getattr(features, f.name)!r})"
                for f in dataclasses.fields(Features)
                if getattr(have, f.name) != getattr(features, f.name)]
        raise ValueError(f"{folder}: its network differs from the rule section's: "
                         f"{'; '.join(diff)}")
    want = init_genome(features, jax.random.key(0))
    shapes = jax.tree.map(np.shape, target.genome)
    if shapes != jax.tree.map(np.shape, want):
        raise ValueError(f"{folder}: weights of shapes {shapes}, the network has "
                         f"{jax.tree.map(np.shape, want)}")
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), target.genome)


def _mlp(features: Features, genome: dict, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[..., F] -> (direction, magnitude), each [...]."""
    h = x
    for i in range(features.depth):
        h = jax.nn.relu(h @ genome[f"w{i}"].astype(x.dtype) + genome[f"b{i}"].astype(x.dtype))
    out = h @ genome[f"w{features.depth}"].astype(x.dtype) \
        + genome[f"b{features.depth}"].astype(x.dtype) + x @ genome["skip"].astype(x.dtype)
    return out[..., 0], out[..., 1]


# ---- features and state ----------------------------------------------------------------------

def _normalize(x: jax.Array) -> jax.Array:
    """RMS-normalized over the whole tensor, clipped to +-CLIP."""
    rms = jax.lax.rsqrt(jnp.mean(jnp.square(x)) + 1e-12)
    return jnp.clip(x * rms, -CLIP, CLIP)


def _log_rms(x: jax.Array) -> jax.Array:
    """log RMS of a tensor, clipped to [LOG_MIN, LOG_MAX] (0 for an all-zero tensor)."""
    return jnp.clip(0.5 * jnp.log(jnp.mean(jnp.square(x)) + 1e-30), LOG_MIN, LOG_MAX)


def _factored(p: jax.Array) -> bool:
    return p.ndim >= 2


def _init_leaf(features: Features, p: jax.Array) -> dict:
    p = jnp.atleast_1d(p)
    state = {"m": jnp.zeros((len(features.momenta), *p.shape), p.dtype),
             "v": jnp.zeros_like(p)}
    if features.factored and _factored(p):
        state["row"] = jnp.zeros(p.shape[:-1], p.dtype)
        state["col"] = jnp.zeros((*p.shape[:-2], p.shape[-1]), p.dtype)
    return state


def _update_leaf(features: Features, genome: dict, g: jax.Array, p: jax.Array, state: dict,
                 ctx: Ctx) -> tuple[jax.Array, dict]:
    shape = jnp.shape(p)
    g, p = jnp.atleast_1d(g), jnp.atleast_1d(p)
    dt = p.dtype
    g = jnp.clip(jnp.nan_to_num(g), -GRAD_CLIP, GRAD_CLIP)
    decays = jnp.asarray(features.momenta, dt).reshape((-1,) + (1,) * g.ndim)
    m = decays * state["m"] + (1 - decays) * g
    v = features.rms * state["v"] + (1 - features.rms) * jnp.square(g)
    new = {"m": m, "v": v}
    rsqrt_v = jax.lax.rsqrt(v + EPS)
    feats = [g, p, *m, v, *(m * rsqrt_v)]
    if features.factored:
        if "row" in state:
            g2 = jnp.square(g) + 1e-30
            row = features.rms * state["row"] + (1 - features.rms) * jnp.mean(g2, axis=-1)
            col = features.rms * state["col"] + (1 - features.rms) * jnp.mean(g2, axis=-2)
            v_fac = row[..., :, None] * col[..., None, :] / (
                jnp.mean(row, axis=-1)[..., None, None] + EPS)
            new.update(row=row, col=col)
        else:
            v_fac = v
        feats += [g * jax.lax.rsqrt(v_fac + EPS), v_fac]
    x = [_normalize(f) for f in feats]
    # Adam's own direction (bias-corrected, not normalized: a ratio, already scale-free), so
    # that a skip weight on it makes the rule exactly Adam at step exp(log_step)
    t1 = ctx.step.astype(dt) + 1
    b1 = features.momenta[features.adam_momentum]
    adam = (m[features.adam_momentum] / (1 - b1**t1)) * jax.lax.rsqrt(
        v / (1 - features.rms**t1) + EPS)
    x = jnp.stack([*x, jnp.clip(adam, -CLIP, CLIP)], axis=-1)
    t = ctx.step.astype(dt)
    horizon = jnp.maximum(ctx.horizon, 1).astype(dt)
    tensor = [(t / horizon)[None], jnp.tanh(t / jnp.asarray(features.taus, dt) - 1)]
    if features.scales:
        tensor.insert(0, jnp.stack([_log_rms(p), _log_rms(g)]))
    tensor = jnp.concatenate(tensor)
    x = jnp.concatenate([x, jnp.broadcast_to(tensor, (*g.shape, tensor.size))], axis=-1)
    direction, magnitude = _mlp(features, genome, x)
    step = direction * jnp.exp(features.exp_mult * magnitude) * jnp.exp(
        genome["log_step"].astype(dt))
    delta = -ctx.lr.astype(dt) * step
    return delta.reshape(shape), new


@functools.lru_cache(maxsize=64)
def _functions(features: Features):
    """(init, update, describe) of a family, built once per structure: jit caches and the
    fingerprint probe are keyed by these function objects, so every rule of a family shares
    their compilations."""

    def init(genome, params):
        del genome
        return jax.tree.map(lambda p: _init_leaf(features, p), params)

    def update(genome, grads, state, params, ctx: Ctx):
        leaves, treedef = jax.tree.flatten(params)
        g_leaves = treedef.flatten_up_to(grads)
        s_leaves = treedef.flatten_up_to(state)
        out = [_update_leaf(features, genome, g, p, s, ctx)
               for g, p, s in zip(g_leaves, leaves, s_leaves, strict=True)]
        return (treedef.unflatten([d for d, _ in out]),
                treedef.unflatten([s for _, s in out]))

    def describe(genome) -> str:
        n = sum(int(np.size(x)) for x in jax.tree.leaves(genome))
        layers = "->".join(str(s) for s in [features.inputs]
                           + [features.hidden] * features.depth + [2])
        return (f"learned {features.name}: MLP {layers} over {features.inputs} features "
                f"({n} weights), step scale {math.exp(float(np.asarray(genome['log_step']))):.3g}")

    return init, update, describe


def learned_rule(features: Features | None = None, genome: dict | None = None,
                 key: jax.Array | None = None) -> UpdateRule:
    """The learned-optimizer family with structure ``features``.

    Args:
      features: the structure (default ``Features()``).
      genome: the default genome; else ``init_genome(features, key)`` (key 0 if None).
    """
    features = features or Features()
    if genome is None:
        genome = init_genome(features, jax.random.key(0) if key is None else key)
    return UpdateRule(KIND, features.name, *_functions(features)[:2], genome,
                      _functions(features)[2])


def features_of(rule: UpdateRule) -> Features:
    """The structure of a learned rule (from its family name)."""
    return Features.parse(rule.name)


def learned_to_optax(genome: dict, horizon: int, features: Features | None = None,
                     learning_rate: float = 1.0) -> optax.GradientTransformation:
    """One learned optimizer as an ``optax.GradientTransformation``; the horizon (the number of
    updates it will be asked for, which its progress features read) is fixed here."""
    return to_optax(learned_rule(features, genome), genome, learning_rate, horizon)


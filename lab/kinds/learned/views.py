"""What a learned optimizer does: its update against the gradient, and its step size in training.

Two views of one genome, both pure and jitted once per rule family and shape:

* ``delta_vs_gradient``: the update of one element of a probe tensor as a function of that
  element's gradient, for a few values of its momentum (a curve per momentum value).
* ``effective_step``: the rule's step size, in Adam learning-rate units, at every step of a real
  inner training run, next to tuned Adam's learning rate on the same task and budget.

``lab inspect`` plots both (``lab.plots.learned_behaviour``) and reports ``summary``.

References:
  Metz et al. 2019, https://arxiv.org/abs/1810.10180 (visualizing learned optimizers by their
  update as a function of gradient and momentum);
  Kingma & Ba 2014, https://arxiv.org/abs/1412.6980 (Adam's normalized direction).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lab.core.rule import UpdateRule, make_ctx
from lab.core.target import Target, write_plot
from lab.kinds.learned.rule import Features, features_of, learned_rule
from tasks.base import Task

MOMENTA = (-1.0, 0.0, 1.0)  # momentum values of the probe element, in background-gradient RMS
G_MAX = 4.0                  # the gradient sweep covers [-G_MAX, G_MAX] background RMS
POINTS = 41
PROBE_SIZE = 4096            # the probe tensor: one swept element and PROBE_SIZE - 1 background
FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)  # where ``summary`` samples the effective step
SUMMARY_G = 9                # gradient values kept per curve in ``summary``
DEFINITION = ("effective step = RMS(delta) / RMS(m_hat / (sqrt(v_hat) + 1e-8)) over all "
              "parameters at each step, with Adam's bias-corrected moments (b1 0.9, b2 0.999) of "
              "the same gradients: the learning rate Adam would need for a step of that size "
              "(Adam at learning rate lr has effective step lr)")


# ---- delta against gradient -------------------------------------------------------------------

def _background(key: jax.Array, n: int, scale, p_scale=1.0) -> dict[str, jax.Array]:
    """A stationary background of ``n`` elements whose gradient RMS is ``scale``.

    Element i has a mean gradient ``mu_i ~ N(0, scale^2 / 2)`` and noise of variance
    ``scale^2 / 2``: its momenta (at every decay) sit at ``mu_i``, its second moment at its
    stationary value ``mu_i^2 + scale^2 / 2``, and this step's gradient is one noisy draw. Its
    parameters are ``N(0, p_scale^2)``.
    """
    k_mu, k_g, k_p = jax.random.split(key, 3)
    half = scale * math.sqrt(0.5)
    mu = half * jax.random.normal(k_mu, (n,), jnp.float32)
    return {"m": mu, "v": jnp.square(mu) + half ** 2,
            "g": mu + half * jax.random.normal(k_g, (n,), jnp.float32),
            "p": p_scale * jax.random.normal(k_p, (n,), jnp.float32)}


@functools.partial(jax.jit, static_argnames=("features", "size"))
def _sweep(features: Features, genome: Any, grads: jax.Array, momenta: jax.Array,
           scale: jax.Array, p_scale: jax.Array, lr: jax.Array, step: jax.Array,
           horizon: jax.Array, key: jax.Array, size: int) -> jax.Array:
    """[M] momenta x [G] gradients -> [M, G] deltas of the probe element (index 0)."""
    rule = learned_rule(features, genome)
    bg = _background(key, size - 1, scale, p_scale)
    ctx = make_ctx(step, horizon, lr)

    def one(m, g):
        params = {"probe": jnp.concatenate([jnp.zeros(1), bg["p"]])}
        moment = jnp.concatenate([m[None], bg["m"]])
        leaf = dict(rule.init(genome, params)["probe"])
        leaf["m"] = jnp.broadcast_to(moment, leaf["m"].shape)
        leaf["v"] = jnp.concatenate([(jnp.square(m) + scale ** 2 / 2)[None], bg["v"]])
        delta, _ = rule.update(genome, {"probe": jnp.concatenate([g[None], bg["g"]])},
                               {"probe": leaf}, params, ctx)
        return delta["probe"][0]

    return jax.vmap(jax.vmap(one, (None, 0)), (0, None))(momenta, grads)


def delta_vs_gradient(rule: UpdateRule, genome: Any, *, momenta=MOMENTA, g_max: float = G_MAX,
                      points: int = POINTS, scale: float = 1.0, p_scale: float = 1.0,
                      lr: float = 1.0, step: int = 100, horizon: int = 200,
                      size: int = PROBE_SIZE, seed: int = 0) -> dict[str, Any]:
    """The update of one parameter element as a function of its gradient, per momentum value.

    Every feature of the learned rule is RMS-normalized over its whole tensor, so an element's
    update depends on the other elements too. The probe is therefore one element of a 1-D tensor
    of ``size`` elements whose other ``size - 1`` follow a fixed, seeded, stationary background
    (gradient RMS ``scale``, parameter RMS ``p_scale``; see ``_background``). Each curve point
    is one call of
    ``rule.update`` on its own copy of that tensor: the probe element's momenta (at every decay)
    are set to ``m``, its second moment to ``m^2 + scale^2 / 2`` (what the background's elements
    have at their mean), its parameter to 0, and its gradient to ``g``. One element moves the
    tensor's RMS by at most ``g_max / sqrt(size)`` relative, so the normalization scale is the
    background's. 1-D tensors have no Adafactor row/column moments: the factored features equal
    the unfactored ones here. Everything but the scale features (``Features.scales``: log RMS of
    the tensor's gradient and parameters) is normalized over the tensor, so ``scale`` and
    ``p_scale`` matter only through those: pass the RMS a real run sees (``effective_step``
    records them per step) to probe the rule where it works.

    Args:
      rule, genome: a learned rule (``kind == "learned"``) and one genome.
      momenta: the probe's momentum values, in units of ``scale``.
      g_max, points: the gradient sweep, ``linspace(-g_max, g_max, points)`` times ``scale``.
      scale: the background's gradient RMS (the unit of ``g`` and ``momenta``).
      p_scale: the background's parameter RMS (the probe element's parameter is 0).
      lr, step, horizon: the ``Ctx`` of the update (progress features read ``step / horizon``).
      size: elements in the probe tensor.
      seed: the background's seed.

    Returns:
      ``{"g": [G], "momentum": [M], "delta": [M, G]}`` (NumPy float32; ``delta`` is what is
      added to the parameter; ``g`` and ``momentum`` include the factor ``scale``) and the
      ``lr``, ``step``, ``horizon``, ``scale``, ``p_scale`` used.
    """
    if rule.kind != "learned":
        raise ValueError(f"delta_vs_gradient needs a learned rule, got kind {rule.kind!r}")
    grads = scale * jnp.linspace(-g_max, g_max, points, dtype=jnp.float32)
    moms = scale * jnp.asarray(momenta, jnp.float32)
    delta = _sweep(features_of(rule), genome, grads, moms, jnp.float32(scale),
                   jnp.float32(p_scale), jnp.float32(lr), jnp.int32(step), jnp.int32(horizon),
                   jax.random.key(seed), size)
    return {"g": np.asarray(grads), "momentum": np.asarray(moms), "delta": np.asarray(delta),
            "lr": float(lr), "step": int(step), "horizon": int(horizon), "scale": float(scale),
            "p_scale": float(p_scale)}


# ---- effective step over training -------------------------------------------------------------

def _rms(tree) -> jax.Array:
    leaves = [jnp.ravel(x) for x in jax.tree.leaves(tree)]
    return jnp.sqrt(jnp.mean(jnp.square(jnp.concatenate(leaves))))


def _cosine(a, b) -> jax.Array:
    a = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(a)])
    b = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(b)])
    return jnp.vdot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b) + 1e-30)


@functools.lru_cache(maxsize=32)
def _compiled_run(init, update, task: Task, horizon: int, seeds: int):
    """One jitted ``run(genome, lr, key) -> per-step records [seeds, horizon]`` per rule family
    (its functions), task and horizon (tasks are cached objects, so the cache keeps their jit
    caches)."""
    rule = UpdateRule("", "", init, update, None, str)
    adam = optax.scale_by_adam()

    def train(genome, lr, key):
        # the evaluator's inner loop (lab.core.evaluate.make_train), recording each step
        k_init, k_data = jax.random.split(key)
        params = task.init(k_init)

        def step(carry, t):
            params, state, adam_state = carry
            batch = task.batch(jax.random.fold_in(k_data, t), t)
            loss, grads = jax.value_and_grad(task.loss)(params, batch)
            delta, state = rule.update(genome, grads, state, params,
                                       make_ctx(t, horizon, lr, loss.dtype))
            direction, adam_state = adam.update(grads, adam_state)
            rms_delta, rms_adam = _rms(delta), _rms(direction)
            record = {"loss": loss, "rms_delta": rms_delta, "rms_adam": rms_adam,
                      "rms_grad": _rms(grads), "rms_param": _rms(params),
                      "step": rms_delta / jnp.maximum(rms_adam, 1e-30),
                      "cosine": _cosine(delta, jax.tree.map(jnp.negative, direction))}
            return (optax.apply_updates(params, delta), state, adam_state), record

        carry = (params, rule.init(genome, params), adam.init(params))
        _, records = jax.lax.scan(step, carry, jnp.arange(horizon, dtype=jnp.int32))
        return records

    def run(genome, lr, key):
        return jax.vmap(train, (None, None, 0))(genome, lr, jax.random.split(key, seeds))

    return jax.jit(run)


def effective_step(rule: UpdateRule, genome: Any, task: Task, horizon: int | None = None, *,
                   lr: float = 1.0, seeds: int = 2, seed: int = 0) -> dict[str, Any]:
    """The rule's effective step size at every step of a real inner training run.

    Trains ``task`` with the rule for ``horizon`` steps (the evaluator's inner loop, one
    ``lax.scan``, ``seeds`` runs vmapped) and, alongside, Adam's normalized direction
    ``u = m_hat / (sqrt(v_hat) + 1e-8)`` of the same gradients. The effective step at step t is
    ``RMS(delta_t) / RMS(u_t)`` over all parameters: the learning rate Adam would need to take a
    step of the same size, so tuned Adam's learning rate (``adam_reference``) is directly
    comparable, and a baseline Adam rule at learning rate lr gives exactly lr. Works for any
    rule kind.

    Returns:
      ``{"step", "rms_delta", "cosine", "loss", "rms_grad", "rms_param"}``, each ``[horizon]``
      (NumPy, mean over seeds; ``cosine`` is between ``delta`` and ``-u``, 1 when the rule steps
      along Adam's direction; ``rms_grad`` and ``rms_param`` over all parameters, before the
      step), and the ``horizon``, ``lr``, ``seeds`` and ``task`` used.
    """
    horizon = int(horizon or task.steps)
    run = _compiled_run(rule.init, rule.update, task, horizon, int(seeds))
    records = jax.device_get(run(genome, jnp.float32(lr), jax.random.key(seed)))
    out = {k: np.mean(np.asarray(records[k], np.float64), axis=0)
           for k in ("step", "rms_delta", "cosine", "loss", "rms_grad", "rms_param")}
    return {**out, "horizon": horizon, "lr": float(lr), "seeds": int(seeds), "task": task.name}


def adam_reference(task: Task, horizon: int | None = None, seeds: int = 2) -> dict | None:
    """Tuned Adam's entry (``lr``, ``value``: its final loss) in the shipped
    ``tasks/references.json`` for this task and budget, or None when it ships none (this never
    tunes: inspecting stays cheap)."""
    from lab.core.references import References, family_of, shipped
    budget = int(horizon or task.steps)
    context = family_of("adam").context(task)
    if (task.name, context, budget, int(seeds), "adam") not in shipped():
        return None
    return References(None).get(task, "adam", budget, seeds)


# ---- what inspect reports ---------------------------------------------------------------------

def summary(curves: dict, steps: dict, reference: dict | None = None) -> dict[str, Any]:
    """JSON-able numbers from ``delta_vs_gradient`` and ``effective_step``: the curves at
    ``SUMMARY_G`` gradient values, the effective step at ``FRACTIONS`` of training, and tuned
    Adam's learning rate where known."""
    g = curves["g"]
    keep = np.unique(np.round(np.linspace(0, len(g) - 1, min(SUMMARY_G, len(g)))).astype(int))
    horizon = len(steps["step"])
    at = [min(horizon - 1, round(f * (horizon - 1))) for f in FRACTIONS]

    def num(x):
        x = float(x)
        return x if math.isfinite(x) else None

    return {
        "delta_vs_gradient": {
            "g": [num(x) for x in g[keep]],
            "momentum": [num(x) for x in curves["momentum"]],
            "delta": [[num(x) for x in row[keep]] for row in curves["delta"]],
            "step": curves["step"], "horizon": curves["horizon"], "lr": curves["lr"],
            "scale": num(curves["scale"]), "p_scale": num(curves["p_scale"]),
            "probe": "one element of a tensor whose other elements are a fixed stationary "
                     "background of gradient RMS `scale` and parameter RMS `p_scale`; `g` and "
                     "`momentum` include the factor `scale` (lab.kinds.learned.views)"},
        "effective_step": {
            "task": steps["task"], "horizon": horizon, "lr": steps["lr"],
            "seeds": steps["seeds"], "definition": DEFINITION,
            "fractions": list(FRACTIONS), "steps": at,
            "values": [num(steps["step"][i]) for i in at],
            "mean": num(np.mean(steps["step"])),
            "cosine_mean": num(np.mean(steps["cosine"])),
            "final_loss": num(np.mean(steps["loss"][-max(1, horizon // 10):])),
            "adam_lr": None if reference is None else num(reference["lr"]),
            "adam_final_loss": None if reference is None else num(reference["value"])},
    }


# The inner problem a learned rule's effective step is measured on (its default budget).
BEHAVIOUR_TASK = "digits_mlp"


def inspect_view(target: Target, store, info: dict) -> dict:
    """What ``lab inspect`` adds for a learned rule: ``features``, ``behaviour`` (update against
    gradient at a few momentum values, effective step over a training run of
    ``BEHAVIOUR_TASK``, tuned Adam's lr) and ``plot`` (the PNG of both)."""
    from lab.kinds.learned.plots import learned_behaviour
    from tasks import get_task
    task = get_task(BEHAVIOUR_TASK)
    steps = effective_step(target.rule, target.genome, task, lr=target.lr)
    mid = task.steps // 2
    # probe the update at the gradient and parameter scales the run sees at mid-training
    scale, p_scale = (float(x) if np.isfinite(x) and x > 0 else 1.0
                      for x in (steps["rms_grad"][mid], steps["rms_param"][mid]))
    curves = delta_vs_gradient(target.rule, target.genome, lr=target.lr, step=mid,
                               horizon=task.steps, scale=scale, p_scale=p_scale)
    reference = adam_reference(task, task.steps, steps["seeds"])
    title = f"{target.label} ({target.rule.name})"
    plot = write_plot(target, store, info["hash"], "behaviour", lambda path: learned_behaviour(
        curves, steps, path, title, None if reference is None else reference["lr"]))
    return {"features": list(features_of(target.rule).names),
            "behaviour": summary(curves, steps, reference), "plot": plot}

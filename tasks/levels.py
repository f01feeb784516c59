"""Environment levels: a gymnax environment with some of its parameters drawn from a seed.

A level of an RL task is the task with overrides of its environment's parameters (``EnvTask``'s
``env_params``), drawn from the environment's ``LevelSpace``: each varied parameter is its default
times a factor drawn log-uniformly from a range, and parameters that depend on others (CartPole's
total mass, Acrobot's centres of mass) follow. The draw is a function of the seed alone (numpy's
PCG64), so a level is named by ``(task, seed)`` and rebuilt anywhere. Seeds below
``HELDOUT_SEED`` are the ones searches sample; the held-out levels (``heldout_levels``, the
``rl-levels-heldout`` suite) sit above it, so no search ever trains on them.

Environments with no ``LevelSpace`` (Catch, MinAtar: their parameters set array shapes) have one
level, the default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

HELDOUT_SEED = 1_000_000_000  # level seeds at or above this are never drawn by a search


@dataclasses.dataclass(frozen=True)
class LevelSpace:
    """How levels of one environment vary.

    Attributes:
      env_id: the gymnax id.
      factors: ``(parameter, low, high)``: the default times a log-uniform factor in
        ``[low, high]``.
      derived: the parameters computed from the drawn ones (a function of the full parameter
        dict, returning the values to set).
    """

    env_id: str
    factors: tuple[tuple[str, float, float], ...]
    derived: Callable[[dict], dict] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """Every parameter a level sets, in a fixed order (the drawn ones, then the derived)."""
        drawn = tuple(n for n, _, _ in self.factors)
        extra = tuple(sorted(self.derived(dict.fromkeys(drawn, 1.0)))) if self.derived else ()
        return drawn + extra


def _cartpole(p: dict) -> dict:
    return {"total_mass": p["masscart"] + p["masspole"],
            "polemass_length": p["masspole"] * p["length"]}


def _acrobot(p: dict) -> dict:
    return {"link_com_pos_1": 0.5 * p["link_length_1"], "link_com_pos_2": 0.5 * p["link_length_2"]}


SPACES: dict[str, LevelSpace] = {
    "CartPole-v1": LevelSpace("CartPole-v1", (
        ("gravity", 0.5, 2.0), ("masscart", 0.5, 2.0), ("masspole", 0.5, 4.0),
        ("length", 0.4, 2.5), ("force_mag", 0.3, 2.0)), _cartpole),
    "Acrobot-v1": LevelSpace("Acrobot-v1", (
        ("link_length_1", 0.6, 1.6), ("link_length_2", 0.6, 1.6), ("link_mass_1", 0.5, 2.0),
        ("link_mass_2", 0.5, 2.0), ("dt", 0.5, 1.5)), _acrobot),
}


def space_of(env_id: str) -> LevelSpace | None:
    """The level space of an environment, or None where it has one level only."""
    return SPACES.get(env_id)


def _defaults(env_id: str) -> dict:
    from tasks.rl import default_params
    params = default_params(env_id)
    return {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}


def level_overrides(env_id: str, seed: int) -> dict[str, float]:
    """The parameters of level ``seed`` of ``env_id`` (rounded to 4 significant digits, so that
    they read and hash the same everywhere); ``{}`` for an environment without levels."""
    space = space_of(env_id)
    if space is None:
        return {}
    if seed < 0:
        raise ValueError(f"level seed {seed} of {env_id} is negative")
    rng = np.random.default_rng(int(seed))
    defaults = _defaults(env_id)
    out = {}
    for name, low, high in space.factors:
        factor = float(np.exp(rng.uniform(np.log(low), np.log(high))))
        out[name] = float(defaults[name]) * factor
    if space.derived is not None:
        out.update(space.derived({**defaults, **out}))
    return {k: float(f"{v:.4g}") for k, v in out.items()}


def stacked_overrides(env_id: str, seeds: Sequence[int]) -> dict[str, np.ndarray]:
    """``{parameter: [len(seeds)] float32}``: the levels of ``seeds`` as the batched input of a
    level-conditioned train function (``lab.kinds.drift.ppo.make_level_train``); ``{}`` for an
    environment without levels."""
    space = space_of(env_id)
    if space is None:
        return {}
    rows = [level_overrides(env_id, s) for s in seeds]
    return {n: np.asarray([r[n] for r in rows], np.float32) for n in space.names}


def level_task(task, seed: int, name: str | None = None):
    """``task`` (an ``EnvTask``) at level ``seed``: its environment parameters overridden."""
    from tasks.rl import make_env_task
    fields = {f.name: getattr(task, f.name) for f in dataclasses.fields(task)
              if f.name not in ("name", "env_id", "steps", "env_params", "family", "floor",
                                "eval_loss")}
    params = {**dict(task.env_params), **level_overrides(task.env_id, seed)}
    return make_env_task(name or f"{task.name}_level_{seed}", task.env_id, task.steps,
                         env_params=params, **fields)


def heldout_seed(k: int) -> int:
    """The seed of the k-th held-out level (never drawn by a search)."""
    return HELDOUT_SEED + int(k)

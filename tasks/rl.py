"""RL environments as inner problems: a gymnax environment plus the PPO settings it is trained with.

An ``EnvTask`` is to the RL inner loop (``lab.kinds.drift.ppo.make_train``) what a ``Task`` is to
supervised training: the name, family, default budget (``steps``: environment steps per run) and the
numbers that define it (``config``, hashed into its version like a supervised task's). gymnax is
imported only when an environment is built, so listing tasks and reading configs work without it.

The PPO settings follow PureJaxRL's reference configurations (Lu et al. 2022): separate tanh
actor and critic MLPs, GAE, epochs of minibatch updates, Adam with a linearly annealed learning
rate and global-norm clipping.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class EnvTask:
    """One RL inner problem: a gymnax environment and how PPO trains on it.

    Attributes:
      name: unique name, e.g. ``"cartpole"``.
      family: ``"gymnax"`` (for ``lab tasks``).
      env_id: the gymnax id, e.g. ``"CartPole-v1"``.
      steps: the default budget in environment steps (all envs together).
      num_envs, num_steps: parallel environments and rollout length per update.
      epochs, minibatches: passes over each rollout and minibatches per pass.
      lr: Adam's learning rate (annealed linearly to 0 when ``anneal_lr``).
      gamma, gae_lambda: discount and GAE parameter.
      vf_clip: clipping range of the value update; ``ent_coef``, ``vf_coef``: loss weights.
      max_grad_norm: global-norm gradient clip.
      hidden, layers, activation: the actor and critic MLPs.
      env_params: overrides of the environment's default parameters.
    """

    name: str
    env_id: str
    steps: int
    num_envs: int = 4
    num_steps: int = 128
    epochs: int = 4
    minibatches: int = 4
    lr: float = 2.5e-4
    anneal_lr: bool = True
    gamma: float = 0.99
    gae_lambda: float = 0.95
    vf_clip: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    hidden: int = 64
    layers: int = 2
    activation: str = "tanh"
    env_params: tuple[tuple[str, Any], ...] = ()
    family: str = "gymnax"
    floor: float = 0.0  # unused by RL; keeps ``tasks.suites.task_record`` uniform
    eval_loss: None = None

    def __post_init__(self):
        batch = self.num_envs * self.num_steps
        if batch % self.minibatches:
            raise ValueError(f"task {self.name}: num_envs * num_steps = {batch} is not divisible "
                             f"by minibatches = {self.minibatches}")
        if self.activation not in ("tanh", "relu"):
            raise ValueError(f"task {self.name}: activation {self.activation!r} is not tanh/relu")

    @property
    def config(self) -> dict:
        """What defines the task (hashed into its version)."""
        doc = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("name", "family", "steps", "floor", "eval_loss")}
        doc["env_params"] = {k: v for k, v in self.env_params}
        return doc

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    def updates(self, steps: int | None = None) -> int:
        """PPO updates in a run of ``steps`` environment steps (at least one)."""
        return max(1, int(steps or self.steps) // self.batch_size)

    def make_env(self):
        """(env, env_params) from gymnax, built once per task."""
        return _env(self.env_id, self.env_params)

    def spaces(self) -> tuple[int, int]:
        """(observation size after flattening, number of discrete actions)."""
        env, params = self.make_env()
        obs = env.observation_space(params).shape
        return int(np.prod(obs)), int(env.action_space(params).n)

    def param_count(self) -> int | None:
        """Parameters of the actor-critic, or None where gymnax is not installed."""
        try:
            obs, actions = self.spaces()
        except ImportError:
            return None
        sizes = [obs] + [self.hidden] * self.layers
        body = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        return 2 * body + (self.hidden * actions + actions) + (self.hidden + 1)


def default_params(env_id: str):
    """gymnax's default parameters of ``env_id`` (an ``EnvParams`` dataclass)."""
    return _env(env_id, ())[1]


@functools.lru_cache(maxsize=64)
def _env(env_id: str, overrides: tuple[tuple[str, Any], ...]):
    import gymnax
    env, params = gymnax.make(env_id)
    if overrides:
        params = params.replace(**dict(overrides))
    return env, params


def make_env_task(name: str, env_id: str, steps: int, **kwargs) -> EnvTask:
    """An ``EnvTask``; ``env_params`` may be given as a dict."""
    if isinstance(kwargs.get("env_params"), dict):
        kwargs["env_params"] = tuple(sorted(kwargs["env_params"].items()))
    return EnvTask(name=name, env_id=env_id, steps=int(steps), **kwargs)


def is_rl(task) -> bool:
    return isinstance(task, EnvTask)

"""PPO on gymnax as the lab's train function: ``make_train(task, objective, budget)``.

The PureJaxRL pattern (Lu et al. 2022): the whole run, environment stepping (vmapped over
``num_envs``), GAE (a reverse ``lax.scan``), and epochs of minibatch updates (nested scans), is
one pure function ``train(genome, key) -> metrics`` of the drift's genome, so the lab's evaluator
vmaps it over candidates x seeds and shards the candidates over devices, one compiled call per
environment shape.

gymnax 1.0 steps return ``(obs, state, reward, terminated, truncated, info)`` and reset inside
``step``; the value of the true next state (``info["final_observation"]`` at an episode's end)
bootstraps the TD target unless the episode *terminated*; a truncated (time-limit) episode is
bootstrapped, and GAE's recursion is cut at either.

The policy loss is ``-mean(r * A - D(r, A, n/N))`` with ``A`` normalized per minibatch and
``n / N`` the update's progress through the run; value loss (clipped) and entropy bonus as in PPO.

Metrics, each a scalar per run: ``final_return`` (mean return of the episodes that ended in the
last tenth of the updates; where none did, the mean return of the episodes running at the end),
``mean_return`` (over every episode that ended during training: the area under the learning
curve), ``episodes``, ``curve`` (mean return per equal segment of the updates, carried forward
through segments where no episode ended) and ``diverged`` (a non-finite loss or parameter).

References:
  Schulman et al. 2017, https://arxiv.org/abs/1707.06347 (PPO);
  Schulman et al. 2016, https://arxiv.org/abs/1506.02438 (GAE);
  Lu et al. 2022, https://github.com/luchris429/purejaxrl (the single-file JAX pattern).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lab.kinds.drift.objectives import Objective, objective_from_name
from tasks.rl import EnvTask

# Bump when the inner loop or its metrics change: it is part of every RL cache key.
RL_VERSION = "1"
CURVE_POINTS = 8

Metrics = dict[str, jax.Array]


def orthogonal(scale: float) -> Callable:
    """flax's orthogonal initializer (same numbers), one matrix at a time under ``vmap``.

    Batched, its QR is one LAPACK call that splits the batch over XLA's CPU intra-op thread pool
    and waits for the parts inside a pool thread (jaxlib's ``ParallelBatchMap``). Two such
    calls running at once (a population's network inits) can occupy every pool thread with
    waiting, and the process stops with all threads idle (jax 0.10, CPU). One matrix per call
    (``sequential_vmap``: a loop over the batch) runs inline, never waiting on the pool.
    """
    base = nn.initializers.orthogonal(scale)

    def init(key, shape, dtype=jnp.float32):
        return jax.custom_batching.sequential_vmap(lambda k: base(k, shape, dtype))(key)

    return init


class ActorCritic(nn.Module):
    """Separate MLP actor and critic (PureJaxRL's discrete-action network)."""

    actions: int
    hidden: int = 64
    layers: int = 2
    activation: str = "tanh"

    @nn.compact
    def __call__(self, x, critic_only: bool = False):
        """(logits, value); ``critic_only``: the value alone (the actor is not computed)."""
        act = nn.tanh if self.activation == "tanh" else nn.relu
        ortho = orthogonal
        zeros = nn.initializers.constant(0.0)

        def mlp(h, scale_out, out, first):  # layers named as flax numbers them: Dense_<i>
            for i in range(self.layers):
                h = act(nn.Dense(self.hidden, kernel_init=ortho(np.sqrt(2)), bias_init=zeros,
                                 name=f"Dense_{first + i}")(h))
            return nn.Dense(out, kernel_init=ortho(scale_out), bias_init=zeros,
                            name=f"Dense_{first + self.layers}")(h)

        value = jnp.squeeze(mlp(x, 1.0, 1, self.layers + 1), -1)
        if critic_only:
            return value
        return mlp(x, 0.01, self.actions, 0), value


class Transition(NamedTuple):
    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    reward: jax.Array
    terminated: jax.Array
    done: jax.Array
    final_obs: jax.Array


def gae(traj: Transition, next_values: jax.Array, gamma: float, lam: float):
    """(advantages, returns) over a ``[T, envs]`` rollout; ``next_values`` is V of each step's
    true next state. Bootstraps unless terminated; the recursion stops at any episode end."""
    def body(carry, x):
        value, reward, term, done, next_v = x
        delta = reward + gamma * next_v * (1.0 - term) - value
        adv = delta + gamma * lam * (1.0 - done) * carry
        return adv, adv

    xs = (traj.value, traj.reward, traj.terminated.astype(jnp.float32),
          traj.done.astype(jnp.float32), next_values)
    _, adv = jax.lax.scan(body, jnp.zeros_like(traj.value[0]), xs, reverse=True)
    return adv, adv + traj.value


def episode_returns(reward: jax.Array, done: jax.Array, running: jax.Array):
    """The episodes that ended in a ``[T, envs]`` rollout: (sum of their returns, how many),
    and each environment's running return after it. ``running`` is each environment's return so
    far when the rollout starts; an episode's return counts the reward of the step that ends it.
    One pass over the whole rollout (a cumulative sum, cut where the last episode ended), equal to
    summing step by step wherever the rewards are integers (every gymnax task the lab runs)."""
    steps = reward.shape[0]
    total = jnp.cumsum(reward, axis=0)
    index = jnp.broadcast_to(jnp.arange(steps)[:, None], reward.shape)
    last = jax.lax.cummax(jnp.where(done, index, -1), axis=0)  # the latest end at or before t
    before = jnp.concatenate([jnp.full_like(last[:1], -1), last[:-1]])  # ... strictly before t
    start = jnp.where(before >= 0, jnp.take_along_axis(total, jnp.maximum(before, 0), axis=0),
                      -running[None])
    ret = total - start  # the return of the episode running at t, step t's reward included
    ended = jnp.where(done, ret, 0.0)
    return ended.sum(), done.sum(), jnp.where(done[-1], 0.0, ret[-1])


def policy_loss(objective: Objective, genome, log_prob, old_log_prob, adv, progress):
    """``-mean(r * A - D(r, A, progress))``, A normalized over the minibatch."""
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    ratio = jnp.exp(log_prob - old_log_prob)
    return -jnp.mean(ratio * adv - objective.drift(genome, ratio, adv, progress))


def ppo_clip_loss(log_prob, old_log_prob, adv, eps: float = 0.2):
    """The textbook clipped surrogate (for tests): ``-mean(min(r A, clip(r) A))``."""
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    ratio = jnp.exp(log_prob - old_log_prob)
    return -jnp.mean(jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - eps, 1 + eps) * adv))


def make_train(task: EnvTask, objective: Objective, budget: int | None = None,
               curve_points: int = CURVE_POINTS) -> Callable[[Any, jax.Array], Metrics]:
    """One PPO run on ``task`` whose policy objective is the drift ``objective``.

    Args:
      task: the environment and its PPO settings.
      objective: the drift family; its genome is ``train``'s first argument.
      budget: environment steps (0 or None: the task's default).
      curve_points: segments of ``curve`` (static).

    Returns:
      ``train(genome, key) -> metrics`` (module docstring). The same object for the same
      (task, family, budget, points), so the evaluator's compiled functions are shared.
    """
    return _make_train(task, objective.name, int(budget or task.steps), int(curve_points))


def make_level_train(task: EnvTask, objective: Objective, budget: int | None = None,
                     curve_points: int = CURVE_POINTS) -> Callable[[Any, jax.Array], Metrics]:
    """``make_train`` on levels of ``task`` (``tasks.levels``): ``train((genome, overrides),
    key)``, where ``overrides`` maps environment parameters to values that replace the task's
    (traced: one compiled function runs every level, and the evaluator vmaps over them as over
    genomes). ``{}`` is the task itself."""
    return _make_level_train(task, objective.name, int(budget or task.steps), int(curve_points))


@functools.lru_cache(maxsize=128)
def _make_train(task: EnvTask, family: str, steps: int, points: int):
    run = _ppo(task, family, steps, points)

    def train(genome, key: jax.Array) -> Metrics:
        return run(genome, key, {})

    return train


@functools.lru_cache(maxsize=128)
def _make_level_train(task: EnvTask, family: str, steps: int, points: int):
    run = _ppo(task, family, steps, points)

    def train(inputs, key: jax.Array) -> Metrics:
        genome, overrides = inputs
        return run(genome, key, overrides)

    return train


@functools.lru_cache(maxsize=128)
def _ppo(task: EnvTask, family: str, steps: int, points: int):
    """``run(genome, key, overrides) -> metrics``: one PPO run, the environment's parameters
    replaced by ``overrides`` (a dict; ``{}`` leaves the task's)."""
    objective = objective_from_name(family)
    env, default_params = task.make_env()
    obs_shape = env.observation_space(default_params).shape
    obs_size, n_actions = task.spaces()
    n_envs, n_steps = task.num_envs, task.num_steps
    updates = task.updates(steps)
    batch = task.batch_size
    mb_size = batch // task.minibatches
    tail = max(1, updates // 10)
    seg = max(1, updates // points)
    net = ActorCritic(n_actions, task.hidden, task.layers, task.activation)
    per_update = task.epochs * task.minibatches
    lr = (optax.linear_schedule(task.lr, 0.0, updates * per_update) if task.anneal_lr
          else task.lr)
    tx = optax.chain(optax.clip_by_global_norm(task.max_grad_norm), optax.adam(lr, eps=1e-5))

    def flat(obs):
        return jnp.reshape(obs, (*obs.shape[: obs.ndim - len(obs_shape)],
                                 obs_size)).astype(jnp.float32)

    step_envs = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    def loss_fn(params, genome, mb: Transition, adv, targets, progress):
        logits, value = net.apply(params, flat(mb.obs))
        logp_all = jax.nn.log_softmax(logits)
        logp = jnp.take_along_axis(logp_all, mb.action[:, None], -1)[:, 0]
        pg = policy_loss(objective, genome, logp, mb.log_prob, adv, progress)
        v_clip = mb.value + jnp.clip(value - mb.value, -task.vf_clip, task.vf_clip)
        v_loss = 0.5 * jnp.mean(jnp.maximum((value - targets) ** 2, (v_clip - targets) ** 2))
        entropy = -jnp.mean(jnp.sum(jnp.exp(logp_all) * logp_all, -1))
        return pg + task.vf_coef * v_loss - task.ent_coef * entropy

    def run(genome, key: jax.Array, overrides: dict) -> Metrics:
        env_params = default_params.replace(**overrides) if overrides else default_params
        k_init, k_reset, k_run = jax.random.split(key, 3)
        params = net.init(k_init, jnp.zeros((obs_size,), jnp.float32))
        opt_state = tx.init(params)
        obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(
            jax.random.split(k_reset, n_envs), env_params)
        ep_ret = jnp.zeros(n_envs, jnp.float32)

        def env_step(carry, _):
            params, env_state, obs, key = carry
            key, k_act, k_step = jax.random.split(key, 3)
            logits, value = net.apply(params, flat(obs))
            action = jax.random.categorical(k_act, logits)
            log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], -1)[:, 0]
            obs2, env_state, reward, term, trunc, info = step_envs(
                jax.random.split(k_step, n_envs), env_state, action, env_params)
            done = jnp.logical_or(term, trunc)
            tr = Transition(obs, action, log_prob, value, reward.astype(jnp.float32), term, done,
                            info["final_observation"])
            return (params, env_state, obs2, key), tr

        def update(carry, u):
            params, opt_state, env_state, obs, ep_ret, key = carry
            # the loop steps the environments alone; the episodes' bookkeeping is done after it,
            # on the whole rollout (per-step sums cost the sequential loop a fifth of its time)
            (params, env_state, obs, key), traj = jax.lax.scan(
                env_step, (params, env_state, obs, key), None, n_steps)
            ret_sum, n_done, ep_ret = episode_returns(traj.reward, traj.done, ep_ret)
            next_values = net.apply(params, flat(traj.final_obs), critic_only=True)
            adv, targets = gae(traj, next_values, task.gamma, task.gae_lambda)
            progress = u.astype(jnp.float32) / updates

            def epoch(carry, k):
                params, opt_state = carry
                perm = jax.random.permutation(k, batch)
                # what the loss reads (the episode flags and final observations are not shuffled)
                used = traj._replace(reward=None, terminated=None, done=None, final_obs=None)
                data = jax.tree.map(lambda x: x.reshape((batch, *x.shape[2:]))[perm],
                                    (used, adv, targets))
                data = jax.tree.map(lambda x: x.reshape((task.minibatches, mb_size,
                                                         *x.shape[1:])), data)

                def minibatch(carry, d):
                    params, opt_state = carry
                    mb, a, t = d
                    loss, grads = jax.value_and_grad(loss_fn)(params, genome, mb, a, t,
                                                              progress)
                    upd, opt_state = tx.update(grads, opt_state, params)
                    return (optax.apply_updates(params, upd), opt_state), loss

                (params, opt_state), losses = jax.lax.scan(minibatch, (params, opt_state), data)
                return (params, opt_state), losses

            key, k_epochs = jax.random.split(key)
            (params, opt_state), losses = jax.lax.scan(
                epoch, (params, opt_state), jax.random.split(k_epochs, task.epochs))
            out = (ret_sum, n_done, jnp.all(jnp.isfinite(losses)))
            return (params, opt_state, env_state, obs, ep_ret, key), out

        carry = (params, opt_state, env_state, obs, ep_ret, k_run)
        (params, *_, ep_ret, _), (ret_sum, n_done, finite) = jax.lax.scan(
            update, carry, jnp.arange(updates, dtype=jnp.int32))
        n_done = n_done.astype(jnp.float32)
        running = jnp.mean(ep_ret)
        tail_n = jnp.sum(n_done[-tail:])
        final = jnp.where(tail_n > 0, jnp.sum(ret_sum[-tail:]) / jnp.maximum(tail_n, 1.0),
                          running)
        total_n = jnp.sum(n_done)
        mean = jnp.where(total_n > 0, jnp.sum(ret_sum) / jnp.maximum(total_n, 1.0), running)
        curve = _curve(ret_sum, n_done, seg, points, running)
        finite_params = jnp.all(jnp.array([jnp.all(jnp.isfinite(x))
                                           for x in jax.tree.leaves(params)]))
        diverged = ~(jnp.all(finite) & finite_params & jnp.isfinite(final))
        return {"final_return": final, "mean_return": mean, "episodes": total_n,
                "curve": curve, "diverged": diverged}

    return run


def _curve(ret_sum, n_done, seg: int, points: int, fallback):
    """Mean return per segment of ``seg`` updates; empty segments carry the last value forward
    (the first ones take the first non-empty segment's value, or ``fallback``)."""
    k = min(points, ret_sum.shape[0] // seg) or 1
    s = ret_sum[: seg * k].reshape(k, -1).sum(1)
    n = n_done[: seg * k].reshape(k, -1).sum(1)
    value = jnp.where(n > 0, s / jnp.maximum(n, 1.0), jnp.nan)
    first = jnp.where(jnp.any(n > 0), value[jnp.argmax(n > 0)], fallback)

    def fill(last, v):
        v = jnp.where(jnp.isnan(v), last, v)
        return v, v

    _, value = jax.lax.scan(fill, first, value)
    return jnp.resize(value, (points,)) if k < points else value


def random_returns(task: EnvTask, budget: int | None, keys: jax.Array,
                   overrides: dict | None = None) -> np.ndarray:
    """Mean return of a uniformly random policy over a run of the same length, per key
    (the "0" of PPO-normalized scores). ``overrides``: ``{parameter: [len(keys)]}``, each key's
    level of the task (``make_level_train``'s overrides, one row per key)."""
    fn = _random_fn(task, int(budget or task.steps))
    return np.asarray(fn(keys, overrides or {}), np.float64)


@functools.lru_cache(maxsize=64)
def _random_fn(task: EnvTask, steps: int):
    env, default_params = task.make_env()
    _, n_actions = task.spaces()
    n_envs = task.num_envs
    length = task.updates(steps) * task.num_steps
    step_envs = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    def run(key, overrides):
        env_params = default_params.replace(**overrides) if overrides else default_params
        k_reset, k_run = jax.random.split(key)
        _, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(k_reset, n_envs),
                                                          env_params)

        def body(carry, _):
            state, key = carry
            key, k_a, k_s = jax.random.split(key, 3)
            action = jax.random.randint(k_a, (n_envs,), 0, n_actions)
            _, state, reward, term, trunc, _ = step_envs(jax.random.split(k_s, n_envs), state,
                                                         action, env_params)
            return (state, key), (reward, term | trunc)

        _, (reward, done) = jax.lax.scan(body, (state, k_run), None, length)
        s, total, running = episode_returns(reward, done, jnp.zeros(n_envs))
        return jnp.where(total > 0, s / jnp.maximum(total, 1), jnp.mean(running))

    return jax.jit(jax.vmap(run))

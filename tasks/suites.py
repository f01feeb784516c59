"""The task registry and the suites: names, factories, versions and rows for ``lab tasks``.

Every task is built by a factory on first use and cached, so a suite's tasks keep their identity
(and jit caches) for the whole process. A suite's version is a short hash of its tasks' names,
families, budgets, floors and configs, so editing a task changes the version of every suite that
holds it, and with it every cache key built from that version.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
from collections.abc import Callable, Iterable

import numpy as np

from .base import Task, scaled
from .charlm import make_charlm_mlp, make_charlm_transformer, make_markov_transformer
from .digits import make_digits, make_digits_cnn
from .levels import heldout_seed, level_task
from .mnist1d import make_mnist1d_cnn, make_mnist1d_mlp
from .quadratic import make_quadratic
from .rl import make_env_task
from .rosenbrock import make_rosenbrock
from .teacher_student import make_teacher_student

# Bump when task code changes behaviour in a way that the configs do not show.
TASKS_CODE_VERSION = "1"

_p = functools.partial

TASKS: dict[str, Callable[[], Task]] = {
    # smoke: seconds for a whole population
    "quadratic_ill_8": _p(make_quadratic, "quadratic_ill_8", dim=8, cond=1e2, steps=40),
    "teacher_student_tiny": _p(make_teacher_student, "teacher_student_tiny", in_dim=4,
                               out_dim=2, teacher_hidden=(8,), hidden=(8,), batch_size=32,
                               steps=40),
    "digits_mlp_tiny": _p(make_digits, "digits_mlp_tiny", hidden=(16,), steps=50,
                          batch_size=64),
    # train
    # scale=0.05 puts tuned Adam's learning rate inside the grid (at scale 1 it sat at 1.0)
    "quadratic_ill_16": _p(make_quadratic, "quadratic_ill_16", dim=16, cond=1e3, scale=0.05,
                           steps=150),
    "quadratic_noisy_16": _p(make_quadratic, "quadratic_noisy_16", dim=16, cond=1e3,
                             noise=0.3, seed=1, scale=0.05, steps=150),
    "rosenbrock_2d": _p(make_rosenbrock, "rosenbrock_2d", dim=2, steps=200),
    "teacher_student_mlp": _p(make_teacher_student, "teacher_student_mlp", steps=200),
    "digits_mlp": _p(make_digits, "digits_mlp", hidden=(64,), steps=200),
    "mnist1d_mlp": _p(make_mnist1d_mlp, "mnist1d_mlp", hidden=(64,), steps=200),
    # train-wide: the held-out families' shapes (deeper and wider MLP, CNN, transformer, a longer
    # Rosenbrock chain) on the train side, on data and sizes no held-out task has
    "digits_mlp_deep": _p(make_digits, "digits_mlp_deep", hidden=(64, 64, 64), steps=200),
    "digits_cnn": _p(make_digits_cnn, "digits_cnn", channels=(8, 16), steps=200,
                     batch_size=64),
    "markov_transformer": _p(make_markov_transformer, "markov_transformer", context=16,
                             width=16, mlp=32, batch_size=16, steps=200),
    "rosenbrock_4d": _p(make_rosenbrock, "rosenbrock_4d", dim=4, steps=200),
    # train-wide-chain: a 6-D chain at the held-out chain's 300 steps (no held-out task has 6-D)
    "rosenbrock_6d": _p(make_rosenbrock, "rosenbrock_6d", dim=6, steps=300),
    # train-wide-mnist1d: a wider two-layer MLP and a narrow 1-D CNN on MNIST-1D (train's
    # mnist1d_mlp's data; neither is a held-out task's model): a data set no train-wide network
    # memorizes in 800 steps, where a rule that stalls at long horizons shows it
    "mnist1d_mlp_wide": _p(make_mnist1d_mlp, "mnist1d_mlp_wide", hidden=(96, 96), steps=200),
    "mnist1d_cnn_narrow": _p(make_mnist1d_cnn, "mnist1d_cnn_narrow", channels=(8, 8), kernel=3,
                             steps=200),
    # train-scaled: two train tasks with their loss 1000x (gradients 1000x larger); a rule that
    # is not invariant to the loss's scale cannot serve both versions with one learning rate
    "quadratic_ill_16_x1e3": lambda: scaled(get_task("quadratic_ill_16"), 1e3,
                                            "quadratic_ill_16_x1e3"),
    "digits_mlp_x1e3": lambda: scaled(get_task("digits_mlp"), 1e3, "digits_mlp_x1e3"),
    # heldout
    "digits_mlp_long": _p(make_digits, "digits_mlp_long", hidden=(64,), steps=800),
    "mnist1d_mlp_deep": _p(make_mnist1d_mlp, "mnist1d_mlp_deep", hidden=(128, 128, 128),
                           steps=200),
    "mnist1d_cnn": _p(make_mnist1d_cnn, "mnist1d_cnn", steps=200),
    "rosenbrock_chain_8": _p(make_rosenbrock, "rosenbrock_chain_8", dim=8, steps=300),
    "quadratic_ill_64": _p(make_quadratic, "quadratic_ill_64", dim=64, cond=1e4, seed=2,
                           scale=0.05, steps=200),
    "charlm_mlp": _p(make_charlm_mlp, "charlm_mlp", steps=300),
    "charlm_transformer": _p(make_charlm_transformer, "charlm_transformer", steps=300),
    # RL (gymnax + PPO, budgets in environment steps; PureJaxRL's settings, tanh 64x2)
    "cartpole_smoke": _p(make_env_task, "cartpole_smoke", "CartPole-v1", steps=16_384),
    "cartpole": _p(make_env_task, "cartpole", "CartPole-v1", steps=49_152),
    "acrobot": _p(make_env_task, "acrobot", "Acrobot-v1", steps=49_152),
    "catch": _p(make_env_task, "catch", "Catch-bsuite", steps=24_576),
    # held out: MinAtar at short budgets (16 envs x 128 steps per update)
    "breakout_minatar": _p(make_env_task, "breakout_minatar", "Breakout-MinAtar",
                           steps=98_304, num_envs=16, lr=1e-3),
    "space_invaders_minatar": _p(make_env_task, "space_invaders_minatar",
                                 "SpaceInvaders-MinAtar", steps=98_304, num_envs=16, lr=1e-3),
    "asterix_minatar": _p(make_env_task, "asterix_minatar", "Asterix-MinAtar", steps=98_304,
                          num_envs=16, lr=1e-3),
}


def _heldout_level(base: str, k: int) -> Task:
    """``base`` at the k-th held-out level (``tasks.levels``: a seed no search draws)."""
    return level_task(get_task(base), heldout_seed(k), name=f"{base}_level_h{k}")


HELDOUT_LEVELS = 3  # per environment of rl-levels
for _base in ("cartpole", "acrobot"):
    for _k in range(HELDOUT_LEVELS):
        TASKS[f"{_base}_level_h{_k}"] = _p(_heldout_level, _base, _k)

# train plus the held-out families' shapes (lab's learned optimizers meta-train on it)
_TRAIN_WIDE = ("quadratic_ill_16", "quadratic_noisy_16", "rosenbrock_2d", "teacher_student_mlp",
               "digits_mlp", "mnist1d_mlp", "digits_mlp_deep", "digits_cnn", "markov_transformer",
               "rosenbrock_4d")

SUITES: dict[str, tuple[str, ...]] = {
    "smoke": ("quadratic_ill_8", "teacher_student_tiny", "digits_mlp_tiny"),
    "train": ("quadratic_ill_16", "quadratic_noisy_16", "rosenbrock_2d", "teacher_student_mlp",
              "digits_mlp", "mnist1d_mlp"),
    "train-wide": _TRAIN_WIDE,
    # train-wide plus two MNIST-1D networks (learned optimizers at long horizons)
    "train-wide-mnist1d": (*_TRAIN_WIDE, "mnist1d_mlp_wide", "mnist1d_cnn_narrow"),
    # train-wide plus a longer chain at a longer horizon (program search: the 4-D chain at 200
    # steps lets rules through that fail the held-out 8-D one at 300)
    "train-wide-chain": (*_TRAIN_WIDE, "rosenbrock_6d"),
    # train plus two of its tasks at 1000x the loss scale (program search against rules whose
    # steps grow with the gradient)
    "train-scaled": ("quadratic_ill_16", "quadratic_noisy_16", "rosenbrock_2d",
                     "teacher_student_mlp", "digits_mlp", "mnist1d_mlp", "quadratic_ill_16_x1e3",
                     "digits_mlp_x1e3"),
    "heldout": ("digits_mlp_long", "mnist1d_mlp_deep", "mnist1d_cnn", "rosenbrock_chain_8",
                "quadratic_ill_64", "charlm_mlp", "charlm_transformer"),
    "rl-smoke": ("cartpole_smoke",),
    "rl-train": ("cartpole", "acrobot", "catch"),
    "rl-heldout": ("breakout_minatar", "space_invaders_minatar", "asterix_minatar"),
    # the environments with levels (tasks.levels), and levels of them no search samples
    "rl-levels": ("cartpole", "acrobot"),
    "rl-levels-heldout": tuple(f"{b}_level_h{k}" for b in ("cartpole", "acrobot")
                               for k in range(HELDOUT_LEVELS)),
}


def is_rl_suite(name: str) -> bool:
    """RL suites are prefixed ``rl-`` (DESIGN.md); their tasks are ``tasks.rl.EnvTask``."""
    return name.startswith("rl-")


DOMAINS = ("supervised", "rl")


def domain_of(suite: str) -> str:
    """The domain of a suite: ``rl`` (environments, returns) or ``supervised`` (losses). A kind
    trains and replays on the suites of its domain (``lab.core.kind.Kind.domain``)."""
    return "rl" if is_rl_suite(suite) else "supervised"

_CACHE: dict[str, Task] = {}


def _unknown(kind: str, name: str, known: Iterable[str]) -> ValueError:
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(map(repr, close))}?" if close else \
        f"known {kind}s: {', '.join(known)}"
    return ValueError(f"unknown {kind} {name!r}; {hint}")


def get_task(name: str) -> Task:
    """The task called ``name``, built on first use and cached.

    Raises:
      ValueError: for an unknown name, naming the closest valid names.
    """
    if name not in TASKS:
        raise _unknown("task", name, TASKS)
    if name not in _CACHE:
        task = TASKS[name]()
        if task.name != name:
            raise RuntimeError(f"factory for {name!r} built a task named {task.name!r}")
        _CACHE[name] = task
    return _CACHE[name]


def get_suite(name: str) -> list[Task]:
    """The tasks of suite ``name``, in order.

    Raises:
      ValueError: for an unknown suite, naming the closest valid names.
    """
    if name not in SUITES:
        raise _unknown("suite", name, SUITES)
    return [get_task(t) for t in SUITES[name]]


def _plain(x):
    if isinstance(x, np.generic | np.ndarray):
        return x.tolist()
    raise TypeError(f"task config values must be JSON numbers, strings or lists, got {type(x)}")


def task_record(task: Task) -> dict:
    """What defines a task for versioning: name, family, budget, floor, config, eval split."""
    return {"name": task.name, "family": task.family, "steps": int(task.steps),
            "floor": float(task.floor), "config": task.config,
            "eval": task.eval_loss is not None}


def tasks_version(tasks: Iterable[Task]) -> str:
    """A 12-hex-digit hash of ``task_record`` of each task (in order) and the code version."""
    doc = {"code": TASKS_CODE_VERSION, "tasks": [task_record(t) for t in tasks]}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=_plain)
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def task_version(task: Task) -> str:
    """The version hash of one task (``tasks_version([task])``)."""
    return tasks_version([task])


def suite_version(name: str) -> str:
    """The version hash of suite ``name``; it changes whenever one of its tasks changes."""
    return tasks_version(get_suite(name))


def suites_of(name: str) -> list[str]:
    """The suites that hold task ``name``."""
    return [s for s, names in SUITES.items() if name in names]


def task_rows() -> list[dict]:
    """One row per registered task: name, family, suites, parameter count and budget (inner
    steps; environment steps for RL tasks, which also give their environment)."""
    rows = []
    for name in TASKS:
        task = get_task(name)
        rows.append({"name": name, "family": task.family, "suites": suites_of(name),
                     "params": task.param_count(), "steps": int(task.steps)})
        if getattr(task, "env_id", None):
            rows[-1]["env"] = task.env_id
    return rows

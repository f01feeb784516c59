"""Tiny inner problems and suites for the tests: a noisy quadratic (suite ``tiny``) and a short
CartPole (suite ``rl-tiny``), registered in the task registry by ``register()``.

Tests run them in-process (``conftest`` registers them) and in ``lab`` subprocesses (started with
``lab_command``, which registers them before the CLI runs), so a launch, a SIGKILL and a resume
all see the same suites.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

TINY_DIM = 16
TINY_STEPS = 40
TINY_NOISE = 0.1
HERE = Path(__file__).resolve().parent


def make_tiny_task(dim: int = TINY_DIM, steps: int = TINY_STEPS, noise: float = TINY_NOISE,
                   name: str = "tiny_quadratic"):
    """A diagonal quadratic ``0.5 sum(h * (x - y)^2)`` whose target ``y`` is noisy per batch.

    Curvatures ``h`` are log-spaced in [0.1, 1]; the optimum is fixed; each batch adds
    ``noise * N(0, 1)`` to the optimum. The eval loss is the exact, noise-free loss (floor 0).
    """
    from tasks.base import Task
    rng = np.random.default_rng(0)
    h = jnp.asarray(np.logspace(-1.0, 0.0, dim), jnp.float32)
    optimum = jnp.asarray(rng.standard_normal(dim), jnp.float32)

    def init(key):
        return {"x": jax.random.normal(key, (dim,), jnp.float32)}

    def loss(params, batch):
        return 0.5 * jnp.sum(h * (params["x"] - batch) ** 2)

    def batch(key, step):
        return optimum + noise * jax.random.normal(key, (dim,), jnp.float32)

    def eval_loss(params):
        return 0.5 * jnp.sum(h * (params["x"] - optimum) ** 2)

    return Task(name=name, family="test", init=init, loss=loss, batch=batch, steps=steps,
                eval_loss=eval_loss, floor=0.0,
                config={"dim": dim, "noise": noise, "steps": steps})


def make_tiny_env():
    """CartPole for 512 environment steps: 4 envs x 32 steps per update, 4 updates."""
    from tasks.rl import make_env_task
    return make_env_task("cartpole_tiny", "CartPole-v1", steps=512, num_envs=4, num_steps=32,
                         epochs=1, minibatches=2)


SUITES = {"tiny": ("tiny_quadratic",), "rl-tiny": ("cartpole_tiny",)}
FACTORIES = {"tiny_quadratic": make_tiny_task, "cartpole_tiny": make_tiny_env}


def register() -> None:
    """Adds the tiny tasks and suites to the task registry (idempotent)."""
    import tasks.suites as registry
    registry.TASKS.update(FACTORIES)
    registry.SUITES.update(SUITES)


def suite_of(domain: str) -> str:
    """The tiny suite of a kind's domain."""
    return "rl-tiny" if domain == "rl" else "tiny"


KILL_AT = "LAB_TEST_KILL_AT_GENERATION"


def kill_at(generation: int) -> None:
    """Makes this process SIGKILL itself in the middle of ``generation``: once its candidates
    are scored, before the store commits it (a crash at a place the test can name); over
    several processes, any process, at the same place."""
    import os
    import signal

    from lab.core.store import Store
    real = Store.record_generation

    def record_generation(self, run_id, idx, *args, **kwargs):
        if idx == generation:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, run_id, idx, *args, **kwargs)
    Store.record_generation = record_generation

    # over several processes the others record through process 0's store: the same place
    from lab.core.hosts import SharedStore
    shared = SharedStore.__getattr__

    def getattr_(self, name):
        method = shared(self, name)
        if name != "record_generation":
            return method

        def call(run_id, idx, *args, **kwargs):
            if idx == generation:
                os.kill(os.getpid(), signal.SIGKILL)
            return method(run_id, idx, *args, **kwargs)
        return call
    SharedStore.__getattr__ = getattr_


def boot() -> None:
    """What a ``lab`` subprocess of the tests runs first: the tiny suites, and the kill of
    ``LAB_TEST_KILL_AT_GENERATION`` when it is set."""
    import os
    register()
    if os.environ.get(KILL_AT):
        kill_at(int(os.environ[KILL_AT]))


# ``python -c BOOT ARGS...``: the lab command after ``boot()``
BOOT = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import tiny; tiny.boot(); "
        "from lab.cli import main; sys.exit(main(sys.argv[1:]))")


def lab_command(*args: str) -> list[str]:
    return [sys.executable, "-c", BOOT, *args]

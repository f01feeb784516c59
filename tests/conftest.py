"""Test-wide JAX setup: CPU only, 8 fake devices, shared tiny task and meshes.

This module runs before any test module imports code that touches a device, so the platform and
the device count are fixed here (``jax_num_cpu_devices`` must be set before the backend starts).
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests run tiny programs many times over: XLA's backend optimizations cost far more compile time
# than they save at run time here (about 5x faster compiles).
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402

import lab  # noqa: E402,F401  (sets XLA flags of its own before JAX starts a backend)

jax.config.update("jax_num_cpu_devices", 8)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tasks.base import Task  # noqa: E402

TINY_DIM = 16
TINY_STEPS = 40
TINY_NOISE = 0.1


def make_tiny_task(dim: int = TINY_DIM, steps: int = TINY_STEPS, noise: float = TINY_NOISE,
                   name: str = "tiny_quadratic") -> Task:
    """A diagonal quadratic ``0.5 sum(h * (x - y)^2)`` whose target ``y`` is noisy per batch.

    Curvatures ``h`` are log-spaced in [0.1, 1]; the optimum is fixed; each batch adds
    ``noise * N(0, 1)`` to the optimum. The eval loss is the exact, noise-free loss (floor 0).
    """
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


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture(scope="session")
def tiny_task() -> Task:
    return make_tiny_task()


@pytest.fixture(scope="session")
def one_device_mesh():
    from lab.evaluate import make_mesh
    return make_mesh(1)


@pytest.fixture(scope="session")
def eight_device_mesh():
    from lab.evaluate import make_mesh
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (fake CPU) devices")
    return make_mesh(8)

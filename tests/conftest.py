"""Test-wide setup: CPU only, 8 fake devices, the lab's kinds and the example plugin kind
registered, tiny suites, and the shared helpers of the CLI and subprocess tests.

This module runs before any test module imports code that touches a device, so the platform and
the device count are fixed here (``jax_num_cpu_devices`` must be set before the backend starts).
The example plugin (``examples/kind_plugin``) is registered the way an installed package is: a
``.dist-info`` folder with its entry point in group ``lab.kinds`` on ``sys.path`` (and on the
``PYTHONPATH`` of every ``lab`` subprocess).
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests run tiny programs many times over: XLA's backend optimizations cost far more compile time
# than they save at run time here (about 5x faster compiles).
FAST_XLA = "--xla_backend_optimization_level=0"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + FAST_XLA).strip()

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_SOURCE = ROOT / "examples" / "kind_plugin"


def _plugin_path() -> Path:
    """A folder holding the example plugin's distribution metadata (its entry point)."""
    folder = Path(tempfile.mkdtemp(prefix="lab-plugin-"))
    info = folder / "lab_random_search-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lab-random-search\n"
                                   "Version: 0.1.0\n")
    (info / "entry_points.txt").write_text("[lab.kinds]\n"
                                           "random_search = lab_random_search:KIND\n")
    return folder


PLUGIN_PATH = _plugin_path()
atexit.register(shutil.rmtree, PLUGIN_PATH, ignore_errors=True)  # each process made its own
sys.path[:0] = [str(PLUGIN_PATH), str(PLUGIN_SOURCE)]
DEVICES = 8
# One persistent compile cache for the session, shared with the ``lab`` subprocesses: they run
# with as many CPU devices and the same XLA flags, so what this process compiled (a kind's launch,
# say) they load instead of compiling again.
# The first process to import this module (pytest-xdist's controller, or pytest alone) makes the
# folder and names it in the environment its workers inherit; it removes it when the session ends.
_CACHE_ENV = "LAB_TEST_COMPILE_CACHE"
_OWNS_CACHE = _CACHE_ENV not in os.environ
if _OWNS_CACHE:
    os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="lab-jax-cache-")
COMPILE_CACHE = Path(os.environ[_CACHE_ENV])
COMPILE_CACHE.mkdir(exist_ok=True)


def pytest_sessionfinish(session):
    """The compile cache goes with the session (the workers have finished by then)."""
    if _OWNS_CACHE:
        shutil.rmtree(COMPILE_CACHE, ignore_errors=True)

import jax  # noqa: E402

import lab  # noqa: E402,F401  (sets XLA flags of its own before JAX starts a backend)

jax.config.update("jax_num_cpu_devices", DEVICES)
jax.config.update("jax_compilation_cache_dir", str(COMPILE_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)

import pytest  # noqa: E402
import tiny  # noqa: E402  (tests/tiny.py: the tiny suites)

import lab.kinds  # noqa: E402,F401  (registers the lab's own kinds)
from tasks.base import Task  # noqa: E402

tiny.register()
make_tiny_task = tiny.make_tiny_task


# ---- the lab command, in a subprocess ----------------------------------------------------------

def lab_env(**extra: str) -> dict:
    """The environment of ``lab`` subprocesses: this process's CPU devices, XLA flags and compile
    cache, the plugin importable, no inherited store."""
    env = dict(os.environ)
    env.update({"JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": str(DEVICES),
                "XLA_FLAGS": FAST_XLA, "LAB_JAX_CACHE": str(COMPILE_CACHE),
                "PYTHONPATH": os.pathsep.join([str(PLUGIN_PATH), str(PLUGIN_SOURCE),
                                               env.get("PYTHONPATH", "")]).rstrip(os.pathsep)})
    env.pop("LAB_STORE", None)
    env.update(extra)
    return env


def run_lab(args, env: dict, check: bool = True, timeout: float = 600
            ) -> subprocess.CompletedProcess:
    """``lab ARGS`` in a subprocess (with the tiny suites), waited for."""
    proc = subprocess.run(tiny.lab_command(*args), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"lab {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def spawn_lab(args, env: dict, log: Path) -> subprocess.Popen:
    """``lab ARGS`` started in a subprocess, its output in ``log`` (a file, not a pipe: a
    killed child leaves no reader waiting)."""
    with open(log, "w") as out:
        return subprocess.Popen(tiny.lab_command(*args), cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)


def strict_json(text: str):
    """One strict JSON document (NaN and Infinity refused)."""
    def refuse(c):
        raise ValueError(f"non-strict JSON constant {c}")
    return json.loads(text, parse_constant=refuse)


# ---- executables released before the process runs out of memory maps ---------------------------
# Every live XLA:CPU executable keeps its kernels' code mapped (about three maps per kernel). A
# worker that runs hundreds of tests keeps thousands of executables in JAX's caches, and past the
# kernel's vm.max_map_count (65530 by default) the next compile's mmap fails and XLA segfaults
# (seen in the slow tests at 64k maps). After a test that leaves the process above MAP_LIMIT maps,
# JAX's caches are cleared: what a later test needs again is recompiled, or loaded from the
# persistent compile cache.
MAP_LIMIT = 20000
_MAPS = Path("/proc/self/maps")


def memory_maps() -> int:
    """The number of memory maps of this process (0 where /proc does not say)."""
    try:
        return _MAPS.read_bytes().count(b"\n")
    except OSError:
        return 0


@pytest.fixture(autouse=True)
def _release_executables():
    yield
    if memory_maps() > MAP_LIMIT:
        jax.clear_caches()
        gc.collect()


# ---- fixtures ----------------------------------------------------------------------------------

@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture(scope="session")
def tiny_task() -> Task:
    return make_tiny_task()


@pytest.fixture(scope="session")
def one_device_mesh():
    from lab.core.evaluate import make_mesh
    return make_mesh(1)


@pytest.fixture(scope="session")
def eight_device_mesh():
    from lab.core.evaluate import make_mesh
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (fake CPU) devices")
    return make_mesh(8)


@pytest.fixture
def program_generations(monkeypatch):
    """Watches a program search: after each generation, the compiled-cache size of each task's
    training function (``sizes``: [1, 1, ...] while nothing recompiles) and the evolution
    (``evolutions``)."""
    from lab.core.evaluate import compiled
    from lab.kinds.program import evolution
    seen = {"sizes": [], "evolutions": []}
    real_step = evolution.Evolution.step

    def step(self, g):
        out = real_step(self, g)
        seen["evolutions"].append(self)
        seen["sizes"].append([compiled(t, self.scorer.mesh)._cache_size()
                              for t in self.scorer.trains.values()])
        return out
    monkeypatch.setattr(evolution.Evolution, "step", step)
    return seen


@pytest.fixture
def store(tmp_path):
    from lab.core.store import Store
    with Store(tmp_path / "lab.db") as s:
        yield s


@pytest.fixture
def cli(tmp_path, capsys, monkeypatch):
    """``cli(*args) -> (exit code, stdout, stderr)``: the ``lab`` command in this process, on a
    store in ``tmp_path``, with no persistent compile cache."""
    from lab.cli import main
    monkeypatch.setenv("LAB_JAX_CACHE", "")
    db = str(tmp_path / "lab.db")

    def run(*args: str):
        capsys.readouterr()
        rc = main([*args, "--store", db] if args and args[0] not in ("tasks", "bench", "kinds")
                  else list(args))
        out = capsys.readouterr()
        return rc, out.out, out.err
    run.store = db
    return run

"""RL benchmark: PPO on gymnax (the lab's RL inner loop), one agent, a population, and LPO's cost.

What a drift search (``kind: drift``) spends its time on: whole PPO runs,
``lab.kinds.drift.ppo.make_train``, vmapped over candidates by the core's evaluator
(``lab.core.evaluate.evaluate`` with ``make_mesh``). Every measurement here goes through that very
path; a single agent is a population of 1. The task is CartPole-v1 with the PureJaxRL reference
configuration (``tasks.rl.make_env_task``'s defaults: 4 envs x 128 steps per update, 4 epochs x 4
minibatches, Adam 2.5e-4 annealed, separate tanh 64x2 actor and critic), ``steps`` environment steps
per run (5e5 by default). Three runs are timed:

* clip: one PPO-clip agent (``ppo_clip()``, eps 0.2), one seed;
* lpo: one LPO agent (``lpo(LPOSpec(hidden))``'s default genome: a residual on PPO-clip with a
  zero output layer, 8 x hidden + hidden weights, 1,152 at hidden 128), one seed;
* program: one agent whose drift is PPO-clip as a program (``seeds/drift/ppo_clip.prog``) run by
  the program interpreter inside PPO's loss (``objectives.programs()``, the family a drift
  program search scores, padded to ``program_statements``), one seed;
* level: one PPO-clip agent on a level of CartPole (``tasks.levels``, seed ``LEVEL_SEED``), its
  physics traced inputs (``make_level_train``: what a curriculum runs), one seed;
* population: ``population`` LPO candidates vmapped, the default genome plus Gaussian noise
  (``SIGMA``, 0.03) on every weight (an LPO search's generation), one seed each (shared, as the
  evaluation seeds are).

A run does ``env_steps = updates x num_envs x num_steps`` environment steps, ``updates = steps //
512`` (at least 1): 499,712 for 5e5. The first call of each (warm-up) compiles;
``*compile_seconds`` is that first call minus a steady-state call (floored at 1e-6;
``*first_call_seconds`` is the raw figure). Steady-state seconds are the median of ``repeats``
later calls (``population_repeats`` for the population), clip and lpo interleaved so drift hits
both alike; ``evaluate`` returns numpy arrays, so every call is blocked on its results.

Keys (plain numbers unless said):

* ``env_steps_per_second``: the clip agent's ``env_steps / seconds`` (headline);
* ``population_env_steps_per_second``: ``population x env_steps / population_seconds``
  (headline);
* ``drift_cost_vs_clip``: ``lpo_seconds / clip_seconds`` (> 1: the drift network costs more);
* ``drift_program_cost_vs_clip``: ``program_seconds / clip_seconds`` (the interpreter's cost:
  the same function as the closed form, run as a program); ``program_statements``;
* ``level_cost_vs_clip``: ``level_seconds / clip_seconds`` (what traced environment parameters
  cost against the default ones baked in); ``level_seed``, ``level_final_return``;
* ``lpo_env_steps_per_second``: the lpo agent's ``env_steps / seconds``;
* ``population_speedup_vs_single``: ``population_env_steps_per_second /
  lpo_env_steps_per_second`` (what vmapping candidates buys over running them one by one);
* ``clip_seconds``, ``lpo_seconds``, ``program_seconds``, ``level_seconds``,
  ``population_seconds``: steady-state
  seconds per call;
* ``clip_compile_seconds``, ``lpo_compile_seconds``, ``program_compile_seconds``,
  ``population_compile_seconds`` and the matching ``*_first_call_seconds``;
* ``final_return``: the clip agent's final return (mean return of the episodes ending in the last
  tenth of the run: a sanity number, several hundred for CartPole at 5e5 steps; the maximum is
  500); ``lpo_final_return``, ``program_final_return``, ``population_final_return`` (the
  candidates' mean) likewise;
* ``diverged``: the fraction of all timed runs that diverged (0 expected);
* ``steps`` (asked), ``env_steps`` (done), ``updates``, ``num_envs``, ``num_steps``,
  ``population``, ``repeats``, ``population_repeats``, ``hidden``, ``lpo_weights``, ``sigma``,
  ``devices``, ``total_seconds``;
* strings: ``benchmark`` ("rl"), ``env`` ("CartPole-v1"), ``objective`` (the lpo family name),
  ``device``, ``backend``, ``jax_version``.

With ``--peer PATH`` (a local copy of PureJaxRL's ``purejaxrl/ppo.py``, patched for gymnax 1.0
outside this repository, never committed), its ``make_train`` runs the same configuration (built
from the task's fields, ``DEBUG`` off) in the same process, interleaved with ours: one agent
against our clip agent, and ``--peer-seeds`` seeds vmapped (8) against our clip agent over as many
seeds (one candidate, ``seeds`` evaluation seeds). More keys then:

* ``vs_peer``: PureJaxRL's seconds per run over ours, both timed in the side-by-side calls
  (>= 1: ours is as fast);
* ``seeds_vs_peer``: the same for the vmapped seeds (``seeds_env_steps_per_second``,
  ``peer_seeds_env_steps_per_second``);
* ``peer_seconds``, ``peer_seeds_seconds``, ``seeds_seconds``, their ``*_compile_seconds``,
  ``peer_final_return`` (PureJaxRL's own metric, the same last tenth), ``peer_seeds``,
  ``peer_path``.

The persistent XLA compilation cache is off, so compile times are real ones.

Usage::

    python -m benchmarks.rl                       # a table
    lab bench rl --json                           # one strict JSON document on stdout
    lab bench rl --steps 20000 --population 4 --repeats 1   # quick
    lab bench rl --json --peer ~/purejaxrl/purejaxrl/ppo.py  # beside PureJaxRL
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

import lab  # noqa: F401  (sets an XLA CPU flag that must be in place before a backend starts)
from benchmarks import positive_int
from tasks.levels import stacked_overrides

ENV_ID = "CartPole-v1"
# the figures the benchmark gates on (plain numbers), and a run of three PPO compiles (the tests')
GATED = ("env_steps_per_second", "population_env_steps_per_second", "drift_cost_vs_clip")
SMALL = ("--steps", "2048", "--population", "2", "--repeats", "1", "--population-repeats", "1",
         "--hidden", "4", "--devices", "1")
DEFAULT_STEPS = 500_000   # PureJaxRL's CartPole budget
DEFAULT_POPULATION = 16
DEFAULT_REPEATS = 2       # steady-state calls of each single agent
DEFAULT_POPULATION_REPEATS = 1
DEFAULT_HIDDEN = 128      # lpo()'s default: 8 x 128 + 128 = 1,152 weights
DEFAULT_PEER_SEEDS = 8    # seeds vmapped in the side-by-side run with PureJaxRL
SIGMA = 0.03              # the spread of the LPO population
SEED = 0
LEVEL_SEED = 3            # the CartPole level the "level" agent runs (tasks.levels)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def lpo_population(population: int, hidden: int = DEFAULT_HIDDEN, sigma: float = SIGMA,
                   seed: int = SEED):
    """(objective, genomes): ``population`` LPO drifts around the family's default genome."""
    from lab.kinds.drift.objectives import LPOSpec, lpo

    objective = lpo(LPOSpec(hidden=hidden))
    leaves, treedef = jax.tree.flatten(objective.genome)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    genomes = treedef.unflatten([
        np.asarray(x, np.float32)[None]
        + sigma * np.asarray(jax.random.normal(k, (population, *np.shape(x))), np.float32)
        for x, k in zip(leaves, keys, strict=True)])
    return objective, genomes


class _Agent:
    """One timed population (1 for a single agent) of PPO runs through ``evaluate``."""

    def __init__(self, name, task, objective, genomes, steps, mesh, seeds: int = 1,
                 overrides: dict | None = None):
        from lab.core.evaluate import task_keys
        from lab.kinds.drift.ppo import make_level_train, make_train

        self.name, self.genomes, self.mesh = name, genomes, mesh
        self.population = int(jax.tree.leaves(genomes)[0].shape[0])
        self.train = make_train(task, objective, steps)
        if overrides is not None:  # a level of the task, its parameters traced inputs
            self.train = make_level_train(task, objective, steps)
            self.genomes = (genomes, overrides)
        self.keys = task_keys(seeds, self.population)  # drawn before any timing
        jax.block_until_ready(self.keys)
        self.metrics: dict[str, np.ndarray] = {}

    def call(self) -> float:
        """One evaluation of every candidate; returns its wall-clock seconds (blocked)."""
        from lab.core.evaluate import evaluate

        t0 = time.perf_counter()
        self.metrics = evaluate(self.train, self.genomes, self.keys, self.mesh)
        return time.perf_counter() - t0


def load_peer(path: str | Path):
    """PureJaxRL's ``ppo.py`` (a file, or a folder holding it) as a module; its folder is on the
    import path while it loads (for its ``wrappers``). ValueError, naming the file, if it cannot
    be imported or has no ``make_train``."""
    path = Path(path).expanduser()
    file = path / "ppo.py" if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"--peer {path}: no such file (a local copy of PureJaxRL's "
                         f"purejaxrl/ppo.py, patched for gymnax 1.0)")
    spec = importlib.util.spec_from_file_location("purejaxrl_ppo", file)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(file.parent))
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - reported as one clear error
        raise ValueError(f"--peer {file}: cannot import it: {type(e).__name__}: {e}") from None
    finally:
        sys.path.remove(str(file.parent))
    if not callable(getattr(module, "make_train", None)):
        raise ValueError(f"--peer {file}: has no make_train(config)")
    return module


def peer_config(task, steps: int) -> dict:
    """PureJaxRL's CartPole config, every number taken from our task (the same run)."""
    return {"LR": task.lr, "NUM_ENVS": task.num_envs, "NUM_STEPS": task.num_steps,
            "TOTAL_TIMESTEPS": steps, "UPDATE_EPOCHS": task.epochs,
            "NUM_MINIBATCHES": task.minibatches, "GAMMA": task.gamma,
            "GAE_LAMBDA": task.gae_lambda, "CLIP_EPS": 0.2, "ENT_COEF": task.ent_coef,
            "VF_COEF": task.vf_coef, "MAX_GRAD_NORM": task.max_grad_norm,
            "ACTIVATION": task.activation, "ENV_NAME": task.env_id,
            "ANNEAL_LR": task.anneal_lr, "DEBUG": False}


class _Peer:
    """PureJaxRL's ``make_train`` jitted (vmapped over ``seeds`` keys when more than one)."""

    def __init__(self, name, module, config, seeds: int):
        self.name, self.seeds = name, seeds
        train = module.make_train(dict(config))
        self.fn = jax.jit(train if seeds == 1 else jax.vmap(train))
        key = jax.random.PRNGKey(SEED)
        self.key = key if seeds == 1 else jax.random.split(key, seeds)
        self.out = None

    def call(self) -> float:
        t0 = time.perf_counter()
        self.out = jax.block_until_ready(self.fn(self.key))
        return time.perf_counter() - t0

    def final_return(self) -> float:
        """The mean return of the episodes that ended in the last tenth of the updates."""
        m = self.out["metrics"]
        ret = np.asarray(m["returned_episode_returns"])
        ended = np.asarray(m["returned_episode"]).astype(bool)
        axis = 1 if self.seeds > 1 else 0  # the updates axis
        tail = max(1, ret.shape[axis] // 10)
        ret, ended = (np.take(x, range(ret.shape[axis] - tail, ret.shape[axis]), axis=axis)
                      for x in (ret, ended))
        return float(ret[ended].mean()) if ended.any() else float("nan")


def _steady(agents: Sequence, repeats: int) -> tuple[dict, dict]:
    """Warm-up calls (they compile), then ``repeats`` interleaved calls of each, so drift hits
    all alike; (first, median) seconds by name."""
    first = {}
    for a in agents:
        first[a.name] = a.call()
        _log(f"{a.name}: first call {first[a.name]:.2f}s")
    times = {a.name: [] for a in agents}
    for _ in range(repeats):
        for a in agents:
            times[a.name].append(a.call())
    return first, {k: float(statistics.median(v)) for k, v in times.items()}


def measure_peer(peer, one: _Agent, task, clip, steps: int, env_steps: int, mesh, repeats: int,
                 seeds: int) -> dict:
    """Ours (``one``: the clip agent, warm) against PureJaxRL, one agent and ``seeds`` seeds
    vmapped, interleaved."""
    config = peer_config(task, steps)
    many = _Agent("seeds", task, clip, one.genomes, steps, mesh, seeds=seeds)
    peer_one, peer_many = _Peer("peer", peer, config, 1), _Peer("peer_seeds", peer, config, seeds)
    first, steady = _steady((one, peer_one), repeats)
    f2, s2 = _steady((many, peer_many), repeats)
    first.update(f2)
    steady.update(s2)
    out = {"peer_env_steps_per_second": env_steps / steady["peer"],
           "seeds_env_steps_per_second": seeds * env_steps / steady["seeds"],
           "peer_seeds_env_steps_per_second": seeds * env_steps / steady["peer_seeds"],
           "vs_peer": steady["peer"] / steady["clip"],
           "seeds_vs_peer": steady["peer_seeds"] / steady["seeds"],
           "peer_final_return": peer_one.final_return(),
           "peer_seeds": int(seeds)}
    for name in ("peer", "peer_seeds", "seeds"):
        out[f"{name}_seconds"] = steady[name]
        out[f"{name}_compile_seconds"] = max(float(first[name]) - steady[name], 1e-6)
    _log(f"side by side: ours {steady['clip']:.3f}s vs PureJaxRL {steady['peer']:.3f}s "
         f"(vs_peer {out['vs_peer']:.2f}); {seeds} seeds: ours {steady['seeds']:.3f}s vs "
         f"{steady['peer_seeds']:.3f}s (seeds_vs_peer {out['seeds_vs_peer']:.2f}); PureJaxRL "
         f"final return {out['peer_final_return']:.1f}")
    return out


def run(steps: int = DEFAULT_STEPS, population: int = DEFAULT_POPULATION,
        repeats: int = DEFAULT_REPEATS, population_repeats: int = DEFAULT_POPULATION_REPEATS,
        hidden: int = DEFAULT_HIDDEN, devices: int = 0, peer: str | Path | None = None,
        peer_seeds: int = DEFAULT_PEER_SEEDS) -> dict:
    """Times one PPO-clip agent, one LPO agent and an LPO population on CartPole (and
    PureJaxRL's PPO beside ours with ``peer``).

    Args:
      steps: environment steps per run (rounded down to whole updates of 512, at least one).
      population: LPO candidates evaluated together.
      repeats: steady-state calls of each single agent; the median is reported.
      population_repeats: steady-state calls of the population; the median is reported.
      hidden: the LPO drift network's hidden units.
      devices: devices in the mesh (0 = all).
      peer: PureJaxRL's ``ppo.py`` (see the module docstring); None: ours alone.
      peer_seeds: seeds vmapped in the side-by-side run.

    Returns:
      A strict-JSON-able dict (see the module docstring).
    """
    from lab.core.evaluate import make_mesh
    from lab.core.rule import stack_genomes
    from lab.kinds.drift.objectives import ppo_clip
    from lab.kinds.drift.objectives import programs as drift_programs
    from tasks.rl import make_env_task

    if min(steps, population, repeats, population_repeats, hidden) < 1:
        raise ValueError(f"steps, population, repeats, population_repeats and hidden must be "
                         f">= 1, got {steps}, {population}, {repeats}, {population_repeats}, "
                         f"{hidden}")
    peer_module = load_peer(peer) if peer is not None else None  # fails before any timing
    # real compile times: no persistent compilation cache (the lab CLI leaves it off for bench)
    jax.config.update("jax_enable_compilation_cache", False)
    mesh = make_mesh(devices)
    t0 = time.perf_counter()

    task = make_env_task("cartpole_bench", ENV_ID, steps=steps)
    updates = task.updates(steps)
    env_steps = updates * task.batch_size
    clip = ppo_clip()
    objective, genomes = lpo_population(population, hidden)
    clip_agent = _Agent("clip", task, clip, stack_genomes([clip.genome]), steps, mesh)
    lpo_agent = _Agent("lpo", task, objective, stack_genomes([objective.genome]), steps, mesh)
    programs = drift_programs()  # PPO-clip as a drift program, through the interpreter
    program_agent = _Agent("program", task, programs, stack_genomes([programs.genome]), steps,
                           mesh)
    level_agent = _Agent("level", task, clip, stack_genomes([clip.genome]), steps, mesh,
                         overrides=stacked_overrides(ENV_ID, [LEVEL_SEED]))
    pop_agent = _Agent("population", task, objective, genomes, steps, mesh)
    _log(f"rl benchmark: {ENV_ID}, {env_steps:,} env steps per run ({updates} updates), "
         f"population {population}, {objective.name}, {mesh.devices.size} device(s)")

    first, steady = _steady((clip_agent, lpo_agent, program_agent, level_agent),
                            repeats)  # interleaved
    first["population"] = pop_agent.call()
    _log(f"population: first call {first['population']:.2f}s")
    steady["population"] = float(statistics.median(
        [pop_agent.call() for _ in range(population_repeats)]))
    diverged = np.concatenate([np.ravel(a.metrics["diverged"]).astype(np.float64)
                               for a in (clip_agent, lpo_agent, program_agent, level_agent,
                                         pop_agent)])
    result = {
        "benchmark": "rl",
        "env": ENV_ID,
        "device": str(jax.devices()[0].device_kind),
        "backend": jax.default_backend(),
        "jax_version": jax.__version__,
        "devices": int(mesh.devices.size),
        "steps": int(steps),
        "env_steps": int(env_steps),
        "updates": int(updates),
        "num_envs": int(task.num_envs),
        "num_steps": int(task.num_steps),
        "population": int(population),
        "repeats": int(repeats),
        "population_repeats": int(population_repeats),
        "objective": objective.name,
        "hidden": int(hidden),
        "lpo_weights": int(sum(np.size(x) for x in jax.tree.leaves(objective.genome))),
        "sigma": float(SIGMA),
        "env_steps_per_second": env_steps / steady["clip"],
        "lpo_env_steps_per_second": env_steps / steady["lpo"],
        "population_env_steps_per_second": population * env_steps / steady["population"],
        "drift_cost_vs_clip": steady["lpo"] / steady["clip"],
        "drift_program_cost_vs_clip": steady["program"] / steady["clip"],
        "program_statements": int(np.shape(programs.genome["op"])[0]),
        "level_cost_vs_clip": steady["level"] / steady["clip"],
        "level_seed": LEVEL_SEED,
    }
    result["population_speedup_vs_single"] = (result["population_env_steps_per_second"]
                                              / result["lpo_env_steps_per_second"])
    for name in ("clip", "lpo", "program", "level", "population"):
        result[f"{name}_seconds"] = steady[name]
        result[f"{name}_first_call_seconds"] = float(first[name])
        # the first call compiles; a tiny floor keeps the key positive under timing noise
        result[f"{name}_compile_seconds"] = max(float(first[name]) - steady[name], 1e-6)
    result["final_return"] = float(np.mean(clip_agent.metrics["final_return"]))
    result["lpo_final_return"] = float(np.mean(lpo_agent.metrics["final_return"]))
    result["program_final_return"] = float(np.mean(program_agent.metrics["final_return"]))
    result["level_final_return"] = float(np.mean(level_agent.metrics["final_return"]))
    result["population_final_return"] = float(np.mean(pop_agent.metrics["final_return"]))
    result["diverged"] = float(np.mean(diverged))
    if peer_module is not None:
        result.update(measure_peer(peer_module, clip_agent, task, clip, steps, env_steps, mesh,
                                   repeats, peer_seeds))
        result["peer_path"] = str(peer)
    result["total_seconds"] = time.perf_counter() - t0
    _log(f"clip {steady['clip']:.3f}s ({result['env_steps_per_second']:,.0f} env steps/s, final "
         f"return {result['final_return']:.1f}); lpo {steady['lpo']:.3f}s; population "
         f"{steady['population']:.3f}s ({result['population_env_steps_per_second']:,.0f} env "
         f"steps/s); drift cost vs clip {result['drift_cost_vs_clip']:.2f}x, drift program "
         f"{result['drift_program_cost_vs_clip']:.2f}x")
    return result


def _table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"rl benchmark: PPO on {result['env']}, {result['env_steps']:,} env steps "
                        f"per run, {result['backend']} ({result['device']}) x{result['devices']}")
    for col in ("agent", "env steps/s", "s/call", "compile s", "final return"):
        table.add_column(col, justify="right")
    rows = (("ppo_clip x1", result["env_steps_per_second"], "clip", result["final_return"]),
            (f"{result['objective']} x1", result["lpo_env_steps_per_second"], "lpo",
             result["lpo_final_return"]),
            ("ppo_clip.prog x1", result["env_steps"] / result["program_seconds"], "program",
             result["program_final_return"]),
            (f"ppo_clip x1, level {result['level_seed']}",
             result["env_steps"] / result["level_seconds"], "level",
             result["level_final_return"]),
            (f"{result['objective']} x{result['population']}",
             result["population_env_steps_per_second"], "population",
             result["population_final_return"]))
    for label, rate, key, ret in rows:
        table.add_row(label, f"{rate:,.0f}", f"{result[key + '_seconds']:.3f}",
                      f"{result[key + '_compile_seconds']:.2f}", f"{ret:.1f}")
    console = Console()
    console.print(table)
    console.print(f"drift cost vs clip: {result['drift_cost_vs_clip']:.2f}x per run (drift "
                  f"program {result['drift_program_cost_vs_clip']:.2f}x); population "
                  f"speedup vs single: {result['population_speedup_vs_single']:.2f}x (median of "
                  f"{result['repeats']}, population {result['population_repeats']}; jax "
                  f"{result['jax_version']})", markup=False, highlight=False)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.rl [--json] [--steps 500000] [--population 16] ...``; exits 0, or 2
    for bad arguments (one line on stderr, no document)."""
    parser = argparse.ArgumentParser(prog="lab bench rl", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true",
                        help="print one strict JSON document on stdout")
    parser.add_argument("--steps", type=positive_int, default=DEFAULT_STEPS,
                        help=f"environment steps per run (default {DEFAULT_STEPS})")
    parser.add_argument("--population", type=positive_int, default=DEFAULT_POPULATION,
                        help=f"LPO candidates vmapped together (default {DEFAULT_POPULATION})")
    parser.add_argument("--repeats", type=positive_int, default=DEFAULT_REPEATS,
                        help=f"steady-state calls of each single agent (default "
                             f"{DEFAULT_REPEATS})")
    parser.add_argument("--population-repeats", type=positive_int,
                        default=DEFAULT_POPULATION_REPEATS,
                        help=f"steady-state calls of the population (default "
                             f"{DEFAULT_POPULATION_REPEATS})")
    parser.add_argument("--hidden", type=positive_int, default=DEFAULT_HIDDEN,
                        help=f"the LPO drift network's hidden units (default {DEFAULT_HIDDEN})")
    parser.add_argument("--devices", type=int, default=0, help="devices in the mesh (0 = all)")
    parser.add_argument("--peer", default=None, metavar="PATH",
                        help="PureJaxRL's ppo.py (patched for gymnax 1.0), timed beside ours")
    parser.add_argument("--peer-seeds", type=positive_int, default=DEFAULT_PEER_SEEDS,
                        help=f"seeds vmapped in the side-by-side run (default "
                             f"{DEFAULT_PEER_SEEDS})")
    args = parser.parse_args(list(argv) if argv is not None else None)

    try:
        result = run(steps=args.steps, population=args.population, repeats=args.repeats,
                     population_repeats=args.population_repeats, hidden=args.hidden,
                     devices=args.devices, peer=args.peer, peer_seeds=args.peer_seeds)
    except (KeyError, ValueError) as e:
        _log(f"rl benchmark: {e.args[0] if e.args else e}")
        return 2
    from benchmarks import emit
    emit(result, args.json, _table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

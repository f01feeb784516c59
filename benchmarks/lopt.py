"""Learned-optimizer benchmark: meta-training throughput, and its cost against optax Adam.

What ``lab.kinds.learned.search`` spends its time on: one truncation of every member's inner run,
per task, through ``lab.kinds.learned.unroll.unroll_population`` (one compiled, vmapped call per
task). Two populations go through the very same path (``make_unroll`` + ``start_population`` +
``unroll_population``, the same tasks, unroll length, outer learning rate 1.0, meta-loss and
per-member keys):

* learned: ``learned_rule(Features(hidden, depth))`` (the structure of ``configs/lopt.yaml``,
  hidden 16 and depth 2 by default, every other feature at its default), members = the Adam-like
  initial weights (``init_genome``) plus ES-sized Gaussian noise (``SIGMA``), as a generation of
  Open_ES asks;
* adam: ``make_baseline("adam")`` genomes, learning rates spread log-uniformly over
  ``LR_RANGE`` (``benchmarks.population.adam_population``).

One *call* is one truncation of every task, in order, blocked on the results; it does
``population x tasks x unroll`` inner steps. The first call of each rule (warm-up) compiles;
``compile_seconds`` is that first call minus a steady-state call (``first_call_seconds`` is the
raw figure). Steady-state times are the median of ``repeats`` later calls, the two rules
interleaved so drift hits both alike; each call feeds ``unroll_population`` the state the previous
call returned (it donates its ``inner`` argument) and fresh keys (drawn before timing).

Headline keys (plain numbers):

* ``inner_steps_per_second``: the learned rule's ``population x tasks x unroll / seconds``;
* ``cost_vs_adam``: ``adam_inner_steps_per_second / inner_steps_per_second`` (> 1: the learned
  rule costs more per inner step than Adam).

The normalization reference of the meta-loss is 1.0 (it changes no cost); the persistent XLA
compilation cache is off, so compile times are real ones.

Usage::

    python -m benchmarks.lopt                    # a table
    lab bench lopt --json                        # one strict JSON document on stdout
    lab bench lopt --population 8 --unroll 5 --tasks digits_mlp_tiny --repeats 1   # quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import positive_int

# the figures the benchmark gates on (plain numbers), and a run of seconds (the tests')
GATED = ("inner_steps_per_second", "cost_vs_adam")
SMALL = ("--tasks", "quadratic_ill_8", "--population", "2", "--unroll", "3", "--repeats", "1",
         "--hidden", "4", "--depth", "1", "--devices", "1")
DEFAULT_TASKS = ("digits_mlp", "mnist1d_mlp")  # train suite
DEFAULT_POPULATION = 32  # configs/lopt.yaml search.population
DEFAULT_UNROLL = 20      # configs/lopt.yaml search.unroll
DEFAULT_REPEATS = 3
DEFAULT_HIDDEN, DEFAULT_DEPTH = 16, 2  # configs/lopt.yaml rule.hidden, rule.depth
META_LOSS = "mean_loss"  # configs/lopt.yaml search.meta_loss
LR = 1.0                 # the outer learning rate (Ctx.lr) of both rules
SIGMA = 0.01             # configs/lopt.yaml search.sigma: the spread of the learned population
HORIZON_UNROLLS = 10     # every run's horizon, in unrolls: no run ends inside the benchmark
SEED = 0


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def learned_population(population: int, hidden: int = DEFAULT_HIDDEN, depth: int = DEFAULT_DEPTH,
                       sigma: float = SIGMA, seed: int = SEED):
    """(rule, genomes): ``population`` learned optimizers around the Adam-like initial weights."""
    from lab.kinds.learned.rule import Features, init_genome, learned_rule

    features = Features(hidden=hidden, depth=depth)
    mean = init_genome(features, jax.random.key(seed))
    rule = learned_rule(features, mean)
    leaves, treedef = jax.tree.flatten(mean)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    genomes = treedef.unflatten([
        x[None] + sigma * jax.random.normal(k, (population, *jnp.shape(x)), jnp.float32)
        for x, k in zip(leaves, keys, strict=True)])
    return rule, genomes


def adam_population(population: int):
    """(rule, genomes): ``population`` optax Adam genomes (``benchmarks.population``'s)."""
    from benchmarks.population import adam_population as spread
    from lab.core.optimizers import make_baseline

    return make_baseline("adam"), spread(population)


class _Side:
    """One rule's population of inner runs, one per task, and its timings."""

    def __init__(self, name, rule, genomes, the_tasks, population, unroll, calls, mesh):
        from lab.kinds.learned.unroll import make_unroll, start_population

        self.name, self.genomes, self.mesh = name, genomes, mesh
        self.unrolls = [make_unroll(t, rule, unroll, LR, META_LOSS, 1.0) for t in the_tasks]
        self.reset = np.zeros(population, bool)  # runs continue: start_population made them
        self.horizon = np.full(population, HORIZON_UNROLLS * unroll, np.int32)
        self.t_start = np.zeros(population, np.int32)
        base = jax.random.key(SEED)
        # [calls][task] -> [population] keys, drawn before any timing
        self.keys = [[jax.random.split(jax.random.fold_in(jax.random.fold_in(base, c), j),
                                       population) for j in range(len(the_tasks))]
                     for c in range(calls + 1)]
        jax.block_until_ready(self.keys)
        start_keys = jax.random.split(jax.random.fold_in(base, calls + 1), population)
        t0 = time.perf_counter()
        self.inner = [start_population(u, genomes, start_keys, mesh) for u in self.unrolls]
        jax.block_until_ready(self.inner)
        self.start_seconds = time.perf_counter() - t0
        self.calls = 0
        self.diverged = 0.0

    def call(self) -> float:
        """One truncation of every task; returns its wall-clock seconds (blocked)."""
        from lab.kinds.learned.unroll import unroll_population

        keys = self.keys[self.calls]
        t0 = time.perf_counter()
        metrics = []
        for j, u in enumerate(self.unrolls):
            self.inner[j], m = unroll_population(u, self.genomes, self.inner[j], self.reset,
                                                 self.horizon, self.t_start, keys[j], self.mesh)
            metrics.append(m)
        jax.block_until_ready((self.inner, metrics))
        seconds = time.perf_counter() - t0
        self.calls += 1
        self.diverged = float(np.mean([np.asarray(m["diverged"]) for m in metrics]))
        return seconds


def run(tasks: Sequence[str] = DEFAULT_TASKS, population: int = DEFAULT_POPULATION,
        unroll: int = DEFAULT_UNROLL, repeats: int = DEFAULT_REPEATS,
        hidden: int = DEFAULT_HIDDEN, depth: int = DEFAULT_DEPTH, devices: int = 0) -> dict:
    """Times the learned population and the Adam population on the same truncated unrolls.

    Args:
      tasks: task names (``tasks.get_task``).
      population: members per rule.
      unroll: inner steps per truncation (static).
      repeats: steady-state calls per rule; the median is reported.
      hidden, depth: the learned optimizer's network.
      devices: devices in the mesh (0 = all).

    Returns:
      A strict-JSON-able dict (see the module docstring).
    """
    import tasks as task_registry
    from lab.core.evaluate import make_mesh

    tasks = [str(t) for t in tasks]
    if not tasks:
        raise ValueError("tasks: give at least one task name")
    if min(population, unroll, repeats) < 1:
        raise ValueError(f"population, unroll and repeats must be >= 1, got {population}, "
                         f"{unroll}, {repeats}")
    # real compile times: no persistent compilation cache (the lab CLI leaves it off for bench)
    jax.config.update("jax_enable_compilation_cache", False)
    the_tasks = [task_registry.get_task(t) for t in tasks]
    mesh = make_mesh(devices)
    t0 = time.perf_counter()

    rule, genomes = learned_population(population, hidden, depth)
    adam_rule, adam_genomes = adam_population(population)
    sides = [_Side("learned", rule, genomes, the_tasks, population, unroll, repeats, mesh),
             _Side("adam", adam_rule, adam_genomes, the_tasks, population, unroll, repeats,
                   mesh)]
    first = {s.name: s.call() for s in sides}  # warm-up: compiles
    times: dict[str, list[float]] = {s.name: [] for s in sides}
    for _ in range(repeats):  # interleaved, so drift hits both rules alike
        for s in sides:
            times[s.name].append(s.call())

    steps = population * len(tasks) * unroll  # inner steps per call
    result = {
        "benchmark": "lopt",
        "device": str(jax.devices()[0].device_kind),
        "backend": jax.default_backend(),
        "devices": int(mesh.devices.size),
        "tasks": tasks,
        "population": int(population),
        "unroll": int(unroll),
        "repeats": int(repeats),
        "inner_steps_per_call": int(steps),
        "rule": rule.name,
        "hidden": int(hidden),
        "depth": int(depth),
        "genome_size": int(sum(np.size(x) for x in jax.tree.leaves(rule.genome))),
        "meta_loss": META_LOSS,
    }
    for s in sides:
        steady = float(statistics.median(times[s.name]))
        prefix = "" if s.name == "learned" else "adam_"
        result.update({
            f"{prefix}inner_steps_per_second": steps / steady,
            f"{prefix}seconds_per_call": steady,
            f"{prefix}first_call_seconds": float(first[s.name]),
            # the first call compiles; a tiny floor keeps the key positive under timing noise
            f"{prefix}compile_seconds": max(float(first[s.name]) - steady, 1e-6),
            f"{prefix}start_seconds": float(s.start_seconds),
            f"{prefix}diverged": s.diverged,
        })
        _log(f"{s.name}: {steady:.4f}s per call ({steps / steady:,.0f} inner steps/s), first "
             f"call {first[s.name]:.2f}s, start {s.start_seconds:.2f}s")
    result["learned_inner_steps_per_second"] = result["inner_steps_per_second"]
    result["cost_vs_adam"] = result["adam_inner_steps_per_second"] / result[
        "inner_steps_per_second"]
    result["total_seconds"] = time.perf_counter() - t0
    _log(f"cost vs adam: {result['cost_vs_adam']:.2f}x")
    return result


def _names(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated task names, got {text!r}")
    return names


def _table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"lopt benchmark: {', '.join(result['tasks'])}, "
                        f"population {result['population']}, unroll {result['unroll']}, "
                        f"{result['backend']} ({result['device']}) x{result['devices']}")
    for col in ("rule", "inner steps/s", "s/call", "compile s", "start s"):
        table.add_column(col, justify="right")
    for label, prefix in ((result["rule"], ""), ("adam", "adam_")):
        table.add_row(label, f"{result[prefix + 'inner_steps_per_second']:,.0f}",
                      f"{result[prefix + 'seconds_per_call']:.4f}",
                      f"{result[prefix + 'compile_seconds']:.2f}",
                      f"{result[prefix + 'start_seconds']:.2f}")
    console = Console()
    console.print(table)
    console.print(f"cost vs adam: {result['cost_vs_adam']:.2f}x per inner step "
                  f"({result['inner_steps_per_call']} inner steps per call, median of "
                  f"{result['repeats']})", markup=False, highlight=False)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.lopt [--json] [--population 32] [--unroll 20] ...``; exits 0, or 2
    for bad arguments or an unknown task (one line on stderr, no document)."""
    parser = argparse.ArgumentParser(prog="lab bench lopt", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true",
                        help="print one strict JSON document on stdout")
    parser.add_argument("--tasks", type=_names, default=DEFAULT_TASKS,
                        help=f"comma-separated task names (default {','.join(DEFAULT_TASKS)})")
    parser.add_argument("--population", type=positive_int, default=DEFAULT_POPULATION,
                        help=f"members per rule (default {DEFAULT_POPULATION})")
    parser.add_argument("--unroll", type=positive_int, default=DEFAULT_UNROLL,
                        help=f"inner steps per truncation (default {DEFAULT_UNROLL})")
    parser.add_argument("--repeats", type=positive_int, default=DEFAULT_REPEATS,
                        help=f"steady-state calls per rule (default {DEFAULT_REPEATS})")
    parser.add_argument("--hidden", type=positive_int, default=DEFAULT_HIDDEN)
    parser.add_argument("--depth", type=int, default=DEFAULT_DEPTH)
    parser.add_argument("--devices", type=int, default=0, help="devices in the mesh (0 = all)")
    args = parser.parse_args(list(argv) if argv is not None else None)

    try:
        result = run(tasks=args.tasks, population=args.population, unroll=args.unroll,
                     repeats=args.repeats, hidden=args.hidden, depth=args.depth,
                     devices=args.devices)
    except (KeyError, ValueError) as e:
        _log(f"lopt benchmark: {e.args[0] if e.args else e}")
        return 2
    from benchmarks import emit
    emit(result, args.json, _table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

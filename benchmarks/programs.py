"""Programs benchmark: the compile-once interpreter vs optax, and vs compiling each program.

A pinned configuration: the train suite's ``digits_mlp`` task at its default batch, genomes padded
to ``MAX_LEN`` statements, a population of ``P = 256``, ``DEFAULT_STEPS`` inner steps, one seed.
Every side uses the same task, the same ``[P, seeds]`` keys and the same evaluator
(``lab.core.evaluate.evaluate``). Steady-state times are the median of ``repeats`` calls after a
warm-up call, blocked on the results (the evaluator returns numpy arrays). The evaluator's
functions are compiled ahead of time and timed apart (``interpreter_compile_seconds``,
``optax_compile_seconds``); the persistent XLA compilation cache is turned off, so every compile
time is a real one.

Headline keys (plain numbers):

* ``interpreter_overhead``: the Adam seed program (``load_seed("adam")``) run by the interpreter
  (``program_rule()``, P copies of its genome) over optax Adam (``make_baseline("adam")``, P copies
  of its genome), steady-state time ratio. Each statement of the interpreter computes the cheap
  ops, and the other op groups its batch uses there, and selects one; it moves a register file
  where optax moves two moments, so it is slower (goal on a CPU: <= 4x; on a GPU, where the
  arithmetic hides behind memory traffic: <= 1.2x). Read the ``backend`` key. The final losses
  of both sides must agree (``rtol=1e-3``; ``max_rel_diff``).
* ``speedup_vs_compile_each``: one generation of P *distinct* programs (mutation chains from the
  seed programs, ``np.random.default_rng(0)``, deduplicated by symbolic hash) through the
  interpreter (steady state, ``interpreter_seconds``: the compiled function the Adam seed warmed,
  as every generation of a search reuses one), against what compiling each program would
  cost: ``compile.structure_rule(p)`` -> ``make_train`` -> ``jit(vmap(train))`` over seeds, fresh
  for each of ``n_sampled`` programs spread over the population; compile time is the first call
  minus a second call, run time the second call; ``compile_each_seconds = P * (mean compile + mean
  run)``. Gate on CPU: >= 10.
* ``cache_hit_rate``: the evaluation-cache hit rate of a pinned short program search
  (``configs/program_smoke.yaml``, ``search.seed=0``, in a temporary store): ``sum(hits) /
  sum(hits + misses)`` over its generations. ``null`` with ``--skip-search``.

Usage::

    python -m benchmarks.programs                # a table
    python -m benchmarks.programs --json         # one strict JSON document on stdout
    lab bench programs --json --skip-search      # the two timing keys only
    lab bench programs --population 32 --steps 20 --sampled 4 --skip-search   # a quick run
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from benchmarks import positive_int

# the figures the benchmark gates on (plain numbers), and a run of seconds (the tests')
GATED = ("interpreter_overhead", "speedup_vs_compile_each", "n_sampled")
SMALL = ("--task", "quadratic_ill_8", "--population", "8", "--steps", "10", "--sampled", "2",
         "--repeats", "1", "--skip-search")
DEFAULT_TASK = "digits_mlp"  # train suite; its default batch
DEFAULT_POPULATION = 256
DEFAULT_STEPS = 100  # inner steps: matches the budget of configs/program_search.yaml
DEFAULT_SEEDS = 1
DEFAULT_SAMPLED = 16  # programs compiled one by one to estimate the compile-each cost
DEFAULT_REPEATS = 2  # timed calls after the warm-up (3 puts the bench over 5 min on 2 busy cores)
RTOL = 1e-3  # interpreter vs optax Adam final losses
PROGRAM_RNG_SEED = 0
SPEEDUP_GATE_CPU = 10.0  # speedup_vs_compile_each on a CPU
OVERHEAD_TARGET_CPU = 4.0  # interpreter_overhead on a CPU
OVERHEAD_TARGET_GPU = 1.2  # interpreter_overhead on a GPU

REPO = Path(__file__).resolve().parents[1]
SEARCH_CONFIG = REPO / "configs" / "program_smoke.yaml"
SEARCH_OVERRIDES = ("search.seed=0", "name=bench-programs")


class SearchUnavailable(RuntimeError):
    """The pinned program search cannot run (no config yet, or launching it failed)."""


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _resolve_task(task):
    import tasks

    if task is None:
        return tasks.get_task(DEFAULT_TASK)
    if isinstance(task, str):
        return tasks.get_task(task)
    return task


def distinct_programs(n: int, seed: int = PROGRAM_RNG_SEED) -> list:
    """``n`` distinct valid programs (by symbolic hash), at most ``MAX_LEN`` statements each.

    Mutation chains, one per seed program, advanced round robin with one ``np.random`` generator
    seeded ``seed``; the seeds themselves are not included. Deterministic for a given ``n``.
    """
    from lab.kinds.program.ir import is_valid, symbolic_hash
    from lab.kinds.program.mutate import mutate
    from lab.kinds.program.programs import MAX_LEN, load_seed, seed_names

    rng = np.random.default_rng(seed)
    names = seed_names()
    chains = {name: load_seed(name) for name in names}
    seen = {symbolic_hash(p) for p in chains.values()}
    out = []
    for _ in range(100 * n + 1000):
        if len(out) >= n:
            break
        for name in names:
            child = mutate(chains[name], rng, max_len=MAX_LEN)
            chains[name] = child
            h = symbolic_hash(child)
            if h in seen or len(child) > MAX_LEN or not is_valid(child):
                continue
            seen.add(h)
            out.append(child)
            if len(out) >= n:
                break
    if len(out) < n:
        raise RuntimeError(f"found only {len(out)} distinct programs of the {n} asked for")
    return out


def _stack(genomes: list):
    from lab.core.rule import stack_genomes
    return jax.block_until_ready(stack_genomes(genomes))


def _steady(calls: dict, repeats: int, warm_up: bool = True) -> tuple[dict, dict, dict]:
    """A warm-up call (unless ``warm_up`` is False) and ``repeats`` timed calls of each named
    function, interleaved (so drift hits every side alike); returns the warm-up seconds, the
    median seconds and the last outputs."""
    first, times, outs = {}, {name: [] for name in calls}, {}
    if warm_up:
        for name, fn in calls.items():
            first[name], outs[name] = _timed(fn)
    for _ in range(repeats):
        for name, fn in calls.items():
            t, outs[name] = _timed(fn)
            times[name].append(t)
    return first, {k: float(statistics.median(v)) for k, v in times.items()}, outs


def compile_evaluator(train, genomes, keys, mesh) -> float:
    """Seconds to trace, lower and compile the evaluator's function for these shapes.

    Ahead of time, on the very arguments ``evaluate`` passes (padded, sharded); it fills the jit
    cache, so the first ``evaluate`` call after it runs without compiling.
    """
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as Spec

    from lab.core.evaluate import AXIS, compiled, pad, padded_size  # the evaluator's own pieces
    from lab.core.rule import population_size
    _, padded = padded_size(population_size(genomes), mesh)
    shard = NamedSharding(mesh, Spec(AXIS))
    args = jax.device_put((pad(genomes, padded), pad(keys, padded)), shard)
    t, _ = _timed(lambda: compiled(train, mesh).lower(*args).compile())
    return t


def _max_rel_diff(a: np.ndarray, b: np.ndarray) -> float | None:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    finite = np.isfinite(a) & np.isfinite(b)
    if not finite.any():
        return None  # nothing to compare: no number rather than a fake one
    return float((np.abs(a - b)[finite] / np.maximum(np.abs(b[finite]), 1e-30)).max())


def _fmt_rel(rel: float | None) -> str:
    return "n/a (no finite losses)" if rel is None else f"{rel:.1e}"


def measure_overhead(the_task, population: int, steps: int, keys, mesh, repeats: int,
                     interp_train) -> dict:
    """The Adam seed program through the interpreter vs optax Adam, same population and keys."""
    from lab.core.evaluate import evaluate, make_train
    from lab.core.optimizers import make_baseline
    from lab.kinds.program.programs import genome_of, load_seed

    adam_rule = make_baseline("adam")
    adam_train = make_train(the_task, adam_rule, steps)
    interp_genomes = _stack([genome_of(load_seed("adam"))] * population)
    adam_genomes = _stack([adam_rule.genome] * population)
    interp_compile = compile_evaluator(interp_train, interp_genomes, keys, mesh)
    adam_compile = compile_evaluator(adam_train, adam_genomes, keys, mesh)
    _log(f"compile: interpreter {interp_compile:.2f}s, optax adam {adam_compile:.2f}s")
    _, median, outs = _steady({
        "interpreter": lambda: evaluate(interp_train, interp_genomes, keys, mesh),
        "optax": lambda: evaluate(adam_train, adam_genomes, keys, mesh),
    }, repeats)
    a, b = outs["interpreter"]["final_loss"], outs["optax"]["final_loss"]
    agree = a.shape == b.shape and bool(np.allclose(a, b, rtol=RTOL, equal_nan=True))
    rel = _max_rel_diff(a, b)
    agree = agree and rel is not None
    result = {
        "interpreter_overhead": median["interpreter"] / median["optax"],
        "adam_interpreter_seconds": median["interpreter"],
        "adam_optax_seconds": median["optax"],
        "interpreter_compile_seconds": interp_compile,
        "optax_compile_seconds": adam_compile,
        "max_rel_diff": rel,
        "agree": agree,
    }
    _log(f"adam: interpreter {median['interpreter']:.3f}s, optax {median['optax']:.3f}s, "
         f"overhead {result['interpreter_overhead']:.2f}x, final losses agree {agree} "
         f"(max rel diff {_fmt_rel(rel)})")
    return result


def measure_compile_each(the_task, population: int, steps: int, keys, mesh, repeats: int,
                         n_sampled: int, interp_train, interp_compile: float) -> dict:
    """P distinct programs through the interpreter vs compiling and running each one.

    ``interp_train`` is already compiled and warm for this population's shapes (every
    generation of a search reuses that one compiled function); ``interp_compile`` is what that
    compilation cost.
    """
    from lab.core.evaluate import evaluate, make_train
    from lab.kinds.program.compiled import structure_rule
    from lab.kinds.program.programs import genome_of

    t_gen, programs = _timed(lambda: distinct_programs(population))
    _log(f"generated {population} distinct programs in {t_gen:.2f}s "
         f"(lengths {min(map(len, programs))}..{max(map(len, programs))})")
    genomes = _stack([genome_of(p) for p in programs])
    _, median, _ = _steady({"interpreter": lambda: evaluate(interp_train, genomes, keys, mesh)},
                           repeats, warm_up=False)
    interp_s = median["interpreter"]
    _log(f"interpreter, {population} distinct programs: {interp_s:.3f}s steady")

    sample = np.unique(np.linspace(0, population - 1, n_sampled).round().astype(int))
    seed_keys = keys[0]  # [seeds]: what every candidate trains on
    compiles, runs = [], []
    for i in sample:
        rule = structure_rule(programs[i])
        fn = jax.jit(jax.vmap(make_train(the_task, rule, steps), in_axes=(None, 0)))
        t1, _ = _timed(lambda fn=fn, g=rule.genome: jax.block_until_ready(fn(g, seed_keys)))
        t2, _ = _timed(lambda fn=fn, g=rule.genome: jax.block_until_ready(fn(g, seed_keys)))
        compiles.append(max(t1 - t2, 0.0))
        runs.append(t2)
        _log(f"compiled program {i} ({len(rule.genome['k'])} live statements): "
             f"compile {compiles[-1]:.3f}s, run {t2:.4f}s")
    compile_s, run_s = float(np.mean(compiles)), float(np.mean(runs))
    compile_each = population * (compile_s + run_s)
    result = {
        "speedup_vs_compile_each": compile_each / interp_s,
        "n_sampled": len(sample),
        "compile_seconds_per_program": compile_s,
        "run_seconds_per_program_compiled": run_s,
        "compile_each_seconds": compile_each,
        "interpreter_seconds": interp_s,
        # a search's first generation, the interpreter's one compilation included
        "speedup_vs_compile_each_first_generation": compile_each / (interp_s + interp_compile),
        "program_length_mean": float(np.mean([len(p) for p in programs])),
    }
    _log(f"compile each: {compile_s:.3f}s compile + {run_s:.4f}s run per program, "
         f"x{population} = {compile_each:.1f}s; speedup {result['speedup_vs_compile_each']:.1f}x")
    return result


def _search_config(config: Path, overrides: Sequence[str]):
    """The pinned search's config, or SearchUnavailable saying why not."""
    if not config.is_file():
        raise SearchUnavailable(
            f"cache_hit_rate: the pinned program search config {config} does not exist "
            f"(use --skip-search to measure the rest)")
    from lab.core.config import load_config
    try:
        cfg = load_config(str(config), list(overrides))
    except Exception as e:  # noqa: BLE001 - any failure here is reported as one clear error
        raise SearchUnavailable(f"cache_hit_rate: cannot load {config} with "
                                f"{list(overrides)}: {type(e).__name__}: {e}") from e
    if getattr(cfg, "kind", None) != "program":
        raise SearchUnavailable(f"cache_hit_rate: {config} is kind {cfg.kind!r}, not 'program'")
    return cfg


def measure_cache_hit_rate(config: Path = SEARCH_CONFIG,
                           overrides: Sequence[str] = SEARCH_OVERRIDES) -> dict:
    """Runs the pinned short program search in a temporary store; its cache hit rate."""
    from lab.core.loop import launch
    from lab.core.store import Store

    cfg = _search_config(config, overrides)
    with tempfile.TemporaryDirectory(prefix="bench-programs-") as tmp:
        store = Store(Path(tmp) / "bench.db")
        try:
            try:
                t, run_id = _timed(lambda: launch(cfg, store))
            except Exception as e:  # noqa: BLE001 - reported as one clear error, no number
                raise SearchUnavailable(f"cache_hit_rate: launching {config} failed: "
                                        f"{type(e).__name__}: {e}") from e
            gens = store.generations(run_id)
        finally:
            store.close()
    hits = sum(int(g.get("hits") or 0) for g in gens)
    misses = sum(int(g.get("misses") or 0) for g in gens)
    if hits + misses == 0:
        raise SearchUnavailable(f"cache_hit_rate: the search recorded no evaluations "
                                f"({len(gens)} generations)")
    result = {"cache_hit_rate": hits / (hits + misses), "search_hits": hits,
              "search_misses": misses, "search_generations": len(gens),
              "search_seconds": t, "search_config": str(config.relative_to(REPO))
              if config.is_relative_to(REPO) else str(config)}
    _log(f"search: {len(gens)} generations in {t:.1f}s, {hits} hits / {misses} misses, "
         f"hit rate {result['cache_hit_rate']:.3f}")
    return result


def run(task=None, population: int = DEFAULT_POPULATION, steps: int | None = None,
        seeds: int = DEFAULT_SEEDS, n_sampled: int = DEFAULT_SAMPLED,
        repeats: int = DEFAULT_REPEATS, skip_search: bool = False,
        search_config: str | Path | None = None) -> dict:
    """Measures the three headline keys (see the module docstring).

    Args:
      task: a task name or ``Task``; default ``DEFAULT_TASK``.
      population: P, the candidates per evaluation.
      steps: inner steps per run; default ``DEFAULT_STEPS``.
      seeds: training runs per candidate.
      n_sampled: programs compiled one by one (at most P).
      repeats: steady-state calls per side; the median is reported.
      skip_search: leave out the pinned search (``cache_hit_rate`` is then None).
      search_config: the search's config (default ``configs/program_smoke.yaml``).

    Returns:
      A strict-JSON-able dict.

    Raises:
      SearchUnavailable: the pinned search cannot run (checked before any timing).
    """
    from lab.core.evaluate import make_mesh, make_train, task_keys
    from lab.kinds.program.programs import program_rule

    if population < 1 or seeds < 1 or repeats < 1 or n_sampled < 1:
        raise ValueError(f"population, seeds, repeats and sampled must be >= 1, got "
                         f"{population}, {seeds}, {repeats}, {n_sampled}")
    n_sampled = min(n_sampled, population)
    config = Path(search_config) if search_config is not None else SEARCH_CONFIG
    if not skip_search:
        _search_config(config, SEARCH_OVERRIDES)  # fail before minutes of timing, not after
    # real compile times: no persistent compilation cache (the lab CLI leaves it off for bench)
    jax.config.update("jax_enable_compilation_cache", False)
    the_task = _resolve_task(task)
    steps = int(steps or DEFAULT_STEPS)
    mesh = make_mesh(0)
    keys = task_keys(seeds, population)  # [P, seeds], shared by every candidate and side
    t0 = time.perf_counter()

    result = {
        "benchmark": "programs",
        "device": str(jax.devices()[0].device_kind),
        "backend": jax.default_backend(),
        "devices": int(jax.device_count()),
        "task": the_task.name,
        "population": int(population),
        "steps": steps,
        "seeds": int(seeds),
        "repeats": int(repeats),
    }
    # one interpreter train for both parts: one compiled function, as in a search
    interp_train = make_train(the_task, program_rule(), steps)
    result.update(measure_overhead(the_task, population, steps, keys, mesh, repeats,
                                   interp_train))
    result.update(measure_compile_each(the_task, population, steps, keys, mesh, repeats,
                                       n_sampled, interp_train,
                                       result["interpreter_compile_seconds"]))
    if skip_search:
        _log("cache_hit_rate: skipped (--skip-search); the key is null")
        result["cache_hit_rate"] = None
    else:
        result.update(measure_cache_hit_rate(config))
    result["total_seconds"] = time.perf_counter() - t0
    return {k: (float(v) if isinstance(v, np.floating) else v) for k, v in result.items()}


def _table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"programs benchmark: {result['task']}, P={result['population']}, "
                        f"{result['steps']} steps, {result['seeds']} seed(s), "
                        f"{result['backend']} ({result['device']})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    hit = result["cache_hit_rate"]
    rows = [
        ("interpreter overhead (adam)", f"{result['interpreter_overhead']:.2f}x"),
        ("  interpreter / optax s", f"{result['adam_interpreter_seconds']:.3f} / "
                                    f"{result['adam_optax_seconds']:.3f}"),
        ("  final losses agree", f"{'yes' if result['agree'] else 'NO'} "
                                 f"(max rel diff {_fmt_rel(result['max_rel_diff'])})"),
        ("speedup vs compile each", f"{result['speedup_vs_compile_each']:.1f}x"),
        ("  interpreter s (steady)", f"{result['interpreter_seconds']:.3f}"),
        ("  interpreter compile s", f"{result['interpreter_compile_seconds']:.2f}"),
        ("  compile s / program", f"{result['compile_seconds_per_program']:.3f}"),
        ("  run s / program (compiled)", f"{result['run_seconds_per_program_compiled']:.4f}"),
        ("  compile each s (extrapolated)", f"{result['compile_each_seconds']:.1f}"),
        ("  programs sampled", str(result["n_sampled"])),
        ("cache hit rate", "skipped" if hit is None else f"{hit:.3f}"),
    ]
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.programs [--json] [--population 256] [--skip-search] ...``.

    Exits 0 on success; 1 when the interpreter's and optax's Adam final losses differ (the
    document is still printed); 2 for bad arguments or when the pinned search cannot run (a
    message on stderr, no document).
    """
    parser = argparse.ArgumentParser(prog="lab bench programs",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true",
                        help="print one strict JSON document on stdout")
    parser.add_argument("--task", default=None, help=f"task name (default {DEFAULT_TASK})")
    parser.add_argument("--population", type=positive_int, default=DEFAULT_POPULATION,
                        help=f"candidates per evaluation (default {DEFAULT_POPULATION})")
    parser.add_argument("--steps", type=positive_int, default=None,
                        help=f"inner steps (default {DEFAULT_STEPS})")
    parser.add_argument("--seeds", type=positive_int, default=DEFAULT_SEEDS)
    parser.add_argument("--sampled", type=positive_int, default=DEFAULT_SAMPLED,
                        help=f"programs compiled one by one (default {DEFAULT_SAMPLED})")
    parser.add_argument("--repeats", type=positive_int, default=DEFAULT_REPEATS)
    parser.add_argument("--skip-search", action="store_true",
                        help="skip the pinned search (cache_hit_rate is then null)")
    args = parser.parse_args(list(argv) if argv is not None else None)

    try:
        # stdout carries the document only: whatever the search prints goes to stderr
        with contextlib.redirect_stdout(sys.stderr):
            result = run(task=args.task, population=args.population, steps=args.steps,
                         seeds=args.seeds, n_sampled=args.sampled, repeats=args.repeats,
                         skip_search=args.skip_search)
    except SearchUnavailable as e:
        _log(f"programs benchmark: {e}")
        return 2
    from benchmarks import emit
    emit(result, args.json, _table)
    if not result["agree"]:
        _log(f"programs benchmark: interpreter and optax Adam final losses differ "
             f"(max rel diff {_fmt_rel(result['max_rel_diff'])}, rtol {RTOL})")
        return 1
    if result["backend"] == "cpu" and result["speedup_vs_compile_each"] < SPEEDUP_GATE_CPU:
        _log(f"programs benchmark: speedup_vs_compile_each "
             f"{result['speedup_vs_compile_each']:.1f} is below the CPU gate "
             f"{SPEEDUP_GATE_CPU:g} (expected only at the pinned configuration)")
    target = OVERHEAD_TARGET_CPU if result["backend"] == "cpu" else OVERHEAD_TARGET_GPU
    if result["interpreter_overhead"] > target:
        _log(f"programs benchmark: interpreter_overhead {result['interpreter_overhead']:.2f} "
             f"is above the {result['backend']} goal {target:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

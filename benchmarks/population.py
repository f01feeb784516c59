"""Population benchmark: the lab's evaluator against a Python loop over candidates.

Both sides do the same work: the same task, the same population of Adam genomes (learning rates
spread log-uniformly), the same ``[population, seeds]`` keys and the same ``train`` function.

* evaluator: ``lab.core.evaluate.evaluate(train, genomes, keys, mesh)``, one compiled call of
  ``vmap(vmap(train))`` over candidates x seeds (the candidate axis sharded over all devices);
* loop: ``jax.jit(jax.vmap(train, in_axes=(None, 0)))`` (vmapped over seeds only), compiled once,
  then called once per candidate from Python.

Compile time (first call) is reported apart from the steady state (median of ``repeats`` later
calls, blocked on the results). ``memory_bytes_per_candidate``: XLA's memory analysis of the
evaluator's compiled call (temporaries, arguments and outputs on one device) over the candidates
each device holds. The final losses of both sides must agree (``rtol=1e-4``).

Usage::

    python -m benchmarks.population            # a table
    python -m benchmarks.population --json     # one strict JSON document on stdout
    lab bench population --json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence

import jax
import numpy as np

# the figures the benchmark gates on (plain numbers), and a run of seconds (the tests')
GATED = ("speedup_vs_loop", "compile_seconds")
SMALL = ("--populations", "4,8", "--steps", "20", "--repeats", "1")
DEFAULT_POPULATIONS = (16, 64, 256)
DEFAULT_STEPS = 100  # inner steps; a tiny task at 100 steps keeps the default run well under 2 min
LR_RANGE = (1e-4, 1e-1)  # Adam learning rates, spread log-uniformly over the population
RTOL = 1e-4


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _resolve_task(task):
    """None -> the first task of the ``smoke`` suite; a name -> that task; a Task as is."""
    import tasks

    if task is None:
        return tasks.get_suite("smoke")[0]
    if isinstance(task, str):
        return tasks.get_task(task)
    return task


def adam_population(population: int, lr_range: tuple[float, float] = LR_RANGE):
    """``population`` Adam genomes, learning rates log-uniformly spaced over ``lr_range``."""
    from lab.core.optimizers import make_baseline
    from lab.core.rule import stack_genomes

    lrs = np.logspace(np.log10(lr_range[0]), np.log10(lr_range[1]), population)
    return stack_genomes([make_baseline("adam", {"learning_rate": float(lr)}).genome
                          for lr in lrs])


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _middle(rows: list[dict], key: str = "speedup") -> float:
    by_p = {r["population"]: r for r in rows}
    if 64 in by_p:
        return by_p[64][key]
    pops = sorted(by_p)
    return by_p[pops[len(pops) // 2]][key]


def run(populations: Sequence[int] = DEFAULT_POPULATIONS, task=None, seeds: int = 2,
        steps: int | None = None, repeats: int = 3) -> dict:
    """Times the evaluator and the per-candidate loop on the same work.

    Args:
      populations: population sizes to measure, in order (compile time is read at the first).
      task: a task name or ``Task``; default the first task of the ``smoke`` suite.
      seeds: training runs per candidate.
      steps: inner steps per run; default ``DEFAULT_STEPS``.
      repeats: steady-state calls per side and population; the median is reported.

    Returns:
      A strict-JSON-able dict (see the module docstring and ``main``).
    """
    from lab.core.evaluate import (
        evaluate,
        make_mesh,
        make_train,
        memory_per_device,
        pad,
        padded_size,
        task_keys,
    )
    from lab.core.optimizers import make_baseline

    populations = [int(p) for p in populations]
    if not populations or min(populations) < 1:
        raise ValueError(f"populations must be positive integers, got {populations}")
    if seeds < 1 or repeats < 1:
        raise ValueError(f"seeds and repeats must be >= 1, got seeds={seeds}, repeats={repeats}")
    the_task = _resolve_task(task)
    steps = int(steps or DEFAULT_STEPS)
    rule = make_baseline("adam")
    train = make_train(the_task, rule, steps)  # one train object: keys the evaluator's jit cache
    mesh = make_mesh(0)  # all devices
    loop_fn = jax.jit(jax.vmap(train, in_axes=(None, 0)))

    rows: list[dict] = []
    agree = True
    compile_seconds = loop_compile_seconds = None
    max_rel_diff = 0.0
    for pop in populations:
        genomes = adam_population(pop)
        keys = task_keys(seeds, pop)
        # The loop's per-candidate inputs are sliced outside the timed region.
        cand_genomes = [jax.tree.map(lambda x, i=i: x[i], genomes) for i in range(pop)]
        cand_keys = [keys[i] for i in range(pop)]
        jax.block_until_ready((cand_genomes, cand_keys))

        def run_evaluator(genomes=genomes, keys=keys):
            return evaluate(train, genomes, keys, mesh)  # numpy out: already blocked

        def run_loop(cand_genomes=cand_genomes, cand_keys=cand_keys):
            outs = [loop_fn(g, k) for g, k in zip(cand_genomes, cand_keys, strict=True)]
            return jax.block_until_ready(outs)

        first_eval, ev_out = _timed(run_evaluator)
        if compile_seconds is None:
            compile_seconds = first_eval
        if loop_compile_seconds is None:  # one jitted function, one shape: compiles once
            g0, k0 = cand_genomes[0], cand_keys[0]
            loop_compile_seconds, _ = _timed(
                lambda g0=g0, k0=k0: jax.block_until_ready(loop_fn(g0, k0)))
        first_loop, loop_out = _timed(run_loop)  # warm: already compiled

        ev_times, loop_times = [], []
        for _ in range(repeats):  # interleaved, so drift hits both sides alike
            t, ev_out = _timed(run_evaluator)
            ev_times.append(t)
            t, loop_out = _timed(run_loop)
            loop_times.append(t)

        ev_final = np.asarray(ev_out["final_loss"], np.float64)
        loop_final = np.stack([np.asarray(o["final_loss"], np.float64) for o in loop_out])
        ok = ev_final.shape == loop_final.shape and bool(
            np.allclose(ev_final, loop_final, rtol=RTOL, equal_nan=True))
        agree = agree and ok
        finite = np.isfinite(ev_final) & np.isfinite(loop_final)
        if finite.any():
            rel = np.abs(ev_final - loop_final)[finite] / np.maximum(
                np.abs(loop_final[finite]), 1e-30)
            max_rel_diff = max(max_rel_diff, float(rel.max()))

        ev_s = float(statistics.median(ev_times))
        loop_s = float(statistics.median(loop_times))
        _, padded = padded_size(pop, mesh)
        per_device = memory_per_device(train, pad(genomes, padded), pad(keys, padded), mesh)
        row = {"population": pop, "evaluator_seconds": ev_s, "loop_seconds": loop_s,
               "speedup": loop_s / ev_s, "candidates_per_s": pop / ev_s,
               "loop_candidates_per_s": pop / loop_s,
               "evaluator_first_call_seconds": float(first_eval), "agree": ok,
               "memory_bytes_per_candidate": None if per_device is None
               else per_device / (padded // mesh.devices.size)}
        rows.append(row)
        _log(f"population {pop}: evaluator {ev_s:.4f}s, loop {loop_s:.4f}s, "
             f"speedup {row['speedup']:.2f}x, first call {first_eval:.2f}s, agree {ok}")

    return {
        "benchmark": "population",
        "task": the_task.name,
        "seeds": int(seeds),
        "steps": steps,
        "repeats": int(repeats),
        "device": jax.default_backend(),
        "devices": int(jax.device_count()),
        "by_population": rows,
        "speedup_vs_loop": float(_middle(rows)),
        "memory_bytes_per_candidate": _middle(rows, "memory_bytes_per_candidate"),
        "compile_seconds": float(compile_seconds),
        "loop_compile_seconds": float(loop_compile_seconds),
        "max_rel_diff": float(max_rel_diff),
        "agree": bool(agree),
    }


def _populations(text: str) -> tuple[int, ...]:
    try:
        pops = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e
    if not pops or min(pops) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return pops


def _table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"population benchmark: {result['task']}, {result['seeds']} seeds, "
                        f"{result['steps']} steps, {result['device']} x{result['devices']}")
    for col in ("population", "evaluator s", "loop s", "speedup", "candidates/s", "agree"):
        table.add_column(col, justify="right")
    for r in result["by_population"]:
        table.add_row(str(r["population"]), f"{r['evaluator_seconds']:.4f}",
                      f"{r['loop_seconds']:.4f}", f"{r['speedup']:.2f}x",
                      f"{r['candidates_per_s']:.1f}", "yes" if r["agree"] else "NO")
    console = Console()
    console.print(table)
    console.print(f"compile: evaluator {result['compile_seconds']:.2f}s (first call), "
                  f"loop {result['loop_compile_seconds']:.2f}s; "
                  f"speedup vs loop {result['speedup_vs_loop']:.2f}x; "
                  f"agree {result['agree']} (max rel diff {result['max_rel_diff']:.1e})",
                  markup=False, highlight=False)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.population [--json] [--populations 16,64,256] ...``.

    Exits 0 when both sides agree, 1 when their final losses differ (the document is still
    printed).
    """
    parser = argparse.ArgumentParser(prog="lab bench population",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true",
                        help="print one strict JSON document on stdout")
    parser.add_argument("--populations", type=_populations, default=DEFAULT_POPULATIONS,
                        help="comma-separated population sizes (default 16,64,256)")
    parser.add_argument("--task", default=None, help="task name (default: first smoke task)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None,
                        help=f"inner steps (default {DEFAULT_STEPS})")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(list(argv) if argv is not None else None)

    result = run(populations=args.populations, task=args.task, seeds=args.seeds,
                 steps=args.steps, repeats=args.repeats)
    from benchmarks import emit
    emit(result, args.json, _table)
    if not result["agree"]:
        _log(f"population benchmark: evaluator and loop final losses differ "
             f"(max rel diff {result['max_rel_diff']:.2e} > rtol {RTOL})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

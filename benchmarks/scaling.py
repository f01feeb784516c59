"""Scaling benchmark: one generation of the program search over 1, 2 and 4 devices of one
process, and over two processes of two devices each (``jax.distributed``, gloo on CPU).

The generation is the one the search runs: a population of distinct programs (mutation chains of
the seeds, ``benchmarks.programs.distinct_programs``) scored by the supervised scorer on the
``smoke`` suite (the interpreter, every task, ``seeds`` seeds each). Each configuration runs in a
worker subprocess (a process's device count is fixed when JAX starts); a worker compiles, then
times ``repeats`` generations with fresh keys. Reported:

* ``by_devices``: candidates scored per second with 1, 2 and 4 devices in one process;
* ``scaling_efficiency``: throughput at the largest device count / (count x throughput at 1);
* ``by_processes``: one process x 4 devices against two processes x 2 devices, and
  ``process_efficiency`` (the second over the first);
* ``bytes_gathered_per_generation``: what crosses hosts in the lab's design (every task's metrics
  of every candidate, gathered), against ``genome_bytes_per_generation``, what a design that ships
  the population from process 0 would send (and it would gather the metrics as well).

On a CPU the "devices" are slices of the same cores (``jax_num_cpu_devices``), so these figures
show the sharding's overhead, not a speed-up; the output says so. On a machine with several
accelerators they show the speed-up.

Usage::

    lab bench scaling --json
    python -m benchmarks.scaling --population 32 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

import numpy as np

from benchmarks import emit, positive_int

GATED = ("scaling_efficiency",)
SMALL = ("--population", "4", "--steps", "5", "--repeats", "1", "--devices", "1,2",
         "--no-processes")
DEFAULT_POPULATION = 32
DEFAULT_STEPS = 50
DEFAULT_SEEDS = 2
DEFAULT_REPEATS = 3
DEFAULT_DEVICES = (1, 2, 4)
SUITE = "smoke"
CPU_NOTE = ("CPU devices here are slices of the same cores (jax_num_cpu_devices): the figures "
            "show the overhead of sharding and of joining processes, not a speed-up")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _nbytes(tree) -> int:
    import jax
    return int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree)))


def worker(population: int, steps: int, seeds: int, repeats: int) -> dict:
    """One configuration, in this process (joined already where it is one of several)."""
    import jax

    import tasks
    from benchmarks.programs import distinct_programs
    from lab.core.evaluate import make_mesh
    from lab.core.fitness import SuiteScorer
    from lab.core.rule import stack_genomes
    from lab.kinds.program.programs import genome_of, program_rule
    mesh = make_mesh(0)
    suite = tasks.get_suite(SUITE)
    genomes = stack_genomes([genome_of(p) for p in distinct_programs(population)])
    scorer = SuiteScorer(SUITE, "bench", suite, program_rule(), steps, seeds,
                         {t.name: 1.0 for t in suite}, lr=1.0, mesh=mesh)
    start = time.perf_counter()
    first = scorer.score(genomes, generation=0, slots=np.zeros(population, np.int32))
    compile_seconds = time.perf_counter() - start
    times = []
    for g in range(1, repeats + 1):
        start = time.perf_counter()
        scorer.score(genomes, generation=g, slots=np.zeros(population, np.int32))
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    metrics = {name: {k: v for k, v in m.items() if k != "fitness"}
               for name, m in first["tasks"].items()}
    return {"devices": int(mesh.devices.size), "processes": jax.process_count(),
            "platform": jax.default_backend(), "seconds_per_generation": seconds,
            "candidates_per_s": population / seconds, "first_generation_seconds":
            compile_seconds, "bytes_gathered_per_generation": _nbytes(metrics),
            "genome_bytes_per_generation": _nbytes(genomes)}


def free_port() -> int:
    """A free local TCP port (for a coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(devices: int, args: list[str], processes: int = 1, timeout: float = 900) -> dict:
    """The worker on ``processes`` local processes of ``devices`` CPU devices each: process 0's
    result."""
    env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices))
    if env.get("JAX_PLATFORMS", "cpu") != "cpu":
        raise ValueError("the scaling bench's worker runs on CPU devices (JAX_PLATFORMS=cpu)")
    env["JAX_PLATFORMS"] = "cpu"
    port = free_port()
    procs = []
    for i in reversed(range(processes)):
        flags = [] if processes == 1 else ["--coordinator", f"127.0.0.1:{port}",
                                           "--num-processes", str(processes),
                                           "--process-id", str(i)]
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "benchmarks.scaling", "--worker", *args, *flags],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            if p.returncode != 0:
                raise RuntimeError(f"scaling worker ({processes} x {devices} devices) exited "
                                   f"{p.returncode}: {err.strip().splitlines()[-1:]}")
            outs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    # process 0 was started last; gloo prints its own lines on stdout: the document is the last
    lines = [ln for ln in outs[-1].splitlines() if ln.startswith("{")]
    return json.loads(lines[-1])


def run(population: int = DEFAULT_POPULATION, steps: int = DEFAULT_STEPS,
        seeds: int = DEFAULT_SEEDS, repeats: int = DEFAULT_REPEATS,
        devices: Sequence[int] = DEFAULT_DEVICES, processes: bool = True) -> dict:
    """Runs every configuration in a subprocess; returns the figures (module docstring)."""
    if min(population, steps, seeds, repeats, *devices) < 1:
        raise ValueError("population, steps, seeds, repeats and devices must be >= 1")
    args = ["--population", str(population), "--steps", str(steps), "--seeds", str(seeds),
            "--repeats", str(repeats)]
    by = {}
    for n in sorted(set(devices)):
        by[n] = _spawn(n, args)
        _log(f"1 process x {n} device(s): {by[n]['candidates_per_s']:.2f} candidates/s "
             f"({by[n]['seconds_per_generation']:.3f} s per generation of {population})")
    top = max(by)
    result = {
        "benchmark": "scaling", "kind": "program", "suite": SUITE, "population": population,
        "steps": steps,
        "seeds": seeds, "repeats": repeats, "platform": by[top]["platform"],
        "by_devices": {str(n): r["candidates_per_s"] for n, r in by.items()},
        "seconds_by_devices": {str(n): r["seconds_per_generation"] for n, r in by.items()},
        "scaling_efficiency": by[top]["candidates_per_s"] / (top * by[min(by)]["candidates_per_s"]
                                                             / min(by)),
        "bytes_gathered_per_generation": by[top]["bytes_gathered_per_generation"],
        "genome_bytes_per_generation": by[top]["genome_bytes_per_generation"],
        "note": CPU_NOTE if by[top]["platform"] == "cpu" else "",
    }
    if processes:
        one = by[4] if 4 in by else _spawn(4, args)
        two = _spawn(2, args, processes=2)
        _log(f"2 processes x 2 devices: {two['candidates_per_s']:.2f} candidates/s (1 process "
             f"x 4 devices: {one['candidates_per_s']:.2f})")
        result["by_processes"] = {"1x4": one["candidates_per_s"],
                                  "2x2": two["candidates_per_s"]}
        result["process_efficiency"] = two["candidates_per_s"] / one["candidates_per_s"]
    return result


def _table(result: dict) -> None:
    from rich.table import Table

    from lab.console import stderr
    t = Table(title=f"scaling: program generation of {result['population']} on "
              f"{result['suite']} ({result['platform']})")
    for col in ("configuration", "candidates/s", "s per generation"):
        t.add_column(col)
    for n, v in result["by_devices"].items():
        t.add_row(f"1 process x {n} device(s)", f"{v:.2f}",
                  f"{result['seconds_by_devices'][n]:.3f}")
    for name, v in result.get("by_processes", {}).items():
        t.add_row(f"{name[0]} process(es) x {name[2]} devices", f"{v:.2f}", "")
    stderr().print(t)
    print(f"scaling efficiency {result['scaling_efficiency']:.2f}"
          + (f", 2 processes / 1 process {result['process_efficiency']:.2f}"
             if "process_efficiency" in result else "")
          + f"; bytes gathered per generation {result['bytes_gathered_per_generation']:,} "
          f"(a design that ships genomes: {result['genome_bytes_per_generation']:,} more)")
    if result["note"]:
        print(result["note"])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lab bench scaling", description=__doc__.split("\n")[0])
    p.add_argument("--population", type=positive_int, default=DEFAULT_POPULATION)
    p.add_argument("--steps", type=positive_int, default=DEFAULT_STEPS, help="inner steps")
    p.add_argument("--seeds", type=positive_int, default=DEFAULT_SEEDS)
    p.add_argument("--repeats", type=positive_int, default=DEFAULT_REPEATS)
    p.add_argument("--devices", default=",".join(map(str, DEFAULT_DEVICES)),
                   help="device counts of one process, comma-separated")
    p.add_argument("--no-processes", action="store_true",
                   help="skip the two-process configuration")
    p.add_argument("--json", action="store_true")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--coordinator", default=None, help=argparse.SUPPRESS)
    p.add_argument("--num-processes", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--process-id", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        from lab.core import hosts
        hosts.initialize(args.coordinator, args.num_processes, args.process_id)
        import jax
        jax.config.update("jax_enable_compilation_cache", False)  # real compile times
        out = worker(args.population, args.steps, args.seeds, args.repeats)
        if hosts.is_leader():
            print(json.dumps(out))
        hosts.finish()
        return 0
    try:
        devices = tuple(int(x) for x in args.devices.split(","))
    except ValueError:
        p.error(f"--devices {args.devices!r}: expected counts like 1,2,4")
    result = run(args.population, args.steps, args.seeds, args.repeats, devices,
                 processes=not args.no_processes)
    emit(result, args.json, _table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

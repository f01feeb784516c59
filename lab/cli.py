"""The ``lab`` command: launch | runs | inspect | replay | compare | export | tasks | kinds |
references | bench.

Reading commands take ``--json``: exactly one strict JSON document on stdout; progress, warnings
and logs go to stderr. Bad input exits 2 with one line naming what is wrong and where.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from pathlib import Path

from lab.jsonio import dumps


class UsageError(ValueError):
    """Bad input from the command line."""


def _store(args):
    from lab.core.store import Store
    return Store(args.store)


def _emit(args, doc, human) -> None:
    if getattr(args, "json", False):
        sys.stdout.write(dumps(doc, indent=None) + "\n")
    else:
        human(doc)


def cmd_launch(args) -> int:
    from lab.core import hosts
    from lab.core.config import load_config
    from lab.core.loop import launch
    if args.resume is None and args.config is None:
        raise UsageError("give a CONFIG file, or --resume RUN")
    # before anything starts JAX: the processes join first (a no-op for one process)
    hosts.initialize(args.coordinator, args.num_processes, args.process_id,
                     peer_timeout=args.peer_timeout, connect_timeout=args.connect_timeout,
                     agree={"resume": args.resume})
    cfg = load_config(args.config, args.set or ()) if args.resume is None else None
    local = _store(args) if hosts.is_leader() else None  # the others get process 0's answers
    try:
        store = local if hosts.count() == 1 else hosts.SharedStore(local)
        run_id = launch(cfg, store, name=args.name, resume=args.resume)
        run, folder = store.get_run(run_id), store.run_dir(run_id)
    finally:
        if local is not None:
            local.close()
    if not hosts.is_leader():
        return 0
    print(f"run {run_id}  name {run['name']}  best {run['best']}  "
          f"generations {run['generations']}  outputs {Path(folder)}")
    return 0


def cmd_runs(args) -> int:
    with _store(args) as store:
        rows = [{"id": r["id"], "name": r["name"], "kind": r["kind"], "status": r["status"],
                 "best": r["best"], "generations": r["generations"], "created": r["created"],
                 "suite": r["config"].get("suite")} for r in store.runs()]

    def human(rows):
        from lab.tables import runs_table
        runs_table(rows)
    _emit(args, rows, human)
    return 0


def cmd_inspect(args) -> int:
    from lab.commands.inspection import inspect_target
    from lab.commands.targets import needs_store
    from lab.core.store import default_store_path
    path = Path(args.store) if args.store else default_store_path()
    if not needs_store(args.target) and not path.exists():
        doc = inspect_target(args.target, None, top=args.top)  # needs no store: create none
    else:
        with _store(args) as store:
            doc = inspect_target(args.target, store, top=args.top)

    def human(doc):
        from lab.tables import inspect_view
        inspect_view(doc)
    _emit(args, doc, human)
    return 0


def cmd_replay(args) -> int:
    from lab.commands.replay import replay_target
    with _store(args) as store:
        doc = replay_target(args.target, store, args.suite, args.seeds, args.baselines,
                            args.devices, args.tune_lr, args.horizon_scale)

    def human(doc):
        from lab.tables import replay_table
        replay_table(doc)
    _emit(args, doc, human)
    return 0


def cmd_compare(args) -> int:
    from lab.commands.compare import compare
    doc = compare(args.a, args.b)

    def human(doc):
        from lab.tables import compare_tables
        compare_tables(doc)
    _emit(args, doc, human)
    return 0


def cmd_export(args) -> int:
    from lab.commands.export import export
    if args.seeds is not None and args.seeds < 1:
        raise UsageError(f"--seeds {args.seeds}: must be at least 1")
    with _store(args) as store:
        folder = export(args.target, args.name, Path(args.out), store, seeds=args.seeds,
                        suite=args.suite)
    print(f"exported {args.target} to {folder}")
    return 0


def cmd_tasks(args) -> int:
    import tasks
    rows = tasks.task_rows()
    if args.suite:
        tasks.get_suite(args.suite)
        rows = [r for r in rows if args.suite in r["suites"]]

    def human(rows):
        from lab.tables import tasks_table
        tasks_table(rows)
    _emit(args, rows, human)
    return 0


def cmd_kinds(args) -> int:
    from lab.core.kind import registry
    rows = [{"name": k.name, "summary": k.summary, "domain": k.domain, "prefix": k.prefix,
             "module": k.make_rule.__module__} for k in registry().values()]

    def human(rows):
        from lab.tables import kinds_table
        kinds_table(rows)
    _emit(args, rows, human)
    return 0


def cmd_references(args) -> int:
    import tasks
    from lab.console import log
    from lab.core.evaluate import make_mesh
    from lab.core.references import build
    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    chosen = {}
    for s in suites:
        for t in tasks.get_suite(s):
            chosen[t.name] = (t, tasks.domain_of(s))
    if args.tasks:
        names = [t.strip() for t in args.tasks.split(",") if t.strip()]
        unknown = [t for t in names if t not in chosen]
        if unknown:
            raise UsageError(f"--tasks: {', '.join(unknown)} not in the suites "
                             f"{', '.join(suites)}")
        chosen = {t: chosen[t] for t in names}
    try:
        seeds = tuple(int(s) for s in args.seeds.split(","))
    except ValueError:
        raise UsageError(f"--seeds {args.seeds!r}: expected counts like 2,5") from None
    if args.horizon_scale < 1:
        raise UsageError(f"--horizon-scale {args.horizon_scale}: must be at least 1")
    if args.out is None:
        if not (Path("tasks") / "suites.py").exists():
            raise UsageError("run from the lab's checkout to update tasks/references.json, or "
                             "give --out PATH")
        args.out = "tasks/references.json"
    out = Path(args.out)

    def progress(task, which, n, metric, r):
        lr = f"  lr={r['lr']:.3g}" if r.get("lr") is not None else ""
        at = f" x{args.horizon_scale}" if args.horizon_scale > 1 else ""
        log(f"{task:28s} {which:8s} seeds={n}{at}{lr}  {metric.replace('_', ' ')}="
            f"{r['value']:.4g}")
    which = None
    if args.which:
        from lab.core.references import family_of
        names = tuple(w.strip() for w in args.which.split(",") if w.strip())
        try:
            which = {f: tuple(w for w in names if family_of(w).name == f)
                     for f in {family_of(w).name for w in names}}
        except ValueError as e:
            raise UsageError(f"--which: {e}") from None
    doc = build(list(chosen.values()), seeds, out, make_mesh(0), progress, which,
                args.horizon_scale)
    print(f"wrote {len(doc['entries'])} references to {out}")
    return 0


def cmd_bench(args) -> int:
    from benchmarks import run_benchmark
    return run_benchmark(args.name, (["--json"] if args.json else []) + list(args.rest))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lab", description="A JAX lab that discovers training "
                                "algorithms.")
    p.add_argument("--store", default=None,
                   help="SQLite store (default: $LAB_STORE or ./lab.db)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp):
        sp.add_argument("--store", default=argparse.SUPPRESS, help="SQLite store path")
        return sp

    s = common(sub.add_parser("launch", help="run a population search from a config"))
    s.add_argument("config", nargs="?", help="a YAML config (see configs/)")
    s.add_argument("--resume", metavar="RUN", default=None,
                   help="continue RUN from its latest checkpoint (output.checkpoint_every)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    s.add_argument("--name", default=None, help="run name (default: the config's name)")
    d = s.add_argument_group("several processes (jax.distributed; every process runs the same "
                             "command; process 0 writes the store)")
    d.add_argument("--coordinator", metavar="HOST:PORT", default=None,
                   help="process 0's address, or 'auto' for the cluster's own variables "
                   "(SLURM, Open MPI, TPU pods, Kubernetes)")
    d.add_argument("--num-processes", type=int, metavar="N", default=None)
    d.add_argument("--process-id", type=int, metavar="I", default=None)
    d.add_argument("--peer-timeout", type=float, metavar="SECONDS", default=60.0,
                   help="a process silent this long counts as lost: the others stop with an "
                   "error (default 60)")
    d.add_argument("--connect-timeout", type=int, metavar="SECONDS", default=120,
                   help="how long to wait for the coordinator and every process to join")
    s.set_defaults(fn=cmd_launch)

    s = common(sub.add_parser("runs", help="list runs in the store"))
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_runs)

    s = common(sub.add_parser("inspect", help="show a run's best candidates or one candidate"))
    s.add_argument("target", help="RUN, RUN:RANK, a kind's PREFIX:... (baseline:NAME(...), "
                   "program:PATH), hash:HEX, or an artifact folder")
    s.add_argument("--top", type=int, default=5, help="candidates shown for a run")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_inspect)

    s = common(sub.add_parser("replay", help="re-run a candidate on held-out tasks: "
                              "normalized scores and speedups against tuned baselines"))
    s.add_argument("target")
    s.add_argument("--suite", default=None,
                   help="default: heldout (update rules), rl-heldout (drift objectives)")
    s.add_argument("--seeds", type=int, default=None, help="default: 5 (8 for drift)")
    s.add_argument("--baselines", default=None,
                   help="default: adam,adamw,lion,lamb,schedule_free_adamw (update rules), "
                        "ppo_clip,dpo (drift)")
    s.add_argument("--tune-lr", action="store_true",
                   help="also tune the target's learning rate per task (programs, learned "
                        "optimizers, optax optimizers)")
    s.add_argument("--horizon-scale", type=int, default=1, metavar="K",
                   help="run every task for K times its default steps, against baselines "
                   "tuned at that budget (tuned on the learning-rate grid on first use and "
                   "cached in the store: costly, a grid of runs per task and baseline)")
    s.add_argument("--devices", type=int, default=0, help="devices in the mesh (0 = all)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_replay)

    s = common(sub.add_parser("compare", help="two candidates' stored replays (artifacts' "
                              "metrics.json or `lab replay --json` files), paired seed by seed"))
    s.add_argument("a", metavar="A", help="an artifact folder or a replay JSON file")
    s.add_argument("b", metavar="B", help="the same, compared against: A minus B")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_compare)

    s = common(sub.add_parser("export", help="write a candidate to discovered/NAME"))
    s.add_argument("target", help="RUN or RUN:RANK (or any target form)")
    s.add_argument("--name", required=True)
    s.add_argument("--out", default="discovered")
    s.add_argument("--suite", default=None, help="suite of the held-out scores (default: "
                   "heldout; rl-heldout for drift objectives)")
    s.add_argument("--seeds", type=int, default=None, help="default: 5 (8 for drift)")
    s.set_defaults(fn=cmd_export)

    s = common(sub.add_parser("tasks", help="list tasks and suites"))
    s.add_argument("--suite", default=None)
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_tasks)

    s = common(sub.add_parser("kinds", help="list the registered kinds of discovery"))
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_kinds)

    s = common(sub.add_parser("references", help="tuned baselines per task (build)"))
    rs = s.add_subparsers(dest="action", required=True, metavar="ACTION")
    b = rs.add_parser("build", help="regenerate tasks/references.json")
    b.add_argument("--suites", default="smoke,train,heldout")
    b.add_argument("--seeds", default="2,5", help="comma-separated seed counts")
    b.add_argument("--tasks", default="",
                   help="comma-separated tasks of those suites to build (default: every one); "
                        "the file's other entries are kept")
    b.add_argument("--which", default="",
                   help="comma-separated references to build (e.g. lamb,schedule_free_adamw); "
                        "the file's others are kept (default: every one of each family)")
    b.add_argument("--horizon-scale", type=int, default=1, metavar="K",
                   help="at K times each task's default budget (the references of "
                        "`lab replay --horizon-scale K`); the file's other budgets are kept")
    b.add_argument("--out", default=None,
                   help="default: tasks/references.json of the checkout you are in")
    b.set_defaults(fn=cmd_references)

    s = common(sub.add_parser("bench", help="run a benchmark (e.g. population)"))
    s.add_argument("name")
    s.add_argument("--json", action="store_true")
    s.add_argument("rest", nargs=argparse.REMAINDER)
    s.set_defaults(fn=cmd_bench)
    return p


def _compile_cache() -> None:
    """Persistent XLA compilation cache, so a second command reuses the first one's compiles.

    ``LAB_JAX_CACHE`` sets the folder (default ``~/.cache/lab/jax``); set it empty to disable.
    """
    folder = os.environ.get("LAB_JAX_CACHE",
                            os.path.join(os.path.expanduser("~"), ".cache", "lab", "jax"))
    if folder:
        import jax
        jax.config.update("jax_compilation_cache_dir", folder)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import lab.kinds  # noqa: F401  (registers the lab's own kinds; plugins load on first lookup)
    if args.command != "bench":  # benchmarks report real compile times
        _compile_cache()
    if getattr(args, "store", None) is None:
        args.store = os.environ.get("LAB_STORE") or None
    rc, error = 1, None
    try:
        rc = args.fn(args)
    except KeyboardInterrupt as e:
        print("lab: interrupted", file=sys.stderr)
        rc, error = 130, e
    except ValueError as e:  # ConfigError, StoreError, HostsError, bad targets: ValueErrors
        msg = str(e).strip() or type(e).__name__
        print(f"lab {args.command}: error: {_who()}{msg}", file=sys.stderr)
        rc, error = 2, e
    except (OSError, sqlite3.Error) as e:  # unreadable paths, a locked or broken store
        print(f"lab {args.command}: error: {_who()}{e}", file=sys.stderr)
        rc, error = 2, e
    except BaseException as e:
        error = e
        raise
    finally:
        _leave_job(error, rc)
    return rc


def _who() -> str:
    """``process I: `` over several processes, else nothing."""
    from lab.core import hosts
    return f"process {hosts.index()}: " if hosts.count() > 1 else ""


def _leave_job(error: BaseException | None, rc: int) -> None:
    """Over several processes: a clean end waits for every process; a failure tells the others
    (they stop at once, naming this process) and leaves without waiting for them."""
    from lab.core import hosts
    if hosts.count() == 1:
        return
    if error is not None and rc == 1:  # not reported in one line yet
        lost = hosts.silent_peers()
        if lost:  # a collective failed because a peer is gone (gloo: "connection reset")
            hosts.report_lost(f"lost process {', '.join(map(str, lost))} of {hosts.count()} "
                              f"(a collective failed: {hosts.first_line(error)[:200]})")
            rc = hosts.LOST_EXIT
        else:
            import traceback
            traceback.print_exception(error)
    hosts.finish(error)
    if error is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc if rc != 0 else 1)


if __name__ == "__main__":
    sys.exit(main())

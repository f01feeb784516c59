"""Human-readable views (rich tables on stdout) of what the reading commands return."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

# Wide enough for the replay table when stdout is a pipe or a file (rich assumes 80 columns).
_OUT = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def _f(x, fmt: str = "{:.4f}") -> str:
    return "-" if x is None else fmt.format(x)


def runs_table(rows: list[dict]) -> None:
    t = Table(title="runs")
    for c in ("id", "name", "kind", "suite", "status", "best", "generations"):
        t.add_column(c, no_wrap=c == "id")
    for r in rows:
        t.add_row(r["id"], r["name"], r["kind"], str(r.get("suite")), r["status"],
                  _f(r["best"]), str(r["generations"]))
    _OUT.print(t)


def tasks_table(rows: list[dict]) -> None:
    t = Table(title="tasks")
    for c in ("name", "family", "suites", "params", "steps"):
        t.add_column(c)
    for r in rows:
        family = f"{r['family']}:{r['env']}" if r.get("env") else r["family"]
        t.add_row(r["name"], family, ",".join(r["suites"]), str(r["params"]),
                  str(r["steps"]))
    _OUT.print(t)


def kinds_table(rows: list[dict]) -> None:
    t = Table(title="kinds")
    for c in ("name", "domain", "prefix", "summary", "module"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["name"], r["domain"], r["prefix"] or "-", r["summary"], r["module"])
    _OUT.print(t)


def _candidate(doc: dict) -> None:
    eq = ", ".join(doc["equals"]) or "no known rule"
    _OUT.print(f"[bold]{doc['label']}[/bold]  ({doc['kind']}:{doc['name']})")
    _OUT.print(f"  {doc['readable']}", markup=False)
    _OUT.print(f"  hash {doc['hash']}   = {eq}   closest {doc['closest']['name']} "
               f"(distance {doc['closest']['distance']:.3g})")
    same = (doc.get("store") or {}).get("equals")
    if same:
        _OUT.print(f"  same function in the store: {', '.join(h[:12] for h in same[:8])}"
                   + (f" and {len(same) - 8} more" if len(same) > 8 else ""))
    if doc.get("fitness") is not None:
        _OUT.print(f"  fitness {doc['fitness']:.4f}   outer lr {doc['lr']}")
    if doc.get("behaviour"):
        e = doc["behaviour"]["effective_step"]
        _OUT.print(f"  effective step on {e['task']} {_f(e['values'][0], '{:.3g}')} -> "
                   f"{_f(e['values'][-1], '{:.3g}')} (mean {_f(e['mean'], '{:.3g}')}; tuned "
                   f"Adam lr {_f(e['adam_lr'], '{:.3g}')})   plot: {doc.get('plot') or '-'}")


def inspect_view(doc: dict) -> None:
    if "run" in doc and isinstance(doc["run"], dict):
        r = doc["run"]
        _OUT.print(f"[bold]run {r['id']}[/bold] {r['name']}  {r['kind']} on {doc['suite']}  "
                   f"{r['status']}  best {_f(r['best'])}  {r['generations']} generations  "
                   f"cache hit rate {_f(doc['cache']['hit_rate'], '{:.0%}')}")
        search = doc.get("search") or {}
        if search.get("functions_per_hour") is not None:
            causes = search.get("cache_hits_by_cause")
            why = (" (" + ", ".join(f"{n} {c.replace('_', ' ')}" for c, n in causes.items())
                   + ")") if causes else ""
            _OUT.print(f"{search['children_generated']} children, "
                       f"{search['functions_evaluated']} functions evaluated "
                       f"({search['functions_per_hour']:.0f} per hour of generations); "
                       f"cache hits {search['children_generated'] - search['functions_evaluated']}"
                       f"{why}", markup=False, highlight=False)
        for c in doc["best"]:
            _OUT.print(f"#{c['rank']}", end=" ")
            _candidate(c)
        if doc.get("plot"):
            _OUT.print(f"fitness plot: {doc['plot']}")
    else:
        _candidate(doc)
        for s in doc.get("scores", []):
            _OUT.print(f"  score {_f(s['fitness'])} in context {s['context']} "
                       f"(run {s['run']}, generation {s['generation']}, {s['hits']} hits)")


def replay_table(doc: dict) -> None:
    import tasks
    if tasks.domain_of(doc["suite"]) == "rl":
        return rl_replay_table(doc)
    scale = doc.get("horizon_scale", 1)
    t = Table(title=f"{doc['label']} on {doc['suite']} ({doc['seeds']} seeds"
                    + (f", {scale}x steps" if scale != 1 else "") + "): normalized score "
                    "= log(loss / tuned Adam loss), lower is better; speedup = steps / steps "
                    "to reach tuned Adam's final loss")
    for c in ("task", "rule", "steps", "score", "95% interval", "speedup", "final loss",
              "eval loss", "lr"):
        t.add_column(c)
    for r in doc["rows"]:
        speed = r.get("speedup")
        t.add_row(r["task"], r["rule"], str(r.get("steps", "-")), f"{r['score']:+.3f}",
                  interval_text(r["ci95"]),
                  f"{speed:.2f}x" if speed is not None else
                  "diverged" if r["diverged"] else "never",
                  f"{r['final_loss']:.4g}", f"{r['eval_loss']:.4g}", _f(r["lr"], "{:.3g}"))
    _OUT.print(t)
    for rule, s in doc["summary"].items():
        _OUT.print(f"mean score {rule}: {s:+.3f}")
    if doc.get("plot"):
        _OUT.print(f"loss curves: {doc['plot']}")


def rl_replay_table(doc: dict) -> None:
    t = Table(title=f"{doc['label']} on {doc['suite']} ({doc['seeds']} seeds): final return "
                    "with 95% interval; score = 1 - (R - random) / (PPO-clip - random), lower "
                    "is better, 0 = PPO-clip")
    for c in ("env", "rule", "env steps", "final return", "95% interval", "mean return",
              "score", "score 95%"):
        t.add_column(c)
    for r in doc["rows"]:
        t.add_row(r["task"], r["rule"], str(r["steps"]), f"{r['final_return']:.4g}",
                  interval_text(r["ci95"], "{:.4g}"), f"{r['mean_return']:.4g}",
                  f"{r['score']:+.3f}", interval_text(r["score_ci95"]))
    _OUT.print(t)
    for rule, s in doc["summary"].items():
        _OUT.print(f"mean score {rule}: {s:+.3f}")
    if doc.get("plot"):
        _OUT.print(f"return curves: {doc['plot']}")


def interval_text(ci, fmt: str = "{:+.3f}", missing: str = "-") -> str:
    """A 95% interval as ``[lo, hi]``, or ``missing`` where there is none (one seed)."""
    lo, hi = ci if ci else (None, None)
    return missing if lo is None else f"[{fmt.format(lo)}, {fmt.format(hi)}]"


def compare_tables(doc: dict) -> None:
    """``lab compare``: per paired replay, the suite's paired differences and the per-task ones."""
    for c in doc["comparisons"]:
        scale = c.get("horizon_scale", 1)
        where = (f"{c['suite']} ({c['seeds']} seeds" + (f", {scale}x steps" if scale != 1
                                                        else "") + ")")
        t = Table(title=f"{doc['a']} minus {doc['b']} on {where}: suite means paired seed by "
                        "seed, below zero A is better")
        for col in ("A", "B", "A mean", "B mean", "difference", "95% interval", "better on",
                    "worse on"):
            t.add_column(col)
        for a, diffs in c["differences"].items():
            for b, d in diffs.items():
                t.add_row(a, b, f"{c['summary'][a]:+.3f}", f"{c['summary'][b]:+.3f}",
                          f"{d['mean']:+.3f}", interval_text(d["ci95"]),
                          ", ".join(d["better"]) or "none", ", ".join(d["worse"]) or "none")
        _OUT.print(t)
        t = Table(title=f"per task on {where}, like with like")
        for col in ("task", "A", "B", "A score", "B score", "difference", "95% interval"):
            t.add_column(col)
        for r in c["tasks"]:
            t.add_row(r["task"], r["a"], r["b"], f"{r['a_score']:+.3f}", f"{r['b_score']:+.3f}",
                      f"{r['difference']:+.3f}", interval_text(r["ci95"]))
        _OUT.print(t)
        checked = ", ".join(c["checked"]) or "none shared"
        _OUT.print(f"same seeds and references, checked on: {checked} (largest gap "
                   f"{c['agreement']:.2g})")
        for m in c.get("moved", []):
            _OUT.print(f"moved: {m['rule']} on {m['task']} by up to {m['gap']:.3g} at the same "
                       "rate (a few rows move across code versions)")
        for s in c.get("skipped", []):
            _OUT.print(f"not checked: {s['rule']} on {s['task']}, tuned to another rate since "
                       f"({_f(s['lr'][0], '{:.3g}')} in A, {_f(s['lr'][1], '{:.3g}')} in B)")
        if c.get("unchecked"):
            _OUT.print(f"warning: no shared baseline checks the pairing on "
                       f"{', '.join(c['unchecked'])}")
    for u in doc["unpaired"]:
        whose = {"a": "A's replay", "b": "B's replay"}.get(u["side"], "the replays")
        _OUT.print(f"not compared: {whose} on {u['suite']} ({u['seeds']} seeds, "
                   f"{u['horizon_scale']}x): {u['reason']}")

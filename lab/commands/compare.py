"""`lab compare A B`: two candidates' stored replays, paired seed by seed.

A and B are artifact folders (their ``metrics.json`` holds every replay the export ran: held
out at 1x, and for update rules at 4x) or files written by ``lab replay ... --json``. Replays of
A and B pair up when they ran the same suite (same version), seed count and horizon scale: then
every task ran on the same seeds (``task_keys``) against the same references, which the rows both
replays hold (their tuned baselines, PPO-clip) confirm seed by seed. A's suite mean minus B's is
taken seed by seed before its 95% interval (``suite_statistics``), as a replay's differences
from its baselines are, and per task the same; a difference below zero is A's win.

Nothing is run: comparing costs no training, and the figures are those the artifacts ship.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lab.core.replay import interval, suite_statistics

# Two replays of the same seeds with the same code agree on their shared baselines' scores bit
# for bit; across code and library versions most rows still agree to float error, a few move
# (up to 0.1 on the MNIST-1D nets, 0.27 for LAMB on the ill-conditioned quadratic, between the
# exports of 2026-12-05 and 2026-12-07). Other seeds move most rows by more than AGREEMENT_TOL;
# another reference (the normalizer every row of a task shares) moves every row of its task by
# one constant.
AGREEMENT_TOL = 0.1
MOVED_SHARE = 0.25  # more rows than this beyond AGREEMENT_TOL: not the same seeds
TUNED = " (lr tuned)"


def _replays(path: str) -> list[dict]:
    """The replay documents of an artifact folder's metrics.json or of a replay JSON file."""
    p = Path(path)
    file = p / "metrics.json" if p.is_dir() else p
    if not file.exists():
        raise ValueError(f"{path}: no such file or artifact folder" if not p.is_dir() else
                         f"{path}: no metrics.json (an exported artifact holds one)")
    try:
        doc = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not a JSON document ({e.msg}, line {e.lineno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: cannot be read ({e})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{file}: expected a replay document or an artifact's metrics.json")
    found = [doc] if "rows" in doc else [v for k, v in doc.items() if k.startswith("heldout")
                                         and isinstance(v, dict) and v.get("rows")]
    if not found:
        raise ValueError(f"{file}: holds no replay (no rows, no heldout* section with rows)")
    for held in found:
        for key in ("label", "suite", "seeds", "rows"):
            if key not in held:
                raise ValueError(f"{file}: a replay without {key!r}")
        for i, r in enumerate(held["rows"]):
            if not {"task", "rule", "scores"} <= set(r):
                raise ValueError(f"{file}: row {i} of the {held['suite']} replay lacks "
                                 f"task, rule or scores")
    return found


def _key(held: dict) -> tuple:
    return held["suite"], held.get("suite_version"), held["seeds"], held.get("horizon_scale", 1)


def _targets(held: dict) -> list[str]:
    rules = {r["rule"] for r in held["rows"]}
    return [x for x in (held["label"], held["label"] + TUNED) if x in rules]


def _pair(a: dict, b: dict, where: str) -> dict:
    """The paired comparison of two replays of the same suite, seeds and horizon."""
    a_rules, b_rules = _targets(a), _targets(b)
    for side, held, rules in (("A", a, a_rules), ("B", b, b_rules)):
        if not rules:
            raise ValueError(f"{where}: {side}'s replay has no rows of its target "
                             f"{held['label']!r}")
    rename = {x: f"{x} [B]" for x in b_rules} if set(a_rules) & set(b_rules) else {}
    b_labels = [rename.get(x, x) for x in b_rules]
    a_rows = [r for r in a["rows"] if r["rule"] in a_rules]
    b_rows = [{**r, "rule": rename.get(r["rule"], r["rule"])} for r in b["rows"]
              if r["rule"] in b_rules]
    tasks_a, tasks_b = {r["task"] for r in a_rows}, {r["task"] for r in b_rows}
    if tasks_a != tasks_b:
        raise ValueError(f"{where}: the two replays ran different tasks "
                         f"(only A: {sorted(tasks_a - tasks_b)}, only B: "
                         f"{sorted(tasks_b - tasks_a)})")
    for r in a_rows + b_rows:
        if len(r["scores"]) != a["seeds"]:
            raise ValueError(f"{where}: {r['rule']} on {r['task']} has {len(r['scores'])} "
                             f"scores for {a['seeds']} seeds")
    # the baselines both replays ran at the same rate: the same seeds against the same
    # references give the same scores, so they check that the pairing is real. A baseline tuned
    # to another rate since is skipped (its own tuning moved, not the seeds); every row of a
    # task shares its normalizer (tuned Adam's reference loss, PPO-clip's return), so a moved
    # normalizer shows in the rows that kept their rate
    shared = {(r["task"], r["rule"]): r for r in a["rows"]
              if r["rule"] not in a_rules and r["rule"] not in b_rules}
    checked, skipped, moved, deltas = set(), [], [], {}
    for r in b["rows"]:
        mine = shared.get((r["task"], r["rule"]))
        if mine is None or len(mine["scores"]) != len(r["scores"]):
            continue
        if mine.get("lr") != r.get("lr"):
            skipped.append({"task": r["task"], "rule": r["rule"], "lr": [mine.get("lr"),
                                                                          r.get("lr")]})
            continue
        delta = np.asarray(mine["scores"], np.float64) - np.asarray(r["scores"], np.float64)
        checked.add(r["rule"])
        deltas.setdefault(r["task"], []).append(delta)
        gap = float(np.nanmax(np.abs(delta), initial=0.0))
        if gap > AGREEMENT_TOL:
            moved.append({"task": r["task"], "rule": r["rule"], "gap": gap})
    rows_checked = sum(len(v) for v in deltas.values())
    for task, ds in deltas.items():  # one constant over every row and seed: the normalizer
        d = np.concatenate(ds)
        if len(ds) > 1 and abs(np.mean(d)) > AGREEMENT_TOL and np.std(d) < 1e-3:
            raise ValueError(f"{where}: every baseline on {task} is {np.mean(d):+.3g} apart in "
                             "A and B: they were scored against another reference; replay both "
                             "with this code to compare them")
    if len(moved) > MOVED_SHARE * rows_checked:
        most = max(moved, key=lambda m: m["gap"])
        raise ValueError(f"{where}: A and B disagree on {len(moved)} of the {rows_checked} "
                         f"baseline rows both ran at the same rate (e.g. {most['rule']} on "
                         f"{most['task']}, scores up to {most['gap']:.3g} apart): they did not "
                         "run on the same seeds; replay both with this code to compare them")
    worst = max((float(np.nanmax(np.abs(d), initial=0.0)) for ds in deltas.values()
                 for d in ds), default=0.0)
    stats = suite_statistics(a_rows + b_rows, a_rules, b_labels)
    by = {(r["task"], r["rule"]): np.asarray(r["scores"], np.float64) for r in a_rows + b_rows}
    tasks = []
    for x in a_rules:  # per task: like with like (own rate with own, tuned with tuned)
        y = b["label"] + x[len(a["label"]):]
        y = rename.get(y, y)
        if y not in b_labels:
            continue
        for task in sorted(tasks_a):
            diff = by[task, x] - by[task, y]
            lo, hi = interval(diff)
            tasks.append({"task": task, "a": x, "b": y, "a_score": float(np.mean(by[task, x])),
                          "b_score": float(np.mean(by[task, y])),
                          "difference": float(np.mean(diff)), "ci95": [lo, hi]})
    summary: dict[str, list] = {}
    for (_, rule), scores in by.items():
        summary.setdefault(rule, []).append(float(np.mean(scores)))
    suite, version, seeds, scale = _key(a)
    return {"suite": suite, "suite_version": version, "seeds": seeds, "horizon_scale": scale,
            "a": a_rules, "b": b_labels, "summary": {k: float(np.mean(v))
                                                     for k, v in summary.items()},
            **stats, "tasks": tasks, "checked": sorted(checked), "agreement": worst,
            "moved": moved, "skipped": skipped, "unchecked": sorted(tasks_a - set(deltas))}


def compare(a: str, b: str) -> dict:
    """Pairs every replay of ``a`` with ``b``'s of the same suite, seeds and horizon scale.

    Returns:
      ``{"a", "b", "comparisons": [{suite, suite_version, seeds, horizon_scale, "a" / "b":
      the compared rules (a label and its ``(lr tuned)`` row), summary, intervals,
      differences (A's rules minus B's, seed by seed: mean, ci95, the tasks where A lies
      beyond B's interval), "tasks": per task, like with like, "checked": the shared baselines
      whose scores agreed at the same rate, "agreement": their largest gap, "moved": the rows
      beyond ``AGREEMENT_TOL`` (a few, from code versions), "skipped": the shared baselines
      tuned to another rate since, "unchecked": tasks no shared baseline checked}],
      "unpaired": the replays not compared, each with its side (a, b or both) and the reason
      (no counterpart, or not the same seeds and references)}``.
    """
    ra, rb = _replays(a), _replays(b)
    by_b = {_key(h): h for h in rb}
    comparisons, unpaired = [], []

    def alone(side: str, held: dict, reason: str) -> dict:
        return {"side": side, "suite": held["suite"], "seeds": held["seeds"],
                "horizon_scale": held.get("horizon_scale", 1), "reason": reason}
    for held in ra:
        other = by_b.pop(_key(held), None)
        if other is None:
            unpaired.append(alone("a", held, "B has no replay of that suite version, seed "
                                             "count and horizon"))
            continue
        where = f"{held['suite']} at {held.get('horizon_scale', 1)}x"
        try:
            comparisons.append(_pair(held, other, where))
        except ValueError as e:  # not the same seeds or references: no pairing
            unpaired.append(alone("both", held, str(e)))
    unpaired += [alone("b", h, "A has no replay of that suite version, seed count and horizon")
                 for h in by_b.values()]
    if not comparisons:
        def says(hs):
            return "; ".join(f"{h['suite']} (version {h.get('suite_version')}), {h['seeds']} "
                             f"seeds, {h.get('horizon_scale', 1)}x" for h in hs)
        why = "; ".join(dict.fromkeys(u["reason"] for u in unpaired
                                      if "no replay of that" not in u["reason"]))
        raise ValueError(f"{a} and {b} share no comparable replay (A: {says(ra)}; B: "
                         f"{says(rb)})" + (f": {why}" if why else ""))
    return {"a": str(a), "b": str(b), "comparisons": comparisons, "unpaired": unpaired}

"""Discovered artifacts: ``discovered/NAME/`` with rule.json, metrics.json, README.md (and
weights.npz for network genomes). JSON and .npz only; loading never executes anything.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np

from lab import __version__, treeio
from lab.jsonio import dumps
from lab.rules import genome_from_source, rule_from_name, source_of
from lab.targets import Target

FORMAT = 1
REQUIRED = ("format", "kind", "name", "hash", "fingerprint", "lr")


def _genome_is_scalars(genome: Any) -> bool:
    return isinstance(genome, dict) and all(np.ndim(v) == 0 for v in genome.values())


def write_artifact(out_dir: Path, name: str, target: Target, function: dict, metrics: dict,
                   readme_extra: str = "") -> Path:
    """Writes ``out_dir/name/`` for one candidate; returns the folder."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError(f"--name {name!r}: use letters, digits, '_', '-' and '.'")
    folder = Path(out_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    rule = target.rule
    doc: dict[str, Any] = {"format": FORMAT, "kind": rule.kind, "name": rule.name,
                           "hash": function["hash"],
                           "fingerprint": [float(x) if math.isfinite(x) else None
                                           for x in function["fingerprint"]],
                           "equals": function["equals"], "closest": function["closest"],
                           "lr": target.lr, "readable": rule.describe(target.genome)}
    genome = jax.tree.map(np.asarray, target.genome)
    if rule.kind == "baseline":
        from lab.rules.baselines import decode
        base = rule.name.split("(")[0]
        doc["hyperparameters"] = {k: float(v) for k, v in decode(base, genome).items()}
    if _genome_is_scalars(genome):
        doc["genome"] = {k: float(v) for k, v in genome.items()}
    else:
        treeio.save_npz(folder / "weights.npz", genome)
        doc["weights"] = "weights.npz"
    source = source_of(rule, target.genome)
    if source is not None:
        doc["source"] = source
    # one line for the long fingerprint, so the rest of the file stays readable
    text = dumps({**doc, "fingerprint": "@FP@"}).replace(
        '"@FP@"', dumps(doc["fingerprint"], indent=None))
    (folder / "rule.json").write_text(text + "\n")
    (folder / "metrics.json").write_text(dumps(metrics) + "\n")
    (folder / "README.md").write_text(readme(name, doc, metrics, readme_extra))
    return folder


def readme(name: str, rule: dict, metrics: dict, extra: str = "") -> str:
    drift = rule["kind"] == "drift"
    what = "PPO objective (a drift function D(r, A, n/N))" if drift else "update rule"
    noun = "objective" if drift else "rule"
    lines = [f"# {name}", "", f"A discovered {what} of kind `{rule['kind']}` "
             f"(family `{rule['name']}`), exported by the lab {__version__}.", "",
             "```", rule.get("source") or rule["readable"], "```", "",
             f"- hash: `{rule['hash']}`",
             f"- equals: {', '.join(rule['equals']) or 'no known ' + noun}",
             f"- closest known {noun}: {rule['closest']['name']} "
             f"(distance {rule['closest']['distance']:.3g}"
             + (", relative RMS gap between drift surfaces)" if drift else ")")]
    if drift:
        lines.append("- drift surface: `lab inspect` draws `surface.png` (D(r, A) beside "
                     "PPO-clip's and DPO's)")
    else:
        lines.append(f"- outer learning rate: {rule['lr']}")
    run = metrics.get("run")
    if run:
        lines.append(f"- training run: `{run.get('id')}` (config {run.get('config_hash')}, "
                     f"fitness {run.get('fitness')})")
    for key, held in metrics.items():
        if not ((key.startswith("heldout") or key == "train") and isinstance(held, dict)
                and held.get("rows")):
            continue
        if held["suite"].startswith("rl-"):
            lines += _rl_rows(held, "Training-suite scores" if key == "train" else
                              "Held-out scores")
            continue
        scale = held.get("horizon_scale", 1)
        lines += ["", f"## Held-out scores ({held['suite']}, {held['seeds']} seeds"
                  + (f", horizons {scale}x the tasks'" if scale != 1 else "") + ")", "",
                  "Normalized score: log final-loss ratio vs tuned Adam; lower is better, 0 = "
                  "tuned Adam. 95% interval over seeds. Speedup: tuned Adam's steps over the "
                  "steps this rule needs to reach tuned Adam's final loss.", "",
                  "| task | rule | score | 95% interval | final loss | speedup |",
                  "|---|---|---|---|---|---|"]
        for r in held["rows"]:
            lo, hi = r["ci95"]
            ci = f"[{lo:+.3f}, {hi:+.3f}]" if lo is not None else "n/a"
            speed = r.get("speedup")
            speed = f"{speed:.2f}x" if speed is not None else "never"
            lines.append(f"| {r['task']} | {r['rule']} | {r['score']:+.3f} | {ci} | "
                         f"{r['final_loss']:.4g} | {speed} |")
    lines += ["", "Load it with `lab replay discovered/" + name + "` or "
              "`lab.artifacts.load_artifact`.", extra, ""]
    return "\n".join(lines)


def _rl_rows(held: dict, title: str) -> list[str]:
    """The README table of a drift objective's replay (``lab.rl.replay``)."""
    where = ("the environments it was meta-trained on (fixed evaluation seeds, not the "
             "search's)" if title.startswith("Training") else
             "environments the search never saw")
    lines = ["", f"## {title} ({held['suite']}, {held['seeds']} seeds)", "",
             f"PPO trained with each objective on {where}. Final "
             "return: mean over seeds with a 95% interval. Score: 1 - (R - R_random) / "
             "(R_PPO-clip - R_random); lower is better, 0 = PPO-clip, 1 = a random policy.", "",
             "| environment | objective | env steps | final return | 95% interval | "
             "mean return | score |", "|---|---|---|---|---|---|---|"]
    for r in held["rows"]:
        lo, hi = r["ci95"]
        ci = f"[{lo:.4g}, {hi:.4g}]" if lo is not None else "n/a"
        lines.append(f"| {r['task']} | {r['rule']} | {r['steps']} | {r['final_return']:.4g} | "
                     f"{ci} | {r['mean_return']:.4g} | {r['score']:+.3f} |")
    lines += ["", "Mean score: " + ", ".join(f"{k} {v:+.3f}" for k, v in
                                             held["summary"].items())]
    return lines


def load_artifact(path: Path) -> Target:
    """Reads an artifact folder back into a Target (never executes code from it)."""
    path = Path(path)
    file = path / "rule.json"
    if not file.exists():
        raise ValueError(f"{path}: not an artifact folder (no rule.json)")
    try:
        doc = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: line {e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{file}: expected a JSON object")
    missing = [k for k in REQUIRED if k not in doc]
    if missing:
        raise ValueError(f"{file}: missing key(s) {', '.join(missing)}")
    if doc["format"] != FORMAT:
        raise ValueError(f"{file}: format {doc['format']!r} is not supported (expected {FORMAT})")
    try:
        rule = rule_from_name(doc["kind"], doc["name"])
    except ValueError as e:
        raise ValueError(f"{file}: key 'name'/'kind': {e}") from None
    if "source" in doc:
        if not isinstance(doc["source"], str):
            raise ValueError(f"{file}: key 'source' must be program text")
        try:
            genome = genome_from_source(doc["kind"], doc["source"])
        except ValueError as e:
            raise ValueError(f"{file}: key 'source': {e}") from None
    elif "genome" in doc:
        genome = _genome_from_json(doc["genome"], rule.genome, file)
    elif "weights" in doc:
        genome = treeio.load_npz(path / doc["weights"])
    else:
        raise ValueError(f"{file}: no 'genome', 'weights' or 'source' key")
    try:
        lr = float(doc["lr"])
    except (TypeError, ValueError):
        raise ValueError(f"{file}: key 'lr' must be a number, got {doc['lr']!r}") from None
    return Target(str(path), rule, genome, lr, path.name, artifact=path)


def _genome_from_json(values: Any, template: Any, file: Path) -> Any:
    if not isinstance(values, dict) or set(values) != set(template):
        got = sorted(values) if isinstance(values, dict) else repr(values)
        raise ValueError(f"{file}: key 'genome' must have exactly the keys {sorted(template)}, "
                         f"got {got}")
    out = {}
    for k, v in values.items():
        if not isinstance(v, int | float) or isinstance(v, bool):
            raise ValueError(f"{file}: key 'genome.{k}' must be a number, got {v!r}")
        out[k] = np.asarray(v, np.asarray(template[k]).dtype)
    return out

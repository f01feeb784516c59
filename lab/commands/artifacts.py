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
from lab.core.kind import get
from lab.core.target import Target
from lab.jsonio import dumps

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
    rule, kind = target.rule, get(target.rule.kind)
    doc: dict[str, Any] = {"format": FORMAT, "kind": rule.kind, "name": rule.name,
                           "hash": function["hash"],
                           "fingerprint": [float(x) if math.isfinite(x) else None
                                           for x in function["fingerprint"]],
                           "equals": function["equals"], "closest": function["closest"],
                           "lr": target.lr, "readable": rule.describe(target.genome)}
    genome = jax.tree.map(np.asarray, target.genome)
    doc.update(kind.artifact_fields(target))
    if _genome_is_scalars(genome):
        doc["genome"] = {k: float(v) for k, v in genome.items()}
    else:
        treeio.save_npz(folder / "weights.npz", genome)
        doc["weights"] = "weights.npz"
    if kind.text is not None:
        doc["source"] = kind.text.to_text(target.rule, target.genome)
    # one line for the long fingerprint, so the rest of the file stays readable
    text = dumps({**doc, "fingerprint": "@FP@"}).replace(
        '"@FP@"', dumps(doc["fingerprint"], indent=None))
    (folder / "rule.json").write_text(text + "\n")
    (folder / "metrics.json").write_text(dumps(metrics) + "\n")
    (folder / "README.md").write_text(readme(name, doc, metrics, kind, readme_extra))
    return folder


def readme(name: str, rule: dict, metrics: dict, kind, extra: str = "") -> str:
    """The artifact's README: the readable form, identity, training run and the kind's tables
    of its replays (``Kind.readme``)."""
    noun = kind.noun.split(" (")[0]
    lines = [f"# {name}", "", f"A discovered {kind.noun} of kind `{rule['kind']}` "
             f"(family `{rule['name']}`), exported by the lab {__version__}.", "",
             "```", rule.get("source") or rule["readable"], "```", "",
             f"- hash: `{rule['hash']}`",
             f"- equals: {', '.join(rule['equals']) or 'no known ' + noun}",
             f"- closest known {noun}: {rule['closest']['name']} "
             f"(distance {rule['closest']['distance']:.3g})"]
    if kind.domain == "supervised":
        lines.append(f"- outer learning rate: {rule['lr']}")
    run = metrics.get("run")
    if run:
        lines.append(f"- training run: `{run.get('id')}` (config {run.get('config_hash')}, "
                     f"fitness {run.get('fitness')})")
    lines += kind.readme(metrics)
    lines += ["", "Load it with `lab replay discovered/" + name + "` or "
              "`lab.commands.artifacts.load_artifact`.", extra, ""]
    return "\n".join(lines)


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
    if not isinstance(doc["kind"], str) or not isinstance(doc["name"], str):
        raise ValueError(f"{file}: keys 'kind' and 'name' must be strings")
    try:
        kind = get(doc["kind"])
        rule = kind.rule_from_name(doc["name"])
    except ValueError as e:
        raise ValueError(f"{file}: key 'name'/'kind': {e}") from None
    if "source" in doc:
        if not isinstance(doc["source"], str):
            raise ValueError(f"{file}: key 'source' must be program text")
        if kind.text is None:
            raise ValueError(f"{file}: key 'source': kind {doc['kind']!r} has no text form")
        try:
            genome = kind.text.from_text(doc["source"])
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
    known = provenance(path)
    trained_on = _at(known, "run", "suite")
    curriculum = _at(known, "search", "after_search", "curriculum", "mode")
    return Target(str(path), rule, genome, lr, path.name, artifact=path,
                  trained_on=trained_on if isinstance(trained_on, str) else None,
                  curriculum=curriculum if isinstance(curriculum, str) else None)


def artifact_start(path: str, kind: str) -> Target:
    """The artifact folder ``path`` a search of ``kind`` starts from (a config's ``rule.init``);
    ValueError naming the folder when it is none or holds another kind's rule."""
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"{path!r} is not an artifact folder")
    target = load_artifact(folder)
    if target.rule.kind != kind:
        raise ValueError(f"{folder}: an artifact of kind {target.rule.kind!r}, not {kind!r}")
    return target


def _at(doc: Any, *keys: str) -> Any:
    """``doc[k1][k2]...``, None where a level is missing or not an object."""
    for k in keys:
        doc = doc.get(k) if isinstance(doc, dict) else None
    return doc


def provenance(folder: Path) -> dict:
    """What an artifact's ``metrics.json`` says of the run and search behind it (``run``,
    ``search``): kept when it is exported again; an artifact without a readable
    ``metrics.json`` says nothing (it is information, never needed to load the rule)."""
    try:
        old = json.loads((Path(folder) / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(old, dict):
        return {}
    return {k: old[k] for k in ("run", "search") if isinstance(old.get(k), dict)}


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

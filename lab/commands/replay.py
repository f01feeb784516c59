"""`lab replay TARGET`: a candidate re-run on tasks it never saw, against its kind's baselines."""

from __future__ import annotations

from pathlib import Path

from lab.commands.targets import resolve
from lab.core.evaluate import make_mesh
from lab.core.kind import ReplayRequest, get
from lab.core.store import Store


def replay_target(text: str, store: Store, suite: str | None = None, seeds: int | None = None,
                  baselines: str | None = None, devices: int = 0, tune_lr: bool = False,
                  horizon_scale: int = 1) -> dict:
    """Resolves ``text`` and replays it through its kind (``Kind.replay``).

    Args:
      suite: default: the kind's held-out suite; it must be of the kind's domain.
      seeds: default: the kind's.
      baselines: comma-separated names (default: the kind's, e.g. adam,adamw,lion,lamb,
        schedule_free_adamw).
      devices: devices in the mesh (0 = all).
      tune_lr, horizon_scale: passed to the kind, which refuses what it does not support.

    Returns:
      The kind's replay document (rows per task and rule, summary, plot).
    """
    import tasks
    if seeds is not None and seeds < 1:
        raise ValueError(f"--seeds {seeds}: must be at least 1")
    if horizon_scale < 1:
        raise ValueError(f"--horizon-scale {horizon_scale}: must be at least 1")
    if suite is not None:
        tasks.get_suite(suite)
    target = resolve(text, store)
    kind = get(target.rule.kind)
    suite = suite or kind.replay_suite
    if tasks.domain_of(suite) != kind.domain:
        want = [s for s in tasks.SUITES if tasks.domain_of(s) == kind.domain]
        raise ValueError(f"--suite {suite}: a {kind.name} candidate replays on the "
                         f"{kind.domain} suites ({', '.join(want)})")
    names = tuple(b.strip() for b in (baselines.split(",") if baselines else
                                      kind.replay_baselines) if b.strip())
    for name in names:
        kind.check_baseline(name)
    folder = (store.run_dir(target.run["id"]) if target.run is not None
              else store.path.parent / "replays")
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in target.label)[:60]
    scale = f"-x{horizon_scale}" if horizon_scale > 1 else ""
    plot = Path(folder) / f"replay-{slug}-{suite}{scale}.png"
    request = ReplayRequest(suite, seeds or kind.replay_seeds, names, store, make_mesh(devices),
                            plot, tune_lr, horizon_scale)
    return kind.replay(target, request)

"""The store: one SQLite file holding runs, candidates, the evaluation cache and generations.

WAL mode, a single writer (process 0). A generation is one transaction, so a killed run loses at
most the generation in flight. Run outputs (metrics.jsonl, plots, checkpoints) go beside the
file, in ``<store folder>/runs/<run id>/``. NaN and Inf are stored as NULL in REAL columns and as
null in JSON; REAL columns read back as None (``lookup`` gives a NULL fitness back as NaN).
"""

from __future__ import annotations

import contextlib
import difflib
import math
import os
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from lab.core.sql import GEN_STATS, MIGRATIONS, SCHEMA, from_json, real, to_json

SCHEMA_VERSION = 4
RUN_STATUSES = ("running", "done", "failed", "interrupted")
_MAX_VARS = 500  # "?" per statement; old SQLite builds allow 999
_PREFIX_END = "\U0010ffff"  # ref <= id < ref + this: every id that starts with ref, indexed


class StoreError(ValueError):
    """A store that cannot be opened, or a lookup that cannot be answered; names the file."""


def default_store_path() -> Path:
    """The store used when none is given: ``$LAB_STORE``, else ``./lab.db``."""
    return Path(os.environ.get("LAB_STORE") or "lab.db")


class Store:
    """The lab's SQLite store. One writer; every Store opens its own connection.

    Args:
      path: the database file (its folder is created); None means ``default_store_path()``.

    Raises:
      StoreError: the file is not a lab store or has another schema version.
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:  # autocommit in the driver; transactions are explicit (BEGIN IMMEDIATE)
            self.conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: cannot open the store ({e})") from e
        self.conn.row_factory = sqlite3.Row
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA busy_timeout=5000")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self._init_schema()
        except sqlite3.DatabaseError as e:
            self.conn.close()
            raise StoreError(f"{self.path}: not a usable lab store ({e})") from e
        except BaseException:
            self.conn.close()
            raise

    def _init_schema(self) -> None:
        def tables() -> set[str]:
            return {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master")}

        if "schema_version" not in tables():  # only a new file takes the write lock here
            with self._transaction() as c:
                if (found := tables()) and "schema_version" not in found:
                    raise StoreError(f"{self.path}: an SQLite file that is not a lab store")
                if not found:  # else another process created it while we waited
                    c.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
                    for statement in filter(str.strip, SCHEMA.split(";")):
                        c.execute(statement)
                    c.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
        version = self.conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
        if version in MIGRATIONS:
            with self._transaction() as c:  # re-read: another process may have migrated it
                version = c.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
                while version in MIGRATIONS:
                    for statement in MIGRATIONS[version]:
                        c.execute(statement)
                    version += 1
                    c.execute("INSERT INTO schema_version VALUES (?)", (version,))
        if version != SCHEMA_VERSION:
            newer = isinstance(version, int) and version > SCHEMA_VERSION
            raise StoreError(
                f"{self.path}: store schema version {version!r}, but this lab reads version "
                f"{SCHEMA_VERSION}" + (" (written by a newer lab: upgrade lab)" if newer else "")
                + "; use another --store or LAB_STORE"
            )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Closes the connection (idempotent)."""
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run_dir(self, run_id: str) -> Path:
        """The folder for a run's outputs, ``<store folder>/runs/<run_id>/``, created on demand."""
        if not run_id or run_id in (".", "..") or "/" in run_id or "\\" in run_id:
            raise StoreError(f"{self.path}: {run_id!r} is not a run id")
        path = self.path.parent / "runs" / run_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _by_prefix(self, table: str, key: str, ref: str) -> sqlite3.Row | None:
        """The one row whose ``key`` starts with ``ref``, or None; StoreError if several do."""
        if not ref:
            return None
        rows = self.conn.execute(
            f"SELECT * FROM {table} WHERE {key} >= ? AND {key} < ? ORDER BY rowid LIMIT 11",
            (ref, ref + _PREFIX_END),
        ).fetchall()
        if len(rows) > 1:
            listed = ", ".join(r[key] for r in rows[:10]) + (", ..." if len(rows) > 10 else "")
            what = "run id" if table == "runs" else key
            raise StoreError(f"{self.path}: {what} prefix {ref!r} is ambiguous: {listed}")
        return rows[0] if rows else None

    # Runs -------------------------------------------------------------------------------------

    def create_run(
        self, name: str, kind: str, config: dict, config_hash: str, code_version: str,
        context: str, context_json: dict,
    ) -> str:  # fmt: skip
        """Records a new run with status 'running' and returns its id.

        ``config`` (the resolved config) and ``context_json`` (the evaluation context, whose
        hex hash is ``context``, the cache key's second half) are stored as JSON.

        Returns:
          The run id, ``YYYYmmdd-HHMMSS-xxxx``: local time and 4 random hex digits.
        """
        row = (name, kind, to_json(config), config_hash, code_version, context,
               to_json(context_json))
        for _ in range(100):
            run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
            try:
                with self._transaction() as c:
                    c.execute(
                        "INSERT INTO runs (id, name, kind, status, config, config_hash, "
                        "code_version, context, context_json, created) "
                        "VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?)",
                        (run_id, *row, time.time()),
                    )
                return run_id
            except sqlite3.IntegrityError:
                continue  # same second, same 4 hex digits: draw again
        raise StoreError(f"{self.path}: could not draw a unique run id")

    def finish_run(
        self, run_id: str, status: str, best: float | None = None, best_hash: str | None = None
    ) -> None:
        """Sets a run's status ("done" | "failed" | "interrupted"; "running" reopens it).

        ``best`` and ``best_hash``, when given, replace the stored ones.
        """
        if status not in RUN_STATUSES:
            raise StoreError(f"{self.path}: run status {status!r} is not one of {RUN_STATUSES}")
        finished = None if status == "running" else time.time()
        with self._transaction() as c:
            cur = c.execute(
                "UPDATE runs SET status = ?, finished = ?, best = COALESCE(?, best), "
                "best_hash = COALESCE(?, best_hash) WHERE id = ?",
                (status, finished, real(best), best_hash, run_id),
            )
            if cur.rowcount == 0:
                raise StoreError(f"{self.path}: no run with id {run_id!r}")

    @staticmethod
    def _run(row: sqlite3.Row) -> dict:
        return {**dict(row), "config": from_json(row["config"]), "context_json": from_json(
            row["context_json"])}  # fmt: skip

    def runs(self) -> list[dict]:
        """All runs, oldest first, with ``config`` and ``context_json`` parsed."""
        rows = self.conn.execute("SELECT * FROM runs ORDER BY created, rowid").fetchall()
        return [self._run(r) for r in rows]

    def get_run(self, ref: str) -> dict:
        """One run by exact id, else exact name (the latest run so named), else unique id prefix.

        Raises:
          StoreError: an ambiguous prefix (the matches are listed) or no such run (the closest
            ids and names are listed).
        """
        q = self.conn.execute
        row = q("SELECT * FROM runs WHERE id = ?", (ref,)).fetchone() or q(
            "SELECT * FROM runs WHERE name = ? ORDER BY created DESC, rowid DESC LIMIT 1", (ref,)
        ).fetchone()
        if row is not None:
            return self._run(row)
        row = self._by_prefix("runs", "id", ref)
        if row is not None:
            return self._run(row)
        known = q("SELECT id, name FROM runs ORDER BY created, rowid").fetchall()
        names = {r["id"] for r in known} | {r["name"] for r in known if r["name"]}
        close = difflib.get_close_matches(ref, sorted(names), n=5, cutoff=0.4)
        if close:
            hint = "; closest: " + ", ".join(close)
        else:
            hint = "; latest: " + ", ".join(r["id"] for r in known[-3:]) if known else ""
        raise StoreError(f"{self.path}: no run {ref!r} among {len(known)} runs{hint}")

    # The cache and generations ----------------------------------------------------------------

    def lookup(self, hashes: Sequence[str], context: str,
               as_of: tuple[str, int] | None = None) -> dict[str, dict]:
        """Cached evaluations of ``hashes`` in ``context``; only hits are returned.

        ``as_of=(run_id, g)`` leaves out what that run itself evaluated in generation ``g`` or
        later: the store as an uninterrupted run saw it at generation ``g``, which a resumed run
        redoing generations it had already recorded must see to retrace its steps exactly.

        Returns:
          ``{hash: {"fitness": float (NaN if stored as NULL), "diverged": bool,
          "metrics": dict}}``.
        """
        unique, hits = list(dict.fromkeys(hashes)), {}
        for i in range(0, len(unique), _MAX_VARS):
            chunk = unique[i : i + _MAX_VARS]
            for r in self.conn.execute(
                "SELECT hash, fitness, diverged, metrics FROM evaluations "
                f"WHERE context = ? AND hash IN ({','.join('?' * len(chunk))})"
                + (" AND NOT (first_run IS ? AND first_generation >= ?)" if as_of else ""),
                (context, *chunk, *(as_of or ())),
            ):
                fitness = math.nan if r["fitness"] is None else r["fitness"]
                hits[r["hash"]] = {"fitness": fitness, "diverged": bool(r["diverged"]),
                                   "metrics": from_json(r["metrics"], {})}  # fmt: skip
        return hits

    def record_generation(
        self, run_id: str, idx: int, candidates: Iterable[dict], evaluations: Iterable[dict],
        members: Iterable[dict], stats: dict, hit_hashes: Iterable[str] = (),
        context: str | None = None,
    ) -> None:  # fmt: skip
        """Records one generation of a run in one transaction: all of it or nothing.

        Args:
          run_id: the run's exact id.
          idx: the generation index; recording an index again replaces its row (a resume).
          candidates: hash, kind, genome (treeio bytes); optional name, readable, fingerprint
            (bytes), parent. Known hashes are left as they are.
          evaluations: new cache entries: hash, fitness, diverged, metrics (dict); optional
            context (default: ``context``). A known (hash, context) keeps its first entry.
          members: hash (a candidate, here or stored), fitness; optional generation (default
            ``idx``). Per run and hash the lowest fitness and the first generation are kept.
            A finalist has ``final`` (fixed-seed score) instead of fitness, and may have
            ``selection`` (what ranks the finalists when not ``final``; the run's best is then
            the lowest selection's finalist, at its final score).
          stats: best, mean, hits, misses, hit_rate, evaluated, seconds, candidates_per_s,
            checkpoint (missing: NULL); best_hash, used only when no member has a fitness.
          hit_hashes: hashes served from the cache in ``context``; each adds one to ``hits``.
          context: the evaluation context of this generation; default: the run's.

        Raises:
          StoreError: an unknown run, or a row that breaks a constraint (a member that is no
            candidate, a missing field); nothing of the generation is kept.
        """
        now, idx = time.time(), int(idx)
        try:
            with self._transaction() as c:
                run = c.execute("SELECT context FROM runs WHERE id = ?", (run_id,)).fetchone()
                if run is None:
                    raise StoreError(f"{self.path}: no run with id {run_id!r}")
                ctx = run["context"] if context is None else context
                c.executemany(
                    "INSERT OR IGNORE INTO candidates VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(d["hash"], d["kind"], d.get("name"), d["genome"], d.get("readable"),
                      d.get("fingerprint"), d.get("parent"), now) for d in candidates],
                )  # fmt: skip
                c.executemany(
                    "INSERT OR IGNORE INTO evaluations (hash, context, fitness, diverged, metrics,"
                    " first_run, first_generation, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(d["hash"], d.get("context", ctx), real(d["fitness"]), int(bool(
                      d["diverged"])), to_json(d.get("metrics") or {}), run_id, idx, now)
                     for d in evaluations],
                )  # fmt: skip
                c.executemany("UPDATE evaluations SET hits = hits + 1 WHERE hash = ? AND "
                              "context = ?", [(h, ctx) for h in hit_hashes])
                rows = [(run_id, d["hash"], int(d.get("generation", idx)),
                         real(d["fitness"] if "final" not in d else d.get("fitness")),
                         real(d.get("final")), real(d.get("selection")))
                        for d in members]  # fitness or final required
                c.executemany(
                    "INSERT INTO members (run_id, hash, generation, fitness, final, selection) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, hash) DO UPDATE "
                    "SET generation = MIN(generation, excluded.generation), fitness = CASE WHEN "
                    "fitness IS NULL OR excluded.fitness < fitness THEN excluded.fitness "
                    "ELSE fitness END, final = COALESCE(excluded.final, final), "
                    "selection = COALESCE(excluded.selection, selection)",
                    rows,
                )
                selected = [(v, f, h) for _, h, _, _, f, v in rows if None not in (v, f)]
                finals = [(f, h) for _, h, _, _, f, _ in rows if f is not None]
                rows = [(r[0], r[1], r[2], r[3]) for r in rows if r[3] is not None]
                values = [conv(stats.get(k)) for k, conv in GEN_STATS.items()]
                columns = ["run_id", "idx", *GEN_STATS, "created"]
                c.execute(
                    f"INSERT OR REPLACE INTO generations ({', '.join(columns)}) "
                    f"VALUES ({', '.join('?' * len(columns))})",
                    (run_id, idx, *values, now),
                )
                scored = [(f, h) for _, h, _, f in rows if f is not None]
                fallback = (real(stats.get("best")), stats.get("best_hash"))
                best = min(scored) if scored else fallback
                c.execute(
                    "UPDATE runs SET generations = (SELECT MAX(idx) + 1 FROM generations "
                    "WHERE run_id = :id), best_hash = CASE WHEN :best < best OR (best IS NULL "
                    "AND :best IS NOT NULL) THEN :hash ELSE best_hash END, best = CASE WHEN "
                    ":best < best OR best IS NULL THEN :best ELSE best END WHERE id = :id",
                    {"id": run_id, "best": best[0], "hash": best[1]},
                )
                if finals:  # scores on the fixed evaluation seeds replace the search's
                    f, h = min(selected)[1:] if selected else min(finals)
                    c.execute("UPDATE runs SET best = ?, best_hash = ? WHERE id = ?",
                              (f, h, run_id))
        except (sqlite3.IntegrityError, KeyError) as e:
            msg = f"{self.path}: generation {idx} of run {run_id} not recorded: {e!r}"
            raise StoreError(msg) from e

    def generations(self, run_id: str) -> list[dict]:
        """A run's generation rows, by index."""
        sql = "SELECT * FROM generations WHERE run_id = ? ORDER BY idx"
        return [dict(r) for r in self.conn.execute(sql, (run_id,))]

    def best_members(self, run_id: str, k: int = 10) -> list[dict]:
        """A run's ``k`` best candidates: finalists by selection score where they have one, then
        by final score (fixed seeds), then the others by search fitness (NULL, i.e. NaN, last).

        Returns:
          Dicts with hash, kind, name, readable, genome (bytes), fingerprint (bytes or None),
          parent, fitness (the final score where there is one), search_fitness, final,
          selection (or None) and generation (the first in which the run met it).
        """
        rows = self.conn.execute(
            "SELECT c.hash, c.kind, c.name, c.readable, c.genome, c.fingerprint, c.parent, "
            "COALESCE(m.final, m.fitness) AS fitness, m.fitness AS search_fitness, m.final, "
            "m.selection, m.generation FROM members m JOIN candidates c ON c.hash = m.hash "
            "WHERE m.run_id = ? ORDER BY m.selection IS NULL, m.selection, m.final IS NULL, "
            "m.final, m.fitness IS NULL, m.fitness, m.generation, c.hash LIMIT ?",
            (run_id, int(k)),
        )
        return [dict(r) for r in rows]

    # Candidates -------------------------------------------------------------------------------

    def candidate(self, hash_or_prefix: str) -> dict:
        """One stored candidate (its whole row) by hash or unique hash prefix.

        Raises:
          StoreError: no candidate matches, or the prefix matches several (listed).
        """
        ref = hash_or_prefix
        row = self.conn.execute("SELECT * FROM candidates WHERE hash = ?", (ref,)).fetchone()
        row = row or self._by_prefix("candidates", "hash", ref)
        if row is None:
            raise StoreError(f"{self.path}: no candidate with hash {ref!r}")
        return dict(row)

    def evaluations_for(self, hash: str) -> list[dict]:
        """Every cached evaluation of one candidate (one per context), oldest first."""
        sql = "SELECT * FROM evaluations WHERE hash = ? ORDER BY created, context"
        out = [dict(r) for r in self.conn.execute(sql, (hash,))]
        for d in out:
            d["diverged"], d["metrics"] = bool(d["diverged"]), from_json(d["metrics"], {})
        return out

    def fingerprinted(self, kind: str | None = None) -> list[tuple[str, bytes]]:
        """(hash, fingerprint bytes) of every candidate that has been fingerprinted (of one
        ``kind`` when given)."""
        sql = "SELECT hash, fingerprint FROM candidates WHERE fingerprint IS NOT NULL"
        rows = (self.conn.execute(sql + " AND kind = ?", (kind,)) if kind is not None else
                self.conn.execute(sql))
        return [(r[0], r[1]) for r in rows]

    def first_run(self, hash: str) -> str | None:
        """The run that first evaluated candidate ``hash``, if any."""
        row = self.conn.execute("SELECT first_run FROM evaluations WHERE hash = ? AND "
                                "first_run IS NOT NULL LIMIT 1", (hash,)).fetchone()
        return row[0] if row else None

    def set_fingerprint(self, hash: str, fingerprint: bytes) -> None:
        """Stores a candidate's fingerprint (treeio bytes of a [n] float64 array)."""
        with self._transaction() as c:
            sql = "UPDATE candidates SET fingerprint = ? WHERE hash = ?"
            if c.execute(sql, (fingerprint, hash)).rowcount == 0:
                raise StoreError(f"{self.path}: no candidate with hash {hash!r}")

    # References ----------------------------------------------------------------------------

    def get_ref(self, task: str, budget: int, seeds: int, which: str, context: str
                ) -> dict | None:
        """A cached reference (``lab.core.references``), or None.

        Returns:
          ``{task, budget, seeds, which, context, metric, value, values (per seed), lr,
          created}``.
        """
        row = self.conn.execute(
            "SELECT * FROM refs WHERE task = ? AND budget = ? AND seeds = ? AND which = ? "
            "AND context = ?",
            (task, int(budget), int(seeds), which, context),
        ).fetchone()
        if row is None:
            return None
        out = dict(row)
        out["values"] = from_json(out.pop("seed_values"), [])
        return out

    def put_ref(
        self, task: str, budget: int, seeds: int, which: str, context: str, metric: str,
        value: float, values: Sequence[float], lr: float | None = None,
    ) -> None:  # fmt: skip
        """Caches a reference, replacing one with the same key.

        ``value`` is the mean over ``seeds`` of the per-seed ``values`` of ``metric`` (a final
        loss, a final return); ``lr`` the tuned learning rate where there is one; ``context``
        hashes what the reference depends on (task version, lr grid, ...).
        """
        with self._transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO refs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (task, int(budget), int(seeds), which, context, metric, real(value),
                 to_json(list(values)), real(lr), time.time()),
            )  # fmt: skip

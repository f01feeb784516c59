"""Several processes, one search: ``jax.distributed``, shared randomness, process 0 rules.

JAX's multi-controller runtime runs the same program on every process over one global mesh.
What the lab adds, the same for every kind:

* ``initialize``: joins the job (``--coordinator HOST:PORT --num-processes N --process-id I``,
  or ``auto``: the cluster's own variables, which ``jax.distributed.initialize`` detects: SLURM,
  Open MPI, TPU pods, Kubernetes), with the gloo collectives on CPU, and checks that every
  process was started the same way (a one-line error otherwise, never a hang).
* Shared randomness: every process derives a generation's candidates from the same keys, so
  genomes never cross hosts; each process feeds its own devices' rows of the population
  (``jax.device_put`` of the same host array) and only fitness and metrics are gathered
  (``gather``).
* Process 0 owns the store, the run's files and the progress bar. ``SharedStore`` gives every
  process process 0's answer to each store call (``share``, through the coordination service's
  key-value store: no XLA computation, so no compilation), so cache decisions agree everywhere.
* A watchdog: every process beats in the key-value store; when a peer stops beating for
  ``peer_timeout`` seconds (killed, lost host) or reports a failure, the others print one line
  naming it and exit with ``LOST_EXIT``, never hanging in a collective. The store keeps every
  committed generation and ``--resume`` continues.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import socket
import sys
import threading
import time
import warnings
from typing import Any

import numpy as np

from lab import treeio

LOST_EXIT = 1  # the exit code of a process whose peer was lost (a runtime failure, not input)
_CHUNK = 1 << 20  # bytes per key-value entry of a shared value


class HostsError(ValueError):
    """Bad distributed settings (flags, coordinator, processes that disagree)."""


@dataclasses.dataclass
class _Job:
    index: int = 0
    count: int = 1
    peer_timeout: float = 60.0
    shared: int = 0  # values shared so far (every process counts the same calls)
    watchdog: Any = None


_JOB = _Job()  # this process's place in the job, set once by ``initialize`` (like jax's own)


def first_line(error: BaseException | str) -> str:
    """The first line of an error's message (its type's name when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def index() -> int:
    """This process's index (0 without ``initialize``)."""
    return _JOB.index


def count() -> int:
    """Processes in the job (1 without ``initialize``)."""
    return _JOB.count


def is_leader() -> bool:
    """Process 0: the one that writes the store, the run's files and the progress."""
    return _JOB.index == 0


def _client():
    from jax._src import distributed  # the coordination service's client (as orbax uses it)
    client = distributed.global_state.client
    if client is None:
        raise RuntimeError("jax.distributed is not initialized")
    return client


def parse_coordinator(text: str) -> str:
    """``HOST:PORT`` (a name, IPv4, or ``[IPv6]``), or ``auto``."""
    if text == "auto":
        return text
    m = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d+)", text or "")
    if m is None or not 0 < int(m.group(2)) < 65536:
        raise HostsError(f"--coordinator {text!r}: expected HOST:PORT (e.g. 10.0.0.1:1234) or "
                         "auto (the cluster's variables: SLURM, Open MPI, TPU pods, Kubernetes)")
    return text


def initialize(coordinator: str | None, num_processes: int | None, process_id: int | None,
               peer_timeout: float = 60.0, connect_timeout: int = 120,
               agree: dict | None = None) -> None:
    """Joins this process to the job; a no-op without ``coordinator`` (one process).

    Args:
      coordinator: ``HOST:PORT`` of process 0's coordination service, or ``auto``.
      num_processes, process_id: required with ``HOST:PORT``; with ``auto`` the cluster says.
      peer_timeout: seconds without a peer's heartbeat before it counts as lost.
      connect_timeout: seconds to wait for the coordinator and every process to join.
      agree: what every process must have been started with (``--resume``; the config is
        compared in ``lab.core.loop``): a process that differs from process 0 stops with one
        line naming it.

    Raises:
      HostsError: malformed or inconsistent flags, an unreachable coordinator, a process that
        disagrees with process 0.
    """
    if coordinator is None:
        if num_processes not in (None, 1) or process_id not in (None, 0):
            raise HostsError("--num-processes and --process-id need --coordinator HOST:PORT")
        return
    coordinator = parse_coordinator(coordinator)
    if coordinator != "auto":
        if num_processes is None or process_id is None:
            raise HostsError(f"--coordinator {coordinator} needs --num-processes N and "
                             "--process-id I")
        if num_processes < 1:
            raise HostsError(f"--num-processes {num_processes}: must be at least 1")
        if not 0 <= process_id < num_processes:
            raise HostsError(f"--process-id {process_id}: must be in 0..{num_processes - 1} "
                             f"(--num-processes {num_processes})")
    if peer_timeout <= 0:
        raise HostsError(f"--peer-timeout {peer_timeout}: must be positive")
    if coordinator != "auto" and process_id != 0:
        _reach(coordinator, connect_timeout)  # jax's client would abort the process instead
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {} if coordinator == "auto" else {
        "coordinator_address": coordinator, "num_processes": num_processes,
        "process_id": process_id}
    where = "the cluster's coordinator" if coordinator == "auto" else f"coordinator {coordinator}"
    try:
        # JAX's own heartbeat ends the job later than ours, so our line comes first
        jax.distributed.initialize(**kwargs, initialization_timeout=int(connect_timeout),
                                   heartbeat_timeout_seconds=int(peer_timeout * 2 + 30))
    except (ValueError, RuntimeError) as e:  # jax's errors are RuntimeErrors
        raise HostsError(f"could not join {where} within {connect_timeout} s: "
                         f"{first_line(e)}") from None
    from jax._src import distributed
    _JOB.index = distributed.global_state.process_id
    _JOB.count = distributed.global_state.num_processes
    _JOB.peer_timeout = float(peer_timeout)
    # before the backend starts: it waits for every process's devices, a mismatch would hang
    _check_agreement(dict(agree or {}, processes=_JOB.count), connect_timeout)
    jax.devices()
    if not is_leader():
        _quiet(_JOB.index)
    _JOB.watchdog = _Watchdog(_JOB.peer_timeout)
    _JOB.watchdog.start()


def _quiet(process: int) -> None:
    """Python warnings and log records of WARNING and above only, each naming the process."""
    tag = f"[process {process}] "
    logging.basicConfig(level=logging.WARNING, format=tag + "%(levelname)s %(name)s: %(message)s",
                        force=True)

    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(tag + warnings.formatwarning(message, category, filename, lineno, line))
    warnings.showwarning = show


def _reach(coordinator: str, timeout: float) -> None:
    """Waits until something listens at ``coordinator`` (process 0 starting up), at most
    ``timeout`` seconds."""
    host, port = coordinator.rsplit(":", 1)
    deadline, error = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return
        except OSError as e:
            error = e
            time.sleep(0.2)
    raise HostsError(f"could not join coordinator {coordinator} within {timeout:.0f} s "
                     f"(nothing answered: {error}); is process 0 running there?")


def _check_agreement(mine: dict, timeout: float) -> None:
    """Every process publishes how it was started; process 0 compares each one's with its
    own, the others compare with process 0's."""
    client = _client()
    client.key_value_set(f"lab/hello/{_JOB.index}", json.dumps(mine, sort_keys=True))
    peers = range(1, _JOB.count) if is_leader() else [0]
    for p in peers:
        try:
            theirs = json.loads(client.blocking_key_value_get(f"lab/hello/{p}",
                                                              int(timeout * 1000)))
        except Exception:  # noqa: BLE001 - jax's runtime errors have no public type
            raise HostsError(f"process {p} did not join within {timeout:.0f} s") from None
        diff = [k for k in sorted(set(theirs) | set(mine)) if theirs.get(k) != mine.get(k)]
        if diff:
            k = diff[0]
            flag = "--num-processes" if k == "processes" else f"--{k}"
            raise HostsError(f"process {p} was started with {flag} {theirs.get(k)!r} but "
                             f"process {_JOB.index} with {mine.get(k)!r}: start every process "
                             "with the same command")


# -- sharing process 0's values --------------------------------------------------------------


class SharedError(ValueError):
    """An exception raised on process 0, raised again on the others."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def share(value: Any = None, label: str = "") -> Any:
    """Process 0's ``value`` on every process (the others' argument is ignored). Every process
    must make the same sequence of calls (``label`` names the call: processes out of step stop
    with an error instead of reading each other's values). A value that is an exception is
    raised everywhere (on the others as ``SharedError`` with process 0's message)."""
    if _JOB.count == 1:
        if isinstance(value, BaseException):
            raise value
        return value
    _JOB.shared += 1
    key, client = f"lab/share/{_JOB.shared}", _client()
    if is_leader():
        error = [type(value).__name__, str(value)] if isinstance(value, BaseException) else None
        data = treeio.tree_to_npz({"label": label, "error": error,
                                   "value": None if error else value})
        parts = [data[i:i + _CHUNK] for i in range(0, len(data), _CHUNK)] or [b""]
        for i, part in enumerate(parts):
            client.key_value_set_bytes(f"{key}/{i}", part)
        client.key_value_set(key, str(len(parts)))
        if isinstance(value, BaseException):
            raise value
        return value
    wait = 7 * 24 * 3600 * 1000  # a dead process 0 is the watchdog's to report
    n = int(client.blocking_key_value_get(key, wait))
    doc = treeio.tree_from_npz(b"".join(client.blocking_key_value_get_bytes(f"{key}/{i}", wait)
                                        for i in range(n)), source=f"process 0's {label}")
    if client.key_value_increment(f"{key}/read", 1) == _JOB.count - 1:  # the last reader
        for k in [key, f"{key}/read", *(f"{key}/{i}" for i in range(n))]:
            with contextlib.suppress(Exception):  # NOT_FOUND has no public type
                client.key_value_delete(k)
    if doc["label"] != label:
        raise RuntimeError(f"processes out of step: process 0 shared {doc['label']!r} where "
                           f"process {index()} expected {label!r} (a lab bug: every process "
                           "must ask process 0 the same things in the same order)")
    if doc["error"] is not None:
        raise SharedError(*doc["error"])
    return doc["value"]


def leader_value(fn, *args, label: str = "", **kwargs) -> Any:
    """``fn(*args, **kwargs)`` computed on process 0 and shared (its exception raised
    everywhere); for reads that only process 0 can make (the store, the run's files).
    ``label`` (default: ``fn``'s name) names the call, as in ``share``."""
    if _JOB.count == 1:
        return fn(*args, **kwargs)
    value = None
    if is_leader():
        try:
            value = fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - shared, then raised on every process
            value = e
    return share(value, label or getattr(fn, "__qualname__", ""))


class SharedStore:
    """The store of a run over several processes: process 0 holds the real ``Store``; every
    method call, made in the same order on every process, returns process 0's answer (and
    raises its error). The other processes never open the database."""

    def __init__(self, store):
        self._store = store if is_leader() else None

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)

        def call(*args, **kwargs):
            return leader_value(lambda: getattr(self._store, name)(*args, **kwargs),
                                label=f"store.{name}")
        return call

    @property
    def path(self):
        """The database file (process 0's; None on the others)."""
        return None if self._store is None else self._store.path


def gather(x) -> np.ndarray:
    """A sharded result as a numpy array on every process (only this crosses hosts)."""
    if getattr(x, "is_fully_addressable", True) or x.is_fully_replicated:
        return np.asarray(x)
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


# -- liveness ----------------------------------------------------------------------------------


class _Watchdog(threading.Thread):
    """Beats every second; stops this process when a peer stops beating or failed."""

    def __init__(self, timeout: float):
        super().__init__(name="lab-watchdog", daemon=True)
        self.timeout, self.on_lost = timeout, []
        self._stop_event = threading.Event()

    def run(self) -> None:
        client, me, n = _client(), _JOB.index, _JOB.count
        beats, seen = 0, {p: (None, time.monotonic()) for p in range(n) if p != me}
        while not self._stop_event.wait(1.0):
            try:
                beats += 1
                client.key_value_set(f"lab/alive/{me}", str(beats), allow_overwrite=True)
                now = time.monotonic()
                for p, (last, since) in list(seen.items()):
                    if _try_get(client, f"lab/done/{p}") is not None:
                        del seen[p]
                        continue
                    failed = _try_get(client, f"lab/failed/{p}")
                    if failed is not None:
                        self.lost(f"process {p} of {n} failed: {failed}")
                    beat = _try_get(client, f"lab/alive/{p}")
                    if beat != last:
                        seen[p] = (beat, now)
                    elif now - since > self.timeout:
                        self.lost(f"lost process {p} of {n}: no heartbeat for "
                                  f"{now - since:.0f} s (killed, or its host is gone)")
            except Exception as e:  # noqa: BLE001 - the coordinator (process 0) is gone
                if self._stop_event.is_set():
                    return
                self.lost(f"lost process 0 of {n} (the coordinator): {first_line(e)}")

    def lost(self, message: str) -> None:
        report_lost(message)
        for hook in self.on_lost:
            with contextlib.suppress(Exception):  # exiting anyway
                hook()
        os._exit(LOST_EXIT)

    def stop(self) -> None:
        self._stop_event.set()


def report_lost(message: str) -> None:
    """The one line a process prints when it stops because a peer was lost."""
    sys.stderr.write(f"lab launch: error: process {_JOB.index}: {message}; stopping. The store "
                     "keeps every committed generation: --resume RUN continues.\n")
    sys.stderr.flush()


def silent_peers(seconds: float = 4.0) -> list[int]:
    """The peers whose heartbeat did not move over ``seconds`` (and that did not finish): after
    a failed collective, the processes that were lost (live ones beat every second)."""
    if _JOB.count == 1:
        return []
    client = _client()
    peers = [p for p in range(_JOB.count) if p != _JOB.index]
    try:
        before = {p: _try_get(client, f"lab/alive/{p}") for p in peers}
        time.sleep(seconds)
        return [p for p in peers if _try_get(client, f"lab/alive/{p}") == before[p]
                and _try_get(client, f"lab/done/{p}") is None]
    except Exception:  # noqa: BLE001 - the coordinator itself is gone
        return [0]


def _try_get(client, key: str) -> str | None:
    try:
        return client.key_value_try_get(key)
    except Exception:  # noqa: BLE001 - NOT_FOUND has no public type
        return None


def on_lost(hook) -> None:
    """Runs ``hook()`` (e.g. marking the run failed) before a lost peer stops this process."""
    if _JOB.watchdog is not None:
        _JOB.watchdog.on_lost.append(hook)


def finish(error: BaseException | str | None = None) -> None:
    """Tells the peers this process is done (or failed, with the reason) and leaves the job.

    A clean end waits for every process (jax's shutdown barrier); a failure leaves at once,
    except process 0, which hosts the coordinator: it gives the others a few seconds to report
    (and leave) first."""
    if _JOB.count == 1:
        return
    client = _client()
    if _JOB.watchdog is not None:
        _JOB.watchdog.stop()
    if error is None:
        client.key_value_set(f"lab/done/{_JOB.index}", "1", allow_overwrite=True)
        import jax
        jax.distributed.shutdown()
        return
    line = first_line(error)
    with contextlib.suppress(Exception):  # the coordinator may be gone already
        client.key_value_set(f"lab/failed/{_JOB.index}", line, allow_overwrite=True)
        if is_leader():  # the coordinator leaves last, so the others report their own error
            deadline = time.monotonic() + min(5.0, _JOB.peer_timeout)
            peers = set(range(1, _JOB.count))
            while peers and time.monotonic() < deadline:
                peers = {p for p in peers if _try_get(client, f"lab/failed/{p}") is None
                         and _try_get(client, f"lab/done/{p}") is None}
                time.sleep(0.1)
            time.sleep(0.5)

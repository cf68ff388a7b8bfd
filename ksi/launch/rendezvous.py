"""Rendezvous of the nodes of one srun step through files in the shared directory.

Built for NFS, Lustre and GPFS, where flock may be node-local and "file not found" is cached: each rank
writes only its own files (temporary name, fsync, rename), phases are separate files that only appear,
every file carries the run's nonce (a stale directory of an earlier run of the same job id is never
mistaken for this one), any rank may write the abort file (the first one wins). Liveness is a counter each
rank rewrites, judged on the reader's own monotonic clock, never by timestamps from another node.

Waiting for a file another node writes costs nothing extra on a client that caches, as NFS clients do:

- An NFS client caches "no such file" (a negative dentry) and trusts it for as long as its cached
  attributes of the directory say the directory has not changed, 30-60 s by default (acdirmin, acdirmax);
  a name looked up before another node created it stays missing that long. So no name is ever looked up
  before it can exist: every node creates the run directory itself (``mkdir``, "exists" accepted), and a
  reader opens a file only once a listing of its directory shows the name (``listing``).
- Opening a directory is an open, so close-to-open consistency applies to it: the client revalidates the
  directory's attributes with the server (GETATTR), and a changed directory drops the cached misses in it
  and has its entries read again. Each poll therefore opens and lists the directory, then opens the listed
  names; clients that cache lookups without revalidating on open (FUSE with entry and negative timeouts)
  still answer every listing from the server.
- Everything that creates goes to the server whatever the client caches: exclusive creates (``mkdir``,
  O_EXCL temporary files), ``rename`` over a name, and ``link``, which makes the abort file first-one-wins.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ksi import log
from ksi.errors import KsiError
from ksi.host.poll import poll
from ksi.host.state import read_json, write_json

LEADER = "leader.json"
ABORT = "abort.json"
PEERED = "peered.json"
DONE = "done.json"
POLL = 0.1  # seconds between reads of a file another node is expected to write
HEARTBEAT = 1.0  # seconds between heartbeat rewrites
FRESH_WINDOW = 300.0  # a leader.json started this long before us is suspected stale until its heartbeat moves

_log = log.get(__name__)
T = TypeVar("T")


def hello(rank: int) -> str:
    """Return the file a rank writes as soon as it has joined."""
    return f"hello.{rank}.json"


def ready(rank: int) -> str:
    """Return the file a rank writes when its cluster is up and Liqo is installed."""
    return f"ready.{rank}.json"


def torn_down(rank: int) -> str:
    """Return the file a rank writes once its own teardown is over."""
    return f"down.{rank}.json"


def heartbeat(rank: int) -> str:
    """Return the heartbeat file of a rank."""
    return f"heartbeat.{rank}.json"


class Aborted(KsiError):
    """Another node wrote the abort file: it names the node, the phase and the reason."""

    def __init__(self, record: dict[str, Any]) -> None:
        node, phase, reason = record.get("node", "?"), record.get("phase", "?"), record.get("reason", "?")
        super().__init__(f"run aborted by {node} during {phase}: {reason}", step="rendezvous")
        self.exit_code = int(record.get("exit_code", 1)) or 1


def make_directory(path: Path) -> bool:
    """Create ``path`` (0700) and its parent unless they exist; return True if this call created ``path``.

    Every node of the run calls this before it looks anything up in ``path``: an exclusive create goes to
    the server and answers "exists" from there, so no node ever caches a "no such directory" for the run
    directory, which an NFS client would go on believing after the leader creates it.
    """
    with contextlib.suppress(FileExistsError):
        path.parent.mkdir()
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        return False
    if path.stat().st_mode & 0o777 != 0o700:  # a default ACL on the parent can widen it
        os.chmod(path, 0o700)
    return True


def listing(directory: Path) -> frozenset[str]:
    """Return the names in ``directory`` as the server has them now (empty if it cannot be read).

    Opening the directory revalidates it with the server (NFS close-to-open: GETATTR on open), which also
    invalidates any cached "no such file" in it when it changed; reading it asks the server for the
    entries when the directory changed (NFS) or always (FUSE). A name in this listing can be opened: it
    was never looked up while missing, unless it was removed and created again since.
    """
    try:
        return frozenset(os.listdir(directory))
    except OSError:
        return frozenset()


def revalidate(directory: Path) -> None:
    """Open and close ``directory``: NFS close-to-open revalidates it, and the names in it, with the server.

    For a path whose last directory may have been replaced (a stale run directory moved aside and created
    again): the client then looks the run directory up anew instead of listing the one it had cached.
    """
    with contextlib.suppress(OSError):
        os.close(os.open(directory, os.O_RDONLY | os.O_DIRECTORY))


def read_listed(directory: Path, names: Iterable[str]) -> dict[str, Any]:
    """Return the JSON of each of ``names`` that a fresh listing of ``directory`` shows (and that parses)."""
    present = listing(directory)
    found = {}
    for name in names:
        if name in present and (data := read_json(directory / name)) is not None:
            found[name] = data
    return found


class Rendezvous:
    """One run's directory ``<shared>/ksi-runs/<job>.<step>.<restart>`` as seen by one rank."""

    def __init__(self, path: Path, rank: int, node: str, nonce: str) -> None:
        self.path = path
        self.rank = rank
        self.node = node
        self.nonce = nonce

    @staticmethod
    def location(shared_dir: Path, job_id: str, step_id: str, restart: int) -> Path:
        """Return the directory every rank of this step derives from its Slurm environment."""
        return shared_dir / "ksi-runs" / f"{job_id}.{step_id}.{restart}"

    @classmethod
    def create(cls, path: Path, node: str, attempts: int = 5) -> Rendezvous:
        """Take the directory as the leader (rank 0), moving a stale one of an earlier run aside.

        The followers create the directory too (``make_directory``) but write nothing in it before the
        leader announces the run, so a directory with anything in it is an earlier run's: it is renamed
        aside (atomic; its logs are kept) and the directory made afresh.
        """
        for _ in range(attempts):
            if make_directory(path) or not listing(path):
                return cls(path, 0, node, secrets.token_hex(8))
            stale = path.with_name(f"{path.name}.stale-{secrets.token_hex(4)}")
            with contextlib.suppress(FileNotFoundError):  # another run of this job id moved it first
                os.rename(path, stale)
                _log.info("rendezvous: moved a stale run directory of this job id aside to %s", stale)
        raise KsiError(f"{path} was not empty after moving it aside {attempts} times", step="rendezvous",
                       fix=f"check what writes into {path.parent}")

    def node_directory(self, node: str) -> Path:
        """Create and return this node's directory ``nodes/<node>`` (0700) in the run directory."""
        parent = self.path / "nodes"
        with contextlib.suppress(FileExistsError):  # every node creates it; none looks it up first
            parent.mkdir(mode=0o700)
        directory = parent / node
        directory.mkdir(mode=0o700)
        return directory

    def publish(self, name: str, data: dict[str, Any] | None = None) -> None:
        """Write this rank's file ``name`` atomically, stamped with nonce, rank and node."""
        write_json(self.path / name, {**(data or {}), "nonce": self.nonce, "rank": self.rank, "node": self.node})

    def read(self, name: str) -> dict[str, Any] | None:
        """Return file ``name`` if a fresh listing shows it and it belongs to this run (same nonce)."""
        return self.read_many([name]).get(name)

    def read_many(self, names: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Return those of files ``names`` that exist and belong to this run, after one listing."""
        return {name: data for name, data in read_listed(self.path, names).items()
                if isinstance(data, dict) and data.get("nonce") == self.nonce}

    def abort(self, phase: str, reason: str, exit_code: int = 1) -> None:
        """Write the abort file unless another rank was first (hard link: atomic, first one wins).

        ``link`` is an exclusive create: the server answers it, whatever this client caches about the name.
        """
        tmp = self.path / f".abort.{self.rank}.{secrets.token_hex(4)}"
        try:
            write_json(tmp, {"nonce": self.nonce, "rank": self.rank, "node": self.node, "phase": phase,
                             "reason": reason, "exit_code": exit_code})
            try:
                os.link(tmp, self.path / ABORT)
                _log.debug("rendezvous: wrote the abort file (%s during %s)", reason, phase)
            except FileExistsError:
                _log.debug("rendezvous: another node aborted the run first")
        except OSError as exc:
            _log.warning("rendezvous: could not write the abort file: %s", exc)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def check_abort(self) -> None:
        """Raise Aborted if any rank of this run has aborted it."""
        record = self.read(ABORT)
        if record is not None:
            _log.debug("rendezvous: %s aborted the run", record.get("node", "?"))
            raise Aborted(record)

    def wait(self, what: str, probe: Callable[[], T | None], timeout: float,
             on_timeout: Callable[[], KsiError], *, check: Callable[[], None] | None = None) -> T:
        """Poll ``probe`` until it returns a value; check for an abort (and ``check``) on every round."""

        def aborted_or(probe: Callable[[], T | None] = probe) -> T | None:
            self.check_abort()
            return probe()

        return poll(what, aborted_or, timeout=timeout, interval=POLL, expired=on_timeout, every=check)


def join(path: Path, rank: int, node: str, started: float, timeout: float, leader_node: str) -> Rendezvous:
    """Wait as a follower for this run's leader.json and return the rendezvous it announces.

    A leader.json whose start lies more than FRESH_WINDOW before ours is taken only once its heartbeat
    moves: it may be the leftover of an earlier run of the same job id, which the leader moves aside.

    The follower has created the directory itself (``make_directory``): every poll revalidates its parent
    (the leader may have moved a stale directory aside and made it afresh), then lists it and reads
    leader.json only once it is listed, so no "no such file" is ever cached for it.
    """
    suspects: dict[str, tuple[int, float]] = {}

    def announced() -> Rendezvous | None:
        revalidate(path.parent)
        present = listing(path)
        data = read_json(path / LEADER) if LEADER in present else None
        if not (isinstance(data, dict) and isinstance(data.get("nonce"), str)):
            return None
        nonce = data["nonce"]
        if float(data.get("started", 0)) >= started - FRESH_WINDOW:
            return Rendezvous(path, rank, node, nonce)
        beat = read_json(path / heartbeat(0)) if heartbeat(0) in present else None
        count = int(beat.get("count", -1)) if isinstance(beat, dict) and beat.get("nonce") == nonce else -1
        first = suspects.setdefault(nonce, (count, time.monotonic()))
        return Rendezvous(path, rank, node, nonce) if count != first[0] else None

    return poll("the leader", announced, timeout=timeout, interval=POLL, expired=lambda: KsiError(
        f"the leader ({leader_node}) did not announce the run in {path} within {timeout:g} s",
        fix="the directory may not be shared across nodes (it must be on NFS, Lustre, GPFS...); "
            "raise KSI_RENDEZVOUS_TIMEOUT if the filesystem is slow",
        step="rendezvous"))


class Heartbeat:
    """A thread that rewrites this rank's heartbeat file with an increasing counter."""

    def __init__(self, rendezvous: Rendezvous, interval: float = HEARTBEAT) -> None:
        self._rdv = rendezvous
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def _beat(self) -> None:
        count = 0
        while True:
            with contextlib.suppress(OSError):
                self._rdv.publish(heartbeat(self._rdv.rank), {"count": count})
            count += 1
            if self._stop.wait(self._interval):
                return

    def start(self) -> None:
        """Start beating."""
        self._thread.start()

    def stop(self) -> None:
        """Stop beating (the last beat stays on disk)."""
        self._stop.set()
        self._thread.join(timeout=5)


@dataclass
class _Seen:
    count: int
    since: float


class Liveness:
    """Tracks other ranks' heartbeats on this node's monotonic clock."""

    def __init__(self, rendezvous: Rendezvous, ranks: Iterable[int]) -> None:
        self._rdv = rendezvous
        now = time.monotonic()
        self._seen = {rank: _Seen(-1, now) for rank in ranks}

    def silent(self, timeout: float) -> list[int]:
        """Return the ranks whose heartbeat has not moved for ``timeout`` seconds.

        A heartbeat that cannot be read this time (not listed yet, or unreadable) counts as not moved.
        """
        now = time.monotonic()
        beats = self._rdv.read_many(heartbeat(rank) for rank in self._seen)
        for rank, seen in self._seen.items():
            beat = beats.get(heartbeat(rank))
            count = int(beat.get("count", -1)) if beat else seen.count
            if count != seen.count:
                seen.count, seen.since = count, now
        return [rank for rank, seen in self._seen.items() if now - seen.since > timeout]


class FollowerWatch:
    """While the workload runs, reports followers whose heartbeat stops (the workload keeps running)."""

    def __init__(self, rendezvous: Rendezvous, followers: Mapping[int, str], timeout: float) -> None:
        self._liveness = Liveness(rendezvous, followers)
        self._followers = dict(followers)
        self._timeout = timeout
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="follower-watch", daemon=True)
        self.lost: list[str] = []

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            for rank in self._liveness.silent(self._timeout):
                node = self._followers[rank]
                if node not in self.lost:
                    self.lost.append(node)
                    _log.error("node %s stopped responding (no heartbeat for %g s); its virtual node will turn "
                               "NotReady; the workload keeps running", node, self._timeout)

    def start(self) -> None:
        """Start watching."""
        self._thread.start()

    def stop(self) -> list[str]:
        """Stop watching; return the nodes that were lost."""
        self._stop.set()
        self._thread.join(timeout=5)
        return list(self.lost)

"""Node-local state of one user: the directory, atomic JSON files, process identity, locks.

Lives on a node-local path (default /tmp/ksi-UID): flock is reliable there, unlike on shared filesystems.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ksi.errors import EXIT_PREREQUISITE, PrerequisiteError, Problem

LOCK_POLL = 0.05  # seconds between attempts at a node-local lock (filelock's own poll interval)


@dataclass(frozen=True)
class ProcessId:
    """A process on this host, robust against pid reuse (the start time is part of the identity)."""

    pid: int
    start: int

    @classmethod
    def current(cls) -> ProcessId:
        """Return the identity of the calling process."""
        pid = os.getpid()
        return cls(pid, process_start(pid) or 0)

    def alive(self) -> bool:
        """True while the same process (same pid and start time) still runs on this host."""
        return process_start(self.pid) == self.start


def process_start(pid: int) -> int | None:
    """Return the start time of ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat), or None."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    rest = data.rsplit(")", 1)[-1].split()
    try:
        return int(rest[19])
    except (IndexError, ValueError):
        return None


def check_private_dir(path: Path, *, create: bool) -> Problem | None:
    """Return a problem unless ``path`` is (or, with ``create``, becomes) a 0700 directory owned by us."""
    try:
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                path.mkdir(mode=0o700)
        info = path.lstat()
    except OSError as exc:
        return Problem(EXIT_PREREQUISITE, f"cannot use state directory {path}: {exc.strerror}",
                       "set KSI_STATE_DIR to a node-local directory you own")
    if not stat.S_ISDIR(info.st_mode):
        return Problem(EXIT_PREREQUISITE, f"state directory {path} is not a directory (or is a symlink)",
                       "remove it or set KSI_STATE_DIR elsewhere")
    if info.st_uid != os.getuid():
        return Problem(EXIT_PREREQUISITE, f"state directory {path} belongs to uid {info.st_uid}, not to you",
                       "set KSI_STATE_DIR to a directory you own")
    if info.st_mode & 0o077:
        return Problem(EXIT_PREREQUISITE, f"state directory {path} is readable by others "
                       f"(mode {stat.S_IMODE(info.st_mode):o})", f"chmod 700 {path}")
    return None


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` 0700 if needed and return it; raise PrerequisiteError if it is unsafe."""
    problem = check_private_dir(path, create=True)
    if problem is not None:
        raise PrerequisiteError(problem.message, fix=problem.fix, step="state")
    return path


def write_atomic(path: Path, text: str | bytes, *, mode: int = 0o600) -> None:
    """Write ``text`` (UTF-8 if a str) to ``path`` atomically: temporary file of ``mode``, fsync, rename.

    Safe on NFS too: the rename is the one operation that makes the file visible under its name.
    """
    data = text.encode("utf-8") if isinstance(text, str) else text
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(path: Path, data: Any, *, mode: int = 0o600) -> None:
    """Write ``data`` as JSON to ``path`` atomically (see :func:`write_atomic`)."""
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n", mode=mode)


def read_json(path: Path) -> Any | None:
    """Return the JSON in ``path``, or None if it is missing or damaged."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def create_secret_file(path: Path, content: str = "") -> Path:
    """Create ``path`` with mode 0600 from the start (O_EXCL, no symlink following) and write ``content``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(content)
    return path


@contextlib.contextmanager
def node_lock(path: Path, timeout: float, what: str) -> Iterator[None]:
    """Hold the node-local flock ``path`` (never soft-fallback), waiting at most ``timeout`` seconds."""
    from filelock import FileLock, Timeout

    from ksi.errors import KsiError
    from ksi.host.poll import poll

    lock = FileLock(path, timeout=timeout, mode=0o600, fallback_to_soft=False)

    def acquired() -> bool | None:
        try:
            lock.acquire(blocking=False)
        except Timeout:
            return None
        return True

    poll(what, acquired, timeout=timeout, interval=LOCK_POLL, expired=lambda: KsiError(
        f"waited {timeout:g} s for the lock {path} ({what})",
        fix="another ksi on this node holds it; wait, or raise KSI_LOCK_TIMEOUT", step="lock"))
    try:
        yield
    finally:
        lock.release()

"""Checking the cache's files against the manifest: size, then sha256, hashed once per file and node.

Hashing a node image (about 1 GB) costs seconds of CPU and a full read from shared storage, on every node.
So each node keeps a stamp per file it verified, in its node-local state directory: the file's identity
and change times (device, inode, size, mtime and ctime in nanoseconds) and the sha256 found then. A file
whose identity and times still match its stamp is not hashed again. Any write to the file, a rename over
it, or a restored mtime changes at least one of them (users cannot set ctime), so corruption through the
filesystem is still caught before anything is created; only damage that bypasses the filesystem's own
bookkeeping would not be. Files that need hashing are hashed in parallel (hashlib releases the GIL).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from ksi import log
from ksi.host.state import write_json
from ksi.images.manifest import Entry

STAMPS = "image-stamps.json"
_CHUNK = 1 << 20
_log = log.get(__name__)


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _identity(info: os.stat_result) -> list[int]:
    return [info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns]


class Stamps:
    """The sha256 of files this node hashed, valid while each file's identity and times are unchanged."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, object]] = {}
        self._changed = False
        if path is not None:
            with contextlib.suppress(OSError, ValueError):
                loaded = json.loads(path.read_text(encoding="utf-8"))
                if isinstance(loaded, dict):
                    self._data = loaded

    def known(self, path: Path, info: os.stat_result) -> str | None:
        """Return the sha256 stamped for ``path`` if the file is unchanged since, else None."""
        with self._lock:
            stamp = self._data.get(str(path))
        if isinstance(stamp, dict) and stamp.get("identity") == _identity(info):
            sha = stamp.get("sha256")
            return sha if isinstance(sha, str) else None
        return None

    def remember(self, path: Path, info: os.stat_result, sha: str) -> None:
        """Stamp ``path`` (whose stat was ``info`` before hashing) with ``sha``."""
        with self._lock:
            self._data[str(path)] = {"identity": _identity(info), "sha256": sha}
            self._changed = True

    def save(self) -> None:
        """Write the stamps back (atomically) if any changed; a failure only costs a hash next time."""
        if self.path is None or not self._changed:
            return
        try:
            write_json(self.path, self._data)
        except OSError as exc:
            _log.debug("cannot write %s: %s", self.path, exc)


def check_file(directory: Path, entry: Entry, stamps: Stamps) -> str | None:
    """Return what is wrong with ``entry``'s file (missing, wrong size, wrong sha256), or None."""
    path = directory / entry.file
    what = f"{path} ({entry.describe()})"
    try:
        before = path.stat()
        if before.st_size != entry.size:
            return f"{what} has {before.st_size} bytes where the manifest says {entry.size}: truncated or replaced"
        if stamps.known(path, before) == entry.sha256:
            return None
        found = sha256_file(path)
        after = path.stat()
    except FileNotFoundError:
        return f"{what} is missing"
    except OSError as exc:
        return f"cannot read {what}: {exc.strerror}"
    if found != entry.sha256:
        return f"{what} is corrupt: its sha256 is {found[:16]}..., the manifest says {entry.sha256[:16]}..."
    if _identity(after) == _identity(before):  # not changed while it was being read
        stamps.remember(path, before, found)
    return None


def check_files(directory: Path, entries: Iterable[Entry], stamps_path: Path | None, workers: int = 4) -> list[str]:
    """Check every file ``entries`` name (each file once, in parallel); return the problems, one line each."""
    by_file: dict[str, Entry] = {}
    for entry in entries:
        by_file.setdefault(entry.file, entry)
    stamps = Stamps(stamps_path)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(workers, len(by_file))),
                                               thread_name_prefix="verify") as pool:
        results = list(pool.map(lambda e: check_file(directory, e, stamps), by_file.values()))
    stamps.save()
    return [problem for problem in results if problem is not None]

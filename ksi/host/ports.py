"""K8S_PORT: parse, probe and reserve host ports in the NodePort range on this node."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import socket
from pathlib import Path

from ksi import log
from ksi.errors import EXIT_USAGE, KsiError, Problem, UsageError
from ksi.host.state import ProcessId, node_lock, read_json, write_json

PORT_MIN = 30000
PORT_MAX = 32767
_log = log.get(__name__)


def parse_port(text: str, source: str) -> int | Problem:
    """Return the port in ``text``, or the problem with it (``source`` names where it came from)."""
    try:
        port = int(text.strip())
    except ValueError:
        return Problem(EXIT_USAGE, f"{source}={text!r} is not a port number",
                       f"give an integer in {PORT_MIN}-{PORT_MAX}")
    if not PORT_MIN <= port <= PORT_MAX:
        return Problem(EXIT_USAGE, f"{source}={port} is outside the NodePort range {PORT_MIN}-{PORT_MAX}",
                       f"give a port in {PORT_MIN}-{PORT_MAX}")
    return port


def bindable(port: int, proto: int = socket.SOCK_STREAM) -> bool:
    """True when nothing on this host holds ``port`` on the IPv4 or the IPv6 wildcard address."""
    for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):  # noqa: S104
        try:
            sock = socket.socket(family, proto)
        except OSError:
            continue  # no IPv6 on this host: nothing can listen there either
        with sock:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((address, port))
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    return False
                if exc.errno != errno.EADDRNOTAVAIL:
                    raise
    return True


class PortReservations:
    """Ports held by ksi runs of this user on this node: one JSON file per port, guarded by a node lock."""

    def __init__(self, state_dir: Path, lock_timeout: float = 30.0) -> None:
        self.dir = state_dir / "ports"
        self._lock = state_dir / "ports.lock"
        self._timeout = lock_timeout

    def _holder(self, port: int) -> dict[str, object] | None:
        """Return the live reservation record of ``port``, dropping a dead owner's record."""
        path = self.dir / str(port)
        record = read_json(path)
        if record is None:
            return None
        owner = ProcessId(int(record.get("pid", 0)), int(record.get("start", -1)))
        if owner.alive():
            return dict(record)
        _log.debug("dropping stale reservation of port %d (owner pid %d is gone)", port, owner.pid)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return None

    def reserve(self, port: int | None, cluster: str, *, udp: bool = False) -> int:
        """Reserve ``port`` (or a random free one when None) for ``cluster`` and return it.

        A given port must be free and unreserved; a random one is drawn from the whole range so that two
        runs starting together do not walk the range in step. With ``udp`` the port must be free for UDP
        (the Liqo gateway) instead of TCP.
        """
        proto = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
        what = "UDP port" if udp else "K8S_PORT"
        self.dir.mkdir(mode=0o700, exist_ok=True)
        me = ProcessId.current()
        with node_lock(self._lock, self._timeout, "port reservations"):
            if port is not None:
                holder = self._holder(port)
                if holder is not None:
                    raise UsageError(f"{what} {port} is reserved by ksi cluster {holder.get('cluster')}",
                                     fix="choose another port, or leave K8S_PORT unset", step="port")
                if not bindable(port, proto):
                    raise UsageError(f"{what} {port} is already in use on this node",
                                     fix="choose another port, or leave K8S_PORT unset", step="port")
                chosen = port
            else:
                chosen = self._pick(proto)
            write_json(self.dir / str(chosen), {"pid": me.pid, "start": me.start, "cluster": cluster})
        _log.debug("reserved port %d for %s", chosen, cluster)
        return chosen

    def _pick(self, proto: int) -> int:
        candidates = list(range(PORT_MIN, PORT_MAX + 1))
        random.shuffle(candidates)
        for candidate in candidates:
            if self._holder(candidate) is None and bindable(candidate, proto):
                return candidate
        raise KsiError(f"no free port left in {PORT_MIN}-{PORT_MAX} on this node",
                       fix="remove stale clusters with `ksi cleanup`", step="port")

    def release_cluster(self, cluster: str) -> None:
        """Drop every reservation ``cluster`` holds (none is fine: it may not have reserved one yet).

        Under the lock: otherwise a reserve() could hand a port (a dead owner's) to another cluster between
        the read and the unlink, and this would delete the new reservation.
        """
        if not self.dir.is_dir():
            return
        with node_lock(self._lock, self._timeout, "port reservations"):
            for port, holder in self.held().items():
                if holder == cluster:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.dir / str(port))
                    _log.debug("released port %d", port)

    def held(self) -> dict[int, str]:
        """Return every reservation of this user on this node: port to cluster name (dead owners included)."""
        result: dict[int, str] = {}
        if self.dir.is_dir():
            for path in self.dir.iterdir():
                record = read_json(path) if path.name.isdigit() else None  # not the writes' temporary files
                if record is not None:
                    result[int(path.name)] = str(record.get("cluster", ""))
        return result

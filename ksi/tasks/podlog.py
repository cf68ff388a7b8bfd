"""An attempt's complete log from pods/log: followed while the container runs, fetched once when it ended.

A pod's log lives only as long as the pod: a pod killed at its deadline, or on a node that went away, may
be gone before ksi asks for its log. So ksi follows the log of every attempt whose container it sees
running (one streamed request, written to a file as it comes) and, when the attempt ended, uses that
stream if it ran to the container's end; otherwise it fetches the log once, and when even that fails it
keeps what the stream got, saying that the log may be incomplete.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path
from typing import Any

from ksi import log
from ksi.tasks import kube

_log = log.get(__name__)

LOG_TIMEOUT = (5, 60)  # connect, read: a one-shot log of a lost node's pod may not come at all
FOLLOW_TIMEOUT = (5, None)  # a followed log may stay silent for hours
JOIN_TIMEOUT = 5.0  # seconds an ended attempt's stream gets to deliver its last bytes
EARLY = 2.0  # a stream that ended this long before the container did was cut short


def _save(response: Any, target: Path) -> None:
    """Write a streamed response into ``target``; release the connection only when read to the end."""
    complete = False
    try:
        with target.open("wb") as out:
            for chunk in response.stream(65536):
                out.write(chunk)
        complete = True
    finally:
        if complete:
            response.release_conn()
        else:
            response.close()  # a half-read connection must not go back to the pool


def fetch(api: kube.Api, path: str, container: str, target: Path) -> tuple[Path | None, str]:
    """Fetch a container's whole log once into ``target``; return it, or None and why it is missing."""
    try:
        _save(api.open("GET", path, query=[("container", container)], timeout=LOG_TIMEOUT, accept="*/*"), target)
    except Exception as exc:
        target.unlink(missing_ok=True)
        return None, f"log unavailable: {kube.message_of(exc)}"
    return target, ""


class Follower(threading.Thread):
    """Streams one container's log (``follow=true``) into a file until the container ends or :meth:`stop`."""

    def __init__(self, api: kube.Api, path: str, container: str, target: Path) -> None:
        super().__init__(daemon=True, name=f"log-{target.name}")
        self.api, self.path, self.container, self.target = api, path, container, target
        self.pod = ""  # the pod whose log this is
        self.ended_at: float | None = None  # when the stream reached its end (None: it did not)
        self.problem = ""
        self._response: Any = None
        self._stopped = threading.Event()

    def run(self) -> None:
        """Follow the log; note when it ended cleanly, or what went wrong."""
        try:
            self._response = self.api.open("GET", self.path, query=[("container", self.container), ("follow", True)],
                                           timeout=FOLLOW_TIMEOUT, accept="*/*")
            if self._stopped.is_set():
                self._response.close()
                return
            _save(self._response, self.target)
            self.ended_at = time.time()
        except Exception as exc:
            self.problem = kube.message_of(exc)

    def stop(self) -> None:
        """Cut the stream (shutting its socket down unblocks the thread that reads it)."""
        self._stopped.set()
        response = self._response
        sock = getattr(getattr(response, "connection", None), "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def collect(self, ended_at: float | None, refetch: Any, *, wait: bool = True) -> tuple[Path | None, str]:
        """Return the log: this stream if it reached the container's end, else ``refetch``'s, else the stream's.

        ``refetch(path)`` fetches the whole log once into ``path``; a stream that was cut short and cannot be
        completed that way is kept, marked as possibly incomplete. Without ``wait`` (an attempt being
        stopped, whose container still runs) the stream is cut at once and the log so far fetched.
        """
        if wait:
            self.join(JOIN_TIMEOUT)
        whole = self.ended_at is not None and (ended_at is None or self.ended_at >= ended_at - EARLY)
        if whole:
            return self.target, ""
        _log.debug("log of %s: the stream %s (%s); fetching it once", self.pod,
                   "is still open" if self.ended_at is None else "ended early", self.problem or "no error")
        self.stop()
        self.join(1.0)
        fallback = self.target.with_name(self.target.name + ".once")
        log, problem = refetch(fallback)
        if log is not None:
            return log, ""
        if self.target.exists() and self.target.stat().st_size:
            return self.target, f"log may be incomplete (followed until the pod went away; {problem})"
        self.target.unlink(missing_ok=True)
        return None, problem

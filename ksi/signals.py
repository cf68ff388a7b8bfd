"""Stop signals become one exception, once; after that ksi is tearing down and only notes them.

Python's default SIGTERM kills without running ``finally`` blocks, and Slurm sends TERM to every process of
the step (repeatedly with some setups). The guard turns the first TERM/INT/HUP/USR1 into
:class:`~ksi.errors.Interrupted` raised in the main thread, and ignores every later one: teardown must not
be interrupted by the signal that caused it.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from ksi import log
from ksi.errors import Interrupted

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
_log = log.get(__name__)


class SignalGuard:
    """Installs handlers for STOP_SIGNALS; raises at most once, and never after :meth:`disarm`."""

    def __init__(self) -> None:
        self.armed = False
        self.received: list[int] = []

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        name = signal.Signals(signum).name
        if self.armed:
            self.armed = False  # one-shot: a second signal must not interrupt the teardown it started
            raise Interrupted(signum, name)
        _log.info("received %s during teardown; teardown continues", name)

    def disarm(self) -> None:
        """From now on, signals are only noted (call this when teardown begins)."""
        self.armed = False

    @property
    def first(self) -> int | None:
        """The first stop signal received, if any."""
        return self.received[0] if self.received else None

    @contextmanager
    def installed(self) -> Iterator[SignalGuard]:
        """Install the handlers (armed) for the duration of the block, then restore the previous ones."""
        previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        self.armed = True
        try:
            yield self
        finally:
            self.armed = False
            for sig, handler in previous.items():
                signal.signal(sig, handler)

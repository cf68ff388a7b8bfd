"""Stop signals during a task run: noted, never raised, so that the runner stops between two steps.

The runner checks :attr:`StopFlag.signum` each time round its loop: it then interrupts the running
attempts, records them, and exits 128+N. An exception raised by a signal handler could land anywhere
(half-way through writing a result); a flag cannot.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from ksi import log
from ksi.host.signals import STOP_SIGNALS

_log = log.get(__name__)


class StopFlag:
    """Remembers the first stop signal (TERM, INT, HUP, USR1) received while installed."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signum is None:
            self.signum = signum
            _log.info("tasks: received %s; stopping the running attempts", name)
        else:
            _log.info("tasks: received %s again; still stopping", name)

    def __call__(self) -> int | None:
        """Return the first stop signal received, or None."""
        return self.signum

    @contextmanager
    def installed(self) -> Iterator[StopFlag]:
        """Install the handlers for the duration of the block, then restore the previous ones."""
        previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

"""Stop signals become one exception, once; after that ksi is tearing down and only notes them.

Python's default SIGTERM kills without running ``finally`` blocks, and Slurm sends TERM to every process of
the step (repeatedly with some setups). The guard turns the first TERM/INT/HUP/USR1 into
:class:`~ksi.errors.Interrupted` raised in the main thread, and ignores every later one: teardown must not
be interrupted by the signal that caused it.

An exception raised by a signal handler is lost when the handler happens to run inside a weakref callback
or a ``__del__`` (Python prints "Exception ignored in ..." and carries on; seen with the import system's
module-lock callbacks). So the handler also records the signal, and every place where ksi waits calls
:func:`check`, which raises the recorded interruption if nobody has seen it yet.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from ksi import log
from ksi.errors import Interrupted

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
_log = log.get(__name__)


class SignalGuard:
    """Installs handlers for STOP_SIGNALS; interrupts at most once, and never after :meth:`disarm`."""

    def __init__(self) -> None:
        self.armed = False
        self.pending: int | None = None
        self.received: list[int] = []
        self.first_at: float | None = None  # time.monotonic() when the first stop signal arrived
        self.settled = False  # see settle()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self.received:
            self.first_at = time.monotonic()  # Slurm's KillWait counts from here
        self.received.append(signum)
        name = signal.Signals(signum).name
        if self.armed:
            self.armed = False  # one-shot: a second signal must not interrupt the teardown it started
            self.pending = signum
            raise Interrupted(signum, name)
        _log.info("received %s during teardown; teardown continues", name)

    def check(self) -> None:
        """Raise the interruption a signal asked for if its exception was lost (a no-op otherwise)."""
        if self.pending is not None:
            signum, self.pending = self.pending, None
            raise Interrupted(signum, signal.Signals(signum).name)

    def seen(self) -> None:
        """Note that the interruption reached the code that handles it."""
        self.pending = None

    def settle(self) -> None:
        """The run is over and torn down: from the end of ``installed`` to the exit, stop signals are ignored.

        Under ``srun -K1`` Slurm signals the tasks still alive when one exits non-zero; a task that has
        nothing left to undo must still exit with its own status, not the signal's.
        """
        self.settled = True

    def disarm(self) -> None:
        """From now on, signals are only noted (call this when teardown begins)."""
        self.armed = False
        self.pending = None

    @property
    def first(self) -> int | None:
        """The first stop signal received, if any."""
        return self.received[0] if self.received else None

    @contextmanager
    def installed(self) -> Iterator[SignalGuard]:
        """Install the handlers (armed) for the duration of the block, then restore the previous ones."""
        global _current
        previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        self.armed = True
        _current = self
        try:
            yield self
        finally:
            self.disarm()
            _current = None
            for sig, handler in previous.items():
                signal.signal(sig, signal.SIG_IGN if self.settled else handler)


_current: SignalGuard | None = None


def check() -> None:
    """Raise a pending interruption of the installed guard; call this wherever ksi waits.

    Only the main thread raises it: a worker thread (peering, listing) must not swallow the main thread's
    interruption; the main thread checks while it waits for the workers.
    """
    if _current is not None and threading.current_thread() is threading.main_thread():
        _current.check()


def seen() -> None:
    """Tell the installed guard that its interruption is being handled (no later check() raises it)."""
    if _current is not None:
        _current.seen()

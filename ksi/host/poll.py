"""Waiting until something happens or a deadline passes: the one loop every wait of ksi goes through.

Each round asks ``probe`` (any value but None ends the wait), runs the caller's per-round check (an abort
file, a heartbeat), gives up with the caller's error once the deadline has passed, raises a stop signal
whose exception was lost (:func:`ksi.host.signals.check`), and pauses. The pause is short and may be the
awaited thing itself (a child's ``wait``, an Event's ``wait``, ``concurrent.futures.wait``), so a wait ends
as soon as the event happens instead of at the next poll.
"""

from __future__ import annotations

import concurrent.futures
import math
import time
from collections.abc import Callable, Collection, Iterator
from typing import TypeVar

from ksi import log
from ksi.errors import KsiError
from ksi.host import signals

T = TypeVar("T")
SLICE = 0.25  # seconds: the longest a wait goes without looking for a stop signal
_log = log.get(__name__)


def poll(what: str, probe: Callable[[], T | None], *, timeout: float = math.inf, interval: float = SLICE,
         expired: Callable[[], BaseException] | None = None, every: Callable[[], None] | None = None,
         pause: Callable[[float], object] = time.sleep, backoff: float = 1.0, max_interval: float = 2.0) -> T:
    """Return the first value other than None that ``probe`` returns, waiting at most ``timeout`` seconds.

    ``every`` runs after each unsuccessful round (it raises to end the wait); ``expired`` builds the error
    raised once the deadline has passed (default: a KsiError naming ``what``). Between rounds ``pause`` is
    called with at most ``interval`` seconds; with ``backoff`` > 1 the interval grows by that factor each
    round, up to ``max_interval``.
    """
    deadline = time.monotonic() + timeout
    delay = interval
    while True:
        value = probe()
        if value is not None:
            return value
        if every is not None:
            every()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            _log.debug("gave up waiting for %s after %g s", what, timeout)
            raise expired() if expired is not None else KsiError(f"gave up waiting for {what} after {timeout:g} s")
        signals.check()
        pause(min(delay, remaining))
        if backoff > 1:
            delay = min(delay * backoff, max(max_interval, interval))


def completed(futures: Collection[concurrent.futures.Future[T]]) -> Iterator[concurrent.futures.Future[T]]:
    """Yield ``futures`` as they finish (as concurrent.futures.as_completed), looking for stop signals meanwhile."""
    pending = set(futures)

    def finished() -> set[concurrent.futures.Future[T]] | None:
        return {f for f in pending if f.done()} or None

    def pause(seconds: float) -> None:
        concurrent.futures.wait(pending, seconds, return_when=concurrent.futures.FIRST_COMPLETED)

    while pending:
        done = poll("a worker thread", finished, pause=pause)
        pending -= done
        yield from done

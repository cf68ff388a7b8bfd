"""Structural teardown: each step that creates something registers its undo before it starts."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ksi import log
from ksi.errors import KsiError

_log = log.get(__name__)


class Teardown:
    """A stack of undo steps run in reverse; a failing step is logged and never hides another's error."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[..., Any], tuple[Any, ...]]] = []
        self.failures: list[str] = []
        # Returns the time.monotonic() by which the teardown must end (a stop signal's budget), or None. Asked
        # by every step that starts: a stop signal may arrive while the teardown already runs.
        self.deadline: Callable[[], float | None] = lambda: None

    def time_left(self, limit: float) -> float:
        """Return the seconds a step may take: ``limit``, or less when the deadline is nearer (at least 1 s)."""
        deadline = self.deadline()
        if deadline is None:
            return limit
        return max(min(limit, deadline - time.monotonic()), 1.0)

    def push(self, what: str, undo: Callable[..., Any], *args: Any) -> None:
        """Register ``undo(*args)``, described as ``what``, to run at teardown."""
        self._steps.append((what, undo, args))

    def run(self) -> bool:
        """Run every registered step, newest first; return True when all of them succeeded."""
        while self._steps:
            what, undo, args = self._steps.pop()
            try:
                undo(*args)
            except KsiError as exc:
                self.failures.append(f"{what}: {exc.message}")
                _log.error("teardown: %s failed: %s", what, exc.one_line())
            except Exception as exc:
                self.failures.append(f"{what}: {exc!r}")
                _log.exception("teardown: %s failed unexpectedly", what)
        return not self.failures

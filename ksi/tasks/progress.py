"""Progress of a task run: one line that updates in place on a terminal, plain periodic lines otherwise.

Each line says how many tasks are done, running, failed and pending, the time elapsed and an estimate of
the time left (from the pace of this run). A failed task gets a line of its own, at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from ksi import log
from ksi.tasks.quantity import format_duration

TERMINAL_INTERVAL = 0.5  # seconds between redraws of the updating line
PLAIN_INTERVAL = 30.0  # seconds between plain lines (batch output files)
_CLEAR = "\r\x1b[K"


class _ClearLine(logging.Filter):
    """Clears the progress line before a log line is printed on the same terminal."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress

    def filter(self, record: logging.LogRecord) -> bool:
        self.progress.clear()
        return True


class Progress:
    """Reports counts to ``stream``: redrawn in place when ``terminal``, else a line every ``interval`` seconds."""

    def __init__(self, stream: TextIO, prefix: str, *, terminal: bool, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.prefix = prefix
        self.terminal = terminal
        self.interval = interval if interval is not None else TERMINAL_INTERVAL if terminal else PLAIN_INTERVAL
        self.clock = clock
        self.started = clock()
        self._last_shown = float("-inf")
        self._first_done: int | None = None
        self._drawn = False
        self._filter = _ClearLine(self)

    def _console_handlers(self) -> list[logging.Handler]:
        """Return ksi's log handlers that write to this progress line's stream."""
        return [h for h in logging.getLogger(log.ROOT).handlers
                if isinstance(h, logging.StreamHandler) and h.stream is self.stream]

    def clear(self) -> None:
        """Erase the progress line (a log line is about to be printed); the next update draws it again."""
        if self.terminal and self._drawn:
            self.stream.write(_CLEAR)
            self.stream.flush()
            self._drawn = False
            self._last_shown = float("-inf")

    def line(self, counts: Mapping[str, int]) -> str:
        """Return the progress line for ``counts`` (total, done, running, failed, pending)."""
        elapsed = self.clock() - self.started
        text = (f"{counts['done']}/{counts['total']} done, {counts['running']} running, {counts['failed']} failed, "
                f"{counts['pending']} pending")
        if counts.get("interrupted"):
            text += f", {counts['interrupted']} interrupted"
        text += f"; {format_duration(elapsed)} elapsed"
        finished_here = counts["done"] + counts["failed"] - (self._first_done or 0)
        left = counts["running"] + counts["pending"]
        if finished_here > 0 and left and elapsed > 0:
            text += f", about {format_duration(left * elapsed / finished_here)} left"
        return f"{self.prefix}{text}"

    def _show(self, counts: Mapping[str, int]) -> None:
        self._last_shown = self.clock()
        if self.terminal:
            self.stream.write(_CLEAR + self.line(counts))
            self._drawn = True
        else:
            self.stream.write(self.line(counts) + "\n")
        self.stream.flush()

    def begin(self, counts: Mapping[str, int]) -> None:
        """Show the first line (and remember what was done before this run, for the estimate)."""
        self.started = self.clock()
        self._first_done = counts["done"] + counts["failed"]
        if self.terminal:
            for handler in self._console_handlers():
                handler.addFilter(self._filter)
        self._show(counts)

    def due(self) -> bool:
        """True when the last line is older than the interval (counting tasks costs time: ask first)."""
        return self.clock() - self._last_shown >= self.interval

    def update(self, counts: Mapping[str, int]) -> None:
        """Show ``counts`` if the last line is older than the interval."""
        if self.due():
            self._show(counts)

    def note(self, text: str) -> None:
        """Print one line of its own (a failed task), above the updating line on a terminal."""
        self.clear()
        self.stream.write(f"{self.prefix}{text}\n")
        self.stream.flush()

    def finish(self, counts: Mapping[str, int]) -> None:
        """Show the final counts and end the updating line."""
        self._show(counts)
        if self.terminal:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
            for handler in self._console_handlers():
                handler.removeFilter(self._filter)


def summary_table(failed: Sequence[Mapping[str, Any]]) -> list[str]:
    """Return the table of failed tasks: task, reason, exit code, attempts, node, log."""
    rows = [("TASK", "REASON", "EXIT", "ATTEMPTS", "NODE", "LOG")]
    rows += [(str(f["task"]), str(f.get("reason") or "-"), "-" if f.get("exit_code") is None else str(f["exit_code"]),
              str(f.get("attempts") or "-"), str(f.get("node") or "-"), str(f["log"])) for f in failed]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1] for row in rows]

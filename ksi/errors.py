"""The one exception hierarchy of ksi; only :mod:`ksi.cli` turns these into messages and exit codes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Exit codes (kept from the bash prototype so site scripts keep working).
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_PREREQUISITE = 3
EXIT_TOOL_MISSING = 4


class KsiError(Exception):
    """Root of every error ksi reports; carries where it happened and how to fix it."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, *, fix: str = "", step: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.step = step

    def __str__(self) -> str:
        return self.message

    def one_line(self) -> str:
        """Return the message with its step and fix, as printed on the console."""
        where = f"{self.step}: " if self.step else ""
        fix = f"; fix: {self.fix}" if self.fix else ""
        return f"{where}{self.message}{fix}"


class UsageError(KsiError):
    """A command-line argument or configuration value is wrong."""

    exit_code = EXIT_USAGE


class PrerequisiteError(KsiError):
    """The node lacks something ksi needs from the system (cgroup v2, a writable directory, ...)."""

    exit_code = EXIT_PREREQUISITE


class ToolMissingError(KsiError):
    """A program ksi runs (kind, nerdctl, liqoctl) is missing or too old."""

    exit_code = EXIT_TOOL_MISSING


@dataclass(frozen=True)
class Problem:
    """One finding of the checks that run before anything is created."""

    code: int
    message: str
    fix: str
    step: str = "checks"

    def one_line(self) -> str:
        """Return the problem as one console line without the node prefix."""
        return f"{self.step}: {self.message}; fix: {self.fix}"


class ChecksFailed(KsiError):
    """Every problem found before anything was created; exit code of the most basic one."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__(f"{len(problems)} problem(s) found before anything was created", step="checks")
        self.problems = tuple(problems)
        self.exit_code = min(p.code for p in problems)


class CommandFailed(KsiError):
    """An external command exited non-zero; keeps argv, exit status and both output streams."""

    def __init__(
        self, argv: Sequence[str], returncode: int, stdout: str, stderr: str, *, step: str = ""
    ) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(f"`{_short(argv)}` exited with status {returncode}{_tail(stderr or stdout)}", step=step)


class CommandTimeout(CommandFailed):
    """An external command did not finish within its timeout and was killed."""

    def __init__(self, argv: Sequence[str], timeout: float, stdout: str, stderr: str, *, step: str = "") -> None:
        super().__init__(argv, -1, stdout, stderr, step=step)
        self.timeout = timeout
        self.message = f"`{_short(argv)}` did not finish within {timeout:g} s and was killed{_tail(stderr)}"


class Interrupted(KsiError):
    """A signal (TERM, INT, HUP, USR1) asked ksi to stop; exit code 128+N."""

    def __init__(self, signum: int, name: str) -> None:
        super().__init__(f"received {name}, tearing down")
        self.signum = signum
        self.name = name
        self.exit_code = 128 + signum


def _short(argv: Sequence[str]) -> str:
    """Return the command line cut to a readable length."""
    import shlex

    text = shlex.join(argv)
    return text if len(text) <= 160 else text[:157] + "..."


def _tail(text: str, lines: int = 3) -> str:
    """Return the last non-empty lines of a command's output, prefixed for an error message."""
    tail = [line.strip() for line in text.strip().splitlines() if line.strip()][-lines:]
    return (": " + " | ".join(tail)) if tail else ""

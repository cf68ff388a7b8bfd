"""The user's workload: how to start it, and running it with live, kept output and forwarded signals."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ksi import log, signals
from ksi.errors import EXIT_USAGE, Interrupted, Problem

_log = log.get(__name__)
_PUMP_JOIN = 5.0


@dataclass(frozen=True)
class Workload:
    """A checked workload: the argv that starts it and whether bash runs it."""

    path: Path
    argv: tuple[str, ...]
    via_bash: bool


def resolve(text: str, args: Sequence[str]) -> Workload | Problem:  # noqa: PLR0911 - one return per finding
    """Return how to run the workload file ``text`` with ``args``, or the problem with it.

    Executable files run directly; a readable, non-executable text file runs with bash (as the prototype
    did); anything else is a problem.
    """
    path = Path(text).expanduser().absolute()
    fix_path = "give the path of an existing workload script"
    if not path.exists():
        return Problem(EXIT_USAGE, f"workload {str(path)!r} does not exist", fix_path)
    if path.is_dir():
        return Problem(EXIT_USAGE, f"workload {str(path)!r} is a directory, not a script", fix_path)
    if not path.is_file():
        return Problem(EXIT_USAGE, f"workload {str(path)!r} is not a regular file", fix_path)
    if not os.access(path, os.R_OK):
        return Problem(EXIT_USAGE, f"workload {str(path)!r} is not readable", f"chmod u+r {str(path)!r}")
    if os.access(path, os.X_OK):
        return Workload(path, (str(path), *args), via_bash=False)
    with path.open("rb") as handle:
        head = handle.read(4096)
    if b"\0" in head:
        return Problem(EXIT_USAGE, f"workload {str(path)!r} is a binary without execute permission",
                       f"chmod +x {str(path)!r}")
    return Workload(path, ("bash", str(path), *args), via_bash=True)


def _pump(source: BinaryIO, sink: BinaryIO, keep: BinaryIO, lock: threading.Lock) -> None:
    """Copy ``source`` to ``sink`` (live) and ``keep`` (the run directory's copy) until end of file."""
    fd = source.fileno()
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            return
        if not chunk:
            return
        with lock:
            keep.write(chunk)
            keep.flush()
        with contextlib.suppress(OSError, ValueError):
            sink.write(chunk)
            sink.flush()


def run(workload: Workload, env: Mapping[str, str], cwd: Path, output: Path, grace: float) -> tuple[int, int | None]:
    """Run ``workload`` in its own process group; return (exit status, stop signal that interrupted it).

    stdout and stderr pass through live and are also appended to ``output`` (0600). A stop signal that
    reaches ksi while the workload runs is forwarded to the workload's process group; after ``grace``
    seconds the group is killed. The status is 128+N when the workload died from signal N.
    """
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    keep = os.fdopen(fd, "wb")
    lock = threading.Lock()
    child = subprocess.Popen(list(workload.argv), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, process_group=0)
    assert child.stdout is not None and child.stderr is not None
    pumps = [
        threading.Thread(target=_pump, args=(child.stdout, sys.stdout.buffer, keep, lock), daemon=True),
        threading.Thread(target=_pump, args=(child.stderr, sys.stderr.buffer, keep, lock), daemon=True),
    ]
    for pump in pumps:
        pump.start()
    stopped_by: int | None = None
    try:
        try:
            returncode = _wait(child)
        except Interrupted as exc:
            signals.seen()
            stopped_by = exc.signum
            returncode = _stop(child, exc.signum, grace)
        # Whatever the workload left running in its group (background jobs) ends with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGTERM)
        for pump in pumps:
            pump.join(_PUMP_JOIN)
    finally:
        if child.poll() is None:
            _kill(child.pid, signal.SIGKILL)
            child.wait()
        with lock:
            keep.close()
    status = 128 - returncode if returncode < 0 else returncode
    return status, stopped_by


def _wait(child: subprocess.Popen[bytes]) -> int:
    """Wait for the workload, checking for a stop signal whose exception was lost every quarter second."""
    while True:
        try:
            return child.wait(timeout=0.25)
        except subprocess.TimeoutExpired:
            signals.check()


def _kill(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _stop(child: subprocess.Popen[bytes], signum: int, grace: float) -> int:
    """Forward ``signum`` to the workload's group; SIGKILL it after ``grace`` seconds; return its exit code."""
    _log.info("workload: forwarding %s, waiting up to %g s", signal.Signals(signum).name, grace)
    _kill(child.pid, signum)
    try:
        return child.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        _log.warning("workload: still running after %g s; killing it", grace)
        _kill(child.pid, signal.SIGKILL)
        return child.wait()

"""The one place where ksi starts external programs.

Every command is looked up on the PATH of the environment it will run with (built at call time), logged as
a line one can paste into a shell, started with :class:`subprocess.Popen` in its own process group, run
under a timeout, and turned into :class:`~ksi.errors.CommandFailed` with argv, exit status, stdout and
stderr when it fails. Teardown commands run *shielded*: they ignore SIGTERM/SIGINT/SIGHUP so a repeated
scancel signal cannot cut a ``kind delete`` short.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ksi import log
from ksi.errors import CommandFailed, CommandTimeout, ToolMissingError
from ksi.host import signals

_log = log.get(__name__)
_KILL_GRACE = 2.0
_SLICE = 0.25  # seconds between checks for a stop signal while a command runs
_live: set[subprocess.Popen[str]] = set()  # children of every thread, for terminate_all()
_live_lock = threading.Lock()


@dataclass(frozen=True)
class Result:
    """What a finished command left behind."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def environment(extra: Mapping[str, str] | None = None, *, drop: Sequence[str] = ()) -> dict[str, str]:
    """Return a copy of the current process environment with ``extra`` set and ``drop`` removed."""
    env = dict(os.environ)
    for name in drop:
        env.pop(name, None)
    env.update(extra or {})
    return env


def which(program: str, env: Mapping[str, str] | None = None) -> str | None:
    """Return the absolute path of ``program`` on the PATH of ``env`` (default: the current one)."""
    path = (env if env is not None else os.environ).get("PATH", os.defpath)
    return shutil.which(program, path=path)


# A shielded command starts through sh, which sets the stop signals to "ignore" and execs the command:
# ignored signals stay ignored across exec. (Popen's preexec_fn would do the same in Python, but it is
# documented as unsafe while other threads run, and ksi has threads during teardown.)
_SHIELD = ("/bin/sh", "-c", 'trap "" TERM INT HUP; exec "$@"', "sh")


def _kill_group(proc: subprocess.Popen[str], *, term: bool = True) -> None:
    """Send TERM to the child's process group, then KILL if it is still there after a short grace.

    Without ``term``, KILL at once: a shielded command ignores TERM, and waiting for it would only spend
    what is left of a stop budget.
    """
    steps = ((signal.SIGTERM, _KILL_GRACE), (signal.SIGKILL, _KILL_GRACE)) if term else ((signal.SIGKILL, _KILL_GRACE),)
    for sig, wait in steps:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _communicate(proc: subprocess.Popen[str], deadline: float, *, check_signals: bool) -> tuple[str, str]:
    """Collect the child's output until it exits, in short slices so a pending interruption is noticed."""
    while True:
        try:
            return proc.communicate(timeout=max(min(_SLICE, deadline - time.monotonic()), 0.0))
        except subprocess.TimeoutExpired:
            if time.monotonic() >= deadline:
                raise
            if check_signals:
                signals.check()


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    shielded: bool = False,
    step: str = "",
    started: Callable[[], object] | None = None,
) -> Result:
    """Run ``argv`` to completion and return its result.

    ``env`` is the child's complete environment (default: the current one). Raises ToolMissingError when the
    program is not on that environment's PATH, CommandTimeout after ``timeout`` seconds (the process group is
    killed), and CommandFailed on a non-zero exit when ``check`` is true. If ksi itself is interrupted while
    waiting, the child's process group is killed before the interruption propagates. ``started`` is called
    (in this thread) as soon as the command runs, for work that should overlap with it.
    """
    child_env = dict(env) if env is not None else environment()
    exe = which(argv[0], child_env)
    if exe is None:
        raise ToolMissingError(
            f"{argv[0]} not found on PATH", fix=f"install {argv[0]} or put it on PATH", step=step
        )
    _log.debug("run: %s", shlex.join(argv))
    began = time.monotonic()
    proc = subprocess.Popen(
        [*_SHIELD, exe, *argv[1:]] if shielded else [exe, *argv[1:]],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env,
        process_group=0,
        encoding="utf-8",
        errors="replace",
    )
    with _live_lock:
        _live.add(proc)
    try:
        if started is not None:
            started()
        stdout, stderr = _communicate(proc, began + timeout, check_signals=not shielded)
    except subprocess.TimeoutExpired:
        _kill_group(proc, term=not shielded)
        stdout, stderr = proc.communicate()
        _log.debug("timeout after %.1f s: %s\nstderr: %s", timeout, shlex.join(argv), stderr)
        raise CommandTimeout(argv, timeout, stdout, stderr, step=step) from None
    except BaseException:
        if shielded:
            # A stop signal reached ksi while a teardown command runs (its own group ignores it): let the
            # command finish within its timeout rather than leave a half-deleted cluster, then stop.
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=max(began + timeout - time.monotonic(), 0.0))
        _kill_group(proc, term=not shielded)
        raise
    finally:
        with _live_lock:
            _live.discard(proc)
    result = Result(tuple(argv), proc.returncode, stdout, stderr, time.monotonic() - began)
    _log.debug(
        "exit %d after %.2f s: %s%s%s",
        result.returncode,
        result.seconds,
        argv[0],
        f"\nstdout: {stdout.strip()}" if stdout.strip() else "",
        f"\nstderr: {stderr.strip()}" if stderr.strip() else "",
    )
    if check and result.returncode != 0:
        raise CommandFailed(argv, result.returncode, stdout, stderr, step=step)
    return result


def terminate_all() -> None:
    """Kill the process groups of every command still running in any thread (before teardown starts)."""
    with _live_lock:
        running = list(_live)
    for child in running:
        if child.poll() is None:
            _log.debug("killing unfinished command (pid %d)", child.pid)
            _kill_group(child)

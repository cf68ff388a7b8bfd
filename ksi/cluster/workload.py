"""The user's workload: how to start it, and running it with live, kept output and forwarded signals."""

from __future__ import annotations

import contextlib
import marshal
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ksi import log
from ksi.errors import EXIT_USAGE, Interrupted, KsiError, Problem
from ksi.host import signals
from ksi.host.poll import poll

_log = log.get(__name__)
_PUMP_JOIN = 5.0


@dataclass(frozen=True)
class Workload:
    """A checked workload: the argv that starts it, and why bash runs it (empty when it runs directly)."""

    path: Path
    argv: tuple[str, ...]
    via_bash: str = ""


_ELF = b"\x7fELF"
# The guardian leads the workload's process group: it asks the kernel for SIGUSR2 when ksi dies
# (PR_SET_PDEATHSIG) and then SIGKILLs the whole group. A SIGKILLed ksi (KillWait, OOM, kill -9) cannot
# forward anything, and the group would live on as orphans, which Slurm's proctrack/linuxproc no longer tracks
# once they are reparented. The stop signals ksi forwards to the group are the workload's to handle: the
# guardian catches them with a no-op handler (reset to the default on exec, so the workload sees them as
# usual). It starts before the workload is known (an interpreter's start is then off the critical path) and
# reads what to run (argv, environment, directory: marshal, the interpreter's own format) from its stdin;
# an end of file without it (ksi stopped first, or died) ends it without starting anything, and a part of
# it (a stop signal while ksi wrote) with 125. It exits the way the workload did (same code, same signal);
# an exec failure exits 126/127 as a shell's does. A separate interpreter because Popen's preexec_fn is
# unsafe with threads.
_GUARDIAN = """\
import ctypes, marshal, os, signal, sys
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
    signal.signal(sig, lambda signum, frame: None)
signal.signal(signal.SIGUSR2, lambda signum, frame: os.killpg(0, signal.SIGKILL))
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGUSR2)
if os.getppid() != int(sys.argv[1]):
    os.killpg(0, signal.SIGKILL)
given = sys.stdin.buffer.read()
if not given:
    os._exit(0)
try:
    argv, env, cwd = marshal.loads(given)
except (EOFError, ValueError, TypeError):
    print("ksi: the workload's start was cut short", file=sys.stderr)
    os._exit(125)
os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
try:
    os.chdir(cwd)
except OSError as exc:
    print(f"ksi: cannot start the workload in {cwd}: {exc.strerror}", file=sys.stderr)
    os._exit(126)
pid = os.fork()
if pid == 0:
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        print(f"ksi: cannot start the workload {argv[0]}: {exc.strerror}", file=sys.stderr)
        os._exit(127 if isinstance(exc, FileNotFoundError) else 126)
code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
if code < 0:
    try:
        signal.signal(-code, signal.SIG_DFL)
    except (OSError, ValueError):
        pass  # SIGKILL and SIGSTOP have no handler to reset
    os.kill(os.getpid(), -code)
os._exit(code if code >= 0 else 128 - code)
"""
_DISCARD_WAIT = 2.0  # seconds an unused guardian gets to exit once its stdin is closed


class Guardian:
    """The leader of the workload's process group, started ahead of the workload (see ``_GUARDIAN``).

    Register :meth:`discard` (the teardown's undo) before :meth:`spawn`; :func:`run` calls :meth:`start`.
    """

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def process(self) -> subprocess.Popen[bytes]:
        """The guardian's process (once spawned)."""
        assert self._process is not None
        return self._process

    def spawn(self) -> None:
        """Start the guardian interpreter; it waits for :meth:`start`, or for its stdin to close."""
        self._process = subprocess.Popen([sys.executable, "-I", "-S", "-c", _GUARDIAN, str(os.getpid())],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         process_group=0)

    def start(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> None:
        """Hand the guardian what to run (through its stdin, never its argv) and close the pipe: it starts."""
        assert self.process.stdin is not None
        try:
            with self.process.stdin:
                self.process.stdin.write(marshal.dumps((list(argv), dict(env), str(cwd))))
        except BrokenPipeError:
            raise KsiError(f"the workload's guardian (pid {self.process.pid}) exited before the workload started",
                           step="workload", fix="see ksi.log in the run directory; something killed "
                           "processes of this job") from None

    def discard(self) -> None:
        """End a guardian that never got a workload: close its stdin and reap it (SIGKILL if it lingers).

        Nothing to do once :meth:`start` closed the stdin: the workload runs, and :func:`run` owns the rest.
        """
        process = self._process
        if process is None or process.stdin is None or process.stdin.closed:
            return
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        try:
            process.wait(timeout=_DISCARD_WAIT)
        except subprocess.TimeoutExpired:
            _kill(process.pid, signal.SIGKILL)
            process.wait()


def _interpreter_problem(path: Path, line: bytes, search_path: str) -> Problem | None:
    """Return the problem with a ``#!`` line whose interpreter (or the program env runs) is missing."""
    words = line[2:].decode(errors="replace").split()
    shown = str(path)
    if not words:
        return Problem(EXIT_USAGE, f"workload {shown!r} has an empty #! line", "name an interpreter in the #! line")
    interpreter = Path(words[0])  # a relative one from the cwd, as the kernel does: ksi runs the workload there
    if not (interpreter.is_file() and os.access(interpreter, os.X_OK)):
        return Problem(EXIT_USAGE, f"workload {shown!r} names the interpreter {words[0]!r} in its #! line, "
                       "which does not exist on this node", f"install {words[0]} or correct the #! line")
    if interpreter.name != "env":
        return None
    # `#!/usr/bin/env [-S] [-i] [NAME=VALUE...] PROGRAM`: the program is looked up on the workload's PATH.
    program = next((w for w in " ".join(words[1:]).split() if not w.startswith("-") and "=" not in w), None)
    if program is None or shutil.which(program, path=search_path):
        return None
    return Problem(EXIT_USAGE, f"workload {shown!r} runs {program!r} through env in its #! line, but {program} "
                   "is not on PATH on this node", f"install {program}, put it on PATH, or correct the #! line")


def resolve(text: str, args: Sequence[str], search_path: str = os.defpath, *,  # noqa: PLR0911 - one per finding
            check_interpreter: bool = True) -> Workload | Problem:
    """Return how to run the workload file ``text`` with ``args``, or the problem with it.

    Executable files with a ``#!`` line or a binary format run directly, after checking that the interpreter
    exists (with ``check_interpreter``; ``search_path`` is the workload's PATH for ``#!/usr/bin/env X``).
    Text files without execute permission or without a ``#!`` line run with bash, as the prototype did (and
    as a shell would); a binary without execute permission is a problem.
    """
    path = Path(text).expanduser().absolute()
    shown = str(path)
    fix_path = "give the path of an existing workload script"
    if not path.exists():
        return Problem(EXIT_USAGE, f"workload {shown!r} does not exist", fix_path)
    if path.is_dir():
        return Problem(EXIT_USAGE, f"workload {shown!r} is a directory, not a script", fix_path)
    if not path.is_file():
        return Problem(EXIT_USAGE, f"workload {shown!r} is not a regular file", fix_path)
    if not os.access(path, os.R_OK):
        return Problem(EXIT_USAGE, f"workload {shown!r} is not readable", f"chmod u+r {shown!r}")
    with path.open("rb") as handle:
        head = handle.read(4096)
    binary = head.startswith(_ELF) or b"\0" in head
    if os.access(path, os.X_OK):
        if head.startswith(b"#!"):
            problem = _interpreter_problem(path, head.split(b"\n", 1)[0], search_path) if check_interpreter else None
            return problem or Workload(path, (shown, *args))
        if binary:
            return Workload(path, (shown, *args))
        why = "has no #! line"
    elif binary:
        return Problem(EXIT_USAGE, f"workload {shown!r} is a binary without execute permission",
                       f"chmod +x {shown!r}")
    else:
        why = "is not executable"
    if shutil.which("bash", path=search_path) is None:
        return Problem(EXIT_USAGE, f"workload {shown!r} {why} and bash, which would run it, is not on PATH",
                       f"add a #! line and chmod +x {shown!r}, or install bash")
    return Workload(path, ("bash", shown, *args), via_bash=why)


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


def run(workload: Workload, env: Mapping[str, str], cwd: Path, output: Path,
        grace: float | Callable[[int], float], guardian: Guardian) -> tuple[int, int | None]:
    """Run ``workload`` in its own process group; return (exit status, stop signal that interrupted it).

    The group's leader is ``guardian``, spawned earlier so that its start is not waited for here. stdout
    and stderr pass through live and are also appended to ``output`` (0600). A stop signal that reaches ksi
    while the workload runs is forwarded to the workload's process group; after ``grace`` seconds (or what
    ``grace(signal)`` returns once the signal is forwarded) the group is killed; if ksi itself is killed, so
    is the workload (parent-death signal). The status is 128+N when the workload died from signal N.
    """
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    keep = os.fdopen(fd, "wb")
    lock = threading.Lock()
    child = guardian.process
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
            guardian.start(workload.argv, env, cwd)
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
    """Wait for the workload, looking for a stop signal whose exception was lost every quarter second."""

    def pause(seconds: float) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=seconds)

    return poll("the workload", child.poll, pause=pause)


def _kill(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _stop(child: subprocess.Popen[bytes], signum: int, grace: float | Callable[[int], float]) -> int:
    """Forward ``signum`` to the workload's group; SIGKILL it after its grace period; return its exit code.

    The signal goes first: working out the grace (the stop budget may ask Slurm) must not delay it.
    """
    _kill(child.pid, signum)
    seconds = round(grace(signum) if callable(grace) else grace, 1)
    _log.info("workload: forwarding %s, waiting up to %g s", signal.Signals(signum).name, seconds)
    try:
        return child.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        _log.warning("workload: still running after %g s; killing it", seconds)
        _kill(child.pid, signal.SIGKILL)
        return child.wait()

"""``ksi tasks run --local``: the same tasks as local processes, to debug a SPEC without a cluster.

The image is ignored. Each attempt runs in its own process group in the shared directory (the cluster's
/app), with the SPEC's environment, output to a file that becomes the task's log.txt when the attempt ends.
The timeout is enforced (``DeadlineExceeded``); a stop signal ends every attempt (TERM, then KILL).
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path

from ksi import log
from ksi.tasks import results as res
from ksi.tasks.quantity import parse_quantity
from ksi.tasks.runner import Attempt, Ended, task_environment
from ksi.tasks.spec import Spec

_log = log.get(__name__)
UNLIMITED = 1 << 30


def host_capacity(spec: Spec, cpus: int | None = None, memory: int | None = None) -> tuple[int, str]:
    """Return how many tasks this machine holds at once given the SPEC's requests, and why."""
    cpus = cpus if cpus is not None else len(os.sched_getaffinity(0))
    memory = memory if memory is not None else _available_memory()
    requested = dict(spec.resources)
    fits = [(cpus, f"{cpus} CPUs")] if "cpu" not in requested else [
        (int(Decimal(cpus) / parse_quantity(requested["cpu"])), f"{cpus} CPUs / cpu {requested['cpu']}")]
    if "memory" in requested and memory is not None:
        fits.append((int(Decimal(memory) / parse_quantity(requested["memory"])),
                     f"{memory // 2**20} MiB available / memory {requested['memory']}"))
    count, why = min(fits)
    return max(count, 1), why


def _available_memory() -> int | None:
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/meminfo", encoding="ascii") as handle:
            line = next(line for line in handle if line.startswith("MemAvailable:"))
        return int(line.split()[1]) * 1024
    return None


class LocalExecutor:
    """Runs attempts as local process groups; a thread per running attempt waits for it."""

    def __init__(self, spec: Spec, results: res.Results, workdir: Path, environ: Mapping[str, str]) -> None:
        self.spec = spec
        self.results = results
        self.workdir = workdir
        self.environ = dict(environ)
        self._ended: queue.Queue[Ended] = queue.Queue()
        self._running: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._stopping = False

    def free_slots(self) -> int:
        """Return a number that never limits: the SPEC's parallelism (or the host's capacity) does."""
        return UNLIMITED

    def _partial(self, attempt: Attempt) -> Path:
        return self.results.partial_dir / f"{attempt.task.name}.{attempt.number}.log"

    def start(self, attempt: Attempt) -> None:
        """Start the attempt's command in its own process group, output to a partial log file."""
        output = self._partial(attempt)
        started = time.time()
        with output.open("wb") as sink:
            try:
                child = subprocess.Popen(attempt.command.argv, cwd=self.workdir, stdin=subprocess.DEVNULL,
                                         stdout=sink, stderr=subprocess.STDOUT, process_group=0,
                                         env=task_environment(self.environ, self.spec, attempt))
            except OSError as exc:
                sink.write(f"ksi: cannot start {attempt.command.argv[0]}: {exc.strerror}\n".encode())
                self._ended.put(Ended(attempt, res.ERROR, 127, _node(), started, time.time(), output,
                                      f"cannot start {attempt.command.argv[0]}"))
                return
        with self._lock:
            self._running[attempt.task.name] = child
        threading.Thread(target=self._wait_for, args=(attempt, child, started), daemon=True,
                         name=f"task-{attempt.task.name}").start()

    def _wait_for(self, attempt: Attempt, child: subprocess.Popen[bytes], started: float) -> None:
        """Wait for one attempt (killing it at the timeout) and report its end."""
        reason, message = None, ""
        try:
            code = child.wait(timeout=self.spec.timeout)
        except subprocess.TimeoutExpired:
            _kill(child.pid, signal.SIGKILL)
            code = child.wait()
            reason, message = res.DEADLINE, f"ran longer than the timeout of {self.spec.timeout} s"
        with self._lock:
            self._running.pop(attempt.task.name, None)
            stopping = self._stopping
        _kill(child.pid, signal.SIGKILL)  # whatever the task left in its group ends with it
        exit_code = 128 - code if code < 0 else code
        if reason is None:
            reason = res.COMPLETED if code == 0 else res.STOPPED if stopping else res.ERROR
            if code < 0 and not stopping:
                message = f"killed by {signal.Signals(-code).name}"
        self._ended.put(Ended(attempt, reason, exit_code, _node(), started, time.time(), self._partial(attempt),
                              message))

    def wait(self, timeout: float) -> list[Ended]:
        """Return the attempts that ended, waiting up to ``timeout`` seconds for the first."""
        try:
            ended = [self._ended.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                ended.append(self._ended.get_nowait())
            except queue.Empty:
                return ended

    def forget(self, ended: Ended) -> None:
        """Nothing to do: the process is gone."""

    def collect_log(self, ended: Ended) -> tuple[bytes | Path | None, str]:
        """Return the attempt's output file (every local end comes with it already)."""
        return self._partial(ended.attempt), ""

    def discard(self, ended: Ended) -> None:
        """Nothing to discard: the output file was moved into place."""

    def interrupt(self, budget: float) -> list[Ended]:
        """TERM every running attempt's group, KILL it after half the budget; return them all as ended."""
        with self._lock:
            self._stopping = True
            children = list(self._running.values())
        for child in children:
            _kill(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + budget / 2
        for child in children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=max(deadline - time.monotonic(), 0))
            if child.poll() is None:
                _kill(child.pid, signal.SIGKILL)
        ended: list[Ended] = []
        deadline = time.monotonic() + budget / 2
        while len(ended) < len(children) and time.monotonic() < deadline:
            ended += self.wait(max(min(deadline - time.monotonic(), 0.25), 0))
        return ended


def _node() -> str:
    return os.uname().nodename.split(".")[0]


def _kill(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)

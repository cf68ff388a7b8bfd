"""The results directory: what ran, how each attempt ended, and each ended attempt's complete log.

Layout (all written atomically: temporary file, fsync, rename; readable offline by ``ksi tasks status``)::

    RESULTS/tasks.json              the task set of the latest run (name, index, parameters, command)
    RESULTS/summary.json            counts and failed tasks, written when a run ends
    RESULTS/tasks/<task>/log.txt    the complete log of the task's latest ended attempt
    RESULTS/tasks/<task>/log.N.txt  the logs of its earlier attempts (N = attempt number)
    RESULTS/tasks/<task>/result.json parameters, state, exit code, reason, node, start, end, attempts

A task's log is written before its result, so a result always has its log. A task whose result says
``succeeded`` is done: no later run starts it again unless told to (``--force``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ksi import log
from ksi.errors import EXIT_USAGE, KsiError, Problem, UsageError
from ksi.host import state

_log = log.get(__name__)
MANIFEST = "tasks.json"
SUMMARY = "summary.json"
TASKS = "tasks"
RESULT = "result.json"
LOG = "log.txt"
PARTIAL = ".partial"  # output of attempts still running (local executor); moved into place when they end
LOCK = ".lock"

SUCCEEDED, FAILED, INTERRUPTED, PENDING = "succeeded", "failed", "interrupted", "pending"
# How an attempt ended.
COMPLETED, ERROR, OOM_KILLED, DEADLINE = "Completed", "Error", "OOMKilled", "DeadlineExceeded"
EVICTED, NODE_LOST, STOPPED = "Evicted", "NodeLost", "Interrupted"
REASONS = (COMPLETED, ERROR, OOM_KILLED, DEADLINE, EVICTED, NODE_LOST, STOPPED)
LOSSES = (EVICTED, NODE_LOST)  # not the task's fault: retried up to `retries`
FAILURES = (ERROR, OOM_KILLED, DEADLINE)  # the task's fault: retried only with `retry_failed`


def iso(moment: float | None) -> str | None:
    """Return a UTC timestamp such as ``2025-01-02T03:04:05.678Z`` (None stays None)."""
    if moment is None:
        return None
    return dt.datetime.fromtimestamp(moment, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def state_of(reason: str) -> str:
    """Return the task state an attempt that ended with ``reason`` leaves: succeeded, interrupted or failed."""
    return SUCCEEDED if reason == COMPLETED else INTERRUPTED if reason == STOPPED else FAILED


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically (see ksi.host.state.write_atomic), mode 0644 like the other results."""
    state.write_atomic(path, data, mode=mode)


def _json(data: Any) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode()


@dataclass(frozen=True)
class AttemptRecord:
    """How one attempt ended, as result.json lists it."""

    attempt: int
    reason: str
    exit_code: int | None
    node: str | None
    start: float | None
    end: float
    log: str | None
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {"attempt": self.attempt, "reason": self.reason, "exit_code": self.exit_code, "node": self.node,
                "start": iso(self.start), "end": iso(self.end), "log": self.log, "message": self.message}


class Results:
    """One results directory; creates ``tasks/`` on first use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tasks_dir = path / TASKS
        self.partial_dir = path / PARTIAL

    def create(self) -> None:
        """Create the directory and its ``tasks/`` and ``.partial/`` folders (raise UsageError if impossible)."""
        try:
            self.tasks_dir.mkdir(parents=True, exist_ok=True)
            self.partial_dir.mkdir(exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create the results directory {self.path}: {exc.strerror}", step="results",
                             fix="give a writable directory with --results or the SPEC's results:") from None

    def clear_partial(self) -> None:
        """Remove the output of attempts that a killed earlier run left in ``.partial`` (call holding the lock)."""
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.partial_dir):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)

    def task_dir(self, name: str) -> Path:
        """Return ``tasks/<name>``."""
        return self.tasks_dir / name

    def read(self, name: str) -> dict[str, Any] | None:
        """Return the result of task ``name``, or None if it has none (or an unreadable one)."""
        try:
            data = json.loads((self.tasks_dir / name / RESULT).read_bytes())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def read_all(self, names: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        """Return the results of ``names`` (default: every task directory) by task name."""
        if names is None:
            try:
                names = sorted(entry.name for entry in os.scandir(self.tasks_dir) if entry.is_dir())
            except OSError:
                return {}
        found = {}
        for name in names:
            result = self.read(name)
            if result is not None:
                found[name] = result
        return found

    def write_manifest(self, experiment: str, spec_path: Path, tasks: Sequence[Mapping[str, Any]]) -> None:
        """Write tasks.json: the task set of this run, which ``status`` reports on."""
        write_atomic(self.path / MANIFEST, _json({"experiment": experiment, "spec": str(spec_path), "tasks": tasks}))

    def read_manifest(self) -> dict[str, Any] | None:
        """Return tasks.json, or None."""
        try:
            data = json.loads((self.path / MANIFEST).read_bytes())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_log(self, name: str, attempt: int, log: bytes | Path | None) -> str | None:
        """Make ``log`` the task's log.txt (the previous one becomes log.<its attempt>.txt); return its name.

        ``log`` is the attempt's complete output, or a file holding it (moved into place), or None when
        nothing could be fetched (no file is written then).
        """
        if log is None:
            return None
        directory = self.task_dir(name)
        directory.mkdir(exist_ok=True)
        current = directory / LOG
        previous = self.read(name)
        earlier = (previous or {}).get("attempts") or []
        if current.exists() and earlier and earlier[-1].get("log") == LOG:
            os.replace(current, directory / f"log.{earlier[-1]['attempt']}.txt")
        if isinstance(log, Path):
            os.replace(log, current)
        else:
            write_atomic(current, log)
        return LOG

    def write_result(self, name: str, result: Mapping[str, Any]) -> None:
        """Write the task's result.json atomically (after its log)."""
        directory = self.task_dir(name)
        directory.mkdir(exist_ok=True)
        write_atomic(directory / RESULT, _json(result))

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        """Write summary.json."""
        write_atomic(self.path / SUMMARY, _json(summary))


def result_record(experiment: str, name: str, index: int, params: Mapping[str, str], command: Sequence[str],
                  attempts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Return result.json's content: the task, and its state taken from the latest attempt."""
    last = attempts[-1]
    earlier_logs = {a["attempt"]: f"log.{a['attempt']}.txt" for a in attempts[:-1] if a.get("log")}
    listed = [dict(a, log=earlier_logs.get(a["attempt"], a.get("log"))) for a in attempts[:-1]] + [dict(last)]
    return {"task": name, "experiment": experiment, "index": index, "params": dict(params), "command": list(command),
            "state": state_of(last["reason"]), "reason": last["reason"], "exit_code": last["exit_code"],
            "node": last["node"], "start": last["start"], "end": last["end"], "log": last.get("log"),
            "message": last.get("message", ""), "attempts": listed}


def changed_params(path: Path, tasks: Iterable[tuple[str, Mapping[str, str]]],
                   results: Mapping[str, Mapping[str, Any]]) -> list[Problem]:
    """Return a problem for every task whose existing result has other parameters than the SPEC gives now."""
    problems = []
    for name, params in tasks:
        old = results.get(name)
        if old is not None and old.get("params") != dict(params):
            problems.append(Problem(
                EXIT_USAGE, f"{path}: task {name} has a result in this results directory with other parameters "
                f"({_params(old.get('params'))}) than the SPEC gives it now ({_params(params)})",
                "keep the SPEC's parameters, or use another `results:` directory (or --results) for the changed "
                "experiment", step="spec"))
    return problems


def _params(params: object) -> str:
    if not isinstance(params, dict) or not params:
        return "none"
    return ", ".join(f"{k}={v}" for k, v in params.items())


def results_path(text: str, base: Path) -> Path:
    """Return the results directory ``text`` (relative to ``base``, the shared directory) as an absolute path."""
    path = Path(text).expanduser()
    return path if path.is_absolute() else (base / path).absolute()


def refuse_missing(path: Path) -> None:
    """Raise UsageError unless ``path`` holds a results directory (for ``ksi tasks status``)."""
    if not (path / MANIFEST).is_file():
        raise UsageError(f"{path} is not a results directory of ksi tasks (it has no {MANIFEST})", step="status",
                         fix="give the directory named by the SPEC's results: (default ksi-results/<name>)")


class ResultsLock:
    """Keeps two runs from using one results directory at once (flock; best effort on shared filesystems)."""

    def __init__(self, path: Path) -> None:
        from filelock import FileLock

        self.path = path
        self._lock = FileLock(path / LOCK, timeout=0)
        self._held = False

    def __enter__(self) -> ResultsLock:
        from filelock import Timeout

        try:
            self._lock.acquire()
            self._held = True
        except Timeout:
            raise KsiError(f"another `ksi tasks run` uses the results directory {self.path} now", step="results",
                           fix="wait for it to end, or give this run its own --results") from None
        except (OSError, NotImplementedError) as exc:  # a filesystem without locks: go on, as the README says
            _log.warning("results: cannot lock %s (%s); make sure no other run uses it", self.path, exc)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._held:
            self._lock.release()

"""The policy of a task run, whatever executes the attempts: what runs, how many at once, what is retried.

An executor (:mod:`ksi.tasks.local` or :mod:`ksi.tasks.cluster`) starts attempts and reports how they
ended. This module decides at once whether the task gets another attempt (after a loss, such as a lost
node or an eviction, up to ``retries`` times; after a failure only with ``retry_failed``) and gives the slot
to the next attempt; recorder threads then collect the ended attempt's complete log, write it, write its
result, and only then let the executor discard it (delete the Job). A stop signal interrupts every running
attempt; those are recorded as ``Interrupted``, to run again next time.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ksi import log
from ksi.errors import KsiError
from ksi.tasks import results as res
from ksi.tasks.expand import Command, Renderer, Task
from ksi.tasks.progress import Progress
from ksi.tasks.spec import Spec

_log = log.get(__name__)
_TICK = 0.25  # seconds between checks for a stop signal while waiting
RECORDERS = 8  # threads writing logs and results (and fetching logs) while the next attempts run


@dataclass(frozen=True)
class Attempt:
    """One attempt of a task: its number (counted over every run of the results directory) and command."""

    task: Task
    number: int
    command: Command


@dataclass(frozen=True)
class Ended:
    """How an attempt ended; ``log`` is its complete output (bytes or a file), or None: ask the executor."""

    attempt: Attempt
    reason: str
    exit_code: int | None
    node: str | None
    start: float | None
    end: float
    log: bytes | Path | None
    message: str = ""
    ref: str | None = None  # what ran the attempt, in the executor's terms (the pod)


def task_environment(base: Mapping[str, str], spec: Spec, attempt: Attempt) -> dict[str, str]:
    """Return the variables ksi sets in every task, plus the SPEC's ``env`` over ``base``."""
    env = dict(base)
    env.update(attempt.command.env)
    env.update({"KSI_EXPERIMENT": spec.name, "KSI_TASK": attempt.task.name,
                "KSI_TASK_INDEX": str(attempt.task.index), "KSI_TASK_ATTEMPT": str(attempt.number)})
    return env


class Executor(Protocol):
    """Starts attempts and reports their ends; implemented for the cluster (Jobs) and for local processes."""

    def free_slots(self) -> int:
        """Return how many more attempts may start now (node capacity; a large number if unlimited)."""

    def start(self, attempt: Attempt) -> None:
        """Start ``attempt`` without waiting for it."""

    def wait(self, timeout: float) -> list[Ended]:
        """Return the attempts that ended (logs fetched), waiting up to ``timeout`` seconds for the first."""

    def forget(self, ended: Ended) -> None:
        """Give the ended attempt's slot back (the runner's thread, at once)."""

    def collect_log(self, ended: Ended) -> tuple[bytes | Path | None, str]:
        """Return the complete log of an ended attempt, or None and why not (a recorder thread)."""

    def discard(self, ended: Ended) -> None:
        """Remove what is left of an attempt once its log and result are written (a recorder thread)."""

    def interrupt(self, budget: float) -> list[Ended]:
        """Stop every running attempt within ``budget`` seconds; return them as ended ``Interrupted``."""


@dataclass
class Selection:
    """Which tasks of the SPEC this run starts, and which it leaves as they are."""

    to_run: list[Task]
    done: int = 0  # succeeded before
    failed_kept: list[str] = field(default_factory=list)  # failed before, not rerun (no --rerun-failed)


def select(tasks: Sequence[Task], previous: Mapping[str, Mapping[str, Any]], *, rerun_failed: bool,
           force: bool) -> Selection:
    """Return what to run: unfinished tasks; also failed ones with ``rerun_failed``; all with ``force``."""
    chosen = Selection([])
    for task in tasks:
        state = (previous.get(task.name) or {}).get("state")
        if force or state in (None, res.INTERRUPTED) or (state == res.FAILED and rerun_failed):
            chosen.to_run.append(task)
        elif state == res.SUCCEEDED:
            chosen.done += 1
        else:
            chosen.failed_kept.append(task.name)
    return chosen


@dataclass
class Outcome:
    """What a run left: the state of every task of the SPEC, and the signal that stopped it, if any."""

    states: dict[str, str]
    failed: list[dict[str, Any]]
    stopped_by: int | None = None

    @property
    def all_succeeded(self) -> bool:
        """True when every task of the SPEC has succeeded."""
        return all(state == res.SUCCEEDED for state in self.states.values())


class Runner:
    """Runs the selected tasks through an executor, recording every ended attempt."""

    def __init__(self, spec: Spec, tasks: Sequence[Task], renderer: Renderer, executor: Executor,
                 results: res.Results, previous: Mapping[str, Mapping[str, Any]], progress: Progress,
                 parallelism: int, stop: Callable[[], int | None], stop_budget: float) -> None:
        self.spec = spec
        self.tasks = list(tasks)
        self.renderer = renderer
        self.executor = executor
        self.results = results
        self.progress = progress
        self.parallelism = parallelism
        self.stop = stop
        self.stop_budget = stop_budget
        # Each task's attempts, written by one recorder thread at a time: an attempt of a task starts only
        # after the executor discarded the one before, which happens after its result was written.
        self._attempts: dict[str, list[dict[str, Any]]] = {
            name: list(result.get("attempts") or []) for name, result in previous.items()}
        self._numbers = {name: len(history) for name, history in self._attempts.items()}
        self._states = {t.name: str((previous.get(t.name) or {}).get("state") or res.PENDING) for t in self.tasks}
        self._tries: collections.Counter[str] = collections.Counter()  # attempts in this run
        self._running: dict[str, Attempt] = {}
        self._recorder = concurrent.futures.ThreadPoolExecutor(RECORDERS, thread_name_prefix="tasks-record")
        self._records: list[concurrent.futures.Future[None]] = []
        self._recording: dict[str, concurrent.futures.Future[None]] = {}  # each task's latest record

    def _recorded(self, task: Task) -> bool:
        """True unless the task's last attempt is still being recorded (a new one must not overtake it)."""
        record = self._recording.get(task.name)
        return record is None or record.done()

    def _attempt(self, task: Task) -> Attempt:
        self._numbers[task.name] = self._numbers.get(task.name, 0) + 1
        return Attempt(task, self._numbers[task.name], self.renderer.command(task))

    def run(self, selected: Sequence[Task]) -> Outcome:
        """Run ``selected`` to the end (or until a stop signal); return the outcome for every task."""
        pending = collections.deque(selected)
        for task in selected:
            self._states[task.name] = res.PENDING
        self.progress.begin(self._counts(len(pending)))
        stopped_by = None
        while pending or self._running:
            stopped_by = self.stop()
            if stopped_by is not None:
                break
            room = min(self.parallelism - len(self._running), self.executor.free_slots())
            later: list[Task] = []
            while pending and room > 0:
                task = pending.popleft()
                if not self._recorded(task):  # its last attempt is still being written: start it after that
                    later.append(task)
                    continue
                attempt = self._attempt(task)
                self._running[task.name] = attempt
                self._tries[task.name] += 1
                self.executor.start(attempt)
                room -= 1
            pending.extendleft(reversed(later))
            for ended in self.executor.wait(_TICK):
                if self._ended(ended):
                    pending.appendleft(ended.attempt.task)
            if self.progress.due():
                self.progress.update(self._counts(len(pending)))
        until = None
        if stopped_by is not None:
            until = time.monotonic() + self.stop_budget
            _log.info("tasks: stopping %d running attempt(s)", len(self._running))
            for ended in self.executor.interrupt(self.stop_budget / 2):
                self._ended(ended)
            for attempt in list(self._running.values()):  # the executor could not confirm these in time
                self._ended(Ended(attempt, res.STOPPED, None, None, None, time.time(), None,
                                  "stopped before its end could be confirmed"))
        self._finish_records(until)
        self.progress.finish(self._counts(len(pending)))
        return Outcome(dict(self._states), self._failed(), stopped_by)

    def _ended(self, ended: Ended) -> bool:
        """Free the attempt's slot, hand it to a recorder; return True when the task gets another attempt."""
        if ended.reason in (res.STOPPED, res.DEADLINE) and ended.exit_code is not None:
            ended = dataclasses.replace(ended, exit_code=None)  # killed: the task did not choose that status
        attempt = ended.attempt
        task = attempt.task
        self._running.pop(task.name, None)
        self.executor.forget(ended)
        record = self._recorder.submit(self._record, ended)
        self._records.append(record)
        self._recording[task.name] = record
        extra = self._tries[task.name] - 1
        retry = extra < self.spec.retries and (
            ended.reason in res.LOSSES or (ended.reason in res.FAILURES and self.spec.retry_failed))
        self._states[task.name] = res.PENDING if retry else res.state_of(ended.reason)
        where = f" on {ended.node}" if ended.node else ""
        if retry:
            _log.info("task %s: attempt %d %s%s; retrying (%d of %d retries left)", task.name, attempt.number,
                      _what(ended), where, self.spec.retries - extra - 1, self.spec.retries)
        elif self._states[task.name] == res.FAILED:
            self.progress.note(f"task {task.name} failed: {_what(ended)}{where}; log: "
                               f"{self.results.task_dir(task.name) / res.LOG}")
        return retry

    def _record(self, ended: Ended) -> None:
        """Collect the attempt's log, write it, then its result, then let the executor discard the attempt."""
        attempt = ended.attempt
        task = attempt.task
        log, problem = (ended.log, "") if ended.log is not None else self.executor.collect_log(ended)
        log_name = self.results.write_log(task.name, attempt.number, log)
        message = "; ".join(m for m in (ended.message, problem) if m)
        history = self._attempts.setdefault(task.name, [])
        history.append(res.AttemptRecord(attempt.number, ended.reason, ended.exit_code, ended.node, ended.start,
                                         ended.end, log_name, message).as_dict())
        self.results.write_result(task.name, res.result_record(
            self.spec.name, task.name, task.index, task.param_dict, attempt.command.argv, history))
        self.executor.discard(ended)

    def _finish_records(self, until: float | None) -> None:
        """Wait for the recorders (until ``until`` when stopping); raise if an attempt could not be recorded."""
        timeout = None if until is None else max(until - time.monotonic(), 0)
        done, late = concurrent.futures.wait(self._records, timeout=timeout)
        self._recorder.shutdown(wait=False, cancel_futures=True)
        if late:
            _log.warning("tasks: %d attempt(s) not recorded within the stop budget; they run again next time",
                         len(late))
        errors = [f.exception() for f in done if f.exception() is not None]
        if errors:
            raise KsiError(f"could not record {len(errors)} attempt(s) in {self.results.path}: {errors[0]}",
                           step="results", fix="check the results directory's filesystem (space, permissions)")

    def _counts(self, pending: int) -> dict[str, int]:
        counts = collections.Counter(self._states.values())
        return {"total": len(self.tasks), "done": counts[res.SUCCEEDED], "failed": counts[res.FAILED],
                "running": len(self._running), "pending": pending,
                "interrupted": counts[res.INTERRUPTED]}

    def _failed(self) -> list[dict[str, Any]]:
        failed = []
        for task in self.tasks:
            if self._states[task.name] != res.FAILED:
                continue
            last = (self._attempts.get(task.name) or [{}])[-1]
            failed.append({"task": task.name, "reason": last.get("reason"), "exit_code": last.get("exit_code"),
                           "node": last.get("node"), "attempts": len(self._attempts.get(task.name, ())),
                           "log": str(self.results.task_dir(task.name) / res.LOG)})
        return failed


def _what(ended: Ended) -> str:
    """Return ``Error (exit 3)``, ``OOMKilled``, ``NodeLost: node n2 went away``."""
    text = ended.reason
    if ended.exit_code is not None and ended.reason != res.COMPLETED:
        text += f" (exit {ended.exit_code})"
    if ended.message:
        text += f": {ended.message}"
    return text

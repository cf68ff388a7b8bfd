"""What every run of ksi shares once its checks passed, one node or many: phases, teardown, run.json.

A run is a :class:`Lifecycle` used as a context manager: the body creates things (registering each undo on
``teardown`` first) and sets ``status``; however the body ends (success, failure, stop signal), leaving
the block names the interrupted phase, runs the teardown (within what a stop signal's budget leaves, see
:mod:`ksi.cluster.stopping`), logs its outcome and finalises run.json.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from ksi import log
from ksi.cluster import access, rundir, workload
from ksi.cluster.node import NodeCluster
from ksi.cluster.stopping import Stopping
from ksi.cluster.teardown import Teardown
from ksi.errors import Interrupted, KsiError
from ksi.host.signals import SignalGuard
from ksi.host.slurm import SlurmContext
from ksi.tools import proc
from ksi.tools.squeue import Squeue

_log = log.get(__name__)


@dataclass(frozen=True)
class RunOptions:
    """What the user asked for on the command line."""

    workload: str
    args: tuple[str, ...] = ()
    shared_dir: str = "."
    port: str | None = None
    overrides: Mapping[str, str] = field(default_factory=dict)


class Phases:
    """Times the phases of a run and keeps the durations for run.json; knows the phase in progress."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.current = "checks"

    @contextlib.contextmanager
    def phase(self, name: str, record: rundir.RunRecord | None = None, state: str | None = None,
              **changes: Any) -> Iterator[None]:
        """Time the block as phase ``name``; with ``record``, first write ``state`` (default: the name) to run.json.

        The phase is current before run.json says so: a stop signal that arrives once run.json shows the
        state is always reported as stopping that phase.
        """
        self.current = name
        if record is not None:
            record.save(state=state or name, phases=self.seconds, **changes)
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = round(time.monotonic() - started, 3)


class Lifecycle:
    """One node's run from the end of its checks to the end of its teardown (a context manager).

    ``record`` is run.json once the run directory exists; ``status`` the workload's exit status once
    known; ``on_failure`` is called with the error before teardown starts (a multi-node run tells the other
    nodes through the abort file).
    """

    def __init__(self, guard: SignalGuard, phases: Phases, stopping: Stopping) -> None:
        self.phases = phases
        self.teardown = Teardown()
        self.stopping = stopping  # the stop budget: bounds the teardown after a stop signal
        self.teardown.deadline = stopping.teardown_deadline
        self.record: rundir.RunRecord | None = None
        self.status: int | None = None
        self.on_failure: Callable[[BaseException], None] | None = None
        self._guard = guard

    def __enter__(self) -> Lifecycle:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        """Name the phase a stop signal interrupted, tell others, kill unfinished commands, tear down."""
        if error is not None:
            if isinstance(error, Interrupted):
                error.step = self.phases.current
                if self.record is not None:
                    self.record.stop_signal = signame(error.signum)
            if self.on_failure is not None:
                self.on_failure(error)
        self._guard.disarm()
        proc.terminate_all()
        finish(self.teardown, self.phases, self.record, self.status, error)

    def guardian(self) -> workload.Guardian:
        """Return the workload's guardian, to spawn while ksi waits for something else; the teardown ends it unused."""
        guardian = workload.Guardian()
        self.teardown.push("end the workload's unused guardian", guardian.discard)
        return guardian

    def workload_ended(self, status: int, stopped_by: int | None) -> None:
        """Note the workload's exit status (and the stop signal forwarded to it) for run.json."""
        _log.info("workload: exited with status %d after %.2f s", status, self.phases.seconds["workload"])
        self.status = status
        if stopped_by is not None and self.record is not None:
            self.record.stop_signal = signame(stopped_by)


def finish(teardown: Teardown, phases: Phases, record: rundir.RunRecord | None, status: int | None,
           error: BaseException | None) -> None:
    """Run the teardown, log its outcome, finalise run.json and close the log file.

    Raises KsiError when the teardown failed after an otherwise successful run: a cluster that may have
    outlived the run must not look like success.
    """
    with phases.phase("teardown", record):
        ok = teardown.run()
    if ok:
        _log.info("teardown: done in %.2f s", phases.seconds["teardown"])
    else:
        _log.error("teardown: incomplete after %.2f s: %s", phases.seconds["teardown"], "; ".join(teardown.failures))
    if record is not None:
        message = (error.one_line() if isinstance(error, KsiError) else repr(error) if error is not None
                   else None if ok else "teardown: " + "; ".join(teardown.failures))
        record.save(state="done" if ok and error is None else "failed", phases=phases.seconds,
                    exit_status=status, ended=time.time(), error=message)
    if error is not None:
        _log.debug("run ended with %r", error)
    log.detach_file()
    if not ok and error is None and status == 0:
        raise KsiError("teardown did not complete: " + "; ".join(teardown.failures), step="teardown",
                       fix="run `ksi cleanup` on this node")


def job_end_lookup(slurm: SlurmContext, environ: Mapping[str, str]) -> concurrent.futures.Future[int | None]:
    """Find out in the background when the job's time limit hits (for the token's lifetime).

    SLURM_JOB_END_TIME exists from Slurm 23.02; before that, squeue knows.
    """
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="job-end")
    if slurm.end_time is not None or slurm.job_id is None:
        future = pool.submit(lambda: slurm.end_time)
    else:
        future = pool.submit(Squeue(environ).end_time, slurm.job_id)
    pool.shutdown(wait=False)
    return future


def workload_environment(environ: Mapping[str, str], cluster: NodeCluster, api: str, port: int,
                         grant: access.Access) -> dict[str, str]:
    """Return the workload's environment: the caller's plus the cluster's variables."""
    env = dict(environ)
    env.update({
        "K8S_CLUSTER_NAME": cluster.name,
        "K8S_CLUSTER_API": api,
        "K8S_CLUSTER_API_TOKEN": grant.token,
        "K8S_PORT": str(port),
        "KUBECONFIG": str(cluster.kubeconfig),
        "KSI_RUN_DIR": str(cluster.run_dir),
    })
    return env


def signame(signum: int) -> str:
    """Return the name of signal ``signum`` (SIGTERM)."""
    return signal.Signals(signum).name

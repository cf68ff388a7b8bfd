"""How a node spends Slurm's stop budget (:mod:`ksi.host.stopbudget`): the workload's grace, then the teardown.

The budget is learned once, in the background, when the run starts (``scontrol show config`` and the job's
batch script are a round trip each to the controller: the start must not wait for them), and applied at the
first stop signal: the workload gets what grace the teardown leaves, and the teardown is bounded by the
budget's end. Outside Slurm there is no budget: KSI_GRACE_PERIOD and KSI_TEARDOWN_TIMEOUT apply as they are.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Mapping

from ksi import log
from ksi.errors import KsiError
from ksi.host import stopbudget
from ksi.host.signals import SignalGuard
from ksi.host.slurm import SlurmContext
from ksi.host.stopbudget import StopBudget, StopPlan
from ksi.settings import Settings
from ksi.tools.scontrol import Scontrol
from ksi.tools.squeue import Squeue

_log = log.get(__name__)
# Both waits are spent out of the budget they serve (KillWait may be 5 s): short, with a safe answer after.
LEARN_WAIT = 0.5  # seconds a stop signal waits for a lookup still under way, then reads slurm.conf instead
STATE_TIMEOUT = 1.5  # seconds for squeue's answer on whether a signal is the --signal warning (else: KillWait)
# squeue's states of a job that is not ending: SIGNALING while slurmctld delivers a signal (the --signal
# warning starts with a SIGCONT and shows it; a scancel shows COMPLETING or CANCELLED instead).
STILL_RUNNING = frozenset({"RUNNING", "SIGNALING"})


def site_kill_wait(environ: Mapping[str, str], *, timeout: float = 10.0) -> tuple[int | None, str]:
    """Return Slurm's KillWait here and where it was read, or None and why when no Slurm configuration answers.

    Runs ``scontrol show config`` (what the controller runs with, also in configless set-ups), else reads the
    slurm.conf of SLURM_CONF or the default path; a slurm.conf that does not set KillWait means Slurm's
    default.
    """
    try:
        value = stopbudget.kill_wait_of_config(stopbudget.parse_show_config(
            Scontrol(environ).show_config(timeout=timeout)))
        if value is not None:
            return value, "scontrol show config"
    except KsiError as exc:
        _log.debug("stop budget: scontrol show config: %s", exc.one_line())
    value, path = stopbudget.slurm_conf_kill_wait(environ)
    if value is not None:
        return value, path
    if path:
        return stopbudget.SLURM_DEFAULT_KILL_WAIT, f"Slurm's default, {path} does not set it"
    return None, "no answer from scontrol show config and no slurm.conf"


def kill_wait(environ: Mapping[str, str], *, timeout: float = 10.0) -> tuple[int, str]:
    """Return KillWait and where it was read (see :func:`site_kill_wait`); Slurm's default when nothing says."""
    value, source = site_kill_wait(environ, timeout=timeout)
    return (value, source) if value is not None else (stopbudget.SLURM_DEFAULT_KILL_WAIT, f"Slurm's default; {source}")


def from_slurm_conf(environ: Mapping[str, str]) -> tuple[int, str]:
    """Return KillWait from slurm.conf only (no controller round trip), else Slurm's default."""
    value, path = stopbudget.slurm_conf_kill_wait(environ)
    default = stopbudget.SLURM_DEFAULT_KILL_WAIT
    return (value, path) if value is not None else (default, f"Slurm's default; {path or 'no slurm.conf'}")


def learn(environ: Mapping[str, str], job_id: str | None) -> StopBudget:
    """Return the job's stop budget: KillWait, and the --signal of its batch script (``#SBATCH --signal``).

    A --signal given only on sbatch's command line is not kept anywhere a job can read it; a job started by
    srun or salloc has no batch script. Then only KillWait counts.
    """
    seconds, source = kill_wait(environ)
    end_signal = None
    if job_id is not None:
        try:
            end_signal = stopbudget.batch_script_signal(Scontrol(environ).batch_script(job_id))
        except KsiError as exc:
            _log.debug("stop budget: no batch script: %s", exc.one_line())
    _log.debug("stop budget: KillWait %d s (%s), --signal %s", seconds, source,
               end_signal.describe() if end_signal else "unknown")
    return StopBudget(seconds, source, end_signal)


class Stopping:
    """The stop budget of a node's run: learned in the background, turned into a plan at the first stop signal.

    ``grace`` is what the workload runner asks once it has forwarded a stop signal; ``teardown_deadline`` is
    what the teardown is bounded by. A leader plans with the workload's grace, a follower (or a stop outside
    the workload) without: it only tears down.
    """

    def __init__(self, settings: Settings, guard: SignalGuard, environ: Mapping[str, str], job_id: str | None,
                 learning: concurrent.futures.Future[StopBudget] | None) -> None:
        self._settings = settings
        self._guard = guard
        self._environ = dict(environ)
        self._job_id = job_id
        self._learning = learning
        self._lock = threading.Lock()
        self._planned = False
        self._plan: StopPlan | None = None

    @classmethod
    def learn(cls, slurm: SlurmContext, settings: Settings, environ: Mapping[str, str],
              guard: SignalGuard) -> Stopping:
        """Start learning the budget in a background thread (only inside a Slurm job) and return at once."""
        learning = None
        if slurm.in_job:
            pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="stop-budget")
            learning = pool.submit(learn, dict(environ), slurm.job_id)
            pool.shutdown(wait=False)
        return cls(settings, guard, environ, slurm.job_id, learning)

    @property
    def learned(self) -> bool:
        """True once the background lookup has finished (or when there is none: outside Slurm)."""
        return self._learning is None or self._learning.done()

    def grace(self, signum: int) -> float:
        """Return the seconds the workload may still run after stop signal ``signum`` (already forwarded to it)."""
        plan = self._planned_for(signum, workload=True)
        wanted = self._settings.grace_period
        if plan is None or self._guard.first_at is None or plan.grace >= wanted:
            return wanted  # the budget has room for all of it (and its margin for the moment it took to get here)
        return max(self._guard.first_at + plan.grace - time.monotonic(), 0.0)  # shortened: it counts from the signal

    def teardown_deadline(self) -> float | None:
        """Return the time.monotonic() by which the teardown must end, or None (no stop signal, no budget)."""
        signum, at = self._guard.first, self._guard.first_at
        if signum is None or at is None:
            return None
        plan = self._planned_for(signum, workload=False)
        return None if plan is None else at + plan.teardown_by

    def _planned_for(self, signum: int, *, workload: bool) -> StopPlan | None:
        """Make the plan for the first stop signal once (saying what it cuts) and return it; None outside Slurm."""
        with self._lock:
            if not self._planned:
                self._planned = True
                self._plan = self._make(signum, workload=workload)
            return self._plan

    def _make(self, signum: int, *, workload: bool) -> StopPlan | None:
        if self._learning is None:
            return None
        try:
            budget = self._learning.result(timeout=LEARN_WAIT)
        except Exception:  # still under way, or failed: the lookup must never cost the teardown
            _log.debug("stop budget: no answer from the lookup; reading slurm.conf", exc_info=True)
            budget = StopBudget(*from_slurm_conf(self._environ))
        arrived = self._guard.first_at if self._guard.first_at is not None else time.monotonic()
        signalled = time.time() - (time.monotonic() - arrived)
        state: tuple[str, int | None] | None = None
        if budget.end_signal is not None and signum == budget.end_signal.signum and self._job_id is not None:
            state = Squeue(self._environ).state_and_end(self._job_id, timeout=STATE_TIMEOUT)
        seconds, why = budget.at(signum, signalled, state[1] if state else None,
                                 state is not None and state[0] in STILL_RUNNING)
        settings = self._settings
        need, source = stopbudget.teardown_need(stopbudget.delete_times(settings.state_dir),
                                                settings.teardown_timeout)
        wanted = settings.grace_period if workload else 0.0
        plan = stopbudget.plan(seconds, why, wanted, need, source)
        if workload and plan.grace < wanted:
            _log.warning("stop: %s", plan.explain(wanted))
        elif not plan.fits:
            _log.warning("stop: %s", plan.explain(None))
        else:
            _log.debug("stop: %s", plan.explain(wanted if workload else None))
        return plan

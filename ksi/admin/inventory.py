"""The ksi clusters of the calling user on this node, and whether each one's job or process is still alive.

Sources: the node-local records (:mod:`ksi.host.registry`, written before ``kind create`` starts and removed only
after a verified delete), ``kind get clusters``, and the container runtime's listing by kind's cluster label
(which still works when kind's own bookkeeping is broken). Only names ksi generates are ever considered.

States:

- ``running``: the ksi process that created the cluster is alive on this host, or its Slurm job is not
  finished (pending, running, suspended, completing, ...).
- ``stale``: that process is gone and Slurm reports the job finished or no longer knows it. When squeue
  cannot answer at all (no Slurm on this host, controller unreachable), the process identity alone decides:
  a cluster whose ksi is dead has nobody left to delete it.
- ``unknown``: containers of a ksi-named cluster without a readable record of this node. ``ksi cleanup
  --stale`` treats such a cluster as stale only when nothing claims it: no live process of the user runs
  ``kind`` on it or has it as K8S_CLUSTER_NAME (a workload), and the job its name carries (ksi-<job>-...),
  if any, is not alive in Slurm. Records cannot be missing for a cluster ksi is creating or deleting right
  now, because the record is written before ``kind create`` and removed after the verified delete.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ksi import log
from ksi.cluster import names
from ksi.errors import CommandFailed, Interrupted, KsiError, PrerequisiteError
from ksi.host import signals
from ksi.host.ports import PortReservations
from ksi.host.registry import ClusterRecord, Registry
from ksi.host.state import check_private_dir
from ksi.settings import Settings
from ksi.tools.kind import Kind
from ksi.tools.runtime import runtime_for
from ksi.tools.squeue import Squeue

_log = log.get(__name__)

RUNNING = "running"
STALE = "stale"
UNKNOWN = "unknown"

# Record status of a cluster, as far as this node's registry knows it.
RECORD_OK = "ok"
RECORD_DAMAGED = "damaged"
RECORD_MISSING = "missing"
RECORD_OTHER_NODE = "other-node"

# Slurm job states after which none of the job's processes run any more (squeue %T). Any other state,
# including ones added by later Slurm versions, counts as alive: a cluster is never deleted on a guess.
FINISHED_STATES = frozenset({
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
    "TIMEOUT", "REVOKED",
})
_LIST_TIMEOUT = 30.0


@dataclass(frozen=True)
class JobAnswer:
    """What Slurm said about a job: alive (True/False), or None when squeue could not answer."""

    alive: bool | None
    state: str | None = None
    error: str = ""

    def describe(self, job_id: str) -> str:
        """Return the answer in words, e.g. ``job 42 is COMPLETED``."""
        if self.alive is None:
            return f"Slurm did not answer about job {job_id} ({self.error})"
        return f"job {job_id} is {self.state}" if self.state else f"job {job_id} is unknown to Slurm"


class JobStates:
    """Asks squeue about each job at most once; after one failure of squeue itself it stops asking."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._squeue = Squeue(env)
        self._answers: dict[str, JobAnswer] = {}
        self._broken = ""

    def query(self, job_id: str) -> JobAnswer:
        """Return what Slurm says about ``job_id`` (runs squeue the first time)."""
        if job_id not in self._answers:
            if self._broken:
                self._answers[job_id] = JobAnswer(None, error=self._broken)
            else:
                try:
                    state = self._squeue.job_state(job_id)
                    alive = state is not None and state.upper() not in FINISHED_STATES
                    self._answers[job_id] = JobAnswer(alive, state)
                except Interrupted:
                    raise
                except KsiError as exc:
                    self._broken = _short(exc)
                    _log.debug("squeue cannot answer; using process identity only: %s", exc.message)
                    self._answers[job_id] = JobAnswer(None, error=self._broken)
        return self._answers[job_id]


def _short(exc: KsiError) -> str:
    """Return the gist of a failed command: the last line it printed, or the message, cut to 100 characters."""
    text = exc.message
    if isinstance(exc, CommandFailed):
        lines = [line.strip() for line in (exc.stderr or exc.stdout).splitlines() if line.strip()]
        text = lines[-1] if lines else text
    return text if len(text) <= 100 else text[:97] + "..."


@dataclass(frozen=True)
class Cluster:
    """One ksi cluster on this node as ``ksi list`` shows it."""

    name: str
    state: str
    reason: str
    reclaimable: bool  # `ksi cleanup --stale` may delete it
    record: str  # RECORD_OK, RECORD_DAMAGED, RECORD_MISSING or RECORD_OTHER_NODE
    job_id: str | None = None
    pid: int | None = None
    run_dir: str | None = None
    kubeconfig: str | None = None
    ports: tuple[int, ...] = ()
    created: float | None = None
    containers: int = 0

    @property
    def owner(self) -> str:
        """The job or the standalone process the cluster belongs to, in words (``job 42``, ``pid 7``)."""
        if self.job_id:
            return f"job {self.job_id}"
        return f"pid {self.pid}" if self.pid else "-"

    def as_dict(self, now: float) -> dict[str, object]:
        """Return the cluster as a JSON-ready mapping (``ksi list --json``)."""
        return {
            "name": self.name, "job_id": self.job_id, "pid": self.pid, "state": self.state, "reason": self.reason,
            "reclaimable": self.reclaimable, "record": self.record, "run_dir": self.run_dir,
            "port": self.ports[0] if self.ports else None, "ports": list(self.ports), "containers": self.containers,
            "created": self.created, "age_seconds": round(now - self.created) if self.created else None,
        }


@dataclass(frozen=True)
class Inventory:
    """Every ksi cluster of this user on this node, and what could not be looked at."""

    clusters: tuple[Cluster, ...]
    warnings: tuple[str, ...] = ()


def job_of_name(name: str) -> str | None:
    """Return the Slurm job id a cluster name carries (``ksi-42-abcdef`` -> ``42``), None for ``ksi-local-...``."""
    token = name.removeprefix(names.PREFIX).rsplit("-", 1)[0]
    return token if token.isdigit() else None


def claimant(name: str, proc_root: Path = Path("/proc")) -> int | None:
    """Return a live process of this user that uses cluster ``name``, or None.

    A process claims the cluster when it is a ``kind`` command naming it or has ``K8S_CLUSTER_NAME=name`` in
    its environment (a workload of a running ``ksi run``).
    """
    uid = os.getuid()
    wanted_env = f"K8S_CLUSTER_NAME={name}".encode()
    for entry in proc_root.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if entry.stat().st_uid != uid:
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if argv and os.path.basename(argv[0]) == b"kind" and name.encode() in argv:
                return int(entry.name)
            if wanted_env in (entry / "environ").read_bytes().split(b"\0"):
                return int(entry.name)
    return None


def _words(exc: KsiError) -> str:
    """Return an error's message and fix without its step."""
    return exc.message + (f"; fix: {exc.fix}" if exc.fix else "")


def _record_liveness(  # noqa: PLR0911 - one return per finding
        record: ClusterRecord, jobs: JobStates | None) -> tuple[str, str, bool]:
    """Return (state, reason, reclaimable) of a cluster that has a readable record of this node.

    A dead ksi may have left its workload or its ``kind create`` running (they have process groups of
    their own): as long as such a process uses the cluster, it is not reclaimable. Nor is the cluster of a
    job Slurm cannot tell about: it may still be running.
    """
    if record.owner.alive():
        return RUNNING, f"ksi process {record.pid} is alive", False
    gone = f"ksi process {record.pid} is gone"
    user = claimant(record.name)
    if user is not None:
        return RUNNING, f"{gone}; process {user} still uses it", False
    if not record.job_id:
        return STALE, gone, True
    if jobs is None:
        return STALE, gone, False  # not asked: the caller selects by job, not by liveness
    answer = jobs.query(record.job_id)
    if answer.alive:
        return RUNNING, f"{answer.describe(record.job_id)}; {gone}", False
    if answer.alive is None:
        return UNKNOWN, f"{gone}; {answer.describe(record.job_id)}; kept until Slurm answers", False
    return STALE, f"{answer.describe(record.job_id)}; {gone}", True


def _unrecorded_liveness(name: str, record: str, jobs: JobStates | None) -> tuple[str, bool]:
    """Return (reason, reclaimable) of a cluster without a readable record of this node."""
    why = {RECORD_DAMAGED: "record damaged", RECORD_OTHER_NODE: "record names another node"}.get(record, "no record")
    if record == RECORD_OTHER_NODE:
        return f"{why}; left alone", False
    user = claimant(name)
    if user is not None:
        return f"{why}; process {user} uses it", False
    job = job_of_name(name)
    if job is not None and jobs is not None:
        answer = jobs.query(job)
        if answer.alive is None:
            return f"{why}; {answer.describe(job)}; kept until Slurm answers", False
        return f"{why}; {answer.describe(job)}", not answer.alive
    return f"{why}; no live ksi process claims it", jobs is not None


def take(settings: Settings, env: Mapping[str, str], here: frozenset[str], jobs: JobStates | None) -> Inventory:
    """Look at records, ``kind get clusters`` and the runtime's containers; return this node's ksi clusters.

    ``env`` is what kind and the runtime run with; ``here`` the names of this node; ``jobs`` answers about
    Slurm jobs (None: do not ask Slurm, and mark nothing reclaimable that depends on it). Raises
    PrerequisiteError when the state directory is not safely ours. A tool that cannot list becomes a warning.
    """
    warnings: list[str] = []
    registry = Registry(settings.state_dir)
    held: dict[int, str] = {}
    if settings.state_dir.exists() or settings.state_dir.is_symlink():
        problem = check_private_dir(settings.state_dir, create=False)
        if problem is not None:
            raise PrerequisiteError(problem.message, fix=problem.fix, step="state")
        held = PortReservations(settings.state_dir).held()
    recorded = registry.names()

    # The two listings are independent tool calls: run them side by side (ksi run waits for this).
    with concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="inventory") as pool:
        listed = pool.submit(runtime_for(settings.provider, env).node_containers, timeout=_LIST_TIMEOUT)
        kind_listed = pool.submit(Kind(env).clusters, timeout=_LIST_TIMEOUT)
        containers: Counter[str] = Counter()
        try:
            for container in listed.result():
                containers[container.cluster] += 1
        except KsiError as exc:
            warnings.append(f"cannot list containers: {_words(exc)}")
        known_to_kind: list[str] = []
        try:
            known_to_kind = kind_listed.result()
        except KsiError as exc:
            warnings.append(f"cannot list kind clusters: {_words(exc)}")
    signals.check()

    found = set(recorded) | set(containers) | set(known_to_kind)
    for name in sorted(found):
        if not names.is_ksi_cluster(name) and name in recorded:
            warnings.append(f"record {name}.json does not name a ksi cluster; ignored")
    clusters = []
    for name in sorted(n for n in found if names.is_ksi_cluster(n)):
        record = registry.get(name)
        ports = tuple(sorted({p for p, owner in held.items() if owner == name} | ({record.port} if record else set())))
        if record is not None and record.host in here and record.name == name:
            state, reason, reclaimable = _record_liveness(record, jobs)
            clusters.append(Cluster(name, state, reason, reclaimable, RECORD_OK, record.job_id, record.pid,
                                    record.run_dir, record.kubeconfig, ports, record.created, containers[name]))
            continue
        status = (RECORD_MISSING if name not in recorded else RECORD_DAMAGED if record is None
                  else RECORD_OTHER_NODE)
        if status == RECORD_OTHER_NODE and containers[name] == 0 and name not in known_to_kind:
            continue  # another node's cluster, seen through a state directory shared by mistake
        reason, reclaimable = _unrecorded_liveness(name, status, jobs)
        clusters.append(Cluster(name, UNKNOWN, reason, reclaimable, status, job_of_name(name),
                                ports=tuple(p for p in ports if held.get(p) == name), containers=containers[name]))
    return Inventory(tuple(clusters), tuple(warnings))

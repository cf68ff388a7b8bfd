"""``ksi cleanup``: delete ksi clusters of the calling user on this node, safely and verified.

What may be deleted (see :mod:`ksi.admin.inventory` for the states):

- ``stale`` (the default): clusters whose ksi process is gone and whose job has ended (or, without Slurm,
  whose process is gone), and unrecorded ksi clusters nothing claims. Never a cluster of a job that is
  still alive, never one whose ksi process is alive.
- ``job``: the clusters of one job, whatever their state (the Slurm epilog uses this when the job ends).
- ``all``: every ksi cluster of this user on this node.

Only names ksi generates are considered, only through this user's own container runtime (another user's
clusters are invisible to it), and kind's shared ``kind`` network is never touched. Deletion is the same
verified teardown as ``ksi run``'s (:func:`ksi.cluster.delete.delete_verified`); afterwards the port reservations
are released, the run's secrets removed (logs kept), run.json marked ``cleaned``, and the record dropped.
Cleanups of one user on one node are serialised by a node-local lock; a cluster whose delete fails keeps
its record, so the next cleanup retries it.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ksi import log
from ksi.admin.inventory import RECORD_DAMAGED, RECORD_OK, Cluster, Inventory, JobStates, take
from ksi.cluster import rundir
from ksi.cluster.delete import delete_verified
from ksi.errors import Interrupted, KsiError
from ksi.host.ports import PortReservations
from ksi.host.registry import Registry
from ksi.host.slurm import node_name, node_names
from ksi.host.state import create_secret_file, ensure_private_dir, node_lock, read_json, write_json
from ksi.settings import Settings
from ksi.tools.kind import Kind
from ksi.tools.runtime import CLUSTER_LABEL, runtime_for

_log = log.get(__name__)

STALE = "stale"
JOB = "job"
ALL = "all"
LOCK_NAME = "cleanup.lock"
CLI_LOCK_TIMEOUT = 300.0  # a cleanup in progress deletes a few clusters, each within the teardown budget
RUN_LOCK_TIMEOUT = 30.0  # `ksi run` does not wait long for another cleanup: it skips its own instead
_EMPTY_KUBECONFIG = "apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n"


@dataclass(frozen=True)
class Selection:
    """Which clusters to delete: ``mode`` is STALE, JOB or ALL; ``job_id`` goes with JOB."""

    mode: str = STALE
    job_id: str | None = None

    def picks(self, cluster: Cluster) -> bool:
        """True when ``cluster`` is selected."""
        if self.mode == ALL:
            return True
        if self.mode == JOB:
            return cluster.job_id == self.job_id
        return cluster.reclaimable

    def describe(self) -> str:
        """Return the selection in words."""
        return {STALE: "stale clusters", ALL: "all ksi clusters"}.get(self.mode, f"clusters of job {self.job_id}")


@dataclass(frozen=True)
class Outcome:
    """What happened to one selected cluster: ``action`` is deleted, would delete, or failed."""

    cluster: Cluster
    action: str
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Report:
    """The result of one cleanup: what happened to each selected cluster, and what was left alone.

    ``stopped_by`` is the stop signal that ended the cleanup early; ``skipped`` what it did not get to.
    """

    outcomes: tuple[Outcome, ...]
    kept: tuple[Cluster, ...]
    warnings: tuple[str, ...]
    stopped_by: int | None = None
    skipped: tuple[Cluster, ...] = ()

    @property
    def failed(self) -> tuple[Outcome, ...]:
        """The outcomes whose delete failed."""
        return tuple(o for o in self.outcomes if o.action == "failed")


def _inventory(settings: Settings, env: Mapping[str, str], selection: Selection) -> Inventory:
    """Take the inventory this selection needs (Slurm is asked only when liveness decides)."""
    jobs = JobStates(env) if selection.mode == STALE else None
    return take(settings, env, node_names(env), jobs)


def _owned_dir(text: str | None) -> Path | None:
    """Return ``text`` as a path if it is an absolute directory (not a symlink) owned by this user."""
    if not text or not os.path.isabs(text):
        return None
    path = Path(text)
    try:
        info = path.lstat()
    except OSError:
        return None
    return path if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() else None


def _plan(cluster: Cluster) -> str:
    """Return what deleting ``cluster`` involves besides the containers, in words."""
    parts = [f"release port {', '.join(map(str, cluster.ports))}" if cluster.ports else "",
             f"remove the secrets in {cluster.run_dir} (logs kept)" if _owned_dir(cluster.run_dir) else "",
             "drop its record" if cluster.record in (RECORD_OK, RECORD_DAMAGED) else ""]
    return "; ".join(p for p in parts if p)


def _mark_cleaned(run_dir: Path, node: str, reason: str) -> None:
    """Set state ``cleaned`` in the run's run.json (if there is one), saying when, where and why."""
    path = run_dir / rundir.RECORD
    data = read_json(path)
    if isinstance(data, dict):
        data["state"] = "cleaned"
        data["cleaned"] = {"at": time.time(), "by": f"ksi cleanup on {node}", "reason": reason}
        write_json(path, data, mode=0o644)


def _delete(cluster: Cluster, settings: Settings, env: Mapping[str, str], node: str) -> Outcome:
    """Delete ``cluster`` verified, then release its ports, remove its secrets and drop its record."""
    kind = Kind(env)
    runtime = runtime_for(settings.provider, env)
    kubeconfig = Path(cluster.kubeconfig) if cluster.kubeconfig else None
    scratch: Path | None = None
    if kubeconfig is None or not kubeconfig.is_file():
        # kind edits the kubeconfig it is given, and ~/.kube/config when given none: give it an empty one.
        scratch = settings.state_dir / f".cleanup-{cluster.name}-{os.getpid()}.kubeconfig"
        with contextlib.suppress(FileNotFoundError):
            scratch.unlink()
        kubeconfig = create_secret_file(scratch, _EMPTY_KUBECONFIG)
    try:
        delete_verified(kind, runtime, cluster.name, kubeconfig, settings.teardown_timeout)
    except Interrupted:
        raise
    except KsiError as exc:
        fix = exc.fix or (f"run `ksi cleanup` again; if it keeps failing, check `{runtime.name} ps -a --filter "
                          f"label={CLUSTER_LABEL}={cluster.name}` and remove those containers")
        return Outcome(cluster, "failed", exc.message, fix)
    finally:
        if scratch is not None:
            with contextlib.suppress(FileNotFoundError):
                scratch.unlink()
    done = []
    PortReservations(settings.state_dir).release_cluster(cluster.name)
    if cluster.ports:
        done.append(f"released port {', '.join(map(str, cluster.ports))}")
    run_dir = _owned_dir(cluster.run_dir)
    if run_dir is not None:
        removed = rundir.remove_secrets(run_dir)
        with contextlib.suppress(FileNotFoundError):
            (run_dir / f"{rundir.KUBECONFIG}.lock").unlink()  # left by a kind killed mid-create
        _mark_cleaned(run_dir, node, cluster.reason)
        done.append(f"removed {', '.join(removed)} from {run_dir} (logs kept)" if removed
                    else f"no secrets left in {run_dir}")
    if cluster.record in (RECORD_OK, RECORD_DAMAGED):
        Registry(settings.state_dir).remove(cluster.name)
    return Outcome(cluster, "deleted", "; ".join(done))


def cleanup(settings: Settings, env: Mapping[str, str], selection: Selection, *, dry_run: bool = False,
            lock_timeout: float = CLI_LOCK_TIMEOUT, stop: Callable[[], int | None] = lambda: None) -> Report:
    """Delete the selected clusters of this user on this node and return what happened.

    ``env`` is what kind, the runtime and squeue run with. With ``dry_run`` nothing is changed (not even a
    lock file is created) and every outcome is "would delete". Otherwise the inventory is taken and acted on
    while holding the node-local cleanup lock, so concurrent cleanups never delete the same cluster twice.
    ``stop`` returns a stop signal that arrived: the cleanup then ends between two clusters, never inside
    the deletion of one.
    """
    node = node_name(env)
    if dry_run:
        inventory = _inventory(settings, env, selection)
        picked = [c for c in inventory.clusters if selection.picks(c)]
        return Report(tuple(Outcome(c, "would delete", _plan(c)) for c in picked),
                      tuple(c for c in inventory.clusters if not selection.picks(c)), inventory.warnings)
    ensure_private_dir(settings.state_dir)
    if selection.mode == JOB:
        # Every job's epilog asks, and most jobs have no cluster here: look first, without queueing on the
        # lock behind another cleanup's deletions (the epilog's time limit is short).
        glance = _inventory(settings, env, selection)
        if not any(selection.picks(c) for c in glance.clusters):
            return Report((), glance.clusters, glance.warnings, stop())
    outcomes: list[Outcome] = []
    skipped: list[Cluster] = []
    with node_lock(settings.state_dir / LOCK_NAME, lock_timeout, "ksi cleanup"):
        inventory = _inventory(settings, env, selection)
        for cluster in (c for c in inventory.clusters if selection.picks(c)):
            if stop() is not None:
                skipped.append(cluster)
            else:
                outcomes.append(_delete(cluster, settings, env, node))
    return Report(tuple(outcomes), tuple(c for c in inventory.clusters if not selection.picks(c)), inventory.warnings,
                  stop(), tuple(skipped))


def remove_stale(settings: Settings, kind_env: Mapping[str, str]) -> list[str]:
    """Delete the calling user's stale clusters on this node before ``ksi run`` creates its own.

    Never raises for a cluster it could not delete or a busy cleanup lock (it logs a warning: the run itself
    can still go ahead); logs one line per removed cluster and returns their names.
    """
    try:
        report = cleanup(settings, kind_env, Selection(STALE), lock_timeout=RUN_LOCK_TIMEOUT)
    except Interrupted:
        raise  # ksi run was asked to stop: that is not a cleanup problem to shrug off
    except KsiError as exc:
        _log.warning("cleanup: stale clusters not removed: %s", exc.one_line())
        return []
    for warning in report.warnings:
        _log.debug("cleanup: %s", warning)
    for outcome in report.outcomes:
        if outcome.action == "deleted":
            _log.info("cleanup: removed stale cluster %s (%s)%s", outcome.cluster.name, outcome.cluster.reason,
                      f": {outcome.detail}" if outcome.detail else "")
        else:
            _log.warning("cleanup: could not remove stale cluster %s: %s", outcome.cluster.name, outcome.detail)
    return [o.cluster.name for o in report.outcomes if o.action == "deleted"]

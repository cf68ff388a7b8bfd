"""The requests of the cluster executor's workers: create an attempt's Job, report its end with its log, delete it.

Each runs in a worker thread of :class:`~ksi.tasks.cluster.ClusterExecutor` and touches the executor's
state only by reading an attempt's :class:`~ksi.tasks.cluster.Live` record.
"""

from __future__ import annotations

import concurrent.futures
import time
from typing import TYPE_CHECKING

from ksi import log
from ksi.errors import KsiError
from ksi.tasks import jobs, kube
from ksi.tasks import results as res
from ksi.tasks.jobs import PodEnd
from ksi.tasks.runner import Ended

if TYPE_CHECKING:
    from ksi.tasks.cluster import ClusterExecutor, Live

_log = log.get(__name__)
_RETRIABLE = frozenset({409, 429, 500, 502, 503, 504})


def create(executor: ClusterExecutor, live: Live, previous: concurrent.futures.Future[None] | None,
           retry_for: float) -> Ended | None:
    """Create the attempt's Job; return an ``Error`` end when the API refuses it (None on success).

    A Job of the same name that an earlier attempt left is still being deleted: wait for that deletion,
    then retry while the API answers 409 (or a transient error) for up to ``retry_for`` seconds.
    """
    attempt = live.attempt
    spec = executor.spec
    if previous is not None:
        concurrent.futures.wait([previous], timeout=retry_for)
    manifest = jobs.job_manifest(spec.name, attempt.task.name, attempt.number, spec.image, attempt.command.argv,
                                 executor.environment(attempt), dict(spec.resources), live.node, spec.timeout)
    deadline = time.monotonic() + retry_for
    pause = 0.1
    while True:
        try:
            executor.api.send("POST", executor.jobs_path, body=manifest)
            return None
        except Exception as exc:
            status = kube.status_of(exc)
            if status == 409 and _exists(executor, attempt.task.name, attempt.number):
                return None  # an earlier try of this very request created it (its answer was lost)
            transient = status is None or status in _RETRIABLE
            if not transient or time.monotonic() > deadline or executor.stopping.is_set():
                return Ended(attempt, res.ERROR, None, live.node, None, time.time(), None,
                             f"the Job could not be created: {kube.message_of(exc)}")
            _log.debug("create job %s: %s; again in %.1f s", attempt.task.name, kube.message_of(exc), pause)
            executor.stopping.wait(pause)
            pause = min(pause * 2, 2.0)


def _exists(executor: ClusterExecutor, name: str, number: int) -> bool:
    """True when the Job ``name`` that exists now is the one of attempt ``number`` (not an earlier one's)."""
    try:
        job = executor.api.json("GET", f"{executor.jobs_path}/{name}")
    except Exception:
        return False
    return kube.labels(job).get(jobs.ATTEMPT_LABEL) == str(number)


def report(executor: ClusterExecutor, live: Live, end: PodEnd | None) -> Ended:
    """Return how the attempt ended (its log is fetched later, by a recorder: :func:`fetch_log`)."""
    attempt = live.attempt
    if end is None:  # the Job ended but the watch showed no pod end: look the pod up
        end = _end_from_api(executor, live)
    reason, message = end.reason, end.message
    if reason in res.FAILURES and executor.spec.timeout is not None and not live.deadline and _deadline(
            executor, attempt.task.name):
        reason, message = res.DEADLINE, f"ran longer than the timeout of {executor.spec.timeout} s"
    return Ended(attempt, reason, end.exit_code, live.pod_node or live.node, end.start or live.started,
                 end.end or time.time(), None, message, ref=live.pod)


def _end_from_api(executor: ClusterExecutor, live: Live) -> PodEnd:
    selector = f"{jobs.TASK_LABEL}={live.attempt.task.name},{jobs.ATTEMPT_LABEL}={live.attempt.number}"
    try:
        pods = executor.api.json("GET", executor.pods_path, query=[("labelSelector", selector)])
    except Exception as exc:
        return PodEnd(res.ERROR, None, f"the Job ended; its pod could not be read: {kube.message_of(exc)}",
                      live.started, None)
    for pod in pods.get("items") or []:
        live.pod = kube.name(pod)
        live.pod_node = (pod.get("spec") or {}).get("nodeName") or live.pod_node
        found = jobs.pod_end(pod)
        if found is not None:
            return found
    return PodEnd(res.ERROR, None, "the Job ended without a pod that ran", live.started, None)


def _deadline(executor: ClusterExecutor, name: str) -> bool:
    """True when the attempt's Job says it ran past its deadline (a killed pod looks like a failure)."""
    try:
        job = executor.api.json("GET", f"{executor.jobs_path}/{name}")
    except Exception:
        return False
    return jobs.deadline_exceeded(job)


def remove_leftovers(executor: ClusterExecutor, timeout: float) -> None:
    """Delete the experiment's Jobs that a killed earlier run left, and wait (``timeout`` s) until they are gone."""
    selector = jobs.selector(executor.spec.name)
    deadline = time.monotonic() + timeout
    while True:
        found = executor.api.json("GET", executor.jobs_path, query=[("labelSelector", selector)])
        names = [kube.name(j) for j in found.get("items") or []]
        if not names:
            return
        if time.monotonic() > deadline:
            raise KsiError(f"Jobs of an earlier run of {executor.spec.name} are still there after {timeout:g} s: "
                           f"{', '.join(names[:5])}", step="tasks", fix=f"kubectl delete jobs -l {selector}")
        _log.info("tasks: deleting %d Job(s) an earlier run left behind", len(names))
        for name in names:
            delete(executor, name)
        executor.stopping.wait(0.5)


def delete(executor: ClusterExecutor, name: str) -> None:
    """Delete the Job ``name`` (its pods go with it); a Job already gone is fine."""
    for pause in (0.2, 1.0, 0.0):
        try:
            executor.api.send("DELETE", f"{executor.jobs_path}/{name}", query=[("propagationPolicy", "Background")])
            return
        except Exception as exc:
            if kube.status_of(exc) == 404:
                return
            problem = kube.message_of(exc)
        if pause:
            time.sleep(pause)
    _log.warning("tasks: could not delete Job %s: %s (it goes with the cluster)", name, problem)

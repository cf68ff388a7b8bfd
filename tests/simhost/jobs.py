"""The Job controller and the admission (defaults and checks) of Jobs and Pods, as batch/v1 and v1 do them.

Modelled: parallelism, completions (NonIndexed and Indexed), backoffLimit with the controller's exponential
back-off before a replacement pod, activeDeadlineSeconds (DeadlineExceeded), the conditions of a finished
Job (SuccessCriteriaMet then Complete; FailureTarget then Failed once no pod runs) and the status counters.
Anything else in a Job spec that changes what runs (suspend, podFailurePolicy, successPolicy, ...) is
refused with 501. Standard library only (the node-container process runs with ``python -S``).
"""

from __future__ import annotations

import copy
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tests.simhost.apimodel import JOBS, PODS, Obj, invalid_all, not_modelled, parse_time, rfc3339
from tests.simhost.kubelet import require_runnable

if TYPE_CHECKING:
    from tests.simhost.apistore import Store

CONTROLLER_UID = "batch.kubernetes.io/controller-uid"
JOB_NAME = "batch.kubernetes.io/job-name"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # what the API server's generateName draws from
BACKOFF_MAX = 360.0  # seconds: the controller's back-off cap (6 minutes)
TERMINAL = ("Succeeded", "Failed")


def suffix() -> str:
    """Return the 5 random characters generateName appends."""
    return "".join(random.choice(NAME_CHARS) for _ in range(5))


def admit_job(job: Obj) -> None:
    """Default and check a new Job (what the batch/v1 defaulting, strategy and validation do)."""
    meta, spec = job["metadata"], job.setdefault("spec", {})
    name = meta.get("name") or ""
    for key in ("suspend", "podFailurePolicy", "successPolicy", "backoffLimitPerIndex", "maxFailedIndexes",
                "manualSelector", "managedBy"):
        if spec.get(key):
            raise not_modelled(f"Jobs with spec.{key}")
    template = spec.get("template") or {}
    problems = []
    pod_spec = template.get("spec") or {}
    policy = pod_spec.get("restartPolicy")
    if policy not in ("Never", "OnFailure"):
        problems.append(("spec.template.spec.restartPolicy", 'Required value: valid values: "OnFailure", "Never"'
                         if not policy else f'Unsupported value: "{policy}": supported values: "OnFailure", "Never"'))
    if not pod_spec.get("containers"):
        problems.append(("spec.template.spec.containers", "Required value"))
    for i, container in enumerate(pod_spec.get("containers") or []):
        if not container.get("name"):
            problems.append((f"spec.template.spec.containers[{i}].name", "Required value"))
        if not container.get("image"):
            problems.append((f"spec.template.spec.containers[{i}].image", "Required value"))
    mode = spec.setdefault("completionMode", "NonIndexed")
    if mode not in ("NonIndexed", "Indexed"):
        problems.append(("spec.completionMode", f'Unsupported value: "{mode}"'))
    if mode == "Indexed" and spec.get("completions") is None:
        problems.append(("spec.completions", "Required value: when completion mode is Indexed"))
    for key in ("parallelism", "completions", "backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"):
        value = spec.get(key)
        if value is not None and (not isinstance(value, int) or value < (1 if key == "activeDeadlineSeconds" else 0)):
            problems.append((f"spec.{key}", f"Invalid value: {value}: must be greater than or equal to "
                             f"{1 if key == 'activeDeadlineSeconds' else 0}"))
    if problems:
        raise invalid_all(JOBS, name, problems)
    if policy == "OnFailure":
        raise not_modelled("Jobs with restartPolicy OnFailure (containers restarted in place); use Never")
    if spec.get("ttlSecondsAfterFinished") is not None:
        raise not_modelled("Jobs with ttlSecondsAfterFinished")
    probe = copy.deepcopy(template)
    probe.setdefault("spec", {})
    require_runnable(probe)
    uid = meta.setdefault("uid", str(uuid.uuid4()))
    spec.setdefault("parallelism", 1)
    if spec.get("completions") is None and spec["parallelism"] == 1:
        spec["completions"] = 1
    spec.setdefault("backoffLimit", 6)
    spec.setdefault("suspend", False)
    spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
    tmeta = template.setdefault("metadata", {})
    if not meta.get("labels") and tmeta.get("labels"):
        meta["labels"] = dict(tmeta["labels"])
    tmeta["labels"] = (tmeta.get("labels") or {}) | {CONTROLLER_UID: uid, JOB_NAME: name, "controller-uid": uid,
                                                     "job-name": name}
    spec["selector"] = {"matchLabels": {CONTROLLER_UID: uid}}
    spec["template"] = template
    job["status"] = {}


def admit_pod(pod: Obj) -> None:
    """Default and check a new Pod (v1 defaulting and validation, and what the simulated kubelet can run)."""
    spec = pod.setdefault("spec", {})
    name = pod["metadata"].get("name") or pod["metadata"].get("generateName") or ""
    problems = []
    if not spec.get("containers"):
        problems.append(("spec.containers", "Required value"))
    for i, container in enumerate(spec.get("containers") or []):
        if not container.get("name"):
            problems.append((f"spec.containers[{i}].name", "Required value"))
        if not container.get("image"):
            problems.append((f"spec.containers[{i}].image", "Required value"))
    if problems:
        raise invalid_all(PODS, name, problems)
    spec.setdefault("restartPolicy", "Always")
    require_runnable(pod)
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("serviceAccountName", "default")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    tolerations = spec.setdefault("tolerations", [])
    for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"):  # DefaultTolerationSeconds
        if not any(t.get("key") == key for t in tolerations):
            tolerations.append({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300})
    for container in spec["containers"]:
        container.setdefault("imagePullPolicy", "Always" if container["image"].endswith(":latest")
                             or ":" not in container["image"].split("/")[-1] else "IfNotPresent")
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        container.setdefault("resources", {})
    qos = "BestEffort"
    if any((c.get("resources") or {}).get("requests") or (c.get("resources") or {}).get("limits")
           for c in spec["containers"]):
        qos = "Burstable"
    pod["status"] = {"phase": "Pending", "qosClass": qos}


@dataclass
class JobState:
    """What the controller remembers of one Job: the pods it already counted, and when to act next."""

    succeeded: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    indexes: set[int] = field(default_factory=set)
    last_failure: float = 0.0


class JobController:
    """Reconciles every Job with its pods; called by the controller loop with the store's lock held."""

    def __init__(self, store: Store, backoff: float) -> None:
        self.store = store
        self.backoff = backoff  # seconds before the first replacement of a failed pod (10 in Kubernetes)
        self.jobs: dict[str, JobState] = {}

    def reconcile(self, pods_by_owner: dict[str, list[Obj]], delete_pod: object) -> float | None:
        """Bring every Job's pods and status up to date; return seconds until a Job needs another look."""
        wake: float | None = None
        live = set()
        for job in list(self.store.select(JOBS)):
            uid = job["metadata"]["uid"]
            live.add(uid)
            due = self._one(job, pods_by_owner.get(uid, []), delete_pod)
            if due is not None:
                wake = due if wake is None else min(wake, due)
        for gone in set(self.jobs) - live:
            del self.jobs[gone]
        return wake

    def _one(self, job: Obj, pods: list[Obj], delete_pod: object) -> float | None:
        meta, spec = job["metadata"], job["spec"]
        state = self.jobs.setdefault(meta["uid"], JobState())
        now = time.time()
        for pod in pods:
            phase = (pod.get("status") or {}).get("phase")
            puid = pod["metadata"]["uid"]
            if phase == "Succeeded" and puid not in state.succeeded:
                state.succeeded.add(puid)
                index = (pod["metadata"].get("annotations") or {}).get(COMPLETION_INDEX)
                if index is not None:
                    state.indexes.add(int(index))
            elif phase == "Failed" and puid not in state.failed:
                state.failed.add(puid)
                state.last_failure = now
        active = [p for p in pods if (p.get("status") or {}).get("phase") not in TERMINAL
                  and not p["metadata"].get("deletionTimestamp")]
        terminating = [p for p in pods if (p.get("status") or {}).get("phase") not in TERMINAL
                       and p["metadata"].get("deletionTimestamp")]
        status = job.get("status") or {}
        conditions = status.get("conditions") or []
        finished = {c["type"] for c in conditions if c["status"] == "True"}
        wake: float | None = None
        target = None
        if "Complete" in finished or "Failed" in finished:
            target = "done"
        elif "FailureTarget" in finished or "SuccessCriteriaMet" in finished:
            target = "ending"
        else:
            indexed = spec.get("completionMode") == "Indexed"
            completions = spec.get("completions")
            done = len(state.indexes) if indexed else len(state.succeeded)
            start = parse_time(status["startTime"]) if status.get("startTime") else now
            deadline = spec.get("activeDeadlineSeconds")
            if (completions is not None and done >= completions) or (
                    completions is None and state.succeeded and not active):
                conditions = [*conditions, condition("SuccessCriteriaMet", "CompletionsReached",
                                                     "Reached expected number of succeeded pods")]
                target = "ending"
            elif len(state.failed) > spec.get("backoffLimit", 6):
                conditions = [*conditions, condition("FailureTarget", "BackoffLimitExceeded",
                                                     "Job has reached the specified backoff limit")]
                target = "ending"
            elif deadline is not None and now - start >= deadline:
                conditions = [*conditions, condition("FailureTarget", "DeadlineExceeded",
                                                     "Job was active longer than specified deadline")]
                target = "ending"
            else:
                if deadline is not None:
                    wake = start + deadline - now
                wanted = spec.get("parallelism", 1)
                if completions is not None:
                    wanted = min(wanted, completions - done)
                missing = wanted - len(active) - len(terminating)
                if missing > 0 and state.failed:
                    delay = min(self.backoff * 2 ** (len(state.failed) - 1), BACKOFF_MAX)
                    due = state.last_failure + delay - now
                    if due > 0:
                        missing = 0
                        wake = due if wake is None else min(wake, due)
                if missing > 0:
                    busy = {int((p["metadata"].get("annotations") or {}).get(COMPLETION_INDEX, -1)) for p in active}
                    free = [i for i in range(completions or 0) if i not in state.indexes and i not in busy]
                    for n in range(missing):
                        self._create_pod(job, free[n] if indexed else None)
                    active = [*active, *([None] * missing)]  # type: ignore[list-item]
        if target == "ending":
            for pod in active:
                if pod is not None:
                    state.failed.add(pod["metadata"]["uid"])  # a pod the controller stops counts as failed
                    delete_pod(pod, None)  # type: ignore[operator]
            if not active and not terminating:
                kind = "Failed" if any(c["type"] == "FailureTarget" for c in conditions) else "Complete"
                source = next(c for c in conditions if c["type"] in ("FailureTarget", "SuccessCriteriaMet"))
                conditions = [*conditions, condition(kind, source["reason"], source["message"])]
                target = "done"
        new_status = dict(status)
        new_status.setdefault("startTime", rfc3339(now))
        new_status["active"] = len([p for p in active if p is not None])
        new_status["succeeded"] = len(state.succeeded)
        new_status["failed"] = len(state.failed)
        new_status["terminating"] = len(terminating)
        new_status["ready"] = sum(1 for p in active if p is not None and is_ready(p))
        new_status["uncountedTerminatedPods"] = {}
        if spec.get("completionMode") == "Indexed" and state.indexes:
            new_status["completedIndexes"] = index_ranges(state.indexes)
        if conditions:
            new_status["conditions"] = conditions
        if any(c["type"] == "Complete" for c in conditions):
            new_status.setdefault("completionTime", rfc3339(now))
        for key in ("active", "succeeded", "failed", "terminating"):
            if not new_status[key]:
                del new_status[key]
        if new_status != status:
            self.store.update(JOBS, meta["namespace"], meta["name"], lambda obj: obj.__setitem__("status", new_status))
        return wake

    def _create_pod(self, job: Obj, index: int | None) -> None:
        """Create one pod from the Job's template (what the controller's pod control does)."""
        meta, template = job["metadata"], copy.deepcopy(job["spec"]["template"])
        tmeta = template.get("metadata") or {}
        prefix = f"{meta['name']}-" if index is None else f"{meta['name']}-{index}-"
        labels = dict(tmeta.get("labels") or {})
        annotations = dict(tmeta.get("annotations") or {})
        spec = template["spec"]
        if index is not None:
            labels[COMPLETION_INDEX] = annotations[COMPLETION_INDEX] = str(index)
            spec.setdefault("hostname", f"{meta['name']}-{index}")
            for container in spec["containers"]:
                container.setdefault("env", []).append({"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
                    "fieldPath": f"metadata.labels['{COMPLETION_INDEX}']"}}})
        for _ in range(10):
            name = prefix + suffix()
            if self.store.get(PODS, meta["namespace"], name) is None:
                break
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "generateName": prefix, "namespace": meta["namespace"], "labels": labels,
                            "annotations": annotations, "ownerReferences": [{
                                "apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"],
                                "controller": True, "blockOwnerDeletion": True}]},
               "spec": spec}
        admit_pod(pod)
        self.store.put(PODS, pod, "ADDED")


def condition(kind: str, reason: str, message: str) -> Obj:
    """Return a Job condition that became True now."""
    now = rfc3339()
    return {"type": kind, "status": "True", "lastProbeTime": now, "lastTransitionTime": now, "reason": reason,
            "message": message}


def is_ready(pod: Obj) -> bool:
    """Return True when the pod's Ready condition is True."""
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (pod.get("status") or {}).get("conditions", []))


def index_ranges(indexes: set[int]) -> str:
    """Format completed indexes as the Job status does: ``0-2,5``."""
    parts, ordered = [], sorted(indexes)
    start = prev = ordered[0]
    for i in [*ordered[1:], None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ",".join(parts)

"""Pure functions between tasks and Kubernetes objects: the Job of an attempt, how a pod ended, node capacity.

Kept free of I/O so that every rule (which reason a pod's status means, how many tasks a node holds) is
tested from recorded objects.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ksi.tasks import results as res
from ksi.tasks.quantity import parse_quantity

Obj = dict[str, Any]
EXPERIMENT_LABEL = "ksi.io/experiment"
TASK_LABEL = "ksi.io/task"
ATTEMPT_LABEL = "ksi.io/attempt"
MANAGED_BY = ("app.kubernetes.io/managed-by", "ksi")
CONTAINER = "task"
APP = "/app"  # where kind mounts the shared directory in every node, and where tasks see it
HOSTNAME_LABEL = "kubernetes.io/hostname"
# Liqo keeps pods off its virtual nodes with this taint unless they tolerate it (an offloaded namespace's
# pods get the toleration from Liqo's webhook; a task's pod carries it itself).
LIQO_TAINT = "virtual-node.liqo.io/not-allowed"
TOLERATED = frozenset({LIQO_TAINT})
# DisruptionTarget reasons (Kubernetes >= 1.26) and what they mean for a task.
NODE_GONE = frozenset({"DeletionByTaintManager", "DeletionByPodGC"})
PUSHED_OUT = frozenset({"PreemptionByScheduler", "PreemptionByKubeScheduler", "EvictionByEvictionAPI",
                        "TerminationByKubelet"})


def selector(experiment: str) -> str:
    """Return the label selector of every Job and pod of an experiment."""
    return f"{EXPERIMENT_LABEL}={experiment}"


def job_manifest(experiment: str, task: str, attempt: int, image: str, argv: Iterable[str],
                 env: Mapping[str, str], resources: Mapping[str, str], node: str, timeout: int | None) -> Obj:
    """Return the Job of one attempt: one pod, never restarted by Kubernetes (ksi does the retrying).

    The pod is pinned to ``node`` (ksi spreads the tasks itself), tolerates Liqo's virtual-node taint,
    runs in /app, the shared directory, and requests ``resources`` (memory and extended resources are also
    its limits, so a task that exceeds its memory is OOM-killed and reported as such).
    """
    labels = {EXPERIMENT_LABEL: experiment, TASK_LABEL: task, ATTEMPT_LABEL: str(attempt), MANAGED_BY[0]: MANAGED_BY[1]}
    limits = {k: v for k, v in resources.items() if k == "memory" or "/" in k}
    container: Obj = {"name": CONTAINER, "image": image, "command": list(argv), "workingDir": APP,
                      "env": [{"name": k, "value": v} for k, v in env.items()],
                      "volumeMounts": [{"name": "app", "mountPath": APP}]}
    if resources:
        container["resources"] = {"requests": dict(resources)} | ({"limits": limits} if limits else {})
    spec: Obj = {"backoffLimit": 0, "completions": 1, "parallelism": 1, "template": {
        "metadata": {"labels": dict(labels)},
        "spec": {"restartPolicy": "Never", "nodeSelector": {HOSTNAME_LABEL: node},
                 "tolerations": [{"key": LIQO_TAINT, "operator": "Exists", "effect": "NoExecute"}],
                 "containers": [container],
                 "volumes": [{"name": "app", "hostPath": {"path": APP, "type": "Directory"}}]}}}
    if timeout is not None:
        spec["activeDeadlineSeconds"] = timeout
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": task, "labels": labels}, "spec": spec}


def parse_time(text: object) -> float | None:
    """Return the epoch seconds of an RFC 3339 time from the API (None when absent or malformed)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True)
class PodEnd:
    """How a pod ended, read from its status."""

    reason: str
    exit_code: int | None
    message: str
    start: float | None
    end: float | None


def _container(pod: Mapping[str, Any]) -> Obj:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return next((s for s in statuses if s.get("name") == CONTAINER), statuses[0] if statuses else {})


def disruption(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """Return (NodeLost or Evicted, message) when the pod was pushed off its node, else None."""
    status = pod.get("status") or {}
    if status.get("reason") == "NodeLost":
        return res.NODE_LOST, str(status.get("message") or "")
    if status.get("reason") in ("Evicted", "Preempting"):
        return res.EVICTED, str(status.get("message") or "")
    for condition in status.get("conditions") or []:
        if condition.get("type") == "DisruptionTarget" and condition.get("status") == "True":
            why = str(condition.get("reason") or "")
            text = str(condition.get("message") or why)
            if why in NODE_GONE:
                return res.NODE_LOST, text
            if why in PUSHED_OUT:
                return res.EVICTED, text
    return None


def pod_end(pod: Mapping[str, Any]) -> PodEnd | None:
    """Return how the pod ended, or None while it has not (phase neither Succeeded nor Failed)."""
    status = pod.get("status") or {}
    phase = status.get("phase")
    if phase not in ("Succeeded", "Failed"):
        return None
    state = _container(pod).get("state") or {}
    terminated = state.get("terminated") or {}
    code = terminated.get("exitCode")
    start = parse_time(terminated.get("startedAt")) or parse_time(status.get("startTime"))
    end = parse_time(terminated.get("finishedAt"))
    if phase == "Succeeded":
        return PodEnd(res.COMPLETED, 0 if code is None else int(code), "", start, end)
    pushed = disruption(pod)
    if pushed is not None:
        return PodEnd(pushed[0], None, pushed[1], start, end)
    message = str(terminated.get("message") or status.get("message") or "")
    if terminated.get("reason") == "OOMKilled":
        return PodEnd(res.OOM_KILLED, None if code is None else int(code), message or "out of memory", start, end)
    return PodEnd(res.ERROR, None if code is None else int(code), message, start, end)


# A container waiting for one of these does not start without someone changing the SPEC (or the registry):
# Kubernetes keeps the pod Pending for good (the Job's deadline aside), so ksi ends the attempt.
CANNOT_START = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
                          "CreateContainerConfigError", "CreateContainerError", "RunContainerError"})


def cannot_start(pod: Mapping[str, Any]) -> str | None:
    """Return why the pod's container cannot start (``ImagePullBackOff: ...``), or None."""
    waiting = (_container(pod).get("state") or {}).get("waiting") or {}
    reason = waiting.get("reason")
    if reason not in CANNOT_START:
        return None
    message = str(waiting.get("message") or "").strip()
    return f"the container cannot start: {reason}" + (f": {message}" if message else "")


def unschedulable(pod: Mapping[str, Any]) -> str | None:
    """Return the scheduler's message when it cannot place the pod (PodScheduled False, Unschedulable)."""
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False" \
                and condition.get("reason") == "Unschedulable":
            return str(condition.get("message") or "Unschedulable")
    return None


def started_at(pod: Mapping[str, Any]) -> float | None:
    """Return when the pod's container started running (None before it did)."""
    state = _container(pod).get("state") or {}
    return parse_time((state.get("running") or state.get("terminated") or {}).get("startedAt"))


def deadline_exceeded(job: Mapping[str, Any]) -> bool:
    """True when the Job failed (or is failing) because it ran past activeDeadlineSeconds."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Failed", "FailureTarget") and condition.get("status") == "True" \
                and condition.get("reason") == "DeadlineExceeded":
            return True
    return False


# --- nodes and capacity ---------------------------------------------------------------------------------

@dataclass
class NodeInfo:
    """What ksi needs of a node: can tasks run there, and what it offers."""

    name: str
    usable: bool
    why: str
    allocatable: dict[str, Decimal] = field(default_factory=dict)
    virtual: bool = False
    ready: bool = True  # False: NotReady or Unknown, its pods count as lost


def node_info(node: Mapping[str, Any]) -> NodeInfo:
    """Read a Node: usable when Ready, schedulable and without taints a task does not tolerate."""
    meta, spec, status = node.get("metadata") or {}, node.get("spec") or {}, node.get("status") or {}
    name = str(meta.get("name") or "")
    allocatable = {}
    for key, value in (status.get("allocatable") or {}).items():
        try:
            allocatable[str(key)] = parse_quantity(str(value))
        except ValueError:
            continue
    virtual = (meta.get("labels") or {}).get("liqo.io/type") == "virtual-node"
    ready: Obj = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    why = ""
    if ready.get("status") != "True":
        why = f"not Ready ({ready.get('reason') or ready.get('status') or 'no status'})"
    elif spec.get("unschedulable"):
        why = "cordoned (unschedulable)"
    else:
        for taint in spec.get("taints") or []:
            if taint.get("effect") in ("NoSchedule", "NoExecute") and taint.get("key") not in TOLERATED:
                why = f"tainted {taint.get('key')}:{taint.get('effect')}"
                break
    return NodeInfo(name, not why, why, allocatable, virtual, ready.get("status") == "True")


def requests_of(resources: Mapping[str, str]) -> dict[str, Decimal]:
    """Return the SPEC's resources as numbers, plus one pod."""
    return {key: parse_quantity(value) for key, value in resources.items()} | {"pods": Decimal(1)}


def pod_requests(pod: Mapping[str, Any]) -> dict[str, Decimal]:
    """Return what a pod holds on its node: the sum of its containers' requests, plus one pod."""
    total: dict[str, Decimal] = {"pods": Decimal(1)}
    for container in (pod.get("spec") or {}).get("containers") or []:
        for key, value in ((container.get("resources") or {}).get("requests") or {}).items():
            try:
                total[key] = total.get(key, Decimal(0)) + parse_quantity(str(value))
            except ValueError:
                continue
    return total


def held_by_others(pods: Iterable[Mapping[str, Any]], experiment: str) -> dict[str, dict[str, Decimal]]:
    """Return, per node, what the pods not of ``experiment`` (and not ended) hold there."""
    held: dict[str, dict[str, Decimal]] = {}
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        labels = (pod.get("metadata") or {}).get("labels") or {}
        if not node or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed") \
                or labels.get(EXPERIMENT_LABEL) == experiment:
            continue
        holds = held.setdefault(node, {})
        for key, amount in pod_requests(pod).items():
            holds[key] = holds.get(key, Decimal(0)) + amount
    return held


def slots(node: NodeInfo, wanted: Mapping[str, Decimal], used: Mapping[str, Decimal]) -> int:
    """Return how many tasks requesting ``wanted`` fit on ``node`` besides what others ``used``."""
    if not node.usable:
        return 0
    fits = []
    for key, amount in wanted.items():
        if amount <= 0:
            continue
        free = node.allocatable.get(key, Decimal(0)) - used.get(key, Decimal(0))
        fits.append(max(int(free / amount), 0))
    return min(fits) if fits else 0


def describe_requests(resources: Mapping[str, str]) -> str:
    """Return ``cpu 1, memory 2Gi`` (or ``no requests``)."""
    return ", ".join(f"{k} {v}" for k, v in resources.items()) or "no requests"

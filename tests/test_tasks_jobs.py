"""ksi tasks and Kubernetes objects: the Job of an attempt, how a pod ended, what a node holds (pure)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from ksi.tasks import jobs
from ksi.tasks import results as res


def pod(phase: str, *, terminated: dict[str, Any] | None = None, reason: str | None = None,
        conditions: list[dict[str, Any]] | None = None, running: bool = False) -> dict[str, Any]:
    state: dict[str, Any] = {"waiting": {"reason": "ContainerCreating"}}
    if terminated is not None:
        state = {"terminated": {"startedAt": "2025-01-02T03:04:05Z", "finishedAt": "2025-01-02T03:04:15Z",
                                **terminated}}
    elif running:
        state = {"running": {"startedAt": "2025-01-02T03:04:05Z"}}
    status: dict[str, Any] = {"phase": phase, "startTime": "2025-01-02T03:04:00Z",
                              "containerStatuses": [{"name": "task", "state": state}],
                              "conditions": conditions or []}
    if reason:
        status.update(reason=reason, message=f"{reason} message")
    return {"metadata": {"name": "p", "labels": {}}, "status": status}


@pytest.mark.parametrize(("obj", "expected"), [
    (pod("Succeeded", terminated={"exitCode": 0, "reason": "Completed"}), (res.COMPLETED, 0)),
    (pod("Failed", terminated={"exitCode": 3, "reason": "Error"}), (res.ERROR, 3)),
    (pod("Failed", terminated={"exitCode": 137, "reason": "OOMKilled"}), (res.OOM_KILLED, 137)),
    (pod("Failed", reason="NodeLost", terminated={"exitCode": 137, "reason": "ContainerStatusUnknown"},
         conditions=[{"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager"}]),
     (res.NODE_LOST, None)),
    (pod("Failed", terminated={"exitCode": 137, "reason": "Error"},
         conditions=[{"type": "DisruptionTarget", "status": "True", "reason": "DeletionByPodGC"}]),
     (res.NODE_LOST, None)),
    (pod("Failed", reason="Evicted"), (res.EVICTED, None)),
    (pod("Failed", terminated={"exitCode": 143, "reason": "Error"},
         conditions=[{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}]),
     (res.EVICTED, None)),
    (pod("Failed", terminated={"exitCode": 143, "reason": "Error"},
         conditions=[{"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}]),
     (res.EVICTED, None)),
])
def test_how_a_pod_ended(obj: dict[str, Any], expected: tuple[str, int | None]) -> None:
    end = jobs.pod_end(obj)
    assert end is not None
    assert (end.reason, end.exit_code) == expected
    assert end.start is not None


@pytest.mark.parametrize("obj", [pod("Pending"), pod("Running", running=True)])
def test_a_pod_that_has_not_ended(obj: dict[str, Any]) -> None:
    assert jobs.pod_end(obj) is None


def test_started_at_and_disruption_of_a_running_pod() -> None:
    running = pod("Running", running=True)
    assert jobs.started_at(running) == jobs.parse_time("2025-01-02T03:04:05Z")
    assert jobs.started_at(pod("Pending")) is None
    assert jobs.disruption(running) is None
    deleted = pod("Running", running=True, conditions=[
        {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager", "message": "taint"}])
    assert jobs.disruption(deleted) == (res.NODE_LOST, "taint")


@pytest.mark.parametrize(("reason", "stuck"), [("ContainerCreating", False), ("ErrImagePull", True),
                                               ("ImagePullBackOff", True), ("InvalidImageName", True),
                                               ("CreateContainerConfigError", True)])
def test_a_container_that_cannot_start(reason: str, stuck: bool) -> None:
    obj = pod("Pending")
    obj["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": reason, "message": "why"}}
    assert jobs.cannot_start(obj) == (f"the container cannot start: {reason}: why" if stuck else None)
    assert jobs.pod_end(obj) is None


def test_unschedulable_pod() -> None:
    waiting = pod("Pending", conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                         "message": "0/3 nodes are available: 1 Insufficient cpu"}])
    assert jobs.unschedulable(waiting) == "0/3 nodes are available: 1 Insufficient cpu"
    assert jobs.unschedulable(pod("Pending")) is None


def test_deadline_from_the_job_conditions() -> None:
    failing = {"status": {"conditions": [{"type": "FailureTarget", "status": "True", "reason": "DeadlineExceeded"}]}}
    backoff = {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}}
    assert jobs.deadline_exceeded(failing)
    assert not jobs.deadline_exceeded(backoff)
    assert not jobs.deadline_exceeded({})


def test_the_job_of_an_attempt() -> None:
    job = jobs.job_manifest("sweep", "sweep-a", 3, "python:3.12", ["python", "/app/t.py"], {"A": "1"},
                            {"cpu": "500m", "memory": "1Gi", "nvidia.com/gpu": "1"}, "node-2", 7200)
    labels = {"ksi.io/experiment": "sweep", "ksi.io/task": "sweep-a", "ksi.io/attempt": "3",
              "app.kubernetes.io/managed-by": "ksi"}
    assert job["metadata"] == {"name": "sweep-a", "labels": labels}
    spec = job["spec"]
    assert (spec["backoffLimit"], spec["completions"], spec["parallelism"], spec["activeDeadlineSeconds"]) == (
        0, 1, 1, 7200)
    pod_spec = spec["template"]["spec"]
    assert spec["template"]["metadata"]["labels"] == labels
    assert pod_spec["restartPolicy"] == "Never"
    assert pod_spec["nodeSelector"] == {"kubernetes.io/hostname": "node-2"}
    assert pod_spec["tolerations"] == [{"key": "virtual-node.liqo.io/not-allowed", "operator": "Exists",
                                        "effect": "NoExecute"}]
    assert pod_spec["volumes"] == [{"name": "app", "hostPath": {"path": "/app", "type": "Directory"}}]
    (container,) = pod_spec["containers"]
    assert container["command"] == ["python", "/app/t.py"]
    assert container["workingDir"] == "/app"
    assert container["env"] == [{"name": "A", "value": "1"}]
    assert container["volumeMounts"] == [{"name": "app", "mountPath": "/app"}]
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi", "nvidia.com/gpu": "1"},
                                      "limits": {"memory": "1Gi", "nvidia.com/gpu": "1"}}
    plain = jobs.job_manifest("s", "s-0", 1, "i", ["true"], {}, {}, "n", None)
    assert "activeDeadlineSeconds" not in plain["spec"]
    assert "resources" not in plain["spec"]["template"]["spec"]["containers"][0]


def node(name: str, *, ready: str = "True", taints: list[dict[str, str]] | None = None, cpu: str = "4",
         memory: str = "8Gi", pods: str = "110", virtual: bool = False, unschedulable: bool = False) -> dict[str, Any]:
    labels = {"liqo.io/type": "virtual-node"} if virtual else {}
    return {"metadata": {"name": name, "labels": labels},
            "spec": {"taints": taints or [], "unschedulable": unschedulable},
            "status": {"conditions": [{"type": "Ready", "status": ready, "reason": "KubeletReady"}],
                       "allocatable": {"cpu": cpu, "memory": memory, "pods": pods}}}


def test_which_nodes_take_tasks() -> None:
    liqo = [{"key": "virtual-node.liqo.io/not-allowed", "value": "true", "effect": "NoExecute"}]
    unreachable = [{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]
    assert jobs.node_info(node("a")).usable
    virtual = jobs.node_info(node("v", taints=liqo, virtual=True))
    assert virtual.usable and virtual.virtual
    lost = jobs.node_info(node("l", ready="Unknown", taints=unreachable))
    assert not lost.usable and not lost.ready and lost.why == "not Ready (KubeletReady)"
    cordoned = jobs.node_info(node("c", unschedulable=True))
    assert (cordoned.why, cordoned.ready, cordoned.usable) == ("cordoned (unschedulable)", True, False)
    assert jobs.node_info(node("t", taints=[{"key": "gpu", "effect": "NoSchedule"}])).why == "tainted gpu:NoSchedule"
    assert jobs.node_info(node("p", taints=[{"key": "x", "effect": "PreferNoSchedule"}])).usable


def test_how_many_tasks_a_node_holds() -> None:
    info = jobs.node_info(node("a", cpu="4", memory="8Gi", pods="110"))
    others = {"cpu": Decimal("0.5"), "pods": Decimal(10)}
    assert jobs.slots(info, jobs.requests_of({"cpu": "500m"}), others) == 7
    assert jobs.slots(info, jobs.requests_of({"cpu": "100m", "memory": "3Gi"}), others) == 2
    assert jobs.slots(info, jobs.requests_of({}), others) == 100  # without requests, the pod count limits
    assert jobs.slots(info, jobs.requests_of({"nvidia.com/gpu": "1"}), others) == 0
    assert jobs.slots(jobs.node_info(node("l", ready="False")), jobs.requests_of({}), {}) == 0


def test_requests_of_a_pod() -> None:
    obj = {"spec": {"containers": [{"resources": {"requests": {"cpu": "250m", "memory": "1Gi"}}},
                                   {"resources": {"requests": {"cpu": "1"}}}, {}]}}
    assert jobs.pod_requests(obj) == {"pods": 1, "cpu": Decimal("1.25"), "memory": Decimal(2**30)}


def test_what_other_pods_hold_per_node() -> None:
    def running(node: str, cpu: str, phase: str = "Running", experiment: str = "other") -> dict[str, Any]:
        return {"metadata": {"labels": {"ksi.io/experiment": experiment}}, "status": {"phase": phase},
                "spec": {"nodeName": node, "containers": [{"resources": {"requests": {"cpu": cpu}}}]}}

    pods = [running("a", "1"), running("a", "500m"), running("b", "2", phase="Succeeded"),
            running("b", "1", experiment="mine"), {"spec": {}, "status": {"phase": "Pending"}}]
    assert jobs.held_by_others(pods, "mine") == {"a": {"pods": 2, "cpu": Decimal("1.5")}}

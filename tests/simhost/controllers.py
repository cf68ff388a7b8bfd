"""The control loop of a simulated cluster: scheduler, Job controller, garbage collector, pod deletion.

One thread wakes whenever the store changes (or a Job's timer is due) and, holding the store's lock,
binds pending pods to nodes, reconciles Jobs, deletes the dependents of deleted owners, and hands pods
bound to this node to the kubelet and pods bound to a Liqo virtual node to that node's virtual kubelet.
Standard library only (the node-container process runs with ``python -S``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tests.simhost import quantity
from tests.simhost.apimodel import JOBS, NODES, PODS, Obj, matches, rfc3339
from tests.simhost.jobs import CONTROLLER_UID, JobController
from tests.simhost.kubelet import TERMINAL, Kubelet, set_condition

if TYPE_CHECKING:
    from tests.simhost.apistore import Store

VIRTUAL_NODE_LABEL = "liqo.io/type"


def tolerates(pod: Obj, taint: Obj) -> bool:
    """Return True when one of the pod's tolerations tolerates ``taint``."""
    for toleration in (pod.get("spec") or {}).get("tolerations") or []:
        if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
            continue
        key, op = toleration.get("key", ""), toleration.get("operator", "Equal")
        if op == "Exists" and (not key or key == taint.get("key")):
            return True
        if op == "Equal" and key == taint.get("key") and toleration.get("value", "") == taint.get("value", ""):
            return True
    return False


def node_ready(node: Obj) -> bool:
    """Return True when the node's Ready condition is True."""
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node.get("status", {}).get("conditions", []))


class Controllers:
    """The scheduler, the Job controller and the garbage collector, run by one thread of the node."""

    def __init__(self, store: Store, kubelet: Kubelet, virtual: Callable[[str], Any], backoff: float,
                 log: Callable[[str], None]) -> None:
        self.store = store
        self.kubelet = kubelet
        self.virtual = virtual  # node name -> its virtual kubelet (or None when the node is not virtual)
        self.jobs = JobController(store, backoff)
        self.log = log
        self.seen = -1
        self.unschedulable: dict[str, str] = {}
        self.thread = threading.Thread(target=self.loop, daemon=True, name="controllers")

    def start(self) -> None:
        """Start the control loop."""
        self.thread.start()

    def loop(self) -> None:
        """Reconcile whenever the store changes, or when a Job's timer is due."""
        wake: float | None = None
        while True:
            with self.store.lock:
                while self.store.revision == self.seen and not self.store.closed:
                    timeout = 5.0 if wake is None else max(0.0, wake - time.monotonic())
                    if timeout <= 0:
                        break
                    self.store.wait(min(timeout, 5.0))
                if self.store.closed:
                    return
                self.seen = self.store.revision
                try:
                    due = self.reconcile()
                except Exception as exc:  # a bug here must show in the node log, not stop the cluster
                    self.log(f"controllers: reconcile failed: {exc!r}")
                    due = 1.0
                wake = None if due is None else time.monotonic() + due

    def reconcile(self) -> float | None:
        """One pass over everything (the store's lock is held)."""
        self.collect_garbage()
        pods = self.store.select(PODS)
        by_owner: dict[str, list[Obj]] = {}
        for pod in pods:
            owner = (pod["metadata"].get("labels") or {}).get(CONTROLLER_UID)
            if owner is not None and pod["metadata"].get("ownerReferences"):
                by_owner.setdefault(owner, []).append(pod)
        due = self.jobs.reconcile(by_owner, self.delete_pod)
        self.schedule()
        for pod in self.store.select(PODS):
            node = (pod.get("spec") or {}).get("nodeName")
            if not node or pod["status"].get("phase") != "Pending" or pod["status"].get("containerStatuses"):
                continue
            if node == self.kubelet.node_name and not self.kubelet.lost:
                self.kubelet.start(pod)
            else:
                runner = self.virtual(node)
                if runner is not None:
                    runner.start(pod)
        return due

    # -- deletion ----------------------------------------------------------------------------------------

    def delete_pod(self, pod: Obj, grace: float | None) -> None:
        """Delete a pod gracefully: mark it, let its kubelet stop it, remove it once it stopped."""
        meta = pod["metadata"]
        current = self.store.get(PODS, meta["namespace"], meta["name"])
        if current is None or current["metadata"]["uid"] != meta["uid"]:
            return
        if grace is None:
            grace = float(current["spec"].get("terminationGracePeriodSeconds", 30))
        if current["metadata"].get("deletionTimestamp") and grace > 0:
            return
        phase = current["status"].get("phase")
        node = current["spec"].get("nodeName")
        local = node == self.kubelet.node_name
        # A pod offloaded to a provider goes when the provider's copy is gone, ended or not (Liqo's reflection).
        offloaded = bool(node) and not local and self.virtual(node) is not None
        if (phase in TERMINAL and not offloaded) or not node or current["status"].get("reason") == "NodeLost":
            self.store.remove(PODS, meta["namespace"], meta["name"])
            if node == self.kubelet.node_name:
                self.kubelet.remove_files(current)
            return

        def mark(obj: Obj) -> None:
            obj["metadata"]["deletionTimestamp"] = rfc3339(time.time() + grace)
            obj["metadata"]["deletionGracePeriodSeconds"] = int(grace)

        stored = self.store.update(PODS, meta["namespace"], meta["name"], mark) or current
        runner = self.kubelet if local else self.virtual(node)
        if runner is None or not runner.stop(stored, grace):
            self.store.remove(PODS, meta["namespace"], meta["name"])

    def collect_garbage(self) -> None:
        """Delete the pods whose owning Job is gone (background) or being deleted in the foreground."""
        jobs = {job["metadata"]["uid"]: job for job in self.store.select(JOBS)}
        for pod in self.store.select(PODS):
            refs = pod["metadata"].get("ownerReferences") or []
            owner = next((r for r in refs if r.get("kind") == "Job"), None)
            if owner is None:
                continue
            job = jobs.get(owner["uid"])
            if job is None or "foregroundDeletion" in (job["metadata"].get("finalizers") or []):
                self.delete_pod(pod, None)
        for job in jobs.values():
            meta = job["metadata"]
            if "foregroundDeletion" not in (meta.get("finalizers") or []):
                continue
            if not any(r.get("uid") == meta["uid"] for pod in self.store.select(PODS, meta["namespace"])
                       for r in pod["metadata"].get("ownerReferences") or []):
                self.store.remove(JOBS, meta["namespace"], meta["name"])

    # -- scheduling --------------------------------------------------------------------------------------

    def schedule(self) -> None:
        """Bind every pending pod without a node to the best node it fits on; explain the others."""
        pending = [p for p in self.store.select(PODS) if not p["spec"].get("nodeName")
                   and p["status"].get("phase") == "Pending" and not p["metadata"].get("deletionTimestamp")]
        if not pending:
            return
        nodes = sorted(self.store.select(NODES), key=lambda n: n["metadata"]["name"])
        pods = [p for p in self.store.select(PODS) if p["spec"].get("nodeName")
                and p["status"].get("phase") not in TERMINAL]
        for pod in sorted(pending, key=lambda p: p["metadata"]["creationTimestamp"]):
            meta = pod["metadata"]
            reasons: dict[str, int] = {}
            fits = []
            for node in nodes:
                why = self.unfit(pod, node, pods, nodes)
                if why:
                    reasons[why] = reasons.get(why, 0) + 1
                else:
                    fits.append(node)
            if not fits:
                message = f"0/{len(nodes)} nodes are available: " + ", ".join(
                    f"{count} {why}" for why, count in sorted(reasons.items())) + \
                    ". preemption: 0/{0} nodes are available: {0} Preemption is not helpful for scheduling.".format(
                        len(nodes))
                if self.unschedulable.get(meta["uid"]) != message:
                    self.unschedulable[meta["uid"]] = message
                    now = rfc3339()

                    def unschedulable(obj: Obj, m: str = message, t: str = now) -> None:
                        set_condition(obj["status"], "PodScheduled", "False", t, "Unschedulable", m)

                    self.store.update(PODS, meta["namespace"], meta["name"], unschedulable)
                continue
            owner = (meta.get("labels") or {}).get(CONTROLLER_UID)

            def score(node: Obj, owner: str | None = owner) -> tuple[int, int, str]:
                here = [p for p in pods if p["spec"]["nodeName"] == node["metadata"]["name"]]
                siblings = sum(1 for p in here if owner and (p["metadata"].get("labels") or {}).get(
                    CONTROLLER_UID) == owner)
                return siblings, len(here), node["metadata"]["name"]

            chosen = min(fits, key=score)["metadata"]["name"]
            self.unschedulable.pop(meta["uid"], None)
            now = rfc3339()

            def bind(obj: Obj, node: str = chosen, t: str = now) -> None:
                obj["spec"]["nodeName"] = node
                set_condition(obj["status"], "PodScheduled", "True", t)

            bound = self.store.update(PODS, meta["namespace"], meta["name"], bind)
            if bound is not None:
                pods.append(bound)

    def unfit(self, pod: Obj, node: Obj, pods: list[Obj], nodes: list[Obj]) -> str:
        """Return why ``pod`` cannot go to ``node`` (as the scheduler words it), or "" when it fits."""
        name = node["metadata"]["name"]
        labels = node["metadata"].get("labels") or {}
        spec = pod["spec"]
        if node.get("spec", {}).get("unschedulable"):
            return "node(s) were unschedulable"
        for taint in node.get("spec", {}).get("taints") or []:
            if taint.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(pod, taint):
                value = f": {taint['value']}" if taint.get("value") else ""
                return f"node(s) had untolerated taint {{{taint['key']}{value}}}"
        if not node_ready(node):
            return "node(s) were not ready"
        selector = spec.get("nodeSelector") or {}
        if any(labels.get(k) != v for k, v in selector.items()):
            return "node(s) didn't match Pod's node affinity/selector"
        cpu, memory = quantity.requests(pod)
        here = [p for p in pods if p["spec"]["nodeName"] == name]
        allocatable = node.get("status", {}).get("allocatable") or {}
        if cpu and cpu + sum(quantity.requests(p)[0] for p in here) > quantity.parse(allocatable.get("cpu", "0")):
            return "Insufficient cpu"
        if memory and memory + sum(quantity.requests(p)[1] for p in here) > quantity.parse(
                allocatable.get("memory", "0")):
            return "Insufficient memory"
        if len(here) + 1 > int(allocatable.get("pods", "110")):
            return "Too many pods"
        for constraint in spec.get("topologySpreadConstraints") or []:
            if constraint.get("whenUnsatisfiable", "DoNotSchedule") != "DoNotSchedule":
                continue
            terms = [(k, "=", v) for k, v in ((constraint.get("labelSelector") or {}).get("matchLabels") or {}).items()]
            eligible = [n for n in nodes if node_ready(n) and not any(
                t.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(pod, t)
                for t in n.get("spec", {}).get("taints") or [])]
            counts = {n["metadata"]["name"]: 0 for n in eligible}
            for other in pods:
                if other["spec"]["nodeName"] in counts and matches(other["metadata"].get("labels") or {}, terms):
                    counts[other["spec"]["nodeName"]] += 1
            if counts and counts.get(name, 0) + 1 - min(counts.values()) > int(constraint.get("maxSkew", 1)):
                return "node(s) didn't match pod topology spread constraints"
        return ""

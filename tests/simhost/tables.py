"""Table answers (``Accept: application/json;as=Table;g=meta.k8s.io;v=v1``) for ``kubectl get``.

The columns are the API server's for nodes, pods, jobs and services (wide ones at priority 1), NAME and
AGE for the rest. Standard library only (the node-container process runs with ``python -S``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tests.simhost.apimodel import Obj, Resource, parse_time

Column = tuple[str, str, int, Callable[[Obj], Any]]  # name, type, priority, cell


def age(obj: Obj) -> str:
    """Return an object's age as kubectl shows it (``5s``, ``3m2s``, ``4h``, ``2d``)."""
    created = obj["metadata"].get("creationTimestamp")
    if not created:
        return "<unknown>"
    return duration(time.time() - parse_time(created))


def duration(seconds: float) -> str:
    """Format a duration like Kubernetes' HumanDuration."""
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    return f"{hours}h" if hours < 48 else f"{hours // 24}d"


def _ready(node: Obj) -> str:
    ready = next((c for c in node.get("status", {}).get("conditions", []) if c["type"] == "Ready"), None)
    text = "Ready" if ready and ready["status"] == "True" else "NotReady"
    return text + (",SchedulingDisabled" if node.get("spec", {}).get("unschedulable") else "")


def _roles(node: Obj) -> str:
    labels = node["metadata"].get("labels") or {}
    roles = [k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/")]
    role = (node["metadata"].get("labels") or {}).get("kubernetes.io/role")
    return ",".join(sorted(roles + ([role] if role else []))) or "<none>"


def _address(node: Obj, kind: str) -> str:
    return next((a["address"] for a in node.get("status", {}).get("addresses", []) if a["type"] == kind), "<none>")


def _pod_status(pod: Obj) -> str:
    status = pod.get("status") or {}
    if pod["metadata"].get("deletionTimestamp"):
        return "Terminating"
    if status.get("reason"):
        return str(status["reason"])
    for entry in status.get("containerStatuses") or []:
        state = entry.get("state") or {}
        if "waiting" in state:
            return str(state["waiting"].get("reason", "Waiting"))
        if "terminated" in state and status.get("phase") not in ("Succeeded",):
            return str(state["terminated"].get("reason") or "Error")
    if status.get("phase") == "Succeeded":
        return "Completed"
    return str(status.get("phase", "Unknown"))


def _pod_ready(pod: Obj) -> str:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return f"{sum(1 for s in statuses if s.get('ready'))}/{len(pod['spec']['containers'])}"


def _job_status(job: Obj) -> str:
    conditions = {c["type"] for c in (job.get("status") or {}).get("conditions") or [] if c["status"] == "True"}
    for kind in ("Complete", "Failed", "FailureTarget", "SuccessCriteriaMet"):
        if kind in conditions:
            return {"FailureTarget": "FailureTarget", "SuccessCriteriaMet": "SuccessCriteriaMet"}.get(kind, kind)
    return "Running"


def _job_duration(job: Obj) -> str:
    status = job.get("status") or {}
    if not status.get("startTime"):
        return ""
    end = parse_time(status["completionTime"]) if status.get("completionTime") else time.time()
    return duration(end - parse_time(status["startTime"]))


def _ports(service: Obj) -> str:
    parts = []
    for port in service["spec"].get("ports") or []:
        node = f":{port['nodePort']}" if port.get("nodePort") else ""
        parts.append(f"{port['port']}{node}/{port.get('protocol', 'TCP')}")
    return ",".join(parts) or "<none>"


COLUMNS: dict[str, list[Column]] = {
    "nodes": [("Name", "string", 0, lambda o: o["metadata"]["name"]), ("Status", "string", 0, _ready),
              ("Roles", "string", 0, _roles), ("Age", "string", 0, age),
              ("Version", "string", 0, lambda o: o.get("status", {}).get("nodeInfo", {}).get("kubeletVersion", "")),
              ("Internal-IP", "string", 1, lambda o: _address(o, "InternalIP")),
              ("External-IP", "string", 1, lambda o: _address(o, "ExternalIP")),
              ("OS-Image", "string", 1, lambda o: o.get("status", {}).get("nodeInfo", {}).get("osImage", "")),
              ("Kernel-Version", "string", 1, lambda o: o.get("status", {}).get("nodeInfo", {}).get(
                  "kernelVersion", "")),
              ("Container-Runtime", "string", 1, lambda o: o.get("status", {}).get("nodeInfo", {}).get(
                  "containerRuntimeVersion", ""))],
    "pods": [("Name", "string", 0, lambda o: o["metadata"]["name"]), ("Ready", "string", 0, _pod_ready),
             ("Status", "string", 0, _pod_status),
             ("Restarts", "string", 0, lambda o: str(sum(s.get("restartCount", 0) for s in (o.get("status") or {})
                                                         .get("containerStatuses") or []))),
             ("Age", "string", 0, age),
             ("IP", "string", 1, lambda o: (o.get("status") or {}).get("podIP") or "<none>"),
             ("Node", "string", 1, lambda o: o["spec"].get("nodeName") or "<none>"),
             ("Nominated Node", "string", 1, lambda o: "<none>"),
             ("Readiness Gates", "string", 1, lambda o: "<none>")],
    "jobs": [("Name", "string", 0, lambda o: o["metadata"]["name"]), ("Status", "string", 0, _job_status),
             ("Completions", "string", 0, lambda o: f"{(o.get('status') or {}).get('succeeded', 0)}/"
              f"{o['spec'].get('completions') or 1}"),
             ("Duration", "string", 0, _job_duration), ("Age", "string", 0, age),
             ("Containers", "string", 1, lambda o: ",".join(c["name"] for c in o["spec"]["template"]["spec"][
                 "containers"])),
             ("Images", "string", 1, lambda o: ",".join(c.get("image", "") for c in o["spec"]["template"]["spec"][
                 "containers"])),
             ("Selector", "string", 1, lambda o: ",".join(f"{k}={v}" for k, v in o["spec"]["selector"][
                 "matchLabels"].items()))],
    "services": [("Name", "string", 0, lambda o: o["metadata"]["name"]),
                 ("Type", "string", 0, lambda o: o["spec"].get("type", "ClusterIP")),
                 ("Cluster-IP", "string", 0, lambda o: o["spec"].get("clusterIP", "")),
                 ("External-IP", "string", 0, lambda o: "<none>"), ("Port(s)", "string", 0, _ports),
                 ("Age", "string", 0, age),
                 ("Selector", "string", 1, lambda o: ",".join(f"{k}={v}" for k, v in (o["spec"].get("selector")
                                                                                      or {}).items()) or "<none>")],
}
DEFAULT: list[Column] = [("Name", "string", 0, lambda o: o["metadata"]["name"]), ("Age", "string", 0, age)]


def convert(res: Resource, obj: Obj, accept: str, query: dict[str, list[str]]) -> Obj:
    """Return ``obj`` (an object or a list) as a Table when the client asks for one, else unchanged."""
    if "as=Table" not in accept:
        return obj
    columns = COLUMNS.get(res.plural, DEFAULT)
    items = obj.get("items", [obj])
    full = query.get("includeObject", ["Metadata"])[0] == "Object"
    rows = []
    for item in items:
        shown = item if full else {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                   "metadata": item["metadata"]}
        rows.append({"cells": [cell(item) for _, _, _, cell in columns], "object": shown})
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": (obj.get("metadata") or {}).get("resourceVersion", "")},
            "columnDefinitions": [{"name": name, "type": kind, "format": "name" if name == "Name" else "",
                                   "description": "", "priority": priority} for name, kind, priority, _ in columns],
            "rows": rows}

"""One simulated cluster: its objects, its controllers and kubelet, and the API requests it answers.

What the API models: create/get/list/watch/delete of namespaces, nodes, serviceaccounts, configmaps,
secrets, pods (``log`` subresource), services, batch/v1 jobs, clusterroles and clusterrolebindings, the
ServiceAccount ``token`` subresource, label and field selectors, deletion propagation and grace periods,
Table answers for kubectl. Anything else gets a Kubernetes ``Status`` saying so (404, 405, 400, 415 or 501),
never a silent success. Standard library only (the node-container process runs with ``python -S``).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.simhost import discovery, podlogs, protobuf, tables
from tests.simhost.apimodel import (
    CLUSTERROLEBINDINGS,
    DNS_LABEL,
    DNS_SUBDOMAIN,
    JOBS,
    NAMESPACES,
    NODES,
    PODS,
    RBAC,
    RESOURCES,
    SERVICEACCOUNTS,
    SERVICES,
    ApiError,
    Obj,
    Resource,
    details,
    invalid,
    not_found,
    not_modelled,
    parse_field_selector,
    parse_route,
    parse_selector,
    rfc3339,
)
from tests.simhost.apistore import Store
from tests.simhost.auth import SUPERUSERS, Auth, User, check_binding, token_fault
from tests.simhost.controllers import Controllers
from tests.simhost.fields import unknown_fields
from tests.simhost.jobs import admit_job, admit_pod
from tests.simhost.kubelet import Kubelet
from tests.simhost.services import admit_service
from tests.simhost.vkubelet import VirtualKubelet, connect

PROTECTED_NAMESPACES = frozenset({"default", "kube-system", "kube-public"})
# query parameters whose meaning the simulation honours, or which cannot change the answer of a small store
ALLOWED_QUERY = frozenset({"labelSelector", "fieldSelector", "limit", "continue", "pretty", "timeout",
                           "timeoutSeconds", "resourceVersion", "resourceVersionMatch", "watch",
                           "allowWatchBookmarks", "fieldManager", "fieldValidation", "gracePeriodSeconds",
                           "propagationPolicy", "includeObject", "sendInitialEvents", "hash"}) | podlogs.LOG_QUERY
WATCH_DEFAULT = 1800.0  # seconds a watch without timeoutSeconds lasts (kube-apiserver's --min-request-timeout)
JOB_WARNING = ('299 - "child pods are preserved by default when jobs are deleted; set propagationPolicy=Background '
               'to remove them or set propagationPolicy=Orphan to suppress this warning"')


@dataclass
class Reply:
    """An answer: a status code and a JSON object, a text, or a stream of bytes (watch, followed log)."""

    code: int
    body: Obj | str | Iterator[bytes]
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


def control_plane_node(spec: Obj) -> Obj:
    """Return the Node object of a kind control-plane node as its kubelet registers it."""
    name = spec["node_name"]
    now = rfc3339()
    version = spec["kubernetes_version"]
    conditions = [{"type": kind, "status": "False", "reason": reason, "message": message,
                   "lastHeartbeatTime": now, "lastTransitionTime": now}
                  for kind, reason, message in (
                      ("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                      ("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                      ("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"))]
    conditions.append({"type": "Ready", "status": "True", "reason": "KubeletReady",
                       "message": "kubelet is posting ready status", "lastHeartbeatTime": now,
                       "lastTransitionTime": now})
    resources = {"cpu": str(spec.get("node_cpu") or os.cpu_count() or 1), "memory": spec.get("node_memory")
                 or "8024960Ki", "pods": "110", "ephemeral-storage": "102626232Ki", "hugepages-2Mi": "0"}
    labels = {"beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
              "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
              "node-role.kubernetes.io/control-plane": "",
              "node.kubernetes.io/exclude-from-external-load-balancers": ""}
    labels |= spec.get("node_labels", {})
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"],
                 "providerID": f"kind://nerdctl/{spec['cluster']}/{name}"},
        "status": {
            "conditions": conditions,
            "addresses": [{"type": "InternalIP", "address": "172.18.0.2"}, {"type": "Hostname", "address": name}],
            "capacity": resources, "allocatable": resources,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {"architecture": "amd64", "bootID": str(uuid.uuid4()),
                         "containerRuntimeVersion": "containerd://2.0.2", "kernelVersion": os.uname().release,
                         "kubeProxyVersion": version, "kubeletVersion": version, "machineID": uuid.uuid4().hex,
                         "operatingSystem": "linux", "osImage": "Debian GNU/Linux 12 (bookworm)",
                         "systemUUID": str(uuid.uuid4())},
        },
    }


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return query.get(name, ["false"])[0].lower() in ("1", "t", "true")


def orphan(obj: Obj, owner: str) -> None:
    """Drop the owner reference to ``owner`` from an object (deletion with propagationPolicy Orphan)."""
    obj["metadata"]["ownerReferences"] = [r for r in obj["metadata"]["ownerReferences"] if r.get("uid") != owner]


def _json_object(body: bytes) -> Obj:
    try:
        obj = json.loads(body or b"{}")
    except ValueError as exc:
        raise ApiError(400, "BadRequest", f"the request body is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ApiError(400, "BadRequest", "the request body is not a JSON object")
    return obj


class Cluster:
    """The state of one simulated cluster (its etcd, in memory: it dies with the node container)."""

    def __init__(self, spec: Obj, cdir: Path | None = None, mounts: list[Obj] | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.spec = spec
        self.log = log or (lambda line: None)
        self.store = Store()
        self.lock = self.store.lock
        self.auth = Auth(self.store, int(spec.get("min_token_seconds", 600)))
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.create(NAMESPACES, None, {"metadata": {"name": ns}})
        self.create(NODES, None, control_plane_node(spec))
        self.create(RESOURCES[RBAC, "clusterroles"], None, {
            "metadata": {"name": "cluster-admin", "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
            "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                      {"nonResourceURLs": ["*"], "verbs": ["*"]}]})
        for binding, group in (("cluster-admin", SUPERUSERS), ("kubeadm:cluster-admins", "kubeadm:cluster-admins")):
            self.create(CLUSTERROLEBINDINGS, None, {
                "metadata": {"name": binding},
                "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "cluster-admin"},
                "subjects": [{"apiGroup": RBAC, "kind": "Group", "name": group}]})
        workdir = cdir or Path(f"/tmp/ksi-sim-cluster-{os.getpid()}")
        self.kubelet = Kubelet(self.store, spec["node_name"], workdir, mounts or [], self.log)
        self.virtuals: dict[str, VirtualKubelet | None] = {}
        self.controllers = Controllers(self.store, self.kubelet, self.virtual, float(spec.get("job_backoff", 10)),
                                       self.log)
        self.controllers.start()

    def virtual(self, node: str) -> VirtualKubelet | None:
        """Return the virtual kubelet of a Liqo virtual node (None for other nodes, or without an identity)."""
        if self.virtuals.get(node) is None:
            self.virtuals[node] = connect(self.store, node, self.log)
        return self.virtuals[node]

    # -- objects ---------------------------------------------------------------------------------------

    def create(self, res: Resource, namespace: str | None, obj: Obj) -> Obj:
        """Validate, default and store a new object, as the API server's create does."""
        with self.lock:
            meta = obj.setdefault("metadata", {})
            if obj.get("kind") not in (None, res.kind):
                raise ApiError(400, "BadRequest", f"the kind of the provided object ({obj.get('kind')}) does not "
                               f"match the resource {res.qualified}")
            name = meta.get("name") or ""
            if not name and meta.get("generateName"):
                from tests.simhost.jobs import suffix

                name = meta["generateName"] + suffix()
            if not name:
                raise invalid(res, "", "metadata.name", "Required value: name or generateName is required")
            pattern = DNS_LABEL if res.plural in ("namespaces", "services") else DNS_SUBDOMAIN
            if res.group == RBAC:  # RBAC names are path segments: "kubeadm:cluster-admins" is fine
                valid = name not in (".", "..") and "/" not in name and "%" not in name
            else:
                valid = len(name) <= (63 if pattern is DNS_LABEL else 253) and bool(pattern.match(name))
            if not valid:
                raise invalid(res, name, "metadata.name", f'Invalid value: "{name}": a lowercase RFC 1123 name '
                              "must consist of lower case alphanumeric characters, '-' or '.'")
            if res.namespaced:
                if meta.get("namespace") not in (None, "", namespace):
                    raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the "
                                   "namespace sent on the request")
                if self.store.get(NAMESPACES, None, str(namespace)) is None:
                    raise not_found(NAMESPACES, str(namespace))
            if self.store.get(res, namespace, name) is not None:
                raise ApiError(409, "AlreadyExists", f'{res.qualified} "{name}" already exists', details(res, name))
            meta["name"] = name
            for key in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp", "generation"):
                meta.pop(key, None)
            if res.namespaced:
                meta["namespace"] = namespace
            if res is CLUSTERROLEBINDINGS:
                check_binding(name, obj)
            elif res is JOBS:
                admit_job(obj)
                meta["generation"] = 1
            elif res is PODS:
                admit_pod(obj)
            elif res is SERVICES:
                admit_service(self.store, obj)
            elif res is NAMESPACES:
                meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
                obj["spec"] = {"finalizers": ["kubernetes"]}
                obj["status"] = {"phase": "Active"}
            elif res.plural == "secrets":
                obj.setdefault("type", "Opaque")
            obj["kind"], obj["apiVersion"] = res.kind, res.api_version
            stored = self.store.put(res, obj, "ADDED")
            if res is NAMESPACES:  # the ServiceAccount controller's job, done at once
                self.create(SERVICEACCOUNTS, name, {"metadata": {"name": "default"}})
            return stored

    def delete(self, res: Resource, namespace: str | None, name: str, options: Obj) -> Reply:
        """Delete an object as the API server does: grace periods for pods, propagation for owners."""
        with self.lock:
            current = self.store.require(res, namespace, name)
            success = Reply(200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                  "details": details(res, name) | {"uid": current["metadata"]["uid"]}})
            if res is PODS:
                grace = options.get("gracePeriodSeconds")
                self.controllers.delete_pod(current, None if grace is None else float(grace))
                return Reply(200, self.store.get(PODS, namespace, name) or current)
            if res is JOBS:
                policy = options.get("propagationPolicy")
                if policy not in (None, "Orphan", "Background", "Foreground"):
                    raise ApiError(422, "Invalid", f'DeleteOptions.meta.k8s.io "" is invalid: propagationPolicy: '
                                   f'Unsupported value: "{policy}": supported values: "Foreground", "Background", '
                                   '"Orphan"')
                if policy == "Foreground":
                    def finalize(obj: Obj) -> None:
                        obj["metadata"]["deletionTimestamp"] = rfc3339()
                        obj["metadata"]["deletionGracePeriodSeconds"] = 0
                        obj["metadata"]["finalizers"] = [*obj["metadata"].get("finalizers", []), "foregroundDeletion"]

                    return Reply(200, self.store.update(JOBS, namespace, name, finalize) or current)
                if policy in (None, "Orphan"):
                    uid = current["metadata"]["uid"]
                    for pod in self.store.select(PODS, namespace):
                        if any(r.get("uid") == uid for r in pod["metadata"].get("ownerReferences") or []):
                            self.store.update(PODS, namespace, pod["metadata"]["name"], lambda obj: orphan(obj, uid))
                self.store.remove(res, namespace, name)  # Background: the garbage collector deletes the pods
                if policy is None:
                    success.headers.append(("Warning", JOB_WARNING))
                return success
            if res is NAMESPACES:
                if name in PROTECTED_NAMESPACES:
                    raise ApiError(403, "Forbidden", f'namespaces "{name}" is forbidden: this namespace may not be '
                                   "deleted", details(res, name))
                for pod in self.store.select(PODS, name):
                    self.controllers.delete_pod(pod, 0.0)
                for key in [k for k in self.store.objects if k[1] == name and k[0] != PODS.qualified]:
                    self.store.remove(next(r for r in RESOURCES.values() if r.qualified == key[0]), name, key[2])
            self.store.remove(res, namespace, name)
            return success

    # -- requests ------------------------------------------------------------------------------------------

    def handle(self, method: str, target: str, user: User, body: bytes, content_type: str,
               accept: str = "application/json") -> Reply:
        """Serve one request as ``user``."""
        url = urlsplit(target)
        path = url.path.rstrip("/") or "/"
        query = parse_qs(url.query, keep_blank_values=True)
        unknown = sorted(set(query) - ALLOWED_QUERY)
        if unknown:
            raise ApiError(400, "BadRequest", "the simulated API server does not model query parameter(s) "
                           + ", ".join(unknown))
        if body and "protobuf" in content_type:
            body = protobuf.to_json(body)
        elif body and content_type.split(";", maxsplit=1)[0].strip() not in ("", "application/json"):
            raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - "
                           f"accepted media types include: application/json, application/vnd.kubernetes.protobuf "
                           f"(got {content_type})")
        route = parse_route(path)
        if route is None:
            if method != "GET":
                raise ApiError(405, "MethodNotAllowed", f"{method} {path} is not allowed")
            self.auth.authorize_path(user, path)
            code, payload = discovery.answer(path, self.spec["kubernetes_version"])
            return Reply(code, payload, "text/plain; charset=utf-8" if isinstance(payload, str) else
                         "application/json")
        watching = _flag(query, "watch")
        verb = {"GET": "watch" if watching else "get" if route.name else "list", "POST": "create",
                "DELETE": "delete", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())
        self.auth.authorize(user, verb, route)
        res = RESOURCES.get((route.group, route.plural))
        if res is None or (route.namespace is not None and not res.namespaced):
            raise ApiError(404, "NotFound", "the server could not find the requested resource", {})
        if route.sub == "token":
            token_fault()  # outside the lock: a slow TokenRequest must not stall other requests
        if method == "GET" and route.sub == "log" and res is PODS and route.name:
            with self.lock:
                pod = self.store.require(PODS, route.namespace, route.name)
                node = pod["spec"].get("nodeName") or ""
                remote = None if node == self.kubelet.node_name else self.virtual(node)
            chunks = podlogs.stream(self.store, pod, query, self.kubelet.log_path, remote)
            return Reply(200, chunks, "text/plain")
        if method == "GET" and route.name is None and watching:
            return self._watch(res, route.namespace, query)
        with self.lock:
            if route.sub is not None:
                if (res.plural, route.sub, method) == ("serviceaccounts", "token", "POST") and route.name:
                    spec = _json_object(body).get("spec") or {}
                    return Reply(201, self.auth.token_request(str(route.namespace), route.name, spec))
                if route.sub == "status" and method == "GET" and route.name and res in (PODS, JOBS):
                    return Reply(200, self.store.require(res, route.namespace, route.name))
                raise ApiError(404, "NotFound", "the server could not find the requested resource", {})
            if method == "GET" and route.name is None:
                labels = parse_selector(query.get("labelSelector", [""])[0])
                fields = parse_field_selector(res, query.get("fieldSelector", [""])[0])
                items = sorted(self.store.select(res, route.namespace, labels, fields),
                               key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
                listing = {"kind": f"{res.kind}List", "apiVersion": res.api_version,
                           "metadata": {"resourceVersion": str(self.store.revision)}, "items": items}
                return Reply(200, tables.convert(res, listing, accept, query))
            if res.namespaced and route.namespace is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource", {})
            if method == "GET":
                found = self.store.require(res, route.namespace, str(route.name))
                return Reply(200, tables.convert(res, found, accept, query))
            if method == "POST" and route.name is None:
                if query.get("dryRun"):
                    raise not_modelled("dryRun")
                obj = _json_object(body)
                unknown = unknown_fields(res.kind, obj)
                validation = query.get("fieldValidation", ["Warn"])[0]
                if unknown and validation == "Strict":
                    raise ApiError(400, "BadRequest", "strict decoding error: " + ", ".join(
                        f'unknown field "{u}"' for u in unknown))
                reply = Reply(201, self.create(res, route.namespace, obj))
                if validation == "Warn":
                    reply.headers += [("Warning", f'299 - "unknown field \\"{u}\\""') for u in unknown]
                return reply
            if method == "DELETE" and route.name is not None:
                options = _json_object(body) if body else {}
                for key in ("propagationPolicy", "gracePeriodSeconds"):
                    if key in query:
                        options[key] = query[key][0] if key == "propagationPolicy" else int(query[key][0])
                if options.get("dryRun"):
                    raise not_modelled("dryRun")
                return self.delete(res, route.namespace, route.name, options)
        raise ApiError(405, "MethodNotAllowed", f"the simulated API server does not model {method} on "
                       f"{res.qualified}" + (" collections" if route.name is None else ""))

    def _watch(self, res: Resource, namespace: str | None, query: dict[str, list[str]]) -> Reply:
        """Start a watch: events as JSON lines, from ``resourceVersion`` on, until ``timeoutSeconds``."""
        if _flag(query, "sendInitialEvents"):
            raise not_modelled("sendInitialEvents (watch lists)")
        labels = parse_selector(query.get("labelSelector", [""])[0])
        fields = parse_field_selector(res, query.get("fieldSelector", [""])[0])
        seconds = float(query["timeoutSeconds"][0]) if "timeoutSeconds" in query else WATCH_DEFAULT
        events = self.store.watch(res, namespace, labels, fields, query.get("resourceVersion", [""])[0],
                                  time.monotonic() + seconds)
        return Reply(200, events, "application/json")

    def close(self) -> None:
        """Stop the controllers (the node container is going away)."""
        self.store.close()


__all__ = ["Any", "Cluster", "Reply"]

"""The Kubernetes API a simulated node container serves: JSON over HTTPS, a few resources, real authn/authz.

Standard library only (the node-container process runs with ``python -S``). What it models:
- authentication: client certificates verified against the cluster CA, bearer tokens issued by TokenRequest
  (valid while unexpired and while their ServiceAccount exists), anonymous otherwise;
- authorization: system:masters is superuser; everyone else needs a ClusterRoleBinding to the ClusterRole
  ``cluster-admin`` naming them (User, Group or ServiceAccount); anonymous users get the public paths
  (/healthz, /livez, /readyz, /version), authenticated users also get discovery;
- create/get/list/delete of namespaces, nodes, serviceaccounts, configmaps, secrets, clusterroles and
  clusterrolebindings, and the ServiceAccount ``token`` subresource.
Anything else gets a Kubernetes ``Status`` saying so (404, 405, 400 or 415), never a silent success.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socket import socket
from typing import Any, TextIO
from urllib.parse import parse_qs, urlsplit

from tests.simhost.common import delay_or_fail

Obj = dict[str, Any]
RBAC = "rbac.authorization.k8s.io"
SUPERUSERS = "system:masters"
PUBLIC_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/version"})
PROTECTED_NAMESPACES = frozenset({"default", "kube-system", "kube-public"})
DEFAULT_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
# query parameters whose meaning the simulation honours, or which cannot change the answer of a small store
ALLOWED_QUERY = frozenset({"labelSelector", "limit", "pretty", "timeout", "timeoutSeconds", "resourceVersion",
                           "fieldManager", "fieldValidation", "gracePeriodSeconds", "propagationPolicy"})
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class Resource:
    """A resource type the simulated API server stores."""

    plural: str
    singular: str
    kind: str
    namespaced: bool
    group: str = ""
    short_names: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        """Return ``v1`` or ``<group>/v1``."""
        return f"{self.group}/v1" if self.group else "v1"

    @property
    def qualified(self) -> str:
        """Return the name used in error messages: ``configmaps`` or ``clusterroles.rbac.authorization.k8s.io``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


RESOURCES = {(r.group, r.plural): r for r in [
    Resource("namespaces", "namespace", "Namespace", False, short_names=("ns",)),
    Resource("nodes", "node", "Node", False, short_names=("no",)),
    Resource("serviceaccounts", "serviceaccount", "ServiceAccount", True, short_names=("sa",)),
    Resource("configmaps", "configmap", "ConfigMap", True, short_names=("cm",)),
    Resource("secrets", "secret", "Secret", True),
    Resource("clusterroles", "clusterrole", "ClusterRole", False, RBAC),
    Resource("clusterrolebindings", "clusterrolebinding", "ClusterRoleBinding", False, RBAC),
]}
NAMESPACES = RESOURCES["", "namespaces"]
SERVICEACCOUNTS = RESOURCES["", "serviceaccounts"]
CLUSTERROLEBINDINGS = RESOURCES[RBAC, "clusterrolebindings"]


def rfc3339(moment: float | None = None) -> str:
    """Format a UTC time the way Kubernetes does in metadata (``2025-01-02T03:04:05Z``)."""
    return datetime.fromtimestamp(time.time() if moment is None else moment, UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def token_fault() -> None:
    """Apply KSI_SIM_FAULTS' api-token fault (inherited from `kind create`): slow, hang, or a 500."""
    if delay_or_fail("api-token"):  # hang blocks only this request's thread
        raise ApiError(500, "InternalError", "etcdserver: request timed out (simulated by KSI_SIM_FAULTS)")


class ApiError(Exception):
    """A failed request, rendered as a Kubernetes ``Status`` object."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> Obj:
        """Return the ``Status`` body."""
        body: Obj = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                     "message": self.message, "reason": self.reason, "code": self.code}
        if self.details is not None:
            body["details"] = self.details
        return body


def _details(res: Resource, name: str) -> Obj:
    details: Obj = {"name": name, "kind": res.plural}
    if res.group:
        details["group"] = res.group
    return details


def not_found(res: Resource, name: str) -> ApiError:
    """Return the 404 the real API server gives for a missing object."""
    return ApiError(404, "NotFound", f'{res.qualified} "{name}" not found', _details(res, name))


def invalid(res: Resource, name: str, field: str, problem: str) -> ApiError:
    """Return a 422 Invalid for one field of an object."""
    kind = f"{res.kind}.{res.group}" if res.group else res.kind
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {field}: {problem}',
                    _details(res, name) | {"causes": [{"field": field, "message": problem}]})


@dataclass(frozen=True)
class User:
    """An authenticated (or anonymous) user."""

    name: str
    groups: tuple[str, ...]
    service_account: tuple[str, str] | None = None  # (namespace, name)


ANONYMOUS = User("system:anonymous", ("system:unauthenticated",))


@dataclass(frozen=True)
class Token:
    """A bound service-account token issued by TokenRequest."""

    namespace: str
    name: str
    uid: str
    expires: float


@dataclass(frozen=True)
class Route:
    """Where a resource request points: group, plural, namespace, name, subresource."""

    group: str
    plural: str
    namespace: str | None
    name: str | None
    sub: str | None


def parse_route(path: str) -> Route | None:
    """Return the resource a path names, or None for a non-resource path (discovery, health, version)."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, rest = "", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, rest = parts[1], parts[3:]
    else:
        return None
    if not rest:
        return None
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    if len(rest) > 3:
        return Route(group, "/".join(rest), namespace, None, None)
    return Route(group, rest[0], namespace, rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else None)


def parse_selector(text: str) -> list[tuple[str, str, str]]:
    """Parse a label selector of ``k=v``, ``k==v``, ``k!=v``, ``k`` and ``!k`` terms (set syntax not modelled)."""
    terms = []
    for raw in filter(None, (t.strip() for t in text.split(","))):
        if " in " in raw or " notin " in raw or "(" in raw:
            raise ApiError(400, "BadRequest", f"the simulated API server does not model set-based selector {raw!r}")
        if "!=" in raw:
            key, value = raw.split("!=", 1)
            terms.append((key.strip(), "!=", value.strip()))
        elif "=" in raw:
            key, value = raw.replace("==", "=").split("=", 1)
            terms.append((key.strip(), "=", value.strip()))
        elif raw.startswith("!"):
            terms.append((raw[1:].strip(), "!", ""))
        else:
            terms.append((raw, "exists", ""))
    return terms


def matches(labels: dict[str, str], terms: list[tuple[str, str, str]]) -> bool:
    """Return True when ``labels`` satisfy every selector term."""
    for key, op, value in terms:
        if (op == "=" and labels.get(key) != value) or (op == "!=" and labels.get(key) == value) \
                or (op == "exists" and key not in labels) or (op == "!" and key in labels):
            return False
    return True


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Cluster:
    """The state of one simulated cluster (its etcd, in memory: it dies with the node container)."""

    def __init__(self, spec: Obj) -> None:
        self.spec = spec
        self.lock = threading.Lock()
        self.objects: dict[tuple[str, str, str], Obj] = {}  # (qualified resource, namespace or "", name)
        self.tokens: dict[str, Token] = {}
        self.revision = 0
        self.min_token_seconds = int(spec.get("min_token_seconds", 600))
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self._create(NAMESPACES, None, {"metadata": {"name": ns}})
        self._create(RESOURCES["", "nodes"], None, self._control_plane_node())
        self._create(RESOURCES[RBAC, "clusterroles"], None, {
            "metadata": {"name": "cluster-admin", "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
            "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                      {"nonResourceURLs": ["*"], "verbs": ["*"]}]})
        for binding, group in (("cluster-admin", SUPERUSERS), ("kubeadm:cluster-admins", "kubeadm:cluster-admins")):
            self._create(CLUSTERROLEBINDINGS, None, {
                "metadata": {"name": binding},
                "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "cluster-admin"},
                "subjects": [{"apiGroup": RBAC, "kind": "Group", "name": group}]})

    # -- objects ---------------------------------------------------------------------------------------

    def _control_plane_node(self) -> Obj:
        name = self.spec["node_name"]
        now = rfc3339()
        version = self.spec["kubernetes_version"]
        conditions = [{"type": kind, "status": "False", "reason": reason, "message": message,
                       "lastHeartbeatTime": now, "lastTransitionTime": now}
                      for kind, reason, message in (
                          ("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                          ("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                          ("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"))]
        conditions.append({"type": "Ready", "status": "True", "reason": "KubeletReady",
                           "message": "kubelet is posting ready status", "lastHeartbeatTime": now,
                           "lastTransitionTime": now})
        resources = {"cpu": str(os.cpu_count() or 1), "memory": "8024960Ki", "pods": "110",
                     "ephemeral-storage": "102626232Ki", "hugepages-2Mi": "0"}
        labels = {"beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                  "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                  "node-role.kubernetes.io/control-plane": "",
                  "node.kubernetes.io/exclude-from-external-load-balancers": ""}
        labels |= self.spec.get("node_labels", {})
        return {
            "metadata": {"name": name, "labels": labels},
            "spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"],
                     "providerID": f"kind://nerdctl/{self.spec['cluster']}/{name}"},
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

    def _key(self, res: Resource, namespace: str | None, name: str) -> tuple[str, str, str]:
        return (res.qualified, namespace or "", name)

    def _create(self, res: Resource, namespace: str | None, obj: Obj) -> Obj:
        meta = obj.setdefault("metadata", {})
        name = meta.get("name") or ""
        if not name and meta.get("generateName"):
            name = meta["generateName"] + secrets.token_hex(3)[:5]
        if not name:
            raise invalid(res, "", "metadata.name", "Required value: name or generateName is required")
        pattern = DNS_LABEL if res.plural == "namespaces" else DNS_SUBDOMAIN
        if res.group == RBAC:  # RBAC names are path segments: "kubeadm:cluster-admins" is fine
            valid = name not in (".", "..") and "/" not in name and "%" not in name
        else:
            valid = len(name) <= 253 and bool(pattern.match(name))
        if not valid:
            raise invalid(res, name, "metadata.name", f'Invalid value: "{name}": a lowercase RFC 1123 name must '
                          "consist of lower case alphanumeric characters, '-' or '.'")
        if res.namespaced:
            if meta.get("namespace") not in (None, "", namespace):
                raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the "
                               "namespace sent on the request")
            if self._key(NAMESPACES, None, str(namespace)) not in self.objects:
                raise not_found(NAMESPACES, str(namespace))
        key = self._key(res, namespace, name)
        if key in self.objects:
            raise ApiError(409, "AlreadyExists", f'{res.qualified} "{name}" already exists', _details(res, name))
        if res.plural == "clusterrolebindings":
            self._check_binding(name, obj)
        self.revision += 1
        meta.update(name=name, uid=str(uuid.uuid4()), resourceVersion=str(self.revision),
                    creationTimestamp=rfc3339())
        meta.pop("generateName", None)
        if res.namespaced:
            meta["namespace"] = namespace
        obj["kind"], obj["apiVersion"] = res.kind, res.api_version
        if res.plural == "namespaces":
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
            obj["spec"] = {"finalizers": ["kubernetes"]}
            obj["status"] = {"phase": "Active"}
        elif res.plural == "secrets":
            obj.setdefault("type", "Opaque")
        self.objects[key] = obj
        if res.plural == "namespaces":  # the ServiceAccount controller's job, done at once
            self._create(SERVICEACCOUNTS, name, {"metadata": {"name": "default"}})
        return obj

    def _check_binding(self, name: str, obj: Obj) -> None:
        ref = obj.get("roleRef")
        if not isinstance(ref, dict) or not ref.get("name") or ref.get("kind") not in ("ClusterRole",):
            raise invalid(CLUSTERROLEBINDINGS, name, "roleRef", "Required value: a ClusterRole roleRef is required")
        for i, subject in enumerate(obj.get("subjects") or []):
            kind = subject.get("kind")
            if kind not in ("User", "Group", "ServiceAccount") or not subject.get("name"):
                raise invalid(CLUSTERROLEBINDINGS, name, f"subjects[{i}]", f"Unsupported value: {kind!r}")
            if kind == "ServiceAccount" and not subject.get("namespace"):
                raise invalid(CLUSTERROLEBINDINGS, name, f"subjects[{i}].namespace", "Required value")

    # -- authentication and authorization ---------------------------------------------------------------

    def authenticate(self, authorization: str | None, peer: Obj | None) -> User:
        """Return the user a request comes from; raise 401 for a bearer token that is not (or no longer) valid."""
        if peer:  # verified against the cluster CA by the TLS layer
            subject = dict(item[0] for item in peer.get("subject", ()))
            orgs = tuple(v for rdn in peer.get("subject", ()) for k, v in rdn if k == "organizationName")
            return User(subject.get("commonName", ""), (*orgs, "system:authenticated"))
        if authorization is None:
            return ANONYMOUS
        scheme, _, value = authorization.partition(" ")
        with self.lock:
            token = self.tokens.get(value.strip()) if scheme.lower() == "bearer" else None
            account = token and self.objects.get(self._key(SERVICEACCOUNTS, token.namespace, token.name))
        if token is None or token.expires <= time.time() or not account \
                or account["metadata"]["uid"] != token.uid:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        return User(f"system:serviceaccount:{token.namespace}:{token.name}",
                    ("system:serviceaccounts", f"system:serviceaccounts:{token.namespace}", "system:authenticated"),
                    (token.namespace, token.name))

    def _is_cluster_admin(self, user: User) -> bool:
        if SUPERUSERS in user.groups:
            return True
        for (qualified, _, _), binding in self.objects.items():
            if qualified != CLUSTERROLEBINDINGS.qualified or binding["roleRef"]["name"] != "cluster-admin":
                continue
            for subject in binding.get("subjects") or []:
                kind, name = subject.get("kind"), subject.get("name")
                if (kind == "User" and name == user.name) or (kind == "Group" and name in user.groups) or (
                        kind == "ServiceAccount" and (subject.get("namespace"), name) == user.service_account):
                    return True
        return False

    def authorize_path(self, user: User, path: str) -> None:
        """Raise 403 unless ``user`` may GET the non-resource ``path``."""
        public = path in PUBLIC_PATHS or path.startswith(("/healthz/", "/livez/", "/readyz/"))
        discovery = path.startswith(("/api", "/openapi")) and "system:authenticated" in user.groups
        with self.lock:
            if public or discovery or self._is_cluster_admin(user):
                return
        raise ApiError(403, "Forbidden", f'forbidden: User "{user.name}" cannot get path "{path}"', {})

    def authorize(self, user: User, verb: str, route: Route) -> None:
        """Raise 403 unless ``user`` is bound to cluster-admin (the only role the simulation evaluates)."""
        with self.lock:
            if self._is_cluster_admin(user):
                return
        resource = f"{route.plural}/{route.sub}" if route.sub else route.plural
        qualified = f"{route.plural}.{route.group}" if route.group else route.plural
        what = f'{qualified} "{route.name}"' if route.name else qualified
        scope = f'in the namespace "{route.namespace}"' if route.namespace else "at the cluster scope"
        details: Obj = {"kind": route.plural} | ({"name": route.name} if route.name else {}) | (
            {"group": route.group} if route.group else {})
        raise ApiError(403, "Forbidden", f'{what} is forbidden: User "{user.name}" cannot {verb} resource '
                       f'"{resource}" in API group "{route.group}" {scope}', details)

    # -- requests ------------------------------------------------------------------------------------------

    def handle(self, method: str, target: str, user: User, body: bytes, content_type: str) -> tuple[int, Obj | str]:
        """Serve one request as ``user``; return (status code, JSON object or text)."""
        url = urlsplit(target)
        path = url.path.rstrip("/") or "/"
        query = parse_qs(url.query, keep_blank_values=True)
        unknown = sorted(set(query) - ALLOWED_QUERY)
        if unknown:
            raise ApiError(400, "BadRequest", "the simulated API server does not model query parameter(s) "
                           + ", ".join(unknown))
        if "protobuf" in content_type:
            raise ApiError(415, "UnsupportedMediaType", "the simulated API server speaks JSON only, "
                           f"not {content_type}")
        route = parse_route(path)
        if route is None:
            if method != "GET":
                raise ApiError(405, "MethodNotAllowed", f"{method} {path} is not allowed")
            self.authorize_path(user, path)
            return self.non_resource(path)
        verb = {"GET": "get" if route.name else "list", "POST": "create", "DELETE": "delete", "PUT": "update",
                "PATCH": "patch"}.get(method, method.lower())
        self.authorize(user, verb, route)
        res = RESOURCES.get((route.group, route.plural))
        if res is None or (route.namespace is not None and not res.namespaced):
            raise ApiError(404, "NotFound", "the server could not find the requested resource", {})
        selector = parse_selector(query.get("labelSelector", [""])[0])
        if route.sub == "token":
            token_fault()  # outside the lock: a slow TokenRequest must not stall other requests
        with self.lock:
            if route.sub is not None:
                if (res.plural, route.sub, method) != ("serviceaccounts", "token", "POST") or route.name is None:
                    raise ApiError(404, "NotFound", "the server could not find the requested resource", {})
                return 201, self._token_request(str(route.namespace), route.name, body)
            if method == "GET" and route.name is None:
                return 200, self._list(res, route.namespace, selector)
            if res.namespaced and route.namespace is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource", {})
            if method == "GET":
                found = self.objects.get(self._key(res, route.namespace, str(route.name)))
                if found is None:
                    raise not_found(res, str(route.name))
                return 200, found
            if method == "POST" and route.name is None:
                return 201, self._create(res, route.namespace, _json_object(body))
            if method == "DELETE" and route.name is not None:
                return 200, self._delete(res, route.namespace, route.name)
        raise ApiError(405, "MethodNotAllowed", f"the simulated API server does not model {method} on "
                       f"{res.qualified}" + (" collections" if route.name is None else ""))

    def _list(self, res: Resource, namespace: str | None, selector: list[tuple[str, str, str]]) -> Obj:
        items = [obj for (qualified, ns, _), obj in sorted(self.objects.items())
                 if qualified == res.qualified and (namespace is None or ns == namespace)
                 and matches(obj["metadata"].get("labels") or {}, selector)]
        return {"kind": f"{res.kind}List", "apiVersion": res.api_version,
                "metadata": {"resourceVersion": str(self.revision)}, "items": items}

    def _delete(self, res: Resource, namespace: str | None, name: str) -> Obj:
        key = self._key(res, namespace, name)
        if key not in self.objects:
            raise not_found(res, name)
        if res.plural == "namespaces":
            if name in PROTECTED_NAMESPACES:
                raise ApiError(403, "Forbidden", f'namespaces "{name}" is forbidden: this namespace may not be '
                               "deleted", _details(res, name))
            for other in [k for k in self.objects if k[1] == name]:
                del self.objects[other]
        uid = self.objects.pop(key)["metadata"]["uid"]
        self.revision += 1
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": _details(res, name) | {"uid": uid}}

    def _token_request(self, namespace: str, name: str, body: bytes) -> Obj:
        account = self.objects.get(self._key(SERVICEACCOUNTS, namespace, name))
        if account is None:
            raise not_found(SERVICEACCOUNTS, name)
        spec = _json_object(body).get("spec") or {}
        seconds = spec.get("expirationSeconds") or 3600
        if not isinstance(seconds, int):
            raise ApiError(400, "BadRequest", "spec.expirationSeconds must be an integer")
        token_resource = Resource("tokenrequests", "tokenrequest", "TokenRequest", True, "authentication.k8s.io")
        if seconds < self.min_token_seconds:
            limit = "10 minutes" if self.min_token_seconds == 600 else f"{self.min_token_seconds} seconds"
            raise invalid(token_resource, name, "spec.expirationSeconds",
                          f"Invalid value: {seconds}: may not specify a duration less than {limit}")
        if seconds > 2**32:
            raise invalid(token_resource, name, "spec.expirationSeconds",
                          f"Invalid value: {seconds}: may not specify a duration larger than 2^32 seconds")
        audiences = spec.get("audiences") or [DEFAULT_AUDIENCE]
        now = time.time()
        uid = account["metadata"]["uid"]
        claims = {"aud": audiences, "exp": int(now + seconds), "iat": int(now), "nbf": int(now),
                  "iss": DEFAULT_AUDIENCE, "jti": str(uuid.uuid4()), "sub": f"system:serviceaccount:{namespace}:{name}",
                  "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": uid}}}
        header = {"alg": "RS256", "kid": secrets.token_urlsafe(32)}
        token = ".".join((_b64url(json.dumps(header).encode()), _b64url(json.dumps(claims).encode()),
                          _b64url(secrets.token_bytes(256))))
        self.tokens[token] = Token(namespace, name, uid, now + seconds)
        return {"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"name": name, "namespace": namespace, "creationTimestamp": rfc3339(now)},
                "spec": {"audiences": audiences, "expirationSeconds": seconds, "boundObjectRef": None},
                "status": {"token": token, "expirationTimestamp": rfc3339(now + seconds)}}

    # -- non-resource paths ------------------------------------------------------------------------------

    def non_resource(self, path: str) -> tuple[int, Obj | str]:
        """Serve health, version and discovery documents."""
        if path in ("/healthz", "/livez", "/readyz") or path.startswith(("/healthz/", "/livez/", "/readyz/")):
            return 200, "ok"
        version = self.spec["kubernetes_version"]
        major, minor = version.lstrip("v").split(".")[:2]
        if path == "/version":
            return 200, {"major": major, "minor": minor, "gitVersion": version,
                         "gitCommit": "67a30c0adcf52bd3f56ff0893ce19966be12991f", "gitTreeState": "clean",
                         "buildDate": "2025-02-12T21:19:12Z", "goVersion": "go1.23.6", "compiler": "gc",
                         "platform": "linux/amd64"}
        if path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": "172.18.0.2:6443"}]}
        group_version = {"groupVersion": f"{RBAC}/v1", "version": "v1"}
        group = {"name": RBAC, "versions": [group_version], "preferredVersion": group_version}
        if path == "/apis":
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group]}
        if path == f"/apis/{RBAC}":
            return 200, {"kind": "APIGroup", "apiVersion": "v1"} | group
        if path in ("/api/v1", f"/apis/{RBAC}/v1"):
            wanted = "" if path == "/api/v1" else RBAC
            resources: list[Obj] = [
                {"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind,
                 "verbs": ["create", "delete", "get", "list"]} | ({"shortNames": list(r.short_names)}
                                                                  if r.short_names else {})
                for r in RESOURCES.values() if r.group == wanted]
            if not wanted:
                resources.append({"name": "serviceaccounts/token", "singularName": "", "namespaced": True,
                                  "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest",
                                  "verbs": ["create"]})
            return 200, {"kind": "APIResourceList", "apiVersion": "v1",
                         "groupVersion": "v1" if not wanted else f"{RBAC}/v1", "resources": resources}
        raise ApiError(404, "NotFound", "the server could not find the requested resource", {})


def _json_object(body: bytes) -> Obj:
    try:
        obj = json.loads(body or b"{}")
    except ValueError as exc:
        raise ApiError(400, "BadRequest", f"the request body is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ApiError(400, "BadRequest", "the request body is not a JSON object")
    return obj


class ApiServer(ThreadingHTTPServer):
    """A threaded HTTPS server around one Cluster, logging every request (never a token) to ``log``."""

    daemon_threads = True

    def __init__(self, sock: socket, context: ssl.SSLContext, cluster: Cluster, log: TextIO) -> None:
        super().__init__(sock.getsockname()[:2], Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        self.cluster = cluster
        self.log = log
        self.log_lock = threading.Lock()

    def write_log(self, line: str) -> None:
        """Append one line to the container log."""
        with self.log_lock:
            self.log.write(f"{rfc3339()} {line}\n")
            self.log.flush()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log a failed connection (TLS handshake, client gone) in one line instead of a traceback."""
        import sys

        self.write_log(f"{client_address[0]} connection error: {sys.exc_info()[1]!r}")


class Handler(BaseHTTPRequestHandler):
    """Serves one connection of the simulated API server (HTTP/1.1, keep-alive)."""

    protocol_version = "HTTP/1.1"
    server: ApiServer
    timeout = 60

    def setup(self) -> None:
        """Finish the TLS handshake in this thread, so a slow client never blocks accept()."""
        self.request.settimeout(self.timeout)
        self.request.do_handshake()
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default access log (Handler.dispatch logs every request itself)."""

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        cluster = self.server.cluster
        user = ANONYMOUS
        payload: Obj | str
        try:
            user = cluster.authenticate(self.headers.get("Authorization"), self.request.getpeercert() or None)
            code, payload = cluster.handle(method, self.path, user, body, self.headers.get("Content-Type") or "")
        except ApiError as exc:
            code, payload = exc.code, exc.status()
        except Exception as exc:  # a bug in the simulation: answer it loudly instead of dropping the connection
            code, payload = 500, ApiError(500, "InternalError", f"simulated API server failed: {exc!r}").status()
        if isinstance(payload, str):
            data, ctype = payload.encode(), "text/plain; charset=utf-8"
        else:
            data, ctype = json.dumps(payload).encode(), "application/json"
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Audit-Id", str(uuid.uuid4()))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(data)
        self.server.write_log(f'{self.client_address[0]} {user.name} "{method} {urlsplit(self.path).path}" {code}')

    def do_GET(self) -> None:
        """Serve GET."""
        self._dispatch("GET")

    def do_POST(self) -> None:
        """Serve POST."""
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        """Serve DELETE."""
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        """Serve PUT (answered with 405: not modelled)."""
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        """Serve PATCH (answered with 405: not modelled)."""
        self._dispatch("PATCH")


def make_server(sock: socket, spec: Obj, pki_dir: str, log: TextIO) -> ApiServer:
    """Return an HTTPS API server on the listening socket ``sock`` with the cluster's certificates."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(f"{pki_dir}/apiserver.crt", f"{pki_dir}/apiserver.key")
    context.load_verify_locations(f"{pki_dir}/ca.crt")
    context.verify_mode = ssl.CERT_OPTIONAL
    return ApiServer(sock, context, Cluster(spec), log)

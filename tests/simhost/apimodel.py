"""What the simulated API server knows about: resource types, errors as ``Status`` objects, paths, selectors.

Standard library only (the node-container process runs with ``python -S``).
"""

from __future__ import annotations

import fnmatch
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

Obj = dict[str, Any]
RBAC = "rbac.authorization.k8s.io"
BATCH = "batch"
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
    verbs: tuple[str, ...] = ("create", "delete", "get", "list")
    fields: tuple[str, ...] = ()  # field-selector labels beyond metadata.name and metadata.namespace
    categories: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        """Return ``v1`` or ``<group>/v1``."""
        return f"{self.group}/v1" if self.group else "v1"

    @property
    def qualified(self) -> str:
        """Return the name used in error messages: ``configmaps`` or ``clusterroles.rbac.authorization.k8s.io``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


WATCHABLE = ("create", "delete", "get", "list", "watch")
RESOURCES = {(r.group, r.plural): r for r in [
    Resource("namespaces", "namespace", "Namespace", False, short_names=("ns",), verbs=WATCHABLE,
             fields=("status.phase",)),
    Resource("nodes", "node", "Node", False, short_names=("no",), verbs=WATCHABLE, fields=("spec.unschedulable",)),
    Resource("serviceaccounts", "serviceaccount", "ServiceAccount", True, short_names=("sa",)),
    Resource("configmaps", "configmap", "ConfigMap", True, short_names=("cm",), verbs=WATCHABLE),
    Resource("secrets", "secret", "Secret", True, verbs=WATCHABLE, fields=("type",)),
    Resource("pods", "pod", "Pod", True, short_names=("po",), verbs=WATCHABLE, categories=("all",),
             fields=("spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
                     "status.phase", "status.podIP", "status.nominatedNodeName")),
    Resource("services", "service", "Service", True, short_names=("svc",), verbs=WATCHABLE, categories=("all",)),
    Resource("events", "event", "Event", True, short_names=("ev",), verbs=("list", "watch")),
    Resource("jobs", "job", "Job", True, BATCH, verbs=WATCHABLE, fields=("status.successful",),
             categories=("all",)),
    Resource("clusterroles", "clusterrole", "ClusterRole", False, RBAC),
    Resource("clusterrolebindings", "clusterrolebinding", "ClusterRoleBinding", False, RBAC),
]}
NAMESPACES = RESOURCES["", "namespaces"]
NODES = RESOURCES["", "nodes"]
PODS = RESOURCES["", "pods"]
SERVICES = RESOURCES["", "services"]
SECRETS = RESOURCES["", "secrets"]
JOBS = RESOURCES[BATCH, "jobs"]
SERVICEACCOUNTS = RESOURCES["", "serviceaccounts"]
CLUSTERROLEBINDINGS = RESOURCES[RBAC, "clusterrolebindings"]
GROUPS = ("", BATCH, RBAC)  # API groups, each served at version v1 only


def rfc3339(moment: float | None = None) -> str:
    """Format a UTC time the way Kubernetes does in metadata (``2025-01-02T03:04:05Z``)."""
    return datetime.fromtimestamp(time.time() if moment is None else moment, UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> float:
    """Return the epoch seconds of an RFC 3339 time written by :func:`rfc3339`."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


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


def not_modelled(what: str) -> ApiError:
    """Return the 501 for a request the simulation refuses rather than answers wrongly."""
    return ApiError(501, "NotImplemented", f"the simulated API server does not model {what}")


def details(res: Resource, name: str) -> Obj:
    """Return the ``details`` of a Status about one object."""
    found: Obj = {"name": name, "kind": res.plural}
    if res.group:
        found["group"] = res.group
    return found


def not_found(res: Resource, name: str) -> ApiError:
    """Return the 404 the real API server gives for a missing object."""
    return ApiError(404, "NotFound", f'{res.qualified} "{name}" not found', details(res, name))


def invalid(res: Resource, name: str, field: str, problem: str) -> ApiError:
    """Return a 422 Invalid for one field of an object."""
    return invalid_all(res, name, [(field, problem)])


def invalid_all(res: Resource, name: str, problems: list[tuple[str, str]]) -> ApiError:
    """Return a 422 Invalid listing every (field, problem), as the API server's validation does."""
    kind = f"{res.kind}.{res.group}" if res.group else res.kind
    text = "; ".join(f"{field}: {problem}" for field, problem in problems)
    if len(problems) > 1:
        text = f"[{', '.join(f'{field}: {problem}' for field, problem in problems)}]"
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {text}',
                    details(res, name) | {"causes": [{"field": f, "message": p} for f, p in problems]})


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


Term = tuple[str, str, str]  # (key, operator, value); operators: =, !=, exists, !, in, notin (values joined by \0)
_SET_TERM = re.compile(r"^\s*([^\s!=(),]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_terms(text: str) -> list[str]:
    """Split a selector at the commas outside parentheses."""
    terms, depth, current = [], 0, ""
    for char in text:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    terms.append(current)
    return [t.strip() for t in terms if t.strip()]


def parse_selector(text: str) -> list[Term]:
    """Parse a label selector: ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``, ``k in (a,b)``, ``k notin (a)``."""
    terms: list[Term] = []
    for raw in _split_terms(text):
        match = _SET_TERM.match(raw)
        if match:
            values = [v.strip() for v in match[3].split(",") if v.strip()]
            terms.append((match[1], match[2], "\0".join(values)))
        elif "!=" in raw:
            key, value = raw.split("!=", 1)
            terms.append((key.strip(), "!=", value.strip()))
        elif "=" in raw:
            key, value = raw.replace("==", "=").split("=", 1)
            terms.append((key.strip(), "=", value.strip()))
        elif raw.startswith("!"):
            terms.append((raw[1:].strip(), "!", ""))
        elif re.fullmatch(r"[A-Za-z0-9_./-]+", raw):
            terms.append((raw, "exists", ""))
        else:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {raw!r}")
    return terms


def matches(labels: dict[str, str], terms: list[Term]) -> bool:
    """Return True when ``labels`` satisfy every selector term."""
    for key, op, value in terms:
        have = labels.get(key)
        ok = {"=": have == value, "!=": have != value, "exists": key in labels, "!": key not in labels,
              "in": have is not None and have in value.split("\0"),
              "notin": have is None or have not in value.split("\0")}[op]
        if not ok:
            return False
    return True


def parse_field_selector(res: Resource, text: str) -> list[Term]:
    """Parse a field selector (``=``, ``==``, ``!=`` on the fields the real API server indexes for ``res``)."""
    terms: list[Term] = []
    for raw in filter(None, (t.strip() for t in text.split(","))):
        op = "!=" if "!=" in raw else "="
        key, _, value = raw.replace("==", "=").partition(op)
        key = key.strip()
        if not _ or key not in ("metadata.name", "metadata.namespace", *res.fields):
            raise ApiError(400, "BadRequest", f'"{key}" is not a known field selector: only "metadata.name", '
                           '"metadata.namespace"' + "".join(f', "{f}"' for f in res.fields))
        terms.append((key, op, value.strip()))
    return terms


def field_value(obj: Obj, path: str) -> str:
    """Return the string value of a dotted field path of ``obj`` ("" when absent)."""
    current: Any = obj
    for part in path.split("."):
        current = current.get(part) if isinstance(current, dict) else None
    if current is None:
        return ""
    if isinstance(current, bool):
        return str(current).lower()
    return str(current)


def fields_match(obj: Obj, terms: list[Term]) -> bool:
    """Return True when ``obj`` satisfies every field-selector term."""
    return all((field_value(obj, key) == value) == (op == "=") for key, op, value in terms)


def glob_match(name: str, pattern: str) -> bool:
    """Return True when ``name`` matches the shell pattern ``pattern`` (case-sensitive)."""
    return fnmatch.fnmatchcase(name, pattern)

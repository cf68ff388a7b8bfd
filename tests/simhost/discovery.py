"""Non-resource paths of the simulated API server: health, version, discovery, OpenAPI v3.

Standard library only (the node-container process runs with ``python -S``).
"""

from __future__ import annotations

from tests.simhost import openapi
from tests.simhost.apimodel import GROUPS, RESOURCES, ApiError, Obj

Answer = tuple[int, Obj | str]


def _group_version(group: str) -> Obj:
    version = f"{group}/v1" if group else "v1"
    return {"groupVersion": version, "version": "v1"}


def resource_list(group: str) -> Obj:
    """Return the APIResourceList of ``<group>/v1`` (the core group for "")."""
    resources: list[Obj] = []
    for res in RESOURCES.values():
        if res.group != group:
            continue
        entry: Obj = {"name": res.plural, "singularName": res.singular, "namespaced": res.namespaced,
                      "kind": res.kind, "verbs": list(res.verbs)}
        if res.short_names:
            entry["shortNames"] = list(res.short_names)
        if res.categories:
            entry["categories"] = list(res.categories)
        resources.append(entry)
        if res.plural == "pods":
            resources.append({"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod",
                              "verbs": ["get"]})
        if res.plural == "jobs":
            resources.append({"name": "jobs/status", "singularName": "", "namespaced": True, "kind": "Job",
                              "verbs": ["get"]})
    if not group:
        resources.append({"name": "serviceaccounts/token", "singularName": "", "namespaced": True,
                          "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest",
                          "verbs": ["create"]})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": _group_version(group)["groupVersion"],
            "resources": resources}


def answer(path: str, version: str) -> Answer:
    """Serve health, version, discovery and OpenAPI documents; raise a 404 ApiError for anything else."""
    if path in ("/healthz", "/livez", "/readyz") or path.startswith(("/healthz/", "/livez/", "/readyz/")):
        return 200, "ok"
    major, minor = version.lstrip("v").split(".")[:2]
    if path == "/version":
        return 200, {"major": major, "minor": minor, "gitVersion": version,
                     "gitCommit": "67a30c0adcf52bd3f56ff0893ce19966be12991f", "gitTreeState": "clean",
                     "buildDate": "2025-02-12T21:19:12Z", "goVersion": "go1.23.6", "compiler": "gc",
                     "platform": "linux/amd64"}
    if path == "/api":
        return 200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": "172.18.0.2:6443"}]}
    groups = {g: {"name": g, "versions": [_group_version(g)], "preferredVersion": _group_version(g)}
              for g in GROUPS if g}
    if path == "/apis":
        return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": list(groups.values())}
    for group, doc in groups.items():
        if path == f"/apis/{group}":
            return 200, {"kind": "APIGroup", "apiVersion": "v1"} | doc
        if path == f"/apis/{group}/v1":
            return 200, resource_list(group)
    if path == "/api/v1":
        return 200, resource_list("")
    if path.startswith("/openapi/"):
        return 200, openapi.document(path)
    raise ApiError(404, "NotFound", "the server could not find the requested resource", {})

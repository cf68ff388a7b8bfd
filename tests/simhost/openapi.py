"""The OpenAPI v3 documents of the simulated API server: what kubectl needs of them, and no more.

kubectl create/apply validate through the server (``fieldValidation=Strict``) when the OpenAPI v3 document
of the object's group-version says that its POST and PATCH take that parameter; otherwise they refuse to
run ("failed to download openapi"). Each group-version document lists, per collection path, the
operations with their group-version-kind and query parameters; schemas are not served (no client-side
validation, no strategic merge patch: PATCH is not modelled). Standard library only.
"""

from __future__ import annotations

import hashlib
import json

from tests.simhost.apimodel import GROUPS, RESOURCES, ApiError, Obj, not_modelled

ROOT = "/openapi/v3"
QUERY = ["dryRun", "fieldManager", "fieldValidation", "pretty"]


def _gv_path(group: str) -> str:
    return "api/v1" if not group else f"apis/{group}/v1"


def group_document(group: str) -> Obj:
    """Return the OpenAPI v3 document of ``<group>/v1``: its paths and operations, without schemas."""
    paths: Obj = {}
    for res in RESOURCES.values():
        if res.group != group:
            continue
        gvk = {"group": group, "version": "v1", "kind": res.kind}
        prefix = f"/{_gv_path(group)}/namespaces/{{namespace}}" if res.namespaced else f"/{_gv_path(group)}"
        parameters = [{"name": name, "in": "query", "schema": {"type": "string"}, "uniqueItems": True}
                      for name in QUERY]
        operation = {"x-kubernetes-action": "post", "x-kubernetes-group-version-kind": gvk,
                     "parameters": parameters, "responses": {"201": {"description": "Created"}}}
        paths[f"{prefix}/{res.plural}"] = {"post": operation | {"operationId": f"create{res.kind}"}}
        paths[f"{prefix}/{res.plural}/{{name}}"] = {"patch": operation | {
            "x-kubernetes-action": "patch", "operationId": f"patch{res.kind}"}}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.2"}, "paths": paths,
            "components": {"schemas": {}}}


def document(path: str) -> Obj:
    """Return the OpenAPI document at ``path``; 404 or 501 for what the simulation does not serve."""
    if path == ROOT:
        index = {}
        for group in GROUPS:
            body = json.dumps(group_document(group), sort_keys=True).encode()
            digest = hashlib.sha512(body).hexdigest().upper()[:128]
            index[_gv_path(group)] = {"serverRelativeURL": f"{ROOT}/{_gv_path(group)}?hash={digest}"}
        return {"paths": index}
    for group in GROUPS:
        if path == f"{ROOT}/{_gv_path(group)}":
            return group_document(group)
    if path.startswith("/openapi/v2"):
        raise not_modelled("the OpenAPI v2 document (kubectl uses v3)")
    raise ApiError(404, "NotFound", f"the simulated API server serves no OpenAPI document at {path}", {})

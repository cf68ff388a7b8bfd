"""The per-run kubeconfig that kind writes (never the user's ~/.kube/config): pure rewrites, and the one file write."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from ksi import yamlio
from ksi.errors import KsiError
from ksi.host.state import write_atomic


def kind_context(cluster: str) -> str:
    """Return the context name kind writes for ``cluster``."""
    return f"kind-{cluster}"


def _named(entries: object, name: str, what: str) -> dict[str, Any]:
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and entry.get("name") == name:
            return entry
    raise KsiError(f"kubeconfig written by kind has no {what} named {name!r}", step="create",
                   fix="check the kind version; ksi needs kind >= v0.23")


def add_cluster_context(config: dict[str, Any], cluster: str) -> dict[str, Any]:
    """Return ``config`` with a context named exactly ``cluster`` (a copy of kind's) as current context."""
    result = copy.deepcopy(config)
    source = _named(result.get("contexts"), kind_context(cluster), "context")
    contexts = [c for c in result["contexts"] if not (isinstance(c, dict) and c.get("name") == cluster)]
    contexts.append({"name": cluster, "context": copy.deepcopy(source.get("context", {}))})
    result["contexts"] = contexts
    result["current-context"] = cluster
    return result


def server(config: dict[str, Any], context: str) -> str:
    """Return the API server URL that ``context`` points at."""
    ctx = _named(config.get("contexts"), context, "context").get("context") or {}
    entry = _named(config.get("clusters"), str(ctx.get("cluster")), "cluster").get("cluster") or {}
    url = entry.get("server")
    if not isinstance(url, str) or not url.startswith("https://"):
        raise KsiError(f"kubeconfig context {context!r} has no https server", step="create")
    if entry.get("insecure-skip-tls-verify"):
        raise KsiError(f"kubeconfig context {context!r} disables TLS verification", step="create",
                       fix="ksi keeps TLS verification on; do not patch the kubeconfig")
    return url


def write_cluster_kubeconfig(path: Path, cluster: str) -> str:
    """Add a context named ``cluster`` to kind's kubeconfig at ``path`` (atomically, 0600); return the API URL."""
    data = yamlio.load(path.read_text(encoding="utf-8")) or {}
    updated = add_cluster_context(data, cluster)
    write_atomic(path, yamlio.dump(updated))
    return server(updated, cluster)

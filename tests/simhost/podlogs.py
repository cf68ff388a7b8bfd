"""The ``pods/log`` subresource: a container's output, whole, its tail, or followed until the container ends.

Standard library only (the node-container process runs with ``python -S``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.simhost.apimodel import PODS, ApiError, Obj, not_modelled

if TYPE_CHECKING:
    from tests.simhost.apistore import Store

FOLLOW_POLL = 0.05  # seconds between looks at a followed log that has no new output
LOG_QUERY = frozenset({"container", "follow", "tailLines", "limitBytes", "timestamps", "previous", "sinceSeconds",
                       "insecureSkipTLSVerifyBackend", "pretty"})


def flag(query: dict[str, list[str]], name: str) -> bool:
    """Return a boolean query parameter (Go's strconv.ParseBool spelling)."""
    return query.get(name, ["false"])[0].lower() in ("1", "t", "true")


def pick_container(pod: Obj, query: dict[str, list[str]]) -> str:
    """Return the container a log request names, or the only one; 400 as the API server words it."""
    names = [c["name"] for c in pod["spec"]["containers"]]
    wanted = query.get("container", [""])[0]
    if not wanted:
        if len(names) > 1:
            raise ApiError(400, "BadRequest", f"a container name must be specified for pod {pod['metadata']['name']}"
                           f", choose one of: [{' '.join(names)}]")
        return str(names[0])
    if wanted not in names:
        raise ApiError(400, "BadRequest", f"container {wanted} is not valid for pod {pod['metadata']['name']}")
    return wanted


def check_started(pod: Obj, container: str) -> None:
    """Refuse the log of a container that has not started (400, the kubelet's words)."""
    for entry in pod.get("status", {}).get("containerStatuses", []):
        if entry["name"] == container and "waiting" in (entry.get("state") or {}):
            reason = entry["state"]["waiting"].get("reason", "ContainerCreating")
            raise ApiError(400, "BadRequest", f'container "{container}" in pod "{pod["metadata"]["name"]}" is '
                           f"waiting to start: {reason}")
    if not pod.get("status", {}).get("containerStatuses"):
        raise ApiError(400, "BadRequest", f'container "{container}" in pod "{pod["metadata"]["name"]}" is waiting '
                       "to start: ContainerCreating")


def tail(data: bytes, lines: int) -> bytes:
    """Return the last ``lines`` lines of ``data``."""
    if lines <= 0:
        return b""
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:])


def local_log(store: Store, pod: Obj, path: Path, container: str, query: dict[str, list[str]]) -> Iterator[bytes]:
    """Yield a container's log from this node: what is there, then (``follow``) what comes until it ends."""
    for name in ("timestamps", "previous"):
        if flag(query, name):
            raise not_modelled(f"pods/log with {name}=true")
    if "sinceSeconds" in query:
        raise not_modelled("pods/log with sinceSeconds")
    limit = int(query["limitBytes"][0]) if "limitBytes" in query else None
    follow = flag(query, "follow")
    meta = pod["metadata"]

    def ended() -> bool:
        current = store.get(PODS, meta["namespace"], meta["name"])
        if current is None or current["metadata"]["uid"] != meta["uid"]:
            return True
        for entry in current.get("status", {}).get("containerStatuses", []):
            if entry["name"] == container:
                return "terminated" in (entry.get("state") or {})
        return True

    def generate() -> Iterator[bytes]:
        sent = 0
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return
        with handle:
            data = handle.read()
            if "tailLines" in query:
                data = tail(data, int(query["tailLines"][0]))
            while True:
                if data:
                    if limit is not None:
                        data = data[:max(0, limit - sent)]
                    sent += len(data)
                    yield data
                    if limit is not None and sent >= limit:
                        return
                if not follow:
                    return
                done = ended()  # before reading again: output written before the end is still sent
                data = handle.read()
                if not data:
                    if done:
                        return
                    time.sleep(FOLLOW_POLL)
                    yield b""

    return generate()


def stream(store: Store, pod: Obj, query: dict[str, list[str]], log_path: Callable[[Obj, str], Path],
           remote: Any) -> Iterator[bytes]:
    """Return the log of ``pod``: read here, or (``remote``, a virtual kubelet) from the provider."""
    unknown = sorted(set(query) - LOG_QUERY)
    if unknown:
        raise not_modelled("pods/log query parameter(s) " + ", ".join(unknown))
    container = pick_container(pod, query)
    check_started(pod, container)
    if remote is not None:
        from urllib.parse import urlencode

        return remote.logs(pod, urlencode({k: v[0] for k, v in query.items()}))  # type: ignore[no-any-return]
    return local_log(store, pod, log_path(pod, container), container, query)

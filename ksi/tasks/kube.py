"""The Kubernetes API as the task executor uses it: one client per kubeconfig, raw JSON, watches that resume.

The client is built from the run's kubeconfig and context (never the global default configuration, never
~/.kube/config); TLS is verified against the kubeconfig's CA. Objects stay plain dicts: the client's model
classes cost time and memory per object that tens of thousands of watch events do not need.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ksi import log
from ksi.errors import KsiError

_log = log.get(__name__)
Obj = dict[str, Any]
REQUEST_TIMEOUT = (5, 30)  # connect, read (seconds) for ordinary requests
WATCH_SECONDS = 240  # how long one watch request lasts before it is renewed (the server may end it sooner)
GONE = 410


@dataclass(frozen=True)
class Api:
    """The API groups the executor uses, sharing one client built from one kubeconfig."""

    client: Any
    core: Any
    batch: Any

    def close(self) -> None:
        """Close the client's connection pool."""
        self.client.close()


def connect(kubeconfig: Path, context: str | None) -> Api:
    """Return an Api for ``context`` (default: the kubeconfig's current context) of ``kubeconfig``."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    try:
        api_client = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig), context=context or None, persist_config=False)
    except (ConfigException, OSError, ValueError) as exc:
        raise KsiError(f"cannot use the kubeconfig {kubeconfig}{f' (context {context})' if context else ''}: "
                       f"{exc}", step="tasks", fix="run `ksi tasks run` inside a ksi workload, whose "
                       "KUBECONFIG and K8S_CLUSTER_NAME name the run's cluster") from None
    return Api(api_client, client.CoreV1Api(api_client), client.BatchV1Api(api_client))


def status_of(exc: BaseException) -> int | None:
    """Return the HTTP status of an API error (None for connection errors and everything else)."""
    from kubernetes.client.exceptions import ApiException

    return exc.status if isinstance(exc, ApiException) else None


def message_of(exc: BaseException) -> str:
    """Return the message of the API's Status object in an error, or the error itself, in one line."""
    body = getattr(exc, "body", None)
    if body:
        try:
            return str(json.loads(body).get("message") or body).strip()
        except (ValueError, AttributeError):
            return str(body).strip()[:300]
    return f"{type(exc).__name__}: {exc}".strip()[:300]


def discard(response: Any) -> None:
    """Read and drop the body of a response requested with ``_preload_content=False``, then release it.

    A connection goes back to the pool only with its response read to the end: otherwise the next
    request on it reads the rest of this body as its status line.
    """
    try:
        response.drain_conn()
    finally:
        response.release_conn()


def raw(response: Any) -> Obj:
    """Return the JSON body of a response requested with ``_preload_content=False``."""
    try:
        data: Obj = json.loads(response.data)
        return data
    finally:
        response.release_conn()


class Follower(threading.Thread):
    """Follows one resource kind with a label selector: a list, then watches resumed from the last version.

    Calls ``deliver(kind, "SYNC", items)`` after each (re)list with every object, and ``deliver(kind, TYPE,
    obj)`` for each ADDED, MODIFIED or DELETED event. A watch that expires (410 Gone) is replaced by a fresh
    list: the SYNC lets the receiver notice what changed or vanished in between.
    """

    def __init__(self, kind: str, lister: Callable[..., Any], selector: str,
                 deliver: Callable[[str, str, Any], None], stop: threading.Event,
                 namespace: str | None = None) -> None:
        super().__init__(daemon=True, name=f"watch-{kind}")
        self.kind = kind
        self.lister = lister
        self.selector = selector
        self.deliver = deliver
        self.stop = stop
        self.namespace = namespace
        self.synced = threading.Event()

    def _call(self, **kwargs: Any) -> Any:
        args = (self.namespace,) if self.namespace is not None else ()
        return self.lister(*args, label_selector=self.selector, _preload_content=False, **kwargs)

    def _list(self) -> str:
        listing = raw(self._call(_request_timeout=REQUEST_TIMEOUT))
        self.deliver(self.kind, "SYNC", listing.get("items") or [])
        self.synced.set()
        return str(listing["metadata"]["resourceVersion"])

    def _watch(self, version: str) -> str | None:
        """Watch from ``version`` until the request ends; return the version to resume from (None: relist)."""
        from kubernetes.watch.watch import iter_resp_lines

        response = self._call(watch=True, resource_version=version, timeout_seconds=WATCH_SECONDS,
                              _request_timeout=(REQUEST_TIMEOUT[0], WATCH_SECONDS + 30))
        try:
            for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
                if self.stop.is_set():
                    return version
                if not line.strip():
                    continue
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    if obj.get("code") == GONE:
                        return None
                    raise KsiError(f"watching {self.kind} failed: {obj.get('message')}", step="tasks")
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                    self.deliver(self.kind, event["type"], obj)
        finally:
            response.close()
            response.release_conn()
        return version

    def run(self) -> None:
        """List and watch until ``stop`` is set; errors are logged and retried with a growing pause."""
        version: str | None = None
        pause = 0.2
        while not self.stop.is_set():
            try:
                version = self._list() if version is None else self._watch(version)
                pause = 0.2
            except Exception as exc:  # the API server restarting, a dropped connection: keep following
                if status_of(exc) == GONE:
                    version = None
                    continue
                if self.stop.is_set():
                    return
                _log.debug("watch %s: %s; again in %.1f s", self.kind, message_of(exc), pause)
                self.stop.wait(pause)
                pause = min(pause * 2, 5.0)


def labels(obj: Mapping[str, Any]) -> dict[str, str]:
    """Return an object's labels."""
    return dict((obj.get("metadata") or {}).get("labels") or {})


def name(obj: Mapping[str, Any]) -> str:
    """Return an object's name."""
    return str((obj.get("metadata") or {}).get("name") or "")

"""The Kubernetes API as the task executor uses it: one client per kubeconfig, raw JSON, watches that resume.

The client is the kubernetes package's ApiClient built from the run's kubeconfig and context by
:func:`ksi.cluster.api.api_client` (never the global default configuration, never ~/.kube/config); TLS is
verified against the kubeconfig's CA and the credentials are the kubeconfig's. The client's copies of the
kubeconfig's certificates and key go into a 0700 directory beside the kubeconfig (in a ksi run, the 0700
run directory), removed by :meth:`Api.close`. Requests go through the ApiClient itself, by path: the
generated API classes (CoreV1Api, BatchV1Api) take seconds to import, and their model objects cost time
and memory per object that tens of thousands of watch events do not need. Objects stay plain dicts.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ksi import log
from ksi.cluster.api import api_client
from ksi.errors import KsiError

_log = log.get(__name__)
Obj = dict[str, Any]
REQUEST_TIMEOUT = (5, 30)  # connect, read (seconds) for ordinary requests
WATCH_SECONDS = 240  # how long one watch request lasts before it is renewed (the server may end it sooner)
GONE = 410
Query = Sequence[tuple[str, str | int | bool]]


class ApiError(Exception):
    """The API server answered a request with an error status (``status`` 0: no answer at all)."""

    def __init__(self, status: int, body: bytes | str) -> None:
        self.status = status
        self.body = body.decode(errors="replace") if isinstance(body, bytes) else body
        super().__init__(f"{status}: {message_of(self)}")


class Api:
    """Requests to one cluster's API server, by path, through one ApiClient (its connection pool)."""

    def __init__(self, api_client: Any, files: Path | None = None) -> None:
        self.client = api_client
        self._files = files  # the client's certificate files, removed by close()

    def open(self, method: str, path: str, *, query: Query = (), body: Obj | None = None,
             timeout: tuple[float, float | None] = REQUEST_TIMEOUT, accept: str = "application/json") -> Any:
        """Send one request; return the unread urllib3 response of a success, raise ApiError otherwise.

        The caller reads the response to its end (:func:`discard`, :meth:`json`) so that its connection can
        go back to the pool: a connection returned half-read gives the next request the rest of this body.
        """
        headers = {"Accept": accept} | ({"Content-Type": "application/json"} if body is not None else {})
        serialized = self.client.param_serialize(method=method, resource_path=path, query_params=list(query),
                                                 header_params=headers, body=body, auth_settings=["BearerToken"])
        response = self.client.call_api(*serialized, _request_timeout=timeout).response
        if not 200 <= response.status < 300:
            try:
                data = response.data
            finally:
                response.release_conn()
            raise ApiError(response.status, data or b"")
        return response

    def json(self, method: str, path: str, *, query: Query = (), body: Obj | None = None) -> Obj:
        """Send one request and return its JSON answer."""
        response = self.open(method, path, query=query, body=body)
        try:
            data: Obj = json.loads(response.data)
        finally:
            response.release_conn()
        return data

    def send(self, method: str, path: str, *, query: Query = (), body: Obj | None = None) -> None:
        """Send one request whose answer does not matter beyond its status."""
        discard(self.open(method, path, query=query, body=body))

    def close(self) -> None:
        """Close the client's connection pool and remove its certificate files."""
        self.client.close()
        if self._files is not None:
            shutil.rmtree(self._files, ignore_errors=True)


def connect(kubeconfig: Path, context: str | None, connections: int) -> Api:
    """Return an Api for ``context`` (default: the kubeconfig's current context) of ``kubeconfig``.

    The pool keeps ``connections`` connections (one per thread that makes requests). The client's
    certificate files go into a new 0700 directory beside the kubeconfig (in the system's temporary
    directory if that one cannot be written).
    """
    from kubernetes.config.config_exception import ConfigException
    from yaml import YAMLError

    try:
        files = Path(tempfile.mkdtemp(prefix=".ksi-api-", dir=kubeconfig.parent))
    except OSError as exc:
        _log.debug("cannot write beside %s (%s); the client's certificate files go to %s", kubeconfig, exc,
                   tempfile.gettempdir())
        files = Path(tempfile.mkdtemp(prefix="ksi-api-"))
    try:
        return Api(api_client(kubeconfig, context or None, files, connections), files)
    except (ConfigException, OSError, ValueError, YAMLError) as exc:
        shutil.rmtree(files, ignore_errors=True)
        raise KsiError(f"cannot use the kubeconfig {kubeconfig}{f' (context {context})' if context else ''}: "
                       f"{exc}", step="tasks", fix="run `ksi tasks run` inside a ksi workload, whose "
                       "KUBECONFIG and K8S_CLUSTER_NAME name the run's cluster") from None


def status_of(exc: BaseException) -> int | None:
    """Return the HTTP status of an API error (None for connection errors and everything else)."""
    return exc.status if isinstance(exc, ApiError) and exc.status else None


def message_of(exc: BaseException) -> str:
    """Return the message of the API's Status object in an error, or the error itself, in one line."""
    body = getattr(exc, "body", None)
    if body:
        try:
            return str(json.loads(body).get("message") or body).strip()[:300]
        except (ValueError, AttributeError):
            return str(body).strip()[:300]
    return f"{type(exc).__name__}: {exc}".strip()[:300]


def discard(response: Any) -> None:
    """Read a response to its end and drop its body, then give its connection back to the pool."""
    try:
        response.drain_conn()
    finally:
        response.release_conn()


def lines(response: Any) -> Iterator[bytes]:
    """Yield the lines of a streamed response (a watch) as they arrive."""
    pending = b""
    for chunk in response.stream(65536, decode_content=False):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from complete
    if pending:
        yield pending


class Follower(threading.Thread):
    """Follows one kind of object at ``path`` by label: a list, then watches resumed from the last version.

    Calls ``deliver(kind, "SYNC", items)`` after each (re)list with every object, and ``deliver(kind, TYPE,
    obj)`` for each ADDED, MODIFIED or DELETED event. A watch that expires (410 Gone) is replaced by a fresh
    list: the SYNC lets the receiver notice what changed or vanished in between.
    """

    def __init__(self, api: Api, kind: str, path: str, selector: str, deliver: Callable[[str, str, Any], None],
                 stop: threading.Event) -> None:
        super().__init__(daemon=True, name=f"watch-{kind}")
        self.api = api
        self.kind = kind
        self.path = path
        self.selector = selector
        self.deliver = deliver
        self.stop = stop
        self.synced = threading.Event()

    def _query(self, **extra: str | int | bool) -> list[tuple[str, str | int | bool]]:
        query: list[tuple[str, str | int | bool]] = [("labelSelector", self.selector)] if self.selector else []
        return query + list(extra.items())

    def _list(self) -> str:
        listing = self.api.json("GET", self.path, query=self._query())
        self.deliver(self.kind, "SYNC", listing.get("items") or [])
        self.synced.set()
        return str(listing["metadata"]["resourceVersion"])

    def _watch(self, version: str) -> str | None:
        """Watch from ``version`` until the request ends; return the version to resume from (None: relist)."""
        response = self.api.open("GET", self.path, query=self._query(watch=True, resourceVersion=version,
                                                                     timeoutSeconds=WATCH_SECONDS),
                                 timeout=(REQUEST_TIMEOUT[0], WATCH_SECONDS + 30))
        try:
            for line in lines(response):
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

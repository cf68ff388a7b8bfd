"""One connection to a cluster's API server for the whole run, through the kubernetes client's ApiClient.

The client is built from the run's kubeconfig (never the global default configuration, never
~/.kube/config) and verifies TLS against the cluster's CA from it. Its connection pool holds one
connection, kept alive from request to request, so a run's requests to one cluster share one TLS
handshake. The client writes the kubeconfig's certificates and key to files for the TLS layer: they go into
a 0700 directory inside the (0700) run directory, removed by :meth:`ClusterApi.close`, never into /tmp.

ksi makes a handful of fixed requests (a ServiceAccount, a ClusterRoleBinding, a TokenRequest, a node
list), so it sends plain JSON through the ApiClient instead of the generated API classes: importing
CoreV1Api (63,000 lines) and its pydantic models costs about 0.7 s of CPU, more than the requests take.
"""

from __future__ import annotations

import json
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ksi import log, yamlio
from ksi.errors import KsiError
from ksi.host.poll import poll

_log = log.get(__name__)

REQUEST_TIMEOUT = (5.0, 30.0)  # seconds to connect, seconds to read a response
RETRY_FOR = 30.0  # seconds a request is retried while the API server cannot be reached
_JSON = {"Accept": "application/json", "Content-Type": "application/json"}


def load_client() -> None:
    """Import what ClusterApi uses (about 0.25 s on a warm node, a second on a cold one); no network.

    ``kubernetes.config`` pulls in the package (client, watch, stream, ...), but not the generated API
    classes, which kubernetes >= 35 loads lazily on first attribute access and ksi never touches.
    """
    import urllib3.exceptions  # noqa: F401 - the import is the point
    from kubernetes.client import api_client, exceptions  # noqa: F401
    from kubernetes.config import kube_config  # noqa: F401


@dataclass(frozen=True)
class Response:
    """An API server's answer: HTTP status and the decoded JSON body ({} when there is none)."""

    status: int
    body: dict[str, Any]

    def message(self) -> str:
        """Return the HTTP status with the ``Status`` object's reason and message, for an error line."""
        words = [f"HTTP {self.status}"]
        for key in ("reason", "message"):
            if isinstance(self.body.get(key), str):
                words.append(self.body[key])
        return ": ".join(words)


def api_client(kubeconfig: Path, context: str | None, files: Path, connections: int) -> Any:
    """Return a kubernetes ApiClient for ``context`` of ``kubeconfig`` (None: its current context).

    Only this kubeconfig is read (never ~/.kube/config or the client's global default configuration); TLS
    is verified against its CA. The client writes the kubeconfig's certificates and key into ``files``,
    created 0700 here and removed by the caller, never into /tmp. The pool keeps ``connections``
    connections: a smaller pool drops the surplus after each request, and a later request pays a new TLS
    handshake. Raises the client's ConfigException, OSError or a YAML error for a kubeconfig it cannot use.
    """
    from kubernetes.client.api_client import ApiClient
    from kubernetes.client.configuration import Configuration
    from kubernetes.config.kube_config import load_kube_config_from_dict

    files.mkdir(mode=0o700, exist_ok=True)
    configuration = Configuration()
    configuration.connection_pool_maxsize = connections
    load_kube_config_from_dict(  # type: ignore[no-untyped-call]
        yamlio.load(kubeconfig.read_text(encoding="utf-8")), context=context,
        client_configuration=configuration, persist_config=False, temp_file_path=str(files))
    return ApiClient(configuration)


class ClusterApi:
    """The kubernetes client for one cluster, opened on first use and shared by every thread of the run."""

    def __init__(self, kubeconfig: Path, context: str, files: Path) -> None:
        self.kubeconfig = kubeconfig
        self.context = context
        self._files = files
        self._lock = threading.Lock()  # one request at a time: the pool's one connection is never doubled
        self._client: Any = None

    def _open(self) -> Any:
        return api_client(self.kubeconfig, self.context, self._files, 1)

    def request(self, method: str, path: str, what: str, body: dict[str, Any] | None = None, *,
                query: dict[str, str] | None = None, step: str = "access") -> Response:
        """Send one request and return the answer, whatever its status.

        Failures to reach the API server are retried for up to RETRY_FOR seconds (a control plane that kind
        reports ready may still be settling); they and TLS failures then raise KsiError naming ``what``
        and ``step``.
        """
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        failure: list[HTTPError] = []

        def attempt() -> tuple[int, bytes] | None:
            try:
                serialized = self._client.param_serialize(
                    method, path, query_params=list((query or {}).items()), header_params=dict(_JSON), body=body,
                    auth_settings=["BearerToken"])
                answer = self._client.call_api(*serialized, _request_timeout=REQUEST_TIMEOUT)
                return answer.status, answer.read()
            except ApiException as exc:  # the REST layer's wrapping of a TLS failure
                raise KsiError(f"{what} failed: {exc.reason}", step=step,
                               fix="the kubeconfig's CA does not match the API server's certificate") from None
            except HTTPError as exc:
                _log.debug("%s: %s; retrying", what, exc)
                failure[:] = [exc]
                return None

        with self._lock:
            if self._client is None:
                self._client = self._open()
            status, data = poll(what, attempt, timeout=RETRY_FOR, interval=0.05, backoff=2.0, max_interval=1.0,
                                expired=lambda: KsiError(f"{what} failed: cannot reach the API server ({failure[0]})",
                                                         step=step, fix="check the cluster's container logs with "
                                                         "nerdctl logs"))
        try:
            decoded = json.loads(data) if data else {}
        except ValueError:
            decoded = {}
        return Response(status, decoded if isinstance(decoded, dict) else {})

    def close(self) -> None:
        """Close the connection and remove the client's certificate files."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
        shutil.rmtree(self._files, ignore_errors=True)

"""API access for the workload: an admin ServiceAccount and a long-lived token, via the kubernetes client.

Uses a client built from the run's kubeconfig (never the global default configuration, never
~/.kube/config); TLS is verified against the cluster's CA from that kubeconfig.
"""

from __future__ import annotations

import datetime as dt
import importlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ksi import log
from ksi.errors import KsiError
from ksi.host.poll import poll

_log = log.get(__name__)

SERVICE_ACCOUNT = "admin-user"
NAMESPACE = "kube-system"
BINDING = "ksi-admin-user"
REQUEST_TIMEOUT = (5, 30)
_RETRY_FOR = 30.0


@dataclass(frozen=True)
class Access:
    """A bearer token for the cluster's API and when it expires."""

    token: str
    expires: dt.datetime

    def __repr__(self) -> str:
        return f"Access(token=***, expires={self.expires.isoformat()})"


def _load_client() -> None:
    """Import what grant_admin uses and build its request models once (no network).

    kubernetes >= 35 loads its API classes and pydantic models lazily on first attribute access: importing
    the package alone leaves about a second of work for the first call.
    """
    from kubernetes import client, config

    assert config.new_client_from_config is not None
    client.CoreV1Api, client.RbacAuthorizationV1Api  # noqa: B018 - the access triggers the lazy import
    client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=SERVICE_ACCOUNT))
    client.V1ClusterRoleBinding(
        metadata=client.V1ObjectMeta(name=BINDING),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="cluster-admin"),
        subjects=[client.RbacV1Subject(kind="ServiceAccount", name=SERVICE_ACCOUNT, namespace=NAMESPACE)])
    client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600))
    importlib.import_module("kubernetes.client.exceptions")


def warm_import() -> threading.Thread:
    """Load the kubernetes client (about a second on a cold node) in a thread while kind works."""
    thread = threading.Thread(target=_load_client, daemon=True, name="import-kubernetes")
    thread.start()
    return thread


def token_lifetime(now: float, job_end: int | None, default: int) -> int:
    """Return the token lifetime in seconds: until the job's end plus an hour, else ``default``."""
    if job_end is not None and job_end > now:
        return max(int(job_end - now) + 3600, 3600)
    return default


def grant_admin(kubeconfig: Path, context: str, lifetime: int) -> Access:
    """Create ServiceAccount admin-user (kube-system), bind it to cluster-admin, and request a token.

    Existing objects are reused. Connection errors are retried for a few seconds because a control plane
    that kind reports ready may still be settling.
    """
    from kubernetes import client, config

    api_client = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig), context=context)
    with api_client:
        core = client.CoreV1Api(api_client)
        rbac = client.RbacAuthorizationV1Api(api_client)
        call_api(lambda: _create(lambda: core.create_namespaced_service_account(
            NAMESPACE, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=SERVICE_ACCOUNT)),
            _request_timeout=REQUEST_TIMEOUT)), "create ServiceAccount")
        call_api(lambda: _create(lambda: rbac.create_cluster_role_binding(
            client.V1ClusterRoleBinding(
                metadata=client.V1ObjectMeta(name=BINDING),
                role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole",
                                          name="cluster-admin"),
                subjects=[client.RbacV1Subject(kind="ServiceAccount", name=SERVICE_ACCOUNT,
                                               namespace=NAMESPACE)]),
            _request_timeout=REQUEST_TIMEOUT)), "create ClusterRoleBinding")
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=lifetime))
        response = call_api(lambda: core.create_namespaced_service_account_token(
            SERVICE_ACCOUNT, NAMESPACE, request, _request_timeout=REQUEST_TIMEOUT), "request token")
    token = response.status.token
    log.register_secret(token)
    expires = response.status.expiration_timestamp
    if not isinstance(expires, dt.datetime):
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=lifetime)
    granted = (expires - dt.datetime.now(dt.UTC)).total_seconds()
    if granted < lifetime - 300:
        _log.warning("access: the API server granted a token for %.0f s only (asked for %d s)", granted, lifetime)
    return Access(token, expires)


def _create(call: Any) -> None:
    """Run a create call, treating 409 AlreadyExists as success."""
    from kubernetes.client.exceptions import ApiException

    try:
        call()
    except ApiException as exc:
        if exc.status != 409:
            raise


def call_api(call: Any, what: str) -> Any:
    """Run the API request ``call``, retrying connection failures for up to _RETRY_FOR seconds; wrap API errors."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    failure: list[HTTPError] = []

    def attempt() -> tuple[Any] | None:
        try:
            return (call(),)
        except ApiException as exc:
            raise KsiError(f"{what} failed: HTTP {exc.status} {exc.reason}", step="access",
                           fix="see the DEBUG log in the run directory") from None
        except HTTPError as exc:
            _log.debug("%s: %s; retrying", what, exc)
            failure[:] = [exc]
            return None

    answer = poll(what, attempt, timeout=_RETRY_FOR, interval=0.1, backoff=2.0, max_interval=2.0,
                  expired=lambda: KsiError(f"{what} failed: cannot reach the API server ({failure[0]})", step="access",
                                           fix="check the cluster's container logs with nerdctl logs"))
    return answer[0]

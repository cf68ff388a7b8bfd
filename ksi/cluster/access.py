"""API access for the workload: an admin ServiceAccount and a long-lived token, in three requests.

The requests go over the cluster's one connection (ksi.cluster.api); the ServiceAccount and its
ClusterRoleBinding need nothing from the rest of the run, so they are sent while the token's lifetime (the
job's end, perhaps from squeue) is still being looked up. kind create --wait has already waited for the
control plane: nothing polls for readiness.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from ksi import log
from ksi.cluster.api import ClusterApi, Response
from ksi.errors import KsiError

_log = log.get(__name__)

SERVICE_ACCOUNT = "admin-user"
NAMESPACE = "kube-system"
BINDING = "ksi-admin-user"
RBAC = "rbac.authorization.k8s.io"
CREATED, ALREADY_EXISTS = 201, 409


@dataclass(frozen=True)
class Access:
    """A bearer token for the cluster's API and when it expires."""

    token: str
    expires: dt.datetime

    def __repr__(self) -> str:
        return f"Access(token=***, expires={self.expires.isoformat()})"


def token_lifetime(now: float, job_end: int | None, default: int) -> int:
    """Return the token lifetime in seconds: until the job's end plus an hour, else ``default``."""
    if job_end is not None and job_end > now:
        return max(int(job_end - now) + 3600, 3600)
    return default


def _failed(what: str, response: Response) -> KsiError:
    return KsiError(f"{what} failed: {response.message()}", step="access",
                    fix="see the DEBUG log in the run directory")


def _create(api: ClusterApi, path: str, body: dict[str, object], what: str) -> None:
    """POST ``body`` to ``path``; an object that already exists (409) is reused."""
    response = api.request("POST", path, what, body)
    if response.status != ALREADY_EXISTS and not 200 <= response.status < 300:
        raise _failed(what, response)


def grant_admin(api: ClusterApi, lifetime: Callable[[], int]) -> Access:
    """Create ServiceAccount admin-user (kube-system), bind it to cluster-admin, and request its token.

    Three requests, one after the other on one connection; ``lifetime()`` (seconds) is asked for only
    when the token is requested, so whatever it waits for overlaps with the first two.
    """
    _create(api, f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts", {
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": SERVICE_ACCOUNT}},
        "create ServiceAccount")
    _create(api, f"/apis/{RBAC}/v1/clusterrolebindings", {
        "apiVersion": f"{RBAC}/v1", "kind": "ClusterRoleBinding", "metadata": {"name": BINDING},
        "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}]},
        "create ClusterRoleBinding")
    seconds = lifetime()
    response = api.request("POST", f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{SERVICE_ACCOUNT}/token",
                           "request token", {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                             "spec": {"expirationSeconds": seconds}})
    status = response.body.get("status")
    token = status.get("token") if isinstance(status, dict) else None
    if response.status != CREATED or not isinstance(token, str) or not token:
        raise _failed("request token", response)
    log.register_secret(token)
    expires = _timestamp(status.get("expirationTimestamp")) if isinstance(status, dict) else None
    if expires is None:
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
    granted = (expires - dt.datetime.now(dt.UTC)).total_seconds()
    if granted < seconds - 300:
        _log.warning("access: the API server granted a token for %.0f s only (asked for %d s)", granted, seconds)
    return Access(token, expires)


def _timestamp(text: object) -> dt.datetime | None:
    """Return an RFC 3339 time of the API (``2025-01-02T03:04:05Z``) as an aware datetime, None if unreadable."""
    if not isinstance(text, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


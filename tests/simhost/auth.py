"""Authentication and authorization of the simulated API server, and the TokenRequest subresource.

- authentication: client certificates verified against the cluster CA, bearer tokens issued by TokenRequest
  (valid while unexpired and while their ServiceAccount exists), anonymous otherwise;
- authorization: system:masters is superuser; everyone else needs a ClusterRoleBinding to the ClusterRole
  ``cluster-admin`` naming them (User, Group or ServiceAccount); anonymous users get the public paths
  (/healthz, /livez, /readyz, /version), authenticated users also get discovery.
Standard library only (the node-container process runs with ``python -S``).
"""

from __future__ import annotations

import base64
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tests.simhost.apimodel import (
    CLUSTERROLEBINDINGS,
    SERVICEACCOUNTS,
    ApiError,
    Obj,
    Resource,
    Route,
    invalid,
    not_found,
    rfc3339,
)
from tests.simhost.common import delay_or_fail

if TYPE_CHECKING:
    from tests.simhost.apistore import Store

SUPERUSERS = "system:masters"
PUBLIC_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/version"})
DEFAULT_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
TOKEN_REQUESTS = Resource("tokenrequests", "tokenrequest", "TokenRequest", True, "authentication.k8s.io")


@dataclass(frozen=True)
class User:
    """An authenticated (or anonymous) user."""

    name: str
    groups: tuple[str, ...]
    service_account: tuple[str, str] | None = None  # (namespace, name)


ANONYMOUS = User("system:anonymous", ("system:unauthenticated",))


@dataclass(frozen=True)
class Token:
    """A bound service-account token issued by TokenRequest."""

    namespace: str
    name: str
    uid: str
    expires: float


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token_fault() -> None:
    """Apply KSI_SIM_FAULTS' api-token fault (inherited from `kind create`): slow, hang, or a 500."""
    if delay_or_fail("api-token"):  # hang blocks only this request's thread
        raise ApiError(500, "InternalError", "etcdserver: request timed out (simulated by KSI_SIM_FAULTS)")


class Auth:
    """Who a request comes from and what they may do, decided from the objects of ``store``."""

    def __init__(self, store: Store, min_token_seconds: int) -> None:
        self.store = store
        self.tokens: dict[str, Token] = {}
        self.min_token_seconds = min_token_seconds

    def authenticate(self, authorization: str | None, peer: Obj | None) -> User:
        """Return the user a request comes from; raise 401 for a bearer token that is not (or no longer) valid."""
        if peer:  # verified against the cluster CA by the TLS layer
            subject = dict(item[0] for item in peer.get("subject", ()))
            orgs = tuple(v for rdn in peer.get("subject", ()) for k, v in rdn if k == "organizationName")
            return User(subject.get("commonName", ""), (*orgs, "system:authenticated"))
        if authorization is None:
            return ANONYMOUS
        scheme, _, value = authorization.partition(" ")
        with self.store.lock:
            token = self.tokens.get(value.strip()) if scheme.lower() == "bearer" else None
            account = token and self.store.get(SERVICEACCOUNTS, token.namespace, token.name)
        if token is None or token.expires <= time.time() or not account \
                or account["metadata"]["uid"] != token.uid:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        return User(f"system:serviceaccount:{token.namespace}:{token.name}",
                    ("system:serviceaccounts", f"system:serviceaccounts:{token.namespace}", "system:authenticated"),
                    (token.namespace, token.name))

    def is_cluster_admin(self, user: User) -> bool:
        """Return True when ``user`` is a superuser or bound to the ClusterRole cluster-admin."""
        if SUPERUSERS in user.groups:
            return True
        for binding in self.store.select(CLUSTERROLEBINDINGS):
            if binding["roleRef"]["name"] != "cluster-admin":
                continue
            for subject in binding.get("subjects") or []:
                kind, name = subject.get("kind"), subject.get("name")
                if (kind == "User" and name == user.name) or (kind == "Group" and name in user.groups) or (
                        kind == "ServiceAccount" and (subject.get("namespace"), name) == user.service_account):
                    return True
        return False

    def authorize_path(self, user: User, path: str) -> None:
        """Raise 403 unless ``user`` may GET the non-resource ``path``."""
        public = path in PUBLIC_PATHS or path.startswith(("/healthz/", "/livez/", "/readyz/"))
        discovery = path.startswith(("/api", "/openapi")) and "system:authenticated" in user.groups
        with self.store.lock:
            if public or discovery or self.is_cluster_admin(user):
                return
        raise ApiError(403, "Forbidden", f'forbidden: User "{user.name}" cannot get path "{path}"', {})

    def authorize(self, user: User, verb: str, route: Route) -> None:
        """Raise 403 unless ``user`` is bound to cluster-admin (the only role the simulation evaluates)."""
        with self.store.lock:
            if self.is_cluster_admin(user):
                return
        resource = f"{route.plural}/{route.sub}" if route.sub else route.plural
        qualified = f"{route.plural}.{route.group}" if route.group else route.plural
        what = f'{qualified} "{route.name}"' if route.name else qualified
        scope = f'in the namespace "{route.namespace}"' if route.namespace else "at the cluster scope"
        details: Obj = {"kind": route.plural} | ({"name": route.name} if route.name else {}) | (
            {"group": route.group} if route.group else {})
        raise ApiError(403, "Forbidden", f'{what} is forbidden: User "{user.name}" cannot {verb} resource '
                       f'"{resource}" in API group "{route.group}" {scope}', details)

    def token_request(self, namespace: str, name: str, spec: Obj) -> Obj:
        """Issue a bound token for ServiceAccount ``namespace/name`` (the ``token`` subresource)."""
        account = self.store.get(SERVICEACCOUNTS, namespace, name)
        if account is None:
            raise not_found(SERVICEACCOUNTS, name)
        seconds = spec.get("expirationSeconds") or 3600
        if not isinstance(seconds, int):
            raise ApiError(400, "BadRequest", "spec.expirationSeconds must be an integer")
        if seconds < self.min_token_seconds:
            limit = "10 minutes" if self.min_token_seconds == 600 else f"{self.min_token_seconds} seconds"
            raise invalid(TOKEN_REQUESTS, name, "spec.expirationSeconds",
                          f"Invalid value: {seconds}: may not specify a duration less than {limit}")
        if seconds > 2**32:
            raise invalid(TOKEN_REQUESTS, name, "spec.expirationSeconds",
                          f"Invalid value: {seconds}: may not specify a duration larger than 2^32 seconds")
        audiences = spec.get("audiences") or [DEFAULT_AUDIENCE]
        now = time.time()
        uid = account["metadata"]["uid"]
        claims = {"aud": audiences, "exp": int(now + seconds), "iat": int(now), "nbf": int(now),
                  "iss": DEFAULT_AUDIENCE, "jti": str(uuid.uuid4()), "sub": f"system:serviceaccount:{namespace}:{name}",
                  "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": uid}}}
        header = {"alg": "RS256", "kid": secrets.token_urlsafe(32)}
        token = ".".join((_b64url(json.dumps(header).encode()), _b64url(json.dumps(claims).encode()),
                          _b64url(secrets.token_bytes(256))))
        self.tokens[token] = Token(namespace, name, uid, now + seconds)
        return {"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"name": name, "namespace": namespace, "creationTimestamp": rfc3339(now)},
                "spec": {"audiences": audiences, "expirationSeconds": seconds, "boundObjectRef": None},
                "status": {"token": token, "expirationTimestamp": rfc3339(now + seconds)}}


def check_binding(name: str, obj: Obj) -> None:
    """Validate a ClusterRoleBinding (roleRef and subjects) as the RBAC API does."""
    ref = obj.get("roleRef")
    if not isinstance(ref, dict) or not ref.get("name") or ref.get("kind") not in ("ClusterRole",):
        raise invalid(CLUSTERROLEBINDINGS, name, "roleRef", "Required value: a ClusterRole roleRef is required")
    for i, subject in enumerate(obj.get("subjects") or []):
        kind = subject.get("kind")
        if kind not in ("User", "Group", "ServiceAccount") or not subject.get("name"):
            raise invalid(CLUSTERROLEBINDINGS, name, f"subjects[{i}]", f"Unsupported value: {kind!r}")
        if kind == "ServiceAccount" and not subject.get("namespace"):
            raise invalid(CLUSTERROLEBINDINGS, name, f"subjects[{i}].namespace", "Required value")

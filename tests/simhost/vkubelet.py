"""Liqo's virtual kubelet, simulated: pods bound to a virtual node run in the provider cluster it stands for.

``liqoctl peer`` leaves in the consumer a Secret with the provider's advertised API address, CA and a token
(Liqo's identity for the tenant). A pod bound to the virtual node is reflected into the provider only if its
namespace was offloaded (``liqoctl offload namespace``: a ConfigMap ``offloading`` in it names the twin
namespace): same name, in the twin namespace; the provider's scheduler and kubelet run it on the provider's own
node (its host). A pod of any other namespace stays Pending with reason OffloadingBackOff, as Liqo's fallback
pod reflector leaves it, until its namespace is offloaded. The reflected pod's status is copied back as it
changes (a watch on the provider), its deletion follows the consumer pod's, and ``pods/log`` is read from the
provider. When the provider's node is lost, so is the virtual node: NotReady and tainted, as Liqo reports an
unhealthy peer.
Standard library only (the node-container process runs with ``python -S``).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from tests.simhost.apimodel import NODES, PODS, Obj, rfc3339
from tests.simhost.kubelet import TERMINAL, lost_status, mark_node_lost

if TYPE_CHECKING:
    from tests.simhost.apistore import Store

REMOTE_ID_LABEL = "liqo.io/remote-cluster-id"
ORIGIN_LABEL = "liqo.io/origin-cluster-id"
CLUSTER_ID_CONFIGMAP = "liqo-clusterid-configmap"
OFFLOADING = "offloading"  # the NamespaceOffloading stand-in written by `liqoctl offload namespace`
BACKOFF = "OffloadingBackOff"  # Liqo's reason for a pod bound to a virtual node outside offloaded namespaces
UNREACHABLE_AFTER = 10.0  # seconds without an answer from the provider before its pods count as lost


def identity_secret(provider_id: str) -> tuple[str, str]:
    """Return (namespace, name) of the Secret holding the consumer's credentials for ``provider_id``."""
    return f"liqo-tenant-{provider_id}", f"liqo-identity-{provider_id}"


class RemoteError(Exception):
    """The provider's API server could not be reached, or refused a request."""


class Remote:
    """An HTTPS client of the provider's API server with the identity liqoctl stored (stdlib only)."""

    def __init__(self, server: str, ca: bytes, token: str) -> None:
        url = urlsplit(server)
        self.host, self.port = url.hostname or "", url.port or 443
        self.context = ssl.create_default_context(cadata=ca.decode())
        self.headers = {"Authorization": f"Bearer {token}", "Accept": "application/json",
                        "Content-Type": "application/json"}

    def _connect(self, timeout: float) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=timeout)

    def request(self, method: str, path: str, body: Obj | None = None, timeout: float = 10.0) -> tuple[int, Obj]:
        """Send one request; return (status, JSON body). Raise RemoteError when the provider does not answer."""
        connection = self._connect(timeout)
        try:
            connection.request(method, path, json.dumps(body) if body is not None else None, self.headers)
            response = connection.getresponse()
            data = response.read()
        except OSError as exc:
            raise RemoteError(f"{method} {path}: {exc}") from None
        finally:
            connection.close()
        try:
            decoded = json.loads(data) if data else {}
        except ValueError:
            decoded = {"message": data.decode(errors="replace")}
        return response.status, decoded if isinstance(decoded, dict) else {}

    def stream(self, path: str, timeout: float) -> Iterator[bytes]:
        """Yield the body of a streaming GET (watch lines, a followed log) as it arrives."""
        connection = self._connect(timeout)
        try:
            connection.request("GET", path, headers=self.headers)
            response = connection.getresponse()
            if response.status != 200:
                raise RemoteError(f"GET {path}: {response.status} {response.read(2000).decode(errors='replace')}")
            connection.sock.settimeout(None)  # an idle watch or log is no sign of trouble
            yield b""  # connected
            while True:
                line = response.readline()
                if not line:
                    return
                yield line
        except OSError as exc:
            raise RemoteError(f"GET {path}: {exc}") from None
        finally:
            connection.close()


class VirtualKubelet:
    """Runs the pods bound to one virtual node in the provider cluster behind it."""

    def __init__(self, store: Store, node_name: str, provider_id: str, consumer_id: str, remote: Remote,
                 log: Callable[[str], None]) -> None:
        self.store = store
        self.node_name = node_name
        self.provider_id = provider_id
        self.consumer_id = consumer_id
        self.remote = remote
        self.log = log
        self.started: set[str] = set()
        self.rejected: set[str] = set()
        self.twins: dict[str, str] = {}  # namespace -> its twin in the provider, once known
        self.lost = False

    def remote_namespace(self, namespace: str) -> str | None:
        """Return the provider's twin of ``namespace``, None unless the namespace was offloaded."""
        if namespace not in self.twins:
            from tests.simhost.apimodel import RESOURCES

            record = self.store.get(RESOURCES["", "configmaps"], namespace, OFFLOADING)
            if record is None:
                return None
            self.twins[namespace] = record["data"]["remoteNamespace"]
        return self.twins[namespace]

    def start(self, pod: Obj) -> None:
        """Reflect a pod just bound to the virtual node into the provider, then follow it there.

        Outside an offloaded namespace the pod is rejected as Liqo rejects it: Pending, reason OffloadingBackOff.
        """
        uid = pod["metadata"]["uid"]
        if uid in self.started:
            return
        if self.remote_namespace(pod["metadata"]["namespace"]) is None:
            if uid not in self.rejected:
                self.rejected.add(uid)
                self.log(f"virtual kubelet {self.node_name}: {pod['metadata']['name']}: reflection disabled for "
                         f"namespace {pod['metadata']['namespace']} (not offloaded)")
                self.store.update(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"], reject)
            return
        self.started.add(uid)
        self.store.update(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"], lambda obj: obj[
            "status"].__setitem__("containerStatuses", [
                {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False, "restartCount": 0,
                 "started": False, "state": {"waiting": {"reason": "ContainerCreating"}}}
                for c in obj["spec"]["containers"]]))
        threading.Thread(target=self._follow, args=(pod,), daemon=True,
                         name=f"offloaded {pod['metadata']['name']}").start()

    def _follow(self, pod: Obj) -> None:
        meta = pod["metadata"]
        namespace = self.twins[meta["namespace"]]
        spec = json.loads(json.dumps(pod["spec"]))
        for key in ("nodeName", "nodeSelector", "affinity", "topologySpreadConstraints"):
            spec.pop(key, None)  # they chose among the consumer's nodes; the provider schedules on its own
        reflected = {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": meta["name"], "namespace": namespace,
            "labels": (meta.get("labels") or {}) | {ORIGIN_LABEL: self.consumer_id},
            "annotations": meta.get("annotations") or {}}, "spec": spec}
        try:
            code, answer = self.remote.request("POST", f"/api/v1/namespaces/{namespace}/pods", reflected)
            if code != 201:
                raise RemoteError(f"the provider refused the pod: {answer.get('message', code)}")
        except RemoteError as exc:
            self.log(f"virtual kubelet {self.node_name}: {meta['name']}: {exc}")
            self._lose(pod)
            return
        path = (f"/api/v1/namespaces/{namespace}/pods?watch=true&timeoutSeconds=3600&fieldSelector="
                + quote(f"metadata.name={meta['name']}"))
        since = answer["metadata"]["resourceVersion"]
        failing: float | None = None  # since when the provider does not answer
        while True:
            try:
                for line in self.remote.stream(f"{path}&resourceVersion={since}", timeout=UNREACHABLE_AFTER):
                    failing = None
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        raise RemoteError(obj.get("message", "watch error"))
                    since = obj["metadata"]["resourceVersion"]
                    if event["type"] == "DELETED":
                        self._gone(pod)
                        return
                    self._mirror(pod, obj)
            except (RemoteError, ValueError, KeyError) as exc:
                failing = failing or time.monotonic()
                if time.monotonic() - failing > UNREACHABLE_AFTER:
                    self.log(f"virtual kubelet {self.node_name}: provider unreachable: {exc}")
                    self._lose(pod)
                    return
                time.sleep(0.2)

    def _mirror(self, pod: Obj, remote: Obj) -> None:
        """Copy the reflected pod's status to the consumer's pod; a lost provider node loses this node."""
        status = dict(remote.get("status") or {})
        meta = pod["metadata"]

        def copy_status(obj: Obj) -> None:
            if obj["metadata"]["uid"] == meta["uid"]:
                keep = {c["type"]: c for c in obj["status"].get("conditions", []) if c["type"] == "PodScheduled"}
                conditions = [c for c in status.get("conditions", []) if c["type"] != "PodScheduled"]
                obj["status"] = status | {"conditions": list(keep.values()) + conditions}

        self.store.update(PODS, meta["namespace"], meta["name"], copy_status)
        if status.get("reason") == "NodeLost" and not self.lost:
            self.lost = True
            self.store.update(NODES, None, self.node_name, lambda node: mark_node_lost(node, rfc3339()))

    def _gone(self, pod: Obj) -> None:
        """The reflected pod was deleted: so is the consumer's pod if it was being deleted."""
        meta = pod["metadata"]
        with self.store.lock:
            current = self.store.get(PODS, meta["namespace"], meta["name"])
            if current is not None and current["metadata"]["uid"] == meta["uid"] and (
                    current["metadata"].get("deletionTimestamp") or current["status"].get("phase") not in TERMINAL):
                self.store.remove(PODS, meta["namespace"], meta["name"])

    def _lose(self, pod: Obj) -> None:
        """The provider does not answer: the pod is lost with its node, as when the peer goes away."""
        meta = pod["metadata"]
        now = rfc3339()
        with self.store.lock:
            self.lost = True
            self.store.update(NODES, None, self.node_name, lambda node: mark_node_lost(node, now))
            current = self.store.get(PODS, meta["namespace"], meta["name"])
            if current is not None and current["metadata"].get("deletionTimestamp"):
                self.store.remove(PODS, meta["namespace"], meta["name"])
            else:
                self.store.update(PODS, meta["namespace"], meta["name"],
                                  lambda obj: lost_status(obj, self.node_name, now))

    def stop(self, pod: Obj, grace: float) -> bool:
        """Delete the reflected pod (the consumer's pod goes when the provider reports it deleted)."""
        meta = pod["metadata"]
        if meta["uid"] not in self.started:
            return False
        path = f"/api/v1/namespaces/{self.twins[meta['namespace']]}/pods/{meta['name']}"

        def delete() -> None:
            try:
                code, _ = self.remote.request("DELETE", f"{path}?gracePeriodSeconds={int(grace)}")
            except RemoteError:
                code = 0
            if code != 200:
                self._gone(pod)

        threading.Thread(target=delete, daemon=True).start()
        return True

    def logs(self, pod: Obj, query: str) -> Iterator[bytes]:
        """Yield the log of the reflected pod, read from the provider (``follow`` streams)."""
        meta = pod["metadata"]
        path = f"/api/v1/namespaces/{self.twins[meta['namespace']]}/pods/{meta['name']}/log"
        for chunk in self.remote.stream(f"{path}?{query}" if query else path, timeout=UNREACHABLE_AFTER):
            if chunk:
                yield chunk


def reject(pod: Obj) -> None:
    """Mark a pod Liqo will not reflect as Liqo's fallback reflector does: Pending, reason OffloadingBackOff."""
    status = pod["status"]
    status["phase"], status["reason"] = "Pending", BACKOFF
    for condition in status.get("conditions", []):
        if condition.get("status") == "True":
            condition.update(status="False", reason=BACKOFF, lastTransitionTime=rfc3339())


def connect(store: Store, node_name: str, log: Callable[[str], None]) -> VirtualKubelet | None:
    """Return a virtual kubelet for ``node_name`` if it is a Liqo virtual node with a stored identity."""
    node = store.get(NODES, None, node_name)
    labels = (node or {}).get("metadata", {}).get("labels") or {}
    if labels.get("liqo.io/type") != "virtual-node":
        return None
    provider_id = labels.get(REMOTE_ID_LABEL, node_name)
    namespace, name = identity_secret(provider_id)
    from tests.simhost.apimodel import RESOURCES

    secret = store.get(RESOURCES["", "secrets"], namespace, name)
    installation = next((cm for cm in store.select(RESOURCES["", "configmaps"])
                         if cm["metadata"]["name"] == CLUSTER_ID_CONFIGMAP), None)
    if secret is None or installation is None:
        log(f"virtual kubelet {node_name}: no identity {namespace}/{name} for the provider; pods stay Pending")
        return None
    data: dict[str, Any] = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
    with contextlib.suppress(KeyError):
        remote = Remote(data["server"].decode(), data["ca.crt"], data["token"].decode())
        return VirtualKubelet(store, node_name, provider_id, installation["data"]["CLUSTER_ID"], remote, log)
    return None

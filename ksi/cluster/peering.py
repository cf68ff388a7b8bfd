"""Liqo peering of the nodes' clusters: the leader's cluster consumes, every other node's cluster provides.

Peering a provider gives the consumer one virtual node (labelled with the provider's cluster id); the
peering is done when every provider's virtual node is Ready. Liqo then runs on those virtual nodes only
the pods of offloaded namespaces: :func:`offload` offloads the ones the settings name. ``liqoctl unpeer``
is never called (it is known to hang): deleting the clusters ends the peering.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ksi import log
from ksi.cluster.api import ClusterApi
from ksi.errors import KsiError
from ksi.host.poll import completed, poll
from ksi.tools.liqoctl import Endpoint, Liqoctl

_log = log.get(__name__)

VIRTUAL_NODE_SELECTOR = "liqo.io/type=virtual-node"
REMOTE_CLUSTER_LABEL = "liqo.io/remote-cluster-id"
VIRTUAL_NODE_POLL = 0.1  # seconds between listings of the virtual nodes (one kept-alive connection, ~1 ms each)


@dataclass(frozen=True)
class Member:
    """A node's cluster as the other nodes see it (from its ready file)."""

    rank: int
    node: str
    cluster: str
    kubeconfig: Path
    address: str

    @property
    def endpoint(self) -> Endpoint:
        """The cluster as liqoctl addresses it (the Liqo cluster id is the cluster's name)."""
        return Endpoint(self.kubeconfig, self.cluster, self.cluster)


def ready_virtual_nodes(api: ClusterApi) -> set[str]:
    """Return the remote cluster ids of the Liqo virtual nodes that are Ready in ``api``'s cluster."""
    response = api.request("GET", "/api/v1/nodes", "list virtual nodes", query={"labelSelector": VIRTUAL_NODE_SELECTOR},
                           step="peer")
    if response.status != 200:
        raise KsiError(f"list virtual nodes failed: {response.message()}", step="peer",
                       fix="see the DEBUG log in the run directory")
    ready = set()
    for node in response.body.get("items") or []:
        status = node.get("status") or {}
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []):
            metadata = node.get("metadata") or {}
            ready.add(str((metadata.get("labels") or {}).get(REMOTE_CLUSTER_LABEL) or metadata.get("name")))
    return ready


def peer_all(liqoctl: Liqoctl, consumer: Member, api: ClusterApi, providers: Sequence[Member], gateway_port: int,
             timeout: float, every: Callable[[], None]) -> None:
    """Peer every provider to ``consumer``, all at once, then wait until each one's virtual node is Ready.

    ``api`` is the consumer's API; ``every`` runs while the virtual nodes are awaited (it raises to stop
    waiting: another node aborted).
    """
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(len(providers), 1), thread_name_prefix="peer")
    try:
        futures = {pool.submit(liqoctl.peer, consumer.endpoint, p.endpoint, gateway_address=p.address,
                               gateway_port=gateway_port, timeout=timeout): p for p in providers}
        for future in completed(futures):
            provider = futures[future]
            try:
                future.result()
            except KsiError as exc:
                # liqoctl runs here, on the leader: say so, or the provider reads as the node that failed.
                exc.message = (f"`liqoctl peer` on {consumer.node} (the leader) with the provider {provider.node} "
                               f"({provider.cluster}) failed: {exc.message}")
                exc.step = "peer"
                raise
            _log.info("peer: %s (%s) peered", provider.node, provider.cluster)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    wanted = {p.cluster for p in providers}
    seen: set[str] = set()

    def all_ready() -> bool | None:
        seen.clear()
        seen.update(ready_virtual_nodes(api))
        return True if seen >= wanted else None

    poll("the virtual nodes", all_ready, timeout=timeout, interval=VIRTUAL_NODE_POLL, every=every,
         expired=lambda: KsiError(f"virtual nodes of {', '.join(sorted(wanted - seen))} not Ready within "
                                  f"{timeout:g} s", step="peer",
                                  fix="check `liqoctl info` in the leader's cluster; raise KSI_PEER_TIMEOUT"))


BUILTIN_NAMESPACES = frozenset({"default"})  # every provider has them already: no same-name twin possible


def offload(liqoctl: Liqoctl, consumer: Member, api: ClusterApi, namespaces: Sequence[str], timeout: float) -> None:
    """Create each of ``namespaces`` in the consumer if missing, then ``liqoctl offload namespace`` it.

    A namespace ksi creates keeps its name in the providers (EnforceSameName: cross-namespace DNS works);
    ``default`` exists in every cluster, so its twins are named ``default-<consumer cluster id>``.
    """
    for namespace in namespaces:
        response = api.request("POST", "/api/v1/namespaces", f"create namespace {namespace}",
                               {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
                               step="offload")
        if response.status not in (201, 409):  # 409: it exists already
            raise KsiError(f"create namespace {namespace} failed: {response.message()}", step="offload",
                           fix="see the DEBUG log in the run directory")
    for namespace in namespaces:
        try:
            liqoctl.offload_namespace(consumer.endpoint, namespace, same_name=namespace not in BUILTIN_NAMESPACES,
                                      timeout=timeout)
        except KsiError as exc:
            exc.message = f"`liqoctl offload namespace {namespace}` on {consumer.node} (the leader) failed: " \
                          f"{exc.message}"
            exc.step = "offload"
            exc.fix = exc.fix or f"check KSI_OFFLOAD_NAMESPACES; `kubectl get namespaceoffloading -n {namespace}`"
            raise

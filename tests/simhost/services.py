"""Services: admission (ClusterIP and NodePort), and kube-proxy for the node's published NodePorts.

A pod's address is one of 127.0.0.0/8 on its node's host (kubelet.pod_ip), where its server listens (it
learns the address from the downward API, ``status.podIP``). A connection to a TCP port that kind publishes
(``extraPortMappings``) reaches the node container's port of the same number; when a NodePort Service owns
that port, kube-proxy forwards it to a ready endpoint pod of this node, otherwise it is closed at once
(nothing listens behind it). Endpoints on other nodes (through a Liqo tunnel) are not simulated.
Standard library only (the node-container process runs with ``python -S``).
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
from typing import TYPE_CHECKING

from tests.simhost.apimodel import PODS, SERVICES, Obj, invalid_all, matches, not_modelled

if TYPE_CHECKING:
    from tests.simhost.apistore import Store

NODE_PORTS = range(30000, 32768)


def admit_service(store: Store, service: Obj) -> None:
    """Default and check a new Service; allocate its cluster IP and node ports (every problem at once)."""
    spec = service.setdefault("spec", {})
    name = service["metadata"].get("name") or ""
    kind = spec.setdefault("type", "ClusterIP")
    if kind not in ("ClusterIP", "NodePort"):
        raise not_modelled(f"Services of type {kind}")
    used = {p.get("nodePort") for s in store.select(SERVICES) for p in s["spec"].get("ports") or []}
    problems = []
    ports = spec.get("ports") or []
    if not ports:
        problems.append(("spec.ports", "Required value"))
    for i, port in enumerate(ports):
        if not isinstance(port.get("port"), int) or not 1 <= port["port"] <= 65535:
            problems.append((f"spec.ports[{i}].port", f"Invalid value: {port.get('port')}: must be between 1 and "
                             "65535, inclusive"))
        port.setdefault("protocol", "TCP")
        port.setdefault("targetPort", port.get("port"))
        node_port = port.get("nodePort")
        if kind != "NodePort":
            if node_port:
                problems.append((f"spec.ports[{i}].nodePort", "Forbidden: may not be used when `type` is "
                                 "'ClusterIP'"))
            continue
        if node_port is None:
            free = [p for p in NODE_PORTS if p not in used]
            port["nodePort"] = node_port = random.choice(free)
        elif node_port not in NODE_PORTS:
            problems.append((f"spec.ports[{i}].nodePort", f"Invalid value: {node_port}: provided port is not in "
                             "the valid range. The range of valid ports is 30000-32767"))
        elif node_port in used:
            problems.append((f"spec.ports[{i}].nodePort", f"Invalid value: {node_port}: provided port is already "
                             "allocated"))
        used.add(node_port)
    if problems:
        raise invalid_all(SERVICES, name, problems)
    spec.setdefault("selector", {})
    ip = f"10.96.{random.randint(1, 254)}.{random.randint(1, 254)}"
    spec.setdefault("clusterIP", ip)
    spec.setdefault("clusterIPs", [spec["clusterIP"]])
    spec.setdefault("sessionAffinity", "None")
    spec.setdefault("ipFamilies", ["IPv4"])
    spec.setdefault("ipFamilyPolicy", "SingleStack")
    if kind == "NodePort":
        spec.setdefault("externalTrafficPolicy", "Cluster")
    spec.setdefault("internalTrafficPolicy", "Cluster")
    service["status"] = {"loadBalancer": {}}


def endpoint(store: Store, node: str, node_port: int) -> tuple[str, int] | None:
    """Return (pod address, port) of a ready local endpoint of the NodePort Service on ``node_port``."""
    with store.lock:
        for service in store.select(SERVICES):
            for port in service["spec"].get("ports") or []:
                if port.get("nodePort") != node_port or port.get("protocol", "TCP") != "TCP":
                    continue
                selector = [(k, "=", v) for k, v in (service["spec"].get("selector") or {}).items()]
                if not selector:
                    return None
                for pod in store.select(PODS, service["metadata"]["namespace"], selector):
                    status = pod.get("status") or {}
                    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))
                    if pod["spec"].get("nodeName") != node or not ready or not status.get("podIP") \
                            or not matches(pod["metadata"].get("labels") or {}, selector):
                        continue
                    target = port.get("targetPort")
                    if isinstance(target, str):
                        target = next((p["containerPort"] for c in pod["spec"]["containers"]
                                       for p in c.get("ports") or [] if p.get("name") == target), None)
                    if isinstance(target, int):
                        return status["podIP"], target
    return None


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copy bytes from ``source`` to ``sink`` until EOF, then half-close ``sink``."""
    with contextlib.suppress(OSError):
        while True:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def serve_node_port(sock: socket.socket, store: Store, node: str, node_port: int) -> None:
    """Accept connections on a published TCP port and forward each to the Service's endpoint (kube-proxy)."""
    while True:
        conn, _ = sock.accept()
        target = endpoint(store, node, node_port)
        if target is None:
            conn.close()
            continue
        try:
            upstream = socket.create_connection(target, timeout=5)
        except OSError:
            conn.close()
            continue
        upstream.settimeout(None)

        def relay(a: socket.socket = conn, b: socket.socket = upstream) -> None:
            other = threading.Thread(target=_pipe, args=(b, a), daemon=True)
            other.start()
            _pipe(a, b)
            other.join()
            a.close()
            b.close()

        threading.Thread(target=relay, daemon=True).start()

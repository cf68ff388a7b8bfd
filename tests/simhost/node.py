"""The process of a simulated node container: binds its published ports, then serves the cluster's API.

Started by ``nerdctl.spawn_node`` as ``python -I -S node.py CONTAINER_DIR READY_FD``, fully detached
(double fork, own session, stdio on the container log), like a rootless container under the user's systemd.
It reports readiness or its failure as one JSON line on READY_FD, then closes it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Any

GATEWAY_PROBE = b"ksi-sim-gateway?"


class PortError(Exception):
    """A published port could not be bound (in use, privileged, bad address)."""


def bind(mapping: dict[str, Any]) -> socket.socket:
    """Bind (and for TCP, listen on) one published host port, as rootlesskit's port driver does."""
    host, port, proto = mapping["host_ip"], int(mapping["host_port"]), mapping["protocol"]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    stream = proto == "tcp"
    sock = socket.socket(family, socket.SOCK_STREAM if stream else socket.SOCK_DGRAM)
    try:
        if stream:  # Go's net.Listen sets SO_REUSEADDR: a port in TIME_WAIT is free, a listening one is not
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        if stream:
            sock.listen(128)
    except OSError as exc:
        sock.close()
        where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        version = 6 if family == socket.AF_INET6 else 4
        raise PortError(f"listen {proto}{version} {where}: bind: {(exc.strerror or str(exc)).lower()}") from None
    return sock


def answer_gateway_probes(sock: socket.socket, container_port: int) -> None:
    """Answer the simulated liqoctl's probes on a published UDP port with the node port it forwards to.

    This stands in for a Liqo gateway server behind a NodePort: a consumer reaches it only through a UDP
    host port that kind publishes to the right container port.
    """
    while True:
        data, peer = sock.recvfrom(256)
        if data == GATEWAY_PROBE:
            sock.sendto(f"{GATEWAY_PROBE.decode()} {container_port}".encode(), peer)


def main(argv: list[str]) -> int:
    """Run the node container whose directory is ``argv[1]``, reporting readiness on fd ``argv[2]``."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.simhost import apiserver, common, services

    cdir, ready_fd = Path(argv[1]), int(argv[2])
    pid = os.getpid()
    common.write_json(cdir / common.STATE, {"pid": pid, "start": common.process_start(pid), "exit_code": None})
    spec = json.loads((cdir / "spec.json").read_text())
    sockets: list[tuple[dict[str, Any], socket.socket]] = []
    try:
        for mapping in spec["ports"]:
            sockets.append((mapping, bind(mapping)))
    except PortError as exc:
        (cdir / common.STATE).unlink()  # the task never started: nerdctl lists the container as Created
        os.write(ready_fd, (json.dumps({"error": str(exc)}) + "\n").encode())
        print(f"failed to publish ports: {exc}", flush=True)
        return 1
    api_socket = next(sock for mapping, sock in sockets if mapping.get("api"))
    address = api_socket.getsockname()
    record = common.read_json(cdir / common.RECORD) or {}
    server = apiserver.make_server(api_socket, spec["api"], str(cdir / "pki"), sys.stdout, cdir,
                                   record.get("mounts") or [])
    for mapping, sock in sockets:
        if mapping.get("api"):
            continue
        if mapping["protocol"] == "tcp":  # kube-proxy: a NodePort Service on this port forwards to its pods
            threading.Thread(target=services.serve_node_port, args=(
                sock, server.cluster.store, spec["api"]["node_name"], int(mapping["container_port"])),
                daemon=True).start()
        else:
            threading.Thread(target=answer_gateway_probes, args=(sock, int(mapping["container_port"])),
                             daemon=True).start()
    print(f"node {spec['api']['node_name']} serving the API on {address}", flush=True)
    os.write(ready_fd, b'{"ok": true}\n')
    os.close(ready_fd)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""The node's own address: the IPv4 address of the interface that carries its default route."""

from __future__ import annotations

import fcntl
import socket
import struct
from pathlib import Path

_SIOCGIFADDR = 0x8915


def default_route_interface(route_table: Path = Path("/proc/net/route")) -> str | None:
    """Return the interface of the IPv4 default route from /proc/net/route, or None."""
    try:
        lines = route_table.read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 7 and fields[1] == "00000000" and fields[7] == "00000000":
            return fields[0]
    return None


def interface_address(interface: str) -> str | None:
    """Return the primary IPv4 address of ``interface`` (SIOCGIFADDR), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            packed = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, struct.pack("256s", interface.encode()[:15]))
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


def node_address(configured: str = "") -> str | None:
    """Return ``configured`` (KSI_NODE_ADDRESS) or the address this node uses for its default route."""
    if configured:
        return configured
    interface = default_route_interface()
    return interface_address(interface) if interface else None

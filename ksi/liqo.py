"""Adapter for liqoctl (Liqo v1): install Liqo into a cluster, peer a provider cluster to a consumer."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ksi import proc

GATEWAY_SERVICE_TYPE = "NodePort"
_MARGIN = 10.0  # seconds past liqoctl's own --timeout before ksi kills it


@dataclass(frozen=True)
class Endpoint:
    """A cluster as liqoctl sees it: a kubeconfig, the context in it, and the Liqo cluster id."""

    kubeconfig: Path
    context: str
    cluster_id: str


def parse_version(text: str) -> tuple[int, int, int] | None:
    """Return (major, minor, patch) from ``liqoctl version --client`` output."""
    match = re.search(r"\bv?(\d+)\.(\d+)\.(\d+)", text)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


class Liqoctl:
    """Runs liqoctl; verbs only, the order and parallelism are decided by ksi.multinode."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = dict(env)

    def version(self, *, timeout: float = 30.0) -> tuple[int, int, int] | None:
        """Run ``liqoctl version --client`` and return the client version."""
        out = proc.run(["liqoctl", "version", "--client"], env=self._env, timeout=timeout, step="checks").stdout
        return parse_version(out)

    def install_kind(self, target: Endpoint, *, timeout: float, chart: str = "") -> None:
        """Run ``liqoctl install kind`` for ``target`` (cluster id = cluster name, no telemetry)."""
        argv = ["liqoctl", "install", "kind", "--kubeconfig", str(target.kubeconfig), "--context", target.context,
                "--cluster-id", target.cluster_id, "--timeout", f"{int(timeout)}s", "--disable-telemetry",
                "--skip-confirm"]
        if chart:
            argv += ["--local-chart-path", chart]
        proc.run(argv, env=self._env, timeout=timeout + _MARGIN, step="liqo install")

    def peer(self, consumer: Endpoint, provider: Endpoint, *, gateway_address: str, gateway_port: int,
             timeout: float) -> None:
        """Run ``liqoctl peer``: ``consumer`` gets a virtual node backed by ``provider``.

        The provider runs the gateway server as a NodePort service on ``gateway_port``, which kind publishes
        on the provider's host as UDP; the consumer's gateway client is told to dial the host's address and
        port, because the node's own address is behind the rootless NAT (Liqo's documented NAT setup).
        """
        argv = ["liqoctl", "peer", "--kubeconfig", str(consumer.kubeconfig), "--context", consumer.context,
                "--remote-kubeconfig", str(provider.kubeconfig), "--remote-context", provider.context,
                "--gw-server-service-type", GATEWAY_SERVICE_TYPE,
                "--gw-server-service-nodeport", str(gateway_port),
                "--gw-client-address", gateway_address, "--gw-client-port", str(gateway_port),
                "--timeout", f"{int(timeout)}s", "--skip-confirm"]
        proc.run(argv, env=self._env, timeout=timeout + _MARGIN, step=f"peer {provider.cluster_id}")

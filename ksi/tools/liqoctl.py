"""Adapter for liqoctl (Liqo v1): install Liqo into a cluster, peer a provider cluster to a consumer."""

from __future__ import annotations

import concurrent.futures
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ksi.tools import proc

MAJOR = 1  # Liqo v1: peering across mixed major versions is unsupported
GATEWAY_SERVICE_TYPE = "NodePort"
API_ADDRESS_VALUE = "apiServer.address"  # Helm value of Liqo's chart: the API address given to consumers
# The flags of `liqoctl peer` that set up the gateway behind the rootless NAT (see Liqoctl.peer).
PEER_FLAGS = ("--gw-server-service-type", "--gw-server-service-nodeport", "--gw-client-address", "--gw-client-port")
_MARGIN = 10.0  # seconds past liqoctl's own --timeout before ksi kills it


@dataclass(frozen=True)
class Endpoint:
    """A cluster as liqoctl sees it: a kubeconfig, the context in it, and the Liqo cluster id."""

    kubeconfig: Path
    context: str
    cluster_id: str


@dataclass(frozen=True)
class Client:
    """The liqoctl on PATH as ksi judges it, for ``ksi run`` and ``ksi doctor`` alike."""

    version: tuple[int, int, int] | None
    shown: str  # the version as liqoctl writes it (v1.0.0-rc.3), or its output when it has none
    missing_flags: tuple[str, ...]  # of PEER_FLAGS, those `liqoctl peer --help` does not list

    @property
    def wrong_major(self) -> bool:
        """True unless this is a Liqo v1 client."""
        return self.version is None or self.version[0] != MAJOR

    @property
    def usable(self) -> bool:
        """True when ksi can peer with this liqoctl: v1, with every gateway flag on ``peer``."""
        return not self.wrong_major and not self.missing_flags


def parse_version(text: str) -> tuple[int, int, int] | None:
    """Return (major, minor, patch) from ``liqoctl version --client`` output."""
    match = re.search(r"\bv?(\d+)\.(\d+)\.(\d+)", text)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


class Liqoctl:
    """Runs liqoctl; verbs only, the order and parallelism are decided by ksi.launch.multinode."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = dict(env)

    def version(self, *, timeout: float = 30.0) -> tuple[tuple[int, int, int] | None, str]:
        """Run ``liqoctl version --client``; return the version and how liqoctl writes it (v1.0.0-rc.3)."""
        out = proc.run(["liqoctl", "version", "--client"], env=self._env, timeout=timeout, step="checks").stdout
        shown = re.search(r"\bv?\d+\.\d+\.\d+\S*", out)
        return parse_version(out), shown[0] if shown else out.strip()[:40]

    def missing_peer_flags(self, *, timeout: float = 30.0) -> list[str]:
        """Run ``liqoctl peer --help`` and return the flags ksi gives ``peer`` that it does not list.

        The gateway flags got their ``--gw-`` names in 2025 (liqotech/liqo#2972); a liqoctl without them
        would fail only at peering time, after every cluster exists.
        """
        out = proc.run(["liqoctl", "peer", "--help"], env=self._env, timeout=timeout, step="checks").stdout
        return [flag for flag in PEER_FLAGS if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", out)]

    def client(self, *, timeout: float = 30.0) -> Client:
        """Run ``liqoctl version --client`` and ``liqoctl peer --help`` side by side; return what they tell.

        Raises the KsiError of a command that failed (ToolMissingError when liqoctl is not on PATH).
        """
        with concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="liqoctl") as pool:
            asked_version = pool.submit(self.version, timeout=timeout)
            asked_flags = pool.submit(self.missing_peer_flags, timeout=timeout)
            version, shown = asked_version.result()
            missing = asked_flags.result()
        shown = shown if shown.startswith("v") else f"v{shown}" if version else f"{shown!r} (unknown version)"
        return Client(version, shown, tuple(missing))

    def install_kind(self, target: Endpoint, api_url: str, *, timeout: float, chart: str = "") -> None:
        """Run ``liqoctl install kind`` for ``target`` (cluster id = cluster name, no telemetry).

        ``api_url`` is the API server as other nodes reach it (the node's address and kind's host port). Liqo
        hands that address to the consumers it peers with; without ``apiServer.address`` it would advertise
        the control-plane node's own IP and port 6443, which for kind is the node container's address behind
        the rootless NAT, unreachable from any other host (pkg/utils/apiserver GetURL).
        """
        argv = ["liqoctl", "install", "kind", "--kubeconfig", str(target.kubeconfig), "--context", target.context,
                "--cluster-id", target.cluster_id, "--timeout", f"{int(timeout)}s", "--disable-telemetry",
                "--set", f"{API_ADDRESS_VALUE}={api_url}", "--skip-confirm"]
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

    def offload_namespace(self, consumer: Endpoint, namespace: str, *, same_name: bool, timeout: float) -> None:
        """Run ``liqoctl offload namespace``: pods of ``namespace`` in ``consumer`` may run on its virtual nodes.

        Liqo's virtual kubelet reflects only pods of offloaded namespaces (others stay Pending with reason
        OffloadingBackOff). ``same_name`` keeps the namespace's name in the providers (EnforceSameName); a
        namespace every cluster already has, like ``default``, cannot (Liqo refuses a twin it did not create)
        and gets DefaultName, ``<namespace>-<consumer cluster id>``.
        """
        argv = ["liqoctl", "offload", "namespace", namespace, "--kubeconfig", str(consumer.kubeconfig),
                "--context", consumer.context,
                "--namespace-mapping-strategy", "EnforceSameName" if same_name else "DefaultName",
                "--pod-offloading-strategy", "LocalAndRemote", "--timeout", f"{max(int(timeout), 1)}s"]
        proc.run(argv, env=self._env, timeout=timeout + _MARGIN, step=f"offload {namespace}")

"""Simulated liqoctl v1.0: ``install kind``, ``peer``, ``unpeer``, ``offload namespace``, ``info``, ``version``.

Like the real one it talks to the clusters' API servers with the kubeconfigs it is given, so an unreachable
or untrusted server fails the command. What it records lives in the clusters themselves: namespace
``liqo`` and a cluster-ID ConfigMap for an installation (with the API address it advertises to consumers),
a ConfigMap per peering on both sides, and a virtual node in the consumer that is Ready only when the
provider's advertised API address answers from here with the provider's CA. The gateway is a UDP probe of
the provider's published NodePort; tunnels are not modelled. ``offload namespace``: liqoctl_offload.py.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import socket
import sys
import time
from typing import Any

import yaml

from tests.simhost import kubeconfig
from tests.simhost.apimodel import rfc3339
from tests.simhost.common import Flag, NotModelled, delay_or_fail, parse_duration, parse_flags, run_tool
from tests.simhost.kubeclient import ApiUnreachable, KubeClient
from tests.simhost.node import GATEWAY_PROBE

VERSION = "v1.0.0"
CLUSTER_ID_CONFIGMAP = "liqo-clusterid-configmap"
PEERING_PREFIX = "liqo-peering-"
REMOTE_ID_LABEL = "liqo.io/remote-cluster-id"
API_ADDRESS = "API_SERVER_ADDRESS"  # in the cluster-ID ConfigMap: what the installation advertises
REMOTE_API_PROBE = 3.0  # seconds the simulated virtual kubelet tries the advertised API address
IDENTITY_SECONDS = 7 * 24 * 3600  # the identity's token outlives any job
CLUSTER_ID = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

GLOBAL_FLAGS = [Flag("kubeconfig"), Flag("context"), Flag("namespace", "n"), Flag("verbose", "v", "bool"),
                Flag("skip-confirm", kind="bool"), Flag("help", "h", "bool")]
INSTALL_FLAGS = [Flag("cluster-id"), Flag("cluster-labels"), Flag("timeout"), Flag("local-chart-path"),
                 Flag("set", kind="list"), Flag("set-string", kind="list"), Flag("values", kind="list"),
                 Flag("version"), Flag("disable-telemetry", kind="bool"), Flag("reserved-subnets")]
PEER_FLAGS = [Flag("remote-kubeconfig"), Flag("remote-context"), Flag("remote-namespace"), Flag("timeout"),
              Flag("gw-server-service-type"), Flag("gw-server-service-nodeport"), Flag("gw-server-service-port"),
              Flag("gw-server-service-location"), Flag("gw-client-address"), Flag("gw-client-port"),
              Flag("in-band", kind="bool"), Flag("create-resource-slice", kind="bool"),
              Flag("create-virtual-node", kind="bool"), Flag("networking-disabled", kind="bool"),
              Flag("cpu"), Flag("memory"), Flag("pods"), Flag("mtu"), Flag("resource-slice-class")]
UNPEER_FLAGS = [Flag("remote-kubeconfig"), Flag("remote-context"), Flag("remote-namespace"), Flag("timeout")]


GATEWAY_FLAGS = ("gw-server-service-type", "gw-server-service-nodeport", "gw-server-service-port",
                 "gw-server-service-location", "gw-client-address", "gw-client-port")


def version() -> str:
    """Return the version this liqoctl plays: v1.0.0, or $KSI_SIM_LIQOCTL_VERSION."""
    return os.environ.get("KSI_SIM_LIQOCTL_VERSION") or VERSION


def has_gateway_flags() -> bool:
    """True when ``peer`` has the --gw-* flags: they got those names after v1.0.0-rc.3 (liqotech/liqo#2972)."""
    return "-" not in version().removeprefix("v")  # the v1.0.0 pre-releases had other names


def peer_flags() -> list[Flag]:
    """Return the flags of ``liqoctl peer`` in the version played."""
    return [f for f in PEER_FLAGS if has_gateway_flags() or f.name not in GATEWAY_FLAGS]


def peer_help() -> str:
    """Return ``liqoctl peer --help`` as cobra prints it: a description, usage, then one line per flag."""
    lines = ["Enable a peering towards a remote provider cluster.", "", "Usage:", "  liqoctl peer [flags]", "",
             "Flags:"]
    for flag in sorted(peer_flags(), key=lambda f: f.name):
        lines.append(f"      --{flag.name}{'' if flag.kind == 'bool' else ' string'}")
    lines += ["  -h, --help   help for peer", "", "Global Flags:"]
    lines += [f"      --{flag.name}" for flag in GLOBAL_FLAGS if flag.name != "help"]
    return "\n".join(lines)


class LiqoError(Exception):
    """A failure liqoctl prints as `` ERROR  <message>`` before exiting with status 1."""


def say(line: str) -> None:
    """Print an INFO line on stdout, as liqoctl's printer does."""
    print(f" INFO   {line}", flush=True)


def connect(path: str, context: str | None, where: str) -> KubeClient:
    """Return an API client for a kubeconfig (default: $KUBECONFIG, then ~/.kube/config)."""
    path = path or kubeconfig.path_for_merge("")
    try:
        return KubeClient(kubeconfig.load_client(path, context), timeout=10.0)
    except (kubeconfig.KubeconfigError, ApiUnreachable, OSError) as exc:
        raise LiqoError(f"({where}) unable to create a client for the cluster: {exc}") from None


def call(client: KubeClient, method: str, path: str, where: str, body: dict[str, Any] | None = None,
         accept: tuple[int, ...] = (200, 201)) -> tuple[int, dict[str, Any]]:
    """Send one API request; raise LiqoError unless the status is in ``accept``."""
    try:
        code, obj = client.request(method, path, body)
    except ApiUnreachable as exc:
        raise LiqoError(f"({where}) {exc}") from None
    if code not in accept:
        raise LiqoError(f"({where}) {obj.get('message') or f'{method} {path} answered {code}'}")
    return code, obj


def installation(client: KubeClient, namespace: str, where: str) -> dict[str, str] | None:
    """Return the data of the cluster-ID ConfigMap of a Liqo installation, None if Liqo is not installed."""
    code, obj = call(client, "GET", f"/api/v1/namespaces/{namespace}/configmaps/{CLUSTER_ID_CONFIGMAP}", where,
                     accept=(200, 404))
    return dict(obj.get("data") or {}) if code == 200 else None


def require_installation(client: KubeClient, namespace: str, where: str) -> dict[str, str]:
    """Return the installation data or fail like liqoctl does where Liqo is missing."""
    found = installation(client, namespace, where)
    if found is None:
        raise LiqoError(f"({where}) Liqo is not installed in the cluster (namespace \"{namespace}\"): "
                        "install it with 'liqoctl install'")
    return found


def apply_fault(op: str, message: str) -> None:
    """Apply the KSI_SIM_FAULTS fault for ``op``."""
    if delay_or_fail(op):
        raise LiqoError(f"{message}: context deadline exceeded (simulated by KSI_SIM_FAULTS)")


def remote_api_condition(remote: KubeClient, advertised: str) -> tuple[str, str]:
    """Return the virtual node's Ready status and message: can the consumer reach the advertised API?

    The virtual kubelet talks to the provider's API server at the address the provider advertised, trusting
    the provider's CA; that is what decides whether the virtual node turns Ready.
    """
    try:
        probe = KubeClient(dataclasses.replace(remote.client, server=advertised), timeout=REMOTE_API_PROBE)
        code, _ = probe.request("GET", "/version")
    except ApiUnreachable as exc:
        return "False", f"the remote API server at {advertised} is unreachable: {exc}"
    if code != 200:
        return "False", f"the remote API server at {advertised} answered {code}"
    return "True", "The Liqo Virtual Kubelet is posting ready status"


def virtual_node(provider_id: str, values: dict[str, Any], ready: tuple[str, str]) -> dict[str, Any]:
    """Return the Node object of the virtual node representing ``provider_id`` in the consumer."""
    now = rfc3339()
    resources = {"cpu": values.get("cpu") or "4", "memory": values.get("memory") or "8Gi",
                 "pods": values.get("pods") or "110"}
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": provider_id, "labels": {
            "liqo.io/type": "virtual-node", REMOTE_ID_LABEL: provider_id, "kubernetes.io/role": "agent",
            "kubernetes.io/hostname": provider_id, "type": "virtual-kubelet",
            "node.kubernetes.io/exclude-from-external-load-balancers": "true"}},
        "spec": {"taints": [{"key": "virtual-node.liqo.io/not-allowed", "value": "true", "effect": "NoExecute"}]},
        "status": {
            "conditions": [{"type": "Ready", "status": ready[0],
                            "reason": "KubeletReady" if ready[0] == "True" else "KubeletNotReady",
                            "message": ready[1], "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "capacity": resources, "allocatable": resources,
            "nodeInfo": {"architecture": "amd64", "bootID": "", "containerRuntimeVersion": "",
                         "kernelVersion": "", "kubeProxyVersion": "", "kubeletVersion": version(), "machineID": "",
                         "operatingSystem": "linux", "osImage": "", "systemUUID": ""},
        },
    }


def peering_record(remote_id: str, role: str) -> dict[str, Any]:
    """Return the ConfigMap standing for one side of a peering (Liqo's ForeignCluster)."""
    return {"metadata": {"name": PEERING_PREFIX + remote_id, "labels": {REMOTE_ID_LABEL: remote_id}},
            "data": {"clusterID": remote_id, "role": role}}


def validate_gateway(values: dict[str, Any]) -> None:
    """Check the gateway flags the way liqoctl's enum and integer flags do."""
    choices = {"gw-server-service-type": ("NodePort", "LoadBalancer", "ClusterIP"),
               "gw-server-service-location": ("Provider", "Consumer")}
    for flag, allowed in choices.items():
        if flag in values and values[flag] not in allowed:
            raise LiqoError(f'invalid argument "{values[flag]}" for "--{flag}" flag: must be one of '
                            + ", ".join(allowed))
    for flag in ("gw-server-service-nodeport", "gw-server-service-port", "gw-client-port"):
        if flag in values and not (str(values[flag]).isdigit() and 0 <= int(values[flag]) <= 65535):
            raise LiqoError(f'invalid argument "{values[flag]}" for "--{flag}" flag: strconv.ParseInt: parsing '
                            f'"{values[flag]}": invalid syntax')
    node_port = values.get("gw-server-service-nodeport")
    if node_port is not None and not 30000 <= int(node_port) <= 32767:  # the API server validates the Service
        raise LiqoError(f'(remote) Service "liqo-gateway" is invalid: spec.ports[0].nodePort: Invalid value: '
                        f"{node_port}: provided port is not in the valid range. The range of valid ports is "
                        "30000-32767")
    for flag in ("in-band", "create-resource-slice", "resource-slice-class", "mtu"):
        if flag in values:  # ksi uses none of these; what they change is not modelled
            raise NotModelled(f"flag --{flag}")
    if values.get("gw-server-service-location", "Provider") != "Provider":
        raise NotModelled("--gw-server-service-location Consumer (the gateway server on the consumer)")


def wait_for_gateway(address: str, port: int, node_port: int, timeout: float) -> None:
    """Wait until the provider's gateway answers on ``address:port`` (UDP), as the gateway client does.

    The provider's node container answers on every UDP host port it publishes, naming the container port
    behind it; the tunnel comes up only if that is the gateway's NodePort. Otherwise this times out after
    ``--timeout``, like the real command.
    """
    deadline = time.monotonic() + timeout
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                sock.sendto(GATEWAY_PROBE, (address, port))
                answer = sock.recv(256).split()
            except OSError:
                continue
            if len(answer) == 2 and answer[0] == GATEWAY_PROBE and int(answer[1]) == node_port:
                return
    raise LiqoError("(local) Timed out waiting for the connection to be established: context deadline exceeded "
                    f"(no Liqo gateway answers on {address}:{port}/udp)")


def peer(values: dict[str, Any]) -> None:
    """Run ``liqoctl peer``: check both API servers and installations and the gateway, then add the virtual node."""
    timeout = parse_duration(str(values.get("timeout", "10m")), "timeout")
    validate_gateway(values)
    if not values.get("remote-kubeconfig"):
        raise LiqoError("the remote kubeconfig must be given with --remote-kubeconfig")
    namespace = values.get("namespace") or "liqo"
    local = connect(values.get("kubeconfig", ""), values.get("context"), "local")
    remote = connect(values["remote-kubeconfig"], values.get("remote-context"), "remote")
    consumer_id = require_installation(local, namespace, "local")["CLUSTER_ID"]
    provider = require_installation(remote, values.get("remote-namespace") or "liqo", "remote")
    provider_id = provider["CLUSTER_ID"]
    if consumer_id == provider_id:
        raise LiqoError(f"the local and the remote cluster have the same cluster ID \"{consumer_id}\"")
    apply_fault("liqoctl-peer", "(local) Timed out waiting for the connection to be established")
    if not values.get("networking-disabled"):
        say("(local) Network configuration correctly retrieved")
        say("(remote) Network configuration correctly retrieved")
        service = values.get("gw-server-service-type", "LoadBalancer")
        say(f"(remote) Gateway server correctly set up ({service})")
        say("(local) Gateway client correctly set up")
        node_port = values.get("gw-server-service-nodeport")
        if service != "NodePort" or not node_port or not values.get("gw-client-address") \
                or not values.get("gw-client-port"):
            # On kind behind the rootless NAT only a NodePort published on the host, dialled at the host's
            # address, is reachable: a LoadBalancer gets no address, a ClusterIP or the node's own IP is
            # unreachable from another host. The client waits until --timeout, as the real one does.
            time.sleep(timeout)
            raise LiqoError("(local) Timed out waiting for the connection to be established: context deadline "
                            f"exceeded (a {service} gateway server is unreachable from the consumer)")
        wait_for_gateway(values["gw-client-address"], int(values["gw-client-port"]), int(node_port), timeout)
        say("(local) Connection is established")
    say("(local) Tenant namespace correctly ensured")
    say("(remote) Tenant correctly applied on provider cluster")
    call(local, "POST", f"/api/v1/namespaces/{namespace}/configmaps", "local",
         peering_record(provider_id, "Provider"), accept=(201, 409))
    call(remote, "POST", f"/api/v1/namespaces/{values.get('remote-namespace') or 'liqo'}/configmaps", "remote",
         peering_record(consumer_id, "Consumer"), accept=(201, 409))
    grant_identity(local, remote, consumer_id, provider_id, provider.get(API_ADDRESS) or "")
    if values.get("create-resource-slice", True) and values.get("create-virtual-node", True):
        say("(local) ResourceSlice resources: Accepted")
        ready = remote_api_condition(remote, provider.get(API_ADDRESS) or "")
        call(local, "POST", "/api/v1/nodes", "local", virtual_node(provider_id, values, ready), accept=(201, 409))
        say("(local) VirtualNode correctly created")
    say(f"Peering with cluster \"{provider_id}\" enabled")


def grant_identity(local: KubeClient, remote: KubeClient, consumer_id: str, provider_id: str, advertised: str) -> None:
    """Give the consumer an identity in the provider, as Liqo's authentication module does.

    In the provider: tenant namespace ``liqo-tenant-<consumer>`` with a ServiceAccount bound to cluster-admin.
    In the consumer: tenant namespace ``liqo-tenant-<provider>`` with a Secret holding the provider's
    advertised API address, its CA and a token of that ServiceAccount; the virtual kubelet uses it to run the
    virtual node's pods in the provider.
    """
    tenant = f"liqo-tenant-{consumer_id}"
    account = f"liqo-{consumer_id}"
    call(remote, "POST", "/api/v1/namespaces", "remote", {"metadata": {"name": tenant}}, accept=(201, 409))
    call(remote, "POST", f"/api/v1/namespaces/{tenant}/serviceaccounts", "remote",
         {"metadata": {"name": account}}, accept=(201, 409))
    call(remote, "POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", "remote", {
        "metadata": {"name": account, "labels": {REMOTE_ID_LABEL: consumer_id}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": tenant}]}, accept=(201, 409))
    _, token = call(remote, "POST", f"/api/v1/namespaces/{tenant}/serviceaccounts/{account}/token", "remote",
                    {"spec": {"expirationSeconds": IDENTITY_SECONDS}})
    local_tenant = f"liqo-tenant-{provider_id}"
    call(local, "POST", "/api/v1/namespaces", "local", {"metadata": {"name": local_tenant}}, accept=(201, 409))
    secret = f"liqo-identity-{provider_id}"
    call(local, "DELETE", f"/api/v1/namespaces/{local_tenant}/secrets/{secret}", "local", accept=(200, 404))
    data = {"server": advertised.encode(), "ca.crt": remote.client.ca or b"",
            "token": token["status"]["token"].encode()}
    call(local, "POST", f"/api/v1/namespaces/{local_tenant}/secrets", "local", {
        "metadata": {"name": secret, "labels": {REMOTE_ID_LABEL: provider_id}},
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()}})


def unpeer(values: dict[str, Any]) -> None:
    """Run ``liqoctl unpeer``: remove the virtual node and both peering records (absent ones are fine)."""
    parse_duration(str(values.get("timeout", "2m")), "timeout")
    if not values.get("remote-kubeconfig"):
        raise LiqoError("the remote kubeconfig must be given with --remote-kubeconfig")
    namespace = values.get("namespace") or "liqo"
    remote_namespace = values.get("remote-namespace") or "liqo"
    local = connect(values.get("kubeconfig", ""), values.get("context"), "local")
    remote = connect(values["remote-kubeconfig"], values.get("remote-context"), "remote")
    consumer_id = require_installation(local, namespace, "local")["CLUSTER_ID"]
    provider_id = require_installation(remote, remote_namespace, "remote")["CLUSTER_ID"]
    apply_fault("liqoctl-unpeer", "(local) Timed out waiting for the peering to be removed")
    call(local, "DELETE", f"/api/v1/nodes/{provider_id}", "local", accept=(200, 404))
    call(local, "DELETE", f"/api/v1/namespaces/liqo-tenant-{provider_id}", "local", accept=(200, 404))
    call(remote, "DELETE", f"/api/v1/namespaces/liqo-tenant-{consumer_id}", "remote", accept=(200, 404))
    call(remote, "DELETE", f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/liqo-{consumer_id}", "remote",
         accept=(200, 404))
    call(local, "DELETE", f"/api/v1/namespaces/{namespace}/configmaps/{PEERING_PREFIX}{provider_id}", "local",
         accept=(200, 404))
    call(remote, "DELETE", f"/api/v1/namespaces/{remote_namespace}/configmaps/{PEERING_PREFIX}{consumer_id}",
         "remote", accept=(200, 404))
    say(f"Peering with cluster \"{provider_id}\" disabled")


def info(values: dict[str, Any]) -> None:
    """Run ``liqoctl info``: the local installation and its peerings, as text, JSON, YAML or one field."""
    namespace = values.get("namespace") or "liqo"
    client = connect(values.get("kubeconfig", ""), values.get("context"), "local")
    code, _ = call(client, "GET", f"/api/v1/namespaces/{namespace}", "local", accept=(200, 404))
    found = installation(client, namespace, "local") if code == 200 else None
    if found is None:
        raise LiqoError("Liqo is not installed in the current cluster! \n\nYou can install liqo via the "
                        "'liqoctl install' command.\nCheck 'liqoctl install --help' for further information.")
    _, records = call(client, "GET", f"/api/v1/namespaces/{namespace}/configmaps?labelSelector={REMOTE_ID_LABEL}",
                      "local")
    labels = dict(p.split("=", 1) for p in found.get("CLUSTER_LABELS", "").split(",") if "=" in p)
    data: dict[str, Any] = {
        "local": {"clusterID": found["CLUSTER_ID"], "version": found.get("VERSION", ""), "labels": labels,
                  "APIServerAddr": found.get(API_ADDRESS) or client.client.server},
        "peerings": {"peers": [{"clusterID": r["data"]["clusterID"], "role": r["data"]["role"],
                                "networkingStatus": "Healthy", "authenticationStatus": "Healthy",
                                "offloadingStatus": "Healthy"} for r in records.get("items", [])]},
    }
    output, query = values.get("output"), values.get("get")
    if output not in (None, "json", "yaml"):
        raise LiqoError(f'invalid output format "{output}": supported formats are json and yaml')
    if query:
        path = {"clusterid": "local.clusterid"}.get(query.lower(), query).strip(".").split(".")
        current: Any = data
        for part in path:
            match = next((k for k in current if k.lower() == part.lower()), None) if isinstance(current, dict) \
                else None
            if match is None:
                raise LiqoError(f'invalid query "{query}": "{part}" not found')
            current = current[match]
        print(current if not isinstance(current, dict | list) else
              json.dumps(current, indent=2) if output == "json" else yaml.safe_dump(current).rstrip())
    elif output == "json":
        print(json.dumps(data, indent=2))
    elif output == "yaml":
        print(yaml.safe_dump(data, sort_keys=False).rstrip())
    else:
        print(f"Local installation info\n  Cluster ID: {data['local']['clusterID']}\n  Version: "
              f"{data['local']['version']}\n  K8s API server: {data['local']['APIServerAddr']}\n\nActive peerings")
        for peer_info in data["peerings"]["peers"]:
            print(f"  {peer_info['clusterID']}\n    Role: {peer_info['role']}\n    Networking status: Healthy\n"
                  "    Authentication status: Healthy\n    Offloading status: Healthy")


def run(args: list[str]) -> int:
    """Run one liqoctl command line (without the program name)."""
    from tests.simhost.liqoctl_offload import OFFLOAD_FLAGS, offload  # it uses this module's helpers

    words = [a for a in args if not a.startswith("-")][:2]
    command = words[0] if words else ""
    specific = {"install": INSTALL_FLAGS, "peer": peer_flags(), "unpeer": UNPEER_FLAGS,
                "info": [Flag("output", "o"), Flag("get", "g")], "version": [Flag("client", kind="bool")],
                "offload": OFFLOAD_FLAGS}
    if command not in specific:
        raise NotModelled(f"command {command!r}")
    if command == "peer":
        unknown = next((a for a in args if a.split("=", 1)[0].removeprefix("--") in GATEWAY_FLAGS), None)
        if unknown is not None and not has_gateway_flags():
            print(f"Error: unknown flag: {unknown.split('=', 1)[0]}", file=sys.stderr)
            return 1
    values, positional = parse_flags(args, GLOBAL_FLAGS + specific[command])
    if values.get("help"):
        if positional != ["peer"]:
            raise NotModelled(f"--help of {' '.join(positional)!r}")
        print(peer_help())
        return 0
    expected = ["install", "kind"] if command == "install" else [command]
    if command == "offload" and len(positional) == 3 and positional[1] in ("namespace", "ns"):
        expected = positional  # v1.0 takes exactly one namespace
    if positional != expected:
        raise NotModelled(f"arguments {' '.join(positional)!r}")
    try:
        if command == "version":
            print(f"Client version: {version()}")
            if not values.get("client"):
                client = connect(values.get("kubeconfig", ""), values.get("context"), "local")
                found = installation(client, values.get("namespace") or "liqo", "local")
                if found is None:
                    raise LiqoError("Unable to retrieve the Liqo server version: release: not found")
                print(f"Server version: {found.get('VERSION', version())}")
        else:
            from tests.simhost.liqoctl_install import install  # it uses this module's helpers

            if command == "offload":
                offload(values, positional[2])
                return 0
            {"install": install, "peer": peer, "unpeer": unpeer, "info": info}[command](values)
    except LiqoError as exc:
        print(f" ERROR  {exc}", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    """Entry point of the ``liqoctl`` executable."""
    return run_tool("liqoctl", ["liqoctl", *sys.argv[1:]], run)

"""``liqoctl install kind`` of the simulated liqoctl: records Liqo in the cluster and starts its pods.

Like the real command it needs Liqo's Helm chart: ``--local-chart-path`` (a directory or a ``.tgz``), or
else the chart of the version installed from Liqo's Helm repository (a registry contact, which fails
without network). Helm creates the chart's workloads and waits (``--timeout``) for them: here one pod per
template that names images (:func:`tests.simhost.liqochart.install_images`); the node's kubelet decides
whether each one runs (:mod:`tests.simhost.kubelet`), so images that are neither loaded into the cluster
nor pullable make the install time out, as they do for real.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

from tests.simhost import liqochart, registry
from tests.simhost.common import parse_duration
from tests.simhost.kubeclient import KubeClient
from tests.simhost.liqoctl import (
    API_ADDRESS,
    CLUSTER_ID,
    CLUSTER_ID_CONFIGMAP,
    LiqoError,
    apply_fault,
    call,
    connect,
    installation,
    say,
    version,
)

HELM_REPO = "https://helm.liqo.io/"
RELEASE_URL = "https://github.com/liqotech/liqo/releases/download/{version}/liqo-{version}.tgz"
TIMED_OUT = ("Failed installing or upgrading Liqo: release liqo failed, and has been uninstalled due to atomic being "
             "set: context deadline exceeded")


def chart_for(values: dict[str, Any], liqo_version: str) -> liqochart.Chart:
    """Return the chart to install: the local one, or the release's from Liqo's Helm repository."""
    local = values.get("local-chart-path")
    if local:
        if not Path(local).exists():
            raise LiqoError(f'Failed installing or upgrading Liqo: path "{local}" not found')
        try:
            return liqochart.load(local)
        except liqochart.ChartError as exc:
            raise LiqoError(f"Failed installing or upgrading Liqo: {exc}") from None
    index = f"{HELM_REPO}index.yaml"
    try:
        registry.contact("liqoctl", "helm.liqo.io", index)
    except registry.RegistryError as exc:
        raise LiqoError(f'looks like "{HELM_REPO}" is not a valid chart repository or cannot be reached: Get '
                        f'"{index}": {exc}') from None
    url = RELEASE_URL.format(version=liqo_version)
    try:
        registry.contact("liqoctl", "github.com", url)
    except registry.RegistryError as exc:
        raise LiqoError(f'failed to fetch {url}: Get "{url}": {exc}') from None
    return liqochart.Chart(liqochart.load_bytes(liqochart.package(liqo_version)))


def _helm_value(text: str) -> Any:
    """Return a --set value as Helm's strvals types it (booleans and integers are not strings)."""
    if text in ("true", "false"):
        return text == "true"
    return int(text) if text.isdigit() else text


def pod_name(template: str) -> str:
    """Return the name of the pod standing for what ``template`` deploys."""
    return f"liqo-{template}"[:63]


def start_pods(client: KubeClient, namespace: str, images: dict[str, list[str]], policy: str) -> list[str]:
    """Create one pod per template, one container per image (each runs ``true``); return the pod names."""
    names = []
    for template, refs in images.items():
        name = pod_name(template)
        pod = {"metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "liqo"}},
               "spec": {"restartPolicy": "Never",
                        "containers": [{"name": f"c{i}", "image": image, "imagePullPolicy": policy, "command": ["true"]}
                                       for i, image in enumerate(refs)]}}
        call(client, "POST", f"/api/v1/namespaces/{namespace}/pods", "local", pod, accept=(201, 409))
        names.append(name)
    return names


def pods_started(client: KubeClient, namespace: str, names: list[str], deadline: float) -> bool:
    """Wait until every pod ran (Running or Succeeded); False as soon as one cannot get its image, or at the deadline.

    Helm would keep waiting until its timeout: the caller does.
    """
    pending = set(names)
    while pending and time.monotonic() < deadline:
        for name in sorted(pending):
            code, pod = call(client, "GET", f"/api/v1/namespaces/{namespace}/pods/{name}", "local", accept=(200, 404))
            status = (pod.get("status") or {}) if code == 200 else {}
            if status.get("phase") in ("Running", "Succeeded"):
                pending.discard(name)
            elif any(s.get("state", {}).get("waiting", {}).get("reason", "").startswith(("ErrImage", "InvalidImage"))
                     for s in status.get("containerStatuses", [])):
                return False
        if pending:
            time.sleep(0.05)
    return not pending


def install(values: dict[str, Any]) -> None:
    """Run ``liqoctl install kind``: record Liqo (namespace, cluster ID, version) and start its pods."""
    timeout = parse_duration(str(values.get("timeout", "10m")), "timeout")
    started = time.monotonic()
    liqo_version = values.get("version") or version()
    chart_values: dict[str, str] = {}
    for item in values.get("set", []) + values.get("set-string", []):
        for pair in item.split(","):
            if "=" not in pair:
                raise LiqoError(f'failed parsing --set data: key "{pair}" has no value')
            key, _, value = pair.partition("=")
            chart_values[key] = value
    for path in values.get("values", []):
        if not Path(path).is_file():
            raise LiqoError(f"open {path}: no such file or directory")
    cluster_id = values.get("cluster-id") or f"cluster-{secrets.token_hex(3)}"
    if not CLUSTER_ID.match(cluster_id) or len(cluster_id) > 63:
        raise LiqoError(f'invalid argument "{cluster_id}" for "--cluster-id" flag: the cluster ID must be a valid '
                        "RFC 1123 label")
    if values.get("local-chart-path") and not Path(values["local-chart-path"]).exists():
        raise LiqoError(f'Failed installing or upgrading Liqo: path "{values["local-chart-path"]}" not found')
    namespace = values.get("namespace") or "liqo"
    client = connect(values.get("kubeconfig", ""), values.get("context"), "local")
    apply_fault("liqoctl-install", "Failed installing or upgrading Liqo: timed out waiting for the condition")
    say("Kubernetes clients successfully initialized")
    chart = chart_for(values, liqo_version)
    existing = installation(client, namespace, "local")
    if existing is not None and values.get("cluster-id") and existing.get("CLUSTER_ID") != cluster_id:
        raise LiqoError(f"the cluster ID cannot be changed once Liqo is installed: it is "
                        f"\"{existing.get('CLUSTER_ID')}\", not \"{cluster_id}\"")
    say("Installer initialized")
    data = {"CLUSTER_ID": existing.get("CLUSTER_ID", cluster_id) if existing else cluster_id,
            "VERSION": liqo_version, "CLUSTER_LABELS": values.get("cluster-labels") or "",
            API_ADDRESS: advertised_api(client, chart_values.get("apiServer.address", ""))}
    call(client, "POST", "/api/v1/namespaces", "local", {"metadata": {"name": namespace}}, accept=(201, 409))
    overrides = {"tag": liqo_version, "telemetry.enabled": not values.get("disable-telemetry")}
    overrides |= {key: _helm_value(value) for key, value in chart_values.items()}
    images = liqochart.install_images(chart, overrides)
    pods = start_pods(client, namespace, images, str(liqochart.merge(chart.values, overrides).get("pullPolicy")
                                                     or "IfNotPresent"))
    if not pods_started(client, namespace, pods, started + timeout):
        # Helm's --wait: pods that cannot pull never start; at the timeout the release is rolled back (atomic)
        time.sleep(max(timeout - (time.monotonic() - started), 0.0))
        for name in pods:
            call(client, "DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", "local", accept=(200, 404))
        raise LiqoError(TIMED_OUT)
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    if existing is not None:
        call(client, "DELETE", f"{base}/{CLUSTER_ID_CONFIGMAP}", "local", accept=(200, 404))
    call(client, "POST", base, "local", {"metadata": {"name": CLUSTER_ID_CONFIGMAP, "labels": {
        "liqo.io/clusterid-configmap": "true"}}, "data": data})
    say("Cluster configuration correctly retrieved")
    say("Installation parameters correctly generated")
    say(f"All Set! Liqo {data['VERSION']} is installed with cluster ID \"{data['CLUSTER_ID']}\". You can now proceed "
        "establishing a peering (liqoctl peer --help for more information)")


def advertised_api(client: KubeClient, override: str) -> str:
    """Return the API address this installation hands to its consumers, as Liqo's GetURL picks it.

    ``apiServer.address`` if set (https:// added when missing), else the first control-plane node's
    InternalIP with port 6443: for kind, the node container's address, which no other host can reach.
    """
    if override:
        return override if override.startswith("https://") else f"https://{override}"
    _, nodes = call(client, "GET", "/api/v1/nodes?labelSelector=node-role.kubernetes.io/control-plane", "local")
    for node in nodes.get("items", []):
        for address in node.get("status", {}).get("addresses", []):
            if address.get("type") == "InternalIP":
                return f"https://{address['address']}:6443"
    raise LiqoError("no ApiServer.Address variable provided and no master node found, one of the two values must "
                    "be present")

"""Simulated ``liqoctl offload namespace NAME`` (liqoctl v1.0, pkg/liqoctl/offload).

The real command creates the NamespaceOffloading ``offloading`` in namespace NAME of the consumer and waits
(``--timeout``, default 20 s) until Liqo's controllers report it Ready: for every peered provider a twin
namespace exists, named after the mapping strategy (DefaultName: ``NAME-<consumer cluster id>``,
EnforceSameName: ``NAME``, SelectedName: ``--remote-namespace-name``). A twin namespace that already exists
in the provider without being Liqo's ("namespace "default" already exists and it is not managed by
NamespaceMap ...") fails the offloading: the command reports the ``AllFailed``/``SomeFailed`` phase and exits 1.

Here the NamespaceOffloading is a ConfigMap ``offloading`` in NAME holding the spec and, per provider, the
twin namespace; the twin namespaces are created in the providers with the consumer's identity, annotated as
Liqo's. The simulated virtual kubelet reflects only pods of namespaces that carry such a ConfigMap.
The Liqo webhook that adds the virtual-node toleration to pods of offloaded namespaces is not modelled
(pods tolerate the taint themselves), so only ``--pod-offloading-strategy LocalAndRemote`` is.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

from tests.simhost.common import Flag, NotModelled, parse_duration
from tests.simhost.kubeclient import ApiUnreachable, KubeClient
from tests.simhost.liqoctl import (
    PEERING_PREFIX,
    REMOTE_ID_LABEL,
    LiqoError,
    apply_fault,
    call,
    connect,
    require_installation,
    say,
)

OFFLOADING = "offloading"  # the NamespaceOffloading's name (consts.DefaultNamespaceOffloadingName)
MANAGED_BY = "liqo.io/remote-namespace-managed-by"  # annotation on a twin namespace Liqo created
ORIGINAL_NAME = "liqo.io/remote-namespace-original-name"
STRATEGIES = {"namespace-mapping-strategy": ("EnforceSameName", "DefaultName", "SelectedName"),
              "pod-offloading-strategy": ("LocalAndRemote", "Remote", "Local")}
OFFLOAD_FLAGS = [Flag("namespace-mapping-strategy"), Flag("pod-offloading-strategy"), Flag("remote-namespace-name"),
                 Flag("selector", "l", "list"), Flag("output", "o"), Flag("timeout")]


def twin_name(namespace: str, strategy: str, consumer_id: str, selected: str) -> str:
    """Return the provider-side name of ``namespace`` under ``strategy`` (Liqo's remoteNamespaceName)."""
    if strategy == "EnforceSameName":
        return namespace
    if strategy == "SelectedName":
        return selected
    return f"{namespace}-{consumer_id}"


def provider_client(local: KubeClient, provider_id: str) -> KubeClient:
    """Return a client of a provider built from the identity ``liqoctl peer`` stored in the consumer."""
    _, secret = call(local, "GET", f"/api/v1/namespaces/liqo-tenant-{provider_id}/secrets/"
                     f"liqo-identity-{provider_id}", "local")
    data = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
    identity = dataclasses.replace(local.client, server=data["server"].decode(), ca=data["ca.crt"],
                                   token=data["token"].decode(), cert=None, key=None)
    return KubeClient(identity, timeout=10.0)


def create_twin(provider: KubeClient, twin: str, namespace: str, owner: str) -> str | None:
    """Create the twin namespace in a provider; return why it failed, None when it is (already) Liqo's."""
    try:
        code, obj = provider.request("POST", "/api/v1/namespaces", {"metadata": {
            "name": twin, "annotations": {MANAGED_BY: owner, ORIGINAL_NAME: namespace}}})
        if code == 409:
            code, obj = provider.request("GET", f"/api/v1/namespaces/{twin}")
            if (obj.get("metadata", {}).get("annotations") or {}).get(MANAGED_BY) != owner:
                return f'namespace "{twin}" already exists and it is not managed by NamespaceMap "{owner}"'
        elif code != 201:
            return str(obj.get("message") or code)
    except ApiUnreachable as exc:
        return str(exc)
    return None


def offload(values: dict[str, Any], namespace: str) -> None:
    """Run ``liqoctl offload namespace NAMESPACE``: record the offloading and create the twin namespaces."""
    parse_duration(str(values.get("timeout", "20s")), "timeout")  # the twins are made at once: no wait
    for flag, allowed in STRATEGIES.items():
        if flag in values and values[flag] not in allowed:
            raise LiqoError(f'invalid argument "{values[flag]}" for "--{flag}" flag: must be one of '
                            + ", ".join(allowed))
    for flag in ("selector", "output"):
        if flag in values:
            raise NotModelled(f"flag --{flag}")
    pods = values.get("pod-offloading-strategy", "LocalAndRemote")
    if pods != "LocalAndRemote":
        raise NotModelled(f"--pod-offloading-strategy {pods} (Liqo's scheduling webhook)")
    strategy = values.get("namespace-mapping-strategy", "DefaultName")
    selected = values.get("remote-namespace-name", "")
    if strategy == "SelectedName" and not selected:
        raise LiqoError("the remote namespace name must be specified when using the SelectedName strategy")
    liqo = values.get("namespace") or "liqo"
    local = connect(values.get("kubeconfig", ""), values.get("context"), "local")
    consumer_id = require_installation(local, liqo, "local")["CLUSTER_ID"]
    apply_fault("liqoctl-offload", "Failed enabling namespace offloading")
    _, records = call(local, "GET", f"/api/v1/namespaces/{liqo}/configmaps?labelSelector={REMOTE_ID_LABEL}",
                      "local")
    providers = sorted(r["data"]["clusterID"] for r in records.get("items", [])
                       if r["metadata"]["name"].startswith(PEERING_PREFIX) and r["data"].get("role") == "Provider")
    twin = twin_name(namespace, strategy, consumer_id, selected)
    record = {"metadata": {"name": OFFLOADING, "labels": {"liqo.io/namespace-offloading": "true"}},
              "data": {"namespaceMappingStrategy": strategy, "podOffloadingStrategy": pods,
                       "remoteNamespace": twin}}
    code, _ = call(local, "POST", f"/api/v1/namespaces/{namespace}/configmaps", "local", record,
                        accept=(201, 409, 404))
    if code == 404:
        raise LiqoError(f'Failed enabling namespace offloading: namespaces "{namespace}" not found')
    if code == 409:
        _, current = call(local, "GET", f"/api/v1/namespaces/{namespace}/configmaps/{OFFLOADING}", "local")
        if current["data"]["namespaceMappingStrategy"] != strategy:  # Liqo's webhook keeps it immutable
            raise LiqoError("Failed enabling namespace offloading: The NamespaceMappingStrategy value cannot be "
                            "modified after creation")
    say(f'Offloading of namespace "{namespace}" correctly enabled')
    failed = []
    for provider_id in providers:
        why = create_twin(provider_client(local, provider_id), twin, namespace, f"liqo-tenant-{provider_id}/"
                          f"{consumer_id}")
        if why is not None:
            failed.append(why)
    if failed:
        phase = "AllFailed" if len(failed) == len(providers) else "SomeFailed"
        # The real command polls the phase until --timeout; a failed phase ends the wait at once.
        raise LiqoError(f'Failed waiting for offloading to complete: the offloading is in "{phase}" state '
                        f"({'; '.join(failed)})")
    if not providers:
        say("Offloading completed, but no cluster was selected")
        return
    say("Offloading completed successfully")

"""Server-side field validation (``fieldValidation=Strict|Warn``) for the fields of the objects the simulation runs.

The fields listed here are those of the Kubernetes API types; a field not listed in a checked place is
unknown, as the real API server's strict decoding says. Places not described here are not checked.
Standard library only (the node-container process runs with ``python -S``).
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]  # field -> sub-schema (a dict), [sub-schema] for a list of objects, or None (not checked)

METADATA: Schema = {k: None for k in (
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation", "creationTimestamp",
    "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations", "ownerReferences", "finalizers",
    "managedFields")}
CONTAINER: Schema = {k: None for k in (
    "name", "image", "command", "args", "workingDir", "ports", "envFrom", "env", "resources", "resizePolicy",
    "restartPolicy", "volumeMounts", "volumeDevices", "livenessProbe", "readinessProbe", "startupProbe",
    "lifecycle", "terminationMessagePath", "terminationMessagePolicy", "imagePullPolicy", "securityContext",
    "stdin", "stdinOnce", "tty")} | {
    "env": [{"name": None, "value": None, "valueFrom": None}],
    "volumeMounts": [{k: None for k in ("name", "readOnly", "recursiveReadOnly", "mountPath", "subPath",
                                        "mountPropagation", "subPathExpr")}],
    "ports": [{k: None for k in ("name", "hostPort", "containerPort", "protocol", "hostIP")}],
    "resources": {"limits": None, "requests": None, "claims": None}}
POD_SPEC: Schema = {k: None for k in (
    "volumes", "initContainers", "containers", "ephemeralContainers", "restartPolicy",
    "terminationGracePeriodSeconds", "activeDeadlineSeconds", "dnsPolicy", "nodeSelector", "serviceAccountName",
    "serviceAccount", "automountServiceAccountToken", "nodeName", "hostNetwork", "hostPID", "hostIPC",
    "shareProcessNamespace", "securityContext", "imagePullSecrets", "hostname", "subdomain", "affinity",
    "schedulerName", "tolerations", "hostAliases", "priorityClassName", "priority", "dnsConfig", "readinessGates",
    "runtimeClassName", "enableServiceLinks", "preemptionPolicy", "overhead", "topologySpreadConstraints",
    "setHostnameAsFQDN", "os", "hostUsers", "schedulingGates", "resourceClaims", "resources")} | {
    "containers": [CONTAINER], "initContainers": [CONTAINER]}
POD_TEMPLATE: Schema = {"metadata": METADATA, "spec": POD_SPEC}
JOB_SPEC: Schema = {k: None for k in (
    "parallelism", "completions", "activeDeadlineSeconds", "podFailurePolicy", "successPolicy", "backoffLimit",
    "backoffLimitPerIndex", "maxFailedIndexes", "selector", "manualSelector", "template", "ttlSecondsAfterFinished",
    "completionMode", "suspend", "podReplacementPolicy", "managedBy")} | {"template": POD_TEMPLATE}
SERVICE_SPEC: Schema = {k: None for k in (
    "ports", "selector", "clusterIP", "clusterIPs", "type", "externalIPs", "sessionAffinity", "loadBalancerIP",
    "loadBalancerSourceRanges", "externalName", "externalTrafficPolicy", "healthCheckNodePort",
    "publishNotReadyAddresses", "sessionAffinityConfig", "ipFamilies", "ipFamilyPolicy",
    "allocateLoadBalancerNodePorts", "loadBalancerClass", "internalTrafficPolicy", "trafficDistribution")} | {
    "ports": [{k: None for k in ("name", "protocol", "appProtocol", "port", "targetPort", "nodePort")}]}
TOP = {"apiVersion": None, "kind": None, "metadata": METADATA}
SCHEMAS: dict[str, Schema] = {
    "Job": TOP | {"spec": JOB_SPEC, "status": None},
    "Pod": TOP | {"spec": POD_SPEC, "status": None},
    "Service": TOP | {"spec": SERVICE_SPEC, "status": None},
    "ConfigMap": TOP | {"data": None, "binaryData": None, "immutable": None},
    "Secret": TOP | {"data": None, "stringData": None, "type": None, "immutable": None},
    "Namespace": TOP | {"spec": None, "status": None},
}


def unknown_fields(kind: str, obj: Any) -> list[str]:
    """Return the paths of the fields of ``obj`` that a ``kind`` does not have (in the places described)."""
    schema = SCHEMAS.get(kind)
    return _walk(obj, schema, "") if schema is not None else []


def _walk(value: Any, schema: Any, path: str) -> list[str]:
    if schema is None:
        return []
    if isinstance(schema, list):
        found = []
        for i, item in enumerate(value if isinstance(value, list) else []):
            found += _walk(item, schema[0], f"{path}[{i}]")
        return found
    if not isinstance(value, dict):
        return []
    found = []
    for key, item in value.items():
        where = f"{path}.{key}" if path else key
        if key not in schema:
            found.append(where)
        else:
            found += _walk(item, schema[key], where)
    return found

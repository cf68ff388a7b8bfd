"""kind's cluster configuration (kind.x-k8s.io/v1alpha4): strict decoding, defaults and validation.

Decoding follows kind's loader (gopkg.in/yaml.v3 with KnownFields): every unknown field and type mismatch
is reported at once with its line, in yaml.v3's words; validation follows kind's Cluster.Validate.
Pure functions: nothing here touches the host.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

DEFAULT_IMAGE = "kindest/node:v1.32.2@sha256:f226345927d7e348497136874b6d207e0b32cc52154ad8323129352923a3142f"
VALID_NAME = re.compile(r"^[a-z0-9.-]+$")


class ConfigError(Exception):
    """The configuration is unusable; the message is kind's."""


# ----------------------------------------------------------------------------------------- strict decoding


@dataclass(frozen=True)
class GoType:
    """The Go type a YAML node decodes into (name as yaml.v3 prints it in errors)."""

    name: str
    kind: str  # string, int32, bool, list, map, struct
    item: GoType | None = None
    fields: dict[str, GoType] = field(default_factory=dict)


STRING, INT32, BOOL = GoType("string", "string"), GoType("int32", "int32"), GoType("bool", "bool")


def _list(item: GoType) -> GoType:
    return GoType(f"[]{item.name}", "list", item)


def _map(item: GoType) -> GoType:
    return GoType(f"map[string]{item.name}", "map", item)


def _struct(type_name: str, /, **fields: GoType) -> GoType:
    return GoType(f"v1alpha4.{type_name}", "struct", fields=fields)


PATCH = _struct("PatchJSON6902", group=STRING, version=STRING, kind=STRING, patch=STRING)
MOUNT = _struct("Mount", containerPath=STRING, hostPath=STRING, readOnly=BOOL, selinuxRelabel=BOOL,
                propagation=STRING)
PORT_MAPPING = _struct("PortMapping", containerPort=INT32, hostPort=INT32, listenAddress=STRING, protocol=STRING)
NODE = _struct("Node", role=STRING, image=STRING, labels=_map(STRING), extraMounts=_list(MOUNT),
               extraPortMappings=_list(PORT_MAPPING), kubeadmConfigPatches=_list(STRING),
               kubeadmConfigPatchesJSON6902=_list(PATCH))
NETWORKING = _struct("Networking", ipFamily=STRING, apiServerPort=INT32, apiServerAddress=STRING, podSubnet=STRING,
                     serviceSubnet=STRING, disableDefaultCNI=BOOL, kubeProxyMode=STRING, dnsSearch=_list(STRING))
CLUSTER = _struct("Cluster", kind=STRING, apiVersion=STRING, name=STRING, nodes=_list(NODE), networking=NETWORKING,
                  featureGates=_map(BOOL), runtimeConfig=_map(STRING), kubeadmConfigPatches=_list(STRING),
                  kubeadmConfigPatchesJSON6902=_list(PATCH), containerdConfigPatches=_list(STRING),
                  containerdConfigPatchesJSON6902=_list(STRING))


def _go_tag(node: yaml.Node) -> str:
    """Return the tag yaml.v3 (YAML 1.2 core schema) gives a node, e.g. ``!!str`` for ``yes``."""
    if isinstance(node, yaml.MappingNode):
        return "!!map"
    if isinstance(node, yaml.SequenceNode):
        return "!!seq"
    value = str(node.value)
    if getattr(node, "style", None) in ('"', "'"):
        return "!!str"
    if value in ("", "~", "null", "Null", "NULL"):
        return "!!null"
    if value in ("true", "True", "TRUE", "false", "False", "FALSE"):
        return "!!bool"
    if re.fullmatch(r"[-+]?(0|[1-9][0-9]*|0o[0-7]+|0x[0-9a-fA-F]+)", value):
        return "!!int"
    if re.fullmatch(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)",
                    value):
        return "!!float"
    return "!!str"


def _decode(node: yaml.Node, want: GoType, errors: list[str]) -> Any:
    """Decode ``node`` into ``want`` like yaml.v3 with KnownFields; append every problem to ``errors``."""
    tag = _go_tag(node)
    line = node.start_mark.line + 1
    if tag == "!!null":
        return None

    def mismatch() -> None:
        shown = f" `{node.value}`" if isinstance(node, yaml.ScalarNode) else ""
        errors.append(f"line {line}: cannot unmarshal {tag}{shown} into {want.name}")

    if want.kind in ("string", "int32", "bool"):
        if not isinstance(node, yaml.ScalarNode):
            return mismatch()
        if want.kind == "string":
            return str(node.value)
        if want.kind == "bool":
            return str(node.value).lower() == "true" if tag == "!!bool" else mismatch()
        number = int(str(node.value), 0) if tag == "!!int" else None
        if number is None or not -(2**31) <= number < 2**31:
            return mismatch()
        return number
    if want.kind == "list":
        if not isinstance(node, yaml.SequenceNode):
            return mismatch()
        assert want.item is not None
        return [_decode(item, want.item, errors) for item in node.value]
    if not isinstance(node, yaml.MappingNode):
        return mismatch()
    result: dict[str, Any] = {}
    seen: dict[str, int] = {}
    for key_node, value_node in node.value:
        key = str(key_node.value)
        key_line = key_node.start_mark.line + 1
        if key in seen:
            errors.append(f'line {key_line}: mapping key "{key}" already defined at line {seen[key]}')
            continue
        seen[key] = key_line
        if want.kind == "map":
            assert want.item is not None
            result[key] = _decode(value_node, want.item, errors)
        elif key in want.fields:
            result[key] = _decode(value_node, want.fields[key], errors)
        else:
            errors.append(f"line {key_line}: field {key} not found in type {want.name}")
    return result


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    return f"yaml: line {mark.line + 1}: {problem}" if mark is not None else f"yaml: {problem}"


# ----------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class PortMapping:
    """An extraPortMappings entry after defaulting (protocol as written: TCP, UDP or SCTP)."""

    container_port: int
    host_port: int
    listen_address: str
    protocol: str


@dataclass(frozen=True)
class Mount:
    """An extraMounts entry (hostPath made absolute as kind does)."""

    host_path: str
    container_path: str
    read_only: bool
    selinux_relabel: bool
    propagation: str


@dataclass(frozen=True)
class Node:
    """One node of the cluster."""

    role: str
    image: str
    labels: dict[str, str]
    mounts: tuple[Mount, ...]
    ports: tuple[PortMapping, ...]


@dataclass(frozen=True)
class Cluster:
    """The cluster configuration kind works with after decoding and defaulting."""

    name: str
    nodes: tuple[Node, ...]
    ip_family: str
    api_server_address: str
    api_server_port: int
    pod_subnet: str
    service_subnet: str
    disable_default_cni: bool
    kube_proxy_mode: str
    raw: dict[str, Any]  # the decoded document, for fields that change nothing in the simulation


def decode(text: str) -> dict[str, Any]:
    """Decode a kind config document strictly; raise ConfigError with kind's message."""
    try:
        documents = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
        type_meta = next(yaml.safe_load_all(text), None)
    except yaml.YAMLError as exc:
        raise ConfigError(f"could not determine kind / apiVersion for config: {_yaml_problem(exc)}") from None
    if type_meta is not None and not isinstance(type_meta, dict):
        raise ConfigError("could not determine kind / apiVersion for config: yaml: unmarshal errors:\n"
                          f"  line 1: cannot unmarshal {_go_tag(documents[0])} into encoding.typeMeta")
    type_meta = type_meta or {}
    api_version, kind = str(type_meta.get("apiVersion") or ""), str(type_meta.get("kind") or "")
    if api_version != "kind.x-k8s.io/v1alpha4":
        raise ConfigError(f"unknown apiVersion: {api_version}")
    if kind != "Cluster":
        raise ConfigError(f"unknown kind {kind} for apiVersion: {api_version}")
    errors: list[str] = []
    decoded = _decode(documents[0], CLUSTER, errors)
    if errors:
        raise ConfigError("unable to decode config: yaml: unmarshal errors:\n" + "\n".join(f"  {e}" for e in errors))
    return decoded if isinstance(decoded, dict) else {}


def build(doc: dict[str, Any], name_override: str, image_override: str) -> Cluster:
    """Apply kind's defaults and the --name/--image overrides to a decoded config."""
    net = doc.get("networking") or {}
    family = net.get("ipFamily") or "ipv4"
    v6 = family == "ipv6"
    nodes = []
    for raw_node in doc.get("nodes") or [{}]:
        raw_node = raw_node or {}
        ports = tuple(PortMapping(int(p.get("containerPort") or 0), int(p.get("hostPort") or 0),
                                  p.get("listenAddress") or ("::" if v6 else "0.0.0.0"), p.get("protocol") or "TCP")
                      for p in (raw_node.get("extraPortMappings") or []) if p is not None)
        mounts = tuple(Mount(os.path.abspath(m.get("hostPath") or ""), m.get("containerPath") or "",
                             bool(m.get("readOnly")), bool(m.get("selinuxRelabel")), m.get("propagation") or "None")
                       for m in (raw_node.get("extraMounts") or []) if m is not None)
        nodes.append(Node(raw_node.get("role") or "control-plane", image_override or raw_node.get("image")
                          or DEFAULT_IMAGE, dict(raw_node.get("labels") or {}), mounts, ports))
    pod_default = {"ipv6": "fd00:10:244::/56", "dual": "10.244.0.0/16,fd00:10:244::/56"}.get(family, "10.244.0.0/16")
    service_default = {"ipv6": "fd00:10:96::/112", "dual": "10.96.0.0/16,fd00:10:96::/112"}.get(family,
                                                                                                "10.96.0.0/16")
    return Cluster(
        name=name_override or doc.get("name") or "kind",
        nodes=tuple(nodes),
        ip_family=family,
        api_server_address=net.get("apiServerAddress") or ("::1" if v6 else "127.0.0.1"),
        api_server_port=int(net.get("apiServerPort") or 0),
        pod_subnet=net.get("podSubnet") or pod_default,
        service_subnet=net.get("serviceSubnet") or service_default,
        disable_default_cni=bool(net.get("disableDefaultCNI")),
        kube_proxy_mode=net.get("kubeProxyMode") or "iptables",
        raw=doc,
    )


def _subnet_problem(value: str, family: str) -> str | None:
    networks = []
    for cidr in value.split(","):
        try:
            networks.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            return f'failed to parse cidr value:"{cidr}" with error: invalid CIDR address: {cidr}'
    if family == "dual":
        if len(networks) > 2 or (len(networks) == 2 and networks[0].version == networks[1].version):
            return "expected one (IPv4 or IPv6) CIDR or two CIDRs from each family for dual-stack networking"
        return None
    if len(networks) > 1:
        return "only one CIDR allowed for single-stack networking"
    if family == "ipv4" and networks[0].version != 4:
        return "expected IPv4 CIDR for IPv4 family"
    if family == "ipv6" and networks[0].version != 6:
        return "expected IPv6 CIDR for IPv6 family"
    return None


def validate(cluster: Cluster) -> list[str]:
    """Return every problem kind's Cluster.Validate reports (empty when the config is valid)."""
    errors = []
    if not VALID_NAME.match(cluster.name):
        errors.append(f"'{cluster.name}' is not a valid cluster name, cluster names must match `^[a-z0-9.-]+$`")
    if not -1 <= cluster.api_server_port <= 65535:
        errors.append(f"invalid apiServerPort: invalid port number: {cluster.api_server_port}")
    if cluster.ip_family not in ("ipv4", "ipv6", "dual"):
        errors.append(f"invalid ipFamily: {cluster.ip_family}")
    for label, value in (("pod", cluster.pod_subnet), ("service", cluster.service_subnet)):
        problem = _subnet_problem(value, cluster.ip_family)
        if problem:
            errors.append(f"invalid {label} subnet {problem}")
    if cluster.kube_proxy_mode not in ("iptables", "ipvs", "nftables", "none"):
        errors.append(f"invalid kubeProxyMode: {cluster.kube_proxy_mode}")
    for i, node in enumerate(cluster.nodes):
        node_errors = []
        if node.role not in ("control-plane", "worker"):
            node_errors.append(f'"{node.role}" is not a valid node role')
        for mapping in node.ports:
            for what, port in (("hostPort", mapping.host_port), ("containerPort", mapping.container_port)):
                if not -1 <= port <= 65535:
                    node_errors.append(f"invalid {what}: invalid port number: {port}")
        seen: dict[tuple[int, str], set[str]] = {}
        for mapping in node.ports:
            if mapping.host_port in (0, -1):
                continue
            address = "0.0.0.0" if mapping.listen_address in ("::", "0.0.0.0") else mapping.listen_address
            bound = seen.setdefault((mapping.host_port, mapping.protocol), set())
            if bound and (address == "0.0.0.0" or address in bound or "0.0.0.0" in bound):
                node_errors.append("invalid portMapping: port mapping with same listen address, port and protocol "
                                   f"already configured: {address}:{mapping.host_port}/{mapping.protocol}")
                break
            bound.add(address)
        if node_errors:
            joined = node_errors[0] if len(node_errors) == 1 else "[" + ", ".join(node_errors) + "]"
            errors.append(f"invalid configuration for node {i}: {joined}")
    if not any(node.role == "control-plane" for node in cluster.nodes):
        errors.append("must have at least one control-plane node")
    return errors

"""Simulated kind (v0.27 by default) with its nerdctl provider.

Modelled: ``create cluster`` (pulling a missing node image), ``delete cluster``, ``get
clusters|nodes|kubeconfig``, ``load image-archive`` (:mod:`tests.simhost.kind_images`), ``version``, the global
``-v`` and ``-q`` flags, provider selection by KIND_EXPERIMENTAL_PROVIDER (and autodetection), and kind's
kubeconfig handling. The nerdctl provider runs the simulated nerdctl in-process: the same records, the
same faults; other providers fail as they do where their binary is missing.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from tests.simhost import kind_images, kindconfig, kubeconfig, nerdctl, nerdctl_images, pki
from tests.simhost.common import (
    Container,
    Flag,
    NotModelled,
    SimError,
    fault_for,
    format_duration,
    hang,
    parse_duration,
    parse_flags,
    run_tool,
)
from tests.simhost.kubeclient import ApiUnreachable, KubeClient

DEFAULT_VERSION = "v0.27.0"
GO_VERSION = "go1.23.6"
CLUSTER_LABEL = "io.x-k8s.kind.cluster"
ROLE_LABEL = "io.x-k8s.kind.role"
API_INTERNAL_PORT = 6443
EXPORT_BACKOFF = (0.0, 0.001, 0.05, 0.1)  # kind retries the kubeconfig export on lock failures
T = TypeVar("T")


class KindError(Exception):
    """An error kind prints as ``ERROR: <message>`` before exiting with status 1."""


class ExecError(Exception):
    """A runtime command kind ran failed; formatted as kind formats exec errors."""

    def __init__(self, argv: Sequence[str], error: str, output: str = "") -> None:
        text = f'command "{shlex.join(argv)}" failed with error: {error}'
        super().__init__(text + (f"\nCommand Output: {output}" if output else ""))


class Log:
    """kind's logger: everything on stderr, nothing at all with -q."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.status = ""

    def info(self, line: str) -> None:
        """Print one line on stderr."""
        if not self.quiet:
            print(line, file=sys.stderr, flush=True)

    def start(self, status: str) -> None:
        """Print a status line as kind does when stderr is not a terminal."""
        self.status = status
        self.info(f" • {status}  ...")

    def end(self, ok: bool) -> None:
        """Close the current status line with a tick or a cross."""
        self.info(f" {'✓' if ok else '✗'} {self.status}")

    def step(self, status: str) -> None:
        """Print a status that succeeds at once."""
        self.start(status)
        self.end(True)


def version() -> tuple[str, tuple[int, ...]]:
    """Return the simulated kind version (KSI_SIM_KIND_VERSION, default v0.27.0) as text and tuple."""
    text = "v" + (os.environ.get("KSI_SIM_KIND_VERSION") or DEFAULT_VERSION).lstrip("v")
    return text, tuple(int(part) for part in re.findall(r"\d+", text)[:3])


class Provider:
    """kind's node provider: runs the runtime's commands (the simulated nerdctl, in-process)."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.name = "nerdctl" if binary in ("nerdctl", "finch", "nerdctl.lima") else binary

    def call(self, argv: list[str], action: Callable[[], T]) -> T:
        """Run one runtime command the way kind execs it; raise ExecError as kind reports it."""
        argv = [self.binary, *argv]
        if shutil.which(self.binary) is None:
            raise ExecError(argv, f'exec: "{self.binary}": executable file not found in $PATH')
        if self.binary != "nerdctl":  # a real docker/podman CLI: run its read-only command, as kind would
            real = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
            if real.returncode != 0:
                raise ExecError(argv, f"exit status {real.returncode}", (real.stdout + real.stderr).strip())
            raise NotModelled(f"kind on a working {self.binary} (only the simulated nerdctl is modelled)")
        try:
            return action()
        except nerdctl_images.NerdctlFailure as exc:
            raise ExecError(argv, "exit status 1", exc.message) from None

    def info(self) -> dict[str, object]:
        """Run ``<runtime> info``."""
        argv = ["info", "--format", "json" if self.name == "podman" else "{{json .}}"]
        return self.call(argv, nerdctl.info)

    def list_clusters(self) -> list[str]:
        """Return the names of clusters that have node containers (running or not)."""
        argv = ["ps", "-a", "--filter", f"label={CLUSTER_LABEL}",
                "--format", f'{{{{index .Labels "{CLUSTER_LABEL}"}}}}']
        found = self.call(argv, lambda: nerdctl.ps(True, [f"label={CLUSTER_LABEL}"]))
        return sorted({c.labels[CLUSTER_LABEL] for c in found})

    def list_nodes(self, cluster: str) -> list[Container]:
        """Return the node containers of ``cluster``; errors say ``failed to list nodes``."""
        argv = ["ps", "-a", "--filter", f"label={CLUSTER_LABEL}={cluster}", "--format", "{{.Names}}"]
        try:
            return self.call(argv, lambda: nerdctl.ps(True, [f"label={CLUSTER_LABEL}={cluster}"]))
        except ExecError as exc:
            raise KindError(f"failed to list nodes: {exc}") from None

    def delete_nodes(self, nodes: list[Container]) -> None:
        """Force-remove node containers (kind's update/stop/wait/rm sequence ends in ``rm -f -v``)."""
        names = [n.name for n in nodes]
        self.call(["rm", "-f", "-v", *names], lambda: nerdctl.remove(names, force=True))


def select_provider(log: Log, kind_version: tuple[int, ...]) -> Provider:
    """Choose the provider as kind does: KIND_EXPERIMENTAL_PROVIDER, else autodetection, else docker."""
    value = os.environ.get("KIND_EXPERIMENTAL_PROVIDER", "")
    knows_nerdctl = kind_version >= (0, 23, 0)
    chosen = ""
    if value in ("docker", "podman") or (value in ("nerdctl", "finch", "nerdctl.lima") and knows_nerdctl):
        log.info(f"using {value} due to KIND_EXPERIMENTAL_PROVIDER")
        chosen = value
    elif value:
        log.info(f'ignoring unknown value "{value}" for KIND_EXPERIMENTAL_PROVIDER')
    if not chosen:
        if shutil.which("docker"):
            chosen = "docker"
        elif knows_nerdctl and (shutil.which("nerdctl") or shutil.which("finch")):
            chosen = "nerdctl" if shutil.which("nerdctl") else "finch"
        elif shutil.which("podman"):
            chosen = "podman"
        else:
            chosen = "docker"
    provider = Provider(chosen)
    if provider.name in ("nerdctl", "podman"):
        log.info(f"enabling experimental {provider.name} provider")
    return provider


# ------------------------------------------------------------------------------------------- kubeconfig


def admin_client(container: Container) -> kubeconfig.Client:
    """Return the credentials of the node's /etc/kubernetes/admin.conf."""
    return kubeconfig.load_client(str(container.dir / "admin.conf"))


def admin_api(container: Container, timeout: float = 10.0) -> KubeClient:
    """Return an admin client of the node's API server, reached through its published port."""
    return KubeClient(dataclasses.replace(admin_client(container), server=external_server(container)), timeout)


def external_server(container: Container) -> str:
    """Return the API server URL on the host: the published address and port of container port 6443."""
    port = next(p for p in container.record["ports"] if p.get("api"))
    host = port["host_ip"]
    return f"https://[{host}]:{port['host_port']}" if ":" in host else f"https://{host}:{port['host_port']}"


def cluster_kubeconfig(cluster: str, container: Container, internal: bool) -> dict[str, object]:
    """Return the kubeconfig kind writes or prints for ``cluster``."""
    admin = admin_client(container)
    server = f"https://{container.name}:{API_INTERNAL_PORT}" if internal else external_server(container)
    assert admin.ca and admin.cert and admin.key
    return kubeconfig.for_cluster(cluster, server, admin.ca, admin.cert, admin.key)


def export_kubeconfig(cluster: str, container: Container, explicit: str) -> None:
    """Merge the cluster's credentials into the kubeconfig kind selects (holding its lock file)."""
    path = kubeconfig.path_for_merge(explicit)
    with kubeconfig.locked(path):
        try:
            existing = kubeconfig.read(path)
        except kubeconfig.KubeconfigError as exc:
            raise kubeconfig.KubeconfigError(f"failed to get kubeconfig to merge: {exc}") from None
        kubeconfig.merge(existing, cluster_kubeconfig(cluster, container, internal=False))
        kubeconfig.write(existing, path)


def remove_from_kubeconfigs(cluster: str, explicit: str) -> None:
    """Remove ``kind-<cluster>`` entries from every kubeconfig file kind considers."""
    for path in kubeconfig.paths(explicit):
        with kubeconfig.locked(path):
            try:
                existing = kubeconfig.read(path)
            except kubeconfig.KubeconfigError as exc:
                raise kubeconfig.KubeconfigError(f"failed to read kubeconfig to remove KIND entry: {exc}") from None
            if kubeconfig.remove(existing, cluster):
                kubeconfig.write(existing, path)


# ------------------------------------------------------------------------------------------- delete


def delete_cluster(log: Log, provider: Provider, cluster: str, explicit_kubeconfig: str) -> None:
    """Delete a cluster as kind's internal delete does: kubeconfig entries, then node containers.

    A kubeconfig that cannot be updated is logged, not returned: kind then exits 0 once the nodes are gone
    (pkg/cluster/internal/delete returns the node-deletion error, which is nil).
    """
    try:
        nodes = provider.list_nodes(cluster)
    except KindError as exc:
        raise KindError(f"error listing nodes: {exc}") from None
    try:
        remove_from_kubeconfigs(cluster, explicit_kubeconfig)
    except kubeconfig.KubeconfigError as exc:
        log.info(f"ERROR: failed to update kubeconfig: {exc}")
    if nodes:
        try:
            provider.delete_nodes(nodes)
        except ExecError as exc:
            raise KindError(f"failed to delete nodes: {exc}") from None
        log.info("Deleted nodes: [" + " ".join(f'"{n.name}"' for n in nodes) + "]")


# ------------------------------------------------------------------------------------------- create


def free_port(address: str, protocol: str) -> int:
    """Return a port the kernel picks as free on ``address`` (kind's PortOrGetFreePort)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def kubernetes_version(image: str) -> str:
    """Return the Kubernetes version a kindest/node image tag names (v1.32.2 otherwise)."""
    match = re.search(r":(v\d+\.\d+\.\d+)", image)
    return match[1] if match else "v1.32.2"


def provision(cluster: kindconfig.Cluster, provider: Provider) -> Container:
    """Create the control-plane node container (``nerdctl run``), publishing its ports and the API port."""
    node = cluster.nodes[0]
    node_name = f"{cluster.name}-control-plane"
    ports, publish = [], []
    for mapping in node.ports:
        if mapping.protocol not in ("TCP", "UDP", "SCTP"):
            raise KindError(f"unknown port mapping protocol: {mapping.protocol}")
        if mapping.protocol == "SCTP":
            raise NotModelled("SCTP port mappings")
        protocol = mapping.protocol.lower()
        host_port = mapping.host_port if mapping.host_port > 0 else free_port(mapping.listen_address, protocol)
        ports.append(nerdctl.Port(mapping.listen_address, host_port, mapping.container_port, protocol))
    address = cluster.api_server_address
    api_port = cluster.api_server_port if cluster.api_server_port > 0 else free_port(address, "tcp")
    ports.append(nerdctl.Port(address, api_port, API_INTERNAL_PORT, "tcp", api=True))
    for port in ports:
        host = f"[{port.host_ip}]" if ":" in port.host_ip else port.host_ip
        publish.append(f"--publish={host}:{port.host_port}:{port.container_port}/{port.protocol}")
    mounts = [nerdctl.Mount(m.host_path, m.container_path, m.read_only, m.propagation, m.selinux_relabel)
              for m in node.mounts]
    volumes = [f"--volume={m.host_path}:{m.container_path}" + (":ro" if m.read_only else "") for m in node.mounts]
    image = node.image
    argv = ["run", "--name", node_name, "--hostname", node_name, "--label", f"{ROLE_LABEL}=control-plane",
            "--privileged", "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
            "--tmpfs", "/tmp", "--tmpfs", "/run", "--volume", "/var", "--volume", "/lib/modules:/lib/modules:ro",
            "-e", "KIND_EXPERIMENTAL_CONTAINERD_SNAPSHOTTER", "--detach", "--tty", "--label",
            f"{CLUSTER_LABEL}={cluster.name}", "--net", "kind", "--restart=on-failure:1", "--init=false",
            *volumes, *publish, "-e", "KUBECONFIG=/etc/kubernetes/admin.conf", image]

    def prepare(cdir: Path) -> None:
        names = [node_name, "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                 "kubernetes.default.svc.cluster.local", "localhost"]
        ips = [ip for ip in (address, "127.0.0.1", "10.96.0.1") if re.fullmatch(r"[0-9.]+|[0-9a-fA-F:]+", ip)]
        ca, server, admin = pki.make_cluster_pki(names, ips)
        (cdir / "pki").mkdir(mode=0o700)
        for name, data in (("ca.crt", ca.cert), ("ca.key", ca.key), ("apiserver.crt", server.cert),
                           ("apiserver.key", server.key)):
            fd = os.open(cdir / "pki" / name, os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        admin_conf = kubeconfig.build(cluster.name, "kubernetes-admin", f"kubernetes-admin@{cluster.name}",
                                      f"https://{node_name}:{API_INTERNAL_PORT}", ca.cert, admin.cert, admin.key)
        kubeconfig.write(admin_conf, str(cdir / "admin.conf"))

    api_spec = {"cluster": cluster.name, "node_name": node_name, "kubernetes_version": kubernetes_version(image),
                "node_labels": node.labels,
                "min_token_seconds": int(os.environ.get("KSI_SIM_MIN_TOKEN_SECONDS") or 600),
                "job_backoff": float(os.environ.get("KSI_SIM_JOB_BACKOFF") or 10)}
    labels = {CLUSTER_LABEL: cluster.name, ROLE_LABEL: "control-plane"}
    return provider.call(argv, lambda: nerdctl.run_node(node_name, image, labels, ports, mounts, api_spec, prepare))


def wait_ready(container: Container, timeout: float) -> float:
    """Wait until the node reports Ready through the API; return the seconds it took."""
    client = admin_api(container, timeout=5.0)
    started = time.monotonic()
    while True:
        try:
            code, node = client.request("GET", f"/api/v1/nodes/{container.name}")
        except ApiUnreachable:
            code, node = 0, {}
        conditions = node.get("status", {}).get("conditions", []) if code == 200 else []
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise KindError("timed out waiting for the control-plane node to be ready")
        time.sleep(0.05)


def create(values: dict[str, object], log: Log, provider: Provider) -> None:
    """Run ``kind create cluster``."""
    try:
        info = provider.info()
    except ExecError as exc:
        raise KindError(f"failed to create cluster: failed to get {provider.name} info: {exc}") from None
    if "name=rootless" in str(info.get("SecurityOptions")) and info.get("CgroupVersion") != "2":
        raise KindError("failed to create cluster: running kind with rootless provider requires cgroup v2, "
                        "see https://kind.sigs.k8s.io/docs/user/rootless/")
    config_path = str(values.get("config") or "")
    doc: dict[str, object] = {}
    try:
        if config_path:
            text = sys.stdin.read() if config_path == "-" else Path(config_path).read_text()
            doc = kindconfig.decode(text)
    except OSError as exc:
        raise KindError(f"failed to create cluster: error reading file: open {config_path}: "
                        f"{(exc.strerror or '').lower()}") from None
    except kindconfig.ConfigError as exc:
        raise KindError(f"failed to create cluster: {exc}") from None
    name = str(values.get("name") or os.environ.get("KIND_CLUSTER_NAME") or "")
    cluster = kindconfig.build(doc, name, str(values.get("image") or ""))
    try:
        existing = provider.list_nodes(cluster.name)
    except KindError as exc:
        raise KindError(f"failed to create cluster: {exc}") from None
    if existing:
        raise KindError(f'failed to create cluster: node(s) already exist for a cluster with the name "{cluster.name}"')
    if len(cluster.name) > 50:
        log.info(f'WARNING: cluster name "{cluster.name}" is probably too long, this might not work properly on '
                 "some systems")
    problems = kindconfig.validate(cluster)
    if problems:
        joined = problems[0] if len(problems) == 1 else "[" + ", ".join(problems) + "]"
        raise KindError(f"failed to create cluster: {joined}")
    if len(cluster.nodes) > 1:
        raise NotModelled("clusters with more than one node")
    wait = parse_duration(str(values.get("wait") or "0"), "wait")
    explicit = str(values.get("kubeconfig") or "")
    retain = bool(values.get("retain"))
    fault = fault_for("kind-create")

    def give_up(message: str) -> KindError:
        log.end(False)
        if not retain:
            delete_cluster(log, provider, cluster.name, explicit)
        return KindError(f"failed to create cluster: {message}")

    log.info(f'Creating cluster "{cluster.name}" ...')
    try:
        kind_images.ensure_node_image(log, provider, cluster.nodes[0].image, ExecError)
    except kind_images.Failure as exc:
        raise KindError(f"failed to create cluster: {exc}") from None
    log.start("Preparing nodes 📦 ")
    try:
        container = provision(cluster, provider)
    except (ExecError, KindError) as exc:
        raise give_up(str(exc)) from None
    log.end(True)
    if fault and fault.mode == "crash-after-container":
        print("fatal error: kind died after creating its node container (KSI_SIM_FAULTS)", file=sys.stderr)
        os._exit(1)
    log.step("Writing configuration 📜")
    log.start("Starting control-plane 🕹️")
    if fault and fault.mode == "hang":
        hang()
    if fault and fault.mode == "slow":
        time.sleep(fault.seconds)
    if fault and fault.mode == "fail":
        raise give_up(f'failed to init node with kubeadm: command "nerdctl exec --privileged {container.name} '
                      "kubeadm init --config=/kind/kubeadm.conf --skip-token-print --v=6\" failed with error: exit "
                      "status 1\nCommand Output: [init] Using Kubernetes version: v1.32.2\n"
                      "error execution phase wait-control-plane: could not initialize a Kubernetes cluster "
                      "(simulated by KSI_SIM_FAULTS)")
    try:
        code, _ = admin_api(container).request("GET", "/readyz")
    except ApiUnreachable as exc:
        raise give_up(f"failed to reach the API server: {exc}") from None
    if code != 200:
        raise give_up(f"API server not ready: /readyz answered {code}")
    log.end(True)
    if not cluster.disable_default_cni:
        log.step("Installing CNI 🔌")
    log.step("Installing StorageClass 💾")
    if wait > 0:
        log.start(f"Waiting ≤ {format_duration(wait)} for control-plane = Ready ⏳")
        took = wait_ready(container, wait)
        log.end(True)
        log.info(f" • Ready after {format_duration(took)} 💚")
    error: Exception | None = None
    for backoff in EXPORT_BACKOFF:
        time.sleep(backoff)
        try:
            export_kubeconfig(cluster.name, container, explicit)
            break
        except kubeconfig.KubeconfigError as exc:
            error = exc
    else:
        raise KindError(f"failed to create cluster: {error}")
    context = kubeconfig.kind_key(cluster.name)
    log.info(f'Set kubectl context to "{context}"')
    sample = f"kubectl cluster-info --context {context}" + (f" --kubeconfig {shlex.quote(explicit)}" if explicit
                                                             else "")
    log.info(f"You can now use your cluster with:\n\n{sample}\n\nHave a nice day! 👋")


# ------------------------------------------------------------------------------------------- CLI

GLOBAL_FLAGS = [Flag("verbosity", "v"), Flag("quiet", "q", "bool"), Flag("loglevel")]
COMMANDS: dict[tuple[str, ...], list[Flag]] = {
    ("create", "cluster"): [Flag("name", "n"), Flag("config"), Flag("image"), Flag("retain", kind="bool"),
                            Flag("wait"), Flag("kubeconfig")],
    ("delete", "cluster"): [Flag("name", "n"), Flag("kubeconfig")],
    ("get", "clusters"): [],
    ("get", "nodes"): [Flag("name", "n")],
    ("get", "kubeconfig"): [Flag("name", "n"), Flag("internal", kind="bool")],
    ("load", "image-archive"): [Flag("name", "n"), Flag("nodes", kind="list")],
    ("version",): [],
}


def command_words(args: Sequence[str]) -> tuple[str, ...]:
    """Return the command path (``create cluster``, ``version``...) among the arguments."""
    words: list[str] = []
    i = 0
    while i < len(args) and len(words) < 2:
        if args[i] in ("-v", "--verbosity", "--loglevel"):
            i += 2
            continue
        if not args[i].startswith("-"):
            words.append(args[i])
            if args[i] == "version":
                break
        i += 1
    return tuple(words)


def run(args: list[str]) -> int:
    """Run one kind command line (without the program name)."""
    words = command_words(args)
    if words not in COMMANDS:
        raise NotModelled(f"command {' '.join(words) or '(none)'!r}")
    values, positional = parse_flags(args, GLOBAL_FLAGS + COMMANDS[words])
    operands = positional[len(words):] if words == ("load", "image-archive") else []
    if positional[:len(positional) - len(operands)] != list(words):
        raise SimError(f'ERROR: unknown command "{positional[len(words)]}" for "kind {" ".join(words)}"')
    if not re.fullmatch(r"-?\d+", str(values.get("verbosity", "0"))):
        raise SimError(f'ERROR: invalid argument "{values["verbosity"]}" for "-v, --verbosity" flag: '
                       f'strconv.ParseInt: parsing "{values["verbosity"]}": invalid syntax')
    log = Log(bool(values.get("quiet")))
    text, number = version()
    if words == ("version",):
        print(f"kind {text} {GO_VERSION} linux/amd64")
        return 0
    try:
        provider = select_provider(log, number)
        name = str(values.get("name") or os.environ.get("KIND_CLUSTER_NAME") or "kind")
        if words == ("create", "cluster"):
            create(values, log, provider)
        elif words == ("delete", "cluster"):
            log.info(f'Deleting cluster "{name}" ...')
            fault = fault_for("kind-delete")
            if fault and fault.mode == "hang":
                hang()
            if fault and fault.mode == "slow":
                time.sleep(fault.seconds)
            if fault and fault.mode == "fail":
                raise KindError(f'failed to delete cluster "{name}": failed to delete nodes: command "nerdctl rm -f '
                                f'-v {name}-control-plane" failed with error: exit status 1 (simulated by '
                                "KSI_SIM_FAULTS)")
            try:
                delete_cluster(log, provider, name, str(values.get("kubeconfig") or ""))
            except KindError as exc:
                raise KindError(f'failed to delete cluster "{name}": {exc}') from None
        elif words == ("load", "image-archive"):
            nodes = [n for item in values.get("nodes", []) for n in item.split(",") if n]
            try:
                kind_images.load_image_archive(log, provider, name, operands, nodes)
            except kind_images.Failure as exc:
                raise KindError(str(exc)) from None
        elif words == ("get", "clusters"):
            try:
                clusters = provider.list_clusters()
            except ExecError as exc:
                raise KindError(f"failed to list clusters: {exc}") from None
            if not clusters:
                log.info("No kind clusters found.")
            sys.stdout.write("".join(f"{c}\n" for c in clusters))
        elif words == ("get", "nodes"):
            nodes = provider.list_nodes(name)
            if not nodes:
                log.info(f'No kind nodes found for cluster "{name}".')
            sys.stdout.write("".join(f"{n.name}\n" for n in nodes))
        else:
            control_planes = [n for n in provider.list_nodes(name) if n.labels.get(ROLE_LABEL) == "control-plane"]
            if not control_planes:
                raise KindError(f"could not locate any control plane nodes for cluster named '{name}'. "
                                "Use the --name option to select a different cluster")
            config = cluster_kubeconfig(name, control_planes[0], bool(values.get("internal")))
            sys.stdout.write(kubeconfig.encode(config))
    except KindError as exc:
        log.info(f"ERROR: {exc}")
        return 1
    return 0


def main() -> int:
    """Entry point of the ``kind`` executable."""
    return run_tool("kind", ["kind", *sys.argv[1:]], run)

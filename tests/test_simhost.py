"""The simulated container host itself: real processes, real sockets, the official kubernetes client."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config

from tests.simhost import liqochart
from tests.simhost.apiserver import logged_requests
from tests.simhost.common import NOT_MODELLED_EXIT, alive
from tests.simhost.plugin import SimHost

OTHER_UID = 54321


def run(simhost: SimHost, *argv: str, env: dict[str, str] | None = None, timeout: float = 30,
        user: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run a simulated tool as a user would, from a shell-like environment (plus ``env``)."""
    return subprocess.run(list(argv), env=simhost.env(None, **(env or {})), capture_output=True, text=True,
                          timeout=timeout, check=False, user=user, group=user,
                          extra_groups=[] if user is not None else None)


def create(simhost: SimHost, name: str, kubeconfig: Path, *args: str,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = run(simhost, "kind", "create", "cluster", "--name", name, "--kubeconfig", str(kubeconfig), *args,
                 env=env)
    assert result.returncode == 0, result.stderr
    return result


def kind_config(directory: Path, body: str) -> Path:
    path = directory / "kind.yaml"
    path.write_text("kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\n" + body)
    return path


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("0.0.0.0", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, kind: int = socket.SOCK_STREAM) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
        return True


def ps(simhost: SimHost, *args: str) -> list[str]:
    result = run(simhost, "nerdctl", "ps", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def bearer_api(admin: client.ApiClient, token: str) -> client.CoreV1Api:
    configuration = client.Configuration()
    configuration.host = admin.configuration.host
    configuration.ssl_ca_cert = admin.configuration.ssl_ca_cert
    configuration.api_key = {"authorization": f"Bearer {token}"}
    return client.CoreV1Api(client.ApiClient(configuration))


def api_status(call: Callable[[], object]) -> tuple[int, dict[str, object]]:
    try:
        call()
    except client.ApiException as exc:
        return int(exc.status), json.loads(str(exc.body))
    return 200, {}


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another Unix user can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="ksi-simhost-user-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------------------------ kind create


def test_create_serves_a_verified_api_from_a_detached_process(simhost: SimHost, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "new dir" / "config"
    result = create(simhost, "alpha", kubeconfig, "--wait", "1m")  # its speed is measured in benchmarks/
    assert 'Creating cluster "alpha" ...' in result.stderr and "Ready after" in result.stderr
    assert "enabling experimental nerdctl provider" in result.stderr
    assert 'Set kubectl context to "kind-alpha"' in result.stderr

    assert simhost.api_nodes(kubeconfig) == ["alpha-control-plane"]
    assert oct(kubeconfig.stat().st_mode & 0o777) == "0o600"
    written = yaml.safe_load(kubeconfig.read_text())
    assert written["current-context"] == "kind-alpha"
    [cluster] = written["clusters"]
    assert cluster["name"] == "kind-alpha" and cluster["cluster"]["server"].startswith("https://127.0.0.1:")

    [record] = simhost.containers()
    assert record["name"] == "alpha-control-plane" and record["alive"] and record["status"] == "running"
    assert record["labels"] == {"io.x-k8s.kind.cluster": "alpha", "io.x-k8s.kind.role": "control-plane"}
    pid = record["pid"]
    assert os.getsid(pid) not in (os.getsid(0), pid)  # own session, not its leader: double fork + setsid
    assert simhost.live_processes() == [pid]

    host, port = cluster["cluster"]["server"].removeprefix("https://").rsplit(":", 1)
    with pytest.raises(ssl.SSLCertVerificationError):  # only the cluster's own CA vouches for the server
        ssl.create_default_context().wrap_socket(socket.create_connection((host, int(port))), server_hostname=host)

    assert run(simhost, "kind", "get", "clusters").stdout == "alpha\n"
    assert run(simhost, "kind", "get", "nodes", "--name", "alpha").stdout == "alpha-control-plane\n"
    internal = yaml.safe_load(run(simhost, "kind", "get", "kubeconfig", "--name", "alpha", "--internal").stdout)
    assert internal["clusters"][0]["cluster"]["server"] == "https://alpha-control-plane:6443"
    missing = run(simhost, "kind", "get", "kubeconfig", "--name", "nope")
    assert missing.returncode == 1 and missing.stderr.endswith(
        "ERROR: could not locate any control plane nodes for cluster named 'nope'. "
        "Use the --name option to select a different cluster\n")
    assert run(simhost, "kind", "-q", "get", "kubeconfig", "--name", "nope").stderr == ""
    again = run(simhost, "kind", "create", "cluster", "--name", "alpha", "--kubeconfig", str(kubeconfig))
    assert again.returncode == 1
    assert 'ERROR: failed to create cluster: node(s) already exist for a cluster with the name "alpha"' in again.stderr


def test_kubeconfig_is_merged_and_entries_removed_like_kind(simhost: SimHost, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "mine",
        "clusters": [{"name": "mine", "cluster": {"server": "https://example.org"}}],
        "users": [{"name": "mine", "user": {"token": "abc"}}],
        "contexts": [{"name": "mine", "context": {"cluster": "mine", "user": "mine"}}]}))
    create(simhost, "beta", kubeconfig)
    merged = yaml.safe_load(kubeconfig.read_text())
    assert [c["name"] for c in merged["clusters"]] == ["mine", "kind-beta"]
    assert merged["current-context"] == "kind-beta"
    assert simhost.api_nodes(kubeconfig, context="kind-beta") == ["beta-control-plane"]

    assert run(simhost, "kind", "delete", "cluster", "--name", "beta", "--kubeconfig", str(kubeconfig)).returncode == 0
    left = yaml.safe_load(kubeconfig.read_text())
    assert [c["name"] for c in left["clusters"]] == ["mine"] and left["current-context"] == ""

    empty = tmp_path / "empty"
    empty.touch()
    create(simhost, "gamma", empty)
    assert yaml.safe_load(empty.read_text())["current-context"] == "kind-gamma"


# ------------------------------------------------------------------------------------------ ports


def test_two_clusters_asking_for_the_same_host_port_collide(simhost: SimHost, tmp_path: Path) -> None:
    tcp, udp = free_port(), free_port(socket.SOCK_DGRAM)
    cfg = kind_config(tmp_path, f"""nodes:
- role: control-plane
  extraPortMappings:
  - {{containerPort: {tcp}, hostPort: {tcp}, listenAddress: 0.0.0.0}}
  - {{containerPort: 51840, hostPort: {udp}, protocol: UDP}}
""")
    create(simhost, "first", tmp_path / "first", "--config", str(cfg))
    socket.create_connection(("127.0.0.1", tcp), timeout=5).close()  # really listening
    assert not port_is_free(udp, socket.SOCK_DGRAM)  # really bound

    second = run(simhost, "kind", "create", "cluster", "--name", "second", "--config", str(cfg),
                 "--kubeconfig", str(tmp_path / "second"))
    assert second.returncode == 1
    assert "address already in use" in second.stderr and 'Deleted nodes: ["second-control-plane"]' in second.stderr
    assert "ERROR: failed to create cluster: command \"nerdctl run --name second-control-plane" in second.stderr
    assert [c["name"] for c in simhost.containers()] == ["first-control-plane"]
    assert not (tmp_path / "second").exists()
    retained = run(simhost, "kind", "create", "cluster", "--name", "second", "--config", str(cfg), "--retain")
    assert retained.returncode == 1 and "Deleted nodes" not in retained.stderr
    assert {c["name"]: c["status"] for c in simhost.containers()} == {"first-control-plane": "running",
                                                                      "second-control-plane": "created"}


def test_api_server_address_is_published_and_in_the_certificate(simhost: SimHost, tmp_path: Path) -> None:
    cfg = kind_config(tmp_path, "networking:\n  apiServerAddress: 127.0.0.2\n")
    create(simhost, "addressed", tmp_path / "k", "--config", str(cfg))
    server = yaml.safe_load((tmp_path / "k").read_text())["clusters"][0]["cluster"]["server"]
    assert server.startswith("https://127.0.0.2:")
    assert simhost.api_nodes(tmp_path / "k") == ["addressed-control-plane"]  # TLS checks 127.0.0.2 is a SAN


def test_a_port_held_by_another_process_fails_the_create(simhost: SimHost, tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        cfg = kind_config(tmp_path, f"networking:\n  apiServerPort: {port}\n")
        result = run(simhost, "kind", "create", "cluster", "--config", str(cfg), "--kubeconfig", str(tmp_path / "k"))
    assert result.returncode == 1
    assert f"listen tcp4 127.0.0.1:{port}: bind: address already in use" in result.stderr
    simhost.assert_clean()


# ------------------------------------------------------------------------------------------ config


def test_invalid_cluster_name_is_refused_like_kind(simhost: SimHost, tmp_path: Path) -> None:
    result = run(simhost, "kind", "create", "cluster", "--name", "Bad_Name", "--kubeconfig", str(tmp_path / "k"))
    assert result.returncode == 1
    assert result.stderr.endswith("ERROR: failed to create cluster: 'Bad_Name' is not a valid cluster name, "
                                  "cluster names must match `^[a-z0-9.-]+$`\n")
    simhost.assert_clean()


def test_config_is_decoded_strictly_with_every_problem_at_once(simhost: SimHost, tmp_path: Path) -> None:
    cfg = kind_config(tmp_path, """networkng:
  apiServerAddress: 127.0.0.1
nodes:
- role: control-plane
  extraPortMapping: []
  extraPortMappings:
  - containerPort: abc
""")
    result = run(simhost, "kind", "create", "cluster", "--config", str(cfg), "--kubeconfig", str(tmp_path / "k"))
    assert result.returncode == 1
    assert ("ERROR: failed to create cluster: unable to decode config: yaml: unmarshal errors:\n"
            "  line 3: field networkng not found in type v1alpha4.Cluster\n"
            "  line 7: field extraPortMapping not found in type v1alpha4.Node\n"
            "  line 9: cannot unmarshal !!str `abc` into int32\n") in result.stderr
    bad_version = tmp_path / "old.yaml"
    bad_version.write_text("kind: Cluster\napiVersion: kind.sigs.k8s.io/v1alpha3\n")
    result = run(simhost, "kind", "create", "cluster", "--config", str(bad_version))
    assert "ERROR: failed to create cluster: unknown apiVersion: kind.sigs.k8s.io/v1alpha3" in result.stderr
    simhost.assert_clean()


def test_extra_mount_sources_are_created_or_fail_like_nerdctl(simhost: SimHost, tmp_path: Path) -> None:
    regular_file = tmp_path / "file"
    regular_file.write_text("x")
    cfg = kind_config(tmp_path, f"nodes:\n- role: control-plane\n  extraMounts:\n"
                                f"  - {{hostPath: {regular_file}/sub, containerPath: /app}}\n")
    result = run(simhost, "kind", "create", "cluster", "--config", str(cfg), "--kubeconfig", str(tmp_path / "k"))
    assert result.returncode == 1
    assert f'failed to mkdir \\"{regular_file}/sub\\": mkdir {regular_file}/sub: not a directory' in result.stderr
    simhost.assert_clean()

    missing = tmp_path / "not yet" / "there"  # nerdctl's -v creates a missing source directory
    kind_config(tmp_path, f"nodes:\n- role: control-plane\n  extraMounts:\n"
                          f"  - {{hostPath: '{missing}', containerPath: /app, readOnly: true}}\n")
    create(simhost, "mounts", tmp_path / "k", "--config", str(cfg))
    assert missing.is_dir()
    [record] = simhost.containers()
    assert record["mounts"][0]["host_path"] == str(missing) and record["mounts"][0]["read_only"]


# ------------------------------------------------------------------------------------------ delete


def test_delete_is_idempotent_and_frees_ports(simhost: SimHost, tmp_path: Path) -> None:
    port = free_port()
    cfg = kind_config(tmp_path, f"nodes:\n- role: control-plane\n  extraPortMappings:\n"
                                f"  - {{containerPort: 80, hostPort: {port}}}\n")
    create(simhost, "gone", tmp_path / "k", "--config", str(cfg))
    assert not port_is_free(port)
    first = run(simhost, "kind", "delete", "cluster", "--name", "gone", "--kubeconfig", str(tmp_path / "k"))
    assert first.returncode == 0, first.stderr
    assert 'Deleting cluster "gone" ...' in first.stderr and 'Deleted nodes: ["gone-control-plane"]' in first.stderr
    simhost.assert_clean()
    assert port_is_free(port)
    second = run(simhost, "kind", "delete", "cluster", "--name", "gone", "--kubeconfig", str(tmp_path / "k"))
    assert second.returncode == 0 and "Deleted nodes" not in second.stderr
    assert run(simhost, "kind", "get", "clusters").stderr.endswith("No kind clusters found.\n")


def test_delete_with_a_broken_kubeconfig_still_removes_the_nodes(simhost: SimHost, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "k"
    create(simhost, "broken", kubeconfig)
    kubeconfig.write_text("{{{ not: yaml")
    result = run(simhost, "kind", "delete", "cluster", "--name", "broken", "--kubeconfig", str(kubeconfig))
    assert "ERROR: failed to update kubeconfig: failed to read kubeconfig to remove KIND entry: yaml:" in result.stderr
    assert 'Deleted nodes: ["broken-control-plane"]' in result.stderr
    # kind v0.27 logs the kubeconfig error and returns the node-deletion error (nil): exit status 0
    assert result.returncode == 0
    simhost.assert_clean()


def test_a_stale_kubeconfig_lock_fails_create_after_kinds_retries(simhost: SimHost, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "k"
    Path(f"{kubeconfig}.lock").touch()  # left by a kind killed while writing
    started = time.monotonic()
    result = run(simhost, "kind", "create", "cluster", "--name", "locked", "--kubeconfig", str(kubeconfig))
    assert result.returncode == 1
    assert f"ERROR: failed to create cluster: failed to lock config file: open {kubeconfig}.lock: file exists" \
        in result.stderr
    assert time.monotonic() - started > 2.0  # it retried: 4 exports x 5 lock attempts x 100 ms
    [record] = simhost.containers()  # kind does not clean up after a failed kubeconfig export
    assert record["alive"] and not kubeconfig.exists()
    delete = run(simhost, "kind", "delete", "cluster", "--name", "locked", "--kubeconfig", str(kubeconfig))
    assert "ERROR: failed to update kubeconfig: failed to lock config file" in delete.stderr
    simhost.assert_clean()


# ------------------------------------------------------------------------------------------ nerdctl


def test_nerdctl_ps_filters_formats_and_exited_containers(simhost: SimHost, tmp_path: Path) -> None:
    create(simhost, "one", tmp_path / "k")
    create(simhost, "two", tmp_path / "k")
    label = "io.x-k8s.kind.cluster"
    assert ps(simhost, "-a", "--filter", f"label={label}=one", "--format", "{{.Names}}") == ["one-control-plane"]
    assert ps(simhost, "--filter", f"label={label}", "--format", "{{.Names}}") == ["two-control-plane",
                                                                                   "one-control-plane"]
    assert ps(simhost, "--filter", "name=two-con", "--format", "{{.Names}}") == ["two-control-plane"]
    assert ps(simhost, "--filter", f"label={label}", "--filter", "name=one", "--format", "{{.ID}}") \
        == [c["id"][:12] for c in simhost.containers() if c["name"] == "one-control-plane"]
    assert ps(simhost, "-a", "--format", f'{{{{.Label "{label}"}}}}') == ["two", "one"]
    assert ps(simhost, "-q", "--no-trunc") == [c["id"] for c in simhost.containers()]
    assert ps(simhost)[0].split() == ["CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"]

    raw = ps(simhost, "-a", "--no-trunc", "--format", "{{json .}}")
    assert "-\\u003e6443/tcp" in raw[0]  # Go's encoding/json escapes ">"
    entry = json.loads(raw[0])
    assert set(entry) == {"Command", "CreatedAt", "ID", "Image", "Platform", "Names", "Ports", "Status", "Runtime",
                          "Size", "Labels"}
    assert entry["Labels"] == f"{label}=two,io.x-k8s.kind.role=control-plane" and entry["Status"] == "Up"
    assert len(entry["ID"]) == 64 and entry["Image"].startswith("docker.io/kindest/node:v1.32.2")

    [one] = [c for c in simhost.containers() if c["name"] == "one-control-plane"]
    os.kill(one["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while alive(one["pid"], json.loads((Path(one["dir"]) / "state.json").read_text())["start"]):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert ps(simhost, "--format", "{{.Names}}") == ["two-control-plane"]
    assert ps(simhost, "--filter", "status=exited", "--format", "{{.Names}} {{.Status}}") \
        == ["one-control-plane Exited (137)"]
    assert run(simhost, "kind", "get", "clusters").stdout == "one\ntwo\n"  # kind lists stopped nodes too
    [inspected] = json.loads(run(simhost, "nerdctl", "inspect", "one-control-plane").stdout)
    assert inspected["State"]["Status"] == "exited" and inspected["Config"]["Labels"][label] == "one"
    assert run(simhost, "nerdctl", "inspect", "nope").returncode == 1


def test_nerdctl_rm_refuses_running_containers_without_force(simhost: SimHost, tmp_path: Path) -> None:
    create(simhost, "victim", tmp_path / "k")
    [record] = simhost.containers()
    refused = run(simhost, "nerdctl", "rm", "victim-control-plane")
    assert refused.returncode == 1 and f"container {record['id']} is in running status" in refused.stderr
    assert simhost.live_processes() == [record["pid"]]

    missing = run(simhost, "nerdctl", "rm", "nope")
    assert missing.returncode == 1 and "no such container: nope" in missing.stderr and "level=fatal" in missing.stderr
    forced_missing = run(simhost, "nerdctl", "rm", "-f", "nope")
    assert forced_missing.returncode == 0 and "level=error" in forced_missing.stderr  # nerdctl 2.x logs, exits 0

    removed = run(simhost, "nerdctl", "rm", "-f", "-v", record["id"][:8])
    assert removed.returncode == 0 and removed.stdout == f"{record['id'][:8]}\n"
    simhost.assert_clean()


def test_nerdctl_info_reports_rootless_cgroup2_and_no_data_root(simhost: SimHost) -> None:
    info = json.loads(run(simhost, "nerdctl", "info", "--format", "{{json .}}").stdout)
    assert "name=rootless" in info["SecurityOptions"] and info["CgroupVersion"] == "2"
    assert "DockerRootDir" not in info  # nerdctl's dockercompat.Info has no such field, unlike docker info
    assert json.loads(run(simhost, "nerdctl", "info", "--format", "json").stdout) == info  # the shorthand
    rootful = json.loads(run(simhost, "nerdctl", "info", "--format", "{{json .}}", env={"KSI_SIM_ROOTFUL": "1"}).stdout)
    assert "name=rootless" not in rootful["SecurityOptions"]
    table = run(simhost, "nerdctl", "ps", "--format", "table {{.ID}}")
    assert table.returncode == NOT_MODELLED_EXIT and "table template" in table.stderr
    assert run(simhost, "nerdctl", "version").stdout.startswith("Client:\n Version:\tv2.")


# ------------------------------------------------------------------------------------------ isolation


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a command as another uid")
def test_users_do_not_see_each_others_containers(simhost: SimHost, tmp_path: Path, shared_dir: Path) -> None:
    create(simhost, "same", tmp_path / "k")
    home = shared_dir / "home"
    home.mkdir()
    os.chown(home, OTHER_UID, OTHER_UID)

    def as_other(*argv: str) -> subprocess.CompletedProcess[str]:
        return run(simhost, *argv, env={"HOME": str(home)}, user=OTHER_UID)

    listing = as_other("nerdctl", "ps", "-a", "-q")
    assert listing.returncode == 0 and listing.stdout == "", listing.stderr
    assert as_other("kind", "get", "clusters").stderr.endswith("No kind clusters found.\n")
    assert as_other("nerdctl", "rm", "same-control-plane").returncode == 1

    theirs = as_other("kind", "create", "cluster", "--name", "same", "--kubeconfig", str(home / "k"))
    assert theirs.returncode == 0, theirs.stderr
    assert sorted(c["uid"] for c in simhost.containers()) == [0, OTHER_UID]
    assert run(simhost, "kind", "get", "clusters").stdout == "same\n"
    assert as_other("kind", "delete", "cluster", "--name", "same").returncode == 0
    assert [c["uid"] for c in simhost.containers()] == [0]


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0, reason="needs root and unshare")
def test_hosts_are_told_apart_by_hostname(simhost: SimHost, tmp_path: Path) -> None:
    other = subprocess.run(["unshare", "--uts", "sh", "-c", 'hostname sim-node-2 && exec "$@"', "sh",
                            "kind", "create", "cluster", "--name", "far", "--kubeconfig", str(tmp_path / "k")],
                           env=simhost.env(), capture_output=True, text=True, timeout=30, check=False)
    assert other.returncode == 0, other.stderr
    assert [c["name"] for c in simhost.containers(host="sim-node-2")] == ["far-control-plane"]
    assert simhost.containers(host=socket.gethostname()) == []
    assert run(simhost, "nerdctl", "ps", "-a", "-q").stdout == ""


# ------------------------------------------------------------------------------------------ API


def test_token_works_only_after_the_cluster_admin_binding_and_until_it_expires(simhost: SimHost,
                                                                                tmp_path: Path) -> None:
    kubeconfig = tmp_path / "k"
    create(simhost, "tokens", kubeconfig, env={"KSI_SIM_MIN_TOKEN_SECONDS": "1"})
    admin = config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    core, rbac = client.CoreV1Api(admin), client.RbacAuthorizationV1Api(admin)
    core.create_namespaced_service_account("kube-system", client.V1ServiceAccount(
        metadata=client.V1ObjectMeta(name="admin-user")))

    def token(seconds: int) -> tuple[str, float]:
        request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
            audiences=[], expiration_seconds=seconds))
        status = core.create_namespaced_service_account_token("admin-user", "kube-system", request).status
        assert status is not None and status.token and status.expiration_timestamp
        return status.token, status.expiration_timestamp.timestamp()

    long_lived, expires = token(7200)
    assert 7100 < expires - time.time() <= 7200
    code, body = api_status(bearer_api(admin, long_lived).list_node)
    assert (code, body["reason"]) == (403, "Forbidden")
    assert 'User "system:serviceaccount:kube-system:admin-user" cannot list resource "nodes"' in str(body["message"])

    rbac.create_cluster_role_binding(client.V1ClusterRoleBinding(
        metadata=client.V1ObjectMeta(name="admin-user"),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="cluster-admin"),
        subjects=[client.RbacV1Subject(kind="ServiceAccount", name="admin-user", namespace="kube-system")]))
    assert [n.metadata.name for n in bearer_api(admin, long_lived).list_node().items  # type: ignore[union-attr]
            ] == ["tokens-control-plane"]

    short = bearer_api(admin, token(2)[0])
    deadline = time.monotonic() + 10
    while api_status(short.list_node)[0] != 401:  # valid now, refused once expired
        assert time.monotonic() < deadline, "the 2 s token never expired"
        time.sleep(0.1)
    code, body = api_status(bearer_api(admin, "not-a-token").list_node)
    assert (code, body["reason"], body["kind"]) == (401, "Unauthorized", "Status")
    nobody = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[]))
    assert api_status(lambda: core.create_namespaced_service_account_token("nobody", "kube-system", nobody))[0] == 404
    core.delete_namespaced_service_account("admin-user", "kube-system")
    assert api_status(bearer_api(admin, long_lived).list_node)[0] == 401  # bound to the ServiceAccount
    log = Path(simhost.containers()[0]["log"]).read_text()
    assert "system:serviceaccount:kube-system:admin-user" in log and long_lived not in log
    admin.close()


def test_the_container_log_tells_the_api_clients_connections_apart(simhost: SimHost, tmp_path: Path) -> None:
    create(simhost, "alpha", tmp_path / "k")
    first = config.new_client_from_config(config_file=str(tmp_path / "k"))  # type: ignore[no-untyped-call]
    second = config.new_client_from_config(config_file=str(tmp_path / "k"))  # type: ignore[no-untyped-call]
    with first, second:
        client.CoreV1Api(first).list_node()
        client.CoreV1Api(first).read_namespace("default")  # kept alive: the same connection
        client.CoreV1Api(second).list_node()
    [record] = simhost.containers()
    requests = [r for r in logged_requests(Path(record["dir"], "node.log").read_text())
                if r.path in ("/api/v1/nodes", "/api/v1/namespaces/default")]
    nodes, namespace = ("GET", "/api/v1/nodes", 200), ("GET", "/api/v1/namespaces/default", 200)
    assert [(r.method, r.path, r.status) for r in requests] == [nodes, namespace, nodes]
    assert {r.user for r in requests} == {"kubernetes-admin"}
    assert requests[0].port == requests[1].port != requests[2].port


def test_token_requests_below_ten_minutes_are_invalid_by_default(simhost: SimHost, tmp_path: Path) -> None:
    create(simhost, "strict", tmp_path / "k")
    admin = config.new_client_from_config(config_file=str(tmp_path / "k"))  # type: ignore[no-untyped-call]
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=60))
    code, body = api_status(lambda: client.CoreV1Api(admin).create_namespaced_service_account_token(
        "default", "default", request))
    assert code == 422 and "may not specify a duration less than 10 minutes" in str(body["message"])
    admin.close()


# ------------------------------------------------------------------------------------------ faults


def test_fault_injection_fail_hang_and_slow(simhost: SimHost, tmp_path: Path) -> None:
    failed = run(simhost, "kind", "create", "cluster", "--kubeconfig", str(tmp_path / "k"),
                 env={"KSI_SIM_FAULTS": "kind-create:fail"})
    assert failed.returncode == 1 and "failed to init node with kubeadm" in failed.stderr
    assert 'Deleted nodes: ["kind-control-plane"]' in failed.stderr
    simhost.assert_clean()
    create(simhost, "elsewhere", tmp_path / "k", env={"KSI_SIM_FAULTS": "kind-create@some-other-host:fail"})

    started = time.monotonic()
    slow = run(simhost, "nerdctl", "ps", "-q", env={"KSI_SIM_FAULTS": "nerdctl-ps:slow=0.5"})
    assert slow.returncode == 0 and time.monotonic() - started >= 0.5 and slow.stdout.strip()
    with pytest.raises(subprocess.TimeoutExpired):  # subprocess kills the hung nerdctl at the timeout
        run(simhost, "nerdctl", "ps", timeout=1, env={"KSI_SIM_FAULTS": "nerdctl-ps:hang"})
    broken = run(simhost, "kind", "delete", "cluster", "--name", "elsewhere",
                 env={"KSI_SIM_FAULTS": "nerdctl-rm:fail"})
    assert broken.returncode == 1 and "rootless containerd not running?" in broken.stderr
    assert len(simhost.containers()) == 1
    bad = run(simhost, "nerdctl", "ps", env={"KSI_SIM_FAULTS": "nerdctl-ps:explode"})
    assert bad.returncode == 2 and "KSI_SIM_FAULTS" in bad.stderr


def test_a_crash_after_the_container_leaves_a_working_cluster_behind(simhost: SimHost, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "k"
    crashed = run(simhost, "kind", "create", "cluster", "--name", "half", "--kubeconfig", str(kubeconfig),
                  env={"KSI_SIM_FAULTS": "kind-create:crash-after-container"})
    assert crashed.returncode == 1 and not kubeconfig.exists()
    exported = run(simhost, "kind", "get", "kubeconfig", "--name", "half")
    (tmp_path / "exported").write_text(exported.stdout)
    assert simhost.api_nodes(tmp_path / "exported") == ["half-control-plane"]
    assert run(simhost, "kind", "delete", "cluster", "--name", "half").returncode == 0
    simhost.assert_clean()


def test_killing_kind_mid_create_leaves_the_container(simhost: SimHost, tmp_path: Path) -> None:
    argv = ["kind", "create", "cluster", "--name", "killed", "--kubeconfig", str(tmp_path / "k")]
    with subprocess.Popen(argv, env=simhost.env(KSI_SIM_FAULTS="kind-create:hang"), stderr=subprocess.PIPE,
                          text=True) as kind:
        assert kind.stderr is not None
        for line in kind.stderr:  # wait for kind's own progress line, no sleeping
            if "Starting control-plane" in line:
                break
        kind.send_signal(signal.SIGTERM)
        assert kind.wait(timeout=10) == -signal.SIGTERM
    [record] = simhost.containers()
    assert record["alive"] and record["name"] == "killed-control-plane"
    assert run(simhost, "kind", "delete", "cluster", "--name", "killed").returncode == 0
    simhost.assert_clean()


# ------------------------------------------------------------------------------------------ liqoctl


def test_liqoctl_install_and_peer_add_a_ready_virtual_node(simhost: SimHost, tmp_path: Path) -> None:
    consumer, provider = tmp_path / "consumer", tmp_path / "provider"
    gateway = free_port(socket.SOCK_DGRAM)  # the provider publishes its gateway NodePort as UDP (NAT setup)
    create(simhost, "cons", consumer)
    create(simhost, "prov", provider, "--config", str(kind_config(tmp_path, f"""nodes:
- role: control-plane
  extraPortMappings:
  - {{containerPort: 30051, hostPort: {gateway}, protocol: UDP}}
""")))
    chart = tmp_path / "liqo-v1.0.0.tgz"  # Liqo's packaged chart, as `ksi images save` keeps it
    chart.write_bytes(liqochart.package("v1.0.0"))
    for kubeconfig, cluster_id in ((consumer, "milan"), (provider, "rome")):
        server = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
        installed = run(simhost, "liqoctl", "install", "kind", "--cluster-id", cluster_id, "--kubeconfig",
                        str(kubeconfig), "--timeout", "10m", "--local-chart-path", str(chart), "--set",
                        "networking.gatewayTemplates.wireguard.implementation=userspace",
                        "--set", f"apiServer.address={server}")
        assert installed.returncode == 0, installed.stderr
    peer = ["liqoctl", "peer", "--kubeconfig", str(consumer), "--remote-kubeconfig", str(provider),
            "--gw-server-service-type", "NodePort", "--gw-server-service-nodeport", "30051",
            "--gw-client-address", "127.0.0.1", "--gw-client-port", str(gateway), "--timeout", "5m", "--skip-confirm"]
    wrong_port = [*peer[:-4], str(free_port(socket.SOCK_DGRAM)), "--timeout", "1s"]
    unanswered = run(simhost, *wrong_port)  # nothing published there: the tunnel never comes up
    assert unanswered.returncode == 1 and "Timed out waiting for the connection" in unanswered.stderr
    for _ in range(2):  # peering twice is idempotent
        peered = run(simhost, *peer)
        assert peered.returncode == 0, peered.stderr
    assert simhost.api_nodes(consumer) == ["cons-control-plane", "rome"]
    assert simhost.api_nodes(provider) == ["prov-control-plane"]

    admin = config.new_client_from_config(config_file=str(consumer))  # type: ignore[no-untyped-call]
    [node] = client.CoreV1Api(admin).list_node(label_selector="liqo.io/type=virtual-node").items
    admin.close()
    assert node.metadata and node.metadata.labels and node.status and node.status.conditions
    assert node.metadata.labels["liqo.io/remote-cluster-id"] == "rome"
    assert [(c.type, c.status) for c in node.status.conditions] == [("Ready", "True")]

    assert run(simhost, "liqoctl", "info", "--kubeconfig", str(consumer), "--get", "clusterid").stdout == "milan\n"
    info = json.loads(run(simhost, "liqoctl", "info", "--kubeconfig", str(provider), "-o", "json").stdout)
    assert info["peerings"]["peers"][0] | {} == {"clusterID": "milan", "role": "Consumer",
                                                 "networkingStatus": "Healthy", "authenticationStatus": "Healthy",
                                                 "offloadingStatus": "Healthy"}
    changed = run(simhost, "liqoctl", "install", "kind", "--cluster-id", "venice", "--kubeconfig", str(consumer))
    assert changed.returncode == 1 and "cluster ID cannot be changed" in changed.stderr
    no_chart = run(simhost, "liqoctl", "install", "kind", "--kubeconfig", str(consumer), "--local-chart-path",
                   str(tmp_path / "missing"))
    assert no_chart.returncode == 1 and "not found" in no_chart.stderr
    assert run(simhost, "liqoctl", "version", "--client").stdout == "Client version: v1.0.0\n"
    assert run(simhost, "liqoctl", "version", "--kubeconfig", str(consumer)).stdout.endswith("Server version: v1.0.0\n")
    unpeered = run(simhost, "liqoctl", "unpeer", "--kubeconfig", str(consumer), "--remote-kubeconfig", str(provider))
    assert unpeered.returncode == 0, unpeered.stderr
    assert simhost.api_nodes(consumer) == ["cons-control-plane"]


def test_liqoctl_virtual_node_stays_not_ready_when_the_provider_advertises_its_node_ip(
        simhost: SimHost, tmp_path: Path) -> None:
    """Without apiServer.address, Liqo advertises the kind node's own IP and port 6443: unreachable from here."""
    consumer, provider = tmp_path / "consumer", tmp_path / "provider"
    create(simhost, "cons", consumer)
    create(simhost, "prov", provider)
    for kubeconfig, cluster_id in ((consumer, "milan"), (provider, "rome")):
        installed = run(simhost, "liqoctl", "install", "kind", "--cluster-id", cluster_id, "--kubeconfig",
                        str(kubeconfig))
        assert installed.returncode == 0, installed.stderr
    info = json.loads(run(simhost, "liqoctl", "info", "--kubeconfig", str(provider), "-o", "json").stdout)
    assert info["local"]["APIServerAddr"] == "https://172.18.0.2:6443"
    peered = run(simhost, "liqoctl", "peer", "--kubeconfig", str(consumer), "--remote-kubeconfig", str(provider),
                 "--networking-disabled")
    assert peered.returncode == 0, peered.stderr  # liqoctl does not wait for the virtual node
    admin = config.new_client_from_config(config_file=str(consumer))  # type: ignore[no-untyped-call]
    [node] = client.CoreV1Api(admin).list_node(label_selector="liqo.io/type=virtual-node").items
    admin.close()
    assert node.status and node.status.conditions
    [ready] = node.status.conditions
    assert (ready.type, ready.status) == ("Ready", "False")
    assert "https://172.18.0.2:6443 is unreachable" in (ready.message or "")


def test_liqoctl_peer_fails_when_the_remote_is_unreachable_or_bare(simhost: SimHost, tmp_path: Path) -> None:
    consumer, provider = tmp_path / "consumer", tmp_path / "provider"
    create(simhost, "here", consumer)
    assert run(simhost, "liqoctl", "install", "kind", "--cluster-id", "here", "--kubeconfig",
               str(consumer)).returncode == 0
    unreachable = yaml.safe_load(consumer.read_text())
    unreachable["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{free_port()}"  # another host's loopback
    (tmp_path / "unreachable").write_text(yaml.safe_dump(unreachable))
    result = run(simhost, "liqoctl", "peer", "--kubeconfig", str(consumer), "--remote-kubeconfig",
                 str(tmp_path / "unreachable"))
    assert result.returncode == 1 and "connect: connection refused" in result.stderr

    create(simhost, "bare", provider)
    result = run(simhost, "liqoctl", "peer", "--kubeconfig", str(consumer), "--remote-kubeconfig", str(provider))
    assert result.returncode == 1 and "(remote) Liqo is not installed" in result.stderr
    assert simhost.api_nodes(consumer) == ["here-control-plane"]


# ------------------------------------------------------------------------------------------ providers


def test_kind_chooses_its_provider_like_kind(simhost: SimHost) -> None:
    assert run(simhost, "kind", "version").stdout == "kind v0.27.0 go1.23.6 linux/amd64\n"
    assert run(simhost, "kind", "version", env={"KSI_SIM_KIND_VERSION": "v0.22.0"}).stdout.startswith(
        "kind v0.22.0 ")
    bare = os.pathsep.join([str(simhost.bin_dir), str(Path(sys.executable).parent)])  # no docker, no podman
    docker = run(simhost, "kind", "get", "clusters", env={"KIND_EXPERIMENTAL_PROVIDER": "docker", "PATH": bare})
    assert docker.returncode == 1 and "using docker due to KIND_EXPERIMENTAL_PROVIDER" in docker.stderr
    assert "ERROR: failed to list clusters: command \"docker ps -a --filter label=io.x-k8s.kind.cluster" \
           in docker.stderr and 'exec: "docker": executable file not found in $PATH' in docker.stderr
    old = run(simhost, "kind", "get", "clusters", env={"KSI_SIM_KIND_VERSION": "v0.22.0", "PATH": bare})
    assert 'ignoring unknown value "nerdctl" for KIND_EXPERIMENTAL_PROVIDER' in old.stderr
    assert old.returncode == 1 and '"docker": executable file not found' in old.stderr
    podman = run(simhost, "kind", "get", "clusters", env={"KIND_EXPERIMENTAL_PROVIDER": "podman", "PATH": bare})
    assert "enabling experimental podman provider" in podman.stderr and podman.returncode == 1
    autodetected = run(simhost, "kind", "get", "clusters", env={"KIND_EXPERIMENTAL_PROVIDER": "", "PATH": bare})
    assert autodetected.returncode == 0 and "enabling experimental nerdctl provider" in autodetected.stderr
    assert "due to KIND_EXPERIMENTAL_PROVIDER" not in autodetected.stderr
    if shutil.which("docker"):  # kind's autodetection prefers a docker CLI, which fails without its daemon
        with_docker = run(simhost, "kind", "get", "clusters", env={"KIND_EXPERIMENTAL_PROVIDER": ""})
        assert with_docker.returncode in (1, NOT_MODELLED_EXIT)
    without = simhost.env(PATH=str(Path(sys.executable).parent))
    missing = subprocess.run([str(simhost.bin_dir / "kind"), "create", "cluster"], env=without, capture_output=True,
                             text=True, timeout=30, check=False)
    assert missing.returncode == 1
    assert "failed to get nerdctl info: command \"nerdctl info --format '{{json .}}'\" failed with error: exec: " \
           '"nerdctl": executable file not found in $PATH' in missing.stderr
    simhost.assert_clean()


@pytest.mark.parametrize("argv", [
    ["kind", "load", "docker-image", "busybox"],
    ["kind", "create", "cluster", "--bogus"],
    ["nerdctl", "run", "-d", "alpine"],
    ["nerdctl", "ps", "--format", "{{.Names | upper}}"],
    ["liqoctl", "unoffload", "namespace", "demo"],
    ["liqoctl", "install", "k3s"],
])
def test_unmodelled_commands_fail_loudly(simhost: SimHost, argv: list[str]) -> None:
    result = run(simhost, *argv)
    assert result.returncode == NOT_MODELLED_EXIT
    assert result.stderr.startswith(f"ERROR: simulated {argv[0]} does not model: {shlex.join(argv)}")


def test_liqoctl_peer_help_lists_the_gateway_flags_of_the_version_played(simhost: SimHost) -> None:
    current = run(simhost, "liqoctl", "peer", "--help")
    assert current.returncode == 0 and "Usage:\n  liqoctl peer [flags]" in current.stdout
    for flag in ("--gw-server-service-type", "--gw-server-service-nodeport", "--gw-client-address",
                 "--gw-client-port", "--remote-kubeconfig"):
        assert f"      {flag} " in current.stdout, flag
    old = {"KSI_SIM_LIQOCTL_VERSION": "v1.0.0-rc.3"}
    assert run(simhost, "liqoctl", "version", "--client", env=old).stdout == "Client version: v1.0.0-rc.3\n"
    assert "--gw-" not in run(simhost, "liqoctl", "peer", "--help", env=old).stdout
    refused = run(simhost, "liqoctl", "peer", "--gw-client-port", "31000", "--remote-kubeconfig", "x", env=old)
    assert refused.returncode == 1 and refused.stderr == "Error: unknown flag: --gw-client-port\n"


def test_ksi_refuses_a_liqoctl_whose_peer_lacks_the_gateway_flags(simhost: SimHost) -> None:
    from ksi.launch.preflight import liqo_problems

    assert liqo_problems(simhost.env()) == []
    [problem] = liqo_problems(simhost.env(KSI_SIM_LIQOCTL_VERSION="v1.0.0-rc.3"))
    assert problem.code == 4 and "install a newer liqoctl v1" in problem.fix
    assert problem.message.startswith("liqoctl v1.0.0-rc.3 has no --gw-server-service-type, "
                                      "--gw-server-service-nodeport")


def test_liqoctl_peer_connects_only_the_way_a_gateway_behind_rootless_nat_can(simhost: SimHost, tmp_path: Path) -> None:
    consumer, provider = tmp_path / "consumer", tmp_path / "provider"
    create(simhost, "cons", consumer)
    create(simhost, "prov", provider)
    for kubeconfig, cluster_id in ((consumer, "milan"), (provider, "rome")):
        assert run(simhost, "liqoctl", "install", "kind", "--cluster-id", cluster_id, "--kubeconfig",
                   str(kubeconfig)).returncode == 0
    base = ["liqoctl", "peer", "--kubeconfig", str(consumer), "--remote-kubeconfig", str(provider), "--timeout", "1s"]
    for extra in ([], ["--gw-server-service-type", "ClusterIP"],
                  ["--gw-server-service-type", "NodePort", "--gw-server-service-nodeport", "30051"]):
        unreachable = run(simhost, *base, *extra)  # no client address: the consumer dials the node's own IP
        assert unreachable.returncode == 1 and "Timed out waiting for the connection" in unreachable.stderr, extra
    out_of_range = run(simhost, *base, "--gw-server-service-type", "NodePort", "--gw-server-service-nodeport", "80",
                       "--gw-client-address", "127.0.0.1", "--gw-client-port", "80")
    assert out_of_range.returncode == 1 and "provided port is not in the valid range" in out_of_range.stderr
    for unmodelled in (["--in-band"], ["--gw-server-service-location", "Consumer"], ["--mtu", "1400"]):
        refused = run(simhost, *base, *unmodelled)
        assert refused.returncode == NOT_MODELLED_EXIT and "does not model" in refused.stderr, unmodelled
    assert simhost.api_nodes(consumer) == ["cons-control-plane"]

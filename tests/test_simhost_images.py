"""The simulated host's images: registry (and switching it off), stores, archives, kind load, pods, Liqo's chart."""

from __future__ import annotations

import hashlib
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ksi_helpers import wait_for
from tests.simhost import liqochart
from tests.simhost.helmrepo import HelmRepo
from tests.simhost.kubeclient import KubeClient
from tests.simhost.kubeconfig import load_client
from tests.simhost.plugin import SimHost
from tests.test_simhost import create, run

OFFLINE = {"KSI_SIM_FAULTS": "registry:fail"}


def inspect(simhost: SimHost, ref: str) -> dict[str, Any] | None:
    result = run(simhost, "nerdctl", "image", "inspect", "--format", "{{json .}}", ref)
    return json.loads(result.stdout) if result.returncode == 0 else None


def pod(kubeconfig: Path, name: str, image: str, policy: str | None = None) -> dict[str, Any]:
    """Create a pod through the cluster's API; return its status once the kubelet has started or refused it."""
    api = KubeClient(load_client(str(kubeconfig)))
    container: dict[str, Any] = {"name": "main", "image": image, "command": ["true"]}
    container |= {"imagePullPolicy": policy} if policy else {}
    code, created = api.request("POST", "/api/v1/namespaces/default/pods", {
        "metadata": {"name": name}, "spec": {"restartPolicy": "Never", "containers": [container]}})
    assert code == 201, created

    def decided() -> dict[str, Any] | None:
        _, found = api.request("GET", f"/api/v1/namespaces/default/pods/{name}")
        status: dict[str, Any] = found.get("status") or {}
        waiting = [s["state"]["waiting"] for s in status.get("containerStatuses", []) if "waiting" in s["state"]]
        if status.get("phase") in ("Running", "Succeeded", "Failed") or any(
                w.get("reason") != "ContainerCreating" for w in waiting):
            return status
        return None

    result: dict[str, Any] = wait_for(decided, 30, f"pod {name} to start or fail")
    return result


def test_pull_save_load_inspect_round_trip_and_no_network(simhost: SimHost, tmp_path: Path) -> None:
    assert inspect(simhost, "busybox:1.36") is None
    missing = run(simhost, "nerdctl", "image", "inspect", "busybox:1.36")
    assert missing.returncode == 1 and "no such image: busybox:1.36" in missing.stderr
    assert run(simhost, "nerdctl", "pull", "busybox:1.36").returncode == 0
    image = inspect(simhost, "busybox:1.36")
    assert image is not None and image["RepoTags"] == ["busybox:1.36"]
    digest = image["RepoDigests"][0].split("@")[1]
    assert inspect(simhost, f"busybox@{digest}") is not None  # by digest, whatever the tag
    assert [c["what"] for c in simhost.registry_contacts()] == ["docker.io/library/busybox:1.36"]

    archive = tmp_path / "busybox.tar"
    assert run(simhost, "nerdctl", "save", "-o", str(archive), "busybox:1.36").returncode == 0
    for store in simhost.root.glob("*/*/images.json"):
        store.unlink()
    loaded = run(simhost, "nerdctl", "load", "-i", str(archive), env=OFFLINE)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout == "Loaded image: docker.io/library/busybox:1.36\n"
    assert inspect(simhost, f"busybox@{digest}") is not None
    assert len(simhost.registry_contacts()) == 1  # loading contacts no registry

    offline = run(simhost, "nerdctl", "pull", "alpine:3.20", env=OFFLINE)
    assert offline.returncode == 1
    assert ('failed to resolve reference \\"docker.io/library/alpine:3.20\\": failed to do request: Head '
            '\\"https://registry-1.docker.io/v2/library/alpine/manifests/3.20\\": dial tcp: lookup '
            "registry-1.docker.io: no such host") in offline.stderr
    assert simhost.registry_contacts()[-1] | {"time": 0} == {
        "time": 0, "host": simhost.registry_contacts()[-1]["host"], "uid": 0, "tool": "nerdctl",
        "registry": "registry-1.docker.io", "what": "docker.io/library/alpine:3.20", "reached": False}


def test_a_corrupt_or_truncated_archive_is_refused(simhost: SimHost, tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    assert run(simhost, "nerdctl", "pull", "alpine:3.20").returncode == 0
    assert run(simhost, "nerdctl", "save", "-o", str(archive), "alpine:3.20").returncode == 0
    data = bytearray(archive.read_bytes())
    flipped = tmp_path / "flipped.tar"
    flipped.write_bytes(bytes(data[:-4096]) + bytes(b ^ 0xFF for b in data[-4096:-2048]) + bytes(data[-2048:]))
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    corrupt = run(simhost, "nerdctl", "load", "-i", str(archive))
    assert corrupt.returncode == 1 and "unexpected commit digest" in corrupt.stderr, corrupt.stderr
    truncated = tmp_path / "t.tar"
    truncated.write_bytes(bytes(data[:5000]))
    cut = run(simhost, "nerdctl", "load", "-i", str(truncated))
    assert cut.returncode == 1 and "unexpected EOF" in cut.stderr, cut.stderr


def test_kind_create_pulls_a_missing_node_image_and_fails_offline_after_its_retries(
        simhost: SimHost, tmp_path: Path) -> None:
    offline = run(simhost, "kind", "create", "cluster", "--name", "off", "--kubeconfig", str(tmp_path / "k"),
                  env=OFFLINE, timeout=60)
    assert offline.returncode == 1
    assert 'ERROR: failed to create cluster: failed to pull image "kindest/node:' in offline.stderr
    assert len(simhost.registry_contacts()) == 5  # the first pull and kind's four retries
    assert simhost.containers() == []
    create(simhost, "on", tmp_path / "k")
    assert len(simhost.registry_contacts()) == 6
    create(simhost, "again", tmp_path / "k2", env=OFFLINE)  # the node image is in the store now
    assert len(simhost.registry_contacts()) == 6


def test_kind_load_needs_every_platform_and_pods_run_offline_on_loaded_images(
        simhost: SimHost, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    create(simhost, "pods", kubeconfig)
    for ref in ("example.org/app:1", "example.org/tool:2"):
        assert run(simhost, "nerdctl", "pull", "--all-platforms", ref).returncode == 0
    assert run(simhost, "nerdctl", "pull", "example.org/local-only:1").returncode == 0
    single, both = tmp_path / "single.tar", tmp_path / "both.tar"
    assert run(simhost, "nerdctl", "save", "-o", str(single), "example.org/local-only:1").returncode == 0
    assert run(simhost, "nerdctl", "save", "--all-platforms", "-o", str(both), "example.org/app:1",
               "example.org/tool:2").returncode == 0
    refused = run(simhost, "kind", "load", "image-archive", "--name", "pods", str(single))
    assert refused.returncode == 1
    assert "ctr --namespace=k8s.io images import --all-platforms" in refused.stderr
    assert "ctr: content digest sha256:" in refused.stderr and ": not found" in refused.stderr
    absent = run(simhost, "kind", "load", "image-archive", "--name", "nope", str(both))
    assert absent.returncode == 1 and 'ERROR: no nodes found for cluster "nope"' in absent.stderr
    loaded = run(simhost, "kind", "load", "image-archive", "--name", "pods", str(both))
    assert loaded.returncode == 0, loaded.stderr
    before = len(simhost.registry_contacts())

    # a cluster created offline: its kubelet cannot pull, so only loaded images run
    offline_config = tmp_path / "offline"
    create(simhost, "offline", offline_config, env=OFFLINE)
    assert run(simhost, "kind", "load", "image-archive", "--name", "offline", str(both)).returncode == 0
    assert pod(offline_config, "app", "example.org/app:1")["phase"] in ("Running", "Succeeded")
    assert pod(offline_config, "tool", "example.org/tool:2")["phase"] in ("Running", "Succeeded")
    pending = pod(offline_config, "missing", "example.org/other:1")
    assert pending["phase"] == "Pending"
    waiting = pending["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "ErrImagePull" and "lookup example.org: no such host" in waiting["message"]
    always = pod(offline_config, "always", "example.org/app:1", "Always")  # Always asks the registry
    assert always["phase"] == "Pending"
    assert [c["what"] for c in simhost.registry_contacts()[before:]] == ["example.org/other:1", "example.org/app:1"]
    assert not any(c["reached"] for c in simhost.registry_contacts()[before:])


def test_liqoctl_install_pulls_the_charts_images_unless_loaded(simhost: SimHost, tmp_path: Path) -> None:
    chart = tmp_path / "liqo-v1.0.0.tgz"
    chart.write_bytes(liqochart.package("v1.0.0"))
    images = [i for group in liqochart.install_images(liqochart.load(str(chart)), {"tag": "v1.0.0",
                                                                                   "telemetry.enabled": False}).values()
              for i in group]
    assert "ghcr.io/liqotech/liqo-controller-manager:v1.0.0" in images
    assert not any("uninstaller" in i or "telemetry" in i or "certgen" in i for i in images)  # hook, disabled, unused
    kubeconfig = tmp_path / "kubeconfig"
    create(simhost, "liqo", kubeconfig)
    node_image_pull = len(simhost.registry_contacts())
    install = ["liqoctl", "install", "kind", "--kubeconfig", str(kubeconfig), "--cluster-id", "liqo",
               "--disable-telemetry", "--timeout", "2s"]
    no_chart = run(simhost, *install, env=OFFLINE)
    assert no_chart.returncode == 1
    assert ('looks like "https://helm.liqo.io/" is not a valid chart repository or cannot be reached: Get '
            '"https://helm.liqo.io/index.yaml": dial tcp: lookup helm.liqo.io: no such host') in no_chart.stderr

    offline = tmp_path / "offline"
    create(simhost, "offline", offline, env=OFFLINE)
    install[4] = str(offline)
    timed_out = run(simhost, *install, "--local-chart-path", str(chart), env=OFFLINE)
    assert timed_out.returncode == 1 and "context deadline exceeded" in timed_out.stderr
    for image in images:
        assert run(simhost, "nerdctl", "pull", "--all-platforms", image).returncode == 0
    bundle = tmp_path / "liqo-images.tar"
    assert run(simhost, "nerdctl", "save", "--all-platforms", "-o", str(bundle), *images).returncode == 0
    assert run(simhost, "kind", "load", "image-archive", "--name", "offline", str(bundle)).returncode == 0
    before = len(simhost.registry_contacts())
    installed = run(simhost, *install, "--local-chart-path", str(chart), env=OFFLINE)
    assert installed.returncode == 0, installed.stderr
    assert len(simhost.registry_contacts()) == before
    assert node_image_pull == 1


def test_the_chart_repository_serves_an_index_with_digests(simhost: SimHost, helm_repo: HelmRepo) -> None:
    with urllib.request.urlopen(helm_repo.url + "index.yaml", timeout=10) as response:
        index = yaml.safe_load(response.read())
    entry = next(e for e in index["entries"]["liqo"] if e["version"] == "v1.0.1")
    assert entry["urls"] == [helm_repo.url + "liqo-v1.0.1.tgz"]
    assert entry["digest"] == hashlib.sha256(liqochart.package("v1.0.1")).hexdigest()
    assert [c["what"] for c in simhost.registry_contacts()] == ["/index.yaml"]


@pytest.mark.parametrize("ref", ["UPPER/case:1", "a:b:c", "x@sha256:short"])
def test_malformed_references_are_refused_like_nerdctl(simhost: SimHost, ref: str) -> None:
    result = run(simhost, "nerdctl", "pull", ref)
    assert result.returncode == 1 and "invalid reference format" in result.stderr
    assert simhost.registry_contacts() == []

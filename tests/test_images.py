"""`ksi images save`, `ksi images list` and `ksi run --image-cache` on one node, with the registry switched off."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.ksi_helpers import WORKLOADS, KsiRunner, wait_for
from tests.simhost.helmrepo import HelmRepo
from tests.simhost.plugin import SimHost

OFFLINE = {"KSI_SIM_FAULTS": "registry:fail"}
APP = "example.org/team/app:1.2"


@pytest.fixture
def cache(ksi: KsiRunner, simhost: SimHost, helm_repo: HelmRepo) -> Path:
    """A cache saved where there is internet: node image, Liqo v1.0.0 (the liqoctl played), APP."""
    ksi.env["KSI_LIQO_CHART_REPO"] = helm_repo.url
    directory = ksi.shared / "ksi-images"
    result = ksi.run("images", "save", "--dir", str(directory), APP)
    assert result.returncode == 0, result.stderr
    return directory


def forget_local_images(simhost: SimHost) -> None:
    """Empty every user's image store on the simulated host (a fresh compute node)."""
    for store in simhost.root.glob("*/*/images.json"):
        store.unlink()


def workload(ksi: KsiRunner, image: str = APP) -> Path:
    path = ksi.cwd / "w.sh"
    path.write_text(f'#!/bin/sh\nexec "{WORKLOADS / "run_pod.py"}" "{image}"\n')
    path.chmod(0o755)
    return path


def test_save_writes_a_manifest_and_is_idempotent(ksi: KsiRunner, simhost: SimHost, cache: Path) -> None:
    manifest = json.loads((cache / "manifest.json").read_text())
    purposes = sorted(e["purpose"] for e in manifest["entries"])
    assert purposes == ["liqo"] * 14 + ["liqo-chart", "node", "workload"]
    for entry in manifest["entries"]:
        assert (cache / entry["file"]).stat().st_size == entry["size"]
        assert set(entry) == {"purpose", "reference", "digest", "file", "size", "sha256", "liqo_version"}
    assert len({e["file"] for e in manifest["entries"] if e["purpose"] == "liqo"}) == 1  # one archive for kind load
    assert not list(cache.glob(".tmp-*"))
    contacts = len(simhost.registry_contacts())
    again = ksi.run("images", "save", "--dir", str(cache))
    assert again.returncode == 0, again.stderr
    assert again.stderr.count(": kept (") == 1 + 16 and "0 image(s) fetched now" in again.stderr
    assert len(simhost.registry_contacts()) == contacts  # kept archives: no registry, not even the chart index
    assert json.loads((cache / "manifest.json").read_text())["entries"] == manifest["entries"]  # APP kept too

    listed = ksi.run("images", "list", "--dir", str(cache), "--json")
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    assert data["complete"] and data["liqo_versions"] == ["v1.0.0"]
    assert {e["state"] for e in data["entries"]} == {"ok"}


def test_a_run_with_the_cache_contacts_no_registry(ksi: KsiRunner, simhost: SimHost, cache: Path) -> None:
    forget_local_images(simhost)
    before = len(simhost.registry_contacts())
    result = ksi.run("run", "--image-cache", str(cache), str(workload(ksi)), str(ksi.shared), env=OFFLINE)
    assert result.returncode == 0, result.stderr
    assert "pod workload: Succeeded" in result.stdout
    assert "images: kind node image kindest/node:" in result.stderr and "loaded into this node's store" in result.stderr
    assert simhost.registry_contacts()[before:] == []
    # the node image is in this node's store now: the next run does not load it again
    again = ksi.run("run", str(workload(ksi)), str(ksi.shared), env=OFFLINE | {"KSI_IMAGE_CACHE": str(cache)})
    assert again.returncode == 0, again.stderr
    assert "the kind node image (on this node already)" in again.stderr
    assert "loaded into this node's store" not in again.stderr
    assert simhost.registry_contacts()[before:] == []
    simhost.assert_clean()


def test_an_image_the_cache_lacks_is_not_pulled_offline(ksi: KsiRunner, simhost: SimHost, cache: Path) -> None:
    result = ksi.run("run", "--image-cache", str(cache), str(workload(ksi, "example.org/team/other:1")),
                     str(ksi.shared), env=OFFLINE)
    assert result.returncode == 1
    assert "ErrImagePull" in result.stdout and "no such host" in result.stdout  # the workload saw it, as for real


def test_without_a_cache_and_without_network_nothing_is_created(ksi: KsiRunner, simhost: SimHost) -> None:
    result = ksi.run("run", str(workload(ksi)), str(ksi.shared), env=OFFLINE)
    assert result.returncode == 3, result.stderr
    [line] = [x for x in result.stderr.splitlines() if "error:" in x]
    assert "kind node image kindest/node:v1.37.0@sha256:" in line and "cannot be pulled" in line
    assert "no such host" in line and "`ksi images save --dir DIR`" in line and "--image-cache DIR" in line
    assert ksi.run_dirs() == [] and simhost.containers() == []
    assert [c["tool"] for c in simhost.registry_contacts()] == ["nerdctl"]  # one pull, as a check; kind never ran


@pytest.mark.parametrize("damage", ["corrupt", "truncate", "delete"])
def test_a_damaged_archive_is_named_before_anything_is_created(
        ksi: KsiRunner, simhost: SimHost, cache: Path, damage: str) -> None:
    entries = json.loads((cache / "manifest.json").read_text())["entries"]
    archive = cache / next(e["file"] for e in entries if e["purpose"] == "workload")
    data = bytearray(archive.read_bytes())
    if damage == "corrupt":
        data[len(data) // 2] ^= 0x01
        archive.write_bytes(bytes(data))
    elif damage == "truncate":
        archive.write_bytes(bytes(data[:1000]))
    else:
        archive.unlink()
    forget_local_images(simhost)
    before = len(simhost.registry_contacts())
    result = ksi.run("run", "--image-cache", str(cache), str(workload(ksi)), str(ksi.shared), env=OFFLINE)
    assert result.returncode == 3, result.stderr
    [line] = [x for x in result.stderr.splitlines() if "error:" in x]
    words = {"corrupt": "is corrupt: its sha256 is", "truncate": "has 1000 bytes where the manifest says",
             "delete": "is missing"}[damage]
    assert f"images: image cache: {archive} (workload image {APP}) {words}" in line
    assert f"ksi images save --dir {cache}" in line
    assert ksi.run_dirs() == [] and simhost.containers() == []
    assert simhost.registry_contacts()[before:] == []
    listed = ksi.run("images", "list", "--dir", str(cache), "--verify")
    assert listed.returncode == 3 and f"{archive} (workload image {APP})" in listed.stderr


def test_a_cache_without_this_node_image_or_a_manifest_is_refused(ksi: KsiRunner, simhost: SimHost,
                                                                  cache: Path) -> None:
    other = "kindest/node:v1.36.0"
    result = ksi.run("run", "--image-cache", str(cache), "--node-image", other, str(workload(ksi)),
                     str(ksi.shared), env=OFFLINE)
    assert result.returncode == 3
    assert f"image cache {cache} has no archive of the kind node image {other}" in result.stderr
    empty = ksi.shared / "empty"
    empty.mkdir()
    nothing = ksi.run("run", "--image-cache", str(empty), str(workload(ksi)), str(ksi.shared), env=OFFLINE)
    assert nothing.returncode == 2 and f"image cache {empty} has no manifest.json" in nothing.stderr
    assert ksi.run_dirs() == [] and simhost.containers() == []


def test_a_killed_save_leaves_no_half_archive_listed(ksi: KsiRunner, simhost: SimHost, helm_repo: HelmRepo) -> None:
    directory = ksi.shared / "ksi-images"
    ksi.env["KSI_LIQO_CHART_REPO"] = helm_repo.url
    process = ksi.start("images", "save", "--dir", str(directory), env={"KSI_SIM_FAULTS": "nerdctl-save:hang"})
    try:
        wait_for(lambda: list(directory.glob(".tmp-node-*")), 60, "the node image's archive to be started")
    finally:
        os.kill(process.pid, signal.SIGKILL)  # no chance to clean up: only the atomic writes protect the cache
        process.communicate(timeout=30)
    for pid in simhost.leftover_processes():  # the hung nerdctl save, in its own process group
        os.kill(pid, signal.SIGKILL)
    listed = ksi.run("images", "list", "--dir", str(directory), "--json")
    assert listed.returncode == 3
    data = json.loads(listed.stdout)
    assert [e["purpose"] for e in data["entries"]] == ["liqo-chart"] and not data["complete"]
    assert any("kind node image" in m for m in data["missing"])
    resumed = ksi.run("images", "save", "--dir", str(directory))
    assert resumed.returncode == 0, resumed.stderr
    assert "left by a save that did not finish" in resumed.stderr and "Liqo's chart v1.0.0: kept" in resumed.stderr
    assert not list(directory.glob(".tmp-*"))
    assert ksi.run("images", "list", "--dir", str(directory)).returncode == 0


def test_save_refuses_bad_input_before_fetching(ksi: KsiRunner, simhost: SimHost, tmp_path: Path) -> None:
    bad = ksi.run("images", "save", "--dir", str(tmp_path / "c"), "Not/Valid:1")
    assert bad.returncode == 2 and "'Not/Valid:1' is not an image reference" in bad.stderr
    version = ksi.run("images", "save", "--dir", str(tmp_path / "c"), "--liqo-version", "latest")
    assert version.returncode == 2 and "is not a Liqo v1 release" in version.stderr
    no_nerdctl = ksi.run("images", "save", "--dir", str(tmp_path / "c"),
                         env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"})
    assert no_nerdctl.returncode == 4 and "nerdctl not found on PATH" in no_nerdctl.stderr
    assert simhost.registry_contacts() == []
    assert not (tmp_path / "c").exists()


def test_list_without_a_cache_says_how_to_make_one(ksi: KsiRunner, simhost: SimHost) -> None:
    result = ksi.run("images", "list")
    assert result.returncode == 2
    assert f"image cache {ksi.cwd / 'ksi-images'} has no manifest.json" in result.stderr
    assert "ksi images save" in result.stderr


def test_save_warns_about_latest_and_fails_naming_an_image_that_cannot_be_pulled(ksi: KsiRunner, simhost: SimHost,
                                                          helm_repo: HelmRepo) -> None:
    ksi.env["KSI_LIQO_CHART_REPO"] = helm_repo.url
    result = ksi.run("images", "save", "--dir", str(ksi.shared / "c"), APP, "busybox",
                     env={"KSI_SIM_FAULTS": "registry:fail"})
    assert result.returncode == 1
    assert "images: busybox is tagged latest: Kubernetes pulls such an image whenever a pod starts" in result.stderr
    [line] = [x for x in result.stderr.splitlines() if "error:" in x]
    assert "cannot pull kindest/node:v1.37.0@sha256:" in line and "(kind node image): nerdctl pull: failed to " in line
    assert "no such host" in line

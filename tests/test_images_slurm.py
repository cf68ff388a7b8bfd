"""The point of the image cache, on the real Slurm bed: three nodes without internet run from shared storage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ksi_helpers import WORKLOADS
from tests.simhost.helmrepo import HelmRepo
from tests.test_multinode import Multi, multi, task_exits, workload

pytestmark = pytest.mark.slurm
__all__ = ["multi"]  # the fixture, shared with the other multi-node tests

OFFLINE = {"KSI_SIM_FAULTS": "registry:fail"}
APP = "example.org/team/app:1.2"


def save(multi: Multi, helm_repo: HelmRepo) -> Path:
    """Run `ksi images save` on the login node (the test host), which has internet; return the cache."""
    directory = multi.shared / "ksi-images"
    result = subprocess.run([sys.executable, "-m", "ksi", "images", "save", "--dir", str(directory), APP],
                            cwd=multi.shared, env=multi.env | {"KSI_LIQO_CHART_REPO": helm_repo.url},
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    return directory


def error_lines(stderr: str) -> dict[str, str]:
    """Return each node's one error line (a node with several fails the test)."""
    found: dict[str, str] = {}
    for line in stderr.splitlines():
        if line.startswith("ksi[") and "] error: " in line:
            node = line[4:line.index("]")]
            assert node not in found, stderr
            found[node] = line
    return found


def test_three_nodes_without_internet_run_from_the_cache_and_contact_no_registry(
        multi: Multi, helm_repo: HelmRepo) -> None:
    cache = save(multi, helm_repo)
    before = len(multi.simhost.registry_contacts())
    pod = workload(multi, "w.sh", f'exec "{WORKLOADS / "run_pod.py"}" "{APP}"\n')
    result = multi.srun(pod, env=OFFLINE | {"KSI_IMAGE_CACHE": str(cache)}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "pod workload: Succeeded" in result.stdout
    for node in multi.bed.node_names:
        assert f"ksi[{node}] images: kind node image kindest/node:" in result.stderr
        assert f"ksi[{node}] images: Liqo images (14) loaded into cluster" in result.stderr
        assert f"ksi[{node}] images: workload images (1) loaded into cluster" in result.stderr
    assert "peer: 2 cluster(s) peered" in result.stderr
    assert multi.simhost.registry_contacts()[before:] == []
    multi.assert_clean()


def test_three_nodes_without_internet_or_cache_fail_before_creating_anything(multi: Multi) -> None:
    result = multi.srun(workload(multi, "w.sh", "echo must-not-run\n"), env=OFFLINE)
    assert result.returncode == 3, result.stderr
    assert task_exits(result.stderr) == {0: 3, 1: 3, 2: 3}, result.stderr
    lines = error_lines(result.stderr)
    assert sorted(lines) == sorted(multi.bed.node_names)
    for line in lines.values():
        assert "kind node image kindest/node:v1.37.0@sha256:" in line and "cannot be pulled" in line
        assert "lookup registry-1.docker.io: no such host" in line and "`ksi images save --dir DIR`" in line
    assert not (multi.shared / "ksi-runs").exists()
    assert multi.simhost.containers() == []
    contacts = multi.simhost.registry_contacts()
    assert sorted(c["host"] for c in contacts) == sorted(multi.bed.node_names)  # one pull each, as a check
    assert {(c["tool"], c["reached"]) for c in contacts} == {("nerdctl", False)}
    multi.assert_clean(idle=multi.bed.node_names)


def test_a_corrupt_archive_is_named_on_every_node_before_anything_is_created(
        multi: Multi, helm_repo: HelmRepo) -> None:
    cache = save(multi, helm_repo)
    entries = json.loads((cache / "manifest.json").read_text())["entries"]
    bundle = cache / next(e["file"] for e in entries if e["purpose"] == "liqo")
    with open(bundle, "r+b") as handle:  # one flipped bit in the middle: same size, same name
        handle.seek(bundle.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0x01]))
    before = len(multi.simhost.registry_contacts())
    result = multi.srun(workload(multi, "w.sh", "echo must-not-run\n"),
                        env=OFFLINE | {"KSI_IMAGE_CACHE": str(cache)})
    assert result.returncode == 3, result.stderr
    lines = error_lines(result.stderr)
    assert sorted(lines) == sorted(multi.bed.node_names)
    for line in lines.values():
        assert f"images: image cache: {bundle} (Liqo image ghcr.io/liqotech/" in line and "is corrupt" in line
        assert f"fix: run `ksi images save --dir {cache}`" in line
    assert not (multi.shared / "ksi-runs").exists()
    assert multi.simhost.containers() == [] and multi.simhost.registry_contacts()[before:] == []
    multi.assert_clean(idle=multi.bed.node_names)

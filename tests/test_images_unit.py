"""The image cache's parts on their own: references, the manifest, file checks with stamps, Liqo's chart."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from ksi import cli, settings
from ksi.errors import KsiError
from ksi.images import chart, manifest, plan, verify
from ksi.images.manifest import LIQO, LIQO_CHART, NODE, WORKLOAD, Entry, Manifest, ManifestError
from ksi.images.reference import normalize, parse, same_image
from tests.simhost import liqochart
from tests.simhost.helmrepo import HelmRepo
from tests.simhost.plugin import SimHost

DIGEST = "sha256:" + "ab" * 32
LIQO_V1 = sorted(f"ghcr.io/liqotech/{name}:v1.0.1" for name in (
    "cert-creator", "crd-replicator", "fabric", "gateway", "gateway/geneve", "gateway/wireguard", "ipam",
    "liqo-controller-manager", "metric-agent", "proxy", "telemetry", "uninstaller", "virtual-kubelet", "webhook"))


@pytest.mark.parametrize(("text", "normalized", "familiar"), [
    ("busybox", "docker.io/library/busybox:latest", "busybox"),
    ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox"),
    ("kindest/node:v1.37.0@" + DIGEST, "docker.io/kindest/node:v1.37.0@" + DIGEST, "kindest/node"),
    ("docker.io/kindest/node@" + DIGEST, "docker.io/kindest/node@" + DIGEST, "kindest/node"),
    ("ghcr.io/liqotech/gateway/wireguard:v1.0.1", "ghcr.io/liqotech/gateway/wireguard:v1.0.1",
     "ghcr.io/liqotech/gateway/wireguard"),
    ("localhost:5000/app:1", "localhost:5000/app:1", "localhost:5000/app"),
])
def test_references_normalize_like_container_runtimes(text: str, normalized: str, familiar: str) -> None:
    ref = parse(text)
    assert ref.normalized == normalized and ref.familiar == familiar
    assert same_image(text, normalized)


@pytest.mark.parametrize("text", ["Upper/case:1", "app:bad tag", "app@sha256:short", "a//b", ""])
def test_malformed_references_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        parse(text)
    assert normalize(text) == text


def entry(purpose: str = NODE, reference: str = "kindest/node:v1.37.0@" + DIGEST, file: str = "node.tar",
          liqo_version: str = "", size: int = 3, sha: str = "cd" * 32) -> Entry:
    return Entry(purpose, reference, DIGEST, file, size, sha, liqo_version)


def test_manifest_round_trips_and_keeps_fields_of_newer_writers() -> None:
    found = Manifest((entry(), entry(LIQO_CHART, "https://x/liqo.tgz", "c.tgz", "v1.0.1"),
                      entry(LIQO, "ghcr.io/liqotech/ipam:v1.0.1", "l.tar", "v1.0.1")), "ksi 0.1.0", "now")
    data = json.loads(found.to_json())
    data["signature"] = "kept"
    again = manifest.parse_manifest(data)
    assert again.entries == found.entries and again.extra == {"signature": "kept"}
    assert json.loads(again.to_json())["signature"] == "kept"


def test_a_bad_manifest_names_every_problem() -> None:
    data = {"format": 1, "entries": [
        {"purpose": "node", "reference": "Bad/Ref", "digest": DIGEST, "file": "a.tar", "size": 1, "sha256": "0" * 64},
        {"purpose": "other", "reference": "x", "digest": "md5:1", "file": "../escape", "size": -1, "sha256": "z"},
        {"purpose": "liqo", "reference": "ghcr.io/a:1", "digest": DIGEST, "file": "l.tar", "size": 1,
         "sha256": "0" * 64},
        "not an object"]}
    with pytest.raises(ManifestError) as raised:
        manifest.parse_manifest(data)
    message = str(raised.value)
    for part in ("entries[0].reference", "entries[1].purpose", "entries[1].digest", "entries[1].file",
                 "entries[1].size", "entries[1].sha256", "entries[2] (liqo) has no liqo_version",
                 "entries[3] is not an object"):
        assert part in message, message
    with pytest.raises(ManifestError, match="format 2 is not 1"):
        manifest.parse_manifest({"format": 2, "entries": []})


def test_entries_are_found_and_replaced_by_normalized_reference() -> None:
    old = entry(WORKLOAD, "busybox:1.36", "old.tar")
    found = Manifest((old, entry()))
    assert found.find(WORKLOAD, "docker.io/library/busybox:1.36") == old
    updated = found.with_entries([entry(WORKLOAD, "docker.io/library/busybox:1.36", "new.tar")], "ksi x")
    assert [e.file for e in updated.entries] == ["node.tar", "new.tar"] and updated.written_by == "ksi x"
    charts = Manifest((entry(LIQO_CHART, "https://a/liqo.tgz", "a.tgz", "v1.0.0"),))
    assert charts.find(LIQO_CHART, "", "v1.0.0") is not None and charts.find(LIQO_CHART, "", "v1.0.1") is None


def test_archive_names_are_plain_and_distinct() -> None:
    name = manifest.file_name(NODE, "kindest/node:v1.37.0@" + DIGEST, DIGEST)
    assert name == "node-kindest-node-v1.37.0-abababababab.tar"
    assert "/" not in manifest.file_name(WORKLOAD, "registry.example.org:5000/team/app:1", DIGEST)


def test_a_file_appears_only_complete_and_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), manifest.staging(tmp_path, "a.tar") as temp:
        temp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with manifest.staging(tmp_path, "a.tar") as temp:
        assert temp.name.startswith(manifest.TEMP_PREFIX)
        temp.write_bytes(b"whole")
    assert [p.name for p in tmp_path.iterdir()] == ["a.tar"] and (tmp_path / "a.tar").read_bytes() == b"whole"
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.tar").stat().st_mode & 0o777 == 0o666 & ~umask
    (tmp_path / ".tmp-b.tar.xyz").write_bytes(b"left by a killed save")
    assert manifest.remove_leftovers(tmp_path) == [".tmp-b.tar.xyz"]


def cached(tmp_path: Path, data: bytes = b"archive bytes") -> Entry:
    (tmp_path / "a.tar").write_bytes(data)
    return entry(file="a.tar", size=len(data), sha=verify.sha256_file(tmp_path / "a.tar"))


def test_files_are_checked_for_presence_size_and_sha256(tmp_path: Path) -> None:
    good = cached(tmp_path)
    assert verify.check_files(tmp_path, [good, good], None) == []
    missing = entry(file="gone.tar")
    [problem] = verify.check_files(tmp_path, [missing], None)
    assert problem == f"{tmp_path / 'gone.tar'} (kind node image {missing.reference}) is missing"
    [short] = verify.check_files(tmp_path, [Entry(**{**good.__dict__, "size": 99})], None)
    assert "has 13 bytes where the manifest says 99" in short
    [corrupt] = verify.check_files(tmp_path, [Entry(**{**good.__dict__, "sha256": "0" * 64})], None)
    assert f"{tmp_path / 'a.tar'} (kind node image" in corrupt and "is corrupt: its sha256 is" in corrupt


def test_a_stamped_file_is_not_hashed_again_until_it_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = cached(tmp_path)
    stamps = tmp_path / "state" / verify.STAMPS
    stamps.parent.mkdir()
    hashed: list[Path] = []
    real = verify.sha256_file

    def counting(path: Path) -> str:
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(verify, "sha256_file", counting)
    assert verify.check_files(tmp_path, [good], stamps) == []
    assert verify.check_files(tmp_path, [good], stamps) == []
    assert len(hashed) == 1  # the second check trusted the stamp
    info = (tmp_path / "a.tar").stat()
    (tmp_path / "a.tar").write_bytes(b"archive BYTES")  # same size, other content...
    os.utime(tmp_path / "a.tar", ns=(info.st_atime_ns, info.st_mtime_ns))  # ...and the old mtime back
    [problem] = verify.check_files(tmp_path, [good], stamps)
    assert "is corrupt" in problem and len(hashed) == 2


def sim_chart(version: str = "v1.0.1") -> chart.Chart:
    return chart.read_package(liqochart.package(version), "liqo.tgz")


def test_liqo_images_come_from_the_charts_values() -> None:
    package = sim_chart()
    assert chart.images(package, "v1.0.1") == LIQO_V1
    assert "k8s.gcr.io/ingress-nginx/kube-webhook-certgen:v1.1.1" not in chart.images(package, "v1.0.1")
    assert package.version == "v1.0.1"


def test_an_images_own_version_and_a_used_plain_image_count_and_subcharts_are_read() -> None:
    package = sim_chart()
    files = dict(package.files)
    files["values.yaml"] = files["values.yaml"].replace(
        b'name: "ghcr.io/liqotech/ipam"\n      version: ""', b'name: "ghcr.io/liqotech/ipam"\n      version: "v9"')
    files["templates/webhook.yaml"] += b"\n        - image: {{ .Values.webhook.patch.image }}\n"
    files["charts/extra/Chart.yaml"] = b"apiVersion: v2\nname: extra\nversion: 0.1.0\n"
    files["charts/extra/values.yaml"] = b"sidecar:\n  image:\n    name: quay.io/x/sidecar\n"
    found = chart.images(chart.Chart(files), "v1.0.1")
    assert "ghcr.io/liqotech/ipam:v9" in found and "ghcr.io/liqotech/ipam:v1.0.1" not in found
    assert "k8s.gcr.io/ingress-nginx/kube-webhook-certgen:v1.1.1" in found
    assert "quay.io/x/sidecar:v1.0.1" in found


def test_a_chart_directory_is_packaged_deterministically(tmp_path: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(liqochart.package("v1.0.1")), mode="r:gz") as tar:
        tar.extractall(tmp_path, filter="data")
    first = chart.package_directory(tmp_path / "liqo")
    assert first == chart.package_directory(tmp_path / "liqo")
    assert chart.images(chart.read_package(first, "dir"), "v1.0.1") == LIQO_V1
    with pytest.raises(KsiError, match="is not a Helm chart"):
        chart.package_directory(tmp_path)
    with pytest.raises(KsiError, match="is not a packaged Helm chart"):
        chart.read_package(b"not a tarball", "x.tgz")


def test_the_chart_is_downloaded_by_version_and_checked_against_the_index(
        simhost: SimHost, helm_repo: HelmRepo) -> None:
    data, url = chart.download(helm_repo.url.rstrip("/"), "1.0.1")
    assert url == helm_repo.url + "liqo-v1.0.1.tgz" and data == liqochart.package("v1.0.1")
    with pytest.raises(KsiError, match=r"has no chart of Liqo v2\.0\.0 \(it has v1\.0\.1, v1\.0\.0"):
        chart.download(helm_repo.url, "v2.0.0")
    helm_repo.packages["liqo-v1.0.0.tgz"] += b"tampered"
    with pytest.raises(KsiError, match="does not match the sha256"):
        chart.download(helm_repo.url, "v1.0.0")
    helm_repo.online = False
    with pytest.raises(KsiError, match="cannot download the index of Liqo's Helm repository"):
        chart.download(helm_repo.url, "v1.0.1")


def test_requirements_follow_the_cached_chart_not_the_manifest(tmp_path: Path) -> None:
    package = liqochart.package("v1.0.1")
    (tmp_path / "c.tgz").write_bytes(package)
    chart_entry = entry(LIQO_CHART, "https://x", "c.tgz", "v1.0.1")
    liqo = [entry(LIQO, image, "l.tar", "v1.0.1") for image in LIQO_V1 if "proxy" not in image]
    found = Manifest((entry(), chart_entry, *liqo, entry(WORKLOAD, "busybox:1.36", "w.tar")))
    needs = plan.requirements(found, tmp_path, "kindest/node:v1.37.0@" + DIGEST, "v1.0.1")
    assert needs.missing == ("Liqo image ghcr.io/liqotech/proxy:v1.0.1 (named by the chart of Liqo v1.0.1)",)
    assert len(needs.entries) == 1 + 1 + 13 + 1
    other = plan.requirements(found, tmp_path, "kindest/node:v1.36.0", "v1.0.2")
    assert other.missing == ("archive of the kind node image kindest/node:v1.36.0",
                             "Liqo v1.0.2, the version of liqoctl here (it holds Liqo v1.0.1)")


def test_cache_settings_are_validated(tmp_path: Path) -> None:
    loaded, problems = settings.load({"KSI_IMAGE_CACHE": str(tmp_path), "KSI_LIQO_CHART_REPO": "https://m/"})
    assert not problems and loaded.image_cache == str(tmp_path) and loaded.liqo_chart_repo == "https://m/"
    later, problems = settings.load({"KSI_IMAGE_CACHE": "relative/cache", "KSI_LIQO_CHART_REPO": "ftp://m",
                                     "KSI_LIQO_CHART": str(tmp_path / "x.zip")})
    assert sorted(p.message.split("=")[0] for p in problems) == ["KSI_LIQO_CHART", "KSI_LIQO_CHART_REPO"]
    assert later.image_cache == str(Path.cwd() / "relative/cache")  # `ksi images save` may create it
    (tmp_path / "liqo.tgz").write_bytes(b"")
    assert not settings.load({"KSI_LIQO_CHART": str(tmp_path / "liqo.tgz")})[1]
    assert cli.DEFAULT_CACHE == manifest.DEFAULT_DIR

"""setup/install-tools.sh against a staged root, with release files made here in the layout of the real ones.

The fakes have the real release assets' names, archive layouts and checksum-file formats: kind's per-binary
`.sha256sum` (sha256sum output), nerdctl's `SHA256SUMS` list, liqoctl's sums in its krew-index manifest
(`liqo.yaml`), kubectl's bare `.sha256`. The fake kind and kubectl are shell scripts that answer `version`.
"""

from __future__ import annotations

import hashlib
import io
import os
import platform
import re
import stat
import subprocess
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "setup" / "install-tools.sh"
ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), "amd64")
OTHER_ARCH = "arm64" if ARCH == "amd64" else "amd64"
PREFIX = "/usr/local"
KIND, NERDCTL, LIQOCTL, KUBECTL = "v0.33.0", "2.3.5", "v1.0.1", "v1.37.0"

# What the nerdctl full bundle holds (a few of its files, its symlink kind) and what each tool installs.
BUNDLE: dict[str, tuple[int, str]] = {
    "bin/nerdctl": (0o755, "#!/bin/sh\necho 'nerdctl version 2.3.5'\n"),
    "bin/containerd": (0o755, "#!/bin/sh\necho containerd\n"),
    "bin/containerd-rootless-setuptool.sh": (0o755, "#!/bin/sh\necho setuptool\n"),
    "libexec/cni/bridge": (0o755, "#!/bin/sh\necho bridge\n"),
    "lib/systemd/system/containerd.service": (0o644, "[Service]\nExecStart=/usr/local/bin/containerd\n"),
    "share/doc/nerdctl-full/README.md": (0o644, "# nerdctl (full distribution)\n"),
}
BUNDLE_LINKS = {"bin/buildkit-cni-bridge": "../libexec/cni/bridge"}
INSTALLED = {"bin/kind", "bin/kubectl", "bin/liqoctl", *BUNDLE, *BUNDLE_LINKS}
LABELS = {"kind": f"kind {KIND}", "nerdctl": f"nerdctl-full {NERDCTL}", "liqoctl": f"liqoctl {LIQOCTL}",
          "kubectl": f"kubectl {KUBECTL}"}
LINE = re.compile(r"^install-tools: (?P<tool>\S+ \S+): (?P<what>missing|different) (?P<path>/\S+)$", re.MULTILINE)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def script(text: str) -> bytes:
    return f"#!/bin/sh\n{text}\n".encode()


def targz(members: Mapping[str, tuple[int, bytes]], links: Mapping[str, str] | None = None) -> bytes:
    """A .tar.gz with directories, files (mode, content) and symlinks, owned by 0:0 as release archives are."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        dirs = sorted({str(p) for name in [*members, *(links or {})] for p in Path(name).parents if str(p) != "."})
        for name in dirs:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, (mode, data) in members.items():
            info = tarfile.TarInfo(name)
            info.mode, info.size = mode, len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
            tar.addfile(info)
    return buffer.getvalue()


def krew_manifest(version: str, sums: Mapping[str, str]) -> str:
    """liqo.yaml as krew-index publishes it: one platform entry (uri, sha256) per release archive."""
    entries = []
    for name, digest in sums.items():
        os_name, arch = name.removesuffix(".tar.gz").split("-")[1:3]
        entries.append(f"""  - selector:
      matchLabels:
        os: {os_name}
        arch: {arch}
    uri: https://github.com/liqotech/liqo/releases/download/{version}/{name}
    sha256: {digest}
    bin: liqoctl
""")
    return f"""apiVersion: krew.googlecontainertools.github.com/v1alpha2
kind: Plugin
metadata:
  name: liqo
spec:
  version: {version}
  homepage: https://github.com/liqotech/liqo
  shortDescription: Install and manage Liqo on your clusters
  platforms:
{"".join(entries)}"""


def make_releases(d: Path, arch: str = ARCH, *, kind_says: str = KIND, kubectl_says: str = KUBECTL,
                  liqo_version: str = LIQOCTL) -> None:
    """Write the release files of all four tools for arch into d, each with its published sums file."""
    d.mkdir(parents=True, exist_ok=True)
    kind = script(f'echo "kind {kind_says} go1.24.4 linux/{arch}"')
    (d / f"kind-linux-{arch}").write_bytes(kind)
    (d / f"kind-linux-{arch}.sha256sum").write_text(f"{sha256(kind)}  kind-linux-{arch}\n")

    bundle_name = f"nerdctl-full-{NERDCTL}-linux-{arch}.tar.gz"
    bundle = targz({name: (mode, text.encode()) for name, (mode, text) in BUNDLE.items()}, BUNDLE_LINKS)
    (d / bundle_name).write_bytes(bundle)
    (d / "SHA256SUMS").write_text(
        f"{sha256(b'minimal')}  nerdctl-{NERDCTL}-linux-{arch}.tar.gz\n"
        f"{sha256(b'other arch')}  nerdctl-full-{NERDCTL}-linux-{OTHER_ARCH if arch == ARCH else ARCH}.tar.gz\n"
        f"{sha256(bundle)}  {bundle_name}\n")

    liqoctl = targz({"liqoctl": (0o755, script(f'echo "Client version: {liqo_version}"')),
                     "LICENSE": (0o644, b"Apache License 2.0\n")})
    (d / f"liqoctl-linux-{arch}.tar.gz").write_bytes(liqoctl)
    (d / "liqo.yaml").write_text(krew_manifest(liqo_version, {
        "liqoctl-darwin-arm64.tar.gz": sha256(b"darwin"),
        f"liqoctl-linux-{arch}.tar.gz": sha256(liqoctl),
    }))

    kubectl = script(f'[ "$1 $2" = "version --client" ] || exit 1\necho "Client Version: {kubectl_says}"\n'
                     'echo "Kustomize Version: v5.7.1"')
    (d / "kubectl").write_bytes(kubectl)
    (d / "kubectl.sha256").write_text(sha256(kubectl))  # the published file holds the bare sum, no newline


@dataclass
class Bed:
    releases: Path
    root: Path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = ["bash", str(SCRIPT), "--from", str(self.releases), "--root", str(self.root), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)

    def path(self, rel: str, prefix: str = PREFIX) -> Path:
        return self.root / prefix.lstrip("/") / rel

    def snapshot(self) -> dict[str, tuple[int, int, int]]:
        """Every path under the root with its inode, mtime and mode: what a run that changes nothing keeps."""
        found = {}
        for path in sorted(self.root.rglob("*")):
            st = path.lstat()
            found[str(path.relative_to(self.root))] = (st.st_ino, st.st_mtime_ns, st.st_mode)
        return found


@pytest.fixture
def bed(tmp_path: Path) -> Bed:
    releases = tmp_path / "release files"
    make_releases(releases)
    root = tmp_path / "node image"
    root.mkdir()
    return Bed(releases, root)


def listed(output: str) -> set[tuple[str, str, str]]:
    """(tool label, missing|different, path) of every line of the check's listing."""
    return {(m["tool"], m["what"], m["path"]) for m in LINE.finditer(output)}


def label_of(rel: str) -> str:
    name = Path(rel).name
    return LABELS[name] if name in ("kind", "kubectl", "liqoctl") else LABELS["nerdctl"]


def test_check_lists_exactly_what_is_missing_and_changes_nothing(bed: Bed) -> None:
    result = bed.run()
    assert result.returncode == 1, result.stderr
    assert listed(result.stdout) == {(label_of(rel), "missing", f"{PREFIX}/{rel}") for rel in INSTALLED}
    for checked in (f"kind-linux-{ARCH} matches its published SHA-256 (kind-linux-{ARCH}.sha256sum)",
                    f"nerdctl-full-{NERDCTL}-linux-{ARCH}.tar.gz matches its published SHA-256 (SHA256SUMS)",
                    f"liqoctl-linux-{ARCH}.tar.gz matches its published SHA-256 "
                    f"(liqo.yaml, krew-index's manifest for {LIQOCTL})",
                    "kubectl matches its published SHA-256 (kubectl.sha256)"):
        assert checked in result.stdout
    assert f"{len(INSTALLED)} file(s) missing and 0 different under {PREFIX} in {bed.root}: install them with --apply" \
        in result.stdout
    assert list(bed.root.iterdir()) == []


def test_apply_makes_the_check_pass_and_a_second_apply_changes_nothing(bed: Bed) -> None:
    applied = bed.run("--apply")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert applied.stdout.count(" (was missing)") == len(INSTALLED)
    for rel in ("bin/kind", "bin/kubectl", "bin/liqoctl", *BUNDLE):
        mode = BUNDLE[rel][0] if rel in BUNDLE else 0o755
        assert stat.S_IMODE(bed.path(rel).stat().st_mode) == mode, rel
    link = bed.path("bin/buildkit-cni-bridge")
    assert link.is_symlink() and os.readlink(link) == "../libexec/cni/bridge"
    assert link.read_text() == BUNDLE["libexec/cni/bridge"][1]
    kind = subprocess.run([str(bed.path("bin/kind")), "version"], capture_output=True, text=True, timeout=10,
                          check=True)
    assert kind.stdout.startswith(f"kind {KIND} ")
    assert not list(bed.root.rglob("*.ksi-tmp"))

    check = bed.run()
    assert check.returncode == 0, check.stdout + check.stderr
    assert listed(check.stdout) == set()
    assert f"everything is in place under {PREFIX} in {bed.root}" in check.stdout

    before = bed.snapshot()
    again = bed.run("--apply")
    assert again.returncode == 0, again.stderr
    assert "installed " not in again.stdout
    assert "nothing changed" in again.stdout
    assert bed.snapshot() == before


def test_only_what_is_missing_or_different_is_listed_and_replaced(bed: Bed) -> None:
    assert bed.run("--apply").returncode == 0
    bed.path("bin/containerd").unlink()
    bed.path("bin/kind").write_bytes(script('echo "kind v0.20.0 go1.20 linux/amd64"'))  # an old kind, same mode
    bed.path("bin/kubectl").chmod(0o644)  # the right bytes, but not executable
    bed.path("bin/buildkit-cni-bridge").unlink()
    bed.path("bin/buildkit-cni-bridge").symlink_to("/elsewhere/bridge")
    untouched = bed.path("bin/liqoctl").stat()

    check = bed.run()
    assert check.returncode == 1
    assert listed(check.stdout) == {
        (LABELS["nerdctl"], "missing", f"{PREFIX}/bin/containerd"),
        (LABELS["kind"], "different", f"{PREFIX}/bin/kind"),
        (LABELS["kubectl"], "different", f"{PREFIX}/bin/kubectl"),
        (LABELS["nerdctl"], "different", f"{PREFIX}/bin/buildkit-cni-bridge"),
    }
    applied = bed.run("--apply")
    assert applied.returncode == 0
    assert applied.stdout.count("installed ") == 5  # four files and the summary line
    assert "installed 4 file(s)" in applied.stdout
    assert os.readlink(bed.path("bin/buildkit-cni-bridge")) == "../libexec/cni/bridge"
    assert stat.S_IMODE(bed.path("bin/kubectl").stat().st_mode) == 0o755
    assert bed.path("bin/liqoctl").stat().st_ino == untouched.st_ino
    assert bed.run().returncode == 0


def test_a_wrong_checksum_is_refused_naming_the_file_and_nothing_is_installed(bed: Bed) -> None:
    kind = bed.releases / f"kind-linux-{ARCH}"
    kind.write_bytes(kind.read_bytes() + b"# tampered\n")
    bundle = bed.releases / f"nerdctl-full-{NERDCTL}-linux-{ARCH}.tar.gz"
    bundle.write_bytes(bundle.read_bytes()[:-100])  # a truncated download
    result = bed.run("--apply")
    assert result.returncode == 3
    refused = [line for line in result.stderr.splitlines() if line.startswith("install-tools: REFUSED ")]
    assert len(refused) == 2, result.stderr
    assert f"REFUSED kind: {kind} has SHA-256 " in refused[0]
    assert f"but kind-linux-{ARCH}.sha256sum says " in refused[0] and "download it again" in refused[0]
    assert f"REFUSED nerdctl: {bundle} has SHA-256 " in refused[1] and "but SHA256SUMS says " in refused[1]
    assert f"nothing was changed: fix the release files named above in {bed.releases}" in result.stdout
    assert list(bed.root.iterdir()) == []  # liqoctl and kubectl were fine, and still nothing was installed


def test_every_missing_release_file_is_named_with_where_to_get_it(bed: Bed) -> None:
    (bed.releases / "kubectl.sha256").unlink()
    (bed.releases / "liqo.yaml").unlink()
    result = bed.run()
    assert result.returncode == 3
    assert f"REFUSED kubectl: {bed.releases}/kubectl.sha256 is missing: download it from " \
           f"https://dl.k8s.io/release/{KUBECTL}/bin/linux/{ARCH}/kubectl.sha256" in result.stderr
    assert f"REFUSED liqoctl: {bed.releases}/liqo.yaml is missing: download it from " \
           "https://github.com/kubernetes-sigs/krew-index/" in result.stderr


def test_release_files_of_another_version_are_refused(tmp_path: Path) -> None:
    releases = tmp_path / "releases"
    make_releases(releases, kind_says="v0.27.0", liqo_version="v1.0.0")
    root = tmp_path / "root"
    root.mkdir()
    result = Bed(releases, root).run("--apply")
    assert result.returncode == 3
    assert f"REFUSED kind: the release file is not {KIND} (`kind version` says: kind v0.27.0 go1.24.4" in result.stderr
    assert "download v0.33.0 or pass --kind-version" in result.stderr
    assert f"REFUSED liqoctl: {releases}/liqo.yaml, krew-index's manifest for {LIQOCTL} gives no SHA-256 for " \
           f"liqoctl-linux-{ARCH}.tar.gz" in result.stderr
    assert list(root.iterdir()) == []
    # The same files are accepted for the versions they are, named on the command line.
    accepted = Bed(releases, root).run("--apply", "--kind-version", "0.27.0", "--liqoctl-version", "v1.0.0")
    assert accepted.returncode == 0, accepted.stderr
    assert "kind v0.27.0: installed /usr/local/bin/kind" in accepted.stdout


def test_only_some_tools_into_another_prefix(bed: Bed) -> None:
    result = bed.run("--apply", "--only", "kind,kubectl", "--prefix", "/opt/ksi-tools/")
    assert result.returncode == 0, result.stderr
    installed = sorted(str(p.relative_to(bed.root)) for p in bed.root.rglob("*") if not p.is_dir())
    assert installed == ["opt/ksi-tools/bin/kind", "opt/ksi-tools/bin/kubectl"]


def test_a_foreign_architecture_is_checked_by_its_sums_alone(tmp_path: Path) -> None:
    releases = tmp_path / "releases"
    make_releases(releases, OTHER_ARCH, kind_says="v0.0.1")  # not run: it is not for this machine
    root = tmp_path / "root"
    root.mkdir()
    result = Bed(releases, root).run("--apply", "--arch", OTHER_ARCH)
    assert result.returncode == 0, result.stderr
    assert f"kind: version not checked: a linux-{OTHER_ARCH} binary cannot run on this" in result.stdout
    assert (root / "usr/local/bin/kind").read_text().startswith("#!/bin/sh")


@pytest.mark.parametrize(("args", "message"), [
    ((), "--from DIR is required"),
    (("--from", "/nonexistent"), "--from /nonexistent is not a directory"),
    (("--from", "/", "--only", "kind,helm"), "'helm' is not one of kind,nerdctl,liqoctl,kubectl"),
    (("--from", "/", "--arch", "mips"), "--arch mips: releases exist for amd64 and arm64"),
    (("--from", "/", "--prefix", "usr/local"), "--prefix usr/local is not an absolute path"),
    (("--from", "/", "--kind-version", "latest"), "--kind-version latest is not a release version"),
    (("--from", "/", "--root", "/nonexistent"), "--root /nonexistent is not a directory"),
    (("--bogus",), "unknown argument '--bogus'"),
])
def test_bad_usage_is_refused_with_one_line(args: tuple[str, ...], message: str) -> None:
    result = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_a_file_that_cannot_be_replaced_fails_the_run_naming_it(bed: Bed) -> None:
    (bed.path("bin/kind") / "in the way").mkdir(parents=True)  # a directory where kind's binary belongs
    result = bed.run("--apply")
    assert result.returncode == 1
    assert f"install-tools: {LABELS['kind']}: FAILED to install {PREFIX}/bin/kind" in result.stdout
    assert f"installing failed for the files named above under {PREFIX} in {bed.root}" in result.stdout
    assert bed.path("bin/kubectl").is_file()  # the others were installed
    assert not list(bed.root.rglob("*.ksi-tmp"))

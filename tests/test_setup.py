"""setup/prepare-node.sh against a staged root: what a site admin's node image gets."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "setup" / "prepare-node.sh"
FILES = {
    "etc/sysctl.d/60-ksi.conf": ["fs.inotify.max_user_watches = 524288", "fs.inotify.max_user_instances = 512"],
    "etc/modules-load.d/ksi.conf": ["ip6_tables", "ip6table_nat", "ip_tables", "iptable_nat", "wireguard"],
    "etc/systemd/system/user@.service.d/delegate.conf": ["[Service]", "Delegate=cpu cpuset io memory pids"],
}


def prepare(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60, check=False)


def test_writes_every_file_into_an_image_and_is_idempotent(tmp_path: Path) -> None:
    first = prepare("--root", str(tmp_path))
    assert first.returncode == 0, first.stderr
    for name, lines in FILES.items():
        path = tmp_path / name
        content = path.read_text().splitlines()
        assert all(line in content for line in lines), (name, content)
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        assert f"wrote /{name}" in first.stdout
    second = prepare("--root", str(tmp_path))
    assert second.returncode == 0
    assert second.stdout.count("unchanged /etc/") == len(FILES)
    assert not list(tmp_path.rglob("*.ksi-tmp"))


def test_a_changed_file_is_put_back(tmp_path: Path) -> None:
    prepare("--root", str(tmp_path))
    sysctl = tmp_path / "etc/sysctl.d/60-ksi.conf"
    sysctl.write_text("fs.inotify.max_user_watches = 8192\n")
    result = prepare("--root", str(tmp_path))
    assert "wrote /etc/sysctl.d/60-ksi.conf" in result.stdout
    assert "fs.inotify.max_user_watches = 524288" in sysctl.read_text()


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    result = prepare("--root", str(tmp_path), "--dry-run")
    assert result.returncode == 0
    assert result.stdout.count("would write /etc/") == len(FILES)
    assert list(tmp_path.iterdir()) == []


def test_bad_usage_is_refused(tmp_path: Path) -> None:
    assert prepare("--bogus").returncode == 2
    missing = prepare("--root", str(tmp_path / "missing"))
    assert missing.returncode == 2 and "is not a directory" in missing.stderr

"""setup/prepare-node.sh against a staged root (what a site admin's node image gets), and the Lmod module file."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

from tests.ksi_helpers import KSI
from tests.test_install_tools import SCRIPT as INSTALL_TOOLS
from tests.test_install_tools import make_releases

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


# --- the Lmod module file ----------------------------------------------------------------------------------

MODULEFILES = SCRIPT.parent / "modulefiles"
LMOD_INIT = Path("/usr/share/lmod/lmod/init/bash")  # Debian's lmod package
needs_lmod = pytest.mark.skipif(not LMOD_INIT.is_file(), reason="Lmod is not installed (apt-get install lmod)")


def site_module(tmp_path: Path, **settings: str) -> Path:
    """A copy of ksi's module file in a fresh MODULEPATH, with its site settings set as a site admin would."""
    version = importlib.metadata.version("ksi")
    text = (MODULEFILES / "ksi" / f"{version}.lua").read_text()
    for name, value in settings.items():
        text, hits = re.subn(rf'^local {name} = .*$', f"local {name} = {value}", text, flags=re.MULTILINE)
        assert hits == 1, f"the module file has no site setting {name}"
    modulepath = tmp_path / "modulefiles"
    (modulepath / "ksi").mkdir(parents=True)
    (modulepath / "ksi" / f"{version}.lua").write_text(text)
    return modulepath


def lmod(tmp_path: Path, modulepath: Path, commands: str) -> subprocess.CompletedProcess[str]:
    """Run commands in a bash with Lmod initialised and modulepath in use (HOME is the test's: Lmod caches there)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    shell = f"source {LMOD_INIT}\nmodule use {shlex.quote(str(modulepath))}\n{commands}"
    return subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=60, check=False, env=env)


def test_the_module_file_is_named_for_the_installed_version() -> None:
    assert (MODULEFILES / "ksi" / f"{importlib.metadata.version('ksi')}.lua").is_file()


@needs_lmod
def test_module_load_puts_ksi_and_the_installed_tools_on_path_and_sets_site_defaults(tmp_path: Path) -> None:
    venv = tmp_path / "ksi venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "ksi").symlink_to(KSI)  # the installed ksi under test
    tools = tmp_path / "tools"
    releases = tmp_path / "releases"
    make_releases(releases)
    installed = subprocess.run(["bash", str(INSTALL_TOOLS), "--from", str(releases), "--prefix", str(tools), "--apply"],
                               capture_output=True, text=True, timeout=120, check=False)
    assert installed.returncode == 0, installed.stderr
    modulepath = site_module(tmp_path, ksi_prefix=f'"{venv}"', tools_prefix=f'"{tools}"', state_parent='"/var/tmp"',
                             liqo_chart='"/shared/liqo/chart v1.0.1"', extra='{ KSI_CREATE_TIMEOUT = "900",')
    result = lmod(tmp_path, modulepath, """\
module load ksi
echo "PATH=$PATH"
for v in KSI_STATE_DIR KSI_LIQO_CHART KSI_CREATE_TIMEOUT CNI_PATH KIND_EXPERIMENTAL_PROVIDER KSI_NODE_IMAGE; do
  echo "$v=${!v-unset}"
done
command -v ksi kind nerdctl liqoctl kubectl
ksi --version
kind version
module unload ksi
echo "after PATH=$PATH KSI_STATE_DIR=${KSI_STATE_DIR-unset} CNI_PATH=${CNI_PATH-unset}"
""")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"PATH={venv}/bin:{tools}/bin:/usr/bin:/bin"
    assert lines[1:7] == [f"KSI_STATE_DIR=/var/tmp/ksi-{os.getuid()}", "KSI_LIQO_CHART=/shared/liqo/chart v1.0.1",
                          "KSI_CREATE_TIMEOUT=900", f"CNI_PATH={tools}/libexec/cni",
                          "KIND_EXPERIMENTAL_PROVIDER=nerdctl", "KSI_NODE_IMAGE=unset"]
    assert lines[7:12] == [f"{venv}/bin/ksi", *(f"{tools}/bin/{tool}" for tool in ("kind", "nerdctl", "liqoctl",
                                                                                   "kubectl"))]
    assert lines[12].startswith("ksi ") and lines[13].startswith("kind v0.33.0 ")
    assert lines[14] == "after PATH=/usr/bin:/bin KSI_STATE_DIR=unset CNI_PATH=unset"
    assert result.stderr.strip() == ""


@needs_lmod
def test_module_load_fails_naming_the_setting_to_edit_when_ksi_is_not_there(tmp_path: Path) -> None:
    modulepath = site_module(tmp_path, ksi_prefix=f'"{tmp_path}/nowhere"')
    result = lmod(tmp_path, modulepath, 'module load ksi; echo "status $?"')
    assert "status 1" in result.stdout
    message = " ".join(result.stderr.split())  # Lmod wraps long messages
    assert f"there is no {tmp_path}/nowhere/bin/ksi: set ksi_prefix in {modulepath}/ksi/" in message

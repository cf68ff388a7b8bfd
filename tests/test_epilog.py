"""setup/ksi-epilog.sh on its own: what it runs, as whom, with which environment, and that it always exits 0.

`ksi` is replaced by small programs that record their arguments and environment, fail, or hang; the real
ksi under a real Slurm Epilog is tested in test_epilog_slurm.py.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ksi_helpers import REPO

EPILOG = REPO / "setup" / "ksi-epilog.sh"
ME = pwd.getpwuid(os.getuid()).pw_name

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the epilog runs as root and switches users")


def fake_ksi(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "ksi"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def epilog(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    state = tmp_path / "state-%u"
    base = {"PATH": "/usr/bin:/bin", "SLURM_JOB_ID": "4242", "SLURM_JOB_USER": ME,
            "KSI_EPILOG_STATE_DIR": str(state), "KSI_EPILOG_CONF": str(tmp_path / "no-such.conf")}
    return subprocess.run(["bash", str(EPILOG)], env={**base, **env}, capture_output=True, text=True,
                          timeout=60, check=False, cwd=tmp_path)


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory every user can use (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="ksi-epilog-test-", dir="/var/tmp"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("user", [ME, pytest.param("ksitest", marks=pytest.mark.slurm)])
def test_runs_ksi_cleanup_for_the_job_as_its_user_with_a_clean_environment(public_dir: Path, user: str,
                                                                           request: pytest.FixtureRequest) -> None:
    if user != ME:  # the second user of the Slurm test bed, which creates it on a fresh machine
        assert request.getfixturevalue("slurm_bed").second_user == user
    record = public_dir / "ran"
    body = f'{{ id -un; pwd; echo "$@"; env | sort; }} > {record}\necho "ksi[n1] cleanup: deleted x"\n'
    ksi = fake_ksi(public_dir, body)
    uid = pwd.getpwnam(user).pw_uid
    (public_dir / f"state-{uid}").mkdir()
    result = epilog(public_dir, KSI_EPILOG_KSI=str(ksi), SLURM_JOB_USER=user, SLURMD_NODENAME="n1",
                    SECRET_OF_ROOT="x", KSI_EPILOG_PASS="EXTRA NOT_SET", EXTRA="passed")
    assert result.returncode == 0
    who, cwd, args, *env = record.read_text().splitlines()
    assert (who, cwd, args) == (user, "/", "cleanup --job 4242")
    values = dict(line.split("=", 1) for line in env)
    assert values["KSI_STATE_DIR"] == str(public_dir / f"state-{uid}")
    assert values["SLURMD_NODENAME"] == "n1" and values["EXTRA"] == "passed"
    assert values["USER"] == user and values["HOME"] == pwd.getpwnam(user).pw_dir
    assert "SECRET_OF_ROOT" not in values and "NOT_SET" not in values and "SLURM_JOB_ID" not in values
    assert "ksi-epilog: job=4242 user=" in result.stderr
    assert "ksi[n1] cleanup: deleted x" in result.stderr
    assert "ksi cleanup --job 4242 done" in result.stderr


@pytest.mark.parametrize(("env", "message"), [
    ({"SLURM_JOB_ID": ""}, "no usable SLURM_JOB_ID"),
    ({"SLURM_JOB_ID": "12; rm -rf /"}, "no usable SLURM_JOB_ID"),
    ({"SLURM_JOB_USER": ""}, "no SLURM_JOB_USER"),
    ({"SLURM_JOB_USER": "no-such-user-here"}, "unknown user"),
    ({"KSI_EPILOG_KSI": "/nonexistent/ksi"}, "ksi not found at /nonexistent/ksi"),
])
def test_never_fails_the_node(tmp_path: Path, env: dict[str, str], message: str) -> None:
    (tmp_path / f"state-{os.getuid()}").mkdir()
    result = epilog(tmp_path, **env)
    assert result.returncode == 0
    assert message in result.stderr


def test_a_failing_ksi_is_logged_and_the_epilog_still_succeeds(tmp_path: Path) -> None:
    (tmp_path / f"state-{os.getuid()}").mkdir()
    ksi = fake_ksi(tmp_path, 'echo "ksi[n1] error: cleanup: could not delete ksi-4242-abcdef: boom" >&2\nexit 1\n')
    result = epilog(tmp_path, KSI_EPILOG_KSI=str(ksi))
    assert result.returncode == 0
    assert "could not delete ksi-4242-abcdef: boom" in result.stderr
    assert "ksi cleanup --job 4242 failed with status 1" in result.stderr


def test_a_hanging_ksi_is_stopped_at_the_time_limit(tmp_path: Path) -> None:
    (tmp_path / f"state-{os.getuid()}").mkdir()
    pid_file = tmp_path / "pid"
    ksi = fake_ksi(tmp_path, f"echo $$ > {pid_file}\nexec sleep 300\n")
    started = time.monotonic()
    result = epilog(tmp_path, KSI_EPILOG_KSI=str(ksi), KSI_EPILOG_TIMEOUT="1")
    assert time.monotonic() - started < 15
    assert result.returncode == 0
    assert "did not finish within 1 s" in result.stderr
    pid = int(pid_file.read_text())
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]


@pytest.mark.parametrize(("config", "runs", "message"), [
    ("exit 3\n", False, ""),  # ends the epilog early, still with 0
    ('KSI_EPILOG_TIMEOUT="$NOT_SET_ANYWHERE"\n', True, ""),  # unset under set -u used to end it with 1
    ("if then fi\n", True, "ignoring"),  # a syntax error: the file is skipped and named
])
def test_a_broken_config_file_never_fails_the_node(tmp_path: Path, config: str, runs: bool, message: str) -> None:
    (tmp_path / f"state-{os.getuid()}").mkdir()
    record = tmp_path / "ran"
    ksi = fake_ksi(tmp_path, f"touch {record}\n")
    conf = tmp_path / "epilog.conf"
    conf.write_text(config)
    result = epilog(tmp_path, KSI_EPILOG_CONF=str(conf), KSI_EPILOG_KSI=str(ksi))
    assert result.returncode == 0, result.stderr
    assert record.exists() == runs
    assert message in result.stderr
    if message:
        assert f"ignoring {conf}" in result.stderr


def test_a_user_without_a_runtime_directory_is_named_in_the_log(tmp_path: Path) -> None:
    uid = pwd.getpwnam(ME).pw_uid
    if Path(f"/run/user/{uid}").exists():
        pytest.skip(f"/run/user/{uid} exists on this machine")
    (tmp_path / f"state-{uid}").mkdir()
    record = tmp_path / "env"
    ksi = fake_ksi(tmp_path, f"env > {record}\n")
    result = epilog(tmp_path, KSI_EPILOG_KSI=str(ksi))
    assert result.returncode == 0
    assert f"no /run/user/{uid}: {ME}'s systemd and rootless containerd are not running on this node" in result.stderr
    assert "loginctl enable-linger" in result.stderr
    assert "XDG_RUNTIME_DIR=" not in record.read_text()


def test_users_without_ksi_state_on_the_node_are_skipped_quickly(tmp_path: Path) -> None:
    record = tmp_path / "ran"
    ksi = fake_ksi(tmp_path, f"touch {record}\n")
    result = epilog(tmp_path, KSI_EPILOG_KSI=str(ksi))
    assert result.returncode == 0 and result.stderr == ""
    assert not record.exists()
    forced = epilog(tmp_path, KSI_EPILOG_KSI=str(ksi), KSI_EPILOG_ALWAYS="1")
    assert forced.returncode == 0 and record.exists()


def test_settings_come_from_the_config_file(tmp_path: Path) -> None:
    record = tmp_path / "ran"
    ksi = fake_ksi(tmp_path, f'echo "$KSI_STATE_DIR" > {record}\n')
    conf = tmp_path / "epilog.conf"
    conf.write_text(f"KSI_EPILOG_KSI={ksi}\nKSI_EPILOG_STATE_DIR={tmp_path}/from-conf-%u\n")
    (tmp_path / f"from-conf-{os.getuid()}").mkdir()
    result = epilog(tmp_path, KSI_EPILOG_CONF=str(conf))
    assert result.returncode == 0, result.stderr
    assert record.read_text().strip() == f"{tmp_path}/from-conf-{os.getuid()}"

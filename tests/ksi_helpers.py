"""Running the real ksi command line in tests: cgroup v2 view, simulated container host, isolated state."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.testbed.bedctl import SLURM_ENV_PREFIXES

REPO = Path(__file__).resolve().parent.parent
# The installed `ksi` command of the Python running the tests: what a user runs, never the source tree.
KSI = str(Path(sys.executable).parent / "ksi")
WORKLOADS = Path(__file__).resolve().parent / "workloads"

# The requests ksi makes to grant the workload its token (and nothing else): in a cluster's API log, each once.
ACCESS_REQUESTS = frozenset({
    ("POST", "/api/v1/namespaces/kube-system/serviceaccounts"),
    ("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"),
    ("POST", "/api/v1/namespaces/kube-system/serviceaccounts/admin-user/token"),
})

# These machines mount a v1/v2 hybrid; the nodes ksi targets mount cgroup v2. A private mount namespace
# with cgroup2 at /sys/fs/cgroup gives ksi the view it checks for (the process keeps unshare's pid).
CGROUP2 = ("unshare", "--mount", "--propagation", "private", "sh", "-c",
           'mount -t cgroup2 none /sys/fs/cgroup && exec "$@"', "sh")

# Variables of the environment pytest runs in that would change what ksi does: a Slurm allocation's
# (SLURM_JOB_ID, SLURM_STEP_*: ksi would think it runs in a job step), any ksi setting or injected fault.
FOREIGN_ENV_PREFIXES = (*SLURM_ENV_PREFIXES, "KSI_")


def isolated_environ(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return ``base`` (default os.environ) without Slurm's variables and without any KSI_* variable."""
    source = os.environ if base is None else base
    return {k: v for k, v in source.items() if not k.startswith(FOREIGN_ENV_PREFIXES)}


@dataclass
class KsiRunner:
    """Starts the installed `ksi` command the way a user would, with the simulated host first on PATH."""

    env: dict[str, str]
    cwd: Path
    shared: Path
    state: Path
    home: Path

    def argv(self, *args: str, wrap: Sequence[str] = CGROUP2) -> list[str]:
        """Return the argv of ``ksi ARGS`` inside ``wrap``."""
        return [*wrap, KSI, *args]

    def run(self, *args: str, timeout: float = 90, wrap: Sequence[str] = CGROUP2,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``ksi ARGS`` to completion and return its result."""
        return subprocess.run(self.argv(*args, wrap=wrap), cwd=self.cwd, env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=timeout, check=False)

    def start(self, *args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
        """Start ``ksi ARGS`` in the background with captured output."""
        return subprocess.Popen(self.argv(*args), cwd=self.cwd, env={**self.env, **(env or {})},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def run_dirs(self) -> list[Path]:
        """Return every run directory under the shared directory."""
        runs = self.shared / "ksi-runs"
        return sorted(runs.iterdir()) if runs.is_dir() else []

    def record(self, run_dir: Path) -> dict[str, Any]:
        """Return the run's run.json."""
        data: dict[str, Any] = json.loads((run_dir / "run.json").read_text())
        return data

    def reservations(self) -> list[str]:
        """Return the port reservations left in the node-local state directory."""
        ports = self.state / "ports"
        return sorted(p.name for p in ports.iterdir()) if ports.is_dir() else []

    def registry(self) -> list[str]:
        """Return the cluster records left in the node-local state directory."""
        clusters = self.state / "clusters"
        return sorted(p.name for p in clusters.iterdir()) if clusters.is_dir() else []


def wait_for(condition: Callable[[], Any], timeout: float, what: str, poll: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


def finish(process: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    """Wait for ``process`` (killing it after ``timeout``) and return (status, stdout, stderr)."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        raise AssertionError(f"ksi did not finish within {timeout} s\nstdout: {out}\nstderr: {err}") from None
    return process.returncode, out, err


def state_of(runner: KsiRunner) -> str | None:
    """Return the state in the only run directory's run.json, if there is one yet."""
    dirs = runner.run_dirs()
    if len(dirs) != 1 or not (dirs[0] / "run.json").exists():
        return None
    try:
        return str(runner.record(dirs[0]).get("state"))
    except ValueError:
        return None


def guardians_of(ksi_pid: int) -> list[int]:
    """Return the live workload guardians that the ksi process ``ksi_pid`` started (their argv ends in its pid).

    A guardian is ``python -I -S -c <script> <ksi pid>``, started before the workload is known.
    """
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[:-1]
        except OSError:
            continue
        if argv[1:4] == [b"-I", b"-S", b"-c"] and len(argv) == 6 and b"prctl" in argv[4] \
                and argv[5] == str(ksi_pid).encode():
            found.append(int(entry))
    return found

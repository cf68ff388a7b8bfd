"""One node without Slurm: ``ksi run`` on the simulated host, against the same tool calls made without ksi.

The node's image store already has the kind node image (as on any node after its first run), and no image
cache is used: the checks only look the image up.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import Usage, faults, ksi_argv, median, usage, workload
from ksi.settings import DEFAULT_NODE_IMAGE
from tests.ksi_helpers import CGROUP2
from tests.simhost.plugin import SimHost

# The bash prototype on these machines with stand-ins for kind and podman that take no time themselves: it
# reached the workload after 1.7 s, nearly all of it its own (starting kubectl six times), and after 4.75 s
# with a 3 s create. ksi is compared with it on overhead: ksi's stand-ins cost time of their own.
PROTOTYPE_OVERHEAD = 1.7
TARGET_OVERHEAD = 0.25  # seconds from ksi's start to the workload beyond the tools' own time
LATENCIES = {"create": 3.0, "delete": 1.0}  # what one node without Slurm runs of the benchmark's latencies


@dataclass
class Local:
    """What the runs measured, in seconds, and what ksi used; ``_fast`` with the tools' latencies off."""

    to_workload: list[float] = field(default_factory=list)
    tools: list[float] = field(default_factory=list)
    to_workload_fast: list[float] = field(default_factory=list)
    tools_fast: list[float] = field(default_factory=list)
    used: list[Usage] = field(default_factory=list)

    def overhead(self, *, fast: bool = False) -> float:
        """Return the median over rounds of the time to the workload beyond the tools' own time of the round."""
        ksi, tools = (self.to_workload_fast, self.tools_fast) if fast else (self.to_workload, self.tools)
        return median([k - t for k, t in zip(ksi, tools, strict=True)])


def _timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    subprocess.run(argv, env=env, capture_output=True, timeout=120, check=True)
    return time.monotonic() - started


def _host(base: Path, spec: str) -> tuple[SimHost, dict[str, str]]:
    """Return a fresh simulated host under ``base`` whose store has the node image (as after a first run)."""
    host = SimHost(root=base / "sim")
    host.root.mkdir()
    env = host.env(KSI_SIM_FAULTS=spec)
    subprocess.run(["nerdctl", "pull", DEFAULT_NODE_IMAGE], env=env, capture_output=True, timeout=120, check=True)
    return host, env


# ksi's tool calls on one node, arranged as ksi arranges them (the checks side by side, then the stale-cluster
# listing side by side, then kind create), run by a shell: what any launcher making these calls would pay.
TOOLS_SCRIPT = r"""
set -e
kind version >/dev/null &
nerdctl image inspect --format '{{json .}}' "$NODE_IMAGE" >/dev/null &
wait
nerdctl ps -a --no-trunc --filter label=io.x-k8s.kind.cluster --format '{{json .}}' >/dev/null &
kind get clusters >/dev/null 2>&1 &
wait
kind create cluster --name bench --kubeconfig "$BENCH_DIR/kubeconfig" --wait 180s 2>/dev/null
"""


def tools_own_time(spec: str) -> float:
    """Return how long ksi's tool calls take when a shell makes them, in ksi's arrangement, without ksi.

    ``kind version`` beside ``nerdctl image inspect`` of the node image (ksi's checks), the stale-cluster
    listing (``nerdctl ps`` beside ``kind get clusters``) and ``kind create``, under the same cgroup wrapper
    as ksi; what is left of ksi's time to the workload is ksi's own overhead.
    """
    base = Path(tempfile.mkdtemp(prefix="ksi-bench-tools-", dir="/var/tmp"))
    host, env = _host(base, spec)
    env.update(NODE_IMAGE=DEFAULT_NODE_IMAGE, BENCH_DIR=str(base))
    try:
        return _timed([*CGROUP2, "sh", "-c", TOOLS_SCRIPT], env)
    finally:
        host.kill_all()
        shutil.rmtree(base, ignore_errors=True)


def ksi_run(spec: str) -> tuple[float, list[Usage]]:
    """Run ``ksi run`` once; return (seconds from its start to the workload's first line, what it used)."""
    base = Path(tempfile.mkdtemp(prefix="ksi-bench-", dir="/var/tmp"))
    host, env = _host(base, spec)
    (base / "state").mkdir(mode=0o700)
    env.update(KSI_STATE_DIR=str(base / "state"), KSI_SYSTEMD_SCOPE="never", BENCH_DIR=str(base))
    env.pop("K8S_PORT", None)
    try:
        started = time.time()
        result = subprocess.run([*CGROUP2, *ksi_argv(base, "run", str(workload(base)), str(base))], env=env,
                                cwd=base, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise SystemExit(f"ksi failed:\n{result.stderr}")
        return float((base / "started").read_text()) - started, usage(base)
    finally:
        host.kill_all()
        shutil.rmtree(base, ignore_errors=True)


def measure(runs: int) -> Local:
    """Alternate ksi and the tools alone, with the latencies and without, ``runs`` times each."""
    found = Local()
    spec = faults(LATENCIES)
    for _ in range(runs):
        seconds, used = ksi_run(spec)
        found.to_workload.append(seconds)
        found.used += used
        found.tools.append(tools_own_time(spec))
        seconds, used = ksi_run("")
        found.to_workload_fast.append(seconds)
        found.used += used
        found.tools_fast.append(tools_own_time(""))
    return found

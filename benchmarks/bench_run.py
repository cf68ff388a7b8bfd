"""Speed and memory of `ksi run`, on the simulated container host (and the Slurm test bed for --multi).

    python benchmarks/bench_run.py [--runs 5] [--multi] [--check]

Single node: time from starting ksi to the workload's first instruction, with the simulated tools and
with a `kind create` that takes 3 s (the bash prototype's measured figures on the same machines, with
stand-ins that take no time: 1.7 s and 4.75 s), plus ksi's peak RSS. The tools' own time on ksi's
critical path is measured by calling them directly; the rest is ksi's overhead (target 0.5 s).
Multi node (--multi, needs root for the bed): `srun -N3` with create 3 s, Liqo install 2 s and peer 1 s
injected, against the same tool calls run on the three nodes under srun without ksi; the target is to
start the workload within 1 s of that.
--check exits 1 when a target is missed. Speed targets live here, not in the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.ksi_helpers import CGROUP2  # noqa: E402
from tests.simhost.plugin import SimHost  # noqa: E402

PROTOTYPE = {"zero": 1.7, "create3": 4.75}
TARGET_OVERHEAD = 0.5  # seconds from ksi start to workload start beyond the tools' own time, one node
TARGET_MULTI = 1.0  # seconds beyond the critical path of the tools' own work, three nodes
TARGET_RSS_MB = 150


def workload(directory: Path) -> Path:
    path = directory / "mark.sh"
    path.write_text('#!/bin/sh\ndate +%s.%N > "$KSI_BENCH_MARK"\n')
    path.chmod(0o755)
    return path


def _timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    subprocess.run(argv, env=env, capture_output=True, timeout=120, check=True)
    return time.monotonic() - started


def tools_own_time(faults: str) -> float:
    """Return how long the tool calls on ksi's critical path take when called directly, without ksi.

    kind version, the stale-cluster listing (nerdctl ps and kind get clusters, side by side) and kind
    create; what is left of ksi's time is ksi's own overhead.
    """
    base = Path(tempfile.mkdtemp(prefix="ksi-bench-tools-", dir="/var/tmp"))
    host = SimHost(root=base / "sim")
    host.root.mkdir()
    env = host.env(KSI_SIM_FAULTS=faults)
    kubeconfig = base / "kubeconfig"
    try:
        total = _timed(["kind", "version"], env)
        total += max(_timed(["nerdctl", "ps", "-a", "--filter", "label=io.x-k8s.kind.cluster", "--format",
                             "{{json .}}"], env), _timed(["kind", "get", "clusters"], env))
        total += _timed(["kind", "create", "cluster", "--name", "bench", "--kubeconfig", str(kubeconfig)], env)
    finally:
        host.kill_all()
        shutil.rmtree(base, ignore_errors=True)
    return total


def single(runs: int, faults: str) -> tuple[list[float], list[float], float]:
    """Return (seconds to workload start, total seconds, peak RSS in MB) over ``runs`` runs."""
    starts, totals, rss = [], [], 0.0
    for _ in range(runs):
        base = Path(tempfile.mkdtemp(prefix="ksi-bench-", dir="/var/tmp"))
        host = SimHost(root=base / "sim")
        host.root.mkdir()
        mark = base / "mark"
        env = host.env(KSI_STATE_DIR=str(base / "state"), KSI_SYSTEMD_SCOPE="never", KSI_SIM_FAULTS=faults,
                       KSI_BENCH_MARK=str(mark), PYTHONPATH=str(REPO))
        env.pop("K8S_PORT", None)
        started = time.time()
        result = subprocess.run([*CGROUP2, sys.executable, "-m", "ksi", "run", str(workload(base)), str(base)],
                                env=env, capture_output=True, text=True, timeout=120, check=False)
        totals.append(time.time() - started)
        if result.returncode != 0:
            raise SystemExit(f"ksi failed:\n{result.stderr}")
        starts.append(float(mark.read_text()) - started)
        rss = max(rss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
        host.kill_all()
        shutil.rmtree(base, ignore_errors=True)
    return starts, totals, rss


TOOLS_SCRIPT = """\
set -e
kind version >/dev/null & liqoctl version --client >/dev/null & liqoctl peer --help >/dev/null
wait
nerdctl ps -a --filter label=io.x-k8s.kind.cluster --format '{{json .}}' >/dev/null & kind get clusters >/dev/null 2>&1
wait
kc="$BENCH_DIR/kc-$SLURMD_NODENAME"
kind create cluster --name "bench-$SLURM_PROCID" --kubeconfig "$kc" >/dev/null 2>&1
liqoctl install kind --cluster-id "bench-$SLURM_PROCID" --kubeconfig "$kc" --context "kind-bench-$SLURM_PROCID" \
    --skip-confirm >/dev/null
if [ "$SLURM_PROCID" = 0 ]; then sleep 1; liqoctl version --client >/dev/null; fi  # the injected peer second
"""


def multi(runs: int) -> tuple[list[float], list[float]]:
    """Return (ksi's srun-to-workload seconds, the same tools' srun-to-end seconds without ksi) per run.

    The baseline runs the tool calls of ksi's critical path on all three nodes at once under srun, so both
    sides pay the same srun start-up and the same contention of three nodes on this machine's cores.
    """
    from tests.testbed.plugin import bring_up

    bed = bring_up(3, 5, None)
    delays = "kind-create:slow=3,liqoctl-install:slow=2,liqoctl-peer:slow=1"
    with_ksi, baseline = [], []
    for _ in range(runs):
        shared = bed.shared_dir("bench")
        host = SimHost(root=shared / "sim")
        host.root.mkdir()
        mark = shared / "mark"
        env = host.env(bed.env(), KSI_STATE_DIR=str(bed.private_dir / f"bench-{shared.name}"),
                       KSI_SYSTEMD_SCOPE="never", KSI_SIM_FAULTS=delays, KSI_BENCH_MARK=str(mark),
                       PYTHONPATH=str(REPO), BENCH_DIR=str(shared))
        started = time.time()
        result = subprocess.run(["srun", "-N3", "--ntasks-per-node=1", sys.executable, "-m", "ksi", "run",
                                 str(workload(shared)), str(shared)], env=env, cwd=shared, capture_output=True,
                                text=True, timeout=300, check=False)
        if result.returncode != 0:
            raise SystemExit(f"ksi failed:\n{result.stderr}")
        with_ksi.append(float(mark.read_text()) - started)
        host.kill_all()
        started = time.monotonic()
        subprocess.run(["srun", "-N3", "--ntasks-per-node=1", "bash", "-c", TOOLS_SCRIPT], env=env, cwd=shared,
                       capture_output=True, text=True, timeout=300, check=True)
        baseline.append(time.monotonic() - started)
        host.kill_all()
    return with_ksi, baseline


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--multi", action="store_true", help="also benchmark srun -N3 on the Slurm test bed")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    report: dict[str, object] = {}
    missed = []

    zero_start, zero_total, rss = single(args.runs, "")
    slow_start, slow_total, rss_slow = single(args.runs, "kind-create:slow=3,kind-delete:slow=1")
    # The simulated create itself takes ~0.3 s; measure it so the overhead is ksi's alone.
    report["single"] = {
        "to_workload_median_s": round(statistics.median(zero_start), 3),
        "to_workload_with_3s_create_median_s": round(statistics.median(slow_start), 3),
        "total_median_s": round(statistics.median(zero_total), 3),
        "total_with_3s_create_1s_delete_median_s": round(statistics.median(slow_total), 3),
        "peak_rss_mb": round(max(rss, rss_slow), 1),
        "prototype_to_workload_s": PROTOTYPE,
    }
    tools = tools_own_time("kind-create:slow=3")
    overhead = statistics.median(slow_start) - tools
    report["single"]["tools_own_time_s"] = round(tools, 3)  # type: ignore[index]
    report["single"]["ksi_overhead_s"] = round(overhead, 3)  # type: ignore[index]
    if overhead > TARGET_OVERHEAD:
        missed.append(f"single-node overhead {overhead:.2f} s > {TARGET_OVERHEAD} s")
    if max(rss, rss_slow) > TARGET_RSS_MB:
        missed.append(f"peak RSS {max(rss, rss_slow):.0f} MB > {TARGET_RSS_MB} MB")

    if args.multi:
        times, baseline = multi(args.runs)
        median, tools = statistics.median(times), statistics.median(baseline)
        report["multi"] = {"srun_to_workload_median_s": round(median, 3),
                           "srun_tools_alone_median_s": round(tools, 3), "ksi_overhead_s": round(median - tools, 3)}
        if median - tools > TARGET_MULTI:
            missed.append(f"three-node overhead {median - tools:.2f} s > {TARGET_MULTI} s")

    print(json.dumps(report, indent=2))
    for line in missed:
        print(f"MISSED: {line}", file=sys.stderr)
    return 1 if missed and args.check else 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())

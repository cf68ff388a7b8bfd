"""Cost of a caching shared filesystem on a three-node run (`srun -N3 ksi run`), on the Slurm test bed.

    python benchmarks/bench_cache.py [--cache 10] [--runs 5] [--check]

NFS clients cache names, attributes and "no such file" answers (3-60 s by default); a node that looked a
name up before another node created it may not see it until its cache expires. The bed models that with a
caching twin (`bed up --cache-timeout S`): each node sees the shared directory through its own caching FUSE
mount whose entry, attribute and negative timeouts are S seconds. This benchmark runs the same three-node
run (create 3 s, Liqo install 2 s, peer 1 s injected) on the bed without the cache and on the twin with
``--cache`` seconds, and reports, per bed, the medians of:

- to_workload: from srun's start to the workload's first instruction;
- release: from the workload's exit to srun's exit (the followers see done.json and every node tears down);
- join: from the leader announcing the run to the last follower having joined it (the nodes' ksi.log);
- done_seen: from the leader writing done.json to the last follower having seen it (ksi.log);
- abort_seen: in a run where one follower's Liqo install fails after the others are waiting, from its abort
  to the last other node having noticed it (each node's teardown starts right then: its first kind delete).

Target (--check exits 1 when missed): with the cache, to_workload and release within 1 s of the figures
without it. Needs root (the bed).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO))  # benchmarks/ and tests/ from the tree; ksi is the installed package

from benchmarks import require_installed_ksi  # noqa: E402

require_installed_ksi()

from tests.simhost.plugin import SimHost  # noqa: E402
from tests.testbed.plugin import SlurmBed, bring_up, cached_instance  # noqa: E402

TARGET = 1.0  # seconds the cached figures may exceed the uncached ones
DELAYS = "kind-create:slow=3,liqoctl-install:slow=2,liqoctl-peer:slow=1"
LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}) \S+ \S+ \[\d+\] (.*)$")
WORKLOAD = '#!/bin/sh\ndate +%s.%N > "$KSI_BENCH_MARK"\n'


def _stamp(text: str) -> float:
    return datetime.datetime.fromisoformat(text).timestamp()


def log_times(run_dir: Path, message: str) -> dict[str, float]:
    """Return, per node, when its ksi.log first logged a line starting with ``message`` (epoch seconds)."""
    found: dict[str, float] = {}
    for path in sorted(run_dir.glob("nodes/*/ksi.log")):
        for line in path.read_text(errors="replace").splitlines():
            match = LINE.match(line)
            if match and match[2].startswith(message):
                found[path.parent.name] = _stamp(match[1])
                break
    return found


def one_run(bed: SlurmBed, base: Path, faults: str) -> tuple[subprocess.CompletedProcess[str], float, float, Path]:
    """Run srun -N3 ksi run once; return the result, srun's start and end (epoch) and the run directory."""
    shared = bed.shared_dir("bench-cache")
    host = SimHost(root=Path(tempfile.mkdtemp(prefix="sim-", dir=base)))
    workload = shared / "mark.sh"
    workload.write_text(WORKLOAD)
    workload.chmod(0o755)
    env = host.env(bed.env(), KSI_STATE_DIR=str(bed.private_dir / f"bench-{shared.name}"), KSI_SYSTEMD_SCOPE="never",
                   KSI_SIM_FAULTS=faults, KSI_BENCH_MARK=str(shared / "mark"))
    try:
        started = time.time()
        result = subprocess.run(["srun", "-N3", "--ntasks-per-node=1", sys.executable, "-m", "ksi", "run",
                                 str(workload), str(shared)], env=env, cwd=shared, capture_output=True, text=True,
                                timeout=600, check=False)
        ended = time.time()
    finally:
        host.kill_all()
    [run_dir] = (shared / "ksi-runs").iterdir()
    return result, started, ended, run_dir


def measure(beds: dict[str, SlurmBed], runs: int) -> dict[str, dict[str, float]]:
    """Return, per bed, the medians of the figures the module docstring lists over ``runs`` runs of each kind.

    The beds take turns run by run, so that the load of the machine weighs on both alike.
    """
    keys = ("to_workload", "release", "join", "done_seen", "abort_seen")
    figures: dict[str, dict[str, list[float]]] = {label: {key: [] for key in keys} for label in beds}
    base = Path(tempfile.mkdtemp(prefix="ksi-bench-cache-", dir="/var/tmp"))
    try:
        for _ in range(runs):
            for label, bed in beds.items():
                record(bed, base, figures[label])
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return {label: {key: round(statistics.median(values), 2) for key, values in found.items()}
            for label, found in figures.items()}


def record(bed: SlurmBed, base: Path, figures: dict[str, list[float]]) -> None:
    """Run a successful run and a run with an abort on ``bed``; append their figures."""
    leader, *followers = bed.node_names
    result, started, ended, run_dir = one_run(bed, base, DELAYS)
    if result.returncode != 0:
        raise SystemExit(f"ksi failed on {bed.instance}:\n{result.stderr}")
    mark = float((run_dir.parent.parent / "mark").read_text())
    figures["to_workload"].append(mark - started)
    figures["release"].append(ended - mark)
    joined = log_times(run_dir, "run directory:")
    figures["join"].append(max(joined[n] for n in followers) - joined[leader])
    exited = log_times(run_dir, "workload: exited")[leader]
    seen = log_times(run_dir, "wait: the workload on")
    figures["done_seen"].append(max(seen[n] for n in followers) - exited)
    # The last follower fails its Liqo install after a slow create: the others are waiting by then.
    # Each node starts its teardown right after writing or noticing the abort: its first kind delete.
    failing = followers[-1]
    result, _, _, run_dir = one_run(bed, base, f"kind-create@{failing}:slow=4,liqoctl-install@{failing}:fail")
    if result.returncode == 0:
        raise SystemExit(f"the run with a failing Liqo install succeeded on {bed.instance}:\n{result.stderr}")
    deleting = log_times(run_dir, "run: kind delete cluster")
    figures["abort_seen"].append(max(deleting[n] for n in deleting if n != failing) - deleting[failing])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=int, default=10, help="cache timeout of the caching twin, seconds")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args()
    direct = bring_up(cache_timeout=0)
    cached = bring_up(instance=cached_instance(direct.instance), cache_timeout=args.cache)
    report = measure({"direct": direct, f"cache_{args.cache}s": cached}, args.runs)
    missed = [f"{key} {report[f'cache_{args.cache}s'][key] - report['direct'][key]:.2f} s slower with the cache"
              for key in ("to_workload", "release")
              if report[f"cache_{args.cache}s"][key] - report["direct"][key] > TARGET]
    print(json.dumps(report, indent=2))
    for line in missed:
        print(f"MISSED: {line} (target {TARGET} s)", file=sys.stderr)
    return 1 if missed and args.check else 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())

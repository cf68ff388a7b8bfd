"""Speed and memory of ``ksi run``: one node without Slurm, then ``srun -N1``, ``-N3`` and ``-N6`` on the test bed.

    python benchmarks/bench_run.py [--runs 5] [--local-only] [--json FILE] [--check]

The container tools are the simulated ones (tests/simhost), given fixed latencies: create 3 s, image load
1 s (once the simulated host models one), Liqo install 2 s, peer 1 s, delete 1 s. The Slurm part needs root
(it starts the test bed with six nodes, instance $KSI_TESTBED_INSTANCE, and leaves it running). It prints
two Markdown tables (the README quotes them); --check exits 1 when a target is missed. Speed targets live
here, never in the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO))  # benchmarks/ and tests/ from the tree; ksi is the installed package

from benchmarks import require_installed_ksi  # noqa: E402

require_installed_ksi()

from benchmarks import bed, local  # noqa: E402
from benchmarks.common import LATENCIES, median, modelled_steps, table  # noqa: E402

TARGET_OVERHEAD = {1: 0.5, 3: 1.0, 6: 1.5}  # seconds beyond the tools' critical path, srun -N<nodes>
TARGET_GROWTH = 0.10  # of the time to the workload from one node to six, beyond the tools' longer path
TARGET_RELEASE = 2.0  # seconds from the workload's end to the last node released, beyond the delete
TARGET_RSS_MB = 100.0  # peak resident set of any ksi process


def _s(seconds: float) -> str:
    return f"{seconds:.2f} s"


def local_report(found: local.Local, missed: list[str]) -> tuple[str, dict[str, object]]:
    """Return the one-node table and figures; add missed targets to ``missed``."""
    overhead, overhead_fast = found.overhead(), found.overhead(fast=True)
    rss = max(u.rss_mb for u in found.used)
    cpu = median([u.cpu_s for u in found.used])
    # The target holds with the benchmark's latencies and with tools that take no time (the issue's own measure).
    for seen, how in ((overhead, "create 3 s"), (overhead_fast, "no latencies")):
        if seen > local.TARGET_OVERHEAD:
            missed.append(f"one node without Slurm ({how}): overhead {seen:.2f} s > {local.TARGET_OVERHEAD} s")
    if rss >= TARGET_RSS_MB:
        missed.append(f"one node without Slurm: peak RSS {rss:.0f} MB >= {TARGET_RSS_MB:.0f} MB")
    rows = [
        ["start to workload", _s(median(found.to_workload)), _s(median(found.to_workload_fast)), "", ""],
        ["the same tool calls without ksi (a shell, ksi's arrangement)", _s(median(found.tools)),
         _s(median(found.tools_fast)), "", ""],
        ["ksi's overhead beyond the tools' own time", _s(overhead), _s(overhead_fast),
         f"<= {_s(local.TARGET_OVERHEAD)} (both)", _s(local.PROTOTYPE_OVERHEAD)],
        ["peak RSS of ksi (largest)", f"{rss:.0f} MB", "", f"< {TARGET_RSS_MB:.0f} MB", ""],
        ["CPU time of the ksi process (whole run)", _s(cpu), "", "", ""],
    ]
    figures: dict[str, object] = {
        "to_workload_s": median(found.to_workload), "tools_s": median(found.tools), "overhead_s": overhead,
        "to_workload_no_latency_s": median(found.to_workload_fast), "tools_no_latency_s": median(found.tools_fast),
        "overhead_no_latency_s": overhead_fast, "peak_rss_mb": round(rss, 1), "cpu_s": cpu}
    header = ["one node, no Slurm (median)", "create 3 s, delete 1 s", "no latencies", "target",
              "bash prototype"]
    return table(header, rows), figures


def bed_report(figures: list[bed.Figures], missed: list[str]) -> tuple[str, dict[str, object]]:
    """Return the srun table and figures; add missed targets to ``missed``."""
    first = next(f for f in figures if f.nodes == 1)
    first_to_workload, first_overhead = median([s.to_workload for s in first.ksi]), first.overhead()
    columns = []
    data: dict[str, object] = {}
    for entry in figures:
        to_workload = median([s.to_workload for s in entry.ksi])
        tools = median(entry.tools)
        overhead = entry.overhead()
        # What ksi adds at this many nodes beyond what it adds at one, as a share of the one-node time to the
        # workload: the tools' own longer path (Liqo install, peering) is not ksi's.
        growth = (overhead - first_overhead) / first_to_workload
        release = median([s.release for s in entry.ksi])
        rss = max(u.rss_mb for s in entry.ksi for u in s.used)
        cpu = median([max(u.cpu_s for u in s.used) for s in entry.ksi])
        limit = TARGET_OVERHEAD[entry.nodes]
        if overhead > limit:
            missed.append(f"srun -N{entry.nodes}: overhead {overhead:.2f} s > {limit} s")
        if entry.nodes > 1 and growth >= TARGET_GROWTH:
            missed.append(f"srun -N{entry.nodes}: time to the workload grew {growth:.1%} from one node")
        if release > bed.delete_latency() + TARGET_RELEASE:
            missed.append(f"srun -N{entry.nodes}: release {release:.2f} s > {bed.delete_latency() + TARGET_RELEASE} s")
        if rss >= TARGET_RSS_MB:
            missed.append(f"srun -N{entry.nodes}: peak RSS {rss:.0f} MB >= {TARGET_RSS_MB:.0f} MB")
        columns.append((to_workload, tools, overhead, growth, release, rss, cpu))
        data[str(entry.nodes)] = {"to_workload_s": to_workload, "tools_critical_path_s": tools, "overhead_s": overhead,
                                  "growth_from_one_node": round(growth, 4), "release_s": release,
                                  "peak_rss_mb": round(rss, 1), "cpu_s": cpu}
    release_target = f"<= {_s(bed.delete_latency() + TARGET_RELEASE)} (delete {bed.delete_latency():g} s + 2 s)"
    rows = [
        ["srun start to the workload's first line", *(_s(c[0]) for c in columns), ""],
        ["the tools' critical path (same calls, no ksi)", *(_s(c[1]) for c in columns), ""],
        ["ksi's overhead beyond it", *(_s(c[2]) for c in columns),
         " / ".join(f"<= {TARGET_OVERHEAD[f.nodes]:g} s" for f in figures)],
        ["growth of the time to the workload from one node, beyond the tools' longer path",
         *("-" if f.nodes == 1 else f"{c[3]:+.1%}" for f, c in zip(figures, columns, strict=True)),
         f"< {TARGET_GROWTH:.0%}"],
        ["workload's end to the last node released", *(_s(c[4]) for c in columns), release_target],
        ["peak RSS per ksi process (largest)", *(f"{c[5]:.0f} MB" for c in columns), f"< {TARGET_RSS_MB:.0f} MB"],
        ["CPU time of the busiest ksi process", *(_s(c[6]) for c in columns), ""],
    ]
    header = ["srun on the test bed (median)", *(f"-N{f.nodes}" for f in figures), "target"]
    return table(header, rows), data


def main() -> int:
    """Run the benchmarks, print the tables, and return 1 with --check when a target is missed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs of each kind (default 5)")
    parser.add_argument("--local-only", action="store_true", help="skip the Slurm test bed (no root needed)")
    parser.add_argument("--instance", help="test bed instance (default: $KSI_TESTBED_INSTANCE, else ksi)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    missed: list[str] = []
    latencies = ", ".join(f"{step} {LATENCIES[step]:g} s" for step in modelled_steps())
    print(f"Simulated tools' latencies: {latencies}; median of {args.runs} runs.\n")
    text, figures = local_report(local.measure(args.runs), missed)
    print(text + "\n", flush=True)
    report: dict[str, object] = {"latencies": {s: LATENCIES[s] for s in modelled_steps()}, "runs": args.runs,
                                 "local": figures}
    if not args.local_only:
        text, report["srun"] = bed_report(bed.measure(args.runs, args.instance), missed)
        print(text + "\n", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    for line in missed:
        print(f"MISSED: {line}", file=sys.stderr)
    return 1 if missed and args.check else 0


if __name__ == "__main__":
    os.umask(0o022)
    # A stopped benchmark still runs its finally blocks: no simulated cluster or cache outlives it.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(main())

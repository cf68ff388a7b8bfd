"""What the benchmarks share: the tools' latencies, the workload that marks its start, ksi's peak RSS."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.simhost.common import FAULT_OPS
from tests.simhost.helmrepo import HelmRepo
from tests.simhost.plugin import SimHost

# Seconds each step of the simulated tools takes on top of its own run time (tests/simhost, KSI_SIM_FAULTS
# slow=SECONDS), and the fault operations that carry it.
LATENCIES = {"create": 3.0, "image load": 1.0, "liqo install": 2.0, "peer": 1.0, "delete": 1.0}
OPS = {"create": ("kind-create",), "liqo install": ("liqoctl-install",), "peer": ("liqoctl-peer",),
       "delete": ("kind-delete",), "image load": tuple(sorted(op for op in FAULT_OPS if "load" in op))}


def faults(latencies: Mapping[str, float] = LATENCIES) -> str:
    """Return the KSI_SIM_FAULTS value that gives every step its latency (steps the host lacks are skipped)."""
    return ",".join(f"{op}:slow={seconds:g}" for step, seconds in latencies.items() for op in OPS[step])


def modelled_steps() -> list[str]:
    """Return the steps whose latency the simulated host can inject (image load only once it models one)."""
    return [step for step in LATENCIES if OPS[step]]


@dataclass(frozen=True)
class Cache:
    """An image cache written by ``ksi images save``, and the files of it that a run loads."""

    directory: Path
    node_archive: Path
    liqo_archives: tuple[Path, ...]
    chart: Path


def image_cache(directory: Path) -> Cache:
    """Write an image cache into ``directory`` with ``ksi images save`` (Liqo's chart from a local repository)."""
    host = SimHost(root=directory / "save-host")
    host.root.mkdir(parents=True)
    (directory / "save-state").mkdir(mode=0o700)
    repo = HelmRepo(host.root, ("v1.0.0",)).start()
    cache = directory / "images"
    try:
        result = subprocess.run([sys.executable, "-m", "ksi", "images", "save", "--dir", str(cache)],
                                env=host.env(KSI_LIQO_CHART_REPO=repo.url, KSI_STATE_DIR=str(directory / "save-state")),
                                cwd=directory, capture_output=True, text=True, timeout=300, check=False)
    finally:
        repo.stop()
        host.kill_all()
    if result.returncode != 0:
        raise SystemExit(f"ksi images save failed:\n{result.stderr}")
    entries = json.loads((cache / "manifest.json").read_text())["entries"]

    def files(purpose: str) -> tuple[Path, ...]:
        return tuple(cache / name for name in dict.fromkeys(e["file"] for e in entries if e["purpose"] == purpose))

    return Cache(cache, files("node")[0], files("liqo"), files("liqo-chart")[0])


def workload(directory: Path) -> Path:
    """Write the benchmark's workload: it notes when its first and its last line run, in $BENCH_DIR."""
    path = directory / "mark.sh"
    path.write_text('#!/bin/sh\ndate +%s.%N > "$BENCH_DIR/started"\ndate +%s.%N > "$BENCH_DIR/ended"\n')
    path.chmod(0o755)
    return path


# Runs the installed ksi's command line in this interpreter and, when it exits, writes its own peak resident
# set (VmHWM, kB) and CPU seconds to <dir>/rss.<host>.<pid>: figures of the ksi process alone, not of the
# tools it runs.
_RSS_WRAPPER = """\
import atexit, os, socket, sys
out = sys.argv.pop(1)
def peak():
    with open("/proc/self/status") as status:
        kb = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    cpu = os.times().user + os.times().system
    with open(os.path.join(out, f"rss.{socket.gethostname()}.{os.getpid()}"), "w") as handle:
        handle.write(f"{kb} {cpu:.3f}")
atexit.register(peak)
sys.argv[0] = "ksi"
from ksi.cli import main
sys.exit(main())
"""


def ksi_argv(rss_dir: Path, *args: str) -> list[str]:
    """Return the argv of ``ksi ARGS`` that also records the process's peak RSS in ``rss_dir``."""
    return [sys.executable, "-c", _RSS_WRAPPER, str(rss_dir), *args]


@dataclass(frozen=True)
class Usage:
    """What one ksi process used: peak resident set (MB) and CPU time (seconds, its own, not its children's)."""

    rss_mb: float
    cpu_s: float


def usage(rss_dir: Path) -> list[Usage]:
    """Return what every ksi process that recorded its usage in ``rss_dir`` used."""
    found = []
    for path in sorted(rss_dir.glob("rss.*")):
        kb, cpu = path.read_text().split()
        found.append(Usage(int(kb) / 1024, float(cpu)))
    return found


def median(values: Sequence[float]) -> float:
    """Return the median, rounded to milliseconds."""
    return round(statistics.median(values), 3)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Return a Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)

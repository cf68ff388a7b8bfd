"""``srun -N1``, ``-N3`` and ``-N6 ksi run`` on the Slurm test bed, against the same tool calls without ksi.

Each run starts from ``srun`` on this machine. ksi's time to the workload is measured from srun's start to
the workload's first line; the tools' critical path is measured the same way, from srun's start, by a
shell script on every node that makes ksi's tool calls with ksi's dependencies (checks side by side, the
stale-cluster listing, kind create, Liqo install; the leader waits for every node's install, then peers
them all at once) and nothing else. Both sides pay the same srun start-up and the same contention of all
nodes on this machine's cores; the difference is ksi's overhead. Node counts and the two sides alternate.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import LATENCIES, Usage, faults, image_cache, ksi_argv, median, usage, workload
from ksi.cluster import kindconfig
from ksi.settings import DEFAULT_NODE_IMAGE
from tests.simhost.plugin import SimHost
from tests.testbed.plugin import SlurmBed, bring_up

NODES = (1, 3, 6)
TIMEOUT = 300.0

# The tool calls of one node of `ksi run --image-cache`, in ksi's order and with its parallelism (the checks
# side by side; loading the node image beside the stale-cluster listing; Liqo's images, then Liqo; the
# leader peers every node at once once all are ready, then offloads the namespace default), writing
# $BENCH_DIR/tools-ready when the workload could start; then each node deletes its cluster.
TOOLS_SCRIPT = r"""
set -e
cd "$BENCH_DIR"
rank=$SLURM_PROCID size=$SLURM_STEP_NUM_NODES node=$SLURMD_NODENAME
name="b-$node" kc="$BENCH_DIR/kc-$node"
kind version >/dev/null &
if [ "$size" -gt 1 ]; then liqoctl version --client >/dev/null & liqoctl peer --help >/dev/null & fi
nerdctl image inspect --format '{{json .}}' "$NODE_IMAGE" >/dev/null 2>&1 &
wait
nerdctl load -i "$NODE_ARCHIVE" >/dev/null &
nerdctl ps -a --no-trunc --filter label=io.x-k8s.kind.cluster --format '{{json .}}' >/dev/null &
kind get clusters >/dev/null 2>&1 &
wait
role=follower; [ "$rank" = 0 ] && role=leader
kind create cluster --name "$name" --config "config-$node-$role.yaml" --kubeconfig "$kc" --wait 180s 2>/dev/null
if [ "$size" -gt 1 ]; then
    kind load image-archive --name "$name" $LIQO_ARCHIVES >/dev/null 2>&1
    server=$(sed -n 's/^ *server: *//p' "$kc")
    liqoctl install kind --kubeconfig "$kc" --context "kind-$name" --cluster-id "$name" --timeout 600s \
        --disable-telemetry --set "apiServer.address=$server" --skip-confirm --local-chart-path "$CHART" >/dev/null
    echo "$node" > "ready-$rank.tmp" && mv "ready-$rank.tmp" "ready-$rank"
fi
if [ "$rank" = 0 ]; then
    i=1
    while [ "$i" -lt "$size" ]; do
        while [ ! -e "ready-$i" ]; do sleep 0.01; done
        i=$((i + 1))
    done
    i=1
    while [ "$i" -lt "$size" ]; do
        provider=$(cat "ready-$i")
        liqoctl peer --kubeconfig "$kc" --context "kind-$name" --remote-kubeconfig "kc-$provider" \
            --remote-context "kind-b-$provider" --gw-server-service-type NodePort \
            --gw-server-service-nodeport "$GATEWAY" --gw-client-address "$(cat "address-$provider")" \
            --gw-client-port "$GATEWAY" --timeout 600s --skip-confirm >/dev/null &
        i=$((i + 1))
    done
    wait
    if [ "$size" -gt 1 ]; then
        liqoctl offload namespace default --kubeconfig "$kc" --context "kind-$name" \
            --namespace-mapping-strategy DefaultName --pod-offloading-strategy LocalAndRemote --timeout 600s >/dev/null
    fi
    date +%s.%N > tools-ready
else
    while [ ! -e tools-ready ]; do sleep 0.05; done
fi
kind delete cluster --name "$name" --kubeconfig "$kc" >/dev/null 2>&1
"""


@dataclass
class Sample:
    """One run of ``srun -N<nodes>``, in seconds from srun's start."""

    to_workload: float
    workload_ended: float
    srun_ended: float
    used: list[Usage] = field(default_factory=list)  # one per ksi process (node)

    @property
    def release(self) -> float:
        """Return the time from the workload's end until srun returned: every node's cluster deleted."""
        return self.srun_ended - self.workload_ended


@dataclass
class Figures:
    """Every run at one node count."""

    nodes: int
    ksi: list[Sample] = field(default_factory=list)
    tools: list[float] = field(default_factory=list)  # srun start to the moment the workload could start

    def overhead(self) -> float:
        """Return the median over rounds of ksi's time to the workload beyond the tools' path of the round.

        Each round runs ksi and the tools alone back to back: the pairs share the machine's load of the moment.
        """
        return median([s.to_workload - t for s, t in zip(self.ksi, self.tools, strict=True)])


class Bench:
    """The test bed and the image cache every run uses (each run on a fresh simulated host)."""

    def __init__(self, bed: SlurmBed) -> None:
        self.bed = bed
        self.cache_dir = bed.shared_dir("bench-cache")
        self.cache = image_cache(self.cache_dir)

    def close(self) -> None:
        """Remove the image cache."""
        shutil.rmtree(self.cache_dir, ignore_errors=True)

    def _shared(self, prefix: str) -> tuple[Path, SimHost, dict[str, str]]:
        shared = self.bed.shared_dir(prefix)
        host = SimHost(root=shared / "sim")
        host.root.mkdir()
        env = host.env(self.bed.env(), KSI_STATE_DIR=str(self.bed.private_dir / f"bench-{shared.name}"),
                       KSI_SYSTEMD_SCOPE="never", KSI_SIM_FAULTS=faults(), BENCH_DIR=str(shared),
                       KSI_IMAGE_CACHE=str(self.cache.directory))
        env.pop("K8S_PORT", None)
        return shared, host, env

    def ksi(self, nodes: int) -> Sample:
        """Run ``srun -N<nodes> ksi run`` once."""
        shared, host, env = self._shared(f"bench-ksi-{nodes}")
        try:
            started = time.time()
            result = subprocess.run(["srun", f"-N{nodes}", "--ntasks-per-node=1",
                                     *ksi_argv(shared, "run", str(workload(shared)), str(shared))],
                                    env=env, cwd=shared, capture_output=True, text=True, timeout=TIMEOUT, check=False)
            ended = time.time()
            if result.returncode != 0:
                raise SystemExit(f"srun -N{nodes} ksi run failed:\n{result.stderr}")
            return Sample(float((shared / "started").read_text()) - started,
                          float((shared / "ended").read_text()) - started, ended - started, usage(shared))
        finally:
            host.kill_all()
            shutil.rmtree(shared, ignore_errors=True)

    def tools(self, nodes: int) -> float:
        """Run the tool calls of ``srun -N<nodes> ksi run`` without ksi; return srun start to workload start."""
        shared, host, env = self._shared(f"bench-tools-{nodes}")
        port, gateway = random.sample(range(30000, 32768), 2)
        for node in self.bed.nodes:
            (shared / f"address-{node.name}").write_text(node.address)
            for role, udp in (("leader", ()), ("follower", (gateway,))):
                config = kindconfig.KindConfig(f"b-{node.name}", shared, port, DEFAULT_NODE_IMAGE, node.address, udp)
                (shared / f"config-{node.name}-{role}.yaml").write_text(kindconfig.render(config))
        try:
            started = time.time()
            files = {"GATEWAY": str(gateway), "NODE_IMAGE": DEFAULT_NODE_IMAGE,
                     "NODE_ARCHIVE": str(self.cache.node_archive), "CHART": str(self.cache.chart),
                     "LIQO_ARCHIVES": " ".join(map(str, self.cache.liqo_archives))}
            result = subprocess.run(["srun", f"-N{nodes}", "--ntasks-per-node=1", "bash", "-c", TOOLS_SCRIPT],
                                    env=env | files, cwd=shared, capture_output=True, text=True, timeout=TIMEOUT,
                                    check=False)
            if result.returncode != 0:
                raise SystemExit(f"srun -N{nodes} of the tools alone failed:\n{result.stderr}")
            return float((shared / "tools-ready").read_text()) - started
        finally:
            host.kill_all()
            shutil.rmtree(shared, ignore_errors=True)


def measure(runs: int, instance: str | None) -> list[Figures]:
    """Bring the bed up with six nodes and alternate node counts and sides ``runs`` times."""
    bench = Bench(bring_up(max(NODES), 5, instance))
    figures = [Figures(n) for n in NODES]
    try:
        for _ in range(runs):
            for entry in figures:
                entry.ksi.append(bench.ksi(entry.nodes))
                entry.tools.append(bench.tools(entry.nodes))
    finally:
        bench.close()
    return figures


def delete_latency() -> float:
    """Return the simulated delete's latency (the floor of the release time)."""
    return LATENCIES["delete"]

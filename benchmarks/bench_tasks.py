"""Speed and memory of `ksi tasks run` against one simulated cluster: trivial tasks, 200 and 10,000.

    python benchmarks/bench_tasks.py [--tasks 200 10000] [--parallelism 16] [--check]

For each size, on one cluster of the simulated host (kind create with /app mounted):
- baseline: the least any client must do to run the same tasks as Jobs, at the same parallelism (create
  the Job, see its pod end through one watch, delete the Job), with the same kubernetes client; its wall
  time is the simulated pods' own time;
- ksi: `ksi tasks run SPEC` (SPEC: seq N, command ["true"]), which also fetches every log and writes every
  log and result atomically; its wall time, CPU time and peak RSS.
ksi's overhead per task is (ksi's wall time - the baseline's) / N (target: under 20 ms), its peak RSS at
10,000 tasks must stay under 150 MB. --check exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO))  # benchmarks/ and tests/ from the tree; ksi is the installed package

from benchmarks import require_installed_ksi  # noqa: E402

require_installed_ksi()

from tests.simhost.plugin import SimHost  # noqa: E402

TARGET_MS_PER_TASK = 20.0
TARGET_RSS_MB = 150.0
KIND_CONFIG = """\
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
    extraMounts:
      - hostPath: {shared}
        containerPath: /app
"""


def job(name: str) -> dict[str, Any]:
    """Return the Job the baseline creates: what ksi creates, minus ksi's labels and environment."""
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "labels": {"bench": "baseline"}},
            "spec": {"backoffLimit": 0, "template": {
                "metadata": {"labels": {"bench": "baseline"}},
                "spec": {"restartPolicy": "Never",
                         "containers": [{"name": "task", "image": "busybox", "command": ["true"],
                                         "workingDir": "/app", "volumeMounts": [{"name": "app", "mountPath": "/app"}]}],
                         "volumes": [{"name": "app", "hostPath": {"path": "/app", "type": "Directory"}}]}}}}


def baseline(kubeconfig: Path, count: int, parallelism: int) -> float:
    """Run ``count`` trivial Jobs, ``parallelism`` at a time, with the least work; return the wall time."""
    from kubernetes import client, config
    from kubernetes.watch.watch import iter_resp_lines

    api_client = config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    batch: Any = client.BatchV1Api(api_client)  # raw responses (_preload_content=False), not models
    core: Any = client.CoreV1Api(api_client)
    ended: queue.Queue[str] = queue.Queue()
    stop = threading.Event()
    listing = json.loads(core.list_namespaced_pod("default", label_selector="bench=baseline",
                                                  _preload_content=False).data)

    def watch() -> None:
        response = core.list_namespaced_pod("default", label_selector="bench=baseline", watch=True,
                                            resource_version=listing["metadata"]["resourceVersion"],
                                            timeout_seconds=3600, _preload_content=False)
        seen = set()
        for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
            if stop.is_set():
                return
            if not line.strip():
                continue
            obj = json.loads(line)["object"]
            name = obj["metadata"]["labels"].get("job-name", "")
            if obj.get("status", {}).get("phase") in ("Succeeded", "Failed") and name not in seen:
                seen.add(name)
                ended.put(name)

    def create(name: str) -> None:
        response = batch.create_namespaced_job("default", job(name), _preload_content=False)
        response.drain_conn()
        response.release_conn()

    def delete(name: str) -> None:
        response = batch.delete_namespaced_job(name, "default", propagation_policy="Background",
                                               _preload_content=False)
        response.drain_conn()
        response.release_conn()

    threading.Thread(target=watch, daemon=True).start()
    pool = concurrent.futures.ThreadPoolExecutor(8)
    started = time.monotonic()
    names = [f"base-{i}" for i in range(count)]
    running, done = 0, 0
    while done < count:
        while names and running < parallelism:
            pool.submit(create, names.pop())
            running += 1
        name = ended.get(timeout=120)
        running -= 1
        done += 1
        pool.submit(delete, name)
    elapsed = time.monotonic() - started
    stop.set()
    pool.shutdown(wait=True)
    return elapsed


def with_ksi(env: dict[str, str], shared: Path, count: int, parallelism: int) -> tuple[float, float, float]:
    """Run `ksi tasks run` on ``count`` trivial tasks; return (wall seconds, CPU seconds, peak RSS in MB)."""
    spec = shared / f"bench-{count}.yaml"
    spec.write_text(f'name: bench-{count}\nimage: busybox\ncommand: ["true"]\nparallelism: {parallelism}\n'
                    f"tasks: {{seq: {count}}}\n")
    started = time.monotonic()
    child = subprocess.Popen([sys.executable, "-m", "ksi", "tasks", "run", str(spec)], cwd=shared, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert child.stderr is not None
    err = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.monotonic() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"ksi tasks run failed ({child.returncode}):\n{err.decode()[-3000:]}")
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def measure(count: int, parallelism: int) -> dict[str, float]:
    """Create a simulated cluster, run the baseline and ksi on ``count`` tasks, delete the cluster."""
    base = Path(tempfile.mkdtemp(prefix="ksi-bench-tasks-", dir="/var/tmp"))
    shared = base / "shared"
    shared.mkdir()
    host = SimHost(root=base / "sim")
    host.root.mkdir()
    kubeconfig = base / "kubeconfig"
    config = base / "kind.yaml"
    config.write_text(KIND_CONFIG.format(shared=json.dumps(str(shared))))
    env = host.env(KUBECONFIG=str(kubeconfig))
    env.pop("KSI_RUN_DIR", None)
    try:
        subprocess.run(["kind", "create", "cluster", "--name", "bench", "--kubeconfig", str(kubeconfig),
                        "--config", str(config)], env=env, capture_output=True, timeout=120, check=True)
        base_s = baseline(kubeconfig, count, parallelism)
        ksi_s, cpu_s, rss = with_ksi(env, shared, count, parallelism)
    finally:
        host.kill_all()
        shutil.rmtree(base, ignore_errors=True)
    return {"tasks": count, "parallelism": parallelism, "baseline_s": round(base_s, 2), "ksi_s": round(ksi_s, 2),
            "ksi_tasks_per_s": round(count / ksi_s, 1), "baseline_tasks_per_s": round(count / base_s, 1),
            "ksi_overhead_ms_per_task": round((ksi_s - base_s) / count * 1000, 2),
            "ksi_cpu_ms_per_task": round(cpu_s / count * 1000, 2), "ksi_peak_rss_mb": round(rss, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, nargs="+", default=[200, 10000])
    parser.add_argument("--parallelism", type=int, default=16)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    missed = []
    report = []
    for count in args.tasks:
        figures = measure(count, args.parallelism)
        report.append(figures)
        print(json.dumps(figures), flush=True)
        if figures["ksi_overhead_ms_per_task"] > TARGET_MS_PER_TASK:
            missed.append(f"{count} tasks: {figures['ksi_overhead_ms_per_task']} ms per task > {TARGET_MS_PER_TASK}")
        if count >= 10000 and figures["ksi_peak_rss_mb"] > TARGET_RSS_MB:
            missed.append(f"{count} tasks: peak RSS {figures['ksi_peak_rss_mb']} MB > {TARGET_RSS_MB} MB")
    for line in missed:
        print(f"MISSED: {line}", file=sys.stderr)
    return 1 if missed and args.check else 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())

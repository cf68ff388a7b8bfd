"""`ksi run --tasks` under srun -N3 on the Slurm test bed, with the simulated job runner on every node."""

from __future__ import annotations

import collections
import contextlib
import json
import shlex
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ksi_helpers import KSI, wait_for
from tests.simhost.plugin import SimHost
from tests.test_multinode import Multi
from tests.testbed.plugin import SlurmBed

pytestmark = pytest.mark.slurm


@pytest.fixture
def bed(slurm_bed: SlurmBed, simhost: SimHost, request: pytest.FixtureRequest) -> Iterator[Multi]:
    shared = slurm_bed.shared_dir(request.node.name[:40])
    state_dir = slurm_bed.private_dir / f"ksi-state-{shared.name}"
    env = simhost.env(slurm_bed.env(), KSI_STATE_DIR=str(state_dir), KSI_SYSTEMD_SCOPE="never",
                      KSI_RENDEZVOUS_TIMEOUT="20", KSI_LEADER_TIMEOUT="5")
    multi = Multi(slurm_bed, simhost, shared, env, state_dir)
    yield multi
    if multi.jobs:
        slurm_bed.run(["scancel", *multi.jobs], timeout=30)


def tasks_argv(bed: Multi, spec: Path) -> list[str]:
    return ["srun", "-N3", "--ntasks-per-node=1", KSI, "run", "--tasks", str(spec), str(bed.shared)]


def srun_tasks(bed: Multi, spec: Path, env: dict[str, str] | None = None,
               timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tasks_argv(bed, spec), cwd=bed.shared, env={**bed.env, **(env or {})},
                          capture_output=True, text=True, timeout=timeout, check=False)


def sbatch_tasks(bed: Multi, spec: Path) -> str:
    script = bed.shared / "job.sh"
    script.write_text("#!/bin/bash\n" + shlex.join(tasks_argv(bed, spec)) + "\n")
    argv = ["sbatch", "--parsable", "-N3", "-o", str(bed.shared / "slurm-%j.out"), str(script)]
    done = subprocess.run(argv, cwd=bed.shared, env=bed.env, capture_output=True, text=True, timeout=30, check=True)
    job = done.stdout.strip().split(";")[0]
    bed.jobs.append(job)
    return job


def executions(bed: Multi) -> collections.Counter[str]:
    path = bed.shared / "executions.log"
    return collections.Counter(path.read_text().split()) if path.exists() else collections.Counter()


def all_results(bed: Multi, experiment: str) -> dict[str, dict[str, Any]]:
    tasks = bed.shared / "ksi-results" / experiment / "tasks"
    return {p.name: json.loads((p / "result.json").read_text()) for p in tasks.iterdir()
            if (p / "result.json").exists()}


def node_names(bed: Multi) -> set[str]:
    """Return the Kubernetes nodes of the run: the leader's kind node and one virtual node per follower."""
    records = bed.records()
    leader = bed.bed.node_names[0]
    return {f"{records[leader]['cluster']}-control-plane", *(records[n]["cluster"] for n in bed.bed.node_names[1:])}


class PodSampler(threading.Thread):
    """Counts the experiment's Running pods through the leader's API, as often as it can, while a run lasts."""

    def __init__(self, bed: Multi, experiment: str) -> None:
        super().__init__(daemon=True)
        self.bed = bed
        self.experiment = experiment
        self.stop = threading.Event()
        self.samples: list[int] = []

    def _client(self) -> Any:
        from kubernetes import client, config

        leader = self.bed.bed.node_names[0]
        for run in (self.bed.shared / "ksi-runs").glob(f"*/nodes/{leader}"):
            record = json.loads((run / "run.json").read_text())
            if (run / "kubeconfig").exists() and record.get("state") in ("workload", "peering", "access"):
                api = config.new_client_from_config(config_file=str(run / "kubeconfig"),  # type: ignore[no-untyped-call]
                                                    context=record["cluster"])
                return client.CoreV1Api(api)
        return None

    def run(self) -> None:
        core = None
        while not self.stop.is_set():
            try:
                core = core or self._client()
                if core is None:
                    self.stop.wait(0.1)
                    continue
                pods = core.list_namespaced_pod("default", label_selector=f"ksi.io/experiment={self.experiment}",
                                                _request_timeout=5).items
                self.samples.append(sum(1 for p in pods if p.status.phase == "Running"))
            except Exception:  # the cluster is not there yet, or gone already
                core = None
                self.stop.wait(0.1)

    @contextlib.contextmanager
    def running(self) -> Iterator[PodSampler]:
        self.start()
        try:
            yield self
        finally:
            self.stop.set()
            self.join(30)


SWEEP = """
name: sweep
image: busybox
command: "mkdir running/{index} && ls running | wc -l >> counts && echo {index} >> executions.log;
  rmdir running/{index}"
parallelism: 16
resources: {cpu: 50m}
tasks: {seq: 200}
"""


def test_sweep_of_200_tasks_runs_each_once_on_every_node_within_the_cap(bed: Multi) -> None:
    (bed.shared / "running").mkdir()
    spec = bed.shared / "sweep.yaml"
    spec.write_text(SWEEP)
    with PodSampler(bed, "sweep").running() as sampler:
        done = srun_tasks(bed, spec)
    assert done.returncode == 0, done.stderr
    assert executions(bed) == collections.Counter(str(i) for i in range(200))  # each task ran exactly once
    results = all_results(bed, "sweep")
    assert len(results) == 200 and {r["state"] for r in results.values()} == {"succeeded"}
    assert {r["node"] for r in results.values()} == node_names(bed)  # the leader's node and both peers
    counts = [int(c) for c in (bed.shared / "counts").read_text().split()]
    assert len(counts) == 200 and max(counts) <= 16
    assert len(sampler.samples) >= 5 and 1 <= max(sampler.samples) <= 16, sampler.samples
    assert "200 tasks: 200 succeeded, 0 failed" in done.stderr
    bed.assert_clean()


def test_scancel_then_the_next_job_finishes_the_rest_without_rerunning_a_finished_task(bed: Multi) -> None:
    spec = bed.shared / "stop.yaml"
    spec.write_text('name: stop\nimage: busybox\ncommand: "echo {index} >> executions.log; sleep 1"\n'
                    "parallelism: 6\nresources: {cpu: 50m}\ntasks: {seq: 30}\n")
    job = sbatch_tasks(bed, spec)
    wait_for(lambda: sum(executions(bed).values()) >= 10, 120, "ten tasks to start")
    bed.bed.run(["scancel", job], check=True)
    wait_for(lambda: not bed.bed.busy()[0], bed.bed.kill_wait + 30, "the job to end")
    bed.assert_clean()
    # With KillWait 5 s and no delete measured yet, ksi run gives its workload no grace: `ksi tasks` may be
    # killed before it records the attempts it was running. Those have no result and simply run again.
    first = all_results(bed, "stop")
    ran_first = executions(bed)
    reasons = collections.Counter(r["reason"] for r in first.values())
    assert set(reasons) <= {"Completed", "Interrupted"} and reasons["Completed"] >= 1, reasons
    for run in (bed.shared / "ksi-runs").iterdir():
        run.rename(bed.shared / f"done-{run.name}")
    second = srun_tasks(bed, spec)
    assert second.returncode == 0, second.stderr
    counts = executions(bed)
    assert set(counts) == {str(i) for i in range(30)}
    for i in range(30):
        earlier = first.get(f"stop-{i}", {}).get("reason")
        expected = ran_first[str(i)] + (0 if earlier == "Completed" else 1)  # a finished task never runs again
        assert counts[str(i)] == expected, (i, earlier, ran_first[str(i)], counts[str(i)])
    assert all(all_results(bed, "stop")[f"stop-{i}"]["state"] == "succeeded" for i in range(30))
    bed.assert_clean()


def test_a_lost_node_s_tasks_run_again_elsewhere(bed: Multi) -> None:
    lost_host = bed.bed.node_names[2]
    spec = bed.shared / "lost.yaml"
    spec.write_text('name: lost\nimage: busybox\ncommand: "echo {index} >> executions.log; sleep 1"\n'
                    "parallelism: 9\nretries: 2\nresources: {cpu: 50m}\ntasks: {seq: 24}\n")
    done = srun_tasks(bed, spec, env={"KSI_SIM_FAULTS": f"pod/lost-*@{lost_host}:node-lost=0.3"})
    assert done.returncode == 0, done.stderr
    results = all_results(bed, "lost")
    assert len(results) == 24 and {r["state"] for r in results.values()} == {"succeeded"}
    lost_node = bed.records()[lost_host]["cluster"]
    retried = [r for r in results.values() if len(r["attempts"]) > 1]
    assert retried, "no task was on the lost node"
    for r in retried:
        assert [a["reason"] for a in r["attempts"]] == ["NodeLost", "Completed"], r["attempts"]
        assert r["attempts"][0]["node"] == lost_node and r["node"] != lost_node
    counts = executions(bed)  # a lost attempt may have run its command or not yet
    assert all(1 <= counts[name.removeprefix("lost-")] <= len(r["attempts"]) for name, r in results.items())
    bed.assert_clean()

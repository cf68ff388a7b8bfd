"""`srun -N3 ksi run` on the real Slurm test bed, with the simulated container host on every node."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.ksi_helpers import REPO, WORKLOADS, wait_for
from tests.simhost.plugin import SimHost
from tests.testbed import bedctl
from tests.testbed.plugin import SlurmBed

pytestmark = pytest.mark.slurm


@dataclass
class Multi:
    """ksi runs under srun/sbatch on the bed; state and reservations node-local in the bed's private dir."""

    bed: SlurmBed
    simhost: SimHost
    shared: Path
    env: dict[str, str]
    state_dir: Path  # node-local: the same path on every node, a different directory on each

    def ksi_argv(self, workload: Path, *args: str) -> list[str]:
        return [sys.executable, "-m", "ksi", "run", str(workload), str(self.shared), *args]

    def srun(self, workload: Path, *args: str, nodes: int = 3, srun_flags: Sequence[str] = ("--ntasks-per-node=1",),
             env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        argv = ["srun", f"-N{nodes}", *srun_flags, *self.ksi_argv(workload, *args)]
        return subprocess.run(argv, cwd=self.shared, env={**self.env, **(env or {})}, capture_output=True,
                              text=True, timeout=timeout, check=False)

    def sbatch(self, workload: Path, env: dict[str, str] | None = None, *, hold: bool = False) -> str:
        """Submit a batch job running ksi on three nodes; return its id (output in slurm-<id>.out)."""
        script = self.shared / "job.sh"
        script.write_text("#!/bin/bash\n" + shlex.join(["srun", "-N3", "--ntasks-per-node=1",
                                                        *self.ksi_argv(workload)]) + "\n")
        argv = ["sbatch", "--parsable", "-N3", "-o", str(self.shared / "slurm-%j.out"), *(["--hold"] if hold else []),
                str(script)]
        result = subprocess.run(argv, cwd=self.shared, env={**self.env, **(env or {})}, capture_output=True,
                                text=True, timeout=30, check=True)
        return result.stdout.strip().split(";")[0]

    def records(self) -> dict[str, dict[str, Any]]:
        """Return every node's run.json of the (only) run directory, by node name."""
        found: dict[str, dict[str, Any]] = {}
        for path in (self.shared / "ksi-runs").glob("*/nodes/*/run.json"):
            try:
                found[path.parent.name] = json.loads(path.read_text())
            except ValueError:
                continue
        return found

    def leftovers(self) -> dict[str, list[str]]:
        """Return, per node, the port reservations and cluster records left in its node-local state."""
        left = {}
        for node in self.bed.node_names:
            out = self.bed.on_node(node, ["sh", "-c", f"ls {self.state_dir}/ports {self.state_dir}/clusters "
                                          "2>/dev/null | grep -v ':$' | grep ."]).stdout.split()
            if out:
                left[node] = out
        return left

    def assert_clean(self) -> None:
        self.simhost.assert_clean()
        assert self.leftovers() == {}


@pytest.fixture
def multi(slurm_bed: SlurmBed, simhost: SimHost, request: pytest.FixtureRequest) -> Multi:
    shared = slurm_bed.shared_dir(request.node.name[:40])
    state_dir = slurm_bed.private_dir / f"ksi-state-{shared.name}"
    env = simhost.env(
        slurm_bed.env(),
        KSI_STATE_DIR=str(state_dir),
        KSI_SYSTEMD_SCOPE="never",
        KSI_RENDEZVOUS_TIMEOUT="20",
        KSI_LEADER_TIMEOUT="5",
        PYTHONPATH=str(REPO),
    )
    return Multi(slurm_bed, simhost, shared, env, state_dir)


def workload(multi: Multi, name: str, body: str) -> Path:
    path = multi.shared / name
    path.write_text("#!/bin/bash\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def test_one_cluster_spans_three_nodes_and_the_workload_runs_once(multi: Multi) -> None:
    report = multi.shared / "report.json"
    ran = multi.shared / "ran-on"
    wrapper = workload(multi, "w.sh", f"""\
        hostname >> "{ran}"
        exec "{WORKLOADS / 'check_env.py'}" "$@"
        """)
    result = multi.srun(wrapper, "--", str(report), srun_flags=("--ntasks-per-node=1", "--time=180"))
    assert result.returncode == 0, result.stderr
    leader = multi.bed.node_names[0]
    # Slurm 22.05 has no SLURM_JOB_END_TIME: the token must still outlive the 3-hour job (plus an hour).
    until = re.search(r"access: token valid until (\S+)Z", result.stderr)
    assert until is not None, result.stderr
    hours = (datetime.datetime.fromisoformat(until[1]).replace(tzinfo=datetime.UTC).timestamp() - time.time()) / 3600
    assert 3.9 < hours < 4.1, hours
    assert ran.read_text().split() == [leader]
    data = json.loads(report.read_text())
    assert data["missing"] == [] and data["api_status"] == 200
    records = multi.records()
    leader_cluster = records[leader]["cluster"]
    assert data["env"]["K8S_CLUSTER_NAME"] == leader_cluster
    # the leader's own node and one virtual node per peered cluster (Liqo names it after the cluster id)
    assert sorted(data["nodes"]) == sorted([f"{leader_cluster}-control-plane",
                                            *(records[n]["cluster"] for n in multi.bed.node_names[1:])])
    assert data["kubeconfig_mode"] == "0o600" and data["run_dir_mode"] == "0o700"
    # the API is published on the leader's own address, so other nodes could reach it
    leader_address = multi.bed.node(leader).address
    assert data["env"]["K8S_CLUSTER_API"].startswith(f"https://{leader_address}:")
    assert sorted(records) == sorted(multi.bed.node_names)
    assert {r["state"] for r in records.values()} == {"done"}
    assert len({r["cluster"] for r in records.values()}) == 3
    assert len({r["port"] for r in records.values()}) == 1  # the same K8S_PORT on every node
    for node in multi.bed.node_names:
        assert f"ksi[{node}] teardown: done" in result.stderr
    assert "peer: 2 cluster(s) peered" in result.stderr
    assert data["token"] not in result.stdout + result.stderr
    multi.assert_clean()


def test_workload_status_is_every_tasks_status(multi: Multi) -> None:
    result = multi.srun(workload(multi, "w.sh", "exit 7\n"))
    assert result.returncode == 7, result.stderr
    for node in multi.bed.node_names[1:]:
        assert f"ksi[{node}] wait: the workload on {multi.bed.node_names[0]} exited with status 7" in result.stderr
    multi.assert_clean()


def test_more_than_one_task_per_node_is_refused_on_every_task(multi: Multi) -> None:
    result = multi.srun(workload(multi, "w.sh", "exit 0\n"), srun_flags=("-n6",))
    assert result.returncode == 2, result.stderr
    refusals = [line for line in result.stderr.splitlines() if "needs exactly one task per node" in line]
    assert len(refusals) == 6
    assert all("--ntasks-per-node=1" in line for line in refusals)
    assert not (multi.shared / "ksi-runs").exists()
    assert multi.simhost.containers() == []


@pytest.mark.parametrize(("fault", "phase"), [
    ("kind-create@{follower}:fail", "create"),
    ("liqoctl-install@{follower}:fail", "liqo install"),
    ("liqoctl-peer:fail", "peer"),
])
def test_one_failure_stops_every_node_and_names_node_and_phase(multi: Multi, fault: str, phase: str) -> None:
    follower = multi.bed.node_names[1]
    result = multi.srun(workload(multi, "w.sh", "echo must-not-run\n"),
                        env={"KSI_SIM_FAULTS": fault.format(follower=follower)})
    assert result.returncode != 0
    assert "must-not-run" not in result.stdout
    who = multi.bed.node_names[0] if phase == "peer" else follower
    aborted = [line for line in result.stderr.splitlines() if f"run aborted by {who} during {phase}" in line]
    assert len(aborted) == 2, result.stderr  # the two nodes that did not fail say who did
    multi.assert_clean()


def test_hanging_peer_times_out_and_everything_is_torn_down(multi: Multi) -> None:
    result = multi.srun(workload(multi, "w.sh", "echo must-not-run\n"),
                        env={"KSI_SIM_FAULTS": "liqoctl-peer:hang", "KSI_PEER_TIMEOUT": "3"})
    assert result.returncode != 0
    assert "peering" in result.stderr and "did not finish within 13 s and was killed" in result.stderr, result.stderr
    multi.assert_clean()


def test_directory_not_shared_between_nodes_is_a_clear_error(multi: Multi) -> None:
    private = multi.bed.private_dir / "not-shared"
    for node in multi.bed.node_names:
        multi.bed.on_node(node, ["mkdir", "-p", str(private)], check=True)
    w = workload(multi, "w.sh", "echo must-not-run\n")
    argv = ["srun", "-N3", "--ntasks-per-node=1", sys.executable, "-m", "ksi", "run", str(w), str(private)]
    started = time.monotonic()
    result = subprocess.run(argv, cwd=multi.shared, env={**multi.env, "KSI_RENDEZVOUS_TIMEOUT": "4"},
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0
    assert time.monotonic() - started < 60
    assert "may not be shared across nodes" in result.stderr
    assert f"the leader ({multi.bed.node_names[0]}) did not announce the run" in result.stderr
    multi.assert_clean()


def _start_with_leader_pid(multi: Multi) -> tuple[subprocess.Popen[str], int]:
    """Start a three-node run whose workload sleeps; return srun and the leader's ksi pid."""
    pid_file = multi.shared / "leader-ksi.pid"
    w = workload(multi, "w.sh", f"""\
        echo $PPID > "{pid_file}"
        sleep 300
        """)
    process = subprocess.Popen(["srun", "-N3", "--ntasks-per-node=1", *multi.ksi_argv(w)], cwd=multi.shared,
                               env=multi.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 60, "the workload"))
    return process, pid


def _followers_clean_leader_left(multi: Multi) -> None:
    alive_hosts = {c["host"] for c in multi.simhost.containers() if c["alive"]}
    assert alive_hosts == {multi.bed.node_names[0]}  # only the killed leader's cluster is left (for ksi cleanup)
    assert sorted(multi.leftovers()) == [multi.bed.node_names[0]]


def test_leader_killed_mid_workload_followers_clean_up(multi: Multi) -> None:
    process, pid = _start_with_leader_pid(multi)
    try:
        os.kill(pid, signal.SIGKILL)
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode != 0
    _followers_clean_leader_left(multi)


def test_frozen_leader_is_declared_dead_by_its_heartbeat(multi: Multi) -> None:
    """A hung leader node: Slurm notices nothing for minutes, the followers within KSI_LEADER_TIMEOUT."""
    process, pid = _start_with_leader_pid(multi)
    os.kill(pid, signal.SIGSTOP)
    try:
        for node in multi.bed.node_names[1:]:
            wait_for(lambda: multi.records().get(node, {}).get("state") == "failed", 60,  # noqa: B023
                     f"{node} to give up on its leader")
            follower = Path(f"/proc/{multi.records()[node]['pid']}")
            wait_for(lambda: not follower.exists(), 30, f"ksi on {node} to exit")  # noqa: B023
        _followers_clean_leader_left(multi)
    finally:
        for sig in (signal.SIGKILL, signal.SIGCONT):  # srun may have ended the frozen leader already
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        _, err = process.communicate(timeout=60)
    silent = f"the leader {multi.bed.node_names[0]} stopped updating its heartbeat"
    for node in multi.bed.node_names[1:]:  # noticed it, or was told by the follower that noticed first
        assert any(line.startswith(f"ksi[{node}] error: ") and silent in line for line in err.splitlines()), err


def test_scancel_during_create_peering_and_workload_leaves_nothing(multi: Multi) -> None:
    for fault, state in (("kind-create:slow=60", "creating"), ("liqoctl-peer:slow=60", None), ("", "workload")):
        w = workload(multi, "w.sh", "sleep 300\n")
        job = multi.sbatch(w, env={"KSI_SIM_FAULTS": fault} if fault else None)

        def reached(state: str | None = state) -> bool:
            records = multi.records()
            if state is None:  # peering: every follower serves, the leader is not in its workload yet
                return bool(sum(r.get("state") == "serving" for r in records.values()) == 2)
            leader = records.get(multi.bed.node_names[0], {})
            return bool(leader.get("state") == state)
        wait_for(reached, 60, f"the job to reach {state or 'peering'}")
        multi.bed.run(["scancel", job], check=True)
        wait_for(lambda: not multi.bed.busy()[0], multi.bed.kill_wait + 30, "the job to end")
        multi.assert_clean()
        for run in (multi.shared / "ksi-runs").iterdir():
            run.rename(multi.shared / f"done-{run.name}")


def test_two_jobs_at_once_on_the_same_nodes(multi: Multi) -> None:
    meet = multi.shared / "meet"
    meet.mkdir()
    w = workload(multi, "w.sh", f"""\
        echo "$K8S_PORT" > "{meet}/$K8S_CLUSTER_NAME"
        for i in $(seq 600); do [ "$(ls "{meet}" | wc -l)" -ge 2 ] && exit 0; sleep 0.1; done
        exit 9
        """)
    argv = ["srun", "-N3", "--ntasks-per-node=1", "--cpus-per-task=1", *multi.ksi_argv(w)]
    first = subprocess.Popen(argv, cwd=multi.shared, env=multi.env, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen(argv, cwd=multi.shared, env=multi.env, stderr=subprocess.PIPE, text=True)
    errors = [first.communicate(timeout=120)[1], second.communicate(timeout=120)[1]]
    assert (first.returncode, second.returncode) == (0, 0), errors
    assert len({p.read_text() for p in meet.iterdir()}) == 2  # distinct K8S_PORTs
    multi.assert_clean()


def test_stale_run_directory_of_the_same_job_id_is_ignored(multi: Multi) -> None:
    job = multi.sbatch(workload(multi, "w.sh", "exit 0\n"), hold=True)
    stale = multi.shared / "ksi-runs" / f"{job}.0.0"
    stale.mkdir(parents=True)
    (stale / "leader.json").write_text(json.dumps({"nonce": "old", "started": time.time() - 7 * 86400,
                                                   "port": 30001, "gateway_port": 30002}))
    (stale / "done.json").write_text(json.dumps({"nonce": "old", "status": 99}))
    multi.bed.run(["scontrol", "release", job], check=True)
    wait_for(lambda: not multi.bed.busy()[0], 120, "the job to end")
    output = (multi.shared / f"slurm-{job}.out").read_text()
    assert "moved a stale run directory of this job id aside" in output, output
    assert f"wait: the workload on {multi.bed.node_names[0]} exited with status 0" in output, output
    assert [p for p in (multi.shared / "ksi-runs").iterdir() if ".stale-" in p.name]
    multi.assert_clean()


def test_lost_follower_is_named_and_the_workload_keeps_running(multi: Multi) -> None:
    """The documented policy: the leader reports the silent node by name; the workload is not stopped."""
    release, running = multi.shared / "release", multi.shared / "running"
    w = workload(multi, "w.sh", f"""\
        touch "{running}"
        for i in $(seq 600); do [ -e "{release}" ] && exit 0; sleep 0.1; done
        exit 9
        """)
    process = subprocess.Popen(["srun", "-N3", "--ntasks-per-node=1", *multi.ksi_argv(w)], cwd=multi.shared,
                               env=multi.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    leader, follower = multi.bed.node_names[0], multi.bed.node_names[2]
    wait_for(running.exists, 60, "the workload to start")
    follower_pid = multi.records()[follower]["pid"]
    leader_log = next((multi.shared / "ksi-runs").glob(f"*/nodes/{leader}/ksi.log"))
    os.kill(follower_pid, signal.SIGSTOP)
    try:
        wait_for(lambda: f"node {follower} stopped responding" in leader_log.read_text(), 30,
                 "the leader to notice the silent follower")
        release.touch()  # the workload was not stopped: it still finishes on its own terms
        wait_for(lambda: multi.records()[leader].get("state") == "done", 30, "the leader to finish")
    finally:
        os.kill(follower_pid, signal.SIGCONT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert f"ksi[{leader}] workload: exited with status 0" in err
    assert multi.records()[leader]["lost_nodes"] == [follower]
    multi.assert_clean()


def test_one_node_step_is_the_one_node_run_without_liqo(multi: Multi) -> None:
    result = multi.srun(workload(multi, "w.sh", 'echo "nodes=${KSI_NODE_COUNT:-unset}"\n'), nodes=1,
                        env={"KSI_SIM_FAULTS": "liqoctl-install:fail,liqoctl-peer:fail"})
    assert result.returncode == 0, result.stderr
    assert "nodes=unset" in result.stdout
    assert "liqo" not in result.stderr.lower()
    [run_dir] = (multi.shared / "ksi-runs").iterdir()
    assert re.fullmatch(r"ksi-\d+-[a-z0-9]{6}", run_dir.name)  # named after its cluster, not the step
    multi.assert_clean()


def test_a_node_that_cannot_bind_the_runs_port_fails_the_run(multi: Multi) -> None:
    busy = multi.bed.node_names[1]
    listener = ("import socket, sys, time; s = socket.socket(); s.bind(('0.0.0.0', 31999)); s.listen(); "
                "print('ready', flush=True); time.sleep(120)")
    holder = subprocess.Popen(bedctl.nsenter_argv(multi.bed.anchor_pid(busy), [sys.executable, "-c", listener],
                                                  workdir="/"), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        result = multi.srun(workload(multi, "w.sh", "echo must-not-run\n"), env={"K8S_PORT": "31999"})
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert result.returncode != 0
    assert (f"ksi[{busy}] error: port: K8S_PORT 31999 is already in use on this node (the run's port, published "
            f"by the leader {multi.bed.node_names[0]})") in result.stderr, result.stderr
    assert "must-not-run" not in result.stdout
    multi.assert_clean()

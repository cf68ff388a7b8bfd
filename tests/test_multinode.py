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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.ksi_helpers import ACCESS_REQUESTS, KSI, WORKLOADS, wait_for
from tests.simhost.apiserver import logged_requests
from tests.simhost.plugin import SimHost
from tests.testbed import bedctl
from tests.testbed.plugin import ALSO_CACHED, CACHED, DIRECT, SlurmBed

pytestmark = pytest.mark.slurm
# ALSO_CACHED runs a test a second time on the bed's caching twin, where every node sees the shared directory
# through its own client that keeps names, attributes and "no such file" for 30 s, as NFS clients do: a
# wait that depends on a cache expiring outlasts KSI_RENDEZVOUS_TIMEOUT and KSI_LEADER_TIMEOUT and fails.

STOP_TIMEOUT = 60.0  # seconds a background srun gets to end after SIGTERM (its tasks tear down), then SIGKILL
# srun's line for tasks that exited non-zero: "srun: error: node2: task 1: Exited with exit code 7" (or "tasks 0-1")
TASK_EXIT = re.compile(r"^srun: error: (\S+): tasks? ([\d,-]+): Exited with exit code (\d+)$", re.MULTILINE)
SIGNALLED_TASK = re.compile(r"^srun: error: \S+: tasks? [\d,-]+: (?:Terminated|Killed)$|exit code 1(?:37|43)$",
                            re.MULTILINE)
LISTED, ABSENT = "-- listed", "-- absent"
# Lists the entries of the ports and clusters directories of the state directory $1, one "dir/entry" a line,
# then LISTED (only ABSENT when $1 does not exist); exits non-zero when a directory cannot be listed.
LIST_STATE = f"""\
if [ ! -e "$1" ]; then echo '{ABSENT}'; exit 0; fi
cd "$1" || exit 1
for d in ports clusters; do
  if [ -e "$d" ]; then
    out=$(ls -A "$d") || exit 1
    [ -z "$out" ] || printf '%s\\n' "$out" | sed "s|^|$d/|"
  fi
done
echo '{LISTED}'
"""


@dataclass
class Multi:
    """ksi runs under srun/sbatch on the bed; state and reservations node-local in the bed's private dir."""

    bed: SlurmBed
    simhost: SimHost
    shared: Path
    env: dict[str, str]
    state_dir: Path  # node-local: the same path on every node, a different directory on each
    jobs: list[str] = field(default_factory=list)  # batch jobs submitted, cancelled when the test ends

    def ksi_argv(self, workload: Path, *args: str) -> list[str]:
        return [KSI, "run", str(workload), str(self.shared), *args]

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
        job = result.stdout.strip().split(";")[0]
        self.jobs.append(job)
        return job

    @contextlib.contextmanager
    def started(self, argv: Sequence[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
        """Run ``argv`` (srun) in the background with captured output; stop it however the test ends.

        On the way out a still running process gets SIGTERM (srun forwards it to its tasks, which tear
        down), SIGKILL after STOP_TIMEOUT seconds, and is reaped.
        """
        process = subprocess.Popen(list(argv), cwd=self.shared, env={**self.env, **(env or {})},
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            yield process
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.communicate(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.communicate(timeout=STOP_TIMEOUT)

    def records(self) -> dict[str, dict[str, Any]]:
        """Return every node's run.json of the (only) run directory, by node name."""
        found: dict[str, dict[str, Any]] = {}
        for path in (self.shared / "ksi-runs").glob("*/nodes/*/run.json"):
            try:
                found[path.parent.name] = json.loads(path.read_text())
            except ValueError:
                continue
        return found

    def leftovers(self, idle: Sequence[str] = ()) -> dict[str, list[str]]:
        """Return, per node, the port reservations and cluster records left in its node-local state.

        A node whose state cannot be listed (nsenter or ls failing) fails the test: an error must never read
        as "nothing left". So does a node without a state directory, unless it is one of the ``idle`` nodes
        (ksi never ran there).
        """
        left = {}
        for node in self.bed.node_names:
            listing = self.bed.on_node(node, ["sh", "-c", LIST_STATE, "sh", str(self.state_dir)])
            lines = listing.stdout.splitlines()
            if listing.returncode != 0 or not lines or lines[-1] not in (LISTED, ABSENT):
                raise AssertionError(f"cannot list {self.state_dir} on {node}: exit {listing.returncode}\n"
                                     f"stdout: {listing.stdout}\nstderr: {listing.stderr}")
            if lines == [ABSENT] and node not in idle:
                raise AssertionError(f"{self.state_dir} does not exist on {node}: ksi did not run there?")
            if lines[:-1]:
                left[node] = lines[:-1]
        return left

    def assert_clean(self, idle: Sequence[str] = ()) -> None:
        """Fail if anything of the run is left on the simulated hosts or in a node's state (see leftovers)."""
        self.simhost.assert_clean()
        assert self.leftovers(idle) == {}


@pytest.fixture
def multi(slurm_bed: SlurmBed, simhost: SimHost, request: pytest.FixtureRequest) -> Iterator[Multi]:
    shared = slurm_bed.shared_dir(request.node.name[:40])
    state_dir = slurm_bed.private_dir / f"ksi-state-{shared.name}"
    env = simhost.env(
        slurm_bed.env(),
        KSI_STATE_DIR=str(state_dir),
        KSI_SYSTEMD_SCOPE="never",
        KSI_RENDEZVOUS_TIMEOUT="20",
        KSI_LEADER_TIMEOUT="5",
    )
    multi = Multi(slurm_bed, simhost, shared, env, state_dir)
    yield multi
    if multi.jobs:  # a test that failed half-way leaves no job running for the next test to wait for
        slurm_bed.run(["scancel", *multi.jobs], timeout=30)


def task_exits(stderr: str) -> dict[int, int]:
    """Return the exit code of every task srun reported as exiting non-zero, by task id (rank)."""
    codes: dict[int, int] = {}
    for match in TASK_EXIT.finditer(stderr):
        for part in match[2].split(","):
            first, _, last = part.partition("-")
            codes |= dict.fromkeys(range(int(first), int(last or first) + 1), int(match[3]))
    return codes


def workload(multi: Multi, name: str, body: str) -> Path:
    path = multi.shared / name
    path.write_text("#!/bin/bash\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


@ALSO_CACHED
def test_one_cluster_spans_three_nodes_and_the_workload_runs_once(multi: Multi) -> None:
    report = multi.shared / "report.json"
    ran = multi.shared / "ran-on"
    api_log = multi.shared / "leader-api.log"
    wrapper = workload(multi, "w.sh", f"""\
        hostname >> "{ran}"
        cp "$KSI_SIM_ROOT/$(hostname)"/*/containers/*/node.log "{api_log}"
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
    # ksi's requests to the leader's API (the token, then the virtual nodes) share one connection
    mine = [r for r in logged_requests(api_log.read_text()) if r.user == "kubernetes-admin" and (
        (r.method, r.path) in ACCESS_REQUESTS or (r.method, r.path) == ("GET", "/api/v1/nodes"))]
    assert sorted((r.method, r.path) for r in mine if (r.method, r.path) in ACCESS_REQUESTS) == sorted(ACCESS_REQUESTS)
    assert any(r.path == "/api/v1/nodes" for r in mine) and len({r.port for r in mine}) == 1, mine
    multi.assert_clean()


@ALSO_CACHED
def test_workload_status_is_every_tasks_status(multi: Multi) -> None:
    result = multi.srun(workload(multi, "w.sh", "exit 7\n"))
    assert result.returncode == 7, result.stderr
    assert task_exits(result.stderr) == {0: 7, 1: 7, 2: 7}, result.stderr
    for node in multi.bed.node_names[1:]:
        assert f"ksi[{node}] wait: the workload on {multi.bed.node_names[0]} exited with status 7" in result.stderr
    multi.assert_clean()


def test_more_than_one_task_per_node_is_refused_on_every_task(multi: Multi) -> None:
    result = multi.srun(workload(multi, "w.sh", "exit 0\n"), srun_flags=("-n6",))
    assert result.returncode == 2, result.stderr
    refusals = [line for line in result.stderr.splitlines() if "needs exactly one task per node" in line]
    assert len(refusals) == 6
    assert all("--ntasks-per-node=1" in line for line in refusals)
    assert task_exits(result.stderr) == dict.fromkeys(range(6), 2), result.stderr
    assert not (multi.shared / "ksi-runs").exists()
    assert multi.simhost.containers() == []


@pytest.mark.parametrize(("fault", "phase", "slurm_bed"), [
    ("kind-create@{follower}:fail", "create", DIRECT),
    ("liqoctl-install@{follower}:fail", "liqo install", DIRECT),
    ("liqoctl-install@{follower}:fail", "liqo install", CACHED),
    ("liqoctl-peer:fail", "peer", DIRECT),
], indirect=["slurm_bed"])
def test_one_failure_stops_every_node_and_names_node_and_phase(multi: Multi, fault: str, phase: str) -> None:
    follower = multi.bed.node_names[1]
    result = multi.srun(workload(multi, "w.sh", "echo must-not-run\n"),
                        env={"KSI_SIM_FAULTS": fault.format(follower=follower)})
    assert result.returncode != 0
    assert "must-not-run" not in result.stdout
    who = multi.bed.node_names[0] if phase == "peer" else follower
    aborted = [line for line in result.stderr.splitlines() if f"run aborted by {who} during {phase}" in line]
    assert len(aborted) == 2, result.stderr  # the two nodes that did not fail say who did
    if phase == "peer":  # liqoctl runs on the leader: its error names the leader and the provider it peered
        leader, providers = multi.bed.node_names[0], multi.bed.node_names[1:]
        failed = [line for line in result.stderr.splitlines() if line.startswith(f"ksi[{leader}] error: peer: ")]
        assert len(failed) == 1, result.stderr
        assert any(f"`liqoctl peer` on {leader} (the leader) with the provider {p} " in failed[0] for p in providers)
    assert sorted(task_exits(result.stderr)) == [0, 1, 2], result.stderr  # every task exits non-zero
    multi.assert_clean()


def test_hanging_peer_times_out_and_everything_is_torn_down(multi: Multi) -> None:
    result = multi.srun(workload(multi, "w.sh", "echo must-not-run\n"),
                        env={"KSI_SIM_FAULTS": "liqoctl-peer:hang", "KSI_PEER_TIMEOUT": "3"})
    assert result.returncode != 0
    assert "did not finish within 13 s and was killed" in result.stderr, result.stderr
    assert "must-not-run" not in result.stdout
    leader, followers = multi.bed.node_names[0], multi.bed.node_names[1:]
    lines = result.stderr.splitlines()
    failed = [line for line in lines if line.startswith(f"ksi[{leader}] error: peer: `liqoctl peer` on {leader} "
                                                         "(the leader) with the provider ")]
    assert len(failed) == 1 and "did not finish within 13 s and was killed" in failed[0], result.stderr
    for follower in followers:
        assert any(line.startswith(f"ksi[{follower}] error: ") and f"run aborted by {leader} during peer" in line
                   for line in lines), result.stderr
    assert sorted(task_exits(result.stderr)) == [0, 1, 2], result.stderr  # every task exits non-zero
    multi.assert_clean()


def test_directory_not_shared_between_nodes_is_a_clear_error(multi: Multi) -> None:
    private = multi.bed.private_dir / "not-shared"
    for node in multi.bed.node_names:
        multi.bed.on_node(node, ["mkdir", "-p", str(private)], check=True)
    w = workload(multi, "w.sh", "echo must-not-run\n")
    argv = ["srun", "-N3", "--ntasks-per-node=1", KSI, "run", str(w), str(private)]
    started = time.monotonic()
    result = subprocess.run(argv, cwd=multi.shared, env={**multi.env, "KSI_RENDEZVOUS_TIMEOUT": "4"},
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0
    assert time.monotonic() - started < 60
    assert "may not be shared across nodes" in result.stderr
    assert f"the leader ({multi.bed.node_names[0]}) did not announce the run" in result.stderr
    multi.assert_clean()


@contextlib.contextmanager
def _started_with_leader_pid(multi: Multi) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """Start a three-node run whose workload sleeps; yield srun and the leader's ksi pid; stop srun at the end."""
    pid_file = multi.shared / "leader-ksi.pid"
    w = workload(multi, "w.sh", f"""\
        read -r _ _ _ ksi _ < /proc/$PPID/stat  # the parent is ksi's guardian of the workload's group
        echo "$ksi" > "{pid_file}.tmp" && mv "{pid_file}.tmp" "{pid_file}"
        sleep 300
        """)
    with multi.started(["srun", "-N3", "--ntasks-per-node=1", *multi.ksi_argv(w)]) as process:
        pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 60, "the workload"))
        yield process, pid


def _followers_clean_leader_left(multi: Multi) -> None:
    alive_hosts = {c["host"] for c in multi.simhost.containers() if c["alive"]}
    assert alive_hosts == {multi.bed.node_names[0]}  # only the killed leader's cluster is left (for ksi cleanup)
    assert sorted(multi.leftovers()) == [multi.bed.node_names[0]]


def test_leader_killed_mid_workload_followers_clean_up(multi: Multi) -> None:
    with _started_with_leader_pid(multi) as (process, pid):
        os.kill(pid, signal.SIGKILL)
        process.communicate(timeout=60)
    assert process.returncode != 0
    _followers_clean_leader_left(multi)


@ALSO_CACHED
def test_frozen_leader_is_declared_dead_by_its_heartbeat(multi: Multi) -> None:
    """A hung leader node: Slurm notices nothing for minutes, the followers within KSI_LEADER_TIMEOUT."""
    with _started_with_leader_pid(multi) as (process, pid):
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


@ALSO_CACHED
def test_scancel_during_create_peering_and_workload_leaves_nothing(multi: Multi) -> None:
    for fault, state in (("kind-create:slow=60", "creating"), ("liqoctl-peer:slow=60", "peering"),
                         ("", "workload")):
        w = workload(multi, "w.sh", "sleep 300\n")
        job = multi.sbatch(w, env={"KSI_SIM_FAULTS": fault} if fault else None)

        def reached(state: str = state) -> bool:
            records = multi.records()
            leader = records.get(multi.bed.node_names[0], {})
            serving = sum(r.get("state") == "serving" for r in records.values())
            return bool(leader.get("state") == state and (state == "creating" or serving == 2))
        wait_for(reached, 60, f"the leader to reach {state}")
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
    with multi.started(argv) as first, multi.started(argv) as second:
        errors = [first.communicate(timeout=120)[1], second.communicate(timeout=120)[1]]
    assert (first.returncode, second.returncode) == (0, 0), errors
    assert len({p.read_text() for p in meet.iterdir()}) == 2  # distinct K8S_PORTs
    multi.assert_clean()


@ALSO_CACHED
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
    leader, follower = multi.bed.node_names[0], multi.bed.node_names[2]
    with multi.started(["srun", "-N3", "--ntasks-per-node=1", *multi.ksi_argv(w)]) as process:
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
    ran_on = {match[1] for match in re.finditer(r"^ksi\[([^]]+)\] ", result.stderr, re.MULTILINE)}
    assert len(ran_on) == 1, result.stderr
    multi.assert_clean(idle=[n for n in multi.bed.node_names if n not in ran_on])


def test_a_node_that_cannot_bind_the_runs_port_fails_the_run(multi: Multi) -> None:
    busy = multi.bed.node_names[1]
    ready = multi.shared / "holder-ready"
    listener = ("import pathlib, socket, sys, time; s = socket.socket(); s.bind(('0.0.0.0', 31999)); s.listen(); "
                "pathlib.Path(sys.argv[1]).write_text('ready'); time.sleep(120)")
    holder = subprocess.Popen(bedctl.nsenter_argv(multi.bed.anchor_pid(busy),
                                                  [sys.executable, "-c", listener, str(ready)], workdir="/"))
    try:  # a file, not a line on a pipe: waiting for it is bounded, and a holder that died is noticed
        wait_for(lambda: (ready.exists() and ready.read_text() == "ready") or holder.poll() is not None, 30,
                 f"the port holder on {busy}")
        assert holder.poll() is None and ready.read_text() == "ready", holder.returncode
        result = multi.srun(workload(multi, "w.sh", "echo must-not-run\n"), env={"K8S_PORT": "31999"})
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert result.returncode != 0
    assert (f"ksi[{busy}] error: port: K8S_PORT 31999 is already in use on this node (the run's port, published "
            f"by the leader {multi.bed.node_names[0]})") in result.stderr, result.stderr
    assert "must-not-run" not in result.stdout
    multi.assert_clean()


def test_only_pods_of_offloaded_namespaces_run_on_other_nodes(multi: Multi) -> None:
    # A pod pinned to a peered cluster's virtual node runs there from `default` (ksi offloads it) and from a
    # namespace named in KSI_OFFLOAD_NAMESPACES (ksi creates it); in any other namespace Liqo leaves it Pending.
    pod = """\
        pod() {  # NAMESPACE NAME: a pod pinned to the first virtual node, tolerating its taint
          kubectl create -n "$1" -f - <<YAML
        apiVersion: v1
        kind: Pod
        metadata: {name: $2}
        spec:
          restartPolicy: Never
          nodeSelector: {kubernetes.io/hostname: $node}
          tolerations: [{key: virtual-node.liqo.io/not-allowed, operator: Exists, effect: NoExecute}]
          containers: [{name: main, image: busybox:1.36, command: ["true"]}]
        YAML
        }
        node=$(kubectl get nodes -l liqo.io/type=virtual-node -o jsonpath='{.items[0].metadata.name}')
        printf '{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "elsewhere"}}' | kubectl create -f -
        pod default here && pod analysis there && pod elsewhere stuck
        kubectl wait -n default pod/here --for=jsonpath='{.status.phase}'=Succeeded --timeout=60s
        kubectl wait -n analysis pod/there --for=jsonpath='{.status.phase}'=Succeeded --timeout=60s
        kubectl wait -n elsewhere pod/stuck --for=jsonpath='{.status.reason}'=OffloadingBackOff --timeout=60s
        kubectl get -n elsewhere pod/stuck -o jsonpath='stuck: {.status.phase} {.status.reason}{"\\n"}'
        """
    result = multi.srun(workload(multi, "w.sh", pod), env={"KSI_OFFLOAD_NAMESPACES": "default,analysis"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "stuck: Pending OffloadingBackOff" in result.stdout, result.stdout
    assert re.search(r"offload: namespace default, analysis offloaded to the 2 peered cluster\(s\)", result.stderr)
    multi.assert_clean()


def test_a_namespace_liqo_cannot_offload_fails_the_run_before_the_workload(multi: Multi) -> None:
    # kube-system stays local; a system namespace is refused before anything is created.
    result = multi.srun(workload(multi, "w.sh", "exit 0\n"), env={"KSI_OFFLOAD_NAMESPACES": "default,kube-system"})
    assert result.returncode != 0
    assert "KSI_OFFLOAD_NAMESPACES" in result.stderr and "'kube-system' is a system namespace" in result.stderr
    multi.assert_clean(idle=multi.bed.node_names)


def test_kill_on_bad_exit_keeps_every_status_and_every_teardown(multi: Multi) -> None:
    # Under srun -K1 the first task exiting non-zero makes Slurm stop the others: no node may exit before
    # every node's teardown is over, so every task exits with the workload's status and nothing is left.
    result = multi.srun(workload(multi, "w.sh", "exit 3\n"), srun_flags=("--ntasks-per-node=1", "-K1"))
    assert result.returncode == 3, result.stderr
    assert task_exits(result.stderr) == {0: 3, 1: 3, 2: 3}, result.stderr
    for node in multi.bed.node_names:
        assert f"ksi[{node}] teardown: done" in result.stderr, result.stderr
        assert re.search(rf"ksi\[{node}\] wait: every node's teardown is over", result.stderr), result.stderr
    # srun's own words for a task a signal ended; a bare "143" would also match a random port or cluster name.
    assert not SIGNALLED_TASK.search(result.stderr), result.stderr
    multi.assert_clean()

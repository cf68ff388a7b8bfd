"""`ksi list` and `ksi cleanup` on the simulated host: real ksi processes, SIGKILLed runs, real locks.

A "held" run is a `ksi run` whose workload waits for a release file, so its cluster stays up while the test
looks at it; killing such a run with SIGKILL leaves its cluster behind exactly as a KillWait overrun does.
Slurm job states come from a fake `squeue` on PATH (a program, like the other doubles) that answers from
one file per job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ksi import settings as settings_mod
from ksi.admin.cleanup import remove_stale
from tests.ksi_helpers import KsiRunner, finish, wait_for
from tests.simhost.common import process_start
from tests.simhost.plugin import SimHost
from tests.testbed.plugin import SlurmBed

LABEL = "io.x-k8s.kind.cluster"
HELD = """\
#!/bin/bash
# Says which ksi (the parent of its guardian, its own parent) and which workload pid it is, then waits for the
# release file (60 s at most).
read -r _ _ _ ksi _ < /proc/$PPID/stat
echo "$ksi $$" > "$MARKS/$K8S_CLUSTER_NAME.tmp" && mv "$MARKS/$K8S_CLUSTER_NAME.tmp" "$MARKS/$K8S_CLUSTER_NAME"
for _ in $(seq 1200); do [ -e "$MARKS/release" ] && exit 0; sleep 0.05; done
exit 9
"""
SQUEUE = """\
#!/bin/sh
# Fake squeue: `squeue -h -t all -j ID -o '%A %T'` answers from $FAKE_SLURM/ID (lines "ID STATE"); no file: a
# job Slurm forgot; a file $FAKE_SLURM/down: the controller cannot be reached.
[ "$1 $2 $3 $4" = "-h -t all -j" ] && [ "$6" = "-o" ] && [ "$7" = "%A %T" ] && [ $# = 7 ] \
    || { echo "fake squeue: unexpected $*" >&2; exit 70; }
if [ -f "$FAKE_SLURM/down" ]; then
  echo "squeue: error: Unable to contact slurm controller (connect failure)" >&2; exit 1
fi
if [ -f "$FAKE_SLURM/$5" ]; then cat "$FAKE_SLURM/$5"; exit 0; fi
echo "slurm_load_jobs error: Invalid job id specified" >&2
exit 1
"""


@dataclass
class Held:
    """A `ksi run` whose workload is waiting: its process, cluster, run directory and the two pids."""

    process: subprocess.Popen[str]
    name: str
    ksi_pid: int
    workload_pid: int
    run_dir: Path

    def kill(self) -> None:
        """SIGKILL ksi (no teardown happens); its workload dies with it (the guardian's parent-death signal)."""
        os.kill(self.ksi_pid, signal.SIGKILL)
        self.process.communicate(timeout=30)
        wait_for(lambda: process_start(self.workload_pid) is None, 10,
                 f"the workload {self.workload_pid} to die with ksi")


@dataclass
class Bench:
    """The ksi runner plus the marks directory, the workload and the fake Slurm's job states."""

    ksi: KsiRunner
    simhost: SimHost
    marks: Path
    workload: Path
    slurm: Path
    claims: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, **env: str) -> Held:
        """Start a held `ksi run` (extra environment for it only) and wait until its workload runs."""
        before = set(os.listdir(self.marks))
        process = self.ksi.start("run", str(self.workload), str(self.ksi.shared), env=env)
        try:
            new = wait_for(lambda: set(os.listdir(self.marks)) - before - {"release"}
                           - {n for n in os.listdir(self.marks) if n.endswith(".tmp")}, 60, "the workload to start")
        except AssertionError:
            process.kill()
            raise AssertionError(f"ksi run did not get to its workload: {process.communicate()}") from None
        [name] = new
        ksi_pid, workload_pid = map(int, (self.marks / name).read_text().split())
        assert ksi_pid == process.pid
        return Held(process, name, ksi_pid, workload_pid, self.ksi.shared / "ksi-runs" / name)

    def job(self, job_id: str, state: str | None) -> None:
        """Make the fake Slurm report ``state`` for ``job_id`` (None: Slurm does not know the job)."""
        path = self.slurm / job_id
        if state is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(f"{job_id} {state}\n")

    def claim(self, name: str) -> subprocess.Popen[bytes]:
        """Start a detached process that uses cluster ``name``; killed when the test ends."""
        user = subprocess.Popen(["sleep", "120"], env={**os.environ, "K8S_CLUSTER_NAME": name},
                                start_new_session=True)
        self.claims.append(user)
        return user

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """Run a ksi subcommand to completion."""
        return self.ksi.run(*args, env=env)

    def listing(self) -> dict[str, dict[str, Any]]:
        """Run `ksi list --json` and return its clusters by name."""
        result = self.cli("list", "--json")
        assert result.returncode == 0, result.stderr
        return {c["name"]: c for c in json.loads(result.stdout)}

    def nodes(self, name: str) -> list[str]:
        """Return the live node containers of cluster ``name`` on the simulated host."""
        return [str(c["name"]) for c in self.simhost.containers() if c["labels"].get(LABEL) == name and c["alive"]]

    def release(self, *held: Held) -> None:
        """Let the held workloads finish and check that their runs succeeded."""
        (self.marks / "release").write_text("")
        for run in held:
            status, _, err = finish(run.process)
            assert status == 0, err


@pytest.fixture
def bench(ksi: KsiRunner, simhost: SimHost, tmp_path: Path) -> Iterator[Bench]:
    marks = tmp_path / "marks"
    marks.mkdir()
    workload = ksi.cwd / "held.sh"
    workload.write_text(HELD)
    workload.chmod(0o755)
    fake_bin = tmp_path / "fake-slurm-bin"
    fake_bin.mkdir()
    (fake_bin / "squeue").write_text(SQUEUE)
    (fake_bin / "squeue").chmod(0o755)
    slurm = tmp_path / "slurm-jobs"
    slurm.mkdir()
    ksi.env.update(MARKS=str(marks), FAKE_SLURM=str(slurm), PATH=f"{fake_bin}:{ksi.env['PATH']}")
    ksi.env.pop("SLURM_CONF", None)
    bench = Bench(ksi, simhost, marks, workload, slurm)
    yield bench
    (marks / "release").write_text("")  # a failing test must not leave workloads waiting
    for user in bench.claims:
        user.kill()
        user.wait(timeout=10)


def assert_nothing_left(bench: Bench) -> None:
    bench.simhost.assert_clean()
    assert bench.ksi.reservations() == []
    assert bench.ksi.registry() == []


def stdout_lines(result: subprocess.CompletedProcess[str], word: str) -> list[str]:
    return [line for line in result.stdout.splitlines() if f" cleanup: {word} " in line]


def port_of(held: Held) -> int:
    return int(json.loads((held.run_dir / "run.json").read_text())["port"])


# --- ksi list -------------------------------------------------------------------------------------------------

def test_list_shows_running_and_stale_clusters(bench: Bench) -> None:
    alive, killed = bench.start(), bench.start()
    killed.kill()

    clusters = bench.listing()
    assert set(clusters) == {alive.name, killed.name}
    assert clusters[alive.name]["state"] == "running"
    assert clusters[alive.name]["reason"] == f"ksi process {alive.ksi_pid} is alive"
    assert clusters[killed.name]["state"] == "stale"
    assert clusters[killed.name]["reason"] == f"ksi process {killed.ksi_pid} is gone"
    for held in (alive, killed):
        entry = clusters[held.name]
        assert entry["job_id"] is None and entry["pid"] == held.ksi_pid and entry["record"] == "ok"
        assert entry["run_dir"] == str(held.run_dir) and entry["port"] == port_of(held)
        assert entry["containers"] == 1 and 0 <= entry["age_seconds"] < 120

    table = bench.cli("list")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["NODE", "NAME", "JOB", "STATE", "AGE", "K8S_PORT", "RUN_DIR", "WHY"]
    by_name = {row.split()[1]: row for row in rows}
    assert f"pid {alive.ksi_pid}" in by_name[alive.name] and " running " in by_name[alive.name]
    assert " stale " in by_name[killed.name] and str(port_of(killed)) in by_name[killed.name]

    bench.release(alive)
    assert bench.cli("cleanup").returncode == 0
    assert_nothing_left(bench)


# --- ksi cleanup --stale ------------------------------------------------------------------------------------

def test_cleanup_removes_a_killed_runs_cluster_reservation_and_secrets_and_keeps_a_running_one(bench: Bench) -> None:
    alive, killed = bench.start(), bench.start()
    killed.kill()
    assert bench.nodes(killed.name) and (killed.run_dir / "kubeconfig").exists()
    assert any((killed.run_dir / ".kube-client").iterdir())  # the API client's copies of the key, left behind
    killed_port = port_of(killed)
    assert str(killed_port) in bench.ksi.reservations()

    result = bench.cli("cleanup")
    assert result.returncode == 0, result.stderr
    [deleted] = stdout_lines(result, "deleted")
    assert killed.name in deleted and f"released port {killed_port}" in deleted and "(logs kept)" in deleted
    [kept] = stdout_lines(result, "kept")
    assert alive.name in kept and "is alive" in kept

    assert bench.nodes(killed.name) == []
    assert str(killed_port) not in bench.ksi.reservations()
    assert f"{killed.name}.json" not in bench.ksi.registry()
    assert not (killed.run_dir / "kubeconfig").exists() and not (killed.run_dir / ".kube-client").exists()
    assert (killed.run_dir / "ksi.log").exists() and (killed.run_dir / "workload.log").exists()
    record = json.loads((killed.run_dir / "run.json").read_text())
    assert record["state"] == "cleaned" and "is gone" in record["cleaned"]["reason"]

    assert bench.nodes(alive.name) and (alive.run_dir / "kubeconfig").exists()
    assert f"{alive.name}.json" in bench.ksi.registry()
    bench.release(alive)
    assert_nothing_left(bench)


def test_a_dead_runs_cluster_is_kept_while_a_process_still_uses_it(bench: Bench) -> None:
    """A SIGKILLed ksi takes its workload's process group along; a detached process of the workload's that
    still uses the cluster keeps it from being reclaimed."""
    orphaned = bench.start()
    orphaned.kill()  # also proves the workload died with ksi
    user = bench.claim(orphaned.name)

    entry = bench.listing()[orphaned.name]
    assert entry["state"] == "running" and entry["record"] == "ok" and not entry["reclaimable"]
    assert entry["reason"] == f"ksi process {orphaned.ksi_pid} is gone; process {user.pid} still uses it"
    kept = bench.cli("cleanup")
    assert kept.returncode == 0 and stdout_lines(kept, "deleted") == []
    assert bench.nodes(orphaned.name)

    user.kill()
    user.wait(timeout=10)
    assert [orphaned.name in line for line in stdout_lines(bench.cli("cleanup"), "deleted")] == [True]
    assert_nothing_left(bench)


def test_cleanup_leaves_a_cluster_being_created_alone(bench: Bench) -> None:
    creating = bench.ksi.start("run", str(bench.workload), str(bench.ksi.shared),
                               env={"KSI_SIM_FAULTS": "kind-create:slow=10"})
    wait_for(bench.ksi.registry, 30, "the record written before `kind create`")
    result = bench.cli("cleanup")
    assert result.returncode == 0, result.stderr
    [run_dir] = bench.ksi.run_dirs()
    assert bench.ksi.record(run_dir)["state"] == "creating"  # the cleanup really ran during the create
    assert stdout_lines(result, "deleted") == []
    assert any("is alive" in line for line in stdout_lines(result, "kept"))
    wait_for(lambda: [n for n in os.listdir(bench.marks) if not n.endswith(".tmp")], 60, "the workload")
    (bench.marks / "release").write_text("")
    status, _, err = finish(creating)
    assert status == 0, err
    assert_nothing_left(bench)


def test_a_failed_delete_is_reported_keeps_the_record_and_is_retried(bench: Bench) -> None:
    killed = bench.start()
    killed.kill()
    failing = bench.cli("cleanup", KSI_SIM_FAULTS="kind-delete:fail,nerdctl-rm:fail")
    assert failing.returncode == 1
    [error] = [line for line in failing.stderr.splitlines() if " error: " in line]
    assert f" error: cleanup: could not delete {killed.name}: `nerdctl rm -f -v " in error
    assert "; fix: run `ksi cleanup` again" in error
    assert bench.nodes(killed.name) and f"{killed.name}.json" in bench.ksi.registry()

    retried = bench.cli("cleanup", KSI_SIM_FAULTS="kind-delete:fail")  # kind fails; the label listing does not
    assert retried.returncode == 0, retried.stderr
    assert len(stdout_lines(retried, "deleted")) == 1
    assert_nothing_left(bench)


# --- --job, --all, Slurm job states ---------------------------------------------------------------------------

def test_a_running_jobs_cluster_is_kept_until_the_job_is_named_or_ends(bench: Bench) -> None:
    first = bench.start(SLURM_JOB_ID="4242")
    second = bench.start(SLURM_JOB_ID="4343")
    first.kill()
    second.kill()
    bench.job("4242", "RUNNING")
    bench.job("4343", "COMPLETING")

    clusters = bench.listing()
    assert first.name.startswith("ksi-4242-") and second.name.startswith("ksi-4343-")
    assert clusters[first.name]["state"] == "running" and clusters[first.name]["job_id"] == "4242"
    assert clusters[first.name]["reason"] == f"job 4242 is RUNNING; ksi process {first.ksi_pid} is gone"
    assert clusters[second.name]["state"] == "running"

    kept = bench.cli("cleanup", "--stale")
    assert kept.returncode == 0 and stdout_lines(kept, "deleted") == []
    assert len(stdout_lines(kept, "kept")) == 2

    named = bench.cli("cleanup", "--job", "4242")
    assert named.returncode == 0, named.stderr
    [deleted] = stdout_lines(named, "deleted")
    assert first.name in deleted and "job 4242" in deleted
    assert bench.nodes(first.name) == [] and bench.nodes(second.name)

    bench.job("4343", "COMPLETED")
    assert bench.listing()[second.name]["reason"] == f"job 4343 is COMPLETED; ksi process {second.ksi_pid} is gone"
    bench.job("4343", None)  # MinJobAge later Slurm forgets the job: still stale
    assert bench.listing()[second.name]["reason"].startswith("job 4343 is unknown to Slurm")
    assert bench.cli("cleanup").returncode == 0
    assert_nothing_left(bench)


def test_all_deletes_every_ksi_cluster_but_never_one_ksi_did_not_create(bench: Bench, tmp_path: Path) -> None:
    theirs = tmp_path / "own-kubeconfig"
    created = subprocess.run(["kind", "create", "cluster", "--name", "my-own", "--kubeconfig", str(theirs)],
                             env=bench.ksi.env, capture_output=True, text=True, timeout=60, check=False)
    assert created.returncode == 0, created.stderr
    killed = bench.start(SLURM_JOB_ID="77")
    killed.kill()
    bench.job("77", "RUNNING")
    alive = bench.start()

    dry = bench.cli("cleanup", "--all", "--dry-run")
    assert {line.split()[4] for line in stdout_lines(dry, "would")} == {killed.name, alive.name}
    assert "my-own" not in bench.cli("list").stdout

    result = bench.cli("cleanup", "--all")
    assert result.returncode == 0, result.stderr
    assert len(stdout_lines(result, "deleted")) == 2
    assert bench.nodes(killed.name) == [] and bench.nodes(alive.name) == []
    assert bench.nodes("my-own") == ["my-own-control-plane"]
    (bench.marks / "release").write_text("")
    finish(alive.process)  # its cluster vanished under it: whatever it reports, nothing may be left
    deleted = subprocess.run(["kind", "delete", "cluster", "--name", "my-own", "--kubeconfig", str(theirs)],
                             env=bench.ksi.env, capture_output=True, text=True, timeout=60, check=False)
    assert deleted.returncode == 0, deleted.stderr
    assert_nothing_left(bench)


@pytest.mark.parametrize("job", ["12; rm -rf ~", "123_4"])
def test_job_must_be_a_job_id(bench: Bench, job: str) -> None:
    result = bench.cli("cleanup", "--job", job)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert f"--job {job!r} is not a numeric Slurm job id" in line and "squeue -h -j" in line


def test_a_job_slurm_cannot_tell_about_is_kept_until_it_answers(bench: Bench) -> None:
    recorded = bench.start(SLURM_JOB_ID="5151")
    unrecorded = bench.start(SLURM_JOB_ID="5252")
    recorded.kill()
    unrecorded.kill()
    (bench.ksi.state / "clusters" / f"{unrecorded.name}.json").unlink()
    (bench.slurm / "down").write_text("")

    clusters = bench.listing()
    assert clusters[recorded.name]["state"] == "unknown" and not clusters[recorded.name]["reclaimable"]
    assert "Slurm did not answer about job 5151" in clusters[recorded.name]["reason"]
    assert "kept until Slurm answers" in clusters[unrecorded.name]["reason"]
    kept = bench.cli("cleanup")
    assert kept.returncode == 0 and stdout_lines(kept, "deleted") == []
    assert bench.nodes(recorded.name) and bench.nodes(unrecorded.name)

    named = bench.cli("cleanup", "--job", "5151")  # the epilog names the job: no need to ask Slurm
    assert named.returncode == 0 and [recorded.name in line for line in stdout_lines(named, "deleted")] == [True]
    (bench.slurm / "down").unlink()  # Slurm is back and has forgotten job 5252
    assert [unrecorded.name in line for line in stdout_lines(bench.cli("cleanup"), "deleted")] == [True]
    assert_nothing_left(bench)


# --- --dry-run --------------------------------------------------------------------------------------------------

def _snapshot(bench: Bench) -> dict[str, Any]:
    """Every file (content and mode) and directory (mode) of the state and shared directories, and the containers."""
    files = {}
    for root in (bench.ksi.state, bench.ksi.shared):
        for path in sorted(root.rglob("*")):
            mode = oct(path.lstat().st_mode)
            files[str(path)] = f"{mode} {hashlib.sha256(path.read_bytes()).hexdigest()}" if path.is_file() else mode
    containers = sorted((str(c["name"]), bool(c["alive"])) for c in bench.simhost.containers())
    return {"files": files, "containers": containers}


def test_dry_run_changes_nothing(bench: Bench) -> None:
    alive, killed = bench.start(), bench.start()
    killed.kill()
    before = _snapshot(bench)

    stale = bench.cli("cleanup", "--dry-run")
    assert stale.returncode == 0, stale.stderr
    [line] = stdout_lines(stale, "would")
    assert line.startswith("ksi[") and f"would delete {killed.name} (pid {killed.ksi_pid}, stale:" in line
    assert f"release port {port_of(killed)}" in line and f"remove the secrets in {killed.run_dir}" in line
    everything = bench.cli("cleanup", "--all", "--dry-run")
    assert len(stdout_lines(everything, "would")) == 2
    assert _snapshot(bench) == before

    bench.release(alive)
    assert bench.cli("cleanup").returncode == 0
    assert_nothing_left(bench)


# --- damaged or missing records ---------------------------------------------------------------------------------

def test_clusters_with_damaged_or_missing_records_are_found_and_removed(bench: Bench) -> None:
    damaged, missing = bench.start(), bench.start()
    damaged.kill()
    missing.kill()
    (bench.ksi.state / "clusters" / f"{damaged.name}.json").write_text('{"name": "trunc')
    (bench.ksi.state / "clusters" / f"{missing.name}.json").unlink()
    user = bench.claim(damaged.name)  # a process that still uses the cluster

    clusters = bench.listing()
    assert clusters[damaged.name]["state"] == "unknown" and clusters[damaged.name]["record"] == "damaged"
    assert clusters[damaged.name]["reason"] == f"record damaged; process {user.pid} uses it"
    assert clusters[missing.name]["state"] == "unknown" and clusters[missing.name]["record"] == "missing"
    assert clusters[missing.name]["reason"] == "no record; no live ksi process claims it"
    assert clusters[missing.name]["port"] == port_of(missing)  # found through the port reservation

    first = bench.cli("cleanup")
    assert first.returncode == 0, first.stderr
    assert [missing.name in line for line in stdout_lines(first, "deleted")] == [True]
    assert bench.nodes(missing.name) == [] and bench.nodes(damaged.name)
    assert str(port_of(missing)) not in bench.ksi.reservations()

    user.kill()
    user.wait(timeout=10)
    second = bench.cli("cleanup")
    assert second.returncode == 0, second.stderr
    assert [damaged.name in line for line in stdout_lines(second, "deleted")] == [True]
    assert_nothing_left(bench)


# --- concurrency ------------------------------------------------------------------------------------------------

def test_two_cleanups_at_once_delete_each_cluster_exactly_once(bench: Bench) -> None:
    runs = [bench.start(), bench.start()]
    for held in runs:
        held.kill()
    slow = {"KSI_SIM_FAULTS": "kind-delete:slow=1"}
    cleanups = [bench.ksi.start("cleanup", env=slow), bench.ksi.start("cleanup", env=slow)]
    results = [finish(process, timeout=90) for process in cleanups]
    assert [status for status, _, _ in results] == [0, 0], results
    deleted = [line for _, out, _ in results for line in out.splitlines() if " cleanup: deleted " in line]
    assert sorted(line.split()[3] for line in deleted) == sorted(h.name for h in runs)
    assert_nothing_left(bench)


def test_sigterm_stops_a_cleanup_between_clusters_never_inside_one(bench: Bench) -> None:
    runs = [bench.start(), bench.start()]
    for held in runs:
        held.kill()
    cleanup = bench.ksi.start("cleanup", env={"KSI_SIM_FAULTS": "kind-delete:slow=8"})  # a wide window
    [first_delete] = wait_for(lambda: [" ".join(a) for a in bench.simhost.kind_deletes().values()], 60,
                              "the first `kind delete cluster`")
    cleanup.send_signal(signal.SIGTERM)
    status, out, err = finish(cleanup, timeout=60)

    assert status == 128 + signal.SIGTERM, err
    [deleted] = [line for line in out.splitlines() if " cleanup: deleted " in line]
    first, second = (runs if runs[0].name in first_delete else runs[::-1])
    assert first.name in deleted and bench.nodes(first.name) == []  # finished, not cut short
    assert f"{first.name}.json" not in bench.ksi.registry()
    [error] = [line for line in err.splitlines() if " error: " in line]
    assert f"cleanup: stopped by SIGTERM before deleting {second.name}; fix: run `ksi cleanup` again" in error
    assert bench.nodes(second.name) and f"{second.name}.json" in bench.ksi.registry()
    assert not list(bench.ksi.state.glob(".cleanup-*"))

    again = bench.cli("cleanup")
    assert again.returncode == 0 and [second.name in line for line in stdout_lines(again, "deleted")] == [True]
    assert_nothing_left(bench)


def test_a_job_without_clusters_here_does_not_wait_for_another_cleanup(bench: Bench) -> None:
    killed = bench.start()
    killed.kill()
    busy = bench.ksi.start("cleanup", env={"KSI_SIM_FAULTS": "kind-delete:slow=20"})  # holds the lock 20 s
    try:
        wait_for(bench.simhost.kind_deletes, 60, "the first cleanup to delete under its lock")
        other_job = bench.cli("cleanup", "--job", "8888")  # another job's epilog: nothing of it here
        assert other_job.returncode == 0, other_job.stderr
        assert "no clusters of job 8888 to delete" in other_job.stdout
        assert busy.poll() is None  # answered while the lock was still held, instead of queueing behind it
    finally:
        status, out, err = finish(busy, timeout=90)
    assert status == 0 and killed.name in out, err
    assert_nothing_left(bench)


def test_remove_stale_is_what_ksi_run_calls_before_creating(bench: Bench, caplog: pytest.LogCaptureFixture) -> None:
    alive, killed = bench.start(), bench.start()
    killed.kill()
    loaded, problems = settings_mod.load({"KSI_STATE_DIR": str(bench.ksi.state)})
    assert problems == []
    with caplog.at_level(logging.INFO, logger="ksi"):
        assert remove_stale(loaded, bench.ksi.env) == [killed.name]
    assert any(f"cleanup: removed stale cluster {killed.name}" in r.getMessage() for r in caplog.records)
    assert bench.nodes(killed.name) == [] and bench.nodes(alive.name)
    assert remove_stale(loaded, bench.ksi.env) == []
    bench.release(alive)
    assert_nothing_left(bench)


# --- another user ------------------------------------------------------------------------------------------------

OTHER_USER = "ksitest"  # created by the Slurm test bed (its second user)
# The second user runs the simulated tools with Debian's Python (PyYAML and cryptography from apt, which
# .ci/run installs): this test's own interpreter may live under /root, which other users cannot read.
OTHER_PYTHON = "/usr/bin/python3"


def other_python_ready() -> bool:
    """True when Debian's Python can run the simulated tools for the second user."""
    probe = [OTHER_PYTHON, "-c", "import yaml, cryptography"]
    return Path(OTHER_PYTHON).exists() and subprocess.run(probe, capture_output=True, check=False).returncode == 0


def as_other_user(simhost: SimHost, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (a simulated tool) as the second user, who sees the same simulated host."""
    home = Path(tempfile.mkdtemp(prefix="ksi-other-", dir="/var/tmp"))
    shutil.chown(home, OTHER_USER, OTHER_USER)
    env = [f"PATH={simhost.bin_dir}:/usr/bin:/bin", f"HOME={home}", f"KSI_SIM_ROOT={simhost.root}",
           "KIND_EXPERIMENTAL_PROVIDER=nerdctl"]
    return subprocess.run(["setpriv", f"--reuid={OTHER_USER}", f"--regid={OTHER_USER}", "--init-groups",
                           "env", "-i", *env, *argv], cwd=home, capture_output=True, text=True, timeout=60,
                          check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to a second user needs root")
def test_another_users_clusters_are_never_touched(bench: Bench, slurm_bed: SlurmBed) -> None:
    assert slurm_bed.second_user == OTHER_USER  # the bed creates the user on a fresh machine
    if not other_python_ready():
        pytest.skip(f"{OTHER_PYTHON} lacks PyYAML or cryptography (apt-get install python3-yaml python3-cryptography)")
    name = "ksi-local-other1"
    made = as_other_user(bench.simhost, "kind", "create", "cluster", "--name", name, "--kubeconfig", "kc")
    assert made.returncode == 0, made.stderr
    try:
        theirs = [c for c in bench.simhost.containers() if c["labels"].get(LABEL) == name and c["alive"]]
        assert len(theirs) == 1, bench.simhost.containers()
        mine = bench.start()
        mine.kill()

        assert set(bench.listing()) == {mine.name}
        result = bench.cli("cleanup", "--all")
        assert result.returncode == 0, result.stderr
        assert [mine.name in line for line in stdout_lines(result, "deleted")] == [True]
        assert [c for c in bench.simhost.containers() if c["labels"].get(LABEL) == name and c["alive"]] == theirs
    finally:
        gone = as_other_user(bench.simhost, "kind", "delete", "cluster", "--name", name, "--kubeconfig", "kc")
        assert gone.returncode == 0, gone.stderr
    assert_nothing_left(bench)


def test_remove_stale_lets_a_stop_signal_through(tmp_path: Path) -> None:
    """A TERM that arrives while `ksi run` removes stale clusters stops the run; it is not a cleanup warning."""
    from ksi.errors import Interrupted
    from ksi.host.signals import SignalGuard

    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in ("nerdctl", "kind"):  # stand-ins that deliver the TERM Slurm would send mid-listing
        (fake / tool).write_text("#!/bin/sh\nkill -TERM $PPID\nexec sleep 30\n")
        (fake / tool).chmod(0o755)
    loaded, _ = settings_mod.load({"KSI_STATE_DIR": str(tmp_path / "state")})
    env = {"PATH": f"{fake}:/usr/bin:/bin"}
    with SignalGuard().installed(), pytest.raises(Interrupted):
        remove_stale(loaded, env)

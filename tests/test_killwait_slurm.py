"""Stopping within Slurm's KillWait, on the real test bed: `srun -N3 ksi run` in batch jobs, stopped by scancel
and by the time limit's --signal warning, on beds with KillWait 5 s and 30 s.

A workload that ignores SIGTERM loses (part of) its grace period, never the cluster: every node's cluster
and node container are gone when the job ends, every task exits 128+N (the leader 137: its workload was
SIGKILLed; the followers 143: SIGTERM), and the leader says in one line what the budget allowed. A
workload that handles SIGTERM keeps its whole grace period when the budget has room for it. Where ksi is
killed anyway (a delete that hangs past KillWait), the epilog removes what is left.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ksi_helpers import KSI, REPO, wait_for
from tests.simhost.plugin import SimHost
from tests.test_multinode import Multi, task_exits
from tests.testbed.plugin import SlurmBed

pytestmark = pytest.mark.slurm

GRACE = 600  # KSI_GRACE_PERIOD: more than any budget here, so every stop shortens it
LEAD = 15  # #SBATCH --signal=TERM@15
# slurmctld sends the --signal warning at its first check (every 30 s) once the limit is LEAD + 30 s away:
# an end time set this far ahead is always preceded by the warning.
LIMIT_AHEAD = LEAD + 30
LIMIT_CHECK = 30  # seconds between slurmctld's time-limit checks (PERIODIC_TIMEOUT)
# Marks the workload leaves in $MARKS: <job>.started once it runs, <job>.term when it first sees SIGTERM.
# Times come from bash's own $EPOCHREALTIME: a `date` child could die of the same signal before it writes.
STUBBORN = """\
#!/bin/bash
trap '[ -e "$MARKS/$SLURM_JOB_ID.term" ] || echo "$EPOCHREALTIME" > "$MARKS/$SLURM_JOB_ID.term"' TERM
echo "$EPOCHREALTIME" > "$MARKS/$SLURM_JOB_ID.started"
while true; do sleep 0.1 & wait $!; done  # a trap runs as soon as `wait` is interrupted
"""
# Cleans up for 2 s on SIGTERM (ignoring further ones; a killed sleep does not cut the 2 s short), exits 0.
WELL_BEHAVED = """\
#!/bin/bash
tidy() {
  trap '' TERM
  echo "$EPOCHREALTIME" > "$MARKS/$SLURM_JOB_ID.term"
  local until=$(( ${EPOCHREALTIME/./} + 2000000 ))
  while (( ${EPOCHREALTIME/./} < until )); do sleep 0.1; done
  echo "$EPOCHREALTIME" > "$MARKS/$SLURM_JOB_ID.cleaned"
  exit 0
}
trap tidy TERM
echo "$EPOCHREALTIME" > "$MARKS/$SLURM_JOB_ID.started"
while true; do sleep 0.1; done
"""
HELD = """\
#!/bin/bash
echo "$EPOCHREALTIME" > "$MARKS/$SLURM_JOB_ID.started"
sleep 300
"""
# The leader's line when the stop budget shortens the grace (to nothing when even the teardown does not fit).
STOP_LINE = re.compile(r"^ksi\[(?P<node>[^\]]+)\] stop: (?P<budget>[\d.]+) s until Slurm's SIGKILL \((?P<why>.+?)\); "
                       r"the teardown here needs up to [\d.]+ s \((?P<teardown>[^)]+)\) \+ [\d.]+ s margin(?:, so the "
                       rf"workload gets (?P<grace>[\d.]+) s of KSI_GRACE_PERIOD={GRACE} s|: more than the budget, so "
                       rf"the workload gets no grace \(KSI_GRACE_PERIOD={GRACE} s\))$", re.MULTILINE)


@dataclass
class Jobs:
    """Batch jobs running ``srun -N3 ksi run`` on one bed, with the marks their workloads leave."""

    run: Multi
    marks: Path

    @property
    def bed(self) -> SlurmBed:
        return self.run.bed

    def write(self, name: str, text: str) -> Path:
        path = self.run.shared / name
        path.write_text(text)
        path.chmod(0o755)
        return path

    def submit(self, workload: Path, *directives: str, env: dict[str, str] | None = None) -> str:
        """Submit a job whose script has ``directives`` as #SBATCH lines; return its id (output in <id>.out)."""
        script = self.write(f"job-{uuid.uuid4().hex[:8]}.sh", "#!/bin/bash\n" + "".join(
            f"#SBATCH {d}\n" for d in directives) + shlex.join(
            ["srun", "-N3", "--ntasks-per-node=1", *self.run.ksi_argv(workload)]) + "\n")
        result = self.bed.run(["sbatch", "--parsable", "-N3", "-o", str(self.run.shared / "%j.out"), str(script)],
                              env={**self.run.env, **(env or {})}, cwd=self.run.shared, timeout=30)
        assert result.returncode == 0, result.stderr
        job = result.stdout.strip().split(";")[0]
        self.run.jobs.append(job)
        return job

    def mark(self, job: str, what: str) -> float | None:
        path = self.marks / f"{job}.{what}"
        return float(path.read_text()) if path.exists() and path.read_text().strip() else None

    def wait_started(self, *jobs: str) -> None:
        for job in jobs:
            wait_for(lambda job=job: self.mark(job, "started"), 90, f"the workload of job {job}")  # type: ignore[misc]

    def ended(self, job: str) -> bool:
        return not any(line.split()[0] == job for line in self.bed.busy()[0])

    def wait_ended(self, job: str, timeout: float) -> tuple[str, float]:
        """Wait until ``job`` has left the queue; return its output and the time it was seen gone."""
        wait_for(lambda: self.ended(job), timeout, f"job {job} to end", poll=0.2)
        return (self.run.shared / f"{job}.out").read_text(), time.time()

    def ksi_ended(self, job: str) -> float:
        """Return when the last ksi of ``job`` finished (run.json's ``ended`` of every node, three of them)."""
        ended = [json.loads(path.read_text()).get("ended") for path in
                 self.run.shared.glob(f"ksi-runs/{job}.*/nodes/*/run.json")]
        assert len(ended) == 3 and all(isinstance(e, float) for e in ended), ended
        return float(max(ended))

    def clusters_of(self, job: str) -> list[str]:
        """Return the node containers of ``job``'s clusters still on record on the simulated hosts."""
        return [f"{c['host']}/{c['name']} ({'alive' if c['alive'] else c['status']})"
                for c in self.run.simhost.containers() if str(c["name"]).startswith(f"ksi-{job}-")]


@pytest.fixture
def jobs_on(slurm_bed_with_kill_wait: Callable[[int], SlurmBed], simhost: SimHost,
            request: pytest.FixtureRequest) -> Iterator[Callable[[int], Jobs]]:
    """Return a function that sets up Jobs on the bed with KillWait S (cancelling their jobs at the end)."""
    made: list[Jobs] = []

    def make(kill_wait: int) -> Jobs:
        bed = slurm_bed_with_kill_wait(kill_wait)
        bed.wait_idle(timeout=kill_wait + 60)  # the session's bed is waited for by the plugin; this one is not
        shared = bed.shared_dir(request.node.name[:40])
        marks = shared / "marks"
        marks.mkdir()
        state_dir = bed.private_dir / f"ksi-state-{shared.name}"
        env = simhost.env(bed.env(), KSI_STATE_DIR=str(state_dir), KSI_SYSTEMD_SCOPE="never",
                          KSI_RENDEZVOUS_TIMEOUT="20", KSI_LEADER_TIMEOUT="10", KSI_GRACE_PERIOD=str(GRACE),
                          MARKS=str(marks))
        jobs = Jobs(Multi(bed, simhost, shared, env, state_dir), marks)
        made.append(jobs)
        return jobs

    yield make
    for jobs in made:
        if jobs.run.jobs:
            jobs.bed.run(["scancel", *jobs.run.jobs], timeout=30)


def stopped_cleanly(jobs: Jobs, job: str, out: str, why: str, signalled: float, budget: float) -> tuple[float, float]:
    """Check a job whose SIGTERM-ignoring workload was stopped at ``signalled`` (or a little later), ``budget``
    seconds before Slurm's SIGKILL.

    Return the grace the leader gave the workload and how long after the signal the last ksi ended.
    """
    leader = jobs.bed.node_names[0]
    took = jobs.ksi_ended(job) - signalled
    assert took < budget, f"the last ksi ended {took:.1f} s after the signal, {budget:.1f} s were left\n{out}"
    assert task_exits(out) == {0: 137, 1: 143, 2: 143}, out  # nobody was SIGKILLed by Slurm ("Killed")
    stops = [m for m in STOP_LINE.finditer(out) if m["node"] == leader]
    assert len(stops) == 1, out  # one line, from the leader (the followers' teardown fits: they say nothing)
    stop = stops[0]
    assert re.fullmatch(why, stop["why"]), stop[0]
    grace = float(stop["grace"] or 0)
    killed = re.search(rf"^ksi\[{re.escape(leader)}\] workload: still running after ([\d.]+) s; killing it$", out,
                       re.MULTILINE)
    assert killed is not None, out  # the grace counts from the signal: a little of it passed before the wait
    assert grace - 1 <= float(killed[1]) <= grace, out
    assert "teardown: done in" in out and "teardown: incomplete" not in out, out
    assert jobs.clusters_of(job) == [], out
    return grace, took


def test_every_stop_ends_before_slurms_sigkill_with_killwait_5_and_30_s(jobs_on: Callable[[int], Jobs],
                                                                        simhost: SimHost) -> None:
    """On the beds with KillWait 5 s and 30 s at once (the waits for the time limits overlap).

    On each bed a SIGTERM-ignoring workload is stopped by scancel, another by the warning of --signal=TERM@15
    with its time limit brought near; on the 30 s bed a well-behaved workload is then stopped by scancel
    while the time limits approach.
    """
    beds = {kill_wait: jobs_on(kill_wait) for kill_wait in (5, 30)}
    # A node that ran ksi before knows how long its deletes take: on the KillWait 5 s bed that, not
    # KSI_TEARDOWN_TIMEOUT (20 s, more than the whole budget), is what the teardown reserves.
    warm = beds[5].run.srun(beds[5].write("true.sh", "#!/bin/sh\ntrue\n"), timeout=120)
    assert warm.returncode == 0, warm.stderr
    limited, cancelled, ends = {}, {}, {}
    for kill_wait, jobs in beds.items():
        workload = jobs.write("stubborn.sh", STUBBORN)
        limited[kill_wait] = jobs.submit(workload, f"--signal=TERM@{LEAD}", "--time=10")
        cancelled[kill_wait] = jobs.submit(workload)
    for kill_wait, jobs in beds.items():
        jobs.wait_started(limited[kill_wait], cancelled[kill_wait])
    scancelled = {}
    for kill_wait, jobs in beds.items():
        ends[kill_wait] = end = int(time.time()) + LIMIT_AHEAD
        moved = jobs.bed.run(["scontrol", "update", f"JobId={limited[kill_wait]}",
                              f"EndTime={time.strftime('%Y-%m-%dT%H:%M:%S', time.localtime(end))}"], timeout=30)
        assert moved.returncode == 0, moved.stderr
        scancelled[kill_wait] = time.time()  # Slurm's SIGTERM comes a little later: a bound on the time it left
        jobs.bed.run(["scancel", cancelled[kill_wait]], check=True, timeout=30)

    for kill_wait, jobs in beds.items():
        out, _ = jobs.wait_ended(cancelled[kill_wait], kill_wait + 30)
        teardown = "2 x the one delete measured on this node" if kill_wait == 5 else \
            "KSI_TEARDOWN_TIMEOUT; no delete measured on this node yet"
        grace, took = stopped_cleanly(jobs, cancelled[kill_wait], out,
                                      rf"KillWait {kill_wait} s from scontrol show config", scancelled[kill_wait],
                                      kill_wait)
        assert f"({teardown})" in out, out
        print(f"KillWait {kill_wait} s, scancel: grace {grace:g} s, every ksi done {took:.1f} s after SIGTERM")

    well_behaved_keeps_its_grace(beds[30])  # while the time limits approach

    for kill_wait, jobs in beds.items():
        job, end = limited[kill_wait], ends[kill_wait]
        out, _ = jobs.wait_ended(job, end - time.time() + LIMIT_CHECK + kill_wait + 30)
        warned = jobs.mark(job, "term")  # Slurm's warning reaches every process of the step, the workload too
        assert warned is not None and LEAD - 2 <= end - warned <= LEAD + LIMIT_CHECK + 2, out
        left = end - warned + kill_wait
        grace, took = stopped_cleanly(jobs, job, out, rf"the time limit in \d+ s \+ KillWait {kill_wait} s", warned,
                                      left)
        assert grace > left - (1 + 0.1 * left) - 20 - 1  # the time to the limit counts, not KillWait alone
        print(f"KillWait {kill_wait} s, --signal=TERM@{LEAD}: warned {end - warned:.1f} s before the limit, grace "
              f"{grace:g} s, every ksi done {took:.1f} s after the warning")
    for jobs in beds.values():
        jobs.bed.wait_idle(timeout=60)
        assert jobs.run.leftovers() == {}
    simhost.assert_clean()


def well_behaved_keeps_its_grace(jobs: Jobs) -> None:
    """Stop a workload that cleans up for 2 s on SIGTERM: with KillWait 30 s it gets its whole 5 s of grace."""
    job = jobs.submit(jobs.write("tidy.sh", WELL_BEHAVED), env={"KSI_GRACE_PERIOD": "5"})
    jobs.wait_started(job)
    jobs.bed.run(["scancel", job], check=True, timeout=30)
    out, _ = jobs.wait_ended(job, 60)
    leader = jobs.bed.node_names[0]
    # 30 s of KillWait hold 5 s of grace + a teardown (at most 20 s, KSI_TEARDOWN_TIMEOUT) + 4 s of margin.
    assert f"ksi[{leader}] workload: forwarding SIGTERM, waiting up to 5 s" in out, out
    assert " stop: " not in out and "killing it" not in out, out
    cleaned, term = jobs.mark(job, "cleaned"), jobs.mark(job, "term")
    assert cleaned is not None and term is not None and cleaned - term >= 2  # its 2 s of clean-up were kept
    assert task_exits(out) == {1: 143, 2: 143}, out  # the leader exits with the workload's own 0
    assert jobs.clusters_of(job) == [], out
    print(f"KillWait 30 s, scancel, well-behaved: every ksi done {jobs.ksi_ended(job) - term:.1f} s after SIGTERM")


def test_the_epilog_removes_what_a_hung_delete_left_when_killwait_ran_out(jobs_on: Callable[[int], Jobs],
                                                                         simhost: SimHost) -> None:
    jobs = jobs_on(5)
    bed, node = jobs.bed, jobs.bed.node_names[0]
    hook = bed.epilog_dir / f"50-ksi-{uuid.uuid4().hex[:8]}"
    ksi = jobs.write("ksi", f'#!/bin/sh\nexec {KSI} "$@"\n')
    hook.write_text("#!/bin/sh\n" + "".join(f"export {k}='{v}'\n" for k, v in {
        "KSI_EPILOG_KSI": ksi,
        "KSI_EPILOG_PATH": f"{simhost.bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin",
        "KSI_EPILOG_STATE_DIR": jobs.run.state_dir,
        "KSI_EPILOG_PASS": "KSI_SIM_ROOT",
        "KSI_SIM_ROOT": simhost.root,
        "KSI_EPILOG_TIMEOUT": "40",
    }.items()) + f"exec {REPO / 'setup' / 'ksi-epilog.sh'}\n")
    hook.chmod(0o755)
    try:
        script = jobs.write("job.sh", "#!/bin/sh\n" + shlex.join(
            ["srun", "-N1", "-n1", *jobs.run.ksi_argv(jobs.write("held.sh", HELD))]) + "\n")
        submitted = bed.run(["sbatch", "--parsable", "-N1", "-w", node, "-o", str(jobs.run.shared / "%j.out"),
                             str(script)], env={**jobs.run.env, "KSI_SIM_FAULTS": "kind-delete:hang,nerdctl-rm:hang"},
                            cwd=jobs.run.shared, timeout=30)
        assert submitted.returncode == 0, submitted.stderr
        job = submitted.stdout.strip().split(";")[0]
        jobs.run.jobs.append(job)
        jobs.wait_started(job)
        bed.run(["scancel", job], check=True, timeout=30)
        log = bed.state_dir / "log" / f"epilog-{node}.log"
        wait_for(lambda: log.exists() and f"ksi cleanup --job {job} done" in log.read_text(), 90,
                 f"the epilog of job {job}")
        out = (jobs.run.shared / f"{job}.out").read_text()
        assert "teardown: done in" not in out, out  # ksi could not delete its cluster within KillWait...
        assert re.search(rf"cleanup: deleted ksi-{job}-\S+ \(job {job}", log.read_text()), log.read_text()
        assert jobs.clusters_of(job) == []  # ...the epilog did
    finally:
        hook.unlink()
    bed.wait_idle(timeout=60)
    jobs.run.assert_clean(idle=bed.node_names[1:])

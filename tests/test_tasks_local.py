"""`ksi tasks run --local` and `ksi tasks status` through the installed command: results, resume, signals."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.ksi_helpers import KSI, finish, isolated_environ, wait_for


class Tasks:
    """Runs `ksi tasks ...` in a shared directory (the working directory, as without a ksi run)."""

    def __init__(self, shared: Path) -> None:
        self.shared = shared
        self.env = isolated_environ()
        self.env.pop("KUBECONFIG", None)

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([KSI, "tasks", *args], cwd=self.shared, env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([KSI, "tasks", *args], cwd=self.shared, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def spec(self, body: str, name: str = "spec.yaml") -> str:
        (self.shared / name).write_text(body)
        return name

    def results(self, experiment: str) -> Path:
        return self.shared / "ksi-results" / experiment

    def result(self, experiment: str, task: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.results(experiment) / "tasks" / task / "result.json").read_text())
        return data

    def executions(self) -> collections.Counter[str]:
        path = self.shared / "executions.log"
        return collections.Counter(path.read_text().split()) if path.exists() else collections.Counter()


@pytest.fixture
def tasks(tmp_path: Path) -> Tasks:
    shared = tmp_path / "shared 'dir'"
    shared.mkdir()
    return Tasks(shared)


SWEEP = """
name: sweep
image: busybox
command: "echo {{x}} >> executions.log; echo out {{x}}; echo err {{x}} >&2; test {{x}} != {bad}"
parallelism: 3
tasks:
  grid: {{x: [a, b, c, d, e, f]}}
"""


def test_local_run_writes_results_and_exits_1_naming_the_failed_task(tasks: Tasks) -> None:
    spec = tasks.spec(SWEEP.format(bad="c"))
    done = tasks.run("run", spec, "--local")
    assert done.returncode == 1, done.stderr
    assert tasks.executions() == collections.Counter("abcdef")
    results = tasks.results("sweep")
    assert sorted(p.name for p in (results / "tasks").iterdir()) == [f"sweep-{x}" for x in "abcdef"]
    ok = tasks.result("sweep", "sweep-a")
    assert (ok["state"], ok["reason"], ok["exit_code"], ok["params"], ok["log"]) == (
        "succeeded", "Completed", 0, {"x": "a"}, "log.txt")
    assert [a["attempt"] for a in ok["attempts"]] == [1]
    assert ok["start"] <= ok["end"] and ok["node"]
    assert (results / "tasks" / "sweep-a" / "log.txt").read_text() == "out a\nerr a\n"
    bad = tasks.result("sweep", "sweep-c")
    assert (bad["state"], bad["reason"], bad["exit_code"]) == ("failed", "Error", 1)
    summary = json.loads((results / "summary.json").read_text())
    assert (summary["total"], summary["succeeded"], summary["failed"]) == (6, 5, 1)
    assert [f["task"] for f in summary["failed_tasks"]] == ["sweep-c"]
    # the summary table names the failed task and its log
    table = [line for line in done.stderr.splitlines() if "sweep-c " in line and "Error" in line]
    assert table and str(results / "tasks" / "sweep-c" / "log.txt") in table[-1]
    assert "6 tasks: 5 succeeded, 1 failed" in done.stderr


def test_rerun_runs_nothing_done_rerun_failed_only_failed_force_all(tasks: Tasks) -> None:
    spec = tasks.spec(SWEEP.format(bad="c"))
    assert tasks.run("run", spec, "--local").returncode == 1
    again = tasks.run("run", spec, "--local")
    assert again.returncode == 1  # not every task has succeeded
    assert tasks.executions() == collections.Counter("abcdef")
    assert "0 to run (5 done, 1 failed before; --rerun-failed runs them)" in again.stderr
    tasks.spec(SWEEP.format(bad="z"))  # the failing task is fixed
    fixed = tasks.run("run", spec, "--local", "--rerun-failed")
    assert fixed.returncode == 0, fixed.stderr
    assert tasks.executions() == collections.Counter("abcdef") + collections.Counter("c")
    attempts = tasks.result("sweep", "sweep-c")["attempts"]
    assert [(a["attempt"], a["reason"], a["log"]) for a in attempts] == [(1, "Error", "log.1.txt"),
                                                                          (2, "Completed", "log.txt")]
    assert (tasks.results("sweep") / "tasks" / "sweep-c" / "log.1.txt").exists()
    forced = tasks.run("run", spec, "--local", "--force")
    assert forced.returncode == 0
    assert tasks.executions() == collections.Counter("abcdef" * 2 + "c")


def test_changed_parameters_of_an_existing_task_are_refused_naming_it(tasks: Tasks) -> None:
    spec = tasks.spec('name: seeds\nimage: i\ncommand: "echo {x} {_seed}"\ntasks: {grid: {x: [a, b], _seed: [1]}}\n')
    assert tasks.run("run", spec, "--local").returncode == 0
    tasks.spec('name: seeds\nimage: i\ncommand: "echo {x} {_seed}"\ntasks: {grid: {x: [a, b], _seed: [2]}}\n')
    refused = tasks.run("run", spec, "--local")
    assert refused.returncode == 2
    errors = [line for line in refused.stderr.splitlines() if "error:" in line]
    assert len(errors) == 2
    assert "task seeds-a has a result in this results directory with other parameters (x=a, _seed=1) than the " \
           "SPEC gives it now (x=a, _seed=2)" in errors[0]
    assert "seeds-b" in errors[1]


def test_dry_run_prints_names_and_commands_and_creates_nothing(tasks: Tasks) -> None:
    spec = tasks.spec(SWEEP.format(bad="c"))
    dry = tasks.run("run", spec, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[0] == ("sweep-a  sh -c 'echo a >> executions.log; echo out a; echo err a >&2; "
                                          "test a != c'")
    assert len(dry.stdout.splitlines()) == 6
    assert "6 tasks, 6 would run" in dry.stderr
    assert not (tasks.shared / "ksi-results").exists()
    assert tasks.executions() == collections.Counter()


def test_bad_spec_is_refused_with_every_problem_before_anything_is_created(tasks: Tasks) -> None:
    spec = tasks.spec("name: Bad_Name\nimage: i\ncommand: 'echo {nope}'\nparallelism: -1\ntasks: {seq: 2}\n")
    refused = tasks.run("run", spec, "--local")
    assert refused.returncode == 2
    errors = [line for line in refused.stderr.splitlines() if " error: spec: " in line]
    assert len(errors) == 3, refused.stderr
    assert not (tasks.shared / "ksi-results").exists()


def test_cluster_run_outside_a_ksi_run_says_what_to_do(tasks: Tasks) -> None:
    spec = tasks.spec(SWEEP.format(bad="c"))
    refused = tasks.run("run", spec)
    assert refused.returncode == 2
    assert "KUBECONFIG is not set" in refused.stderr and "--local" in refused.stderr


def test_status_offline_counts_and_json(tasks: Tasks) -> None:
    spec = tasks.spec(SWEEP.format(bad="c"))
    tasks.run("run", spec, "--local")
    results = str(tasks.results("sweep"))
    status = tasks.run("status", results)
    assert status.returncode == 1
    assert status.stdout.splitlines()[0] == f"sweep: 6 tasks: 5 succeeded, 1 failed (results: {results})"
    assert "sweep-c" in status.stdout.splitlines()[-1]
    report = json.loads(tasks.run("status", results, "--json").stdout)
    assert (report["total"], report["succeeded"], report["failed"], report["pending"]) == (6, 5, 1, 0)
    assert {t["task"]: t["state"] for t in report["tasks"]}["sweep-c"] == "failed"
    tasks.spec(SWEEP.format(bad="z"))
    tasks.run("run", spec, "--local", "--rerun-failed")
    assert tasks.run("status", results).returncode == 0
    missing = tasks.run("status", str(tasks.shared))
    assert missing.returncode == 2 and "is not a results directory" in missing.stderr


def test_failures_retried_only_with_retry_failed_and_within_retries(tasks: Tasks) -> None:
    body = 'name: flaky\nimage: i\ncommand: "echo {{x}} >> executions.log; exit 3"\nretries: 2\n' \
           "retry_failed: {retry}\ntasks: {{grid: {{x: [a]}}}}\n"
    spec = tasks.spec(body.format(retry="false"))
    assert tasks.run("run", spec, "--local").returncode == 1
    assert tasks.executions() == collections.Counter("a")
    spec = tasks.spec(body.format(retry="true"))
    assert tasks.run("run", spec, "--local", "--rerun-failed").returncode == 1
    assert tasks.executions() == collections.Counter("aaaa")  # one run, then one plus two retries
    attempts = tasks.result("flaky", "flaky-a")["attempts"]
    assert [(a["reason"], a["exit_code"]) for a in attempts] == [("Error", 3)] * 4
    assert sorted(p.name for p in (tasks.results("flaky") / "tasks" / "flaky-a").iterdir()) == [
        "log.1.txt", "log.2.txt", "log.3.txt", "log.txt", "result.json"]


def test_timeout_ends_an_attempt_as_deadline_exceeded(tasks: Tasks) -> None:
    spec = tasks.spec('name: slow\nimage: i\ncommand: "echo started; exec sleep 60"\ntimeout: 1s\ntasks: {seq: 1}\n')
    done = tasks.run("run", spec, "--local")
    assert done.returncode == 1
    result = tasks.result("slow", "slow-0")
    assert (result["reason"], result["state"], result["exit_code"]) == ("DeadlineExceeded", "failed", None)
    assert (tasks.results("slow") / "tasks" / "slow-0" / "log.txt").read_text() == "started\n"


def test_parallelism_is_never_exceeded_and_logs_exist_only_for_ended_attempts(tasks: Tasks) -> None:
    # Each task counts the tasks running with it; tasks 0-2 then wait until the test lets them end.
    body = """
name: cap
image: i
command: "mkdir running/{index} && ls running | wc -l >> counts && touch started.{index} &&
  while [ {index} -lt 3 ] && [ ! -e go ]; do sleep 0.02; done; rmdir running/{index}"
parallelism: 3
tasks: {seq: 12}
"""
    (tasks.shared / "running").mkdir()
    spec = tasks.spec(body)
    process = tasks.start("run", spec, "--local")
    try:
        wait_for(lambda: all((tasks.shared / f"started.{i}").exists() for i in range(3)), 30, "tasks 0-2 to start")
        task_dir = tasks.results("cap") / "tasks"
        for i in range(3):  # running: no log, no result yet
            assert not (task_dir / f"cap-{i}" / "log.txt").exists()
            assert not (task_dir / f"cap-{i}" / "result.json").exists()
        (tasks.shared / "go").touch()
        status, _, err = finish(process, 60)
    finally:
        if process.poll() is None:
            process.kill()
    assert status == 0, err
    counts = [int(c) for c in (tasks.shared / "counts").read_text().split()]
    assert len(counts) == 12 and max(counts) <= 3
    assert all((task_dir / f"cap-{i}" / "log.txt").exists() for i in range(12))


def test_stop_signal_records_running_attempts_interrupted_and_the_next_run_continues(tasks: Tasks) -> None:
    body = """
name: stop
image: i
command: "echo {index} >> executions.log; touch started.{index}; [ {index} -lt 2 ] || exec sleep 60"
parallelism: 2
tasks: {seq: 5}
"""
    spec = tasks.spec(body)
    process = tasks.start("run", spec, "--local")
    try:
        wait_for(lambda: (tasks.shared / "started.2").exists() and (tasks.shared / "started.3").exists(), 30,
                 "tasks 2 and 3 to run")
        process.send_signal(signal.SIGTERM)
        status, _, err = finish(process, 30)
    finally:
        if process.poll() is None:
            process.kill()
    assert status == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM, the next run continues" in err
    states = {i: tasks.result("stop", f"stop-{i}")["reason"] for i in range(4)}
    assert states == {0: "Completed", 1: "Completed", 2: "Interrupted", 3: "Interrupted"}
    assert not (tasks.results("stop") / "tasks" / "stop-4").exists()
    summary = json.loads((tasks.results("stop") / "summary.json").read_text())
    assert (summary["interrupted"], summary["pending"], summary["stopped_by"]) == (2, 1, "SIGTERM")
    # no process of the stopped run is left
    assert not any(Path(f"/proc/{pid}").exists() for pid in _task_pids(tasks.shared))
    body2 = body.replace("exec sleep 60", "true")
    tasks.spec(body2)
    second = tasks.run("run", spec, "--local")
    assert second.returncode == 0, second.stderr
    assert tasks.executions() == collections.Counter({"0": 1, "1": 1, "2": 2, "3": 2, "4": 1})
    assert [a["reason"] for a in tasks.result("stop", "stop-2")["attempts"]] == ["Interrupted", "Completed"]


def _task_pids(shared: Path) -> list[int]:
    """Return the pids of processes whose working directory is ``shared``."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if os.readlink(proc / "cwd") == str(shared):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found

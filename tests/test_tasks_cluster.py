"""`ksi run --tasks` on one node of the simulated host: Jobs, reasons, retries, logs, a bad SPEC."""

from __future__ import annotations

import base64
import collections
import contextlib
import json
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.ksi_helpers import KsiRunner, finish, wait_for
from tests.simhost.plugin import SimHost


def write_spec(ksi: KsiRunner, body: str, name: str = "spec.yaml") -> Path:
    path = ksi.shared / name
    path.write_text(body)
    return path


def results(ksi: KsiRunner, experiment: str) -> Path:
    return ksi.shared / "ksi-results" / experiment


def result(ksi: KsiRunner, experiment: str, task: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((results(ksi, experiment) / "tasks" / task / "result.json").read_text())
    return data


def executions(ksi: KsiRunner) -> collections.Counter[str]:
    path = ksi.shared / "executions.log"
    return collections.Counter(path.read_text().split()) if path.exists() else collections.Counter()


@contextlib.contextmanager
def held(ksi: KsiRunner, spec: Path, **env: str) -> Iterator[subprocess.Popen[str]]:
    """Start ``ksi run --tasks SPEC`` (tasks that wait for the file ``go``, see release); kill it if the test fails."""
    process = ksi.start("run", "--tasks", str(spec), str(ksi.shared), env=env)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def release(ksi: KsiRunner, process: subprocess.Popen[str]) -> tuple[int, str, str]:
    """Let the held tasks end; return how the run ended (status, stdout, stderr)."""
    (ksi.shared / "go").touch()
    return finish(process, 60)


FAULTS = """
name: faults
image: busybox
command: "echo {index} >> executions.log; echo task {index} on $KSI_TASK attempt $KSI_TASK_ATTEMPT; ACTION"
retries: 2
retry_failed: RETRY
parallelism: 4
resources: {cpu: 100m, memory: 64Mi}
tasks: {seq: 4}
"""


def faults(action: str, retry: str) -> str:
    return FAULTS.replace("ACTION", action).replace("RETRY", retry)


def test_each_reason_is_reported_and_only_losses_are_retried_by_default(ksi: KsiRunner, simhost: SimHost) -> None:
    # task 1 exits 3, task 2 is OOM-killed, task 3 runs past its timeout; task 0 succeeds
    action = "case {index} in 1) exit 3;; 2|3) exec sleep 60;; esac"
    spec = write_spec(ksi, faults(action, "false") + "timeout: 6s\n")
    done = ksi.run("run", "--tasks", str(spec), str(ksi.shared), env={"KSI_SIM_FAULTS": "pod/faults-2-*:oom=0.2"})
    assert done.returncode == 1, done.stderr
    reasons = {i: (result(ksi, "faults", f"faults-{i}")["reason"], result(ksi, "faults", f"faults-{i}")["exit_code"])
               for i in range(4)}
    assert reasons == {0: ("Completed", 0), 1: ("Error", 3), 2: ("OOMKilled", 137), 3: ("DeadlineExceeded", None)}
    assert executions(ksi) == collections.Counter("0123")  # no failure is retried without retry_failed
    for i in (1, 2, 3):  # the log of a pod killed at its deadline is kept too: it was followed while it ran
        log = (results(ksi, "faults") / "tasks" / f"faults-{i}" / "log.txt").read_text()
        assert log == f"task {i} on faults-{i} attempt 1\n", i
    for task in ("faults-1", "faults-2", "faults-3"):
        assert any(task in line and "failed" in line for line in done.stderr.splitlines())
    assert "4 tasks: 1 succeeded, 3 failed" in done.stderr
    simhost.assert_clean()


def test_failing_task_retried_with_retry_failed_up_to_retries(ksi: KsiRunner) -> None:
    spec = write_spec(ksi, faults("[ {index} != 1 ] || exit 3", "true"))
    done = ksi.run("run", "--tasks", str(spec), str(ksi.shared))
    assert done.returncode == 1, done.stderr
    assert executions(ksi) == collections.Counter("0111" + "23")
    attempts = result(ksi, "faults", "faults-1")["attempts"]
    assert [(a["attempt"], a["reason"], a["exit_code"], a["log"]) for a in attempts] == [
        (1, "Error", 3, "log.1.txt"), (2, "Error", 3, "log.2.txt"), (3, "Error", 3, "log.txt")]
    task_dir = results(ksi, "faults") / "tasks" / "faults-1"
    assert (task_dir / "log.2.txt").read_text() == "task 1 on faults-1 attempt 2\n"
    assert (task_dir / "log.txt").read_text() == "task 1 on faults-1 attempt 3\n"


def test_logs_only_for_ended_attempts_and_the_job_goes_after_the_result(ksi: KsiRunner) -> None:
    body = """
name: logs
image: busybox
command: "echo started {index}; touch started.{index}; while [ ! -e go ]; do sleep 0.05; done; echo ended {index}"
parallelism: 2
resources: {cpu: 100m}
tasks: {seq: 2}
"""
    with held(ksi, write_spec(ksi, body)) as process:
        wait_for(lambda: (ksi.shared / "started.0").exists() and (ksi.shared / "started.1").exists(), 60,
                 "both tasks to run")
        task_dir = results(ksi, "logs") / "tasks"
        assert not any(task_dir.glob("*/log*.txt")) and not any(task_dir.glob("*/result.json"))
        status, _, err = release(ksi, process)
    assert status == 0, err
    for i in range(2):
        assert (task_dir / f"logs-{i}" / "log.txt").read_text() == f"started {i}\nended {i}\n"


def test_the_clients_copy_of_the_key_stays_in_the_run_directory(ksi: KsiRunner, tmp_path: Path) -> None:
    """The kubernetes client writes the kubeconfig's key to a file for TLS: never to /tmp, gone at the end."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    body = """
name: key
image: busybox
command: "touch started; while [ ! -e go ]; do sleep 0.05; done"
tasks: {seq: 1}
"""
    with held(ksi, write_spec(ksi, body), TMPDIR=str(tmp)) as process:
        wait_for((ksi.shared / "started").exists, 60, "the task to run")
        [run_dir] = ksi.run_dirs()
        kubeconfig = yaml.safe_load((run_dir / "kubeconfig").read_text())
        key = base64.b64decode(kubeconfig["users"][0]["user"]["client-key-data"])
        copies = [p for p in run_dir.glob(".ksi-api-*/*") if p.read_bytes() == key]
        assert len(copies) == 1, sorted(run_dir.rglob("*"))
        assert stat.S_IMODE(copies[0].stat().st_mode) == 0o600
        assert stat.S_IMODE(copies[0].parent.stat().st_mode) == 0o700
        assert list(tmp.iterdir()) == []
        status, _, err = release(ksi, process)
    assert status == 0, err
    assert list(run_dir.glob(".ksi-api-*")) == []


def test_bad_spec_refused_before_any_cluster_with_every_problem(ksi: KsiRunner, simhost: SimHost) -> None:
    spec = write_spec(ksi, "name: x\nimage: i\ncommand: 'echo {nope}'\nretries: many\ntasks: {seq: 0}\n")
    refused = ksi.run("run", "--tasks", str(spec), str(ksi.shared))
    assert refused.returncode == 2
    errors = [line for line in refused.stderr.splitlines() if " error: spec: " in line]
    assert len(errors) == 3, refused.stderr
    assert not (ksi.shared / "ksi-runs").exists()
    simhost.assert_clean()


def test_options_after_the_double_dash_are_checked_before_any_cluster(ksi: KsiRunner, simhost: SimHost) -> None:
    spec = write_spec(ksi, "name: x\nimage: i\ncommand: 'true'\ntasks: {seq: 1}\n")
    for extra, fragment in ((["--bogus"], "has no option --bogus"), (["--local"], "--local needs no cluster")):
        refused = ksi.run("run", "--tasks", str(spec), str(ksi.shared), "--", *extra)
        assert refused.returncode == 2 and fragment in refused.stderr, refused.stderr
    assert not (ksi.shared / "ksi-runs").exists()
    simhost.assert_clean()


def test_interrupted_run_records_interrupted_and_the_next_run_finishes_the_rest(ksi: KsiRunner) -> None:
    body = """
name: stop
image: busybox
command: "echo {index} >> executions.log; [ {index} -lt 3 ] || [ -e go ] || exec sleep 60"
parallelism: 3
resources: {cpu: 100m}
tasks: {seq: 8}
"""
    spec = write_spec(ksi, body)
    with held(ksi, spec) as process:
        wait_for(lambda: sum(executions(ksi).values()) >= 6, 60, "six tasks to start")
        process.send_signal(signal.SIGTERM)
        status, _, err = finish(process, 30)
    assert status == 128 + signal.SIGTERM, err
    first = {t.name: json.loads((t / "result.json").read_text())["reason"]
             for t in (results(ksi, "stop") / "tasks").iterdir()}
    assert collections.Counter(first.values()) == {"Completed": 3, "Interrupted": 3}, first
    (ksi.shared / "go").touch()
    second = ksi.run("run", "--tasks", str(spec), str(ksi.shared))
    assert second.returncode == 0, second.stderr
    counts = executions(ksi)
    for name, reason in first.items():
        assert counts[name.removeprefix("stop-")] == (1 if reason == "Completed" else 2)
    assert sum(counts.values()) == 8 + 3


def copy_sweep_example(ksi: KsiRunner) -> Path:
    import shutil

    from tests.ksi_helpers import REPO

    target = ksi.shared / "example_workloads" / "sweep"
    shutil.copytree(REPO / "example_workloads" / "sweep", target)
    return target / "sweep.yaml"


def test_sweep_example_runs_every_task_and_status_reports_them(ksi: KsiRunner, simhost: SimHost) -> None:
    spec = copy_sweep_example(ksi)
    done = ksi.run("run", "--tasks", str(spec), str(ksi.shared), timeout=180)
    assert done.returncode == 0, done.stderr
    fits = [json.loads(log.read_text().splitlines()[-1]) for log in results(ksi, "lr-sweep").glob("tasks/*/log.txt")]
    assert len(fits) == 12
    assert {(f["dataset"], f["lr"], f["seed"]) for f in fits} == {
        (d, lr, seed) for d in ("line", "noisy") for lr in (0.1, 0.03, 0.01) for seed in (1, 2)}
    assert min(fits, key=lambda f: f["loss"])["dataset"] == "line"
    status = ksi.run("tasks", "status", str(results(ksi, "lr-sweep")), "--json")
    assert status.returncode == 0
    assert json.loads(status.stdout)["succeeded"] == 12
    simhost.assert_clean()


def test_sweep_example_fails_naming_the_failed_task_and_its_log(ksi: KsiRunner, simhost: SimHost) -> None:
    spec = copy_sweep_example(ksi)
    done = ksi.run("run", "--tasks", str(spec), str(ksi.shared), timeout=180,
                   env={"KSI_SIM_FAULTS": "pod/lr-sweep-noisy-0-01-*:exit=3"})
    assert done.returncode == 1, done.stderr
    failed = json.loads((results(ksi, "lr-sweep") / "summary.json").read_text())["failed_tasks"]
    assert len(failed) == 2 and {f["reason"] for f in failed} == {"Error"} and {f["exit_code"] for f in failed} == {3}
    for f in failed:
        assert f["task"].startswith("lr-sweep-noisy-0-01-")
        assert any(f["task"] in line and f["log"] in line for line in done.stderr.splitlines())
    status = ksi.run("tasks", "status", str(results(ksi, "lr-sweep")))
    assert status.returncode == 1 and "10 succeeded, 2 failed" in status.stdout
    simhost.assert_clean()

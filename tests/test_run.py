"""`ksi run` on one node, end to end: real ksi process, simulated kind/nerdctl, real signals."""

from __future__ import annotations

import json
import signal
import socket
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.ksi_helpers import WORKLOADS, KsiRunner, finish, guardians_of, state_of, wait_for
from tests.simhost.common import process_start
from tests.simhost.plugin import SimHost

PHASE_LINES = ("checks: ok in", "run directory:", "create: cluster", "access: token for kube-system/admin-user",
               "workload: exited with status", "teardown: done in")


def script(directory: Path, name: str, body: str, executable: bool = True) -> Path:
    path = directory / name
    path.write_text("#!/bin/bash\n" + textwrap.dedent(body))
    path.chmod(0o755 if executable else 0o644)
    return path


def assert_nothing_left(ksi: KsiRunner, simhost: SimHost) -> None:
    simhost.assert_clean()
    assert ksi.reservations() == []
    assert ksi.registry() == []


def test_success_path_gives_the_workload_a_working_cluster(ksi: KsiRunner, simhost: SimHost, tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    user_config = (ksi.home / ".kube" / "config").read_text()
    result = ksi.run("run", str(WORKLOADS / "check_env.py"), str(ksi.shared), "--", str(report_path), "arg with space")
    assert result.returncode == 0, result.stderr

    report = json.loads(report_path.read_text())
    name = report["env"]["K8S_CLUSTER_NAME"]
    assert report["missing"] == []
    assert report["api_status"] == 200
    assert report["nodes"] == [f"{name}-control-plane"]
    assert report["current_context"] == name
    assert report["kubeconfig_server"] == report["env"]["K8S_CLUSTER_API"]
    assert report["kubeconfig_mode"] == "0o600" and report["run_dir_mode"] == "0o700"
    assert report["cwd"] == str(ksi.cwd)
    assert report["argv"] == ["arg with space"]
    assert 30000 <= int(report["env"]["K8S_PORT"]) <= 32767
    assert name.startswith("ksi-local-")

    for line in PHASE_LINES:
        assert line in result.stderr, line
    assert "workload saw 1 node(s)" in result.stdout
    assert "a line on stderr" in result.stderr

    [run_dir] = ksi.run_dirs()
    assert run_dir == Path(report["env"]["KSI_RUN_DIR"]) and run_dir.name == name
    record = ksi.record(run_dir)
    assert record["state"] == "done" and record["exit_status"] == 0
    assert set(record["phases"]) == {"checks", "create", "access", "workload", "teardown"}
    assert record["port"] == int(report["env"]["K8S_PORT"])
    workload_log = (run_dir / "workload.log").read_text()
    assert "workload saw 1 node(s)" in workload_log and "a line on stderr" in workload_log
    assert not (run_dir / "kubeconfig").exists()  # secrets go with the cluster; logs stay
    assert (run_dir / "ksi.log").exists() and (run_dir / "kind-config.yaml").exists()
    assert stat.S_IMODE((run_dir / "ksi.log").stat().st_mode) == 0o600

    token = report["token"]
    assert len(token) > 16
    for place in (result.stdout, result.stderr, *(p.read_text() for p in run_dir.iterdir() if p.is_file())):
        assert token not in place
    assert (ksi.home / ".kube" / "config").read_text() == user_config
    assert sorted(p.name for p in (ksi.home / ".kube").iterdir()) == ["config"]
    assert_nothing_left(ksi, simhost)


def test_token_is_in_no_output_or_file_even_with_debug_output(ksi: KsiRunner, simhost: SimHost,
                                                              tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    result = ksi.run("run", "-v", str(WORKLOADS / "check_env.py"), str(ksi.shared), "--", str(report_path))
    assert result.returncode == 0, result.stderr
    token = json.loads(report_path.read_text())["token"]
    assert len(token) > 16
    [run_dir] = ksi.run_dirs()
    assert "workload saw 1 node(s)" in (run_dir / "workload.log").read_text()  # the files scanned are the run's
    assert "run: kind create cluster --name" in result.stderr, result.stderr  # -v printed the debug lines
    places = {"stdout": result.stdout.encode(), "stderr": result.stderr.encode()}
    for top in (ksi.shared, ksi.state, ksi.home, ksi.cwd):  # the run directory is under the shared one
        places |= {str(path): path.read_bytes() for path in top.rglob("*") if path.is_file()}
    assert any(str(path).startswith(str(run_dir)) for path in places)
    assert any(str(path).startswith(str(ksi.state)) for path in places)
    assert [where for where, content in places.items() if token.encode() in content] == []
    assert_nothing_left(ksi, simhost)


@pytest.mark.parametrize(("body", "status"), [("exit 7\n", 7), ("kill -KILL $$\n", 137), ("exit 0\n", 0)])
def test_exit_status_is_the_workloads(ksi: KsiRunner, simhost: SimHost, body: str, status: int) -> None:
    workload = script(ksi.cwd, "w.sh", body)
    result = ksi.run("run", str(workload), str(ksi.shared))
    assert result.returncode == status, result.stderr
    assert f"workload: exited with status {status}" in result.stderr
    assert ksi.record(ksi.run_dirs()[0])["exit_status"] == status
    assert_nothing_left(ksi, simhost)


@pytest.mark.parametrize(("mode", "why"), [(0o644, "is not executable"), (0o755, "has no #! line")])
def test_script_without_execute_bit_or_shebang_runs_with_bash_and_says_so(
        ksi: KsiRunner, simhost: SimHost, mode: int, why: str) -> None:
    workload = ksi.cwd / "plain.sh"
    workload.write_text('echo "ran by $BASH"\n')
    workload.chmod(mode)
    result = ksi.run("run", str(workload), str(ksi.shared))
    assert result.returncode == 0, result.stderr
    assert f"{why}; running it with bash" in result.stderr
    assert "ran by /" in result.stdout
    assert_nothing_left(ksi, simhost)


def test_user_kubeconfig_variable_is_neither_used_nor_written(ksi: KsiRunner, simhost: SimHost, tmp_path: Path) -> None:
    theirs = tmp_path / "their-kubeconfig"
    theirs.write_text("apiVersion: v1\nkind: Config\n")
    workload = script(ksi.cwd, "w.sh", 'test "$KUBECONFIG" != "$1"\n')
    result = ksi.run("run", str(workload), str(ksi.shared), "--", str(theirs), env={"KUBECONFIG": str(theirs)})
    assert result.returncode == 0, result.stderr
    assert theirs.read_text() == "apiVersion: v1\nkind: Config\n"
    assert not Path(str(theirs) + ".lock").exists()
    assert_nothing_left(ksi, simhost)


def test_slurm_and_ksi_settings_of_the_test_session_do_not_reach_ksi(
        monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """pytest inside a Slurm allocation, with a fault and a bad setting exported: the `ksi` fixture is unaffected."""
    leaked = {"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_NODES": "3", "SLURM_STEP_NUM_TASKS": "3",
              "SLURM_PROCID": "1", "SLURMD_NODENAME": "elsewhere", "KSI_SIM_FAULTS": "kind-create:fail",
              "KSI_CREATE_TIMEOUT": "nonsense"}
    for name, value in leaked.items():
        monkeypatch.setenv(name, value)
    ksi: KsiRunner = request.getfixturevalue("ksi")
    simhost: SimHost = request.getfixturevalue("simhost")
    workload = script(ksi.cwd, "w.sh", 'echo "job=${SLURM_JOB_ID:-none} faults=${KSI_SIM_FAULTS:-none}"\n')
    result = ksi.run("run", str(workload), str(ksi.shared))
    assert result.returncode == 0, result.stderr
    assert "job=none faults=none" in result.stdout
    assert f"ksi[{socket.gethostname().split('.')[0]}] create: cluster ksi-local-" in result.stderr
    assert_nothing_left(ksi, simhost)


# --- bad input: one line each, the right exit code, nothing created ------------------------------------------

def assert_refused(ksi: KsiRunner, simhost: SimHost, result: subprocess.CompletedProcess[str], code: int,
                   *fragments: str) -> None:
    assert result.returncode == code, result.stderr
    errors = [line for line in result.stderr.splitlines() if " error: " in line]
    assert len(errors) == len(fragments), result.stderr
    for fragment in fragments:
        assert any(fragment in line and "fix:" in line for line in errors), (fragment, result.stderr)
    assert all(line.startswith("ksi[") for line in errors)
    assert ksi.run_dirs() == []
    assert simhost.containers() == []
    assert_nothing_left(ksi, simhost)


def test_every_input_problem_is_reported_at_once(ksi: KsiRunner, simhost: SimHost) -> None:
    result = ksi.run("run", str(ksi.cwd / "missing.sh"), str(ksi.cwd / "no such dir"), "--port", "80")
    assert_refused(ksi, simhost, result, 2, "missing.sh' does not exist", "no such dir' does not exist",
                   "--port=80 is outside")


@pytest.mark.parametrize(("port", "fragment"), [("abc", "K8S_PORT='abc' is not a port number"),
                                                ("40000", "K8S_PORT=40000 is outside")])
def test_bad_port_from_environment(ksi: KsiRunner, simhost: SimHost, port: str, fragment: str) -> None:
    workload = script(ksi.cwd, "w.sh", "exit 0\n")
    result = ksi.run("run", str(workload), str(ksi.shared), env={"K8S_PORT": port})
    assert_refused(ksi, simhost, result, 2, fragment)


@pytest.mark.parametrize(("line", "fragment"), [
    ("#!/usr/bin/env python-not-installed", "runs 'python-not-installed' through env in its #! line"),
    ("#!/opt/nowhere/bin/bash", "names the interpreter '/opt/nowhere/bin/bash' in its #! line"),
])
def test_missing_interpreter_is_refused_before_anything_is_created(
        ksi: KsiRunner, simhost: SimHost, line: str, fragment: str) -> None:
    workload = ksi.cwd / "w.sh"
    workload.write_text(f"{line}\nexit 0\n")
    workload.chmod(0o755)
    result = ksi.run("run", str(workload), str(ksi.shared))
    assert_refused(ksi, simhost, result, 2, fragment)


def test_directory_as_workload(ksi: KsiRunner, simhost: SimHost) -> None:
    result = ksi.run("run", str(ksi.cwd), str(ksi.shared))
    assert_refused(ksi, simhost, result, 2, "is a directory, not a script")


def test_unwritable_shared_directory(ksi: KsiRunner, simhost: SimHost) -> None:
    workload = script(ksi.cwd, "w.sh", "exit 0\n")
    readonly = ("unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount -t cgroup2 none /sys/fs/cgroup && mount -t tmpfs -o ro none "$0" && exec "$@"',
                str(ksi.shared))
    result = ksi.run("run", str(workload), str(ksi.shared), wrap=readonly)
    assert result.returncode == 3, result.stderr
    assert "is not writable (Read-only file system)" in result.stderr
    assert simhost.containers() == []
    assert_refused(ksi, simhost, result, 3, "is not writable (Read-only file system)")


def _hold_port(family: socket.AddressFamily) -> socket.socket:
    """Listen on a free NodePort-range port on the wildcard address of ``family`` only."""
    for port in range(31500, 31700):
        holder = socket.socket(family, socket.SOCK_STREAM)
        if family == socket.AF_INET6:
            holder.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            holder.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
        except OSError:
            holder.close()
            continue
        holder.listen()
        return holder
    raise AssertionError("no free port to hold")


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6-only"])
def test_port_already_bound_is_refused(ksi: KsiRunner, simhost: SimHost, family: socket.AddressFamily) -> None:
    workload = script(ksi.cwd, "w.sh", "exit 0\n")
    with _hold_port(family) as holder:  # an IPv6-only listener is what the prototype's `ss` check missed
        port = holder.getsockname()[1]
        result = ksi.run("run", str(workload), str(ksi.shared), "--port", str(port))
    assert result.returncode == 2, result.stderr
    assert f"K8S_PORT {port} is already in use on this node" in result.stderr
    assert simhost.containers() == []
    assert ksi.reservations() == []
    assert_nothing_left(ksi, simhost)


def test_missing_kind_is_a_missing_tool(ksi: KsiRunner, simhost: SimHost, tmp_path: Path) -> None:
    workload = script(ksi.cwd, "w.sh", "exit 0\n")
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("unshare", "sh", "mount", "bash", "env", "python3"):
        target = subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True, text=True,
                                env=ksi.env, check=True).stdout.strip()
        (bare / tool).symlink_to(target)
    result = ksi.run("run", str(workload), str(ksi.shared), env={"PATH": str(bare)})
    assert result.returncode == 4, result.stderr
    assert "kind not found on PATH" in result.stderr and "nerdctl (kind's container runtime) not found" in result.stderr
    assert_refused(ksi, simhost, result, 4, "kind not found on PATH", "nerdctl (kind's container runtime) not found")


def test_old_kind_is_refused(ksi: KsiRunner, simhost: SimHost) -> None:
    workload = script(ksi.cwd, "w.sh", "exit 0\n")
    result = ksi.run("run", str(workload), str(ksi.shared), env={"KSI_SIM_KIND_VERSION": "0.20.0"})
    assert_refused(ksi, simhost, result, 4, "kind v0.20.0 is too old")


def test_cgroup_v1_is_a_missing_prerequisite(ksi: KsiRunner, simhost: SimHost) -> None:
    workload = script(ksi.cwd, "w.sh", "exit 0\n")
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        pytest.skip("this host mounts cgroup v2 itself")
    result = ksi.run("run", str(workload), str(ksi.shared), wrap=())
    assert_refused(ksi, simhost, result, 3, "cgroup v2 is not mounted")


# --- failures of the tools ----------------------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["kind-create:fail", "kind-create:crash-after-container"])
def test_failing_create_leaves_nothing(ksi: KsiRunner, simhost: SimHost, fault: str) -> None:
    workload = script(ksi.cwd, "w.sh", "echo must-not-run\n")
    result = ksi.run("run", str(workload), str(ksi.shared), env={"KSI_SIM_FAULTS": fault})
    assert result.returncode == 1, result.stderr
    assert "error: create: `kind create cluster --name ksi-local-" in result.stderr
    assert "must-not-run" not in result.stdout
    record = ksi.record(ksi.run_dirs()[0])
    assert record["state"] == "failed" and "kind create cluster" in record["error"]
    assert_nothing_left(ksi, simhost)


def test_hanging_create_times_out(ksi: KsiRunner, simhost: SimHost) -> None:
    workload = script(ksi.cwd, "w.sh", "echo must-not-run\n")
    result = ksi.run("run", str(workload), str(ksi.shared),
                     env={"KSI_SIM_FAULTS": "kind-create:hang", "KSI_CREATE_TIMEOUT": "3"})
    assert result.returncode == 1, result.stderr
    assert "did not finish within 3 s and was killed" in result.stderr
    assert "must-not-run" not in result.stdout
    [run_dir] = ksi.run_dirs()
    assert not (run_dir / "workload.log").exists() or "must-not-run" not in (run_dir / "workload.log").read_text()
    record = ksi.record(run_dir)
    assert record["state"] == "failed", record
    assert "workload" not in record["phases"], record
    assert_nothing_left(ksi, simhost)


def test_failing_delete_is_verified_and_forced(ksi: KsiRunner, simhost: SimHost) -> None:
    workload = script(ksi.cwd, "w.sh", "exit 0\n")
    result = ksi.run("run", str(workload), str(ksi.shared), env={"KSI_SIM_FAULTS": "kind-delete:fail"})
    assert result.returncode == 0, result.stderr
    assert "survived kind delete; removing them" in result.stderr
    assert_nothing_left(ksi, simhost)


# --- signals --------------------------------------------------------------------------------------------------

def test_sigterm_during_create(ksi: KsiRunner, simhost: SimHost) -> None:
    workload = script(ksi.cwd, "w.sh", "echo must-not-run\n")
    process = ksi.start("run", str(workload), str(ksi.shared), env={"KSI_SIM_FAULTS": "kind-create:slow=60"})
    wait_for(lambda: state_of(ksi) == "creating" and ksi.registry(), 30, "ksi to start creating")
    wait_for(lambda: guardians_of(process.pid), 10, "the workload's guardian, started while kind creates")
    process.send_signal(signal.SIGTERM)
    status, out, err = finish(process)
    assert status == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM during create" in err
    assert "must-not-run" not in out
    assert ksi.record(ksi.run_dirs()[0])["stop_signal"] == "SIGTERM"
    assert guardians_of(process.pid) == []  # the teardown ended it without starting the workload
    assert_nothing_left(ksi, simhost)


def test_guardian_started_ahead_dies_with_a_killed_ksi(ksi: KsiRunner, simhost: SimHost, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    workload = script(ksi.cwd, "w.sh", f"touch {ran}\n")
    process = ksi.start("run", str(workload), str(ksi.shared), env={"KSI_SIM_FAULTS": "kind-create:slow=60"})
    try:
        wait_for(lambda: state_of(ksi) == "creating", 30, "ksi to start creating")
        [guardian] = wait_for(lambda: guardians_of(process.pid), 10, "the workload's guardian")
        process.kill()  # as KillWait or the OOM killer would: no teardown
        finish(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    wait_for(lambda: process_start(guardian) is None, 10, f"the guardian {guardian} to end with ksi")
    assert not ran.exists()  # a guardian without its ksi never starts the workload
    simhost.kill_all()


def test_sigterm_during_workload_is_forwarded(ksi: KsiRunner, simhost: SimHost, tmp_path: Path) -> None:
    started, got = tmp_path / "started", tmp_path / "got-term"
    workload = script(ksi.cwd, "w.sh", f"""\
        trap 'echo term > "{got}"; exit 42' TERM
        echo running > "{started}"
        while true; do sleep 0.1; done
        """)
    process = ksi.start("run", str(workload), str(ksi.shared))
    wait_for(started.exists, 30, "the workload to start")
    process.send_signal(signal.SIGTERM)
    status, _, err = finish(process)
    assert got.read_text() == "term\n"
    assert status == 42, err  # the workload handled TERM and chose its status
    assert "workload: forwarding SIGTERM" in err
    assert ksi.record(ksi.run_dirs()[0])["stop_signal"] == "SIGTERM"
    assert_nothing_left(ksi, simhost)


def test_workload_ignoring_sigterm_is_killed_after_grace(ksi: KsiRunner, simhost: SimHost, tmp_path: Path) -> None:
    started = tmp_path / "started"
    workload = script(ksi.cwd, "w.sh", f"""\
        trap '' TERM INT
        echo running > "{started}"
        while true; do sleep 0.1; done
        """)
    process = ksi.start("run", str(workload), str(ksi.shared), env={"KSI_GRACE_PERIOD": "1"})
    wait_for(started.exists, 30, "the workload to start")
    process.send_signal(signal.SIGINT)
    status, _, err = finish(process)
    assert status == 128 + signal.SIGKILL, err
    assert "still running after 1 s; killing it" in err
    assert_nothing_left(ksi, simhost)


def _kind_delete(simhost: SimHost) -> tuple[int, int] | None:
    """Return (pid, start time) of a running ``kind delete cluster`` of this simulated host, if there is one."""
    for pid in simhost.kind_deletes():
        start = process_start(pid)
        if start is not None:
            return pid, start
    return None


DELETE_SECONDS = 10  # the slow delete: ample time for the signals to land in it, well within KSI_TEARDOWN_TIMEOUT


def test_signals_during_teardown_do_not_stop_it(ksi: KsiRunner, simhost: SimHost) -> None:
    workload = script(ksi.cwd, "w.sh", "exit 0\n")
    process = ksi.start("run", str(workload), str(ksi.shared),
                        env={"KSI_SIM_FAULTS": f"kind-delete:slow={DELETE_SECONDS}", "KSI_TEARDOWN_TIMEOUT": "20"})
    try:
        wait_for(lambda: state_of(ksi) == "teardown", 30, "ksi to start its teardown")
        pid, start = wait_for(lambda: _kind_delete(simhost), 30, "ksi to run kind delete cluster")
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGINT)
        process.send_signal(signal.SIGTERM)
        assert process_start(pid) == start, "kind delete ended before the signals were sent"
        status, _, err = finish(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert status == 0, err
    assert "received SIGTERM during teardown; teardown continues" in err
    assert "teardown: done in" in err
    assert "survived kind delete" not in err, err  # kind delete was not cut short and deleted the cluster itself
    assert ksi.record(ksi.run_dirs()[0])["phases"]["teardown"] >= DELETE_SECONDS
    assert_nothing_left(ksi, simhost)


# --- concurrency ----------------------------------------------------------------------------------------------

def test_two_runs_at_once_get_distinct_names_and_ports(ksi: KsiRunner, simhost: SimHost, tmp_path: Path) -> None:
    meet = tmp_path / "meet"
    meet.mkdir()
    workload = script(ksi.cwd, "w.sh", f"""\
        echo "$K8S_CLUSTER_NAME $K8S_PORT" > "{meet}/$K8S_CLUSTER_NAME"
        for i in $(seq 300); do [ "$(ls "{meet}" | wc -l)" -ge 2 ] && exit 0; sleep 0.1; done
        exit 9
        """)
    first = ksi.start("run", str(workload), str(ksi.shared))
    second = ksi.start("run", str(workload), str(ksi.shared))
    results = [finish(first), finish(second)]
    assert [r[0] for r in results] == [0, 0], [r[2] for r in results]
    seen = [p.read_text().split() for p in meet.iterdir()]
    assert len({name for name, _ in seen}) == 2
    assert len({port for _, port in seen}) == 2
    assert_nothing_left(ksi, simhost)


# --- stale clusters of earlier runs ---------------------------------------------------------------------------

def _leave_a_stale_cluster(ksi: KsiRunner, tmp_path: Path) -> str:
    """Start a run, SIGKILL ksi mid-workload (as KillWait or the OOM killer would) and return its cluster.

    The workload dies with ksi (it must not keep the cluster in use), and the cluster is left behind.
    """
    started = tmp_path / "started"
    workload = script(ksi.cwd, "hang.sh", f"""\
        echo "$K8S_CLUSTER_NAME $$" > "{started}.tmp" && mv "{started}.tmp" "{started}"
        exec sleep 300
        """)
    process = ksi.start("run", str(workload), str(ksi.shared))
    try:
        name, pid = wait_for(lambda: started.exists() and started.read_text().split(), 30, "the workload to start")
        process.kill()
        finish(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    wait_for(lambda: process_start(int(pid)) is None, 10, f"the workload {pid} to die with ksi")
    return str(name)


def test_next_run_removes_a_killed_runs_cluster_first(ksi: KsiRunner, simhost: SimHost, tmp_path: Path) -> None:
    stale = _leave_a_stale_cluster(ksi, tmp_path)
    assert [c["name"] for c in simhost.containers() if c["alive"]] == [f"{stale}-control-plane"]
    result = ksi.run("run", str(script(ksi.cwd, "w.sh", "exit 0\n")), str(ksi.shared))
    assert result.returncode == 0, result.stderr
    assert f"cleanup: removed stale cluster {stale}" in result.stderr
    assert not (ksi.shared / "ksi-runs" / stale / "kubeconfig").exists()
    assert (ksi.shared / "ksi-runs" / stale / "ksi.log").exists()  # logs of the killed run are kept
    assert_nothing_left(ksi, simhost)


def test_stale_cleanup_can_be_turned_off(ksi: KsiRunner, simhost: SimHost, tmp_path: Path) -> None:
    stale = _leave_a_stale_cluster(ksi, tmp_path)
    result = ksi.run("run", "--no-clean-stale", str(script(ksi.cwd, "w.sh", "exit 0\n")), str(ksi.shared))
    assert result.returncode == 0, result.stderr
    assert "removed stale cluster" not in result.stderr
    assert [c["name"] for c in simhost.containers() if c["alive"]] == [f"{stale}-control-plane"]
    simhost.kill_all()


def test_sigterm_during_access_setup(ksi: KsiRunner, simhost: SimHost) -> None:
    workload = script(ksi.cwd, "w.sh", "echo must-not-run\n")
    process = ksi.start("run", str(workload), str(ksi.shared), env={"KSI_SIM_FAULTS": "api-token:slow=60"})
    wait_for(lambda: state_of(ksi) == "access", 30, "ksi to ask for its token")
    process.send_signal(signal.SIGTERM)
    status, out, err = finish(process)
    assert status == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM during access" in err
    assert "must-not-run" not in out
    assert_nothing_left(ksi, simhost)


def test_refused_token_request_fails_the_access_phase(ksi: KsiRunner, simhost: SimHost) -> None:
    result = ksi.run("run", str(script(ksi.cwd, "w.sh", "echo must-not-run\n")), str(ksi.shared),
                     env={"KSI_SIM_FAULTS": "api-token:fail"})
    assert result.returncode == 1, result.stderr
    assert "error: access: request token failed: HTTP 500" in result.stderr
    assert "must-not-run" not in result.stdout
    assert_nothing_left(ksi, simhost)

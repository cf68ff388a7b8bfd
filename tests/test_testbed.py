"""Tests of the Slurm test bed itself: real srun/sbatch/scancel across namespaced nodes on one machine."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.testbed import bedctl
from tests.testbed.plugin import BED_SCRIPT, CACHED, SlurmBed, bring_down, bring_up

pytestmark = pytest.mark.slurm

PY = "python3"

# The scripts' write(name, text) into their directory d: aside, then renamed, so that a test polling for the
# name never reads a file still being written.
WRITE = r"""
def write(name, text):
    tmp = os.path.join(d, f".{name}.{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(d, name))
"""

# Every task: records its pid and node, then TERM arrivals (handled: it keeps running) and a heartbeat.
SIGNAL_RECORDER = r"""
import os, signal, sys, time
d = sys.argv[1]
rank = os.environ["SLURM_PROCID"]
""" + WRITE + r"""
def on_term(signum, frame):
    with open(os.path.join(d, f"{rank}.term"), "a") as f:
        f.write(f"{time.time()}\n")
signal.signal(signal.SIGTERM, on_term)
write(f"{rank}.ready", f"{os.getpid()} {os.uname().nodename}")
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    write(f"{rank}.beat", f"{time.time()}")
    time.sleep(0.05)
"""

# Task 1 fails once every task is ready; the others record TERM (then die of it).
BAD_EXIT = r"""
import os, signal, sys, time
d = sys.argv[1]
rank = int(os.environ["SLURM_PROCID"]); ntasks = int(os.environ["SLURM_NTASKS"])
def on_term(signum, frame):
    open(os.path.join(d, f"{rank}.term"), "w").write(f"{time.time()}\n")
    sys.exit(143)
signal.signal(signal.SIGTERM, on_term)
open(os.path.join(d, f"{rank}.ready"), "w").write(str(os.getpid()))
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    if rank == 1 and all(os.path.exists(os.path.join(d, f"{r}.ready")) for r in range(ntasks)):
        sys.exit(3)
    time.sleep(0.05)
"""

# Every task listens on its node's address; task 0 (first node) also talks to the last task's node by name.
TCP_PEERS = r"""
import os, socket, sys, time
d, port, peer = sys.argv[1], int(sys.argv[2]), sys.argv[3]
""" + WRITE + r"""
rank = int(os.environ["SLURM_PROCID"])
me = socket.gethostname()
srv = socket.create_server((socket.gethostbyname(me), port))
srv.settimeout(0.2)
open(os.path.join(d, f"{rank}.ready"), "w").write(me)
deadline = time.monotonic() + 60
if rank == 0:
    while time.monotonic() < deadline:
        if os.path.exists(os.path.join(d, f"{int(os.environ['SLURM_NTASKS']) - 1}.ready")):
            break
        time.sleep(0.05)
    with socket.create_connection((peer, port), timeout=10) as c:
        c.sendall(f"hello from {me}\n".encode())
        reply = c.makefile().readline()
    write("reply", reply)  # the test reads it as soon as the name exists
while time.monotonic() < deadline and not os.path.exists(os.path.join(d, "stop")):
    try:
        conn, addr = srv.accept()
    except TimeoutError:
        continue
    with conn:
        line = conn.makefile().readline()
        conn.sendall(f"{me} got {line.strip()} from {addr[0]}\n".encode())
"""


def poll(what: str, condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> None:
    """Poll condition until true; fail the test naming what after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def write_script(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    path.chmod(0o755)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_srun_runs_one_task_per_node_with_its_own_identity(slurm_bed: SlurmBed) -> None:
    fmt = '"$(hostname)" "$SLURMD_NODENAME" "$SLURM_NODEID" "$SLURM_PROCID" "$SLURM_STEP_NODELIST" '
    fmt += '"$SLURM_STEP_NUM_NODES" "$(hostname -I)"'
    proc = slurm_bed.run(["srun", "-N3", "-n3", "sh", "-c", f"echo {fmt}"], timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()]
    assert len(rows) == 3, proc.stdout
    names = slurm_bed.node_names
    assert {r[0] for r in rows} == set(names)
    addresses = {n.name: n.address for n in slurm_bed.nodes}
    for host, nodename, nodeid, procid, step_nodelist, step_nodes, address in rows:
        assert host == nodename
        assert nodeid == str(names.index(host))
        assert procid == nodeid  # one task per node, in node order
        assert step_nodes == "3"
        expanded = slurm_bed.run(["scontrol", "show", "hostnames", step_nodelist]).stdout.split()
        assert expanded == list(names)
        assert address == addresses[host]
    assert sorted(r[3] for r in rows) == ["0", "1", "2"]


def test_nodes_reach_each_other_and_the_host_reaches_every_node(slurm_bed: SlurmBed) -> None:
    d = slurm_bed.shared_dir("tcp")
    script = write_script(d, "peers.py", TCP_PEERS)
    port = free_port()
    first, last = slurm_bed.nodes[0], slurm_bed.nodes[-1]
    argv = ["srun", "-N3", "-n3", f"--chdir={d}", PY, str(script), str(d), str(port), last.name]
    with subprocess.Popen(argv, env=slurm_bed.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as job:
        try:
            poll("three listeners", lambda: all((d / f"{r}.ready").exists() for r in range(3)), 30)
            poll("node1's reply from node3", lambda: (d / "reply").exists(), 30)
            reply = (d / "reply").read_text().strip()
            assert reply == f"{last.name} got hello from {first.name} from {first.address}"
            for node in slurm_bed.nodes:
                with socket.create_connection((node.address, port), timeout=10) as conn:
                    conn.sendall(b"hello from host\n")
                    answer = conn.makefile().readline().strip()
                assert answer.startswith(f"{node.name} got hello from host from "), answer
        finally:
            (d / "stop").write_text("")
        _, err = job.communicate(timeout=30)
    assert job.returncode == 0, err


def test_shared_dir_is_shared_and_private_dir_is_per_node(slurm_bed: SlurmBed) -> None:
    d = slurm_bed.shared_dir("fs")
    n1, n2 = slurm_bed.node_names[:2]
    tag = uuid.uuid4().hex
    private_file = slurm_bed.private_dir / f"mark-{tag}"
    write = f"echo {tag} > {d}/shared.txt && echo {tag} > {private_file}"
    assert slurm_bed.run(["srun", "-N1", "-w", n1, "sh", "-c", write]).returncode == 0
    read = slurm_bed.run(["srun", "-N1", "-w", n2, "sh", "-c", f"cat {d}/shared.txt; ls {private_file}"])
    assert read.stdout.splitlines() == [tag]  # shared file read on node2; private file absent there
    assert "No such file" in read.stderr
    assert slurm_bed.on_node(n1, ["cat", str(private_file)]).stdout.strip() == tag
    assert slurm_bed.on_node(n2, ["test", "-e", str(private_file)]).returncode == 1
    assert not private_file.exists()  # the host does not see it either
    fs = slurm_bed.on_node(n1, ["stat", "-fc", "%T", str(slurm_bed.private_dir)]).stdout.strip()
    assert fs == "tmpfs"


# Run on a node of the caching bed right after another node created <dir>/late, which this node had looked
# up before: prints what each kind of access answers.
CACHED_VIEW = r"""
import errno, json, os, sys
d = sys.argv[1]
late = os.path.join(d, "late")
seen = {"lookup": os.path.exists(late), "listed": "late" in os.listdir(d)}
try:
    os.close(os.open(late, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    seen["excl"] = "created"
except OSError as exc:
    seen["excl"] = errno.errorcode[exc.errno]
seen["lookup_after_excl"] = os.path.exists(late)
print(json.dumps(seen))
"""
LOCK_HOLDER = r"""
import fcntl, os, sys, time
f = open(sys.argv[1], "w")
fcntl.flock(f, fcntl.LOCK_EX)
open(sys.argv[2], "w").close()
time.sleep(120)
"""
TRY_LOCK = r"""
import fcntl, sys
f = open(sys.argv[1], "w")
try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("locked")
except BlockingIOError:
    print("busy")
"""


@pytest.mark.parametrize("slurm_bed", [CACHED], indirect=True)
def test_caching_bed_nodes_see_the_shared_root_as_nfs_clients_do(slurm_bed: SlurmBed) -> None:
    """A cached "not found" outlives another node's create; listing and O_EXCL ask the server; flock is local."""
    assert slurm_bed.cache_timeout > 0
    d = slurm_bed.shared_dir("cache")
    n1, n2 = slurm_bed.node_names[:2]
    assert slurm_bed.on_node(n2, ["test", "-e", str(d / "late")]).returncode == 1  # the miss node2 will keep
    assert slurm_bed.on_node(n1, ["sh", "-c", f"echo x > {d}/late"]).returncode == 0
    assert (d / "late").read_text() == "x\n"  # on the shared filesystem itself at once
    view = slurm_bed.on_node(n2, [PY, "-c", CACHED_VIEW, str(d)])
    assert view.returncode == 0, view.stderr
    assert json.loads(view.stdout) == {"lookup": False, "listed": True, "excl": "EEXIST", "lookup_after_excl": True}
    ready = d / "holding"
    holder = subprocess.Popen(bedctl.nsenter_argv(slurm_bed.anchor_pid(n1), [PY, "-c", LOCK_HOLDER, str(d / "lock"),
                                                                              str(ready)], workdir="/"))  # fmt: skip
    try:
        poll("the lock holder on node 1", lambda: ready.exists() or holder.poll() is not None, 30)
        assert holder.poll() is None, holder.returncode
        tries = {n: slurm_bed.on_node(n, [PY, "-c", TRY_LOCK, str(d / "lock")]).stdout.strip() for n in (n1, n2)}
        assert tries == {n1: "busy", n2: "locked"}  # node-local locks, as NFS with local_lock or nolock
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_tasks_see_cgroup_v2(slurm_bed: SlurmBed) -> None:
    proc = slurm_bed.run(
        ["srun", "-N3", "sh", "-c", "test -e /sys/fs/cgroup/cgroup.controllers && stat -fc %T /sys/fs/cgroup"]
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["cgroup2fs"] * 3


def test_scancel_sends_term_to_every_task_then_kill_after_killwait(slurm_bed: SlurmBed) -> None:
    d = slurm_bed.shared_dir("signals")
    script = write_script(d, "recorder.py", SIGNAL_RECORDER)
    batch = write_script(d, "job.sh", f"#!/bin/sh\nsrun {PY} {script} {d}\n")
    submitted = slurm_bed.run(
        ["sbatch", "--parsable", "-N3", "-n3", f"--chdir={d}", f"--output={d}/job.out", str(batch)]
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    poll("three tasks ready", lambda: all((d / f"{r}.ready").exists() for r in range(3)), 30)
    tasks = {r: (d / f"{r}.ready").read_text().split() for r in range(3)}
    assert {node for _, node in tasks.values()} == set(slurm_bed.node_names)

    assert slurm_bed.run(["scancel", job_id]).returncode == 0
    # A line, not the name: the handler opens its file a moment before it writes the time.
    poll("TERM in every task", lambda: all((d / f"{r}.term").is_file() and (d / f"{r}.term").read_text().endswith("\n")
                                           for r in range(3)), 15)
    term = {r: float((d / f"{r}.term").read_text().split()[0]) for r in range(3)}
    assert max(term.values()) - min(term.values()) < slurm_bed.kill_wait / 2, term  # at once, not one by one

    pids = [int(pid) for pid, _ in tasks.values()]
    kill_wait = slurm_bed.kill_wait
    poll("tasks killed", lambda: not any(bedctl.pid_alive(p) for p in pids), kill_wait + 20)
    gone_at = time.time()
    for r in range(3):
        last_beat = float((d / f"{r}.beat").read_text())
        lived_after_term = last_beat - term[r]
        # The handler swallowed TERM, so only SIGKILL can have ended it: after ~KillWait, not before.
        assert kill_wait - 1.0 <= lived_after_term <= kill_wait + 5.0, (r, lived_after_term)
    assert gone_at - min(term.values()) <= kill_wait + 20
    slurm_bed.wait_idle()


def test_kill_on_bad_exit_ends_the_other_tasks(slurm_bed: SlurmBed) -> None:
    d = slurm_bed.shared_dir("k1")
    script = write_script(d, "bad.py", BAD_EXIT)
    t0 = time.monotonic()
    proc = slurm_bed.run(
        ["srun", "-N3", "-n3", "-K1", f"--chdir={d}", PY, str(script), str(d)], timeout=slurm_bed.kill_wait + 40
    )
    assert proc.returncode != 0
    assert time.monotonic() - t0 < slurm_bed.kill_wait + 30
    assert (d / "0.term").exists() and (d / "2.term").exists(), proc.stderr
    assert not (d / "1.term").exists()


def test_epilog_runs_every_hook_with_job_id_and_user(slurm_bed: SlurmBed) -> None:
    d = slurm_bed.shared_dir("epilog")
    out = d / "epilog.txt"
    hook = slurm_bed.epilog_dir / f"50-test-{uuid.uuid4().hex[:8]}"
    hook.write_text(f'#!/bin/sh\necho "$SLURM_JOB_ID $SLURM_JOB_USER $(hostname)" >> {out}\n')
    hook.chmod(0o755)
    try:
        show = "echo $SLURM_JOB_ID $(hostname)"
        root_job = slurm_bed.run(["srun", "-N2", "sh", "-c", show])
        assert root_job.returncode == 0, root_job.stderr
        user_job = subprocess.run(
            slurm_bed.as_second_user(["srun", "-N1", f"--chdir={d}", "sh", "-c", show]),
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert user_job.returncode == 0, user_job.stderr
        expected = [[job, "root", node] for job, node in (line.split() for line in root_job.stdout.splitlines())]
        user_id, user_node = user_job.stdout.split()
        expected.append([user_id, slurm_bed.second_user, user_node])

        def lines() -> list[list[str]]:
            return [line.split() for line in out.read_text().splitlines()] if out.exists() else []

        poll("epilog on 3 node-jobs", lambda: len(lines()) >= 3, 30)
        assert sorted(lines()) == sorted(expected)
        assert len({node for _, _, node in expected[:2]}) == 2
        log = (slurm_bed.state_dir / "log" / f"epilog-{user_node}.log").read_text()
        assert re.search(rf"job={user_id} user={slurm_bed.second_user} ran {re.escape(str(hook))} rc=0", log)
    finally:
        hook.unlink()
    slurm_bed.wait_idle()


def test_second_user_runs_srun_across_nodes(slurm_bed: SlurmBed) -> None:
    d = slurm_bed.shared_dir("user")
    own = d / "mine"
    made = subprocess.run(slurm_bed.as_second_user(["mkdir", str(own)]), capture_output=True, text=True, check=False)
    assert made.returncode == 0, made.stderr
    proc = subprocess.run(
        slurm_bed.as_second_user(["srun", "-N2", f"--chdir={own}", "sh", "-c", "id -un; hostname"]),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.split()
    assert out.count(slurm_bed.second_user) == 2
    assert set(out) - {slurm_bed.second_user} == set(slurm_bed.node_names[:2])


def test_up_reuses_the_running_bed(slurm_bed: SlurmBed) -> None:
    ctld_pid = (slurm_bed.state_dir / "run" / "slurmctld.pid").read_text()
    again = bring_up()
    assert again == slurm_bed
    assert (slurm_bed.state_dir / "run" / "slurmctld.pid").read_text() == ctld_pid
    record = json.loads((slurm_bed.state_dir / "bed.json").read_text())
    assert record["conf"] == str(slurm_bed.conf) and record["kill_wait"] == slurm_bed.kill_wait
    status = subprocess.run([str(BED_SCRIPT), "status", "--instance", slurm_bed.instance],
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.rstrip().endswith("healthy")


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and bedctl.pid_alive(int(entry.name)):
            argv = bedctl.cmdline(int(entry.name))
            if any(text in part for part in argv):
                found.append(f"{entry.name}: {' '.join(argv)}")
    return found


def _descendants(roots: list[int]) -> set[int]:
    parent = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue
            parent[int(entry.name)] = int(stat[stat.rfind(")") + 2 :].split()[1])
    found = set(roots)
    grew = True
    while grew:
        more = {pid for pid, ppid in parent.items() if ppid in found} - found
        found |= more
        grew = bool(more)
    return found


def test_second_instance_comes_up_and_down_leaves_nothing(slurm_bed: SlurmBed) -> None:
    instance = "ksi-downtest"
    small = bring_up(nodes=1, instance=instance, cache_timeout=0)
    try:
        record = json.loads((small.state_dir / "bed.json").read_text())
        main_record = json.loads((slurm_bed.state_dir / "bed.json").read_text())
        for key in ("index", "subnet", "bridge", "ctld_port", "munge_socket", "state_dir"):
            assert record[key] != main_record[key], key
        assert not set(small.node_names) & set(slurm_bed.node_names)
        proc = small.run(["srun", "-N1", "sh", "-c", "hostname; hostname -I"])
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == [small.nodes[0].name, small.nodes[0].address]
        run_dir = small.state_dir / "run"
        pids = [bedctl.read_pid(p) for p in run_dir.glob("*.pid")]
        pids.append(bedctl.read_pid(small.state_dir / "munge" / "munged.pid"))
        # slurmctld, the node's anchor and slurmd, munged:
        assert len(pids) == 4 and all(p is not None and bedctl.pid_alive(p) for p in pids), pids
        # A straggler a task left behind (re-parented away from slurmstepd) must go too.
        d = small.shared_dir("leak")
        leak_cmd = f"setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $! > {d}/leak.pid"
        leak = subprocess.run(
            small.as_second_user(["srun", "-N1", f"--chdir={d}", "sh", "-c", leak_cmd]),
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert leak.returncode == 0, leak.stderr
        leaked = bedctl.read_pid(d / "leak.pid")
        assert leaked is not None and bedctl.pid_alive(leaked)
        pids.append(leaked)
        family = _descendants([p for p in pids if p is not None])  # slurmscriptd, slurmstepd, ...
        assert len(family) > len(pids)
    finally:
        bring_down(instance, purge=True)

    assert not [p for p in family if bedctl.pid_alive(p)]
    assert _processes_mentioning(str(small.state_dir)) == []
    assert _processes_mentioning(record["munge_socket"]) == []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert small.nodes[0].netns not in netns
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    for name in [record["bridge"], *(n["veth"] for n in record["nodes"])]:
        assert f" {name}:" not in links and f" {name}@" not in links, name
    hosts = Path("/etc/hosts").read_text()
    assert small.nodes[0].name not in hosts and f"ksi-testbed:{instance}" not in hosts
    assert not Path(record["munge_socket"]).exists()
    assert not (small.state_dir / "bed.json").exists()

    # The session's bed is untouched.
    proc = slurm_bed.run(["srun", "-N3", "hostname"])
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.split()) == sorted(slurm_bed.node_names)
    assert os.path.exists(slurm_bed.conf)

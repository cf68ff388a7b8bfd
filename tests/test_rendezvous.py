"""The shared-directory protocol between the nodes of a step, and the process chokepoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ksi.errors import CommandFailed, CommandTimeout, KsiError, ToolMissingError
from ksi.host.slurm import expand_nodelist
from ksi.host.state import read_json
from ksi.launch import rendezvous
from ksi.launch.rendezvous import (
    ABORT,
    DONE,
    LEADER,
    Aborted,
    Heartbeat,
    Liveness,
    Rendezvous,
    heartbeat,
    hello,
    join,
    listing,
    make_directory,
    ready,
)
from ksi.tools import proc
from tests.ksi_helpers import wait_for


@pytest.mark.parametrize(("nodelist", "expected"), [
    ("n1", ["n1"]),
    ("n[1-3]", ["n1", "n2", "n3"]),
    ("n[01-03,7],gpu1", ["n01", "n02", "n03", "n7", "gpu1"]),
    ("a,b[9-10]", ["a", "b9", "b10"]),
    ("rack[1-2]-node", ["rack1-node", "rack2-node"]),
    ("", []),
])
def test_expand_nodelist(nodelist: str, expected: list[str]) -> None:
    assert expand_nodelist(nodelist) == expected


def test_leader_moves_a_stale_directory_aside_and_followers_ignore_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = Rendezvous.location(tmp_path, "42", "0", 0)
    path.mkdir(parents=True)
    old_leader = {"nonce": "stale", "started": time.time() - 86400, "port": 31000, "gateway_port": 31001}
    (path / LEADER).write_text(json.dumps(old_leader))
    (path / DONE).write_text(json.dumps({"nonce": "stale", "status": 3}))

    reads: list[Path] = []

    def counting_read(file: Path) -> object:
        reads.append(file)
        return read_json(file)

    monkeypatch.setattr(rendezvous, "read_json", counting_read)
    joined: list[Rendezvous] = []
    follower = threading.Thread(target=lambda: joined.append(join(path, 1, "n2", time.time(), 10, "n1")))
    follower.start()
    wait_for(lambda: reads.count(path / LEADER) >= 3, 10, "the follower to poll the stale leader.json")
    assert joined == []  # it read the stale file three times and did not take it
    leader = Rendezvous.create(path, "n1")
    leader.publish(LEADER, {"started": time.time(), "port": 31234, "gateway_port": 31235})
    follower.join(timeout=10)
    assert joined and joined[0].nonce == leader.nonce
    assert joined[0].read(DONE) is None  # the stale done.json moved away with its directory
    stale = [p for p in tmp_path.joinpath("ksi-runs").iterdir() if ".stale-" in p.name]
    assert len(stale) == 1 and json.loads((stale[0] / DONE).read_text())["status"] == 3  # kept, not lost


def test_an_old_leader_file_is_taken_once_its_heartbeat_moves(tmp_path: Path) -> None:
    """A leader whose clock runs far behind still gets followers: its heartbeat proves it alive."""
    path = tmp_path / "run"
    path.mkdir()
    leader = Rendezvous(path, 0, "n1", "abc")
    leader.publish(LEADER, {"started": time.time() - 3600})
    beat = Heartbeat(leader, interval=0.05)
    beat.start()
    try:
        joined = join(path, 1, "n2", time.time(), 10, "n1")
    finally:
        beat.stop()
    assert joined.nonce == "abc"


def test_no_node_looks_a_name_up_before_it_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An NFS client keeps a "no such file" for up to a minute: every file is opened only once it exists."""
    misses: list[str] = []
    listings: list[Path] = []

    def checked_read(file: Path) -> object:
        if not file.exists():
            misses.append(file.name)
        return read_json(file)

    def counted_listing(directory: Path) -> frozenset[str]:
        listings.append(directory)
        return listing(directory)

    monkeypatch.setattr(rendezvous, "read_json", checked_read)
    monkeypatch.setattr(rendezvous, "listing", counted_listing)
    path = Rendezvous.location(tmp_path, "7", "0", 0)
    assert make_directory(path)  # a follower came first: it creates the directory instead of looking it up
    assert not make_directory(path)  # "exists" is an answer, not an error
    joined: list[Rendezvous] = []
    follower = threading.Thread(target=lambda: joined.append(join(path, 1, "n2", time.time(), 10, "n1")))
    follower.start()
    wait_for(lambda: listings.count(path) >= 3, 10, "the follower to poll the empty run directory")
    leader = Rendezvous.create(path, "n1")
    assert list(tmp_path.joinpath("ksi-runs").iterdir()) == [path]  # empty, so not taken for a stale one
    leader.publish(LEADER, {"started": time.time(), "port": 31234, "gateway_port": 31235})
    follower.join(timeout=10)
    [mine] = joined
    assert mine.nonce == leader.nonce
    assert mine.read(DONE) is None and leader.read_many([hello(1), ready(1)]) == {}
    mine.check_abort()
    assert Liveness(leader, [1]).silent(60) == [] and Liveness(mine, [0]).silent(60) == []
    assert mine.node_directory("n2") == path / "nodes" / "n2" and leader.node_directory("n1").is_dir()
    mine.publish(hello(1))
    leader.abort("create", "kind create failed")
    with pytest.raises(Aborted):
        mine.check_abort()
    assert leader.read(hello(1)) is not None
    assert misses == []


def test_join_times_out_naming_the_leader_and_the_likely_cause(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(KsiError) as caught:
        join(tmp_path / "never", 2, "n3", time.time(), 0.3, "n1")
    assert time.monotonic() - started < 5
    assert "the leader (n1) did not announce the run" in caught.value.message
    assert "may not be shared across nodes" in caught.value.fix


def test_first_abort_wins_and_every_wait_sees_it(tmp_path: Path) -> None:
    first = Rendezvous(tmp_path, 1, "n2", "nonce")
    second = Rendezvous(tmp_path, 2, "n3", "nonce")
    first.abort("create", "kind create failed", 1)
    second.abort("peer", "later failure", 4)
    record = json.loads((tmp_path / ABORT).read_text())
    assert (record["node"], record["phase"]) == ("n2", "create")
    with pytest.raises(Aborted, match="run aborted by n2 during create: kind create failed"):
        second.wait("anything", lambda: None, 10, lambda: KsiError("timeout"))
    assert [p.name for p in tmp_path.iterdir()] == [ABORT]  # no temporary files left


def test_files_of_another_run_are_invisible(tmp_path: Path) -> None:
    mine = Rendezvous(tmp_path, 0, "n1", "mine")
    other = Rendezvous(tmp_path, 1, "n2", "other")
    other.publish(DONE, {"status": 0})
    other.abort("create", "other run")
    assert mine.read(DONE) is None
    mine.check_abort()  # does not raise


def test_liveness_is_judged_by_the_counter(tmp_path: Path) -> None:
    rdv = Rendezvous(tmp_path, 0, "n1", "n")
    follower = Rendezvous(tmp_path, 1, "n2", "n")
    liveness = Liveness(rdv, [1])
    follower.publish(heartbeat(1), {"count": 1})
    assert liveness.silent(0.2) == []
    # The same counter again, even in a freshly written file, is silence.
    deadline = time.monotonic() + 5
    while not liveness.silent(0.2):
        follower.publish(heartbeat(1), {"count": 1})
        assert time.monotonic() < deadline
        time.sleep(0.05)
    follower.publish(heartbeat(1), {"count": 2})
    assert liveness.silent(0.2) == []


def test_wait_times_out_with_the_callers_error(tmp_path: Path) -> None:
    rdv = Rendezvous(tmp_path, 0, "n1", "n")
    with pytest.raises(KsiError, match="n2, n3 did not join"):
        rdv.wait("join", lambda: None, 0.2, lambda: KsiError("n2, n3 did not join"))


def test_secret_files_are_0600(tmp_path: Path) -> None:
    rdv = Rendezvous(tmp_path, 0, "n1", "n")
    rdv.publish(LEADER, {"port": 1})
    assert oct((tmp_path / LEADER).stat().st_mode & 0o777) == "0o600"


# --- the process chokepoint -------------------------------------------------------------------------------

def test_failed_command_keeps_argv_status_and_output() -> None:
    with pytest.raises(CommandFailed) as caught:
        proc.run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10, step="create")
    error = caught.value
    assert (error.returncode, error.stdout, error.stderr) == (3, "out\n", "err\n")
    assert error.argv[0] == "sh"
    assert "exited with status 3: err" in error.one_line() and error.one_line().startswith("create: ")


def test_missing_program_is_a_missing_tool() -> None:
    with pytest.raises(ToolMissingError, match="no-such-tool-ksi not found on PATH"):
        proc.run(["no-such-tool-ksi"], timeout=5)


def test_program_is_looked_up_on_the_environment_given(tmp_path: Path) -> None:
    tool = tmp_path / "hello-ksi"
    tool.write_text("#!/bin/sh\necho from-tmp\n")
    tool.chmod(0o755)
    env = proc.environment({"PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert proc.run(["hello-ksi"], timeout=5, env=env).stdout == "from-tmp\n"


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild"
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match=r"did not finish within 0\.5 s"):
        proc.run(["sh", "-c", f"sleep 60 & echo $! > '{pidfile}'; wait"], timeout=0.5)
    assert time.monotonic() - started < 10
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{grandchild}").exists() and "Z" not in _state(grandchild):
        assert time.monotonic() < deadline, "the command's child survived the timeout"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


# A teardown command that starts, then waits for "<marker>.go" (10 s at most) before it finishes.
HELD_COMMAND = ('echo ready > "$0"; for _ in $(seq 500); do [ -e "$0.go" ] && break; sleep 0.02; done; '
                'echo finished > "$0"')


def test_shielded_commands_ignore_stop_signals(tmp_path: Path) -> None:
    """Teardown commands must survive the repeated TERM that Slurm sends to the whole step."""
    marker = tmp_path / "marker"
    script = ("import sys; from ksi.tools import proc; proc.run(['sh', '-c', SHIELDED, sys.argv[1]], timeout=30, "
              "shielded=True)").replace("SHIELDED", repr(HELD_COMMAND))
    child = subprocess.Popen([sys.executable, "-c", script, str(marker)], start_new_session=True)
    wait_for(marker.exists, 10, "the shielded command to start")
    os.killpg(child.pid, signal.SIGTERM)  # the whole group, as scancel does: python dies, sh must not
    assert child.wait(timeout=10) == -signal.SIGTERM
    Path(f"{marker}.go").touch()  # only now may the command finish
    deadline = time.monotonic() + 10
    while marker.read_text() != "finished\n":
        assert time.monotonic() < deadline, "the shielded command was killed by SIGTERM"
        time.sleep(0.05)


def test_an_interrupted_ksi_lets_its_shielded_command_finish(tmp_path: Path) -> None:
    """A TERM that interrupts ksi during a teardown command waits for that command, then stops ksi."""
    marker = tmp_path / "marker"
    script = ("import sys\nfrom ksi.tools import proc\nfrom ksi.errors import Interrupted\n"
              "from ksi.host.signals import SignalGuard\n"
              "with SignalGuard().installed():\n"
              "    try:\n"
              f"        proc.run(['sh', '-c', {HELD_COMMAND!r}, sys.argv[1]], timeout=30, shielded=True)\n"
              "    except Interrupted as exc:\n"
              "        print('interrupted', open(sys.argv[1]).read().strip())\n"
              "        sys.exit(exc.exit_code)\n")
    child = subprocess.Popen([sys.executable, "-c", script, str(marker)], stdout=subprocess.PIPE, text=True)
    wait_for(marker.exists, 10, "the shielded command to start")
    child.send_signal(signal.SIGTERM)
    Path(f"{marker}.go").touch()  # the command finishes only after ksi was interrupted
    out, _ = child.communicate(timeout=20)
    assert child.returncode == 128 + signal.SIGTERM
    assert out.strip() == "interrupted finished"  # the command ran to its end before ksi stopped

"""`tests/testbed/bed demo`, the try-it command of the README, end to end as a newcomer runs it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ksi_helpers import isolated_environ
from tests.testbed import bedctl

BED = Path(__file__).resolve().parent / "testbed" / "bed"
# An instance of the demo's own per engineer: the demo stops its bed at the end, never the tests' one.
INSTANCE = os.environ.get(bedctl.ENV_INSTANCE, bedctl.DEFAULT_INSTANCE)[:15].rstrip("-") + "-demo"
NUL = b"\0"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the demo starts a Slurm test bed, which needs root")


def demo(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run the demo as a terminal would show it: stdout and stderr in one stream, in order."""
    return subprocess.run([str(BED), "demo", "--instance", INSTANCE], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600, check=False)


def traces_of(state_dir: Path) -> list[str]:
    """Live processes whose command line or environment names the bed's state directory."""
    marker = os.fsencode(str(state_dir))
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            argv = (proc / "cmdline").read_bytes()
            if marker in argv or marker in (proc / "environ").read_bytes():
                found.append(f"{proc.name}: {argv.replace(NUL, b' ').decode(errors='replace')}")
        except (OSError, IndexError):
            continue
    return found


@pytest.mark.slurm
@pytest.mark.timeout(600)
def test_the_demo_runs_three_nodes_says_simulated_and_leaves_nothing(tmp_path: Path) -> None:
    env = isolated_environ()
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "/usr/bin:/bin")])
    result = demo(env, tmp_path)
    out = result.stdout
    assert result.returncode == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("==> ksi demo: ") and "kind, nerdctl and liqoctl are SIMULATED" in lines[0]
    assert lines[-1].startswith("==> done in ") and "the three-node run succeeded" in lines[-1]
    assert "kind, nerdctl and liqoctl were SIMULATED" in lines[-1]
    nodes = [f"{INSTANCE}-node{i}" for i in (1, 2, 3)]
    assert "==> $ srun -N3 --ntasks-per-node=1 -K1 ksi run example_workloads/" in out
    assert f"ksi[{nodes[0]}] peer: 2 cluster(s) peered to " in out and "the cluster spans 3 nodes" in out
    assert f"ksi[{nodes[0]}] workload: exited with status 0" in out
    for node in nodes:
        assert f"ksi[{node}] teardown: done in " in out
        assert f"\n{node}: cluster ksi-" in out and ", state done, exit status 0; checks " in out
        assert f"ksi[{node}] list: no ksi clusters of yours on this node" in out
    tree = [line for line in lines if re.match(r"^[d-][rwx-]{9}  ", line)]
    assert tree[0].startswith("drwx------ ") and tree[0].endswith(" 1.0.0/")  # job 1, step 0: the run, 0700
    assert sum(re.match(r"^-rw-------  +\d+ +ksi\.log$", line) is not None for line in tree) == 3  # one per node
    assert "==> no simulated cluster is left on any node" in out

    state_dir = bedctl.DEFAULT_STATE_ROOT / INSTANCE
    assert not state_dir.exists()  # bed down --purge: its files, the simulated host's state and the run are gone
    assert traces_of(state_dir) == []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30, check=True).stdout
    assert f"ksitb-{INSTANCE}-" not in netns
    status = subprocess.run([str(BED), "status", "--instance", INSTANCE], capture_output=True, text=True,
                            timeout=60, check=False)
    assert status.returncode == 3, status.stdout


@needs_root
def test_the_demo_without_an_installed_ksi_says_how_to_get_one_and_starts_nothing(tmp_path: Path) -> None:
    env = isolated_environ()
    env["PATH"] = "/usr/bin:/bin"  # Debian's python3 runs the bed; no ksi, no kubectl
    result = demo(env, tmp_path)
    assert result.returncode == 2
    assert "==> ERROR: no ksi on PATH: install it (`pip install .` in a virtualenv)" in result.stdout
    assert not (bedctl.DEFAULT_STATE_ROOT / INSTANCE).exists()


@pytest.mark.slurm
@pytest.mark.timeout(600)
@pytest.mark.parametrize(("when", "faults"), [
    ("==> $ srun ", ""),  # srun starting
    ("liqo install: done", "liqoctl-peer:hang"),  # three clusters up, the leader's peering hangs until stopped
], ids=["starting", "clusters-up"])
def test_a_demo_stopped_mid_run_still_tears_everything_down(tmp_path: Path, when: str, faults: str) -> None:
    env = isolated_environ()
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "/usr/bin:/bin")])
    env["KSI_SIM_FAULTS"] = faults
    process = subprocess.Popen([str(BED), "demo", "--instance", INSTANCE], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            seen.append(line)
            if when in line:  # stop the demo as Ctrl-C or a kill would
                process.send_signal(signal.SIGTERM)
                break
        rest, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    out = "".join(seen) + rest
    assert process.returncode == 130, out
    assert "==> interrupted: tearing down" in out
    assert "==> test bed down: no Slurm daemon, node namespace or simulated node container is left" in out
    assert "the demo FAILED (exit status 130). kind, nerdctl and liqoctl were SIMULATED" in out.splitlines()[-1], out
    if faults:  # the clusters were up: the demo cancelled the job, and every ksi tore its own cluster down
        for node in (f"{INSTANCE}-node{i}" for i in (1, 2, 3)):
            assert f"ksi[{node}] teardown: done in " in out and f"ksi[{node}] stopped by SIGTERM during " in out, out
        assert ": Killed" not in out
    state_dir = bedctl.DEFAULT_STATE_ROOT / INSTANCE
    assert not state_dir.exists()
    assert traces_of(state_dir) == []

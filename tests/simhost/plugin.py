"""pytest plugin: the ``simhost`` fixture, a simulated container host (kind, nerdctl, liqoctl) per test.

The state root lives under /var/tmp, not /tmp: the Slurm test bed gives every node a private /tmp, and
the fixture must see (and clean up) what node containers on every simulated node leave behind.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.simhost import registry
from tests.simhost.common import ENV_ROOT, NODE_SCRIPT, SIMHOST_DIR, alive, load_containers, process_start
from tests.simhost.helmrepo import HelmRepo

BIN_DIR = SIMHOST_DIR / "bin"
ROOT_PARENT = Path(os.environ.get("KSI_SIM_TEST_TMP") or "/var/tmp")
KILL_TIMEOUT = 10.0  # seconds kill_all waits for SIGKILLed processes to be gone
FAILED = pytest.StashKey[bool]()


@dataclass
class SimHost:
    """One simulated container host: where its state lives and how to run and inspect its tools."""

    root: Path
    bin_dir: Path = BIN_DIR

    def env(self, base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
        """Return a copy of ``base`` (default os.environ) that runs the simulated tools, plus ``extra``.

        PATH starts with the tools and this Python's directory (so ``#!/usr/bin/env python3`` finds the
        interpreter that has PyYAML and cryptography); KSI_SIM_ROOT points at this host's state;
        KIND_EXPERIMENTAL_PROVIDER is ``nerdctl``.
        """
        env = dict(os.environ if base is None else base)
        env["PATH"] = os.pathsep.join([str(self.bin_dir), str(Path(sys.executable).parent), env.get("PATH", "")])
        env["KSI_SIM_ROOT"] = str(self.root)
        env["KIND_EXPERIMENTAL_PROVIDER"] = "nerdctl"
        env.update(extra)
        return env

    def containers(self, host: str | None = None) -> list[dict[str, Any]]:
        """Return every container record (all hosts unless ``host``, all users), each with an ``alive`` flag."""
        found = []
        for containers_dir in sorted(self.root.glob("*/*/containers")):
            if host is not None and containers_dir.parent.parent.name != host:
                continue
            for container in load_containers(containers_dir):
                state = container.state or {}
                found.append(container.record | {
                    "alive": container.state is not None and alive(int(state["pid"]), state.get("start")),
                    "status": container.status, "pid": container.pid, "dir": str(container.dir)})
        return found

    def registry_contacts(self) -> list[dict[str, Any]]:
        """Return every attempt of a simulated program (or the chart repository) to reach a registry."""
        return registry.contacts(self.root)

    def live_processes(self) -> list[int]:
        """Return the pids of node-container processes of this root that still run (records or not)."""
        pids = []
        marker = f"{self.root}{os.sep}"
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            args = [a.decode(errors="replace") for a in argv]
            if str(NODE_SCRIPT) in args and any(a.startswith(marker) for a in args) \
                    and process_start(int(proc.name)) is not None:
                pids.append(int(proc.name))
        return sorted(pids)

    def leftover_processes(self) -> dict[int, tuple[str, ...]]:
        """Return pid -> argv of every live process started with this host's environment.

        Every process started with :meth:`env` (ksi, the simulated tools, workloads and whatever they start,
        node containers included) carries ``KSI_SIM_ROOT=<root>`` in its initial environment
        (/proc/<pid>/environ). This test process and zombies are not counted; processes whose environment
        cannot be read (another user's, when not root) are not seen.
        """
        marker = os.fsencode(f"{ENV_ROOT}={self.root}")
        found = {}
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                if marker not in (proc / "environ").read_bytes().split(b"\0"):
                    continue
                argv = (proc / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
            except OSError:  # gone, or not ours to read
                continue
            if process_start(int(proc.name)) is not None:  # not a zombie, still there
                found[int(proc.name)] = tuple(a.decode(errors="replace") for a in argv)
        return dict(sorted(found.items()))

    def kind_deletes(self) -> dict[int, tuple[str, ...]]:
        """Return pid -> argv of the ``kind delete cluster`` commands of this host running now."""
        return {pid: argv for pid, argv in self.leftover_processes().items()
                if any(os.path.basename(arg) == "kind" and argv[i + 1:i + 3] == ("delete", "cluster")
                       for i, arg in enumerate(argv))}

    def assert_clean(self) -> None:
        """Fail with details if any container record, node-container process or other process remains.

        Other processes are those :meth:`leftover_processes` finds: a hung ``kind create`` or ``liqoctl peer``,
        a ksi or a workload still running.
        """
        records = self.containers()
        pids = self.live_processes()
        others = {pid: argv for pid, argv in self.leftover_processes().items() if pid not in pids}
        if records or pids or others:
            names = [f"{r['host']}/uid {r['uid']}: {r['name']} ({r['status']}, pid {r['pid']})" for r in records]
            running = [f"pid {pid}: {shlex.join(argv)}" for pid, argv in others.items()]
            raise AssertionError(f"simulated host not clean: containers {names}, node processes {pids}, "
                                 f"other processes {running}")

    def api_nodes(self, kubeconfig: Path, context: str | None = None) -> list[str]:
        """Return the names of the nodes the API server of ``kubeconfig`` lists (official kubernetes client)."""
        from kubernetes import client, config

        api = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig), context=context)
        with api:
            nodes = client.CoreV1Api(api).list_node().items
        return sorted(str(node.metadata.name) for node in nodes if node.metadata)

    def kill_all(self, timeout: float = KILL_TIMEOUT) -> None:
        """SIGKILL every process of this root (node containers and every leftover process) until none is left.

        Processes that start while others are killed (a ksi forking a tool) are killed in the next round;
        fails when some are still there after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            targets = {pid: process_start(pid) for pid in {*self.live_processes(), *self.leftover_processes()}}
            left = {pid: start for pid, start in targets.items() if start is not None}
            if not left:
                return
            for pid, start in left.items():
                if alive(pid, start):  # not a new process that reused the pid (nor a zombie)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            while left:
                if time.monotonic() > deadline:
                    raise AssertionError(f"processes of {self.root} still there after {timeout} s of SIGKILL: "
                                         f"{sorted(left)}")
                time.sleep(0.002)
                left = {pid: start for pid, start in left.items() if alive(pid, start)}



@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
        item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember whether a test failed, so its simulated host's state (node logs) is kept for debugging."""
    report = yield
    if report.failed:
        item.stash[FAILED] = True
    return report


@pytest.fixture
def simhost(request: pytest.FixtureRequest) -> Iterator[SimHost]:
    """A fresh simulated container host; at teardown every node-container process it started is killed.

    Its state is removed afterwards, unless the test failed and left some (the path is then printed).
    """
    ROOT_PARENT.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="ksi-simhost-", dir=ROOT_PARENT))
    root.chmod(0o1777)  # other users (per-user tests) add their own directories, as under /tmp
    host = SimHost(root)
    try:
        yield host
    finally:
        host.kill_all()
        if request.node.stash.get(FAILED, False) and any(root.iterdir()):
            print(f"\nsimulated host state kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def helm_repo(simhost: SimHost) -> Iterator[HelmRepo]:
    """Liqo's chart repository (v1.0.0 and v1.0.1) on loopback, recording requests as registry contacts."""
    repo = HelmRepo(simhost.root, ("v1.0.0", "v1.0.1")).start()
    try:
        yield repo
    finally:
        repo.stop()

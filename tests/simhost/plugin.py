"""pytest plugin: the ``simhost`` fixture, a simulated container host (kind, nerdctl, liqoctl) per test.

The state root lives under /var/tmp, not /tmp: the Slurm test bed gives every node a private /tmp, and
the fixture must see (and clean up) what node containers on every simulated node leave behind.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.simhost.common import NODE_SCRIPT, SIMHOST_DIR, alive, kill_process, load_containers, process_start

BIN_DIR = SIMHOST_DIR / "bin"
ROOT_PARENT = Path(os.environ.get("KSI_SIM_TEST_TMP") or "/var/tmp")
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

    def assert_clean(self) -> None:
        """Fail with details if any container record or node-container process remains."""
        records = self.containers()
        pids = self.live_processes()
        if records or pids:
            names = [f"{r['host']}/uid {r['uid']}: {r['name']} ({r['status']}, pid {r['pid']})" for r in records]
            raise AssertionError(f"simulated host not clean: containers {names}, node processes {pids}")

    def api_nodes(self, kubeconfig: Path, context: str | None = None) -> list[str]:
        """Return the names of the nodes the API server of ``kubeconfig`` lists (official kubernetes client)."""
        from kubernetes import client, config

        api = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig), context=context)
        with api:
            nodes = client.CoreV1Api(api).list_node().items
        return sorted(str(node.metadata.name) for node in nodes if node.metadata)

    def kill_all(self) -> None:
        """SIGKILL every node-container process of this root and wait (at most 5 s each) until they are gone."""
        for pid in self.live_processes():
            kill_process(pid, process_start(pid))


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


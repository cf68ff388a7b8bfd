"""pytest plugin for the real multi-node Slurm test bed (tests/testbed/bed).

Provides the session fixture `slurm_bed`, which runs `bed up` (reusing a healthy running bed) and yields a
`SlurmBed`; marks every test that uses it with `slurm`; skips `slurm` tests when not root; waits before each
such test until the previous tests' jobs are gone; and attaches the bed's log tails to the report of a
failed test that used the bed. The bed is left running at session end (set KSI_TESTBED_DOWN=1 to stop it).

`slurm_bed` takes a parameter (indirect parametrization, see `ALSO_CACHED`): DIRECT is the bed above,
CACHED a second instance (`<instance>-cache`) whose nodes see the shared directories through caching mounts
(`bed up --cache-timeout`), so a test can prove that ksi does not wait for a cache to expire.

Environment: KSI_TESTBED_INSTANCE (default ksi) and KSI_TESTBED_STATE_ROOT (default /var/tmp/ksi-testbed)
select the instance, as for `bed` itself; KSI_TESTBED_CACHE sets the cache timeout of the DIRECT bed (default
0, no caching) and of the CACHED one (default CACHED_TIMEOUT).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.testbed import bedctl

BED_SCRIPT = Path(__file__).with_name("bed")
ENV_DOWN = "KSI_TESTBED_DOWN"
SLURM_MARK = "slurm"
FIXTURE = "slurm_bed"
UP_TIMEOUT = 1200.0  # the first `up` on a bare machine installs slurm-wlm and munge
DIRECT, CACHED = "direct", "cached"
# Long enough that a wait which depends on a cache expiring outlasts the tests' rendezvous timeout (20 s):
# it fails instead of passing slowly. NFS keeps directory attributes, and so "not found", 30 to 60 s.
CACHED_TIMEOUT = 30
BUSY_JOB_STATES = "PD,R,CG,CF,S,RQ,RS,RH,RF,SE,SO,ST,SI,RD,RV"
IDLE_NODE_STATES = frozenset({"idle"})


@dataclass(frozen=True)
class Node:
    """One bed node: Slurm node name (= its hostname), its address, its network namespace name."""

    name: str
    address: str
    netns: str


@dataclass(frozen=True)
class SlurmBed:
    """A running test bed, as described by its bed.json."""

    conf: Path
    nodes: tuple[Node, ...]
    state_dir: Path
    private_dir: Path
    epilog_dir: Path
    second_user: str
    kill_wait: int
    instance: str = bedctl.DEFAULT_INSTANCE
    shared_root: Path = bedctl.DEFAULT_STATE_ROOT / bedctl.DEFAULT_INSTANCE / "shared"
    cache_timeout: int = bedctl.DEFAULT_CACHE_TIMEOUT  # > 0: nodes see shared_root through caching mounts

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> SlurmBed:
        """Build from the mapping `bed up` writes to bed.json."""
        return cls(
            conf=Path(record["conf"]),
            nodes=tuple(Node(n["name"], n["address"], n["netns"]) for n in record["nodes"]),
            state_dir=Path(record["state_dir"]),
            private_dir=Path(record["private_dir"]),
            epilog_dir=Path(record["epilog_dir"]),
            second_user=str(record["second_user"]),
            kill_wait=int(record["kill_wait"]),
            instance=str(record["instance"]),
            shared_root=Path(record["shared_root"]),
            cache_timeout=int(record.get("cache_timeout", bedctl.DEFAULT_CACHE_TIMEOUT)),
        )

    @property
    def node_names(self) -> tuple[str, ...]:
        """The node names in order."""
        return tuple(n.name for n in self.nodes)

    def node(self, name: str) -> Node:
        """The node of that name (KeyError if the bed has none)."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"test bed {self.instance} has no node {name!r}; it has {self.node_names}")

    def env(self, base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
        """Environment for srun/sbatch/scancel/squeue against this bed.

        Starts from base (default: os.environ now), drops every SLURM_*/SBATCH_*/SRUN_*... variable (so a
        pytest that itself runs inside a Slurm job does not leak its allocation), sets SLURM_CONF, then
        applies extra.
        """
        source = os.environ if base is None else base
        env = {k: v for k, v in source.items() if not k.startswith(bedctl.SLURM_ENV_PREFIXES)}
        env["SLURM_CONF"] = str(self.conf)
        env.update(extra)
        return env

    def as_second_user(self, argv: Sequence[str], **extra_env: str) -> list[str]:
        """argv wrapped to run as the second user (runuser) with SLURM_CONF and extra_env set."""
        assigns = [f"{k}={v}" for k, v in {"SLURM_CONF": str(self.conf), **extra_env}.items()]
        return ["runuser", "-u", self.second_user, "--", "env", *assigns, *argv]

    def shared_dir(self, name: str) -> Path:
        """Create and return a fresh directory on the shared filesystem (the bed's state dir, not /tmp).

        It is world-writable with the sticky bit (like /tmp), so the second user can make its own
        subdirectory in it; its parent is world-accessible.
        """
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")[:60] or "test"
        self.shared_root.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=f"{safe}-", dir=self.shared_root))
        path.chmod(0o1777)
        return path

    def anchor_pid(self, node: str) -> int:
        """Pid of the process that owns the node's namespaces (read from its pid file on every call)."""
        pid_file = self.state_dir / "run" / f"anchor-{self.node(node).name}.pid"
        pid = bedctl.owned_pid(pid_file, "sleep")
        if pid is None:
            raise RuntimeError(f"the namespaces of {node} are gone ({pid_file}); is the bed up?")
        return pid

    def on_node(self, node: str, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run argv inside node's network, UTS and mount namespaces (nsenter into its anchor) as root.

        Keyword arguments go to subprocess.run; defaults: capture_output=True, text=True, timeout=60,
        check=False, and the working directory of the caller (or cwd=) is kept inside the node.
        """
        workdir = str(kw.pop("cwd", None) or os.getcwd())
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 60)
        kw.setdefault("check", False)
        full = bedctl.nsenter_argv(self.anchor_pid(node), argv, workdir=workdir)
        return subprocess.run(full, **kw)

    def run(self, argv: Sequence[str], timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command (srun, sbatch, squeue...) on the host against this bed, captured."""
        kw.setdefault("env", self.env())
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("check", False)
        return subprocess.run(list(argv), timeout=timeout, **kw)

    def busy(self) -> tuple[list[str], dict[str, str]]:
        """Jobs not yet finished (squeue lines) and the node states that are not idle."""
        jobs = self.run(["squeue", "-h", "-t", BUSY_JOB_STATES, "-o", "%i %u %T %N"], timeout=30)
        nodes = self.run(["sinfo", "-h", "-N", "-o", "%N %t"], timeout=30)
        if jobs.returncode != 0 or nodes.returncode != 0:
            raise RuntimeError(f"squeue/sinfo failed:\n{jobs.stderr}{nodes.stderr}")
        states = dict(line.split() for line in nodes.stdout.splitlines() if len(line.split()) == 2)
        return jobs.stdout.splitlines(), {n: s for n, s in states.items() if s not in IDLE_NODE_STATES}

    def wait_idle(self, timeout: float = 30) -> None:
        """Poll squeue and sinfo until no job is pending/running/completing and every node is idle."""
        deadline = time.monotonic() + timeout
        while True:
            jobs, nodes = self.busy()
            if not jobs and not nodes:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"test bed {self.instance} still busy after {timeout} s: jobs {jobs}, nodes {nodes}")
            time.sleep(0.2)

    def cancel_all(self) -> None:
        """scancel every job of every user on this bed."""
        ids = self.run(["squeue", "-h", "-o", "%i"], timeout=30).stdout.split()
        if ids:
            self.run(["scancel", *ids], timeout=30)

    def logs(self, lines: int = 40) -> str:
        """Tails of slurmctld, every slurmd, every epilog log, munged and the daemon start output."""
        record = bedctl.read_record(self.state_dir)
        if record is None:
            return f"(no {bedctl.RECORD_NAME} in {self.state_dir})"
        return bedctl.collect_logs(bedctl.BedSpec.from_record(record), lines=lines)


def bed_command(*args: str, instance: str | None = None, timeout: float = UP_TIMEOUT) -> str:
    """Run tests/testbed/bed with args (for instance, if given) and return its stdout; raise on failure."""
    argv = [str(BED_SCRIPT), *args]
    if instance is not None:
        argv += ["--instance", instance]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )
    return proc.stdout


def bring_up(
    nodes: int = bedctl.DEFAULT_NODES,
    kill_wait: int = bedctl.DEFAULT_KILL_WAIT,
    instance: str | None = None,
    cache_timeout: int | None = None,
) -> SlurmBed:
    """`bed up NODES --kill-wait S --cache-timeout C --json` (reusing a healthy bed); return the bed it describes.

    cache_timeout None takes KSI_TESTBED_CACHE (default 0: no caching mounts).
    """
    cache = bedctl.cache_timeout_from_env() if cache_timeout is None else cache_timeout
    out = bed_command("up", str(nodes), "--kill-wait", str(kill_wait), "--cache-timeout", str(cache), "--json",
                      instance=instance)  # fmt: skip
    return SlurmBed.from_record(json.loads(out))


def cached_instance(instance: str) -> str:
    """The instance name of the caching twin of instance (still a valid instance name)."""
    return f"{instance[:14].rstrip('-')}-cache"


def bring_down(instance: str | None = None, purge: bool = False) -> None:
    """`bed down` (with --purge if asked) for the instance."""
    bed_command("down", *(["--purge"] if purge else []), instance=instance, timeout=120)


# --- pytest hooks and fixtures -------------------------------------------------------------------------


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests using slurm_bed with `slurm`; skip `slurm` tests when not root (the bed needs root)."""
    del config
    for item in items:
        if FIXTURE in getattr(item, "fixturenames", ()) and item.get_closest_marker(SLURM_MARK) is None:
            item.add_marker(pytest.mark.slurm)
        if item.get_closest_marker(SLURM_MARK) is not None and os.geteuid() != 0:
            item.add_marker(pytest.mark.skip(reason="the Slurm test bed needs root"))


# Runs a test on both beds: `@ALSO_CACHED` on a test that uses slurm_bed (directly or through a fixture).
ALSO_CACHED = pytest.mark.parametrize(FIXTURE, [DIRECT, CACHED], indirect=True)


@pytest.fixture(scope="session")
def slurm_bed(request: pytest.FixtureRequest) -> Iterator[SlurmBed]:
    """The session's Slurm test bed: started (or reused) once, left running unless KSI_TESTBED_DOWN=1.

    With the parameter CACHED: the caching twin instead (see the module docstring).
    """
    if getattr(request, "param", DIRECT) == CACHED:
        instance = cached_instance(os.environ.get(bedctl.ENV_INSTANCE, bedctl.DEFAULT_INSTANCE))
        bed = bring_up(instance=instance, cache_timeout=bedctl.cache_timeout_from_env() or CACHED_TIMEOUT)
    else:
        bed = bring_up()
    yield bed
    if os.environ.get(ENV_DOWN) == "1":
        bring_down(bed.instance)


def kill_wait_instance(instance: str, kill_wait: int) -> str:
    """Return the name of the bed derived from ``instance`` that has KillWait ``kill_wait`` (ksi -> ksi-kw30)."""
    suffix = f"-kw{kill_wait}"
    return bedctl.validate_instance(instance[:20 - len(suffix)].rstrip("-") + suffix)  # names have <= 20 chars


@pytest.fixture(scope="session")
def slurm_bed_with_kill_wait(slurm_bed: SlurmBed) -> Iterator[Callable[[int], SlurmBed]]:
    """Return a function giving a bed with KillWait S: the session's bed when it has S, else a second instance.

    The second instance's name derives from the session's (kill_wait_instance); it starts (or is reused) on
    first use, has as many nodes and the same cache timeout as the session's bed, and is left running like it
    (KSI_TESTBED_DOWN=1 stops it). A test that uses it waits for that bed's earlier jobs itself (``wait_idle``).
    """
    started: dict[int, SlurmBed] = {}

    def bed(kill_wait: int) -> SlurmBed:
        if kill_wait == slurm_bed.kill_wait:
            return slurm_bed
        if kill_wait not in started:
            started[kill_wait] = bring_up(len(slurm_bed.nodes), kill_wait,
                                          kill_wait_instance(slurm_bed.instance, kill_wait), slurm_bed.cache_timeout)
        return started[kill_wait]

    yield bed
    if os.environ.get(ENV_DOWN) == "1":
        for other in started.values():
            bring_down(other.instance)


@pytest.fixture(autouse=True)
def _slurm_bed_quiet(request: pytest.FixtureRequest) -> None:
    """Before a test that uses slurm_bed: wait until earlier tests' jobs are gone (cancel them after 20 s)."""
    if FIXTURE not in request.fixturenames:
        return
    bed: SlurmBed = request.getfixturevalue(FIXTURE)
    try:
        bed.wait_idle(timeout=20)
    except TimeoutError as exc:
        warnings.warn(f"cancelling jobs left by an earlier test: {exc}", stacklevel=1)
        bed.cancel_all()
        bed.wait_idle(timeout=bed.kill_wait + 30)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the bed's log tails to the report of a failed test that used slurm_bed."""
    del call
    report = yield
    if report.failed:
        bed = getattr(item, "funcargs", {}).get(FIXTURE)
        if isinstance(bed, SlurmBed):
            try:
                report.sections.append((f"Slurm test bed {bed.instance} logs", bed.logs()))
            except OSError as exc:  # the logs are a help, never a second failure
                report.sections.append((f"Slurm test bed {bed.instance} logs", f"unreadable: {exc}"))
    return report

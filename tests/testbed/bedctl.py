"""Start, check and stop the ksi Slurm test bed: a real multi-node Slurm cluster on one machine.

`tests/testbed/bed` is the command-line front end (`bed up [N]`, `bed down`, `bed status`); the pytest plugin
(`tests/testbed/plugin.py`) runs that same script and reads the record it writes.

What one bed instance is made of (every name derives from the instance name, see `derive_spec`):

- a munged of its own (as the munge user) on `/run/munge/ksitb-<instance>.socket`;
- a bridge `ksitb<index>` holding `10.213.<index>.1/24` on the host, where slurmctld listens;
- per node a network namespace `ksitb-<node>` joined to the bridge by a veth pair (address
  `10.213.<index>.<10+i>`, default route via the bridge), and an *anchor* process (`sleep infinity`) that
  owns the node's UTS namespace (hostname = node name) and mount namespace (a tmpfs over the private
  directory, cgroup2 mounted on /sys/fs/cgroup); slurmd is started inside the anchor's namespaces, so the
  namespaces outlive a slurmd restart and `on_node` can enter them through the anchor's pid;
- the node names in /etc/hosts, tagged `# ksi-testbed:<instance>`;
- everything else (slurm.conf, state, spool, pid files, logs, epilog.d, shared test directories) under one
  state directory, `/var/tmp/ksi-testbed/<instance>`, shared by all nodes like NFS;
- with a cache timeout (`bed up --cache-timeout S`, or KSI_TESTBED_CACHE=S), each node sees the shared test
  directories through its own caching FUSE client: a bindfs over `<state dir>/shared` in the node's mount
  namespace, whose kernel caches names, attributes and "not found" answers for S seconds and whose flock is
  node-local, as NFS clients do (see `start_cache_mount`).

slurmd versus cgroup v2 on this machine's v1/v2 hybrid (checked with Slurm 22.05): with cgroup2 mounted on
/sys/fs/cgroup, slurmd's autodetection picks cgroup/v2 and that plugin aborts ("Hybrid mode is not
supported"), because /proc/self/cgroup still lists the v1 hierarchies. Pinning `CgroupPlugin=cgroup/v1` in
cgroup.conf avoids the autodetection; with proctrack/linuxproc and task/none nothing ever touches a cgroup,
so slurmd and slurmstepd run happily with cgroup2 mounted before slurmd starts, and every task sees
/sys/fs/cgroup/cgroup.controllers.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

# --- names and defaults --------------------------------------------------------------------------------

ENV_INSTANCE = "KSI_TESTBED_INSTANCE"
ENV_STATE_ROOT = "KSI_TESTBED_STATE_ROOT"
ENV_CACHE = "KSI_TESTBED_CACHE"
DEFAULT_INSTANCE = "ksi"
DEFAULT_STATE_ROOT = Path("/var/tmp/ksi-testbed")
DEFAULT_NODES = 3
DEFAULT_KILL_WAIT = 5
DEFAULT_CACHE_TIMEOUT = 0  # seconds; 0: every node sees the shared directories directly, coherent at once
SECOND_USER = "ksitest"
RECORD_NAME = "bed.json"
LOCK_NAME = ".lock"

SUBNET_PREFIX = "10.213"  # third octet = instance index; .1 = bridge (host), .11, .12, ... = nodes
FIRST_NODE_HOST = 11
INDEX_RANGE = range(1, 251)
PORT_BASE = 20000  # slurmctld port = PORT_BASE + 4 * index, slurmd port = that + 1
MAX_NODES = 100
NODE_CPUS = 2
NODE_MEMORY_MB = 2000
PRIVATE_TMPFS_SIZE = "512m"

HOSTS_FILE = Path("/etc/hosts")
HOSTS_TAG = "# ksi-testbed:"
MUNGE_RUN_DIR = Path("/run/munge")
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_USER = "munge"
NETNS_DIR = Path("/run/netns")
DAEMON_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PACKAGES = ("slurm-wlm", "munge")
REQUIRED_PROGRAMS = ("slurmctld", "slurmd", "srun", "sbatch", "sinfo", "scontrol", "munged", "munge")
CACHE_PACKAGES = ("bindfs",)  # Debian's bindfs links libfuse 2 and pulls in fuse (fusermount)
CACHE_PROGRAMS = ("bindfs",)
FUSE_DEVICE = Path("/dev/fuse")

STATUS_STARTING = "starting"
STATUS_READY = "ready"
RESPONSIVE_NODE_STATES = frozenset({"idle", "alloc", "allocated", "mix", "mixed", "comp", "completing"})

UP_TIMEOUT = 30.0
STOP_GRACE = 3.0
INSTANCE_RE = re.compile(r"^[a-z][a-z0-9-]{0,18}[a-z0-9]$|^[a-z]$")
EPILOG_SOURCE = Path(__file__).with_name("epilog-dispatch.sh")

# Runs as the node's anchor, inside fresh UTS and mount namespaces in the node's network namespace.
# The node's copy of the mount table would otherwise keep every other bed's /run/netns/* bind mount, and so
# those network namespaces (and their veth pairs) alive after their own bed went down: drop them here.
ANCHOR_SCRIPT = """set -eu
hostname "$1"
for m in /run/netns/*; do umount -l "$m" 2>/dev/null || true; done
mount -t tmpfs -o mode=1777,size="$3" "ksitb-private-$1" "$2"
mount -t cgroup2 none /sys/fs/cgroup
exec sleep infinity
"""


class BedError(Exception):
    """A test bed operation failed; the message says what and, for a command, keeps its output."""


class CommandError(BedError):
    """An external command failed: keeps argv, exit status, stdout and stderr."""

    def __init__(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(
            f"command failed (exit {returncode}): {shlex.join(self.argv)}\n"
            f"--- stdout ---\n{stdout.rstrip()}\n--- stderr ---\n{stderr.rstrip()}"
        )


# --- the one place that runs external commands ---------------------------------------------------------

_verbose = False


def log(message: str) -> None:
    """Write one progress line to stderr (stdout carries the bed's description)."""
    print(f"bed: {message}", file=sys.stderr, flush=True)


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 60.0,
    env: Mapping[str, str] | None = None,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv to completion with captured text output; raise CommandError on failure when check is set."""
    if _verbose:
        log(f"$ {shlex.join(argv)}")
    try:
        proc = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            input=input_text,
            stdin=None if input_text is not None else subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        raise CommandError(argv, -1, out, err + f"\n(timed out after {timeout} s)") from exc
    except FileNotFoundError as exc:
        raise CommandError(argv, 127, "", str(exc)) from exc
    if check and proc.returncode != 0:
        raise CommandError(argv, proc.returncode, proc.stdout, proc.stderr)
    return proc


def spawn_detached(argv: Sequence[str], *, output: Path, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """Start argv in a new session with stdin from /dev/null and stdout/stderr appended to output.

    Used for daemons: no pipe of ours is left open in them, so whoever runs `bed` is not kept waiting.
    """
    if _verbose:
        log(f"$ {shlex.join(argv)} >>{output} 2>&1 &")
    with output.open("ab") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
            close_fds=True,
        )


def run_daemon(argv: Sequence[str], *, output: Path, env: Mapping[str, str], timeout: float = 30.0) -> None:
    """Run a self-daemonising program (slurmctld, slurmd, munged) and wait for its foreground part to exit 0."""
    proc = spawn_detached(argv, output=output, env=env)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.wait()
        raise BedError(f"{shlex.join(argv)} did not return within {timeout} s; see {output}") from exc
    if rc != 0:
        raise BedError(f"{shlex.join(argv)} exited {rc}; last lines of {output}:\n{tail(output, 20)}")


def wait_for(what: str, condition: Callable[[], bool], timeout: float, interval: float = 0.1) -> None:
    """Poll condition until it holds; raise BedError naming what after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if time.monotonic() >= deadline:
            raise BedError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def tail(path: Path, lines: int) -> str:
    """Return the last lines of a text file, or a note that it does not exist."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    return "\n".join(text.splitlines()[-lines:])


# --- the description of one bed ------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeSpec:
    """One node of the bed: Slurm node name (also its hostname), address, network namespace, host veth."""

    name: str
    address: str
    netns: str
    veth: str


@dataclass(frozen=True)
class BedSpec:
    """Everything that identifies one bed instance; derived by derive_spec and stored in bed.json."""

    instance: str
    index: int
    state_dir: Path
    hostname: str
    kill_wait: int
    nodes: tuple[NodeSpec, ...]
    second_user: str = SECOND_USER
    cache_timeout: int = DEFAULT_CACHE_TIMEOUT

    # Network -------------------------------------------------------------------------------------------
    @property
    def subnet(self) -> str:
        """The bed's /24, e.g. 10.213.7.0/24."""
        return f"{SUBNET_PREFIX}.{self.index}.0/24"

    @property
    def bridge(self) -> str:
        """Name of the host bridge (at most 15 characters)."""
        return f"ksitb{self.index}"

    @property
    def bridge_address(self) -> str:
        """The host's address on the bridge; slurmctld is reached there."""
        return f"{SUBNET_PREFIX}.{self.index}.1"

    @property
    def ctld_port(self) -> int:
        """SlurmctldPort (slurmctld listens on every host address, so it must differ between instances)."""
        return PORT_BASE + 4 * self.index

    @property
    def slurmd_port(self) -> int:
        """SlurmdPort (each slurmd has its own network namespace; distinct per instance all the same)."""
        return self.ctld_port + 1

    @property
    def munge_socket(self) -> Path:
        """The socket of this instance's munged."""
        return MUNGE_RUN_DIR / f"ksitb-{self.instance}.socket"

    @property
    def cluster_name(self) -> str:
        """Slurm ClusterName."""
        return f"testbed-{self.instance}"

    # Files ---------------------------------------------------------------------------------------------
    @property
    def conf_dir(self) -> Path:
        """Directory of slurm.conf and cgroup.conf."""
        return self.state_dir / "etc"

    @property
    def slurm_conf(self) -> Path:
        """The SLURM_CONF of this bed."""
        return self.conf_dir / "slurm.conf"

    @property
    def run_dir(self) -> Path:
        """Pid files."""
        return self.state_dir / "run"

    @property
    def log_dir(self) -> Path:
        """slurmctld, slurmd, epilog and anchor logs."""
        return self.state_dir / "log"

    @property
    def ctld_state_dir(self) -> Path:
        """StateSaveLocation."""
        return self.state_dir / "ctld"

    @property
    def spool_root(self) -> Path:
        """Parent of the per-node SlurmdSpoolDir."""
        return self.state_dir / "spool"

    @property
    def private_dir(self) -> Path:
        """Same path on every node, a tmpfs of its own in each node's mount namespace."""
        return self.state_dir / "private"

    @property
    def epilog_dir(self) -> Path:
        """Executables here run at the end of every job on every node of the job (epilog-dispatch)."""
        return self.state_dir / "epilog.d"

    @property
    def epilog_script(self) -> Path:
        """The slurm.conf Epilog: runs everything in epilog_dir."""
        return self.state_dir / "epilog-dispatch"

    @property
    def shared_root(self) -> Path:
        """World-writable (sticky) parent of the per-test shared directories."""
        return self.state_dir / "shared"

    @property
    def munge_dir(self) -> Path:
        """munged's pid, log and seed files (owned by the munge user)."""
        return self.state_dir / "munge"

    @property
    def record(self) -> Path:
        """bed.json, the machine-readable description of the running bed."""
        return self.state_dir / RECORD_NAME

    def ctld_pid_file(self) -> Path:
        """SlurmctldPidFile."""
        return self.run_dir / "slurmctld.pid"

    def slurmd_pid_file(self, node: str) -> Path:
        """SlurmdPidFile of one node (slurm.conf spells it with %n)."""
        return self.run_dir / f"slurmd-{node}.pid"

    def anchor_pid_file(self, node: str) -> Path:
        """Pid of the process owning the node's UTS and mount namespaces."""
        return self.run_dir / f"anchor-{node}.pid"

    def cache_pid_file(self, node: str) -> Path:
        """Pid of the bindfs serving the node's caching view of the shared root (cache mode only)."""
        return self.run_dir / f"bindfs-{node}.pid"

    @property
    def cache_options(self) -> str:
        """FUSE options of the caching mounts: names, attributes and misses all kept cache_timeout seconds."""
        t = self.cache_timeout
        return f"entry_timeout={t},attr_timeout={t},negative_timeout={t}"

    def munged_pid_file(self) -> Path:
        """munged's pid file."""
        return self.munge_dir / "munged.pid"

    def slurmd_log(self, node: str) -> Path:
        """SlurmdLogFile of one node."""
        return self.log_dir / f"slurmd-{node}.log"

    def ctld_log(self) -> Path:
        """SlurmctldLogFile."""
        return self.log_dir / "slurmctld.log"

    def epilog_log(self, node: str) -> Path:
        """What epilog-dispatch ran on one node."""
        return self.log_dir / f"epilog-{node}.log"

    def munged_log(self) -> Path:
        """munged's log file."""
        return self.munge_dir / "munged.log"

    # Environment ---------------------------------------------------------------------------------------
    def daemon_env(self) -> dict[str, str]:
        """The whole environment given to the bed's daemons: nothing inherited from the caller."""
        return {"PATH": DAEMON_PATH, "SLURM_CONF": str(self.slurm_conf), "LANG": "C.UTF-8"}

    def client_env(self) -> dict[str, str]:
        """Environment for sinfo/squeue/scontrol run by the bed itself: the caller's without SLURM_*."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(SLURM_ENV_PREFIXES)}
        env["SLURM_CONF"] = str(self.slurm_conf)
        return env

    # Record --------------------------------------------------------------------------------------------
    def to_record(self, status: str, **extra: Any) -> dict[str, Any]:
        """The JSON-able description written to bed.json."""
        return {
            "instance": self.instance,
            "status": status,
            "index": self.index,
            "hostname": self.hostname,
            "state_dir": str(self.state_dir),
            "conf": str(self.slurm_conf),
            "nodes": [{"name": n.name, "address": n.address, "netns": n.netns, "veth": n.veth} for n in self.nodes],
            "bridge": self.bridge,
            "bridge_address": self.bridge_address,
            "subnet": self.subnet,
            "ctld_port": self.ctld_port,
            "slurmd_port": self.slurmd_port,
            "munge_socket": str(self.munge_socket),
            "private_dir": str(self.private_dir),
            "epilog_dir": str(self.epilog_dir),
            "epilog_log_pattern": str(self.log_dir / "epilog-%n.log"),
            "shared_root": str(self.shared_root),
            "log_dir": str(self.log_dir),
            "run_dir": str(self.run_dir),
            "second_user": self.second_user,
            "kill_wait": self.kill_wait,
            "cache_timeout": self.cache_timeout,
            **extra,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> BedSpec:
        """Rebuild the spec from a bed.json mapping."""
        return cls(
            instance=str(record["instance"]),
            index=int(record["index"]),
            state_dir=Path(record["state_dir"]),
            hostname=str(record["hostname"]),
            kill_wait=int(record["kill_wait"]),
            nodes=tuple(
                NodeSpec(name=n["name"], address=n["address"], netns=n["netns"], veth=n["veth"])
                for n in record["nodes"]
            ),
            second_user=str(record.get("second_user", SECOND_USER)),
            cache_timeout=int(record.get("cache_timeout", DEFAULT_CACHE_TIMEOUT)),
        )


SLURM_ENV_PREFIXES = ("SLURM_", "SLURMD_", "SBATCH_", "SRUN_", "SALLOC_", "SQUEUE_", "SINFO_", "SCANCEL_")


def cache_timeout_from_env(default: int = DEFAULT_CACHE_TIMEOUT) -> int:
    """The cache timeout KSI_TESTBED_CACHE asks for (seconds), or default when it is unset or empty."""
    text = os.environ.get(ENV_CACHE, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise BedError(f"{ENV_CACHE}={text!r} is not a whole number of seconds (0 turns caching mounts off)") from None
    if value < 0:
        raise BedError(f"{ENV_CACHE}={text!r} must be 0 (off) or a number of seconds")
    return value


def validate_instance(instance: str) -> str:
    """Return instance if it is a usable name (lowercase letters, digits, inner dashes, <= 20 chars)."""
    if not INSTANCE_RE.match(instance):
        raise BedError(
            f"instance name {instance!r} is not usable: lowercase letters, digits and inner '-', "
            "starting with a letter, at most 20 characters"
        )
    return instance


def preferred_index(instance: str) -> int:
    """The index an instance tries first: a stable hash of its name into INDEX_RANGE."""
    return INDEX_RANGE.start + zlib.crc32(instance.encode()) % len(INDEX_RANGE)


def derive_spec(
    instance: str, index: int, n_nodes: int, kill_wait: int, state_root: Path, hostname: str,
    cache_timeout: int = DEFAULT_CACHE_TIMEOUT,
) -> BedSpec:  # fmt: skip
    """Build the description of a bed from its instance name, index, size, KillWait and cache timeout (pure)."""
    if not 1 <= n_nodes <= MAX_NODES:
        raise BedError(f"node count {n_nodes} out of range 1..{MAX_NODES}")
    if kill_wait < 1:
        raise BedError(f"kill_wait {kill_wait} must be at least 1 second")
    if cache_timeout < 0:
        raise BedError(f"cache timeout {cache_timeout} must be 0 (no caching mounts) or a number of seconds")
    nodes = tuple(
        NodeSpec(
            name=f"{instance}-node{i}",
            address=f"{SUBNET_PREFIX}.{index}.{FIRST_NODE_HOST + i - 1}",
            netns=f"ksitb-{instance}-node{i}",
            veth=f"ksitb{index}v{i}",
        )
        for i in range(1, n_nodes + 1)
    )
    return BedSpec(
        instance=instance,
        index=index,
        state_dir=state_root / instance,
        hostname=hostname,
        kill_wait=kill_wait,
        nodes=nodes,
        cache_timeout=cache_timeout,
    )


def render_slurm_conf(spec: BedSpec) -> str:
    """Return slurm.conf text for the bed (pure)."""
    sd = spec.state_dir
    node_lines = "\n".join(
        f"NodeName={n.name} NodeAddr={n.address} NodeHostname={n.name} CPUs={NODE_CPUS} "
        f"RealMemory={NODE_MEMORY_MB} State=UNKNOWN"
        for n in spec.nodes
    )
    return f"""\
# slurm.conf of the ksi test bed instance {spec.instance!r}; written by tests/testbed/bed, do not edit.
ClusterName={spec.cluster_name}
SlurmctldHost={spec.hostname}({spec.bridge_address})
SlurmctldPort={spec.ctld_port}
SlurmdPort={spec.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={spec.munge_socket}
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
SlurmdParameters=config_overrides
# Timeouts short enough that a fresh bed accepts jobs at once and signal tests stay quick.
KillWait={spec.kill_wait}
SlurmctldTimeout=30
SlurmdTimeout=30
MessageTimeout=10
TCPTimeout=2
InactiveLimit=0
MinJobAge=300
Waittime=0
UnkillableStepTimeout=60
PrologEpilogTimeout=120
Epilog={spec.epilog_script}
TmpFS={spec.private_dir}
StateSaveLocation={spec.ctld_state_dir}
SlurmdSpoolDir={spec.spool_root}/%n
SlurmctldPidFile={spec.ctld_pid_file()}
SlurmdPidFile={sd}/run/slurmd-%n.pid
SlurmctldLogFile={spec.ctld_log()}
SlurmdLogFile={sd}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
{node_lines}
PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""


CGROUP_CONF = """\
# Written by tests/testbed/bed. Nodes mount cgroup2 on /sys/fs/cgroup on a v1/v2 hybrid kernel; autodetect
# would then load cgroup/v2, which aborts on hybrid hosts. proctrack/linuxproc and task/none use no cgroup.
CgroupPlugin=cgroup/v1
"""


def tagged_hosts_lines(text: str, instance: str) -> list[str]:
    """Return the /etc/hosts lines of ``text`` that belong to ``instance`` (not to ``<instance>-cache``) (pure)."""
    tag = f"{HOSTS_TAG}{instance}"
    return [line for line in text.splitlines() if line.rstrip().endswith(tag)]


def render_hosts(existing: str, instance: str, nodes: Iterable[NodeSpec]) -> str:
    """Return /etc/hosts text with this instance's tagged lines replaced by one line per node (pure)."""
    tag = f"{HOSTS_TAG}{instance}"
    mine = set(tagged_hosts_lines(existing, instance))
    kept = [line for line in existing.splitlines() if line not in mine]
    added = [f"{n.address}\t{n.name}\t{tag}" for n in nodes]
    return "\n".join(kept + added) + "\n"


# --- processes and namespaces --------------------------------------------------------------------------


def read_pid(path: Path) -> int | None:
    """Return the pid stored in a pid file, or None."""
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def pid_alive(pid: int) -> bool:
    """True if pid exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state follows the parenthesised command name, which may itself contain ')'.
    return stat[stat.rfind(")") + 2 :].split()[0] != "Z"


def cmdline(pid: int) -> list[str]:
    """The argv of a running process ([] if it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def owned_pid(pid_file: Path, marker: str) -> int | None:
    """The pid from pid_file if that process is alive and its command line contains marker."""
    pid = read_pid(pid_file)
    if pid is None or not pid_alive(pid):
        return None
    return pid if any(marker in part for part in cmdline(pid)) else None


def ns_id(path: str | Path) -> tuple[int, int] | None:
    """(device, inode) identifying the namespace behind an nsfs path, or None."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return (st.st_dev, st.st_ino)


def pids_in_namespaces(kind: str, ids: set[tuple[int, int]]) -> list[int]:
    """Every live process whose namespace of the given kind ('net', 'mnt', ...) is one of ids."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and ns_id(entry / "ns" / kind) in ids and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def terminate(pids: Iterable[int], grace: float = STOP_GRACE) -> list[int]:
    """Send SIGTERM to pids, SIGKILL to those alive after grace seconds; return any that still live."""
    pending = {p for p in pids if p != os.getpid()}
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pid in pending:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while pending and time.monotonic() < deadline:
            pending = {p for p in pending if pid_alive(p)}
            if pending:
                time.sleep(0.05)
        if not pending:
            break
    return sorted(pending)


def link_exists(name: str) -> bool:
    """True if a network link of that name exists in the host network namespace."""
    return Path("/sys/class/net", name).exists()


# --- locking, records ----------------------------------------------------------------------------------


@contextlib.contextmanager
def global_lock(state_root: Path, timeout: float = 900.0) -> Iterator[None]:
    """Hold an exclusive flock on <state_root>/.lock: up and down of all instances run one at a time."""
    state_root.mkdir(parents=True, exist_ok=True)
    state_root.chmod(0o755)
    with (state_root / LOCK_NAME).open("a") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise BedError(f"another `bed` holds {state_root / LOCK_NAME} for over {timeout} s") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_record(state_dir: Path) -> dict[str, Any] | None:
    """The bed.json of an instance, or None if there is none or it does not describe a bed."""
    try:
        data = json.loads((state_dir / RECORD_NAME).read_text())
        BedSpec.from_record(data)
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_record(spec: BedSpec, status: str, **extra: Any) -> dict[str, Any]:
    """Write bed.json atomically (temporary file, then rename) and return what was written."""
    record = spec.to_record(status, **extra)
    spec.state_dir.mkdir(parents=True, exist_ok=True)
    tmp = spec.record.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.chmod(0o644)
    tmp.replace(spec.record)
    return record


def other_records(state_root: Path, instance: str) -> list[dict[str, Any]]:
    """The records of every other instance under state_root."""
    if not state_root.is_dir():
        return []
    records = []
    for child in state_root.iterdir():
        if child.is_dir() and child.name != instance:
            rec = read_record(child)
            if rec is not None:
                records.append(rec)
    return records


def index_is_free(index: int, taken: set[int]) -> bool:
    """True if no other bed, address, route or link uses the index's subnet, bridge name and ports."""
    if index in taken or link_exists(f"ksitb{index}"):
        return False
    net = f"{SUBNET_PREFIX}.{index}."
    addrs = run(["ip", "-o", "-4", "addr", "show"]).stdout
    routes = run(["ip", "-4", "route", "show", "table", "all"]).stdout
    if net in addrs or net in routes:
        return False
    for port in (PORT_BASE + 4 * index, PORT_BASE + 4 * index + 1):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("0.0.0.0", port))
            except OSError:
                return False
    return True


def allocate_index(instance: str, state_root: Path) -> int:
    """Pick the instance's index: its preferred one, or the next free one if another bed or link has it."""
    taken = {int(r["index"]) for r in other_records(state_root, instance) if "index" in r}
    first = preferred_index(instance)
    size = len(INDEX_RANGE)
    for step in range(size):
        index = INDEX_RANGE.start + (first - INDEX_RANGE.start + step) % size
        if index_is_free(index, taken):
            return index
    raise BedError("no free test bed index (every 10.213.x.0/24 is in use)")


# --- bring up ------------------------------------------------------------------------------------------


def ensure_packages(*, cache: bool = False) -> None:
    """Install slurm-wlm and munge (and bindfs for caching mounts) with apt-get if a program is missing."""
    packages = (*PACKAGES, *(CACHE_PACKAGES if cache else ()))
    programs = (*REQUIRED_PROGRAMS, *(CACHE_PROGRAMS if cache else ()))
    missing = [p for p in programs if shutil.which(p, path=DAEMON_PATH) is None]
    if not missing:
        return
    log(f"installing {' '.join(packages)} (missing: {' '.join(missing)})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update"], env=env, timeout=600)
    run(["apt-get", "install", "-y", *packages], env=env, timeout=900)
    still = [p for p in programs if shutil.which(p, path=DAEMON_PATH) is None]
    if still:
        raise BedError(f"after installing {' '.join(packages)} these programs are still missing: {still}")


def ensure_second_user(user: str) -> None:
    """Create the second Unix user with a home directory (useradd) unless it exists."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        log(f"creating user {user}")
        run(["useradd", "--create-home", "--user-group", "--shell", "/bin/bash", user])
        entry = pwd.getpwnam(user)
    home = Path(entry.pw_dir)
    if not home.is_dir():
        home.mkdir(mode=0o755, parents=True)
        os.chown(home, entry.pw_uid, entry.pw_gid)


def ensure_munge_key() -> None:
    """Create /etc/munge/munge.key (mungekey) if the package did not."""
    if MUNGE_KEY.exists():
        return
    log(f"creating {MUNGE_KEY}")
    run(["mungekey", "--create", "--keyfile", str(MUNGE_KEY)])
    munge = pwd.getpwnam(MUNGE_USER)
    os.chown(MUNGE_KEY, munge.pw_uid, munge.pw_gid)
    MUNGE_KEY.chmod(0o600)


def prepare_state_dir(spec: BedSpec) -> None:
    """Create the state directory afresh: config, epilog dispatcher, pid/log/spool/private/shared dirs."""
    if spec.state_dir.exists():
        shutil.rmtree(spec.state_dir)
    munge = pwd.getpwnam(MUNGE_USER)
    for d, mode in (
        (spec.state_dir, 0o755),
        (spec.conf_dir, 0o755),
        (spec.run_dir, 0o755),
        (spec.log_dir, 0o755),
        (spec.ctld_state_dir, 0o700),
        (spec.spool_root, 0o755),
        (spec.private_dir, 0o755),
        (spec.epilog_dir, 0o755),
        (spec.shared_root, 0o1777),
        (spec.munge_dir, 0o700),
    ):
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(mode)
    for node in spec.nodes:
        (spec.spool_root / node.name).mkdir(mode=0o755)
    os.chown(spec.munge_dir, munge.pw_uid, munge.pw_gid)
    spec.slurm_conf.write_text(render_slurm_conf(spec))
    (spec.conf_dir / "cgroup.conf").write_text(CGROUP_CONF)
    shutil.copyfile(EPILOG_SOURCE, spec.epilog_script)
    spec.epilog_script.chmod(0o755)


def start_munged(spec: BedSpec) -> None:
    """Start this instance's munged as the munge user and wait until it answers on its socket."""
    ensure_munge_key()
    munge = pwd.getpwnam(MUNGE_USER)
    MUNGE_RUN_DIR.mkdir(mode=0o755, exist_ok=True)
    os.chown(MUNGE_RUN_DIR, munge.pw_uid, munge.pw_gid)
    MUNGE_RUN_DIR.chmod(0o755)
    for stale in (spec.munge_socket, Path(f"{spec.munge_socket}.lock")):
        stale.unlink(missing_ok=True)
    run_daemon(
        [
            "runuser", "-u", MUNGE_USER, "--", "munged",
            f"--socket={spec.munge_socket}",
            f"--pid-file={spec.munged_pid_file()}",
            f"--log-file={spec.munged_log()}",
            f"--seed-file={spec.munge_dir / 'munged.seed'}",
            f"--key-file={MUNGE_KEY}",
        ],
        output=spec.log_dir / "daemons.out",
        env=spec.daemon_env(),
    )  # fmt: skip

    def answers() -> bool:
        return run(["munge", "-n", "-S", str(spec.munge_socket)], check=False, timeout=10).returncode == 0

    wait_for(f"munged on {spec.munge_socket}", answers, timeout=10)


def create_network(spec: BedSpec) -> None:
    """Create the bridge, one network namespace per node, the veth pairs, addresses and default routes."""
    run(["ip", "link", "add", spec.bridge, "type", "bridge"])
    run(["ip", "addr", "add", f"{spec.bridge_address}/24", "dev", spec.bridge])
    run(["ip", "link", "set", spec.bridge, "up"])
    for node in spec.nodes:
        run(["ip", "netns", "add", node.netns])
        run(["ip", "link", "add", node.veth, "type", "veth", "peer", "name", "eth0", "netns", node.netns])
        run(["ip", "link", "set", node.veth, "master", spec.bridge])
        run(["ip", "link", "set", node.veth, "up"])
        ns = ["ip", "-n", node.netns]
        run([*ns, "link", "set", "lo", "up"])
        run([*ns, "addr", "add", f"{node.address}/24", "dev", "eth0"])
        run([*ns, "link", "set", "eth0", "up"])
        run([*ns, "route", "add", "default", "via", spec.bridge_address])


def update_hosts(instance: str, nodes: Iterable[NodeSpec]) -> None:
    """Rewrite /etc/hosts in place (it may be a bind mount) with this instance's node lines."""
    with HOSTS_FILE.open("r+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        new = render_hosts(fh.read(), instance, nodes)
        fh.seek(0)
        fh.write(new)
        fh.truncate()


def start_anchor(spec: BedSpec, node: NodeSpec) -> int:
    """Start the node's anchor (hostname, private tmpfs, cgroup2) in its netns; return its pid."""
    proc = spawn_detached(
        [
            "nsenter", f"--net={NETNS_DIR / node.netns}", "--",
            "unshare", "--uts", "--mount", "--propagation", "private", "--",
            "sh", "-c", ANCHOR_SCRIPT, "anchor", node.name, str(spec.private_dir), PRIVATE_TMPFS_SIZE,
        ],
        output=spec.log_dir / f"anchor-{node.name}.log",
        env=spec.daemon_env(),
    )  # fmt: skip
    # nsenter, unshare and sh each exec the next, so the pid becomes `sleep infinity` once the node is set.

    def settled() -> bool:
        if proc.poll() is not None:
            raise BedError(
                f"anchor of {node.name} exited {proc.returncode}:\n{tail(spec.log_dir / f'anchor-{node.name}.log', 20)}"
            )
        return cmdline(proc.pid)[:1] == ["sleep"]

    wait_for(f"namespaces of {node.name}", settled, timeout=10, interval=0.02)
    spec.anchor_pid_file(node.name).write_text(f"{proc.pid}\n")
    return proc.pid


def nsenter_argv(anchor_pid: int, argv: Sequence[str], workdir: str | None = None) -> list[str]:
    """Return argv prefixed to run inside a node's network, UTS and mount namespaces."""
    wd = [f"--wd={workdir}"] if workdir else []
    return ["nsenter", f"--target={anchor_pid}", "--net", "--uts", "--mount", *wd, "--", *argv]


def fuse_mounted(pid: int, path: Path) -> bool:
    """True if a FUSE filesystem is mounted on path in the mount namespace of process pid."""
    try:
        table = Path(f"/proc/{pid}/mountinfo").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    for line in table.splitlines():
        fields, _, tail = line.partition(" - ")
        parts = fields.split()
        if len(parts) > 4 and parts[4] == str(path) and tail.split()[:1] in (["fuse"], ["fuse.bindfs"]):
            return True
    return False


def start_cache_mount(spec: BedSpec, node: NodeSpec, anchor_pid: int) -> None:
    """Give the node a caching client of the shared root: bindfs over it, in the node's mount namespace.

    The kernel's FUSE client keeps names (entry_timeout), attributes (attr_timeout) and "no such file"
    answers (negative_timeout) for cache_timeout seconds, like an NFS client's attribute, lookup and
    negative lookup caches: a name this node looked up and missed stays missing here after another node
    creates it, while listing the directory, O_EXCL create, link, mkdir and rename ask the filesystem.
    Locks are not forwarded to the source directory, so flock is node-local, as on NFS mounted with
    local_lock or nolock. bindfs runs in the foreground (-f) so that it stays a process the bed tracks; the
    node's processes (slurmd, tasks) share this mount namespace, so they all see the shared root through it.
    """
    if not FUSE_DEVICE.exists():
        raise BedError(f"caching mounts need {FUSE_DEVICE} (modprobe fuse), which this machine lacks")
    proc = spawn_detached(
        [
            "nsenter", f"--target={anchor_pid}", "--mount", "--",
            "bindfs", "-f", "--disable-lock-forwarding", "-o", spec.cache_options,
            str(spec.shared_root), str(spec.shared_root),
        ],
        output=spec.log_dir / f"bindfs-{node.name}.log",
        env=spec.daemon_env(),
    )  # fmt: skip
    # nsenter execs bindfs (no fork without --pid), so proc.pid is bindfs itself.

    def mounted() -> bool:
        if proc.poll() is not None:
            raise BedError(
                f"bindfs of {node.name} exited {proc.returncode}:\n{tail(spec.log_dir / f'bindfs-{node.name}.log', 20)}"
            )
        return fuse_mounted(anchor_pid, spec.shared_root)

    wait_for(f"the caching mount of {node.name}", mounted, timeout=10, interval=0.02)
    spec.cache_pid_file(node.name).write_text(f"{proc.pid}\n")


def start_slurmd(spec: BedSpec, node: NodeSpec, anchor_pid: int) -> None:
    """Start slurmd for one node inside the node's namespaces (it daemonises and writes its pid file)."""
    run_daemon(
        nsenter_argv(anchor_pid, ["slurmd", "-f", str(spec.slurm_conf), "-N", node.name], workdir="/"),
        output=spec.log_dir / "daemons.out",
        env=spec.daemon_env(),
    )


def node_states(spec: BedSpec) -> dict[str, str]:
    """Map node name to sinfo's short state (e.g. idle, alloc, down*), or {} if slurmctld does not answer."""
    proc = run(["sinfo", "-h", "-N", "-o", "%N %t"], check=False, timeout=15, env=spec.client_env())
    if proc.returncode != 0:
        return {}
    states = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


def start_bed(spec: BedSpec) -> None:
    """Bring the described bed up from nothing; on failure leave it for `down` to clean (record exists)."""
    prepare_state_dir(spec)
    write_record(spec, STATUS_STARTING)
    ensure_second_user(spec.second_user)
    start_munged(spec)
    create_network(spec)
    update_hosts(spec.instance, spec.nodes)
    run_daemon(["slurmctld", "-f", str(spec.slurm_conf)], output=spec.log_dir / "daemons.out",
               env=spec.daemon_env())  # fmt: skip

    def ctld_up() -> bool:
        ping = run(["scontrol", "ping"], check=False, timeout=15, env=spec.client_env())
        return "is UP" in ping.stdout

    wait_for("slurmctld to answer `scontrol ping`", ctld_up, timeout=UP_TIMEOUT)
    for node in spec.nodes:
        anchor = start_anchor(spec, node)
        if spec.cache_timeout:
            start_cache_mount(spec, node, anchor)
        start_slurmd(spec, node, anchor)

    def all_idle() -> bool:
        states = node_states(spec)
        return all(states.get(n.name) == "idle" for n in spec.nodes)

    wait_for("every node idle in sinfo", all_idle, timeout=UP_TIMEOUT, interval=0.2)


def health_problems(spec: BedSpec) -> list[str]:
    """What is wrong with a running bed (empty if every daemon lives and every node responds)."""
    problems = []
    if owned_pid(spec.munged_pid_file(), str(spec.munge_socket)) is None:
        problems.append("munged is not running")
    if owned_pid(spec.ctld_pid_file(), str(spec.slurm_conf)) is None:
        problems.append("slurmctld is not running")
    if not link_exists(spec.bridge):
        problems.append(f"bridge {spec.bridge} is missing")
    for node in spec.nodes:
        if not (NETNS_DIR / node.netns).exists():
            problems.append(f"netns {node.netns} is missing")
        anchor = owned_pid(spec.anchor_pid_file(node.name), "sleep")
        if anchor is None:
            problems.append(f"anchor of {node.name} is not running")
        elif spec.cache_timeout and (
            owned_pid(spec.cache_pid_file(node.name), "bindfs") is None or not fuse_mounted(anchor, spec.shared_root)
        ):
            problems.append(f"the caching mount of {node.name} is gone")
        if owned_pid(spec.slurmd_pid_file(node.name), str(spec.slurm_conf)) is None:
            problems.append(f"slurmd of {node.name} is not running")
    if problems:
        return problems
    states = node_states(spec)
    if not states:
        return ["sinfo gets no answer from slurmctld"]
    for node in spec.nodes:
        state = states.get(node.name, "missing")
        if state not in RESPONSIVE_NODE_STATES:  # e.g. down, drain, idle* (not responding), unk
            problems.append(f"node {node.name} is {state}")
    return problems


def describe(record: Mapping[str, Any]) -> str:
    """The KEY=value lines `up` prints."""
    nodes = " ".join(f"{n['name']}={n['address']}" for n in record["nodes"])
    return "\n".join(
        [
            f"INSTANCE={record['instance']}",
            f"SLURM_CONF={record['conf']}",
            f"NODES={nodes}",
            f"PRIVATE_DIR={record['private_dir']}",
            f"EPILOG_DIR={record['epilog_dir']}",
            f"SHARED_ROOT={record['shared_root']}",
            f"SECOND_USER={record['second_user']}",
            f"KILL_WAIT={record['kill_wait']}",
            f"CACHE_TIMEOUT={record.get('cache_timeout', DEFAULT_CACHE_TIMEOUT)}",
            f"STATE_DIR={record['state_dir']}",
            f"RECORD={Path(record['state_dir']) / RECORD_NAME}",
        ]
    )


def up(
    instance: str, state_root: Path, n_nodes: int, kill_wait: int, cache_timeout: int = DEFAULT_CACHE_TIMEOUT
) -> dict[str, Any]:
    """Reuse the instance if it runs healthy as asked (size, KillWait, cache), else (re)start it; return the record."""
    t0 = time.monotonic()
    with global_lock(state_root):
        ensure_packages(cache=cache_timeout > 0)
        state_dir = state_root / instance
        record = read_record(state_dir)
        if record is not None:
            spec = BedSpec.from_record(record)
            if record.get("status") != STATUS_READY:
                problems = [f"record says {record.get('status')!r}"]
            elif (len(spec.nodes), spec.kill_wait, spec.cache_timeout) != (n_nodes, kill_wait, cache_timeout):
                problems = [
                    f"running with {len(spec.nodes)} nodes, KillWait={spec.kill_wait} and cache timeout "
                    f"{spec.cache_timeout}, asked for {n_nodes}, {kill_wait} and {cache_timeout}"
                ]
            else:
                problems = health_problems(spec)
            if not problems:
                log(f"instance {instance} is up and healthy: reused ({time.monotonic() - t0:.1f} s)")
                return record
            log(f"instance {instance} restarts: {'; '.join(problems)}")
            stop_bed(spec)
        index = allocate_index(instance, state_root)
        hostname = socket.gethostname().split(".")[0]
        spec = derive_spec(instance, index, n_nodes, kill_wait, state_root, hostname, cache_timeout)
        try:
            start_bed(spec)
        except BaseException:
            log(f"start of {instance} failed; logs:\n{collect_logs(spec)}")
            stop_bed(spec, keep_record=True)
            raise
        elapsed = time.monotonic() - t0
        log(f"instance {instance} started in {elapsed:.1f} s")
        return write_record(spec, STATUS_READY, startup_seconds=round(elapsed, 2))


# --- tear down -----------------------------------------------------------------------------------------


def stop_bed(spec: BedSpec, *, keep_record: bool = False) -> list[str]:
    """Stop what the bed started and remove its namespaces, links, hosts lines; return what is left over."""
    netns_ids = {i for n in spec.nodes if (i := ns_id(NETNS_DIR / n.netns)) is not None}
    mnt_ids = set()
    for node in spec.nodes:
        anchor = owned_pid(spec.anchor_pid_file(node.name), "sleep")
        if anchor is not None and (i := ns_id(f"/proc/{anchor}/ns/mnt")) is not None:
            mnt_ids.add(i)
    # Everything living in a node's namespaces is the bed's: anchors, slurmd, slurmstepd, tasks, and any
    # daemon a task left behind (proctrack/linuxproc loses processes that re-parent to init).
    node_pids = set(pids_in_namespaces("net", netns_ids)) | set(pids_in_namespaces("mnt", mnt_ids))
    left = terminate(node_pids)
    for pid_file, marker in (
        (spec.ctld_pid_file(), str(spec.slurm_conf)),
        (spec.munged_pid_file(), str(spec.munge_socket)),
    ):
        pid = owned_pid(pid_file, marker)
        if pid is not None:
            left += terminate([pid], grace=10.0)
    for node in spec.nodes:
        if (NETNS_DIR / node.netns).exists():
            run(["ip", "netns", "delete", node.netns], check=False)
        if link_exists(node.veth):
            run(["ip", "link", "delete", node.veth], check=False)
    if link_exists(spec.bridge):
        run(["ip", "link", "delete", spec.bridge], check=False)
    if HOSTS_FILE.exists():
        update_hosts(spec.instance, [])
    for stale in (spec.munge_socket, Path(f"{spec.munge_socket}.lock")):
        stale.unlink(missing_ok=True)
    for pid_file in spec.run_dir.glob("*.pid") if spec.run_dir.is_dir() else []:
        pid_file.unlink(missing_ok=True)
    if not keep_record:
        spec.record.unlink(missing_ok=True)
    leftovers = [f"process {pid} ({' '.join(cmdline(pid))}) survived SIGKILL" for pid in left]
    leftovers += leftover_resources(spec)
    return leftovers


def leftover_resources(spec: BedSpec) -> list[str]:
    """Namespaces, links and hosts lines of the bed that still exist."""
    found = [f"netns {n.netns}" for n in spec.nodes if (NETNS_DIR / n.netns).exists()]
    found += [f"link {name}" for name in (spec.bridge, *(n.veth for n in spec.nodes)) if link_exists(name)]
    if HOSTS_FILE.exists() and tagged_hosts_lines(HOSTS_FILE.read_text(), spec.instance):
        found.append(f"{HOSTS_FILE} lines tagged {HOSTS_TAG}{spec.instance}")
    return found


def down(instance: str, state_root: Path, *, purge: bool = False) -> list[str]:
    """Stop the instance named by its bed.json; with purge also delete its state directory."""
    with global_lock(state_root):
        state_dir = state_root / instance
        record = read_record(state_dir)
        leftovers: list[str] = []
        if record is None:
            log(f"instance {instance} has no {RECORD_NAME}: nothing to stop")
        else:
            leftovers = stop_bed(BedSpec.from_record(record))
        if purge and state_dir.exists() and not leftovers:
            shutil.rmtree(state_dir)
        return leftovers


# --- status --------------------------------------------------------------------------------------------


def collect_logs(spec: BedSpec, lines: int = 40) -> str:
    """Tails of slurmctld, slurmd, epilog, munged, anchor and daemon-start logs of the bed."""
    files = [(spec.ctld_log(), lines)]
    for node in spec.nodes:
        files += [(spec.slurmd_log(node.name), lines), (spec.epilog_log(node.name), lines)]
    # munged logs an Info line ("Unauthorized credential", "Replayed credential") per Slurm message: noise.
    files += [(spec.munged_log(), 5), (spec.log_dir / "daemons.out", lines)]
    if spec.log_dir.is_dir():
        files += [(f, lines) for f in sorted(spec.log_dir.glob("anchor-*.log"))]
    return "\n".join(f"===== {f} =====\n{tail(f, n)}" for f, n in files if f.exists() and f.stat().st_size)


def status(instance: str, state_root: Path, out: TextIO) -> int:
    """Print the bed's description, its processes, sinfo and squeue; return 0 if it is healthy."""
    record = read_record(state_root / instance)
    if record is None:
        print(f"instance {instance}: not running (no {state_root / instance / RECORD_NAME})", file=out)
        return 3
    spec = BedSpec.from_record(record)
    print(f"instance {instance}: record status {record.get('status')}", file=out)
    print(describe(record), file=out)
    procs = [
        ("munged", owned_pid(spec.munged_pid_file(), str(spec.munge_socket))),
        ("slurmctld", owned_pid(spec.ctld_pid_file(), str(spec.slurm_conf))),
    ]
    for node in spec.nodes:
        procs.append((f"anchor {node.name}", owned_pid(spec.anchor_pid_file(node.name), "sleep")))
        if spec.cache_timeout:
            procs.append((f"caching mount {node.name}", owned_pid(spec.cache_pid_file(node.name), "bindfs")))
        procs.append((f"slurmd {node.name}", owned_pid(spec.slurmd_pid_file(node.name), str(spec.slurm_conf))))
    for name, pid in procs:
        print(f"  {name:<28} {'pid ' + str(pid) if pid else 'NOT RUNNING'}", file=out)
    env = spec.client_env()
    for argv in (["sinfo", "-N"], ["squeue"]):
        proc = run(argv, check=False, timeout=15, env=env)
        print(f"$ {shlex.join(argv)}\n{proc.stdout.rstrip()}{proc.stderr.rstrip()}", file=out)
    problems = health_problems(spec)
    for problem in problems:
        print(f"PROBLEM: {problem}", file=out)
    print("healthy" if not problems else "unhealthy", file=out)
    return 0 if not problems else 1


# --- command line --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The `bed` command line: up [N], down, status, each with --instance and --state-root; demo."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--instance", "-i", default=os.environ.get(ENV_INSTANCE, DEFAULT_INSTANCE),
        help=f"bed instance name (env {ENV_INSTANCE}, default {DEFAULT_INSTANCE})",
    )  # fmt: skip
    common.add_argument(
        "--state-root", type=Path, default=Path(os.environ.get(ENV_STATE_ROOT, str(DEFAULT_STATE_ROOT))),
        help=f"parent of the per-instance state directories (env {ENV_STATE_ROOT}, default {DEFAULT_STATE_ROOT})",
    )  # fmt: skip
    common.add_argument("--verbose", "-v", action="store_true", help="log every command run")
    parser = argparse.ArgumentParser(prog="bed", description="The ksi multi-node Slurm test bed.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", parents=[common], help="start the bed, or reuse it if it runs healthy")
    p_up.add_argument("nodes", nargs="?", type=int, default=DEFAULT_NODES, help="number of nodes (default 3)")
    p_up.add_argument("--kill-wait", type=int, default=DEFAULT_KILL_WAIT, help="slurm.conf KillWait in seconds")
    p_up.add_argument(
        "--cache-timeout", type=int, default=None,
        help=f"nodes see the shared directories through caching FUSE mounts that keep names, attributes and "
        f"misses this many seconds, as NFS clients do; 0 = off (env {ENV_CACHE}, default {DEFAULT_CACHE_TIMEOUT})",
    )  # fmt: skip
    p_up.add_argument("--json", action="store_true", help="print bed.json instead of KEY=value lines")
    p_down = sub.add_parser("down", parents=[common], help="stop the bed and remove what it created")
    p_down.add_argument("--purge", action="store_true", help="also delete the state directory and its logs")
    sub.add_parser("status", parents=[common], help="print what is running")
    # The demo has an instance of its own: never the KSI_TESTBED_INSTANCE bed of the tests, which it would stop.
    p_demo = sub.add_parser("demo", help="try ksi: a three-node run with simulated kind, nerdctl and liqoctl")
    p_demo.add_argument("--instance", "-i", default=None, help="bed instance for the demo (default demo)")
    p_demo.add_argument(
        "--state-root", type=Path, default=Path(os.environ.get(ENV_STATE_ROOT, str(DEFAULT_STATE_ROOT))),
        help=f"parent of the per-instance state directories (env {ENV_STATE_ROOT}, default {DEFAULT_STATE_ROOT})",
    )  # fmt: skip
    p_demo.add_argument("--keep", action="store_true", help="keep the demo's files (run directories, logs)")
    p_demo.add_argument("--verbose", "-v", action="store_true", help="log every command the bed runs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of tests/testbed/bed; returns the exit status."""
    global _verbose
    args = build_parser().parse_args(argv)
    _verbose = bool(args.verbose)
    if os.geteuid() != 0:
        log("must run as root (it creates namespaces, links and users)")
        return 2
    try:
        state_root: Path = args.state_root.resolve()
        if args.command == "demo":
            from tests.testbed import demo

            return demo.main(args.instance, state_root, args.keep)
        instance = validate_instance(args.instance)
        if args.command == "up":
            cache = cache_timeout_from_env() if args.cache_timeout is None else args.cache_timeout
            record = up(instance, state_root, args.nodes, args.kill_wait, cache)
            print(json.dumps(record, indent=2) if args.json else describe(record))
            return 0
        if args.command == "down":
            leftovers = down(instance, state_root, purge=args.purge)
            for item in leftovers:
                log(f"left over: {item}")
            if not leftovers:
                log(f"instance {instance} is down")
            return 1 if leftovers else 0
        return status(instance, state_root, sys.stdout)
    except BedError as exc:
        log(f"ERROR: {exc}")
        return 1

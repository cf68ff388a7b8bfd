"""Plumbing shared by the simulated kind, nerdctl and liqoctl: state paths, records, flags, faults, errors.

Standard library only: the node-container process imports this module with ``python -S``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

REPO_ROOT = Path(__file__).resolve().parents[2]
SIMHOST_DIR = Path(__file__).resolve().parent
NODE_SCRIPT = SIMHOST_DIR / "node.py"

ENV_ROOT = "KSI_SIM_ROOT"
ENV_FAULTS = "KSI_SIM_FAULTS"
DEFAULT_ROOT = "/tmp/ksi-sim"
NOT_MODELLED_EXIT = 70  # EX_SOFTWARE: distinct from the tools' own failure status 1

RECORD = "record.json"  # what `nerdctl run` knows about a container, written once, atomically
STATE = "state.json"  # what the node-container process says about itself (pid, exit)

FAULT_OPS = frozenset({
    "kind-create", "kind-delete", "kind-load",
    "nerdctl-ps", "nerdctl-rm", "nerdctl-info", "nerdctl-inspect", "nerdctl-pull", "nerdctl-save", "nerdctl-load",
    "registry",  # every contact with a registry or chart repository: fail = no network
    "liqoctl-install", "liqoctl-peer", "liqoctl-unpeer", "liqoctl-offload",
    "api-token",  # the node container's API server answering a TokenRequest (set when the cluster is created)
})


class SimError(Exception):
    """A failure the real tool also has: its message goes to stderr as is, then the tool exits."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class NotModelled(Exception):
    """The simulation was asked for something it does not model; the detail says what."""


def run_tool(tool: str, argv: Sequence[str], run: Callable[[list[str]], int]) -> int:
    """Run a tool's ``run(args)``; print modelled errors as they are and unmodelled requests loudly.

    Signals keep their default action, as in the Go tools, which handle none: SIGINT or SIGTERM kill the
    process at once, leaving behind whatever it created (containers, a kubeconfig lock file).
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        return run(list(argv[1:]))
    except NotModelled as exc:
        print(f"ERROR: simulated {tool} does not model: {shlex.join(argv)} ({exc})", file=sys.stderr)
        return NOT_MODELLED_EXIT
    except SimError as exc:
        if exc.message:
            print(exc.message, file=sys.stderr)
        return exc.exit_code


# ----------------------------------------------------------------------------------------------- flags


@dataclass(frozen=True)
class Flag:
    """A command-line flag in pflag style: ``--name value``, ``--name=value``, ``-s value``, ``--bool``."""

    name: str
    short: str = ""
    kind: str = "str"  # "str", "bool" or "list" (repeatable)


def parse_flags(args: Sequence[str], flags: Sequence[Flag]) -> tuple[dict[str, Any], list[str]]:
    """Split ``args`` into flag values and positional arguments; unknown flags are not modelled."""
    by_long = {f.name: f for f in flags}
    by_short = {f.short: f for f in flags if f.short}
    values: dict[str, Any] = {}
    positional: list[str] = []

    def store(flag: Flag, value: str) -> None:
        if flag.kind == "list":
            values.setdefault(flag.name, []).append(value)
        elif flag.kind == "bool":
            if value.lower() not in ("true", "false", "1", "0", "t", "f"):
                raise SimError(f'ERROR: invalid argument "{value}" for "--{flag.name}" flag: '
                               f'strconv.ParseBool: parsing "{value}": invalid syntax')
            values[flag.name] = value.lower() in ("true", "1", "t")
        else:
            values[flag.name] = value

    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            positional.extend(args[i + 1:])
            break
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            flag = by_long.get(name)
            if flag is None:
                raise NotModelled(f"flag --{name}")
            if flag.kind == "bool":
                store(flag, value if eq else "true")
            else:
                if not eq:
                    i += 1
                    if i >= len(args):
                        raise SimError(f"ERROR: flag needs an argument: --{name}")
                    value = args[i]
                store(flag, value)
        elif arg.startswith("-") and len(arg) > 1:
            j = 1
            while j < len(arg):
                flag = by_short.get(arg[j])
                if flag is None:
                    raise NotModelled(f"flag -{arg[j]}")
                rest = arg[j + 1:]
                if flag.kind == "bool":
                    if rest.startswith("="):
                        store(flag, rest[1:])
                        break
                    store(flag, "true")
                    j += 1
                    continue
                if rest:
                    store(flag, rest.removeprefix("="))
                else:
                    i += 1
                    if i >= len(args):
                        raise SimError(f"ERROR: flag needs an argument: '{arg[j]}' in -{arg[j]}")
                    store(flag, args[i])
                break
        else:
            positional.append(arg)
        i += 1
    return values, positional


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str, flag: str) -> float:
    """Return seconds from a Go duration such as ``5m``, ``1m30s`` or ``0``; raise SimError like pflag."""
    body = text.lstrip("+")
    if body == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(body):
        match = _DURATION_PART.match(body, pos)
        if match is None:
            break
        total += float(match[1]) * _DURATION_UNITS[match[2]]
        pos = match.end()
    if not body or pos != len(body):
        raise SimError(f'ERROR: invalid argument "{text}" for "--{flag}" flag: '
                       f'time: invalid duration "{text}"')
    return total


def format_duration(seconds: float) -> str:
    """Format seconds the way Go's time.Duration.String does for whole seconds (``5m0s``, ``1h0m0s``)."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


# ----------------------------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class Fault:
    """One injected fault: what goes wrong with ``op`` on this host."""

    op: str
    mode: str  # fail, hang, slow, crash-after-container
    seconds: float = 0.0


def fault_for(op: str) -> Fault | None:
    """Return the fault KSI_SIM_FAULTS injects into ``op`` on this host; reject a malformed variable."""
    spec = os.environ.get(ENV_FAULTS, "")
    here = socket.gethostname()
    found: Fault | None = None
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        if item.startswith("pod/"):
            parse_pod_fault(item)  # checked here too: a malformed variable fails whichever tool reads it first
            continue
        target, sep, mode = item.partition(":")
        name, _, host = target.partition("@")
        seconds = 0.0
        if mode.startswith("slow="):
            try:
                seconds = float(mode.removeprefix("slow="))
            except ValueError:
                sep = ""
            mode = "slow"
        valid_mode = mode in ("fail", "hang", "slow") or (mode == "crash-after-container" and name == "kind-create")
        if not sep or name not in FAULT_OPS or not valid_mode:
            raise SimError(f"ERROR: {ENV_FAULTS}: cannot use {item!r}: expected OP[@HOST]:MODE with OP one of "
                           f"{', '.join(sorted(FAULT_OPS))} and MODE fail, hang, slow=SECONDS or "
                           "crash-after-container (kind-create only)", 2)
        if name == op and (not host or host == here):
            found = Fault(op, mode, seconds)
    return found


@dataclass(frozen=True)
class PodFault:
    """A fault of the pods whose name matches ``pattern`` when they run on ``host`` (any host if empty).

    Modes: ``exit`` (the container's command runs, then the container exits with ``value``), ``oom`` (the
    container is OOM-killed ``value`` seconds after it starts; at once, even a command that ends at once,
    without a value), ``node-lost`` (``value`` seconds after the
    container starts, the node it runs on stops: NotReady, every pod on it lost), ``slow`` (the container
    starts ``value`` seconds late, as after a slow image pull).
    """

    pattern: str
    host: str
    mode: str
    value: float


POD_FAULT_MODES = ("exit", "oom", "node-lost", "slow")


def parse_pod_fault(item: str) -> PodFault:
    """Parse ``pod/GLOB[@HOST]:MODE[=VALUE]``; raise SimError (exit 2) naming the item when malformed."""
    target, sep, mode_text = item.partition(":")
    pattern, _, host = target.removeprefix("pod/").partition("@")
    mode, eq, value_text = mode_text.partition("=")
    value = 0.0
    ok = bool(sep and pattern and mode in POD_FAULT_MODES)
    if ok and (eq or mode in ("exit", "slow")):
        try:
            value = float(value_text)
        except ValueError:
            ok = False
        if mode == "exit" and (value != int(value) or not 1 <= value <= 255):
            ok = False
    if not ok:
        raise SimError(f"ERROR: {ENV_FAULTS}: cannot use {item!r}: expected pod/GLOB[@HOST]:MODE with MODE "
                       "exit=N (1-255), oom[=SECONDS], node-lost[=SECONDS] or slow=SECONDS", 2)
    return PodFault(pattern, host, mode, value)


def pod_faults() -> list[PodFault]:
    """Return the pod faults KSI_SIM_FAULTS injects on this host (raise SimError when malformed)."""
    spec = os.environ.get(ENV_FAULTS, "")
    here = socket.gethostname()
    found = [parse_pod_fault(item.strip()) for item in spec.split(",") if item.strip().startswith("pod/")]
    return [f for f in found if not f.host or f.host == here]


def delay_or_fail(op: str) -> bool:
    """Apply the hang or slow fault of ``op`` here; return True when ``op`` must fail (the caller says how)."""
    fault = fault_for(op)
    if fault is None:
        return False
    if fault.mode == "hang":
        hang()
    if fault.mode == "slow":
        time.sleep(fault.seconds)
        return False
    return True


def hang() -> NoReturn:
    """Block until a signal kills this process (SIGTERM and SIGKILL keep their default action)."""
    while True:
        signal.pause()


# ----------------------------------------------------------------------------------------------- state


def sim_root() -> Path:
    """Return the root of all simulated hosts' state (KSI_SIM_ROOT, default /tmp/ksi-sim)."""
    return Path(os.environ.get(ENV_ROOT) or DEFAULT_ROOT).absolute()  # node processes run in /


def _mkdir_shared(path: Path) -> None:
    """Create ``path`` world-writable and sticky (like /tmp) so every user can add their own directory."""
    try:
        path.mkdir()
    except FileExistsError:
        return
    path.chmod(0o1777)


def state_dir() -> Path:
    """Return (creating it) this user's state on this host: ``<root>/<hostname>/<uid>``, mode 0700."""
    root = sim_root()
    if not root.exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        _mkdir_shared(root)
    host = root / socket.gethostname()
    _mkdir_shared(host)
    user = host / str(os.getuid())
    user.mkdir(mode=0o700, exist_ok=True)
    (user / "containers").mkdir(mode=0o700, exist_ok=True)
    return user


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``directory/lock`` (read-modify-write of container records)."""
    with open(directory / "lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_json(path: Path, data: Any, mode: int = 0o600) -> None:
    """Write ``data`` as JSON to ``path`` atomically: a temporary file in the same directory, then rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle)
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    """Return the JSON in ``path``, or None when it does not exist."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def process_start(pid: int) -> int | None:
    """Return the start time (clock ticks since boot) of a live process, None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def alive(pid: int, start: int | None) -> bool:
    """Return True when process ``pid`` runs and is the one that started at ``start`` (no pid reuse)."""
    return start is not None and process_start(pid) == start


@dataclass
class Container:
    """A container record plus the live state of its process."""

    dir: Path
    record: dict[str, Any]
    state: dict[str, Any] | None  # None: created, never started

    @property
    def id(self) -> str:
        """Return the 64-hex-digit container ID."""
        return str(self.record["id"])

    @property
    def name(self) -> str:
        """Return the container name."""
        return str(self.record["name"])

    @property
    def labels(self) -> dict[str, str]:
        """Return the container labels."""
        return dict(self.record["labels"])

    @property
    def pid(self) -> int | None:
        """Return the pid of the container's process, if it was started."""
        return int(self.state["pid"]) if self.state else None

    @property
    def status(self) -> str:
        """Return ``created``, ``running`` or ``exited`` from the record and the live process table."""
        if self.state is None:
            return "created"
        if self.state.get("exit_code") is None and alive(int(self.state["pid"]), self.state.get("start")):
            return "running"
        return "exited"

    @property
    def exit_code(self) -> int:
        """Return the exit status of an exited container (137 when its process was killed)."""
        code = self.state.get("exit_code") if self.state else None
        return 137 if code is None else int(code)


def load_containers(containers_dir: Path) -> list[Container]:
    """Read every container record under ``containers_dir`` (newest first, like nerdctl ps)."""
    found = []
    for record_path in containers_dir.glob(f"*/{RECORD}"):
        record = read_json(record_path)
        if record is not None:
            found.append(Container(record_path.parent, record, read_json(record_path.parent / STATE)))
    return sorted(found, key=lambda c: -float(c.record["created"]))


def kill_process(pid: int, start: int | None, timeout: float = 5.0) -> None:
    """SIGKILL process ``pid`` (if it is still the one that started at ``start``) and wait until it is gone."""
    if not alive(pid, start):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while alive(pid, start):
        if time.monotonic() > deadline:
            raise SimError(f"ERROR: process {pid} survived SIGKILL for {timeout} s")
        time.sleep(0.002)


def session_of(pid: int) -> int | None:
    """Return the session id of process ``pid`` (None when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[3])


def session_members(sid: int) -> dict[int, int | None]:
    """Return pid -> start time of every live process in session ``sid`` (a node container and its pods)."""
    found: dict[int, int | None] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            found[int(proc.name)] = int(fields[19])
    return found


def kill_session(sid: int, timeout: float = 5.0) -> None:
    """SIGKILL every process of session ``sid`` and wait until they are gone: a container's processes die with it.

    A pod's processes run in the node container's session (in their own process groups), like the processes
    of a container's pid namespace, which the runtime kills together when the container is removed.
    """
    deadline = time.monotonic() + timeout
    while True:
        members = session_members(sid)
        if not members:
            return
        for pid, start in members.items():
            if alive(pid, start):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise SimError(f"ERROR: processes {sorted(members)} of session {sid} survived SIGKILL for {timeout} s")
        time.sleep(0.002)


# ----------------------------------------------------------------------------------------------- output


def go_time(moment: float | None = None) -> str:
    """Format a time like Go's RFC 3339 with the local offset (``2025-01-02T03:04:05+01:00``)."""
    local = datetime.fromtimestamp(time.time() if moment is None else moment, UTC).astimezone()
    text = local.isoformat(timespec="seconds")
    return text.replace("+00:00", "Z")


def go_quote(text: str) -> str:
    """Quote ``text`` like Go's %q (what logrus does to a message with spaces or quotes)."""
    return json.dumps(text, ensure_ascii=False)


def logrus(level: str, message: str) -> str:
    """Return a logrus text line as nerdctl prints it on stderr when stderr is not a terminal."""
    return f"time={go_quote(go_time())} level={level} msg={go_quote(message)}"

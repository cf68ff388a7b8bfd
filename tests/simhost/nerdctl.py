"""Simulated rootless nerdctl 2.x: container records per host and user, and the commands ksi and kind use.

Modelled commands: ``-v``, ``version``, ``info``, ``ps``, ``rm``, ``inspect`` (containers; images with
``--type=image``), and the image commands of :mod:`tests.simhost.nerdctl_images`: ``pull``, ``save``,
``load``, ``image inspect``. ``run`` is not a command
here: kind starts its node containers through :func:`run_node`, which does what ``nerdctl run -d`` does
for a kind node (mounts, published ports, a detached process).
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.simhost import nerdctl_images
from tests.simhost.common import (
    NODE_SCRIPT,
    RECORD,
    Container,
    Flag,
    NotModelled,
    alive,
    delay_or_fail,
    kill_process,
    kill_session,
    load_containers,
    locked,
    logrus,
    parse_flags,
    run_tool,
    session_of,
    state_dir,
    write_json,
)
from tests.simhost.nerdctl_images import fatal

VERSION = "2.0.3"
CONTAINERD_VERSION = "v2.0.2"
RUNC_VERSION = "1.2.4"
NODE_COMMAND = ["/usr/local/bin/entrypoint", "/sbin/init"]
READY_TIMEOUT = 30.0




def apply_fault(op: str) -> None:
    """Apply the KSI_SIM_FAULTS fault for ``op``: hang, sleep, or fail as a stopped rootless containerd does."""
    if delay_or_fail(op):
        raise fatal("rootless containerd not running? (hint: use `containerd-rootless-setuptool.sh install` to "
                    f"start rootless containerd): stat /run/user/{os.getuid()}/containerd-rootless: no such file "
                    "or directory")


def containers() -> list[Container]:
    """Return this user's containers on this host, newest first."""
    return load_containers(state_dir() / "containers")


# ------------------------------------------------------------------------------------------------ run


@dataclass(frozen=True)
class Port:
    """A published port: ``--publish=HOST_IP:HOST_PORT:CONTAINER_PORT/PROTOCOL``."""

    host_ip: str
    host_port: int
    container_port: int
    protocol: str  # tcp or udp
    api: bool = False  # the node's API server listens behind this one


@dataclass(frozen=True)
class Mount:
    """A bind mount: ``--volume=HOST_PATH:CONTAINER_PATH[:OPTIONS]``."""

    host_path: str
    container_path: str
    read_only: bool = False
    propagation: str = "None"
    selinux_relabel: bool = False


def normalize_image(image: str) -> str:
    """Return the fully qualified reference nerdctl records (``kindest/node:v1`` -> ``docker.io/kindest/node:v1``)."""
    first = image.split("/", maxsplit=1)[0]
    if "/" in image and ("." in first or ":" in first or first == "localhost"):
        return image
    return "docker.io/" + (image if "/" in image else f"library/{image}")


def run_node(name: str, image: str, labels: dict[str, str], ports: Sequence[Port], mounts: Sequence[Mount],
             api_spec: dict[str, Any], prepare: Callable[[Path], None]) -> Container:
    """Create and start a kind node container: what ``nerdctl run -d --name NAME ...`` does for kind.

    Creates missing bind-mount sources (nerdctl's ``-v`` does), writes the record, has ``prepare`` write
    files into the container directory, then starts the detached node process and waits until it serves.
    Raises NerdctlFailure when a source cannot be created, the name is taken or a port cannot be bound
    (the container then stays, Created, as with the real runtime).
    """
    for mount in mounts:
        try:
            Path(mount.host_path).mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as exc:
            raise fatal(f'failed to mkdir "{mount.host_path}": mkdir {exc.filename}: '
                        f"{(exc.strerror or str(exc)).lower()}") from None
    state = state_dir()
    container_id = os.urandom(32).hex()
    cdir = state / "containers" / container_id
    with locked(state):
        for other in containers():
            if other.name == name:
                raise fatal(f'name "{name}" is already used by ID "{other.id}"')
        cdir.mkdir(mode=0o700)
        write_json(cdir / "spec.json", {"ports": [p.__dict__ for p in ports], "api": api_spec})
        prepare(cdir)
        write_json(cdir / RECORD, {
            "id": container_id, "name": name, "image": normalize_image(image), "command": NODE_COMMAND,
            "labels": labels,
            "created": time.time(), "hostname": name, "host": socket.gethostname(), "uid": os.getuid(),
            "ports": [p.__dict__ for p in ports], "mounts": [m.__dict__ for m in mounts],
            "log": str(cdir / "node.log"),
        })
    ready = spawn_node(cdir)
    message = wait_ready(ready, cdir)
    if "error" in message:
        raise fatal("failed to create shim task: OCI runtime create failed: runc create failed: unable to start "
                    "container process: error during container init: error running createRuntime hook #0: exit "
                    f"status 1, stdout: , stderr: {logrus('fatal', 'cannot expose ports: ' + message['error'])}"
                    ": unknown")
    return next(c for c in containers() if c.id == container_id)


def spawn_node(cdir: Path) -> int:
    """Start the node process fully detached (double fork, setsid, stdio on the log); return the ready fd."""
    read_end, write_end = os.pipe()
    log = os.open(cdir / "node.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the forked child
        try:
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            os.chdir("/")
            os.umask(0o022)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.dup2(write_end, 3)
            os.closerange(4, 1 << 16)
            os.execv(sys.executable, [sys.executable, "-I", "-S", str(NODE_SCRIPT), str(cdir), "3"])
        finally:
            os._exit(127)
    os.close(write_end)
    os.close(log)
    os.waitpid(child, 0)
    return read_end


def wait_ready(fd: int, cdir: Path, timeout: float = READY_TIMEOUT) -> dict[str, Any]:
    """Read the node's one-line readiness report from ``fd`` (closing it); an early exit is an error."""
    deadline = time.monotonic() + timeout
    data = b""
    try:
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return {"error": f"node process not ready after {timeout} s (see {cdir / 'node.log'})"}
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    if not data.strip():
        log = (cdir / "node.log").read_text(errors="replace").strip().splitlines()[-3:]
        return {"error": "node process exited before it was ready: " + " / ".join(log)}
    result: dict[str, Any] = json.loads(data)
    return result


# ------------------------------------------------------------------------------------------------ rm


def find(request: str, pool: Sequence[Container]) -> list[Container]:
    """Return the containers ``request`` names: an exact name or an ID prefix (nerdctl's container walker)."""
    return [c for c in pool if c.name == request or c.id.startswith(request)]


def remove_container(container: Container) -> None:
    """Kill the container's process (SIGKILL, waiting until it is gone) and delete its record and files."""
    if container.state is not None:
        pid, start = int(container.state["pid"]), container.state.get("start")
        session = session_of(pid) if alive(pid, start) else None
        kill_process(pid, start)
        if session is not None:  # the node's session: its pods' processes
            kill_session(session)
    (container.dir / RECORD).unlink(missing_ok=True)
    shutil.rmtree(container.dir, ignore_errors=True)


def remove(requests: Sequence[str], force: bool) -> tuple[list[str], list[str]]:
    """Remove containers like ``nerdctl rm [-f]``; return (requests removed, error messages)."""
    apply_fault("nerdctl-rm")
    removed, errors = [], []
    state = state_dir()
    with locked(state):
        pool = containers()
        for request in requests:
            found = find(request, pool)
            if not found:
                errors.append(f"no such container: {request}")
            elif len(found) > 1:
                errors.append(f"multiple IDs found with provided prefix: {request}")
            elif found[0].status == "running" and not force:
                errors.append(f"container {found[0].id} is in running status. unpause/stop container first or "
                              "force removal")
            else:
                remove_container(found[0])
                removed.append(request)
    return removed, errors


# ------------------------------------------------------------------------------------------------ ps


def ps(show_all: bool, filters: Sequence[str]) -> list[Container]:
    """Return the containers ``nerdctl ps [-a] [--filter ...]`` lists (a status filter implies -a)."""
    apply_fault("nerdctl-ps")
    labels: list[tuple[str, str | None]] = []
    names: list[str] = []
    statuses: list[str] = []
    for item in filters:
        key, sep, value = item.partition("=")
        if not sep:
            raise fatal(f'invalid filter "{item}"')
        if key == "label":
            label, eq, label_value = value.partition("=")
            labels.append((label, label_value if eq else None))
        elif key == "name":
            names.append(value)
        elif key == "status":
            if value not in ("created", "running", "paused", "stopped", "exited", "pausing", "unknown"):
                raise fatal(f'invalid filter "status={value}": expected one of created, running, paused, stopped, '
                            "exited, pausing, unknown")
            statuses.append(value)
        else:
            raise NotModelled(f"ps filter {key!r}")
    found = []
    for container in containers():
        status = container.status
        if not (show_all or statuses or status == "running"):
            continue
        if any(container.labels.get(k) is None or (v is not None and container.labels[k] != v) for k, v in labels):
            continue
        if names and not any(n in container.name for n in names):
            continue
        if statuses and status not in statuses:
            continue
        found.append(container)
    return found


def human_since(moment: float) -> str:
    """Format the time since ``moment`` as docker's units.HumanDuration does, plus `` ago``."""
    seconds = time.time() - moment
    minutes, hours = seconds / 60, seconds / 3600
    if seconds < 1:
        text = "Less than a second"
    elif seconds < 60:
        text = "1 second" if int(seconds) == 1 else f"{int(seconds)} seconds"
    elif round(minutes) == 1:
        text = "About a minute"
    elif minutes < 60:
        text = f"{int(minutes)} minutes"
    elif round(hours) == 1:
        text = "About an hour"
    elif hours < 48:
        text = f"{round(hours)} hours"
    else:
        text = f"{int(hours // 24)} days"
    return f"{text} ago"


def list_item(container: Container, truncate: bool) -> dict[str, Any]:
    """Return the container as nerdctl's ps ListItem (the object ``--format '{{json .}}'`` prints)."""
    record = container.record
    command = " ".join(record["command"])
    if truncate and len(command) > 20:
        command = command[:19] + "…"
    status = {"running": "Up", "created": "Created"}.get(container.status, f"Exited ({container.exit_code})")
    created = datetime.fromtimestamp(record["created"], UTC).astimezone()
    return {
        "Command": f'"{command}"',
        "CreatedAt": created.isoformat(),
        "ID": container.id[:12] if truncate else container.id,
        "Image": record["image"],
        "Platform": "linux/amd64",
        "Names": container.name,
        "Ports": ", ".join(f"{p['host_ip']}:{p['host_port']}->{p['container_port']}/{p['protocol']}"
                           for p in record["ports"]),
        "Status": status,
        "Runtime": "io.containerd.runc.v2",
        "Size": "",
        "Labels": ",".join(f"{k}={v}" for k, v in sorted(record["labels"].items())),
    }


def go_json(data: Any, indent: int | None = None) -> str:
    """Encode like Go's encoding/json: compact, with <, > and & escaped."""
    separators = (",", ":") if indent is None else (",", ": ")
    text = json.dumps(data, ensure_ascii=False, indent=indent, separators=separators)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


_ACTION = re.compile(r"\{\{\s*(.*?)\s*\}\}")


def check_template(template: str, labels: bool) -> None:
    """Refuse, before any output, template actions outside the modelled subset (Go parses templates first)."""
    for match in _ACTION.finditer(template):
        expr = match[1]
        if not (expr == "json ." or re.fullmatch(r"\.(\w+)", expr)
                or (labels and re.fullmatch(r'\.Label\s+"([^"]*)"', expr))):
            raise NotModelled(f"template action {{{{{expr}}}}}")


def render(template: str, item: dict[str, Any], labels: dict[str, str] | None = None) -> str:
    """Render the Go-template subset nerdctl users need: ``{{json .}}``, ``{{.Field}}``, ``{{.Label "k"}}``."""
    if template == "json":  # nerdctl's shorthand for {{json .}}
        return go_json(item)
    if template.startswith("table "):
        raise NotModelled(f"--format {template!r} (a table template)")
    check_template(template, labels is not None)

    def action(match: re.Match[str]) -> str:
        expr = match[1]
        if expr == "json .":
            return go_json(item)
        label = re.fullmatch(r'\.Label\s+"([^"]*)"', expr)
        if label and labels is not None:
            return labels.get(label[1], "")
        field = re.fullmatch(r"\.(\w+)", expr)
        assert field is not None
        if field[1] not in item:
            raise fatal(f'template: :1:{match.start() + 3}: executing "" at <.{field[1]}>: can\'t evaluate field '
                        f"{field[1]}")
        value = item[field[1]]
        return go_json(value) if isinstance(value, dict | list) else str(value)

    return _ACTION.sub(action, template.replace("\\t", "\t").replace("\\n", "\n"))


def table(rows: list[list[str]]) -> str:
    """Align rows like Go's tabwriter (minwidth 4, padding 4), the last column unpadded."""
    widths = [max(4, *(len(r[i]) for r in rows)) + 4 for i in range(len(rows[0]) - 1)]
    return "".join("".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + r[-1] + "\n" for r in rows)


# ------------------------------------------------------------------------------------------------ info


def info() -> dict[str, Any]:
    """Return what ``nerdctl info --format '{{json .}}'`` prints (dockercompat.Info: no DockerRootDir)."""
    apply_fault("nerdctl-info")
    rootless = os.environ.get("KSI_SIM_ROOTFUL") != "1"
    security = ["name=seccomp,profile=builtin", "name=cgroupns"] + (["name=rootless"] if rootless else [])
    meminfo = Path("/proc/meminfo").read_text().split()
    return {
        "ID": "", "Driver": "overlayfs", "Plugins": {"Log": ["fluentd", "journald", "json-file", "syslog"],
                                                     "Storage": ["native", "overlayfs"]},
        "MemoryLimit": True, "SwapLimit": True, "CpuCfsPeriod": True, "CpuCfsQuota": True, "CPUShares": True,
        "CPUSet": True, "PidsLimit": True, "IPv4Forwarding": True, "BridgeNfIptables": False,
        "BridgeNfIp6tables": False, "LoggingDriver": "json-file", "CgroupDriver": "systemd", "CgroupVersion": "2",
        "KernelVersion": os.uname().release, "OperatingSystem": "Debian GNU/Linux 12 (bookworm)", "OSType": "linux",
        "Architecture": os.uname().machine, "NCPU": os.cpu_count() or 1, "MemTotal": int(meminfo[1]) * 1024,
        "Name": socket.gethostname(),
        "ServerVersion": CONTAINERD_VERSION, "SecurityOptions": security, "Warnings": None,
    }


def inspect_object(container: Container) -> dict[str, Any]:
    """Return the docker-compatible object ``nerdctl inspect`` prints for a container."""
    record, status = container.record, container.status
    ports: dict[str, list[dict[str, str]]] = {}
    for p in record["ports"]:
        ports.setdefault(f"{p['container_port']}/{p['protocol']}", []).append(
            {"HostIp": p["host_ip"], "HostPort": str(p["host_port"])})
    created = datetime.fromtimestamp(record["created"], UTC).isoformat().replace("+00:00", "Z")
    return {
        "Id": container.id, "Created": created, "Path": record["command"][0], "Args": record["command"][1:],
        "State": {"Status": status, "Running": status == "running", "Paused": False, "Restarting": False,
                  "Pid": container.pid if status == "running" else 0,
                  "ExitCode": container.exit_code if status == "exited" else 0, "Error": "", "StartedAt": "",
                  "FinishedAt": ""},
        "Image": record["image"], "LogPath": record["log"], "Name": container.name, "RestartCount": 0,
        "Driver": "overlayfs", "Platform": "linux",
        "Mounts": [{"Type": "bind", "Source": m["host_path"], "Destination": m["container_path"],
                    "Mode": "ro" if m["read_only"] else "", "RW": not m["read_only"], "Propagation": "rprivate"}
                   for m in record["mounts"]],
        "Config": {"Hostname": record["hostname"], "Labels": record["labels"]},
        "NetworkSettings": {"Ports": ports},
    }


# ------------------------------------------------------------------------------------------------ CLI


def version_text() -> str:
    """Return ``nerdctl version`` output."""
    return (f"Client:\n Version:\tv{VERSION}\n OS/Arch:\tlinux/amd64\n Git commit:\tsimulated\n\n"
            f"Server:\n containerd:\n  Version:\t{CONTAINERD_VERSION}\n  GitCommit:\tsimulated\n"
            f" runc:\n  Version:\t{RUNC_VERSION}\n  GitCommit:\tsimulated\n")


def run(args: list[str]) -> int:
    """Run one nerdctl command line (without the program name)."""
    if args[:1] in (["-v"], ["--version"]) and len(args) == 1:
        print(f"nerdctl version {VERSION}")
        return 0
    if not args or args[0].startswith("-"):
        raise NotModelled("global flags or no subcommand")
    command, rest = args[0], args[1:]
    if command == "version":
        if rest:
            raise NotModelled("version arguments")
        sys.stdout.write(version_text())
        return 0
    if command == "info":
        values, extra = parse_flags(rest, [Flag("format", "f")])
        if extra or not values.get("format"):
            raise NotModelled("info without --format")
        sys.stdout.write(render(values["format"], info()) + "\n")
        return 0
    if command == "ps":
        values, extra = parse_flags(rest, [Flag("all", "a", "bool"), Flag("quiet", "q", "bool"),
                                           Flag("no-trunc", kind="bool"), Flag("filter", "f", "list"),
                                           Flag("format")])
        if extra:
            raise NotModelled("ps arguments")
        found = ps(bool(values.get("all")), values.get("filter", []))
        truncate = not values.get("no-trunc")
        fmt = values.get("format", "")
        if values.get("quiet") and fmt not in ("", "table"):
            raise fatal("format and quiet must not be specified together")
        if fmt.startswith("table "):
            raise NotModelled(f"--format {fmt!r} (a table template)")
        if fmt not in ("", "table", "json"):
            check_template(fmt, labels=True)
        items = [(list_item(c, truncate), c) for c in found]
        if values.get("quiet"):
            sys.stdout.write("".join(f"{item['ID']}\n" for item, _ in items))
        elif fmt in ("", "table"):
            rows = [["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"]]
            rows += [[i["ID"], i["Image"], i["Command"], human_since(c.record["created"]), i["Status"], i["Ports"],
                      i["Names"]] for i, c in items]
            sys.stdout.write(table(rows))
        else:
            sys.stdout.write("".join(render(fmt, i, c.labels) + "\n" for i, c in items))
        return 0
    if command == "rm":
        values, names = parse_flags(rest, [Flag("force", "f", "bool"), Flag("volumes", "v", "bool")])
        if not names:
            raise fatal('"nerdctl rm" requires at least 1 argument')
        removed, errors = remove(names, bool(values.get("force")))
        sys.stdout.write("".join(f"{name}\n" for name in removed))
        if errors:
            message = f"{len(errors)} errors:\n" + "\n".join(errors)
            if values.get("force"):
                print(logrus("error", message), file=sys.stderr)
                return 0
            raise fatal(message)
        return 0
    if command in ("pull", "save", "load", "image"):
        return nerdctl_images.run(command, rest)
    if command == "inspect":
        values, names = parse_flags(rest, [Flag("format", "f"), Flag("type")])
        if values.get("format") not in (None, "{{json .}}") or not names:
            raise NotModelled("inspect arguments")
        if values.get("type") == "image":
            nerdctl_images.image_inspect(names, values.get("format"))
            return 0
        if values.get("type") not in (None, "container"):
            raise NotModelled(f"inspect --type {values['type']}")
        apply_fault("nerdctl-inspect")
        pool = containers()
        objects, missing = [], []
        for name in names:
            found = find(name, pool)
            if len(found) == 1:
                objects.append(inspect_object(found[0]))
            else:
                missing.append(name)
        if values.get("format"):
            sys.stdout.write("".join(go_json(o) + "\n" for o in objects))
        else:
            print(go_json(objects, indent=4))
        if missing:
            raise fatal(f"{len(missing)} errors:\n" + "\n".join(f"no such object: {m}" for m in missing))
        return 0
    raise NotModelled(f"subcommand {command!r}")


def main() -> int:
    """Entry point of the ``nerdctl`` executable."""
    return run_tool("nerdctl", ["nerdctl", *sys.argv[1:]], run)

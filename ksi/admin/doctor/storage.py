"""``ksi doctor``: where things are stored (container data roots node-local, shared and state directories)."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ksi.admin.doctor.base import Check, Host, read, tool_output
from ksi.cluster.rundir import check_shared_dir
from ksi.errors import KsiError
from ksi.host.state import check_private_dir
from ksi.tools import proc

# Filesystems shared between nodes: container state there is trampled by the other nodes (and rootless
# overlayfs does not work on most of them).
SHARED_FS = frozenset({
    "nfs", "nfs4", "lustre", "gpfs", "beegfs", "fhgfs", "cifs", "smb3", "smbfs", "ceph", "fuse.ceph",
    "glusterfs", "fuse.glusterfs", "fuse.sshfs", "9p", "afs", "orangefs", "pvfs2", "panfs", "ocfs2", "gfs2",
    "fuse.gpfs", "wekafs", "fuse.juicefs",
})

PER_JOB_DEFAULT_DIRS = "/tmp,/dev/shm"  # noqa: S108 - what job_container/tmpfs makes private by default


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo: where a filesystem is mounted and its type."""

    point: str
    fstype: str
    source: str


def _unescape(text: str) -> str:
    """Undo mountinfo's octal escapes (a space is written as backslash 040)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), text)


def parse_mountinfo(text: str) -> list[Mount]:
    """Return the mounts listed in /proc/self/mountinfo ``text``, in order."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 2:
            continue
        mounts.append(Mount(_unescape(fields[4]), tail[0], _unescape(tail[1])))
    return mounts


def mount_of(path: Path, mounts: list[Mount]) -> Mount | None:
    """Return the mount ``path`` lives on: the longest mount point containing it (the later one on a tie)."""
    best: Mount | None = None
    for mount in mounts:
        point = Path(mount.point)
        contains = path == point or point in path.parents
        if contains and (best is None or len(point.parts) >= len(Path(best.point).parts)):
            best = mount
    return best


def _toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return {}


def data_roots(host: Host) -> dict[str, Path]:
    """Return where rootless containerd and nerdctl keep their data, from their configs or the defaults.

    containerd: ``root`` in ~/.config/containerd/config.toml, else $XDG_DATA_HOME/containerd; nerdctl:
    ``data_root`` in $NERDCTL_TOML (~/.config/nerdctl/nerdctl.toml), else $XDG_DATA_HOME/nerdctl. (nerdctl info
    reports no data root, unlike docker info: its dockercompat.Info has no DockerRootDir.)
    """
    env = host.env
    config_home = Path(env.get("XDG_CONFIG_HOME") or host.home / ".config")
    data_home = Path(env.get("XDG_DATA_HOME") or host.home / ".local/share")
    containerd = _toml(config_home / "containerd/config.toml").get("root")
    nerdctl_toml = Path(env["NERDCTL_TOML"]) if env.get("NERDCTL_TOML") else config_home / "nerdctl/nerdctl.toml"
    nerdctl = _toml(nerdctl_toml).get("data_root")
    roots = {
        "containerd": Path(containerd) if isinstance(containerd, str) and containerd else data_home / "containerd",
        "nerdctl": Path(nerdctl) if isinstance(nerdctl, str) and nerdctl else data_home / "nerdctl",
    }
    return roots


def running_containerd_roots(host: Host) -> tuple[int, dict[str, Path], list[Mount]] | None:
    """Return the pid, data directories and mounts of the rootless containerd running now, or None.

    containerd-rootless.sh runs containerd in RootlessKit's mount namespace, with $XDG_DATA_HOME/containerd
    and $XDG_DATA_HOME/cni bind-mounted on /var/lib/containerd and /var/lib/cni, $XDG_DATA_HOME taken from
    the service's environment, not this shell's: only that namespace's mount table says where they live.
    RootlessKit writes the namespace's pid to $XDG_RUNTIME_DIR/containerd-rootless/child_pid.
    """
    pid_text = read(host.run_user_root / str(host.uid) / "containerd-rootless" / "child_pid").strip()
    if not pid_text.isdigit():
        return None
    mounts = parse_mountinfo(read(host.proc_root / pid_text / "mountinfo"))
    if not mounts:
        return None
    config_home = Path(host.env.get("XDG_CONFIG_HOME") or host.home / ".config")
    root = _toml(config_home / "containerd/config.toml").get("root")  # /etc/containerd in the namespace
    roots = {"containerd": Path(root) if isinstance(root, str) and root else Path("/var/lib/containerd"),
             "CNI": Path("/var/lib/cni")}
    return int(pid_text), roots, mounts


def check_data_roots(host: Host) -> Check:
    """Check that the container data roots are not on a filesystem shared between nodes (NFS, Lustre, GPFS...).

    Where rootless containerd runs, its own mount table decides (see running_containerd_roots); nerdctl's
    data root, and containerd's when it does not run, come from the configuration files and XDG variables.
    """
    name = "container data roots node-local"
    mounts = parse_mountinfo(read(host.proc_root / "self/mountinfo"))
    if not mounts:
        return Check(name, False, "cannot read /proc/self/mountinfo", "check that /proc is mounted")
    # (what, where, the mount table it is seen in, pid of the namespace or None for this one)
    places: list[tuple[str, Path, list[Mount], int | None]] = [
        (what, Path(os.path.realpath(root)), mounts, None) for what, root in data_roots(host).items()]
    running = running_containerd_roots(host)
    if running is not None:
        pid, roots, namespace = running
        places = [p for p in places if p[0] != "containerd"] + [(w, r, namespace, pid) for w, r in roots.items()]
    shared: list[str] = []
    local: list[str] = []
    for what, root, table, namespace_pid in places:
        mount = mount_of(root, table)
        fstype = mount.fstype if mount else "?"
        where = (f" from {mount.source} (in the namespace of containerd's pid {namespace_pid})"
                 if namespace_pid and mount else "")
        (shared if fstype in SHARED_FS else local).append(f"{what} {root} on {fstype}{where}")
    if shared:
        return Check(name, False, "; ".join(shared) + " (shared by all nodes)",
                     "point them at node-local disk: `root = \"/local/$USER/containerd\"` in "
                     "~/.config/containerd/config.toml and `data_root` in ~/.config/nerdctl/nerdctl.toml (or set "
                     "XDG_DATA_HOME to a node-local directory in containerd's service and before "
                     "containerd-rootless-setuptool.sh install)")
    return Check(name, True, "; ".join(local))


def check_shared(shared_dir: str) -> Check:
    """Check that the shared directory exists and is writable (probed with a temporary file)."""
    name = "shared directory writable"
    result = check_shared_dir(shared_dir)
    if isinstance(result, Path):
        return Check(name, True, str(result))
    return Check(name, False, result.message, result.fix)


def per_job_dirs(host: Host) -> tuple[str, tuple[Path, ...]] | None:
    """Return the plugin setting and the directories Slurm gives every job a private copy of, or None.

    ``job_container/tmpfs`` (``namespace/tmpfs`` in newer Slurm) mounts a private /tmp and /dev/shm per
    job, or the ``Dirs=`` of job_container.conf beside slurm.conf. Asked through ``scontrol show config``;
    None also when Slurm cannot be asked.
    """
    if proc.which("scontrol", host.env) is None:
        return None
    out = tool_output(host, ["scontrol", "show", "config"])
    if isinstance(out, KsiError):
        return None
    config = {key.strip(): value.strip() for key, sep, value in (line.partition("=") for line in out.splitlines())
              if sep}
    plugin = next((f"{key}={config[key]}" for key in ("JobContainerType", "NamespaceType")
                   if config.get(key, "").rpartition("/")[2] == "tmpfs"), None)
    if plugin is None:
        return None
    dirs = PER_JOB_DEFAULT_DIRS
    if config.get("SLURM_CONF"):
        for line in read(Path(config["SLURM_CONF"]).parent / "job_container.conf").splitlines():
            for word in line.split("#", 1)[0].split():
                key, _, value = word.partition("=")
                if key.lower() == "dirs" and value:
                    dirs = value
    return plugin, tuple(Path(d) for d in dirs.split(",") if d)


def check_state_dir(host: Host, state_dir: Path) -> Check:
    """Check that the node-local state directory is (or can become) a private directory of the user.

    It must also be the same directory for every job on the node, not inside Slurm's per-job /tmp.
    """
    name = "node-local state directory"
    exists = state_dir.exists() or state_dir.is_symlink()
    problem = check_private_dir(state_dir, create=False) if exists else None
    if problem is not None:
        return Check(name, False, problem.message, problem.fix)
    if not exists and not os.access(state_dir.parent, os.W_OK | os.X_OK):
        return Check(name, False, f"cannot create {state_dir}: {state_dir.parent} is not writable",
                     "set KSI_STATE_DIR to a node-local directory you own")
    per_job = per_job_dirs(host)
    inside = next((d for d in per_job[1] if d == state_dir or d in state_dir.parents), None) if per_job else None
    if per_job and inside:
        return Check(name, False, f"{state_dir} is inside {inside}, which Slurm makes private to each job "
                     f"({per_job[0]}): the kind create lock, port reservations and cluster records of one job "
                     "would be invisible to the next job and to the epilog",
                     "set KSI_STATE_DIR to a node-local directory outside it for every user (e.g. "
                     "/var/tmp/ksi-$UID) and KSI_EPILOG_STATE_DIR to match (/var/tmp/ksi-%u)")
    return Check(name, True, f"{state_dir}{'' if exists else ' (created on first run)'}")

"""``ksi doctor``: can this node run ksi at all? Every prerequisite as one pass/fail line with its fix.

Each check is a small function over a :class:`Host`, which says where to look (the /proc, /sys and /etc trees,
the kernel's module lists, the user's runtime directories) and which environment the tools run with, so
tests stage a fake tree and fake tools and see each failure with its message. The checks only read files
and run version/info commands; they change nothing.
"""

from __future__ import annotations

import gzip
import os
import pwd
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ksi.errors import KsiError
from ksi.host import cgroups
from ksi.host.state import check_private_dir
from ksi.launch.preflight import check_shared_dir
from ksi.tools import proc
from ksi.tools.kind import MIN_VERSION as KIND_MIN_VERSION
from ksi.tools.kind import Kind
from ksi.tools.liqoctl import Liqoctl
from ksi.tools.nerdctl import Nerdctl

MIN_KERNEL = (5, 10)  # Liqo's WireGuard gateway and its network fabric need it
LIQO_MAJOR = 1
# kind's known-issues page: "too many open files" with several clusters per host unless raised to these.
MIN_INOTIFY_WATCHES = 524288
MIN_INOTIFY_INSTANCES = 512
MIN_SUBIDS = 65536  # kind's node image uses uids up to 65534
IPTABLES_MODULES = ("ip6_tables", "ip6table_nat", "ip_tables", "iptable_nat")
# The kernel configuration symbol of each module, for kernels that report no module list (monolithic ones).
KCONFIG = {
    "ip_tables": "CONFIG_IP_NF_IPTABLES",
    "ip6_tables": "CONFIG_IP6_NF_IPTABLES",
    "iptable_nat": "CONFIG_IP_NF_NAT",
    "ip6table_nat": "CONFIG_IP6_NF_NAT",
    "wireguard": "CONFIG_WIREGUARD",
}
# Filesystems shared between nodes: container state there is trampled by the other nodes (and rootless
# overlayfs does not work on most of them).
SHARED_FS = frozenset({
    "nfs", "nfs4", "lustre", "gpfs", "beegfs", "fhgfs", "cifs", "smb3", "smbfs", "ceph", "fuse.ceph",
    "glusterfs", "fuse.glusterfs", "fuse.sshfs", "9p", "afs", "orangefs", "pvfs2", "panfs", "ocfs2", "gfs2",
    "fuse.gpfs", "wekafs", "fuse.juicefs",
})
_TOOL_TIMEOUT = 30.0
PER_JOB_DEFAULT_DIRS = "/tmp,/dev/shm"  # noqa: S108 - what job_container/tmpfs makes private by default


@dataclass(frozen=True)
class Check:
    """The outcome of one check: what was checked, whether it passed, what was found, and how to fix it."""

    name: str
    ok: bool
    detail: str = ""
    fix: str = ""

    def line(self) -> str:
        """Return the check as one console line (without the node prefix)."""
        text = f"{'PASS' if self.ok else 'FAIL'} {self.name}"
        if self.detail:
            text += f": {self.detail}"
        if not self.ok and self.fix:
            text += f"; fix: {self.fix}"
        return text

    def as_dict(self) -> dict[str, object]:
        """Return the check as a JSON-ready mapping."""
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "fix": self.fix}


@dataclass(frozen=True)
class Host:
    """Where the checks look and what the tools run with; the defaults are the real node."""

    env: Mapping[str, str]
    uid: int
    user: str
    home: Path
    proc_root: Path = Path("/proc")
    sys_root: Path = Path("/sys")
    etc_root: Path = Path("/etc")
    modules_root: Path = Path("/lib/modules")
    boot_root: Path = Path("/boot")
    run_user_root: Path = Path("/run/user")

    @classmethod
    def this_node(cls, env: Mapping[str, str]) -> Host:
        """Return the Host of the calling user on this node, with tools looked up on ``env``'s PATH."""
        uid = os.getuid()
        try:
            entry = pwd.getpwuid(uid)
            user, home = entry.pw_name, Path(entry.pw_dir)
        except KeyError:
            user, home = env.get("USER", str(uid)), Path(env.get("HOME", "/"))
        return cls(env=dict(env), uid=uid, user=user, home=Path(env.get("HOME") or home))

    def kernel_release(self) -> str:
        """Return the running kernel's release (``uname -r``), read from proc."""
        return _read(self.proc_root / "sys/kernel/osrelease").strip()


def nerdctl_info(host: Host) -> dict[str, object] | str:
    """Run ``nerdctl info`` and return its object, or the error message."""
    try:
        return Nerdctl(host.env).info(timeout=_TOOL_TIMEOUT)
    except KsiError as exc:
        return exc.message


def _read(path: Path) -> str:
    """Return the text of ``path``, or "" when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _version_text(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


# --- kernel and cgroups ----------------------------------------------------------------------------------

def check_cgroup_v2(host: Host) -> Check:
    """Check that the unified cgroup hierarchy is mounted at <sys>/fs/cgroup."""
    name = "cgroup v2"
    if cgroups.is_v2(host.sys_root / "fs/cgroup"):
        return Check(name, True, "unified hierarchy at /sys/fs/cgroup")
    return Check(name, False, "/sys/fs/cgroup is not the unified (v2) hierarchy",
                 "boot with systemd.unified_cgroup_hierarchy=1 (kernel command line) and reboot")


def check_delegation(host: Host) -> Check:
    """Check that the user's systemd (or this process's own cgroup) offers the cpu, memory and pids controllers."""
    name = "cgroup controllers cpu, memory, pids delegated to the user"
    needed = sorted(cgroups.NEEDED_CONTROLLERS)
    cgroup_root = host.sys_root / "fs/cgroup"
    service = cgroup_root / f"user.slice/user-{host.uid}.slice/user@{host.uid}.service"
    fix = ("create /etc/systemd/system/user@.service.d/delegate.conf with `[Service]` and "
           "`Delegate=cpu cpuset io memory pids`, then `systemctl daemon-reload` and log in again")
    controllers_file = service / "cgroup.controllers"
    if cgroups.delegated(cgroup_root, host.proc_root / "self/cgroup"):
        return Check(name, True, "this process's own cgroup is delegated")
    if controllers_file.is_file():
        have = set(_read(controllers_file).split())
        missing = [c for c in needed if c not in have]
        if missing:
            return Check(name, False, f"user@{host.uid}.service lacks {' '.join(missing)}", fix)
        # This process's cgroup is not delegated (a Slurm step's is not): ksi run starts kind through
        # systemd-run --user --scope, so that must work here, not just exist.
        probe = [*cgroups.SYSTEMD_SCOPE, "true"]
        scope = _tool_output(host, probe)
        if isinstance(scope, KsiError):
            return Check(name, False, f"user@{host.uid}.service has the controllers, but `{' '.join(probe)}` fails "
                         f"here: {scope.message}",
                         "the user's systemd must be reachable from jobs: XDG_RUNTIME_DIR=/run/user/UID with its "
                         "bus socket (pam_systemd in Slurm's PAM stack, or `loginctl enable-linger USER`)")
        return Check(name, True, f"user@{host.uid}.service has {' '.join(sorted(have & set(needed)))}; kind runs "
                     "in a delegated systemd-run --user --scope")
    return Check(name, False, f"no user@{host.uid}.service cgroup (no systemd user instance) and this "
                 "process's cgroup is not delegated",
                 "enable the user's systemd (`loginctl enable-linger USER`, or pam_systemd for Slurm jobs); " + fix)


def _kernel_config(host: Host, release: str) -> dict[str, str]:
    """Return the kernel's build configuration (/proc/config.gz or /boot/config-RELEASE), or {} if absent."""
    text = ""
    try:
        text = gzip.decompress((host.proc_root / "config.gz").read_bytes()).decode("utf-8", "replace")
    except (OSError, EOFError, gzip.BadGzipFile):
        text = _read(host.boot_root / f"config-{release}")
    config: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            key, _, value = line.partition("=")
            config[key] = value.strip()
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            config[line[2:-len(" is not set")]] = "n"
    return config


def module_state(host: Host, module: str) -> tuple[bool, str]:
    """Return whether kernel ``module`` is usable now, and how that was found out.

    Looks in /proc/modules (loaded), in /lib/modules/RELEASE/modules.builtin (built in), in the kernel's
    build configuration (=y built in, =m a module that is not loaded), and at /sys/module/NAME. A rootless
    user cannot load modules, so a module that exists but is not loaded fails.
    """
    release = host.kernel_release()
    modules_file = host.proc_root / "modules"
    loaded = {line.split()[0] for line in _read(modules_file).splitlines() if line.strip()}
    builtin = {Path(line.strip()).name.split(".ko")[0].replace("-", "_")
               for line in _read(host.modules_root / release / "modules.builtin").splitlines() if line.strip()}
    symbol = KCONFIG.get(module, "")
    configured = _kernel_config(host, release).get(symbol, "") if symbol else ""
    if module in loaded:
        found = (True, "loaded")
    elif module in builtin or configured == "y":
        found = (True, "built in")
    elif configured == "m":
        found = (False, "not loaded")
    elif (host.sys_root / "module" / module).is_dir():
        found = (True, "present")
    elif configured == "n":
        found = (False, f"not in this kernel ({symbol} is not set)")
    else:
        found = (False, "not loaded" if modules_file.exists() else "not found")
    return found


def check_iptables_modules(host: Host) -> Check:
    """Check that ip6_tables, ip6table_nat, ip_tables and iptable_nat are loaded or built in."""
    name = "kernel modules " + ", ".join(IPTABLES_MODULES)
    states = {m: module_state(host, m) for m in IPTABLES_MODULES}
    missing = [m for m, (ok, _) in states.items() if not ok]
    if not missing:
        return Check(name, True, ", ".join(f"{m} {how}" for m, (_, how) in states.items()))
    detail = ", ".join(f"{m} {states[m][1]}" for m in missing)
    return Check(name, False, detail,
                 f"as root: `modprobe -a {' '.join(missing)}` and list them in /etc/modules-load.d/ksi.conf")


def parse_kernel_version(release: str) -> tuple[int, int] | None:
    """Return (major, minor) from a kernel release such as ``6.1.0-18-amd64``."""
    match = re.match(r"(\d+)\.(\d+)", release)
    return (int(match[1]), int(match[2])) if match else None


def check_kernel(host: Host) -> Check:
    """Check that the kernel is at least 5.10 (Liqo)."""
    name = f"kernel >= {_version_text(MIN_KERNEL)} (Liqo)"
    release = host.kernel_release()
    version = parse_kernel_version(release)
    if version is None:
        return Check(name, False, f"cannot read the kernel release ({release!r})", "check /proc/sys/kernel/osrelease")
    if version >= MIN_KERNEL:
        return Check(name, True, release)
    return Check(name, False, f"kernel {release} is older than {_version_text(MIN_KERNEL)}",
                 "boot a newer kernel (Debian 12 ships 6.1)")


def check_wireguard(host: Host) -> Check:
    """Check that the WireGuard module is loaded or built in (Liqo's gateway)."""
    name = "WireGuard kernel module (Liqo)"
    ok, how = module_state(host, "wireguard")
    if ok:
        return Check(name, True, f"wireguard {how}")
    return Check(name, False, f"wireguard {how}",
                 "as root: `modprobe wireguard` and list it in /etc/modules-load.d/ksi.conf (or select Liqo's "
                 "userspace WireGuard with a Helm value)")


def check_inotify(host: Host) -> Check:
    """Check fs.inotify.max_user_watches and max_user_instances against kind's recommendation."""
    name = "inotify limits for several clusters"
    base = host.proc_root / "sys/fs/inotify"
    found = {}
    problems = []
    for key, minimum in (("max_user_watches", MIN_INOTIFY_WATCHES), ("max_user_instances", MIN_INOTIFY_INSTANCES)):
        text = _read(base / key).strip()
        try:
            value = int(text)
        except ValueError:
            problems.append(f"{key} unreadable")
            continue
        found[key] = value
        if value < minimum:
            problems.append(f"{key}={value} < {minimum}")
    if not problems:
        return Check(name, True, ", ".join(f"{k}={v}" for k, v in found.items()))
    return Check(name, False, ", ".join(problems),
                 f"as root: `sysctl fs.inotify.max_user_watches={MIN_INOTIFY_WATCHES} "
                 f"fs.inotify.max_user_instances={MIN_INOTIFY_INSTANCES}` and put both in /etc/sysctl.d/60-ksi.conf "
                 "(setup/prepare-node.sh does both)")


# --- tools -----------------------------------------------------------------------------------------------

def _tool_output(host: Host, argv: list[str]) -> str | KsiError:
    """Run ``argv`` with the host's environment and return its stdout, or the error."""
    try:
        return proc.run(argv, env=host.env, timeout=_TOOL_TIMEOUT, step="doctor").stdout
    except KsiError as exc:
        return exc


def check_kind(host: Host) -> Check:
    """Run ``kind version``; kind must be v0.23 or newer (the nerdctl provider)."""
    wanted = _version_text(KIND_MIN_VERSION)
    name = f"kind >= v{wanted}"
    try:
        version = Kind(host.env).version(timeout=_TOOL_TIMEOUT)
    except KsiError as exc:
        return Check(name, False, exc.message, f"install kind >= v{wanted} and put it on PATH")
    return Check(name, True, f"kind v{_version_text(version)}")


def check_nerdctl(host: Host) -> Check:
    """Run ``nerdctl --version``."""
    name = "nerdctl"
    out = _tool_output(host, ["nerdctl", "--version"])
    if isinstance(out, KsiError):
        return Check(name, False, out.message,
                     "install nerdctl (the full bundle, with rootless containerd) and put it on PATH")
    match = re.search(r"(\d+\.\d+\.\d+\S*)", out)
    if match is None:
        return Check(name, False, f"cannot read the version from {out.strip()[:80]!r}", "install a released nerdctl")
    return Check(name, True, f"nerdctl {match[1]}")


def check_liqoctl(host: Host) -> Check:
    """Run ``liqoctl version --client``; Liqo v1 is needed (mixed versions across a peering are unsupported)."""
    name = f"liqoctl v{LIQO_MAJOR}"
    fix = f"install liqoctl v{LIQO_MAJOR}.x (the same version on every node) and put it on PATH"
    out = _tool_output(host, ["liqoctl", "version", "--client"])
    if isinstance(out, KsiError):
        return Check(name, False, out.message, fix)
    match = re.search(r"v?(\d+)\.(\d+)\.(\d+)\S*", out)
    if match is None:
        return Check(name, False, f"cannot read the version from {out.strip()[:80]!r}", fix)
    if int(match[1]) != LIQO_MAJOR:
        return Check(name, False, f"liqoctl {match[0]} is not v{LIQO_MAJOR}", fix)
    try:
        missing = Liqoctl(host.env).missing_peer_flags(timeout=_TOOL_TIMEOUT)
    except KsiError as exc:
        return Check(name, False, exc.message, fix)
    if missing:
        return Check(name, False, f"liqoctl {match[0]}: `liqoctl peer` has no {', '.join(missing)}",
                     "install a newer liqoctl v1 (v1.0.1 or later), the same on every node")
    return Check(name, True, f"liqoctl {match[0]}")


def check_rootless(info: dict[str, object] | str) -> Check:
    """Check ``nerdctl info`` (see :func:`nerdctl_info`): it must reach a containerd that runs rootless."""
    name = "rootless containerd reachable"
    fix = ("run `containerd-rootless-setuptool.sh install` once, then `systemctl --user start containerd` "
           "(and `loginctl enable-linger USER` so it runs without a login)")
    if isinstance(info, str):
        return Check(name, False, f"`nerdctl info` failed: {info}", fix)
    options = info.get("SecurityOptions") or []
    rootless = isinstance(options, list) and any("name=rootless" in str(o).split(",") for o in options)
    if not rootless:
        return Check(name, False, "`nerdctl info` reaches a containerd that is not rootless", fix)
    driver = info.get("CgroupDriver", "")
    if driver == "none":
        return Check(name, False, "rootless containerd runs without cgroups (CgroupDriver none)",
                     "run containerd under the user's systemd with cgroup v2 (see the delegation check)")
    return Check(name, True, f"containerd {info.get('ServerVersion', '?')}, rootless, cgroup driver {driver or '?'}")


def check_runtime_dir(host: Host) -> Check:
    """Check the user's runtime directory /run/user/UID (rootless containerd's socket lives there)."""
    name = "XDG_RUNTIME_DIR present"
    path = host.run_user_root / str(host.uid)
    fix = ("enable the user's systemd on compute nodes: `loginctl enable-linger USER`, or pam_systemd in "
           "Slurm's PAM stack (UsePAM=1)")
    try:
        info = path.lstat()
    except OSError:
        return Check(name, False, f"{path} does not exist on this node", fix)
    if info.st_uid != host.uid:
        return Check(name, False, f"{path} belongs to uid {info.st_uid}, not to {host.user}", fix)
    set_to = host.env.get("XDG_RUNTIME_DIR", "")
    note = "" if set_to in ("", str(path)) else f" (XDG_RUNTIME_DIR={set_to} from elsewhere; ksi uses {path})"
    return Check(name, True, f"{path}{note}")


def subid_ranges(text: str, user: str, uid: int) -> list[tuple[int, int]]:
    """Return the (start, count) ranges of ``user`` (by name or uid) in /etc/subuid-style ``text``."""
    ranges = []
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) != 3 or parts[0] not in (user, str(uid)):
            continue
        try:
            ranges.append((int(parts[1]), int(parts[2])))
        except ValueError:
            continue
    return ranges


def getsubids_ranges(text: str) -> list[tuple[int, int]]:
    """Return the (start, count) ranges in ``getsubids`` output (lines ``0: alice 165536 65536``)."""
    ranges = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0].endswith(":") and parts[2].isdigit() and parts[3].isdigit():
            ranges.append((int(parts[2]), int(parts[3])))
    return ranges


def check_subids(host: Host, kind: str) -> Check:
    """Check that the user has at least 65536 subordinate ids (``kind`` is "uid" or "gid").

    /etc/sub{u,g}id first; where it has no entry, ``getsubids`` (shadow-utils), which also asks the
    subid source of nsswitch.conf (``subid: sss`` at sites that keep them in LDAP).
    """
    file = host.etc_root / f"sub{kind}"
    name = f"sub{kind} entries for {host.user}"
    fix = (f"as root: `usermod --add-sub{kind}s START-END {host.user}` with a range of {MIN_SUBIDS} ids "
           f"no other user has (same on every node)")
    where = f"/etc/sub{kind}"
    total = sum(count for _, count in subid_ranges(_read(file), host.user, host.uid))
    if total == 0 and proc.which("getsubids", host.env):
        argv = ["getsubids", *(["-g"] if kind == "gid" else []), host.user]
        out = _tool_output(host, argv)
        if not isinstance(out, KsiError):
            total, where = sum(count for _, count in getsubids_ranges(out)), " ".join(argv[:-1])
    if total >= MIN_SUBIDS:
        return Check(name, True, f"{total} ids in {where}")
    if total == 0:
        return Check(name, False, f"no entry in /etc/sub{kind}" + ("" if where.startswith("/etc") else
                                                                   " nor from getsubids"), fix)
    return Check(name, False, f"only {total} ids in {where} (need {MIN_SUBIDS})", fix)


# --- storage ---------------------------------------------------------------------------------------------

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
    pid_text = _read(host.run_user_root / str(host.uid) / "containerd-rootless" / "child_pid").strip()
    if not pid_text.isdigit():
        return None
    mounts = parse_mountinfo(_read(host.proc_root / pid_text / "mountinfo"))
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
    mounts = parse_mountinfo(_read(host.proc_root / "self/mountinfo"))
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
    out = _tool_output(host, ["scontrol", "show", "config"])
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
        for line in _read(Path(config["SLURM_CONF"]).parent / "job_container.conf").splitlines():
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


def run_checks(host: Host, shared_dir: str, state_dir: Path) -> list[Check]:
    """Run every check against ``host`` and return them in a fixed order."""
    info = nerdctl_info(host)
    return [
        check_cgroup_v2(host),
        check_delegation(host),
        check_iptables_modules(host),
        check_kernel(host),
        check_wireguard(host),
        check_inotify(host),
        check_kind(host),
        check_nerdctl(host),
        check_liqoctl(host),
        check_rootless(info),
        check_runtime_dir(host),
        check_subids(host, "uid"),
        check_subids(host, "gid"),
        check_data_roots(host),
        check_shared(shared_dir),
        check_state_dir(host, state_dir),
    ]

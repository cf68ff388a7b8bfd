"""``ksi doctor``: the programs ksi runs and what rootless containers need (containerd, runtime dir, subids)."""

from __future__ import annotations

from ksi.admin.doctor.base import TOOL_TIMEOUT, Check, Host, read, tool_output, version_text
from ksi.errors import CommandFailed, KsiError, ToolMissingError
from ksi.tools import proc
from ksi.tools.kind import MIN_VERSION as KIND_MIN_VERSION
from ksi.tools.kind import Kind
from ksi.tools.liqoctl import MAJOR as LIQO_MAJOR
from ksi.tools.liqoctl import Liqoctl
from ksi.tools.runtime import runtime_for

MIN_SUBIDS = 65536  # kind's node image uses uids up to 65534


def runtime_info(host: Host) -> dict[str, object] | str:
    """Run the container runtime's ``info`` (``nerdctl info``) and return its object, or the error message."""
    try:
        return runtime_for(host.provider, host.env).info(timeout=TOOL_TIMEOUT)
    except KsiError as exc:
        return exc.message


def check_kind(host: Host) -> Check:
    """Run ``kind version``; kind must be v0.23 or newer (the nerdctl provider)."""
    wanted = version_text(KIND_MIN_VERSION)
    name = f"kind >= v{wanted}"
    try:
        version = Kind(host.env).version(timeout=TOOL_TIMEOUT)
    except KsiError as exc:
        return Check(name, False, exc.message, f"install kind >= v{wanted} and put it on PATH")
    return Check(name, True, f"kind v{version_text(version)}")


def check_runtime(host: Host) -> Check:
    """Run the container runtime's version command (``nerdctl --version``)."""
    runtime = runtime_for(host.provider, host.env)
    try:
        version = runtime.version(timeout=TOOL_TIMEOUT)
    except (ToolMissingError, CommandFailed) as exc:
        return Check(runtime.name, False, exc.message,
                     f"install {runtime.name} (the full bundle, with rootless containerd) and put it on PATH")
    except KsiError as exc:  # it ran but printed no version
        return Check(runtime.name, False, exc.message, exc.fix)
    return Check(runtime.name, True, f"{runtime.name} {version}")


def check_liqoctl(host: Host) -> Check:
    """Run ``liqoctl version --client`` and ``liqoctl peer --help``: the rule ``ksi run`` applies.

    Liqo v1 is needed (mixed versions across a peering are unsupported), with the gateway flags on ``peer``.
    """
    name = f"liqoctl v{LIQO_MAJOR}"
    fix = f"install liqoctl v{LIQO_MAJOR}.x (the same version on every node) and put it on PATH"
    try:
        client = Liqoctl(host.env).client(timeout=TOOL_TIMEOUT)
    except KsiError as exc:
        return Check(name, False, exc.message, fix)
    if client.usable:
        return Check(name, True, f"liqoctl {client.shown}")
    if client.wrong_major:
        return Check(name, False, f"liqoctl {client.shown} is not v{LIQO_MAJOR}", fix)
    return Check(name, False, f"liqoctl {client.shown}: `liqoctl peer` has no {', '.join(client.missing_flags)}",
                 f"install a newer liqoctl v{LIQO_MAJOR} (v1.0.1 or later), the same on every node")


def check_rootless(info: dict[str, object] | str, runtime: str = "nerdctl") -> Check:
    """Check the runtime's ``info`` (see :func:`runtime_info`): it must reach a containerd that runs rootless."""
    name = "rootless containerd reachable"
    fix = ("run `containerd-rootless-setuptool.sh install` once, then `systemctl --user start containerd` "
           "(and `loginctl enable-linger USER` so it runs without a login)")
    if isinstance(info, str):
        return Check(name, False, f"`{runtime} info` failed: {info}", fix)
    options = info.get("SecurityOptions") or []
    rootless = isinstance(options, list) and any("name=rootless" in str(o).split(",") for o in options)
    if not rootless:
        return Check(name, False, f"`{runtime} info` reaches a containerd that is not rootless", fix)
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
    total = sum(count for _, count in subid_ranges(read(file), host.user, host.uid))
    if total == 0 and proc.which("getsubids", host.env):
        argv = ["getsubids", *(["-g"] if kind == "gid" else []), host.user]
        out = tool_output(host, argv)
        if not isinstance(out, KsiError):
            total, where = sum(count for _, count in getsubids_ranges(out)), " ".join(argv[:-1])
    if total >= MIN_SUBIDS:
        return Check(name, True, f"{total} ids in {where}")
    if total == 0:
        return Check(name, False, f"no entry in /etc/sub{kind}" + ("" if where.startswith("/etc") else
                                                                   " nor from getsubids"), fix)
    return Check(name, False, f"only {total} ids in {where} (need {MIN_SUBIDS})", fix)

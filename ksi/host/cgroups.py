"""cgroup facts: whether v2 is mounted, and whether this process may create containers in its own cgroup."""

from __future__ import annotations

import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
NEEDED_CONTROLLERS = frozenset({"cpu", "memory", "pids"})
SYSTEMD_SCOPE = ("systemd-run", "--user", "--scope", "--quiet", "--property=Delegate=yes")


def is_v2(root: Path = CGROUP_ROOT) -> bool:
    """True when the unified (v2) hierarchy is mounted at ``root`` (not a v1 or hybrid layout)."""
    return (root / "cgroup.controllers").is_file()


def own_cgroup(proc_self: Path = Path("/proc/self/cgroup")) -> str | None:
    """Return this process's v2 cgroup path (the ``0::`` line of /proc/self/cgroup), or None."""
    try:
        for line in proc_self.read_text().splitlines():
            if line.startswith("0::"):
                return line[3:]
    except OSError:
        return None
    return None


def delegated(root: Path = CGROUP_ROOT, proc_self: Path = Path("/proc/self/cgroup")) -> bool:
    """True when this process's cgroup is ours and offers cpu, memory and pids (rootless kind needs them)."""
    path = own_cgroup(proc_self)
    if path is None:
        return False
    directory = root / path.lstrip("/")
    try:
        controllers = set((directory / "cgroup.controllers").read_text().split())
        owner = directory.stat().st_uid
    except OSError:
        return False
    return owner == os.getuid() and controllers >= NEEDED_CONTROLLERS


def scope_wrapper(
    setting: str, root: Path = CGROUP_ROOT, proc_self: Path = Path("/proc/self/cgroup")
) -> tuple[str, ...]:
    """Return the command prefix kind must run under for ``setting`` (auto, always or never)."""
    if setting == "always" or (setting == "auto" and not delegated(root, proc_self)):
        return SYSTEMD_SCOPE
    return ()

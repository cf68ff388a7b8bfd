"""``ksi doctor``: the kernel and cgroups (cgroup v2, delegation, modules, version, WireGuard, inotify)."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

from ksi.admin.doctor.base import Check, Host, read, tool_output, version_text
from ksi.errors import KsiError
from ksi.host import cgroups

MIN_KERNEL = (5, 10)  # Liqo's WireGuard gateway and its network fabric need it
# kind's known-issues page: "too many open files" with several clusters per host unless raised to these.
MIN_INOTIFY_WATCHES = 524288
MIN_INOTIFY_INSTANCES = 512
IPTABLES_MODULES = ("ip6_tables", "ip6table_nat", "ip_tables", "iptable_nat")
# The kernel configuration symbol of each module, for kernels that report no module list (monolithic ones).
KCONFIG = {
    "ip_tables": "CONFIG_IP_NF_IPTABLES",
    "ip6_tables": "CONFIG_IP6_NF_IPTABLES",
    "iptable_nat": "CONFIG_IP_NF_NAT",
    "ip6table_nat": "CONFIG_IP6_NF_NAT",
    "wireguard": "CONFIG_WIREGUARD",
}


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
        have = set(read(controllers_file).split())
        missing = [c for c in needed if c not in have]
        if missing:
            return Check(name, False, f"user@{host.uid}.service lacks {' '.join(missing)}", fix)
        # This process's cgroup is not delegated (a Slurm step's is not): ksi run starts kind through
        # systemd-run --user --scope, so that must work here, not just exist.
        probe = [*cgroups.SYSTEMD_SCOPE, "true"]
        scope = tool_output(host, probe)
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
        text = read(host.boot_root / f"config-{release}")
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
    loaded = {line.split()[0] for line in read(modules_file).splitlines() if line.strip()}
    builtin = {Path(line.strip()).name.split(".ko")[0].replace("-", "_")
               for line in read(host.modules_root / release / "modules.builtin").splitlines() if line.strip()}
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
    name = f"kernel >= {version_text(MIN_KERNEL)} (Liqo)"
    release = host.kernel_release()
    version = parse_kernel_version(release)
    if version is None:
        return Check(name, False, f"cannot read the kernel release ({release!r})", "check /proc/sys/kernel/osrelease")
    if version >= MIN_KERNEL:
        return Check(name, True, release)
    return Check(name, False, f"kernel {release} is older than {version_text(MIN_KERNEL)}",
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
        text = read(base / key).strip()
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

"""`ksi doctor`: every check against a staged node (fake /proc, /sys, /etc trees and fake tools on PATH).

A healthy staged node passes every check; each row of the failure table breaks one thing and expects
exactly the checks it should break to fail, with a message that names the problem and a fix.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from ksi import settings as settings_mod
from ksi.admin import doctor
from ksi.admin.doctor import Check, Host, Mount, mount_of, parse_mountinfo, per_job_dirs, run_checks, subid_ranges
from ksi.host import stopbudget
from tests.ksi_helpers import KSI

UID = os.getuid()
USER = "someuser"

INFO = {"ServerVersion": "v2.0.2", "CgroupDriver": "systemd", "CgroupVersion": "2",
        "SecurityOptions": ["name=seccomp,profile=builtin", "name=rootless", "name=cgroupns"]}

KIND = """#!/bin/sh
[ "$1" = version ] || { echo "fake kind: unexpected $*" >&2; exit 9; }
echo "kind v${FAKE_KIND_VERSION:-0.27.0} go1.23.4 linux/amd64"
"""
NERDCTL = """#!/bin/sh
case "$1" in
  --version) echo "nerdctl version 2.0.3" ;;
  info) [ -n "$FAKE_INFO_FAIL" ] && { echo "$FAKE_INFO_FAIL" >&2; exit 1; }
        cat "$FAKE_INFO" ;;
  *) echo "fake nerdctl: unexpected $*" >&2; exit 9 ;;
esac
"""
GETSUBIDS = f"""#!/bin/sh
# shadow-utils' getsubids: one line per range, "N: OWNER START COUNT"
[ "$1" = "-g" ] && shift
[ "$1" = "{USER}" ] || {{ echo "Error fetching ranges" >&2; exit 1; }}
echo "0: {USER} 200000 32768"
echo "1: {USER} 300000 32768"
"""
SCONTROL = """#!/bin/sh
[ "$1 $2" = "show config" ] || { echo "fake scontrol: unexpected $*" >&2; exit 9; }
[ -n "$FAKE_NO_CONTROLLER" ] && { echo "slurm_load_ctl_conf error: Unable to contact slurm controller" >&2; exit 1; }
echo "Configuration data as of 2026-12-01T08:46:13"
echo "JobContainerType        = ${FAKE_JOB_CONTAINER:-job_container/none}"
echo "KillWait                = ${FAKE_KILL_WAIT:-30} sec"
echo "SLURM_CONF              = $FAKE_SLURM_ETC/slurm.conf"
"""
SYSTEMD_RUN = """#!/bin/sh
[ "$1 $2 $3 $4" = "--user --scope --quiet --property=Delegate=yes" ] || { echo "fake systemd-run: $*" >&2; exit 9; }
[ -n "$FAKE_SCOPE_FAIL" ] && { echo "$FAKE_SCOPE_FAIL" >&2; exit 1; }
shift 4
exec "$@"
"""
LIQOCTL = """#!/bin/sh
case "$1 $2" in
  "version --client") echo "Client version: ${FAKE_LIQO_VERSION:-v1.0.0}" ;;
  "peer --help") printf 'Usage:\\n  liqoctl peer [flags]\\n\\nFlags:\\n'
                 for f in ${FAKE_PEER_FLAGS-gw-client-address gw-client-port gw-server-service-nodeport \\
                     gw-server-service-type remote-kubeconfig}; do echo "      --$f string"; done ;;
  *) echo "fake liqoctl: unexpected $*" >&2; exit 9 ;;
esac
"""


@dataclass(frozen=True)
class Staged:
    """A healthy fake node under ``root`` and the Host that points at it."""

    root: Path
    host: Host
    shared: Path
    state: Path
    ksi_env: tuple[tuple[str, str], ...] = ()  # ksi's own settings (KSI_GRACE_PERIOD, ...)

    def write(self, relative: str, text: str) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def env(self, **extra: str) -> Staged:
        return replace(self, host=replace(self.host, env={**self.host.env, **extra}))

    def checks(self) -> dict[str, Check]:
        settings, problems = settings_mod.load({"KSI_STATE_DIR": str(self.state), **dict(self.ksi_env)})
        assert problems == []
        return {c.name: c for c in run_checks(self.host, str(self.shared), settings)}


def _tool(bin_dir: Path, name: str, text: str) -> None:
    path = bin_dir / name
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def node(tmp_path: Path) -> Staged:
    root = tmp_path / "node"
    home = root / "home" / USER
    service = f"sys/fs/cgroup/user.slice/user-{UID}.slice/user@{UID}.service"
    files = {
        "proc/sys/kernel/osrelease": "6.1.0-18-amd64\n",
        "proc/modules": "".join(f"{m} 49152 1 - Live 0x0000000000000000\n"
                                for m in ("ip6_tables", "ip6table_nat", "ip_tables", "iptable_nat", "wireguard")),
        "proc/sys/fs/inotify/max_user_watches": "524288\n",
        "proc/sys/fs/inotify/max_user_instances": "512\n",
        "proc/self/cgroup": "0::/user.slice/user-1000.slice/session-3.scope\n",
        "proc/self/mountinfo": textwrap.dedent("""\
            22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
            23 22 0:21 / /proc rw,nosuid - proc proc rw
            40 22 0:44 / /shared rw,relatime shared:20 - nfs4 fileserver:/shared rw,vers=4.2
            """),
        "sys/fs/cgroup/cgroup.controllers": "cpuset cpu io memory hugetlb pids rdma misc\n",
        f"{service}/cgroup.controllers": "cpuset cpu io memory pids\n",
        "etc/subuid": f"other:100000:65536\n{USER}:165536:65536\n",
        "etc/subgid": f"other:100000:65536\n{USER}:165536:65536\n",
        "lib/modules/6.1.0-18-amd64/modules.builtin": "kernel/fs/ext4/ext4.ko\n",
    }
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "run/user" / str(UID)).mkdir(parents=True, mode=0o700)
    home.mkdir(parents=True)
    bin_dir = root / "bin"
    bin_dir.mkdir()
    for name, text in (("kind", KIND), ("nerdctl", NERDCTL), ("liqoctl", LIQOCTL), ("systemd-run", SYSTEMD_RUN),
                       ("scontrol", SCONTROL)):
        _tool(bin_dir, name, text)
    info = root / "nerdctl-info.json"
    info.write_text(json.dumps(INFO))
    shared = tmp_path / "shared dir"
    shared.mkdir()
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home), "FAKE_INFO": str(info),
           "FAKE_SLURM_ETC": str(root / "etc/slurm"), "SLURM_CONF": str(root / "etc/slurm/slurm.conf")}
    host = Host(env=env, uid=UID, user=USER, home=home, proc_root=root / "proc", sys_root=root / "sys",
                etc_root=root / "etc", modules_root=root / "lib/modules", boot_root=root / "boot",
                run_user_root=root / "run/user")
    return Staged(root, host, shared, tmp_path / "state")


def test_a_healthy_node_passes_every_check(node: Staged) -> None:
    checks = node.checks()
    assert [name for name, c in checks.items() if not c.ok] == []
    assert len(checks) == 17
    assert checks["kind >= v0.23.0"].detail == "kind v0.27.0"
    assert checks["nerdctl"].detail == "nerdctl 2.0.3"
    assert checks["liqoctl v1"].detail == "liqoctl v1.0.0"
    assert checks["kernel >= 5.10 (Liqo)"].detail == "6.1.0-18-amd64"
    assert "containerd v2.0.2, rootless" in checks["rootless containerd reachable"].detail
    assert "ext4" in checks["container data roots node-local"].detail
    assert all(c.line().startswith("PASS ") and "fix:" not in c.line() for c in checks.values())


def _drop(relative: str) -> Callable[[Staged], Staged]:
    def change(node: Staged) -> Staged:
        (node.root / relative).unlink()
        return node
    return change


def _write(relative: str, text: str) -> Callable[[Staged], Staged]:
    def change(node: Staged) -> Staged:
        node.write(relative, text)
        return node
    return change


def _env(**extra: str) -> Callable[[Staged], Staged]:
    def change(node: Staged) -> Staged:
        return node.env(**extra)
    return change


def _ksi(**settings: str) -> Callable[[Staged], Staged]:
    def change(node: Staged) -> Staged:
        return replace(node, ksi_env=(*node.ksi_env, *settings.items()))
    return change


def _deletes_measured(*seconds: float) -> Callable[[Staged], Staged]:
    def change(node: Staged) -> Staged:
        node.state.mkdir(mode=0o700, exist_ok=True)
        for value in seconds:
            stopbudget.record_delete(node.state, value)
        return node
    return change


def _modules(*names: str) -> Callable[[Staged], Staged]:
    return _write("proc/modules", "".join(f"{m} 16384 0 - Live 0x0\n" for m in names))


def _kconfig(text: str) -> Callable[[Staged], Staged]:
    def change(node: Staged) -> Staged:
        node.write("proc/modules", "")
        (node.root / "proc/config.gz").write_bytes(gzip.compress(text.encode()))
        return node
    return change


def _no_user_service(node: Staged) -> Staged:
    service = node.root / f"sys/fs/cgroup/user.slice/user-{UID}.slice/user@{UID}.service/cgroup.controllers"
    service.unlink()
    return node


def _with_tool(name: str, text: str) -> Callable[[Staged], Staged]:
    def change(node: Staged) -> Staged:
        _tool(node.root / "bin", name, text)
        return node
    return change


def _no_tool(name: str) -> Callable[[Staged], Staged]:
    return _drop(f"bin/{name}")


def _unwritable_shared(node: Staged) -> Staged:
    return replace(node, shared=node.shared / "missing")


def _open_state_dir(node: Staged) -> Staged:
    node.state.mkdir(mode=0o755)
    node.state.chmod(0o755)
    return node


def _runtime_dir_missing(node: Staged) -> Staged:
    (node.root / "run/user" / str(UID)).rmdir()
    return node


DELEGATION = "cgroup controllers cpu, memory, pids delegated to the user"


def _home_on_nfs(node: Staged) -> Staged:
    """Mount the staged /home from a file server (the staged home lives at <root>/home)."""
    return _write("proc/self/mountinfo", textwrap.dedent(f"""\
        22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
        41 22 0:45 / {node.root / "home"} rw,relatime shared:21 - nfs4 fileserver:/home rw,vers=4.2
        """))(node)


def _running_containerd(fstype: str, source: str) -> Callable[[Staged], Staged]:
    """Stage a rootless containerd whose namespace has /var/lib/containerd and /var/lib/cni on ``fstype``."""
    def change(node: Staged) -> Staged:
        node.write(f"run/user/{UID}/containerd-rootless/child_pid", "4242\n")
        node.write("proc/4242/mountinfo", textwrap.dedent(f"""\
            22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
            61 22 0:45 /alice/.local/share/containerd /var/lib/containerd rw - {fstype} {source} rw
            62 22 0:45 /alice/.local/share/cni /var/lib/cni rw - {fstype} {source} rw
            """))
        return node
    return change


# (id, change, {failing check: (text in detail, text in fix)})
FAILURES: list[tuple[str, Callable[[Staged], Staged], dict[str, tuple[str, str]]]] = [
    ("cgroup v1", _drop("sys/fs/cgroup/cgroup.controllers"),
     {"cgroup v2": ("not the unified (v2) hierarchy", "systemd.unified_cgroup_hierarchy=1")}),
    ("pids not delegated",
     _write(f"sys/fs/cgroup/user.slice/user-{UID}.slice/user@{UID}.service/cgroup.controllers", "cpu memory\n"),
     {DELEGATION: ("lacks pids", "Delegate=cpu cpuset io memory pids")}),
    ("no systemd user instance", _no_user_service,
     {DELEGATION: ("no systemd user instance", "enable-linger")}),
    ("systemd-run --user --scope fails in the job", _env(FAKE_SCOPE_FAIL="Failed to connect to bus: No such file"),
     {DELEGATION: ("--property=Delegate=yes true` fails here", "pam_systemd")}),
    ("iptable_nat not loaded", _modules("ip6_tables", "ip6table_nat", "ip_tables", "wireguard"),
     {"kernel modules ip6_tables, ip6table_nat, ip_tables, iptable_nat": ("iptable_nat not loaded",
                                                                          "modprobe -a iptable_nat")}),
    ("nat modules are =m but not loaded", _kconfig(
        "CONFIG_IP_NF_IPTABLES=y\nCONFIG_IP6_NF_IPTABLES=y\nCONFIG_IP_NF_NAT=m\nCONFIG_IP6_NF_NAT=m\nCONFIG_WIREGUARD=y\n"),
     {"kernel modules ip6_tables, ip6table_nat, ip_tables, iptable_nat": (
         "ip6table_nat not loaded, iptable_nat not loaded", "modprobe -a ip6table_nat iptable_nat")}),
    ("kernel without WireGuard", _kconfig(
        "CONFIG_IP_NF_IPTABLES=y\nCONFIG_IP6_NF_IPTABLES=y\nCONFIG_IP_NF_NAT=y\nCONFIG_IP6_NF_NAT=y\n"
        "# CONFIG_WIREGUARD is not set\n"),
     {"WireGuard kernel module (Liqo)": ("not in this kernel (CONFIG_WIREGUARD is not set)", "modprobe wireguard")}),
    ("old kernel", _write("proc/sys/kernel/osrelease", "5.4.0-150-generic\n"),
     {"kernel >= 5.10 (Liqo)": ("5.4.0-150-generic is older than 5.10", "newer kernel")}),
    ("low inotify limits", _write("proc/sys/fs/inotify/max_user_instances", "128\n"),
     {"inotify limits for several clusters": ("max_user_instances=128 < 512",
                                              "fs.inotify.max_user_instances=512")}),
    ("kind too old", _env(FAKE_KIND_VERSION="0.20.0"),
     {"kind >= v0.23.0": ("kind v0.20.0 is too old", "install kind >= v0.23.0")}),
    ("kind missing", _no_tool("kind"), {"kind >= v0.23.0": ("kind not found on PATH", "install kind >= v0.23")}),
    ("nerdctl missing", _no_tool("nerdctl"),
     {"nerdctl": ("nerdctl not found on PATH", "install nerdctl"),
      "rootless containerd reachable": ("nerdctl not found on PATH", "containerd-rootless-setuptool.sh install")}),
    ("liqoctl v0", _env(FAKE_LIQO_VERSION="v0.10.3"), {"liqoctl v1": ("liqoctl v0.10.3 is not v1", "liqoctl v1.x")}),
    ("liqoctl missing", _no_tool("liqoctl"), {"liqoctl v1": ("liqoctl not found on PATH", "liqoctl v1.x")}),
    ("liqoctl without the gateway flags", _env(FAKE_LIQO_VERSION="v1.0.0-rc.3",
                                               FAKE_PEER_FLAGS="client-address client-port remote-kubeconfig"),
     {"liqoctl v1": ("`liqoctl peer` has no --gw-server-service-type, --gw-server-service-nodeport, "
                     "--gw-client-address, --gw-client-port", "v1.0.1 or later")}),
    ("containerd not running", _env(FAKE_INFO_FAIL="cannot access containerd socket"),
     {"rootless containerd reachable": ("cannot access containerd socket", "systemctl --user start containerd")}),
    ("rootful containerd", _write("nerdctl-info.json", json.dumps({**INFO, "SecurityOptions": ["name=seccomp"]})),
     {"rootless containerd reachable": ("not rootless", "containerd-rootless-setuptool.sh install")}),
    ("state directory inside a per-job directory", lambda n: _env(FAKE_JOB_CONTAINER="job_container/tmpfs")(
        _write("etc/slurm/job_container.conf", f"BasePath=/local/jobs Dirs=/dev/shm,{n.state.parent}\n")(n)),
     {"node-local state directory": ("which Slurm makes private to each job (JobContainerType=job_container/tmpfs)",
                                     "KSI_EPILOG_STATE_DIR to match")}),
    ("running containerd's namespace has its data on NFS although this shell says local",
     lambda n: _running_containerd("nfs4", "fileserver:/home")(_env(XDG_DATA_HOME="/local/data")(n)),
     {"container data roots node-local": (
         "containerd /var/lib/containerd on nfs4 from fileserver:/home (in the namespace of containerd's pid 4242)",
         "in containerd's service")}),
    ("no runtime directory", _runtime_dir_missing,
     {"XDG_RUNTIME_DIR present": (f"/run/user/{UID} does not exist", "loginctl enable-linger")}),
    ("no subuid entry", _write("etc/subuid", "other:100000:65536\n"),
     {f"subuid entries for {USER}": ("no entry in /etc/subuid", "usermod --add-subuids")}),
    ("too few subgids", _write("etc/subgid", f"{USER}:165536:1000\n"),
     {f"subgid entries for {USER}": ("only 1000 ids", "usermod --add-subgids")}),
    ("data roots on the shared home", _home_on_nfs,
     {"container data roots node-local": ("on nfs4 (shared by all nodes)", "node-local disk")}),
    ("shared directory missing", _unwritable_shared,
     {"shared directory writable": ("does not exist", "give an existing directory")}),
    ("state directory readable by others", _open_state_dir,
     {"node-local state directory": ("readable by others", "chmod 700")}),
    ("KillWait shorter than the grace period and a teardown", _env(FAKE_KILL_WAIT="25"),
     {"KillWait holds the grace period and a teardown": (
         "KillWait 25 s (scontrol show config) for KSI_GRACE_PERIOD 5 s + a teardown of up to 20 s "
         "(KSI_TEARDOWN_TIMEOUT; no delete measured on this node yet) + 3.5 s margin: a stopped workload gets only "
         "1.5 s of its grace period",
         "ask the site to raise KillWait in slurm.conf to at least 29 s, or lower KSI_GRACE_PERIOD to 1.5 s")}),
    ("KillWait too short for a teardown (slurm.conf, the controller unreachable)", lambda n: _write(
        "etc/slurm/slurm.conf", "ClusterName=c\nKillWait=5\n")(_env(FAKE_NO_CONTROLLER="1")(n)),
     {"KillWait holds the grace period and a teardown": (
         "too short for the teardown alone, a stopped run may leave its cluster to the epilog",
         "at least 29 s; a lower KSI_GRACE_PERIOD cannot help, the teardown alone needs more than the 3.5 s "
         "KillWait leaves it")}),
]


@pytest.mark.parametrize(("change", "failing"), [(c, f) for _, c, f in FAILURES], ids=[i for i, _, _ in FAILURES])
def test_each_failure_is_reported_with_its_fix(node: Staged, change: Callable[[Staged], Staged],
                                               failing: dict[str, tuple[str, str]]) -> None:
    checks = change(node).checks()
    assert sorted(name for name, c in checks.items() if not c.ok) == sorted(failing)
    for name, (detail, fix) in failing.items():
        check = checks[name]
        assert detail in check.detail, check
        assert fix in check.fix, check
        assert check.line() == f"FAIL {name}: {check.detail}; fix: {check.fix}"
        assert "\n" not in check.line()


PASSING_VARIANTS: list[tuple[str, Callable[[Staged], Staged]]] = [
    ("modules built in (modules.builtin)", lambda n: _modules("wireguard")(_write(
        "lib/modules/6.1.0-18-amd64/modules.builtin",
        "kernel/net/ipv4/netfilter/ip_tables.ko\nkernel/net/ipv4/netfilter/iptable_nat.ko\n"
        "kernel/net/ipv6/netfilter/ip6_tables.ko\nkernel/net/ipv6/netfilter/ip6table_nat.ko\n")(n))),
    ("monolithic kernel with everything =y", _kconfig(
        "CONFIG_IP_NF_IPTABLES=y\nCONFIG_IP6_NF_IPTABLES=y\nCONFIG_IP_NF_NAT=y\nCONFIG_IP6_NF_NAT=y\nCONFIG_WIREGUARD=y\n")),
    ("own cgroup delegated instead of a user service", lambda n: _write(
        "sys/fs/cgroup/job/cgroup.controllers", "cpu memory pids\n")(_write(
            "proc/self/cgroup", "0::/job\n")(_no_user_service(n)))),
    ("per-job /dev/shm only (job_container.conf Dirs=)", lambda n: _env(FAKE_JOB_CONTAINER="job_container/tmpfs")(
        _write("etc/slurm/job_container.conf", "BasePath=/local/jobs Dirs=/dev/shm # no /tmp\n")(n))),
    ("subids by uid", _write("etc/subuid", f"{UID}:165536:65536\n")),
    ("subids from nsswitch (getsubids), none in /etc", lambda n: _with_tool("getsubids", GETSUBIDS)(
        _write("etc/subgid", "other:100000:65536\n")(_write("etc/subuid", "other:100000:65536\n")(n)))),
    ("containerd root moved off the shared home", lambda n: _write(
        "home/someuser/.config/containerd/config.toml", 'root = "/local/containerd"\n')(_write(
            "home/someuser/.config/nerdctl/nerdctl.toml", 'data_root = "/local/nerdctl"\n')(_home_on_nfs(n)))),
    ("XDG_DATA_HOME on local disk", lambda n: _env(XDG_DATA_HOME="/local/data")(_home_on_nfs(n))),
    ("a short KillWait for a short grace and the deletes measured here", lambda n: _env(FAKE_KILL_WAIT="5")(
        _ksi(KSI_GRACE_PERIOD="1")(_deletes_measured(0.8, 1.0)(n)))),
    ("no Slurm here", _env(FAKE_NO_CONTROLLER="1")),
    ("running containerd's data local, nerdctl's moved off the shared home", lambda n: _running_containerd(
        "xfs", "/dev/nvme0n1")(_write("home/someuser/.config/nerdctl/nerdctl.toml", 'data_root = "/local/nerdctl"\n')(
            _home_on_nfs(n)))),
]


@pytest.mark.parametrize("change", [c for _, c in PASSING_VARIANTS], ids=[i for i, _ in PASSING_VARIANTS])
def test_other_healthy_layouts_pass(node: Staged, change: Callable[[Staged], Staged]) -> None:
    checks = change(node).checks()
    assert [c.line() for c in checks.values() if not c.ok] == []


def test_mountinfo_parsing_and_longest_mount() -> None:
    text = textwrap.dedent(r"""
        22 1 8:1 / / rw - ext4 /dev/sda1 rw
        40 22 0:44 / /home rw shared:20 master:3 - nfs4 srv:/home rw
        41 40 0:45 / /home/with\040space rw - lustre srv@tcp:/fs rw
        42 22 0:46 / /homework rw - xfs /dev/sdb rw
        """)
    mounts = parse_mountinfo(text)
    assert mounts[2] == Mount("/home/with space", "lustre", "srv@tcp:/fs")
    assert mount_of(Path("/home/u/.local/share/containerd"), mounts) == mounts[1]
    assert mount_of(Path("/home/with space/x"), mounts) == mounts[2]
    assert mount_of(Path("/homework/x"), mounts) == mounts[3]
    assert mount_of(Path("/var/lib"), mounts) == mounts[0]


def test_subid_ranges_match_name_or_uid_and_skip_garbage() -> None:
    text = "alice:100000:65536\n# comment\n1000:200000:10\nbob:x:1\nalice:300000:5\n"
    assert subid_ranges(text, "alice", 1000) == [(100000, 65536), (200000, 10), (300000, 5)]
    assert subid_ranges(text, "bob", 7) == []


def test_kernel_version_parsing() -> None:
    assert doctor.parse_kernel_version("6.1.0-18-amd64") == (6, 1)
    assert doctor.parse_kernel_version("5.10.0") == (5, 10)
    assert doctor.parse_kernel_version("garbage") is None


def test_ksi_doctor_prints_one_line_per_check_and_exits_3_unless_all_pass(tmp_path: Path) -> None:
    env = {**os.environ, "SLURMD_NODENAME": "nodeX", "KSI_STATE_DIR": str(tmp_path / "s")}
    text = subprocess.run([KSI, "doctor", str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    lines = text.stdout.splitlines()
    assert len(lines) == 18, text.stdout + text.stderr
    assert all(line.startswith("ksi[nodeX] doctor: PASS ") or line.startswith("ksi[nodeX] doctor: FAIL ")
               for line in lines[:-1])
    failed = [line for line in lines[:-1] if " FAIL " in line]
    assert all("; fix: " in line for line in failed)
    assert lines[-1].startswith(f"ksi[nodeX] doctor: {17 - len(failed)} of 17 checks passed")
    assert text.returncode == (3 if failed else 0)
    assert "PASS shared directory writable" in text.stdout

    as_json = subprocess.run([KSI, "doctor", str(tmp_path), "--json"], env=env,
                             capture_output=True, text=True, timeout=60, check=False)
    [line] = as_json.stdout.splitlines()
    report = json.loads(line)
    assert report["node"] == "nodeX" and len(report["checks"]) == 17
    assert report["ok"] is (not failed) and as_json.returncode == text.returncode
    assert {c["name"] for c in report["checks"] if not c["ok"]} == {
        line.split(" FAIL ", 1)[1].split(":", 1)[0] for line in failed}


def test_per_job_directories_come_from_slurm(node: Staged) -> None:
    assert per_job_dirs(node.host) is None  # job_container/none
    tmpfs = node.env(FAKE_JOB_CONTAINER="job_container/tmpfs")
    assert per_job_dirs(tmpfs.host) == ("JobContainerType=job_container/tmpfs", (Path("/tmp"), Path("/dev/shm")))
    tmpfs.write("etc/slurm/job_container.conf", "NodeName=n[1-4] BasePath=/local Dirs=/tmp,/scratch/job\n")
    assert per_job_dirs(tmpfs.host) == ("JobContainerType=job_container/tmpfs", (Path("/tmp"), Path("/scratch/job")))

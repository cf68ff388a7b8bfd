"""``ksi doctor``: can this node run ksi at all? Every prerequisite as one pass/fail line with its fix.

Each check is a small function over a :class:`Host`, which says where to look (the /proc, /sys and /etc trees,
the kernel's module lists, the user's runtime directories) and which environment the tools run with, so
tests stage a fake tree and fake tools and see each failure with its message. The checks only read files
and run version/info commands; they change nothing. They are grouped by concern: :mod:`.kernel`,
:mod:`.runtime` (the programs and rootless containers), :mod:`.storage`, :mod:`.slurm`.
"""

from __future__ import annotations

from ksi.admin.doctor.base import Check, Host
from ksi.admin.doctor.kernel import (
    check_cgroup_v2,
    check_delegation,
    check_inotify,
    check_iptables_modules,
    check_kernel,
    check_wireguard,
    parse_kernel_version,
)
from ksi.admin.doctor.runtime import (
    check_kind,
    check_liqoctl,
    check_rootless,
    check_runtime,
    check_runtime_dir,
    check_subids,
    runtime_info,
    subid_ranges,
)
from ksi.admin.doctor.slurm import check_kill_wait
from ksi.admin.doctor.storage import (
    Mount,
    check_data_roots,
    check_shared,
    check_state_dir,
    mount_of,
    parse_mountinfo,
    per_job_dirs,
)
from ksi.settings import Settings

__all__ = ["Check", "Host", "Mount", "mount_of", "parse_kernel_version", "parse_mountinfo", "per_job_dirs",
           "run_checks", "subid_ranges"]


def run_checks(host: Host, shared_dir: str, settings: Settings) -> list[Check]:
    """Run every check against ``host`` (ksi's ``settings``: state directory, grace, teardown) in a fixed order."""
    info = runtime_info(host)
    return [
        check_cgroup_v2(host),
        check_delegation(host),
        check_iptables_modules(host),
        check_kernel(host),
        check_wireguard(host),
        check_inotify(host),
        check_kind(host),
        check_runtime(host),
        check_liqoctl(host),
        check_rootless(info, host.provider),
        check_runtime_dir(host),
        check_subids(host, "uid"),
        check_subids(host, "gid"),
        check_data_roots(host),
        check_shared(shared_dir),
        check_state_dir(host, settings.state_dir),
        check_kill_wait(host, settings),
    ]

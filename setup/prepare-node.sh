#!/usr/bin/env bash
# Prepare a compute node for ksi (run as root on every node, or against an image with --root).
#
#   setup/prepare-node.sh [--root DIR] [--dry-run]
#
# Writes the persistent configuration that setup/README.md describes and applies it now:
#   /etc/sysctl.d/60-ksi.conf                         inotify limits for several kind clusters per node
#   /etc/modules-load.d/ksi.conf                      iptables modules for kind, WireGuard for Liqo
#   /etc/systemd/system/user@.service.d/delegate.conf cpu, memory, pids (and io, cpuset) delegated to users
# It never touches the boot loader: a node without cgroup v2 needs systemd.unified_cgroup_hierarchy=1 on
# the kernel command line, which it reports. Installing the tools (setup/install-tools.sh), subuid/subgid
# ranges and the epilog are separate steps (setup/README.md). Finish with `ksi doctor` as a normal user.
#
# --root DIR  write the files under DIR (a node image or chroot) and apply nothing
# --dry-run   say what would change, change nothing
# Exit status: 0 when everything is written and applied, 1 when applying something failed, 2 for bad usage.
set -euo pipefail

root=""
dry_run=0
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root="${2:?--root needs a directory}"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "prepare-node: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if [ -n "$root" ] && [ ! -d "$root" ]; then
  echo "prepare-node: --root $root is not a directory" >&2; exit 2
fi
if [ -z "$root" ] && [ "$dry_run" = 0 ] && [ "$(id -u)" != 0 ]; then
  echo "prepare-node: must run as root (or with --root DIR / --dry-run)" >&2; exit 2
fi

failed=0
note() { echo "prepare-node: $*"; }

# write PATH CONTENT: install the file (0644) unless it already has exactly this content.
write() {
  local target="$root$1" content="$2"
  if [ -f "$target" ] && [ "$(cat "$target")" = "$content" ]; then
    note "unchanged $1"
    return 1
  fi
  if [ "$dry_run" = 1 ]; then
    note "would write $1"
    return 1
  fi
  mkdir -p "$(dirname "$target")"
  printf '%s\n' "$content" > "$target.ksi-tmp"
  chmod 0644 "$target.ksi-tmp"
  mv -f "$target.ksi-tmp" "$target"
  note "wrote $1"
  return 0
}

# apply COMMAND...: run it on a live node (not with --root or --dry-run); note a failure and go on.
apply() {
  if [ -n "$root" ] || [ "$dry_run" = 1 ]; then return 0; fi
  if ! "$@" >/dev/null 2>&1; then
    note "FAILED: $* (see its output by running it by hand)"
    failed=1
  fi
}

SYSCTL="# ksi: several rootless kind clusters per node need more inotify watches and instances (kind's advice)
fs.inotify.max_user_watches = 524288
fs.inotify.max_user_instances = 512"
MODULES="# ksi: kind's networking (a rootless user cannot load modules) and Liqo's WireGuard gateway
ip6_tables
ip6table_nat
ip_tables
iptable_nat
wireguard"
DELEGATE="# ksi: rootless kind needs these cgroup controllers delegated to each user's systemd
[Service]
Delegate=cpu cpuset io memory pids"

if write /etc/sysctl.d/60-ksi.conf "$SYSCTL"; then
  apply sysctl -p /etc/sysctl.d/60-ksi.conf
fi
if write /etc/modules-load.d/ksi.conf "$MODULES"; then :; fi
for module in ip6_tables ip6table_nat ip_tables iptable_nat wireguard; do
  # Built-in modules are fine; modprobe knows them through modules.builtin.
  apply modprobe "$module"
done
if write /etc/systemd/system/user@.service.d/delegate.conf "$DELEGATE"; then
  apply systemctl daemon-reload
fi

if [ -z "$root" ] && [ ! -f /sys/fs/cgroup/cgroup.controllers ]; then
  note "cgroup v2 is not mounted: add systemd.unified_cgroup_hierarchy=1 to the kernel command line and reboot"
  failed=1
fi
note "done; check the node as a normal user with: ksi doctor"
exit "$failed"

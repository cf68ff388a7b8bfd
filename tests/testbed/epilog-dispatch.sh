#!/usr/bin/env bash
# Epilog dispatcher of the ksi Slurm test bed (slurm.conf Epilog=; `bed up` copies it into the state dir).
# slurmd runs it as root on every node of a job when the job ends, with SLURM_JOB_ID, SLURM_JOB_USER and
# SLURMD_NODENAME set. It runs every executable regular file in epilog.d beside it, in name order, each
# under a time limit, with the same environment, and appends what it ran, its exit status and its output to
# log/epilog-<node>.log. It always exits 0: a failing Epilog would drain the node for every later test.
set -euo pipefail
export PATH="${PATH:-/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
hook_dir="$here/epilog.d"
node="${SLURMD_NODENAME:-$(hostname)}"
log="$here/log/epilog-$node.log"
limit="${KSI_TESTBED_EPILOG_TIMEOUT:-60}"

note() {
  printf '%s node=%s job=%s user=%s %s\n' "$(date +%Y-%m-%dT%H:%M:%S.%N)" "$node" \
    "${SLURM_JOB_ID:-?}" "${SLURM_JOB_USER:-?}" "$*" >>"$log" 2>/dev/null || true
}

note "start"
shopt -s nullglob
for hook in "$hook_dir"/*; do
  name="${hook##*/}"
  case "$name" in
    .* | *~ | *.swp | *.tmp) continue ;;
  esac
  if [[ ! -f "$hook" || ! -x "$hook" ]]; then
    continue
  fi
  rc=0
  timeout --kill-after=5 "$limit" "$hook" </dev/null >>"$log" 2>&1 || rc=$?
  note "ran $hook rc=$rc"
done
note "end"
exit 0

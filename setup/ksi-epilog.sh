#!/usr/bin/env bash
# ksi's Slurm epilog: when a job ends, delete the kind clusters its ksi left on this node.
#
# Rootless containers belong to the user's systemd, not to the job: a ksi that was SIGKILLed (KillWait
# exceeded, OOM, node trouble) leaves its cluster running. slurmd runs the Epilog as root on every node of
# a job when the job ends, even after its tasks were killed; this script then runs
#     ksi cleanup --job "$SLURM_JOB_ID"
# as "$SLURM_JOB_USER", under a time limit. It never fails the node because of ksi: it always exits 0
# (a failing Epilog drains the node) and logs what it did to syslog (tag ksi-epilog) and stderr.
#
# Use it as slurm.conf `Epilog=/path/to/ksi-epilog.sh`, or call it from the site's epilog. Settings
# (environment variables, or /etc/ksi/epilog.conf, a shell file of VAR=value lines, read if present):
#   KSI_EPILOG_KSI        the ksi command (default: `ksi` on KSI_EPILOG_PATH, else /usr/local/bin/ksi)
#   KSI_EPILOG_TIMEOUT    seconds ksi cleanup may take (default 60; keep it below PrologEpilogTimeout)
#   KSI_EPILOG_PATH       PATH for ksi, kind and nerdctl (default /usr/local/bin:/usr/bin:/bin)
#   KSI_EPILOG_STATE_DIR  ksi's node-local state directory, %u is replaced by the uid (default /tmp/ksi-%u,
#                         ksi's own default; set it if your users set KSI_STATE_DIR)
#   KSI_EPILOG_ALWAYS     1: run even when the user has no ksi state on this node (default: skip quickly)
#   KSI_EPILOG_PASS       names of further variables to pass from this environment to ksi, space-separated
#                         (ksi runs with a clean environment: e.g. "NERDCTL_TOML KSI_TEARDOWN_TIMEOUT")
set -u
# Whatever happens below (an unset variable, a broken config file, a signal), the epilog ends with 0.
trap 'exit 0' EXIT
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin${PATH:+:$PATH}"  # runuser, timeout

conf="${KSI_EPILOG_CONF:-/etc/ksi/epilog.conf}"
conf_error=""
if [[ -r "$conf" ]]; then
  if conf_error="$(bash -n "$conf" 2>&1)"; then
    set +u  # a config line using an unset variable must not end the epilog
    # shellcheck source=/dev/null
    . "$conf" || conf_error="$conf returned non-zero"
    set -u
  fi
fi

tag="ksi-epilog"
job="${SLURM_JOB_ID:-}"
user="${SLURM_JOB_USER:-}"
limit="${KSI_EPILOG_TIMEOUT:-60}"
search_path="${KSI_EPILOG_PATH:-/usr/local/bin:/usr/bin:/bin}"

say() {
  local message="job=${job:-?} user=${user:-?} $*"
  logger -t "$tag" -- "$message" 2>/dev/null || true
  printf '%s: %s\n' "$tag" "$message" >&2 || true
}

finish() {
  say "$@"
  exit 0
}

[[ -z "$conf_error" ]] || say "ignoring $conf: ${conf_error//$'\n'/ }"
[[ "$job" =~ ^[0-9]+$ ]] || finish "no usable SLURM_JOB_ID; nothing to do"
[[ -n "$user" ]] || finish "no SLURM_JOB_USER; nothing to do"
uid="$(id -u -- "$user" 2>/dev/null)" || finish "unknown user; nothing to do"
[[ "$limit" =~ ^[0-9]+$ && "$limit" -gt 0 ]] || limit=60

state_dir="${KSI_EPILOG_STATE_DIR:-/tmp/ksi-%u}"
state_dir="${state_dir//%u/$uid}"
if [[ "${KSI_EPILOG_ALWAYS:-0}" != 1 && ! -d "$state_dir" ]]; then
  exit 0  # this user never ran ksi on this node (since its /tmp was last cleaned): nothing to look at
fi

ksi="${KSI_EPILOG_KSI:-}"
if [[ -z "$ksi" ]]; then
  ksi="$(PATH="$search_path" command -v ksi 2>/dev/null)" || ksi=/usr/local/bin/ksi
fi
[[ -x "$ksi" ]] || finish "ksi not found at $ksi; set KSI_EPILOG_KSI"

home="$(getent passwd "$user" | cut -d: -f6)"
env_args=(
  "PATH=$search_path"
  "HOME=${home:-/}"
  "USER=$user"
  "LOGNAME=$user"
  "KSI_STATE_DIR=$state_dir"
)
# Rootless containerd, and with it the job's containers, belongs to the user's systemd, which runs while
# /run/user/UID exists. Without it nothing of the user's runs now, but the containers come back when it
# starts: start it (where this node runs systemd) so that ksi can reach and delete them.
runtime_dir="/run/user/$uid"
if [[ ! -d "$runtime_dir" && -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
  say "no $runtime_dir: starting user@$uid.service so that ksi can reach $user's rootless containerd"
  timeout 30 systemctl start "user@$uid.service" >/dev/null 2>&1 || say "systemctl start user@$uid.service failed"
fi
if [[ -d "$runtime_dir" ]]; then
  env_args+=("XDG_RUNTIME_DIR=$runtime_dir")
else
  say "no $runtime_dir: $user's systemd and rootless containerd are not running on this node; clusters of job" \
    "$job, if any, come back when they start (enable lingering: loginctl enable-linger $user)"
fi
[[ -n "${SLURMD_NODENAME:-}" ]] && env_args+=("SLURMD_NODENAME=$SLURMD_NODENAME")
[[ -n "${SLURM_CONF:-}" ]] && env_args+=("SLURM_CONF=$SLURM_CONF")
for name in ${KSI_EPILOG_PASS:-}; do
  [[ "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ && -n "${!name+set}" ]] && env_args+=("$name=${!name}")
done

# The inner timeout (as the user) stops ksi; the outer one also covers runuser itself. Run from / so the
# user needs no access to slurmd's working directory.
cd / || true
rc=0
output="$(timeout --kill-after=5 "$((limit + 10))" \
  runuser -u "$user" -- timeout --kill-after=5 "$limit" env -i "${env_args[@]}" \
  "$ksi" cleanup --job "$job" 2>&1 </dev/null)" || rc=$?

while IFS= read -r line; do
  [[ -n "$line" ]] && say "$line"
done <<<"$output"
case "$rc" in
  0) finish "ksi cleanup --job $job done" ;;
  124 | 137) finish "ksi cleanup --job $job did not finish within ${limit} s (status $rc)" ;;
  *) finish "ksi cleanup --job $job failed with status $rc" ;;
esac

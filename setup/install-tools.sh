#!/usr/bin/env bash
# Install kind, the nerdctl full bundle, liqoctl and kubectl on a node without internet access, from a
# directory of release files downloaded elsewhere, each checked against its published SHA-256 sum.
#
#   setup/install-tools.sh --from DIR [--apply] [--prefix DIR] [--root DIR] [--arch ARCH] [--only LIST]
#                          [--kind-version V] [--nerdctl-version V] [--liqoctl-version V] [--kubectl-version V]
#
# Checks by default: every release file against its sum, then which files under the prefix are missing or
# differ from the release; it changes nothing. --apply installs what is missing or different (atomically,
# file by file); a file already in place is left alone. DIR holds, as downloaded (ARCH amd64 or arm64):
#   kind-linux-ARCH, kind-linux-ARCH.sha256sum     github.com/kubernetes-sigs/kind/releases/download/v0.33.0/
#   nerdctl-full-2.3.5-linux-ARCH.tar.gz, SHA256SUMS  github.com/containerd/nerdctl/releases/download/v2.3.5/
#   liqoctl-linux-ARCH.tar.gz                      github.com/liqotech/liqo/releases/download/v1.0.1/
#   liqo.yaml   Liqo publishes liqoctl's sums in its krew-index manifest (kubernetes-sigs/krew-index,
#               plugins/liqo.yaml, from the commit that names v1.0.1)
#   kubectl, kubectl.sha256                        dl.k8s.io/release/v1.37.0/bin/linux/ARCH/
# kind and kubectl do not name their version in the file: when ARCH is this machine's, the checked file's
# `version` is run and must say the pinned one.
#
# --from DIR      the directory of release files (required)
# --apply         install what is missing or different (default: only check)
# --prefix DIR    where the tools go: DIR/bin, DIR/libexec/cni, ... (default /usr/local)
# --root DIR      install under DIR (a node image or chroot): files go to DIR/PREFIX
# --arch ARCH     amd64 or arm64 (default: this machine's)
# --only LIST     comma-separated subset of kind,nerdctl,liqoctl,kubectl
# --TOOL-version  another release than the pinned one (kind v0.33.0, nerdctl 2.3.5, liqoctl v1.0.1, kubectl v1.37.0)
# Exit status: 0 everything is in place (or was installed); 1 something is missing or different (check
# mode), or installing failed; 2 bad usage; 3 a release file is missing or failed its check (nothing changed).
set -euo pipefail
umask 022

KIND_VERSION=v0.33.0  # kind's nerdctl provider needs >= v0.23; v0.33's default node image is ksi's
NERDCTL_VERSION=2.3.5
LIQOCTL_VERSION=v1.0.1  # the first Liqo v1 whose `liqoctl peer` has the --gw-* flags ksi uses
KUBECTL_VERSION=v1.37.0  # the Kubernetes version of ksi's node image
ALL_TOOLS="kind nerdctl liqoctl kubectl"

from=""
prefix=/usr/local
root=""
apply=0
arch=""
only=""
usage() { echo "install-tools: $* (see --help)" >&2; exit 2; }
value() { if [ $# -lt 2 ] || [ -z "$2" ]; then usage "$1 needs a value"; fi; }
while [ $# -gt 0 ]; do
  case "$1" in
    --from) value "$@"; from="$2"; shift 2 ;;
    --apply) apply=1; shift ;;
    --prefix) value "$@"; prefix="$2"; shift 2 ;;
    --root) value "$@"; root="$2"; shift 2 ;;
    --arch) value "$@"; arch="$2"; shift 2 ;;
    --only) value "$@"; only="$2"; shift 2 ;;
    --kind-version) value "$@"; KIND_VERSION="$2"; shift 2 ;;
    --nerdctl-version) value "$@"; NERDCTL_VERSION="$2"; shift 2 ;;
    --liqoctl-version) value "$@"; LIQOCTL_VERSION="$2"; shift 2 ;;
    --kubectl-version) value "$@"; KUBECTL_VERSION="$2"; shift 2 ;;
    -h|--help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) usage "unknown argument '$1'" ;;
  esac
done

[ -n "$from" ] || usage "--from DIR is required: the directory of downloaded release files"
[ -d "$from" ] || usage "--from $from is not a directory"
from="$(cd "$from" && pwd)"
if [ -n "$root" ]; then
  [ -d "$root" ] || usage "--root $root is not a directory"
  root="$(cd "$root" && pwd)"
  [ "$root" != / ] || root=""
fi
case "$prefix" in
  /*) prefix="${prefix%/}"; [ -n "$prefix" ] || usage "--prefix / is not a place for tools" ;;
  *) usage "--prefix $prefix is not an absolute path" ;;
esac
case "$(uname -m)" in
  x86_64|amd64) host_arch=amd64 ;;
  aarch64|arm64) host_arch=arm64 ;;
  *) host_arch="" ;;
esac
if [ -z "$arch" ]; then
  [ -n "$host_arch" ] || usage "this machine is $(uname -m): name the release's architecture with --arch amd64|arm64"
  arch="$host_arch"
fi
case "$arch" in amd64|arm64) ;; *) usage "--arch $arch: releases exist for amd64 and arm64" ;; esac
for pair in "kind:$KIND_VERSION" "nerdctl:$NERDCTL_VERSION" "liqoctl:$LIQOCTL_VERSION" "kubectl:$KUBECTL_VERSION"; do
  [[ "${pair#*:}" =~ ^v?[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.]+)?$ ]] \
    || usage "--${pair%%:*}-version ${pair#*:} is not a release version such as 1.2.3"
done
# Release tags carry a "v"; nerdctl's file names do not.
KIND_VERSION="v${KIND_VERSION#v}"
NERDCTL_VERSION="${NERDCTL_VERSION#v}"
LIQOCTL_VERSION="v${LIQOCTL_VERSION#v}"
KUBECTL_VERSION="v${KUBECTL_VERSION#v}"
tools="$ALL_TOOLS"
if [ -n "$only" ]; then
  tools=""
  for tool in ${only//,/ }; do
    case " $ALL_TOOLS " in *" $tool "*) tools="$tools $tool" ;; *) usage "--only $only: '$tool' is not one of ${ALL_TOOLS// /,}" ;; esac
  done
fi
dest="$root$prefix"
if [ "$apply" = 1 ]; then
  # The nearest existing directory on the way to the prefix decides whether we may create or replace files.
  probe="$dest"
  while [ ! -d "$probe" ]; do probe="$(dirname "$probe")"; done
  [ -w "$probe" ] || usage "cannot write to $probe: run as root, or choose --prefix DIR or --root DIR"
fi

note() { echo "install-tools: $*"; }
refused=0
refuse() { echo "install-tools: REFUSED $*" >&2; refused=1; }

work="$(mktemp -d "${TMPDIR:-/tmp}/ksi-install-tools.XXXXXX")"
pending=""  # the temporary name put() is writing, removed if we are stopped half-way
trap 'rm -rf "$work" ${pending:+"$pending"}' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# needs TOOL NAME URL [NAME URL...]: each release file NAME must be in the directory; name every one that
# is not and where to get it.
needs() {
  local tool="$1" found=0
  shift
  while [ $# -ge 2 ]; do
    if [ ! -f "$from/$1" ]; then
      refuse "$tool: $from/$1 is missing: download it from $2"
      found=1
    fi
    shift 2
  done
  return "$found"
}

# listed_sum SUMSFILE NAME: the SHA-256 that a sha256sum-style list gives for NAME (any directory part and
# a binary-mode '*' before the name are ignored).
listed_sum() {
  awk -v want="$2" '{ name = $2; sub(/^\*/, "", name); sub(/.*\//, "", name); if (name == want) { print $1; exit } }' "$1"
}

# krew_sum MANIFEST URL_TAIL: the sha256 that a krew plugin manifest gives for the uri ending in URL_TAIL.
krew_sum() {
  awk -v tail="$2" '
    $1 == "uri:" { uri = $2; gsub(/["'\'']/, "", uri); hit = (length(uri) >= length(tail) && substr(uri, length(uri) - length(tail) + 1) == tail); next }
    hit && $1 == "sha256:" { sum = $2; gsub(/["'\'']/, "", sum); print sum; exit }
  ' "$1"
}

# check_sum TOOL NAME EXPECTED SUMS [WHAT]: the release file NAME must have the SHA-256 EXPECTED, read from
# the sums file SUMS (WHAT says more about SUMS).
check_sum() {
  local tool="$1" name="$2" expected="$3" sums="$4" what="${5:+, $5}" actual
  expected="$(printf '%s' "$expected" | tr 'A-F' 'a-f')"
  if ! [[ "$expected" =~ ^[0-9a-f]{64}$ ]]; then
    refuse "$tool: $from/$sums$what gives no SHA-256 for $name: is it the one published with that release?"
    return 1
  fi
  actual="$(sha256sum < "$from/$name")"
  actual="${actual%% *}"
  if [ "$actual" != "$expected" ]; then
    refuse "$tool: $from/$name has SHA-256 $actual but $sums$what says $expected: the download is damaged or another release; download it again"
    return 1
  fi
  note "$tool: $name matches its published SHA-256 ($sums$what)"
}

# says_version TOOL FILE WANT ARGS...: run the checked FILE with ARGS (only on its own architecture) and
# require WANT as a word of what it prints.
says_version() {
  local tool="$1" file="$2" want="$3" out
  shift 3
  if [ "$arch" != "$host_arch" ]; then
    note "$tool: version not checked: a linux-$arch binary cannot run on this $(uname -m) machine"
    return 0
  fi
  chmod 0755 "$file"
  if ! out="$(timeout 20 "$file" "$@" 2>&1)"; then
    refuse "$tool: \`$(basename "$file") $*\` failed: ${out:0:200}"
    return 1
  fi
  if [[ " $(printf '%s' "$out" | tr '\n' ' ') " != *" $want "* ]]; then
    refuse "$tool: the release file is not $want (\`$tool $*\` says: $(printf '%s' "$out" | head -n 1)); download $want or pass --$tool-version"
    return 1
  fi
}

# Each stage_TOOL checks TOOL's release files and lays out what it installs under $work/TOOL, as it is to
# appear under the prefix.
stage_kind() {
  local name="kind-linux-$arch" url="https://github.com/kubernetes-sigs/kind/releases/download/$KIND_VERSION"
  needs kind "$name" "$url/$name" "$name.sha256sum" "$url/$name.sha256sum" || return 0
  check_sum kind "$name" "$(listed_sum "$from/$name.sha256sum" "$name")" "$name.sha256sum" || return 0
  mkdir -p "$work/kind/bin"
  cp "$from/$name" "$work/kind/bin/kind"
  says_version kind "$work/kind/bin/kind" "$KIND_VERSION" version || return 0
  chmod 0755 "$work/kind/bin/kind"
}

stage_nerdctl() {
  local name="nerdctl-full-$NERDCTL_VERSION-linux-$arch.tar.gz"
  local url="https://github.com/containerd/nerdctl/releases/download/v$NERDCTL_VERSION"
  needs nerdctl "$name" "$url/$name" SHA256SUMS "$url/SHA256SUMS" || return 0
  check_sum nerdctl "$name" "$(listed_sum "$from/SHA256SUMS" "$name")" SHA256SUMS || return 0
  mkdir -p "$work/nerdctl"
  if ! tar -xzf "$from/$name" -C "$work/nerdctl" --no-same-owner --no-same-permissions 2>"$work/tar.err"; then
    refuse "nerdctl: $from/$name does not unpack: $(head -n 1 "$work/tar.err")"
    return 0
  fi
  if [ ! -f "$work/nerdctl/bin/nerdctl" ]; then
    refuse "nerdctl: $from/$name has no bin/nerdctl: it is not the nerdctl full bundle"
  fi
}

stage_liqoctl() {
  local name="liqoctl-linux-$arch.tar.gz" url="https://github.com/liqotech/liqo/releases/download/$LIQOCTL_VERSION"
  needs liqoctl "$name" "$url/$name" \
    liqo.yaml "https://github.com/kubernetes-sigs/krew-index/commits/master/plugins/liqo.yaml (the version naming $LIQOCTL_VERSION)" \
    || return 0
  check_sum liqoctl "$name" "$(krew_sum "$from/liqo.yaml" "/$LIQOCTL_VERSION/$name")" liqo.yaml "krew-index's manifest for $LIQOCTL_VERSION" \
    || return 0
  mkdir -p "$work/liqoctl.tar" "$work/liqoctl/bin"
  if ! tar -xzf "$from/$name" -C "$work/liqoctl.tar" --no-same-owner --no-same-permissions 2>"$work/tar.err"; then
    refuse "liqoctl: $from/$name does not unpack: $(head -n 1 "$work/tar.err")"
    return 0
  fi
  if [ ! -f "$work/liqoctl.tar/liqoctl" ]; then
    refuse "liqoctl: $from/$name has no liqoctl at its top: it is not a liqoctl release archive"
    return 0
  fi
  cp "$work/liqoctl.tar/liqoctl" "$work/liqoctl/bin/liqoctl"
  chmod 0755 "$work/liqoctl/bin/liqoctl"
}

stage_kubectl() {
  local url="https://dl.k8s.io/release/$KUBECTL_VERSION/bin/linux/$arch" sum=""
  needs kubectl kubectl "$url/kubectl" kubectl.sha256 "$url/kubectl.sha256" || return 0
  # kubectl.sha256 holds the bare sum, nothing else.
  read -r sum _ < "$from/kubectl.sha256" || true
  check_sum kubectl kubectl "$sum" kubectl.sha256 || return 0
  mkdir -p "$work/kubectl/bin"
  cp "$from/kubectl" "$work/kubectl/bin/kubectl"
  says_version kubectl "$work/kubectl/bin/kubectl" "$KUBECTL_VERSION" version --client || return 0
  chmod 0755 "$work/kubectl/bin/kubectl"
}

label() {
  case "$1" in
    kind) echo "kind $KIND_VERSION" ;;
    nerdctl) echo "nerdctl-full $NERDCTL_VERSION" ;;
    liqoctl) echo "liqoctl $LIQOCTL_VERSION" ;;
    kubectl) echo "kubectl $KUBECTL_VERSION" ;;
  esac
}

for tool in $tools; do
  case "$tool" in
    kind) stage_kind ;;
    nerdctl) stage_nerdctl ;;
    liqoctl) stage_liqoctl ;;
    kubectl) stage_kubectl ;;
  esac
done
if [ "$refused" = 1 ]; then
  note "nothing was changed: fix the release files named above in $from and run again"
  exit 3
fi

# state SRC TARGET: "ok" when TARGET is what SRC installs (same bytes and mode, or the same symlink),
# "missing" when nothing is there, else "different".
state() {
  local src="$1" target="$2"
  if [ -L "$src" ]; then
    if [ -L "$target" ] && [ "$(readlink "$target")" = "$(readlink "$src")" ]; then echo ok; return; fi
  elif [ -f "$target" ] && [ ! -L "$target" ] && [ "$(stat -c %a "$target")" = "$(stat -c %a "$src")" ] \
      && cmp -s "$src" "$target"; then
    echo ok; return
  fi
  if [ -e "$target" ] || [ -L "$target" ]; then echo different; else echo missing; fi
}

# put SRC TARGET: install SRC at TARGET through a temporary name and a rename, so a running program or a
# half-copied file is never seen at TARGET.
put() {
  local src="$1" target="$2" tmp="$2.ksi-tmp"
  mkdir -p "$(dirname "$target")" || return 1
  rm -rf "$tmp" || return 1
  pending="$tmp"
  if [ -L "$src" ]; then
    ln -s "$(readlink "$src")" "$tmp" || return 1
  else
    cp --preserve=mode "$src" "$tmp" || { rm -f "$tmp"; return 1; }
  fi
  mv -fT "$tmp" "$target" || { rm -f "$tmp"; return 1; }
  pending=""
}

missing=0
different=0
changed=0
failed=0
for tool in $tools; do
  in_place=0
  while IFS= read -r rel; do
    src="$work/$tool/$rel"
    shown="$prefix/$rel"
    case "$(state "$src" "$dest/$rel")" in
      ok) in_place=$((in_place + 1)); continue ;;
      missing) what=missing; missing=$((missing + 1)) ;;
      *) what=different; different=$((different + 1)) ;;
    esac
    if [ "$apply" = 0 ]; then
      note "$(label "$tool"): $what $shown"
    elif put "$src" "$dest/$rel"; then
      note "$(label "$tool"): installed $shown (was $what)"
      changed=$((changed + 1))
    else
      note "$(label "$tool"): FAILED to install $shown"
      failed=1
    fi
  done < <(cd "$work/$tool" && find . -mindepth 1 \( -type f -o -type l \) -printf '%P\n' | LC_ALL=C sort)
  if [ "$in_place" -gt 0 ]; then
    note "$(label "$tool"): $in_place file(s) in place under $prefix"
  fi
done

where="$prefix${root:+ in $root}"
if [ "$failed" = 1 ]; then
  note "installing failed for the files named above under $where"
  exit 1
fi
if [ "$apply" = 1 ]; then
  if [ "$changed" = 0 ]; then note "everything is in place under $where: nothing changed"; else note "installed $changed file(s) under $where"; fi
  exit 0
fi
if [ $((missing + different)) = 0 ]; then
  note "everything is in place under $where"
  exit 0
fi
note "$missing file(s) missing and $different different under $where: install them with --apply"
exit 1

#!/usr/bin/env bash
# Prepares a Debian 12 host for rcri, as root. Idempotent.
#   setup-host.sh run    what `rcri serve` needs: the OCI runtimes
#   setup-host.sh test   plus what the tests need
set -euo pipefail

mode=${1:-run}
run_packages=(runc crun libc6-dev)
test_packages=(runc crun libc6-dev containernetworking-plugins iptables docker-registry busybox-static zstd iproute2 util-linux procps libseccomp-dev pkg-config)

die() { echo "setup-host: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run me as root (apt-get and the tests need it)"
command -v apt-get >/dev/null || die "this set-up is written for Debian 12 (apt-get not found)"

case "$mode" in
  run) packages=("${run_packages[@]}") ;;
  test) packages=("${test_packages[@]}") ;;
  *) die "usage: $0 run|test" ;;
esac

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup-host: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# runsc (gVisor) for the RuntimeClass tests comes from bookworm-backports,
# reached through the Debian mirror this host already uses.
if [ "$mode" = test ] && ! command -v runsc >/dev/null; then
  mirror=$( (grep -rhoE 'https?://[^ ]+/debian/?$' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null || true) | head -n1)
  mirror=${mirror:-$( (grep -rhoE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null || true) | head -n1 | tr -d ' ')}
  [ -n "$mirror" ] || die "cannot find this host's Debian mirror to add bookworm-backports (for runsc)"
  echo "deb ${mirror%/} bookworm-backports main" > /etc/apt/sources.list.d/rcri-backports.list
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports runsc >/dev/null
fi

# rcri is built with the host's Rust toolchain (edition 2024 needs Rust 1.85 or later).
if ! command -v cargo >/dev/null; then
  [ -x "$HOME/.cargo/bin/cargo" ] || die "cargo not found: install Rust 1.89 or later (e.g. with rustup) first"
fi

# youki for the handler tests: built from crates.io (Debian has no package).
# The default features lack cgroup v1, which these hosts use (every container
# would stop at once), so v1, v2 and seccomp are asked for; pinned to the
# version the tests were written against. About 3 minutes.
if [ "$mode" = test ] && ! youki --version >/dev/null 2>&1; then
  cargo=$(command -v cargo || echo "$HOME/.cargo/bin/cargo")
  echo "setup-host: building youki with cargo install (a few minutes)"
  "$cargo" install youki --version 0.7.0 --locked --features v1,v2,seccomp --root /usr/local
  youki --version >/dev/null || die "youki was installed but does not run"
fi

# crun refuses cgroup v1 "hybrid" hosts whose cgroup2 mount still owns a
# controller (on these machines: hugetlb). Give each such controller its own
# v1 hierarchy, which empties cgroup2's list. Pure v1 or v2 hosts are untouched.
unified=/sys/fs/cgroup/unified
if [ -f "$unified/cgroup.controllers" ]; then
  for controller in $(cat "$unified/cgroup.controllers"); do
    target=/sys/fs/cgroup/$controller
    mountpoint -q "$target" 2>/dev/null && continue
    mkdir -p "$target"
    if mount -t cgroup -o "$controller" cgroup "$target"; then
      echo "setup-host: moved cgroup controller $controller from cgroup2 to a v1 hierarchy (for crun)"
    else
      echo "setup-host: warning: cannot mount $controller as cgroup v1; crun may refuse to run" >&2
    fi
  done
fi
echo "setup-host: ready ($mode)"

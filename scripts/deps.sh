#!/usr/bin/env bash
# Installs what the tests and benchmarks need on a Debian machine: the real
# upstream registry (docker-registry), the real clients (containerd, skopeo;
# curl, a client the benchmark measures blob GETs with, and perf, which
# profiles gatehouse's cold GET in the benchmark)
# and the peers the benchmark compares against (nginx), headless
# Chromium for the web console's browser test, and busybox (the shell the
# node-hosts DaemonSet's script runs under, run by deploy's tests), and the
# shared-storage engines the replica tests run against: PostgreSQL (Debian)
# and versitygw (an S3 server, built once from its pinned Go module).
# Idempotent: what is already present is not touched. Needs root to install
# (CI runs as root).
set -euo pipefail

pkgs=(docker-registry containerd skopeo nginx-light apache2-utils prometheus chromium busybox postgresql curl linux-perf)
need=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "deps.sh: missing packages ${need[*]}; run as root to install them" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  # Keep the packages' own services from starting: tests start their own
  # instances on loopback ports they pick.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get update -qq >/dev/null 2>&1 || apt-get update
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# versitygw: an S3-compatible server over a POSIX directory, pinned. Built once
# into /usr/local/bin; a cold build takes a few minutes, later runs skip it.
VERSITYGW_VERSION=v1.8.0
vgw=/usr/local/bin/versitygw
if ! { [ -x "$vgw" ] && [ "$(cat "$vgw.version" 2>/dev/null)" = "$VERSITYGW_VERSION" ]; }; then
  if [ "$(id -u)" != 0 ]; then
    echo "deps.sh: versitygw $VERSITYGW_VERSION missing; run as root to install it" >&2
    exit 1
  fi
  gobin=$(mktemp -d)
  GOBIN="$gobin" GOFLAGS=-mod=mod go install "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION"
  install -m 0755 "$gobin/versitygw" "$vgw"
  echo "$VERSITYGW_VERSION" > "$vgw.version"
  rm -rf "$gobin"
fi

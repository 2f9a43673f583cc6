#!/usr/bin/env bash
# Installs what the tests and benchmarks need on a Debian machine: the real
# upstream registry (docker-registry), the real clients (containerd, skopeo)
# and the peers the benchmark compares against (nginx), headless
# Chromium for the web console's browser test, and busybox (the shell the
# node-hosts DaemonSet's script runs under, run by deploy's tests). Idempotent: packages
# already present are not touched. Needs root (CI runs as root).
set -euo pipefail

pkgs=(docker-registry containerd skopeo nginx-light apache2-utils prometheus chromium busybox)
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

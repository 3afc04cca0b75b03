#!/usr/bin/env bash
# Installs the Debian packages and starts the local services that the full test suite uses.
# Safe to run again: it installs only what is missing and starts only what is down.
set -euo pipefail

need_pkgs=()
# Packages the suite needs, by the command that proves each is present.
declare -A PKG_FOR_CMD=(
  [psql]=postgresql-client
  [promtool]=prometheus
  # the dashboard's browser tests (Playwright drives Debian's chromium; no browser download)
  [chromium]="chromium fonts-liberation"
  # deploy: daemonless image builds and runs, the debootstrap base image, unit verification
  [buildah]=buildah
  [podman]=podman
  [runc]=runc
  [debootstrap]=debootstrap
  # `mlharbor build --push`: the CNCF distribution registry, started by the test itself
  [docker-registry]=docker-registry
  [systemd-analyze]=systemd
  # serving replicas behind a real load balancer (health checks on /readyz, retries)
  [haproxy]=haproxy
  [nginx]=nginx-light
)
for cmd in "${!PKG_FOR_CMD[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || need_pkgs+=("${PKG_FOR_CMD[$cmd]}")
done
if [ "${#need_pkgs[@]}" -gt 0 ] && [ "$(id -u)" = 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2068 # an entry may name several packages
  apt-get install -y -qq --no-install-recommends ${need_pkgs[@]}
fi

# PostgreSQL on 127.0.0.1:5432, started if it is installed but down.
if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  if [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  fi
fi

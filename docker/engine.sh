#!/usr/bin/env bash
# Make sure a Docker engine and docker-compose run on this machine (Debian), idempotently.
# Installs docker.io, docker-compose, debootstrap and docker-registry (a local registry for
# push tests) when missing, starts dockerd in the
# background when no engine answers, and waits for it. Needs root (as CI and these machines).
set -euo pipefail

packages=(docker.io docker-compose debootstrap docker-registry)
if ! command -v dockerd >/dev/null || ! command -v docker-compose >/dev/null || ! command -v debootstrap >/dev/null \
   || ! command -v docker-registry >/dev/null; then
  echo "installing ${packages[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
fi

if docker info >/dev/null 2>&1; then
  exit 0
fi
echo "starting dockerd (log: /var/log/dockerd.log)"
nohup dockerd >/var/log/dockerd.log 2>&1 &
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    echo "docker engine $(docker version --format '{{.Server.Version}}') is up"
    exit 0
  fi
  sleep 1
done
echo "error: dockerd did not come up within 60 s; see /var/log/dockerd.log" >&2
tail -20 /var/log/dockerd.log >&2
exit 1

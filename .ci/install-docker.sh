#!/usr/bin/env bash
# Install and start a Docker engine with the Compose v2 and buildx plugins on a Debian host (CI).
# Debian's docker.io gives the engine; Compose v2 and buildx come from Debian trixie's packages,
# fetched with a separate sources list that reuses this machine's Debian mirror, unpacked, and put
# in the CLI plugins folder. Idempotent: does nothing that is already done.
set -euo pipefail

log() { echo "install-docker: $*"; }

if ! command -v dockerd >/dev/null 2>&1; then
  log "installing docker.io"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io iptables >/dev/null
fi

plugins=/usr/local/lib/docker/cli-plugins
if [[ ! -x "$plugins/docker-compose" || ! -x "$plugins/docker-buildx" ]]; then
  log "fetching docker-compose and docker-buildx from Debian trixie"
  uri="$(grep -hoE '^(URIs:|deb) *https?://[^ ]+/debian/?' /etc/apt/sources.list.d/* /etc/apt/sources.list 2>/dev/null \
        | grep -oE 'https?://[^ ]+' | head -n 1 || true)"
  uri="${uri:-http://deb.debian.org/debian}"
  work="$(mktemp -d)"
  mkdir -p "$work/lists" "$work/debs"
  printf 'deb %s trixie main\n' "$uri" >"$work/trixie.list"
  opts=(-o "Dir::Etc::SourceList=$work/trixie.list" -o "Dir::Etc::SourceParts=-" -o "Dir::State::Lists=$work/lists"
        -o "APT::Get::List-Cleanup=0")
  apt-get "${opts[@]}" update -qq
  (cd "$work/debs" && apt-get "${opts[@]}" download docker-compose docker-buildx >/dev/null)
  mkdir -p "$plugins" "$work/x"
  for deb in "$work"/debs/*.deb; do dpkg -x "$deb" "$work/x"; done
  for name in docker-compose docker-buildx; do
    found="$(find "$work/x" -type f -name "$name" -perm -u+x | head -n 1)"
    [[ -n "$found" ]] || { log "no $name binary in the trixie package"; exit 1; }
    install -m 0755 "$found" "$plugins/$name"
  done
  rm -rf "$work"
fi

if ! docker info >/dev/null 2>&1; then
  log "starting dockerd"
  mkdir -p /var/log
  nohup dockerd --storage-driver=overlay2 >/var/log/dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || { log "dockerd did not start; see /var/log/dockerd.log"; tail -n 20 /var/log/dockerd.log; exit 1; }
fi
log "$(docker version --format 'engine {{.Server.Version}}'), $(docker compose version --short | sed 's/^/compose /'), $(docker buildx version | cut -d' ' -f1-2)"

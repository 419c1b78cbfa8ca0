#!/usr/bin/env bash
# Make a Debian base image without a registry: debootstrap a minimal root filesystem from this machine's
# Debian mirror and `docker import` it. Usage: make-base-image.sh SUITE TAG  (e.g. bookworm local/debian:bookworm)
set -euo pipefail
suite="${1:?usage: make-base-image.sh SUITE TAG}"
tag="${2:?usage: make-base-image.sh SUITE TAG}"

if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "make-base-image: $tag exists"
  exit 0
fi
command -v debootstrap >/dev/null 2>&1 || {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
}
uri="$(grep -hoE '^(URIs:|deb) *https?://[^ ]+/debian/?' /etc/apt/sources.list.d/* /etc/apt/sources.list 2>/dev/null \
      | grep -oE 'https?://[^ ]+' | head -n 1 || true)"
uri="${uri:-http://deb.debian.org/debian}"
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
echo "make-base-image: debootstrap $suite from $uri"
debootstrap --variant=minbase "$suite" "$root" "$uri" >/dev/null
printf 'deb %s %s main\n' "$uri" "$suite" >"$root/etc/apt/sources.list"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
checkout="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"  # purge.sh --everything removes only its own
tar -C "$root" -c . | docker import --change "LABEL template.checkout=$checkout" - "$tag" >/dev/null
echo "make-base-image: $tag ready"

#!/usr/bin/env bash
# Makes the local base image `localhost/bitloop-base:bookworm` (Debian bookworm minbase with
# Python 3.11) for machines that cannot pull python:3.11-slim-bookworm. Needs root and debootstrap.
set -euo pipefail
name=${1:-localhost/bitloop-base:bookworm}
if podman image exists "$name"; then
  echo "$name exists"
  exit 0
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" \
  http://deb.debian.org/debian >/dev/null
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*
tar -C "$root" -c . | podman import - "$name" >/dev/null
echo "built $name"

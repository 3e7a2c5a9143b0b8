#!/usr/bin/env bash
# Build every bitloop image (bitloop-api, -pipeline, -mlflow, -datasource) with docker or podman.
#   ops/docker/build.sh [tag]      BASE_IMAGE=... to change the base; ENGINE=podman|docker to choose.
# A CA bundle in SSL_CERT_FILE is passed as a build secret (for networks that intercept TLS);
# it never ends up in an image.
set -euo pipefail
cd "$(dirname "$0")/../.."
tag=${1:-latest}
engine=${ENGINE:-$(command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 && echo docker || echo podman)}
args=(--build-arg "BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim-bookworm}" --build-arg SOURCE_DATE_EPOCH=0)
if [[ $engine == podman ]]; then
  args+=(--format docker --timestamp 0)
fi
if [[ -n ${SSL_CERT_FILE:-} && -f $SSL_CERT_FILE ]]; then
  args+=(--secret "id=ca,src=$SSL_CERT_FILE")
fi
for target in api pipeline mlflow datasource; do
  echo "building bitloop-$target:$tag with $engine"
  "$engine" build "${args[@]}" -f ops/docker/Dockerfile --target "$target" -t "bitloop-$target:$tag" .
done

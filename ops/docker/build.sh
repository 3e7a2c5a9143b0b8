#!/usr/bin/env bash
# Build every bitloop image (bitloop-api, -pipeline, -mlflow, -datasource) and load it into
# docker or podman under the names docker-compose.yml uses.
#   ops/docker/build.sh [tag]
#   BUILDER=nix         build with the flake's dockerTools.streamLayeredImage packages
#   BUILDER=dockerfile  build ops/docker/Dockerfile (BASE_IMAGE=... to change the base)
#   BUILDER=auto        (default) nix when the flake evaluates here, else the Dockerfile
#   ENGINE=podman|docker  the engine to build with or load into (default: docker when it answers)
# A CA bundle in SSL_CERT_FILE is passed to Dockerfile builds as a build secret (for networks
# that intercept TLS); it never ends up in an image.
set -euo pipefail
cd "$(dirname "$0")/../.."
tag=${1:-latest}
targets=(api pipeline mlflow datasource)
engine=${ENGINE:-$(command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 && echo docker || echo podman)}
nix=(nix --extra-experimental-features "nix-command flakes")

flake_evaluates() {
  command -v nix >/dev/null 2>&1 &&
    "${nix[@]}" eval --raw ".#packages.$("${nix[@]}" eval --impure --raw --expr builtins.currentSystem).api-image.name" \
      >/dev/null 2>&1
}

builder=${BUILDER:-auto}
if [[ $builder == auto ]]; then
  if [[ -z ${BASE_IMAGE:-} ]] && flake_evaluates; then
    builder=nix
  else
    builder=dockerfile
    [[ -n ${BASE_IMAGE:-} ]] || echo "the flake does not evaluate here (no nix, or nixpkgs cannot be fetched); building ops/docker/Dockerfile"
  fi
fi

case $builder in
  nix)
    system=$("${nix[@]}" eval --impure --raw --expr builtins.currentSystem)
    for target in "${targets[@]}"; do
      echo "building bitloop-$target:$tag with nix (packages.$system.$target-image) into $engine"
      stream=$("${nix[@]}" build --no-link --print-out-paths ".#packages.$system.$target-image")
      "$stream" | "$engine" load
      if [[ $tag != latest ]]; then
        "$engine" tag "bitloop-$target:latest" "bitloop-$target:$tag"
      fi
    done
    ;;
  dockerfile)
    args=(--build-arg "BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim-bookworm}" --build-arg SOURCE_DATE_EPOCH=0)
    if [[ $engine == podman ]]; then
      args+=(--format docker --timestamp 0)
    fi
    if [[ -n ${SSL_CERT_FILE:-} && -f $SSL_CERT_FILE ]]; then
      args+=(--secret "id=ca,src=$SSL_CERT_FILE")
    fi
    for target in "${targets[@]}"; do
      echo "building bitloop-$target:$tag from ops/docker/Dockerfile with $engine"
      "$engine" build "${args[@]}" -f ops/docker/Dockerfile --target "$target" -t "bitloop-$target:$tag" .
    done
    ;;
  *)
    echo "BUILDER must be auto, nix or dockerfile, not '$builder'" >&2
    exit 2
    ;;
esac

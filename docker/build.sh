#!/usr/bin/env bash
# Build the training and serving images from the local base image and the wheelhouse
# (offline), then print their sizes. Environment knobs:
#   PREFIX (byoc-classifier), TAG (latest), BASE_IMAGE (byoc-base:bookworm, made here by
#   debootstrap; any image with python3.11 + venv works, e.g. python:3.11-slim-bookworm).
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${PREFIX:-byoc-classifier}
tag=${TAG:-latest}
base=${BASE_IMAGE:-byoc-base:bookworm}
targets=${TARGETS:-serving-cpu serving-gpu training}  # the Dockerfile's order

docker/engine.sh
if [[ "$base" == byoc-base:* ]]; then docker/base-image.sh "$base"; fi
docker/wheelhouse.sh build/wheelhouse

# Serve the wheelhouse on loopback: copying 3 GB into the build context would stay in a layer.
# The URL is a build argument, hence part of the layer cache key: keep the port fixed.
port=${WHEELHOUSE_PORT:-38765}
if ! python3 -c "import socket, sys; socket.socket().bind(('127.0.0.1', $port))" 2>/dev/null; then
  echo "port $port is busy: using another one (the dependency layer will be rebuilt)"
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
python3 -m http.server --bind 127.0.0.1 --directory build/wheelhouse "$port" >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null' EXIT

for target in $targets; do
  started=$(date +%s)
  DOCKER_BUILDKIT=0 docker build -q --network host -f docker/Dockerfile --target "$target" \
    --build-arg BASE_IMAGE="$base" \
    --build-arg PIP_FIND_LINKS="http://127.0.0.1:$port/" --build-arg PIP_NO_INDEX=1 \
    -t "$prefix-$target:$tag" . >/dev/null
  echo "built $prefix-$target:$tag in $(( $(date +%s) - started )) s"
done
docker images --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep "^$prefix-" || true

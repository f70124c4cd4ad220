#!/usr/bin/env bash
# The reference `mcp-server-fetch` (Python) as an image, offline: the time image (time-image.sh)
# already holds the test peers' whole venv, fetch included; only the entrypoint differs.
#   usage: fetch-image.sh BASE-TAG TAG
set -euo pipefail
BASE=$1
TAG=$2
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cat > "$ctx/Dockerfile" <<DOCKERFILE
FROM $BASE
ENTRYPOINT ["/opt/py/bin/python3", "-m", "mcp_server_fetch"]
DOCKERFILE
DOCKER_BUILDKIT=0 docker build --quiet -t "$TAG" "$ctx" >/dev/null

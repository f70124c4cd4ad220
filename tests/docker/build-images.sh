#!/usr/bin/env bash
# Builds the Docker images the tests use, offline (no registry is reachable, nothing is pulled).
#   portcullis/fixture:test   FROM scratch + our static fixture MCP server
#   portcullis/mcp-time:test  FROM scratch + Python + the reference `mcp-server-time` from the
#                             test peers' venv (only when the peers are installed: `make peers`)
# Idempotent: each image is labelled with a hash of what went in and rebuilt only when it changed.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
TAG=${PORTCULLIS_FIXTURE_IMAGE:-portcullis/fixture:test}
# A separate target dir: static flags would otherwise invalidate the shared debug cache.
STATIC_TARGET=${PORTCULLIS_STATIC_TARGET:-${CARGO_TARGET_DIR:-$ROOT/target}/static}
TRIPLE=x86_64-unknown-linux-gnu

log() { printf '[images] %s\n' "$*" >&2; }

log "building the static fixture server (target dir $STATIC_TARGET)"
RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$STATIC_TARGET" \
  cargo build --quiet --release --target "$TRIPLE" --bin portcullis-fixture-server
BIN=$STATIC_TARGET/$TRIPLE/release/portcullis-fixture-server
SUM=$(sha256sum "$BIN" | cut -d' ' -f1)

label_of() { docker image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true; }

if [ "$(label_of "$TAG" io.portcullis.fixture-sha256)" = "$SUM" ]; then
  log "$TAG is up to date"
else
  ctx=$(mktemp -d)
  cp "$BIN" "$ctx/portcullis-fixture-server"
  cp tests/docker/fixture.Dockerfile "$ctx/Dockerfile"
  log "docker build $TAG"
  DOCKER_BUILDKIT=0 docker build --quiet --label "io.portcullis.fixture-sha256=$SUM" -t "$TAG" "$ctx" >/dev/null
  rm -rf "$ctx"
  # The previous build of the tag is now dangling; remove it so repeated builds leave nothing.
  docker image prune --force --filter "label=io.portcullis.fixture-sha256" >/dev/null || true
  log "built $TAG"
fi

TIME_TAG=${PORTCULLIS_TIME_IMAGE:-portcullis/mcp-time:test}
VENV=${PORTCULLIS_PEERS:-$ROOT/.peers}/venv
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import mcp_server_time' 2>/dev/null; then
  TSUM=$( { "$VENV/bin/python" -c 'import sys, importlib.metadata as m; print(sys.version, m.version("mcp-server-time"), m.version("mcp"), [d.metadata["Name"] + d.version for d in m.distributions() if d.metadata["Name"] == "mcp-server-fetch"])'; sha256sum tests/docker/time-image.sh; } | sha256sum | cut -d' ' -f1)
  if [ "$(label_of "$TIME_TAG" io.portcullis.time-sha256)" = "$TSUM" ]; then
    log "$TIME_TAG is up to date"
  else
    log "assembling $TIME_TAG from $VENV"
    bash tests/docker/time-image.sh "$VENV" "$TIME_TAG" "$TSUM"
    docker image prune --force --filter "label=io.portcullis.time-sha256" >/dev/null || true
    log "built $TIME_TAG"
  fi
else
  log "skipping $TIME_TAG: no test peers venv with mcp-server-time at $VENV (run \`make peers\`)"
fi

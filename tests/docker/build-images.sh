#!/usr/bin/env bash
# Builds the Docker images the tests use, offline (no registry is reachable, nothing is pulled).
#   portcullis/fixture:test   FROM scratch + our static fixture MCP server
# Idempotent: the image is labelled with the binary's SHA-256 and rebuilt only when it changed.
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

have=$(docker image inspect --format '{{ index .Config.Labels "io.portcullis.fixture-sha256" }}' "$TAG" 2>/dev/null || true)
if [ "$have" = "$SUM" ]; then
  log "$TAG is up to date"
  exit 0
fi
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$BIN" "$ctx/portcullis-fixture-server"
cp tests/docker/fixture.Dockerfile "$ctx/Dockerfile"
log "docker build $TAG"
DOCKER_BUILDKIT=0 docker build --quiet --label "io.portcullis.fixture-sha256=$SUM" -t "$TAG" "$ctx" >/dev/null
# The previous build of the tag is now dangling; remove it so repeated builds leave nothing behind.
docker image prune --force --filter "label=io.portcullis.fixture-sha256" >/dev/null || true
log "built $TAG"

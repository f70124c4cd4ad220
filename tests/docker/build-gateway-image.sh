#!/usr/bin/env bash
# Builds the gateway image OFFLINE (no registry, nothing pulled): the portcullis binary built on
# this host, the shared libraries `ldd` says it needs, a minimal /etc and the CA bundle, copied
# into a FROM scratch image (tests/docker/gateway.Dockerfile). Same entrypoint, user, ports and
# healthcheck as the multi-stage Dockerfile at the repository root, which needs a registry.
#   usage: build-gateway-image.sh [TAG]            (default portcullis/gateway:local)
#   PORTCULLIS_GATEWAY_BIN=PATH  package this binary instead of building a release one
#                                (the compose test packages the binary under test)
# Idempotent: the image is labelled with a hash of what went in and rebuilt only when it changed.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
TAG=${1:-${PORTCULLIS_IMAGE:-portcullis/gateway:local}}

log() { printf '[gateway-image] %s\n' "$*" >&2; }

for tool in docker ldd strip sha256sum; do
  command -v "$tool" >/dev/null || { log "missing tool: $tool (run \`make deps\`)"; exit 1; }
done

BIN=${PORTCULLIS_GATEWAY_BIN:-}
if [ -z "$BIN" ]; then
  log "cargo build --release --bin portcullis"
  cargo build --quiet --release --locked --bin portcullis
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/portcullis
fi
[ -x "$BIN" ] || { log "no executable at $BIN"; exit 1; }

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root=$ctx/rootfs
mkdir -p "$root/usr/local/bin" "$root/etc/portcullis" "$root/etc/ssl/certs" \
  "$root/var/lib/portcullis/audit" "$root/var/lib/portcullis/state" "$root/tmp"
# Debug info is most of a debug build's size and nothing the container needs.
strip -o "$root/usr/local/bin/portcullis" "$BIN"

# Every shared library the binary links (libnftnl, libmnl, libc, ...) and the dynamic loader, at
# the paths the binary looks for them.
ldd "$BIN" | awk '/=> \//{print $3} /^[ \t]*\/lib/{print $1}' | sort -u | while read -r lib; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done

# Remote servers and TLS sinks verify against the system store (rustls-native-certs).
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
else
  log "warning: /etc/ssl/certs/ca-certificates.crt missing; remote https servers will need a ca_file"
fi
cat > "$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin
EOF
cat > "$root/etc/group" <<'EOF'
root:x:0:
nonroot:x:65532:
EOF
printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"
cp policy/compose.toml "$root/etc/portcullis/policy.toml"
chmod 0755 "$root/usr/local/bin/portcullis"
chmod 0644 "$root/etc/passwd" "$root/etc/group" "$root/etc/nsswitch.conf" "$root/etc/portcullis/policy.toml"
chmod 1777 "$root/tmp"
# The audit and state (OAuth token cache) directories belong to the image's non-root user, with
# group 0 allowed in as well: a compose deployment runs the gateway as uid 0 with no
# capabilities (no DAC_OVERRIDE), which gets in through the group bits. Named volumes copy this
# ownership when they are first used.
chmod 0770 "$root/var/lib/portcullis/audit" "$root/var/lib/portcullis/state"
# One tar with fixed owners, order and times: the image (ADD unpacks it with those owners) and
# its content hash depend only on what goes in.
tar_() { tar -C "$root" --sort=name --mtime=@0 --numeric-owner "$@"; }
tar_ --owner=0 --group=0 --exclude=./var/lib/portcullis/audit --exclude=./var/lib/portcullis/state \
  -cf "$ctx/rootfs.tar" .
tar_ --owner=65532 --group=0 -rf "$ctx/rootfs.tar" ./var/lib/portcullis/audit ./var/lib/portcullis/state
rm -rf "$root"
cp tests/docker/gateway.Dockerfile "$ctx/Dockerfile"

SUM=$(cat "$ctx/rootfs.tar" "$ctx/Dockerfile" | sha256sum | cut -d' ' -f1)
current=$(docker image inspect --format '{{ index .Config.Labels "io.portcullis.gateway-sha256" }}' "$TAG" 2>/dev/null || true)
if [ "$current" = "$SUM" ]; then
  log "$TAG is up to date"
  exit 0
fi
log "docker build $TAG (FROM scratch, offline)"
# The legacy builder (no buildx here) prints a deprecation notice on every run: shown only on failure.
if ! DOCKER_BUILDKIT=0 docker build --quiet --label "io.portcullis.gateway-sha256=$SUM" -t "$TAG" "$ctx" >/dev/null 2>"$ctx/build.log"; then
  cat "$ctx/build.log" >&2
  exit 1
fi
# The previous build of the tag is now dangling; remove it so repeated builds leave nothing.
docker image prune --force --filter "label=io.portcullis.gateway-sha256" >/dev/null || true
log "built $TAG ($(docker image inspect --format '{{.Size}}' "$TAG" | awk '{printf "%.1f MB", $1/1e6}'))"

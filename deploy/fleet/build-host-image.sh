#!/usr/bin/env bash
# Builds an image OFFLINE from a program installed on this host (redis-server, haproxy): the
# binary, the shared libraries `ldd` says it needs and a minimal /etc, FROM scratch, as
# tests/docker/build-gateway-image.sh does for the gateway. No registry is needed.
#   usage: build-host-image.sh BINARY TAG UID
set -euo pipefail
BIN=$1 TAG=$2 RUN_UID=${3:-65532}
[ -x "$BIN" ] || { echo "no executable at $BIN (apt-get install -y haproxy redis-server)" >&2; exit 1; }
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root=$ctx/rootfs
mkdir -p "$root/usr/local/bin" "$root/etc" "$root/tmp" "$root/data"
cp -L "$BIN" "$root/usr/local/bin/$(basename "$BIN")"
ldd "$BIN" | awk '/=> \//{print $3} /^[ \t]*\/lib/{print $1}' | sort -u | while read -r lib; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
printf 'root:x:0:0:root:/root:/sbin/nologin\nsvc:x:%s:%s:svc:/data:/sbin/nologin\n' "$RUN_UID" "$RUN_UID" > "$root/etc/passwd"
printf 'root:x:0:\nsvc:x:%s:\n' "$RUN_UID" > "$root/etc/group"
printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"
chmod 1777 "$root/tmp"
tar -C "$root" --sort=name --mtime=@0 --numeric-owner --owner=0 --group=0 --exclude=./data -cf "$ctx/rootfs.tar" .
tar -C "$root" --sort=name --mtime=@0 --numeric-owner --owner="$RUN_UID" --group="$RUN_UID" -rf "$ctx/rootfs.tar" ./data
cat > "$ctx/Dockerfile" <<DOCKERFILE
FROM scratch
ADD rootfs.tar /
USER $RUN_UID:$RUN_UID
WORKDIR /data
ENTRYPOINT ["/usr/local/bin/$(basename "$BIN")"]
DOCKERFILE
DOCKER_BUILDKIT=0 docker build --quiet -t "$TAG" "$ctx" >/dev/null
echo "built $TAG"

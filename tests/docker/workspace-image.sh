#!/usr/bin/env bash
# Assembles the devcontainer kit's workspace image offline (no registry): a FROM scratch image
# with the host's Node, git, a POSIX shell, nft and iptables (to show they fail inside), the real
# Claude Code CLI from the test peers (.peers/node, npm @anthropic-ai/claude-code), exactly the
# shared libraries they link, a non-root user `node` (uid 1000) and no sudo. The managed Claude
# Code files are the kit's own (deploy/devcontainer), root-owned, read-only to `node`.
# deploy/devcontainer/workspace.Dockerfile is the same image for a machine with a registry.
#   usage: workspace-image.sh TAG
set -euo pipefail
TAG=$1
REPO=$(cd "$(dirname "$0")/../.." && pwd)
CLAUDE=$(readlink -f "$REPO/.peers/node/node_modules/@anthropic-ai/claude-code/bin/claude.exe")

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root=$ctx/rootfs
mkdir -p "$root/usr/local/bin" "$root/bin" "$root/usr/sbin" "$root/etc/claude-code" \
  "$root/tmp" "$root/home/node" "$root/workspace"
cp -L "$(command -v node)" "$root/usr/local/bin/node"
cp -L "$(command -v git)" "$root/usr/local/bin/git"
cp -L /usr/bin/dash "$root/bin/sh"
cp -L /usr/bin/sleep "$root/bin/sleep"
cp -L /usr/bin/cat "$root/bin/cat"
cp -L /usr/sbin/nft "$root/usr/sbin/nft"
cp -L /usr/sbin/xtables-nft-multi "$root/usr/sbin/xtables-nft-multi"
ln -s xtables-nft-multi "$root/usr/sbin/iptables"
cp "$CLAUDE" "$root/usr/local/bin/claude"
cp "$REPO/deploy/devcontainer/managed-mcp.json" "$REPO/deploy/devcontainer/managed-settings.json" \
  "$root/etc/claude-code/"
for bin in "$root/usr/local/bin/node" "$root/usr/local/bin/git" "$root/bin/sh" \
  "$root/usr/sbin/nft" "$root/usr/sbin/xtables-nft-multi" "$root/usr/local/bin/claude"; do
  ldd "$bin" 2>/dev/null || true
done | awk '/=> \//{print $3} /^[ \t]*\/lib/{print $1}' | sort -u | while read -r lib; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
chmod 1777 "$root/tmp"
chmod 0644 "$root"/etc/claude-code/*
mkdir -p "$ctx/owned"
printf 'root:x:0:0:root:/root:/bin/sh\nnode:x:1000:1000:node:/home/node:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\nnode:x:1000:\n' >"$root/etc/group"
cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM scratch
COPY rootfs/ /
COPY --chown=1000:1000 owned/ /home/node/
COPY --chown=1000:1000 owned/ /workspace/
ENV PATH=/usr/local/bin:/usr/sbin:/bin HOME=/home/node
USER node
WORKDIR /workspace
CMD ["sleep", "infinity"]
DOCKERFILE
DOCKER_BUILDKIT=0 docker build --quiet -t "$TAG" "$ctx" >/dev/null

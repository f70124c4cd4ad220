#!/usr/bin/env bash
# Assembles portcullis/mcp-time:test offline: a FROM scratch image holding the host's Python, the
# stdlib, the `mcp-server-time` package from the test peers' venv, exactly the shared libraries
# they link, and the zoneinfo database. A real third-party MCP server in our sandbox, no registry.
#   usage: time-image.sh VENV TAG [CONTENT-HASH]
set -euo pipefail
VENV=$1
TAG=$2
SUM=${3:-unknown}
PY=$(readlink -f "$VENV/bin/python")
PYHOME=$("$PY" -c 'import sys; print(sys.base_prefix)')
VER=$("$PY" -c 'import sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}")')
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root=$ctx/rootfs
mkdir -p "$root/opt/py/bin" "$root/opt/py/lib" "$root/opt/site" "$root/tmp" "$root/usr/share"
cp -L "$PY" "$root/opt/py/bin/python3"
# The stdlib without what a server never imports (tests, GUI, installers).
tar -C "$PYHOME/lib" --exclude="$VER/test" --exclude="$VER/site-packages" --exclude="$VER/idlelib" \
  --exclude="$VER/tkinter" --exclude="$VER/ensurepip" --exclude="$VER/lib2to3" -cf - "$VER" \
  | tar -C "$root/opt/py/lib" -xf -
cp -a "$SITE/." "$root/opt/site/"
cp -rL /usr/share/zoneinfo "$root/usr/share/zoneinfo"
# Every shared library the interpreter and the extension modules need, at its host path.
{
  echo "$PY"
  find "$root/opt" -name '*.so*' -type f
} | while read -r f; do ldd "$f" 2>/dev/null || true; done \
  | awk '/=> \//{print $3} /^[ \t]*\/lib/{print $1}' | sort -u | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
# libpython sits next to the interpreter in pyenv builds; the ldd pass above copied it to its
# host path, which is where the interpreter looks (RPATH).
cat > "$ctx/Dockerfile" <<DOCKERFILE
FROM scratch
COPY rootfs/ /
ENV PYTHONHOME=/opt/py PYTHONPATH=/opt/site PYTHONDONTWRITEBYTECODE=1 TZ=UTC
USER 65534:65534
ENTRYPOINT ["/opt/py/bin/python3", "-m", "mcp_server_time"]
DOCKERFILE
DOCKER_BUILDKIT=0 docker build --quiet --label "io.portcullis.time-sha256=$SUM" -t "$TAG" "$ctx" >/dev/null

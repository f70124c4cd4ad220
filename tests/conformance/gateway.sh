#!/usr/bin/env bash
# Runs the official MCP conformance suite (server mode) against the gateway, with our fixture
# server behind it in passthrough naming. Starts and stops the gateway itself.
set -euo pipefail
cd "$(dirname "$0")/../.."
TARGET=${CARGO_TARGET_DIR:-target}
BIN=${PORTCULLIS_BIN:-$TARGET/debug/portcullis}
FIXTURE=${FIXTURE_BIN:-$TARGET/debug/portcullis-fixture-server}
[ -x "$BIN" ] && [ -x "$FIXTURE" ] || { echo "build first: cargo build --bins" >&2; exit 2; }
work=$(mktemp -d)
cleanup() {
  [ -n "${gw_pid:-}" ] && kill "$gw_pid" 2>/dev/null && wait "$gw_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
cat > "$work/policy.toml" <<TOML
[gateway]
listen = "127.0.0.1:0"
naming = "passthrough"
# Exercises SSE polling: POST streams close early and the client resumes them.
sse_poll_interval = "500ms"

[servers.fixture]
runtime = "process"
command = "$(realpath "$FIXTURE")"
# Longer than sse_poll_interval, so the stream really closes before the answer.
env = { FIXTURE_RECONNECT_DELAY_MS = "1500" }
TOML
"$BIN" serve --policy "$work/policy.toml" >"$work/out" 2>"$work/gateway.log" &
gw_pid=$!
url=""
for _ in $(seq 1 100); do
  url=$(sed -n 's/^Portcullis is listening on //p' "$work/out")
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { echo "gateway did not start:" >&2; cat "$work/gateway.log" >&2; exit 1; }
base=${url%/mcp}
for _ in $(seq 1 100); do
  curl -sf "$base/ready" >/dev/null && break
  sleep 0.1
done
echo "conformance: gateway at $url"
status=0
bash tests/conformance/run.sh "$url" || status=$?
if [ $status -ne 0 ]; then
  echo "---- gateway log (last 50 lines) ----"
  tail -n 50 "$work/gateway.log"
fi
exit $status

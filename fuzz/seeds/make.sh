#!/usr/bin/env bash
# Regenerates the generated seed corpora in fuzz/corpus/ from real sources; hand-written seeds
# (fuzz/corpus/*/seed-<words>) are kept. Loopback only. Needs `cargo build --bins` and the MCP
# peers (`make deps`).
#
#   http_request, mcp_message, sse_stream  the conformance suite's traffic through the gateway
#                                          (relay.py records it, split_traffic.py cuts it up)
#   audit_verify                           the audit log the gateway wrote during that run,
#                                          signed with the fuzzing key (src/fuzzing/audit.rs)
#   policy_toml                            policy/*.toml and the TOML examples of the READMEs
#   dns_query                              queries and upstream answers built with hickory-proto
#                                          (tests/fuzz_inputs.rs, write_dns_seeds)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
CORPUS=$ROOT/fuzz/corpus
PORT=${SEED_PORT:-18911}
work=$(mktemp -d)
cleanup() {
  [ -n "${relay:-}" ] && kill "$relay" 2>/dev/null
  [ -n "${gw:-}" ] && kill "$gw" 2>/dev/null && wait "$gw" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# Generated seeds are named by a 16-hex-digit hash prefix.
find "$CORPUS" -type f -regextype posix-extended -regex '.*/seed-[0-9a-f]{16}' -delete

# The seed of the fuzzing key, 0x42 x 32 (SEED_LOG_KEY): it protects nothing.
printf '42%.0s' $(seq 32) >"$work/fuzz.key"
cat >"$work/policy.toml" <<TOML
[gateway]
listen = "127.0.0.1:$PORT"
naming = "passthrough"
sse_poll_interval = "500ms"

[servers.fixture]
runtime = "process"
command = "$TARGET/debug/portcullis-fixture-server"
env = { FIXTURE_RECONNECT_DELAY_MS = "1500" }

[audit]
dir = "$work/audit"
signing_key = "$work/fuzz.key"
checkpoint_every = 7
max_segment_bytes = "4k"
record_arguments = true
TOML
"$TARGET/debug/portcullis" serve --policy "$work/policy.toml" >"$work/out" 2>"$work/gateway.log" &
gw=$!
python3 fuzz/seeds/relay.py $((PORT + 1)) "$PORT" "$work/traffic" &
relay=$!
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null && break
  sleep 0.1
done
CONFORMANCE_RESULTS=$work/results bash tests/conformance/run.sh "http://127.0.0.1:$((PORT + 1))/mcp"
kill "$relay"; relay=
kill "$gw"; wait "$gw" 2>/dev/null || true; gw=

python3 fuzz/seeds/split_traffic.py "$work/traffic" "$CORPUS"

# Whole-segment prefixes of the log are logs too: 1, 3 and all segments.
python3 - "$work/audit" "$CORPUS/audit_verify" <<'PY'
import glob, hashlib, os, sys
segs = [open(p, "rb").read() for p in sorted(glob.glob(os.path.join(sys.argv[1], "audit-*.jsonl")))]
os.makedirs(sys.argv[2], exist_ok=True)
for n in sorted({1, min(3, len(segs)), len(segs)}):
    data = b"\x1e".join(segs[:n])
    with open(os.path.join(sys.argv[2], "seed-" + hashlib.sha1(data).hexdigest()[:16]), "wb") as f:
        f.write(data)
PY

mkdir -p "$CORPUS/policy_toml"
python3 - "$CORPUS/policy_toml" policy/*.toml README.md policy/README.md <<'PY'
import hashlib, os, re, sys
out = sys.argv[1]
for path in sys.argv[2:]:
    text = open(path).read()
    docs = [text] if path.endswith(".toml") else re.findall(r"```toml\n(.*?)```", text, re.S)
    for doc in docs:
        with open(os.path.join(out, "seed-" + hashlib.sha1(doc.encode()).hexdigest()[:16]), "w") as f:
            f.write(doc)
PY

cargo test --test fuzz_inputs -- --ignored --exact write_dns_seeds >/dev/null
for d in "$CORPUS"/*/; do
  printf '%-16s %4d seeds\n' "$(basename "$d")" "$(find "$d" -name 'seed-*' | wc -l)"
done

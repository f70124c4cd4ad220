#!/usr/bin/env bash
# Runs fuzz targets for a bounded time each and fails if any of them crashed.
#
#   fuzz/run.sh [TARGET...]          every target in fuzz/Cargo.toml when none is named
#
# Env: FUZZ_SECONDS=300     time per target
#      FUZZ_JOBS=1          targets run at once (each is one libFuzzer process on one core)
#      FUZZ_SANITIZER=none  or address (AddressSanitizer; slower, needs the toolchain's ASan runtime)
#      FUZZ_TOOLCHAIN=         a rustup toolchain name (e.g. stable); default: the one cargo runs
#      FUZZ_LOG_DIR=        keep each target's libFuzzer output there (default: a temporary folder)
#
# cargo-fuzz passes unstable compiler flags (-Z..., --cfg fuzzing). RUSTC_BOOTSTRAP=1 lets the
# stable toolchain accept them, and without a sanitizer no nightly-only runtime is needed, so a
# machine with only stable Rust can fuzz. Crashes land in fuzz/artifacts/TARGET/; new corpus
# entries in fuzz/corpus/TARGET/ (ignored by git, next to the committed seed-* files).
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=${FUZZ_SECONDS:-300}
JOBS=${FUZZ_JOBS:-1}
SANITIZER=${FUZZ_SANITIZER:-none}
TOOLCHAIN=${FUZZ_TOOLCHAIN:-}
# A fresh machine may name its one toolchain by version only: no +toolchain unless asked.
tc=()
[ -n "$TOOLCHAIN" ] && tc=("+$TOOLCHAIN")
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || { echo "fuzz/run.sh: cargo-fuzz is missing: bash tests/setup/install-deps.sh fuzz" >&2; exit 2; }

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo "${tc[@]}" fuzz list)
fi
if [ -n "${FUZZ_LOG_DIR:-}" ]; then
  logs=$FUZZ_LOG_DIR
  mkdir -p "$logs"
  rm -f "$logs"/*.ok
else
  logs=$(mktemp -d)
  trap 'rm -rf "$logs"' EXIT
fi

echo "fuzz: building ${#targets[@]} target(s) with $(cargo "${tc[@]}" --version) (sanitizer: $SANITIZER)"
cargo "${tc[@]}" fuzz build -s "$SANITIZER" >"$logs/build" 2>&1 || { cat "$logs/build" >&2; exit 2; }

run_one() {
  local t=$1 dict=()
  [ -f "dict/$t.dict" ] && dict=("-dict=dict/$t.dict")
  mkdir -p "corpus/$t"
  # -timeout: one input may take 10 s at most (a hang is a finding too).
  cargo "${tc[@]}" fuzz run -s "$SANITIZER" "$t" "corpus/$t" -- \
    -max_total_time="$SECONDS_EACH" -timeout=10 -print_final_stats=1 "${dict[@]}" \
    >"$logs/$t" 2>&1
}

failed=()
running=0
for t in "${targets[@]}"; do
  if [ "$running" -ge "$JOBS" ]; then
    wait -n || true
    running=$((running - 1))
  fi
  (run_one "$t" && touch "$logs/$t.ok") &
  running=$((running + 1))
done
wait || true

printf '\n%-14s %8s %10s %8s %8s %8s %9s\n' target seconds runs exec/s cov ft corpus
for t in "${targets[@]}"; do
  done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$logs/$t" | tail -1 || true)
  [ -n "$done_line" ] || done_line=$(grep -E '^#[0-9]+' "$logs/$t" | tail -1 || true)
  field() { sed -nE "s#.*$1: ([0-9]+).*#\\1#p" <<<"$done_line"; }
  runs=$(sed -nE 's/^#([0-9]+).*/\1/p' <<<"$done_line")
  secs=$(sed -nE 's/^Done [0-9]+ runs in ([0-9]+) second.*/\1/p' "$logs/$t")
  corp=$(sed -nE 's/.*corp: ([0-9]+)\/.*/\1/p' <<<"$done_line")
  printf '%-14s %8s %10s %8s %8s %8s %9s\n' "$t" "${secs:--}" "${runs:--}" "$(field exec/s)" "$(field cov)" "$(field ft)" "${corp:--}"
  if [ ! -f "$logs/$t.ok" ]; then
    failed+=("$t")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  for t in "${failed[@]}"; do
    echo
    echo "==== $t FAILED; last lines of its log:"
    tail -n 40 "$logs/$t"
    ls "artifacts/$t/" 2>/dev/null | sed "s#^#  input: fuzz/artifacts/$t/#"
  done
  echo
  echo "fuzz: ${#failed[@]} target(s) crashed: ${failed[*]}"
  echo "Reproduce: cargo ${tc[*]} fuzz run -s $SANITIZER TARGET fuzz/artifacts/TARGET/FILE (with RUSTC_BOOTSTRAP=1)."
  echo "Once fixed, add the input to fuzz/regressions/TARGET/ and a unit test with it."
  exit 1
fi
echo "fuzz: no crash in ${#targets[@]} target(s), ${SECONDS_EACH}s each"

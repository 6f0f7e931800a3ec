#!/usr/bin/env bash
# Fuzzes the parsers that take outside input: the webhook body, the matcher syntax and the
# config (YAML and TOML), with cargo-fuzz (libFuzzer). Seeds come from the real Alertmanager
# bodies in tests/fixtures, fuzz/seeds/ and config/. The corpus grows across runs in
# $HOME/.cache/failover-responder/fuzz-corpus.
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 20; the test command runs it short,
#        a long run is e.g. `scripts/fuzz.sh 3600`). A crash fails the run and leaves its input
#        under fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
seconds=${1:-${FUZZ_SECONDS:-20}}
# Its own build directory: fuzz builds use other flags and would evict the normal build cache.
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$HOME/.cache/failover-responder/fuzz-target}
# cargo-fuzz passes nightly-only flags; this machine has a single stable toolchain.
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

corpus=$HOME/.cache/failover-responder/fuzz-corpus
mkdir -p "$corpus/webhook" "$corpus/matcher" "$corpus/config"
cp "$repo"/tests/fixtures/alertmanager-0.25/*.json "$corpus/webhook/"
cp fuzz/seeds/matcher/* "$corpus/matcher/"
cp config/failover-responder.yaml "$corpus/config/example.yaml"

passed=0
failed=0
for target in webhook matcher config; do
  echo "fuzz: $target for ${seconds}s"
  if cargo fuzz run --fuzz-dir fuzz "$target" "$corpus/$target" -- \
      -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 2>"$corpus/$target.log"; then
    passed=$((passed + 1))
    grep -E '^stat::number_of_executed_units' "$corpus/$target.log" | sed "s/^/fuzz: $target /" || true
  else
    failed=$((failed + 1))
    tail -40 "$corpus/$target.log"
  fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

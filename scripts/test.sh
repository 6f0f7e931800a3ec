#!/usr/bin/env bash
# Runs every check and test: the README's test command, and what CI runs.
# Installs what it needs first (Debian packages; the test image is built locally).
# Exits non-zero on the first failing stage.
set -euo pipefail
cd "$(dirname "$0")/.."

# Reuse one build cache across clones (CI runs in a fresh clone on the same machine).
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/failover-responder/target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

stage() { printf '\n==> %s\n' "$*"; }

stage "install components (haproxy, busybox-static, prometheus, alertmanager)"
scripts/install-deps.sh

stage "scripts are executable (the README runs them as scripts/NAME.sh)"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  not_exec=$(git ls-files -s -- 'scripts/*.sh' '.ci/run' | awk '$1 != "100755" { print $4 }')
  if [ -n "$not_exec" ]; then
    echo "not executable in git (git update-index --chmod=+x FILE): $not_exec" >&2
    exit 1
  fi
fi

stage "format"
cargo fmt --all -- --check

stage "clippy"
cargo clippy --all-targets --locked -- -D warnings

stage "build test image"
scripts/build-image.sh fr-test-api:latest cloud

stage "cargo test"
# Integration tests share one Docker engine and the machine has 2 cores: run test binaries
# one after another (cargo's default) with two test threads each.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --locked -- --test-threads=2 2>&1 | tee "$log"
# One closing line over every test binary.
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"

stage "fuzz the parsers briefly (webhook body, matchers, config)"
scripts/fuzz.sh "${FUZZ_SECONDS:-10}"

if [ -x scripts/check-deploy.sh ]; then
  stage "deployment files (promtool, amtool, systemd-analyze, terraform checks)"
  scripts/check-deploy.sh
fi

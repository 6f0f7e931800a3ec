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
  not_exec=$(git ls-files -s -- 'scripts/*.sh' '.ci/run' 'tests/package/*.sh' 'deploy/debian/postinst' \
    'deploy/debian/postrm' | awk '$1 != "100755" { print $4 }')
  if [ -n "$not_exec" ]; then
    echo "not executable in git (git update-index --chmod=+x FILE): $not_exec" >&2
    exit 1
  fi
fi

stage "format"
cargo fmt --all -- --check

stage "clippy"
cargo clippy --all-targets --locked -- -D warnings

stage "module imports have no cycle"
scripts/check-imports.py

stage "build test image"
scripts/build-image.sh fr-test-api:latest cloud

stage "cargo test"
# Integration tests share one Docker engine and the machine has 2 cores: run test binaries
# one after another (cargo's default) with two test threads each.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --locked -- --test-threads=2 2>&1 | tee "$log"
test_status=${PIPESTATUS[0]}
set -e
# One closing line over every test binary, printed whether or not a test failed (cargo stops
# at the first failing test binary, so after a failure it covers the binaries that ran).
# A test that returns early for a missing component (tests/common/mod.rs: require/skip) is a
# pass as far as libtest knows; it writes `SKIPPED: <binary>::<test>: <why>` to the real stderr,
# which libtest does not capture. Those count as skipped, not passed (once per test), as do
# #[ignore]d tests. awk exits 3 when some test skipped at run time.
skip_status=0
summary=$(mktemp)
trap 'rm -f "$log" "$summary"' EXIT
awk '
  /^test result:/ { p += $4; f += $6; i += $8 }
  /^SKIPPED: [A-Za-z0-9_]+::[^ ]+: / {
    rest = substr($0, 10)
    id = substr(rest, 1, index(rest, ": ") - 1)
    if (!(id in seen)) { seen[id] = 1; s++; line[s] = rest }
  }
  END {
    printf "tests: %d passed, %d failed, %d skipped\n", p - s, f, s + i
    for (k = 1; k <= s; k++) printf "  skipped %s\n", line[k]
    exit (s > 0 ? 3 : 0)
  }' "$log" >"$summary" || skip_status=$?
cat "$summary"
case $skip_status in 0 | 3) ;; *) echo "counting the test results failed" >&2; exit 1 ;; esac
if [ "$test_status" -ne 0 ]; then
  echo "cargo test failed (exit $test_status)" >&2
  exit "$test_status"
fi
# Under CI (CI set to anything non-empty) require() panics rather than skips; this catches a
# skip that went around it.
if [ "$skip_status" -eq 3 ] && [ -n "${CI:-}" ]; then
  echo "tests skipped under CI=$CI: a missing component is a failure here" >&2
  exit 1
fi

stage "fuzz the parsers briefly (webhook body, matchers, config)"
scripts/fuzz.sh "${FUZZ_SECONDS:-10}"

if [ -x scripts/check-deploy.sh ]; then
  stage "deployment files (promtool, amtool, systemd-analyze, terraform checks)"
  scripts/check-deploy.sh
fi

stage "Debian package (cargo deb, lintian, its life on a clean Debian root under systemd)"
scripts/check-package.sh

# The tests' closing line again, last, so it is what a reader sees at the end of the output.
printf '\n==> all stages passed\n'
cat "$summary"

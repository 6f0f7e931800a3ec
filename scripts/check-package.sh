#!/usr/bin/env bash
# Builds the Debian package and checks it the way an administrator would meet it:
#
#   1. `cargo deb` builds it (release build; cargo-deb pinned, installed under the cache);
#   2. its contents: /usr/bin/failover-responder, the unit, the sysusers.d entry, the example
#      config as a conffile, README and examples under /usr/share/doc;
#   3. `lintian`: no error (warnings and infos are printed; deliberate ones are overridden,
#      each with its reason, in deploy/debian/lintian-overrides);
#   4. its whole life on a clean Debian root booted with systemd as PID 1, in a throwaway
#      container with no network (tests/package/lifecycle.sh): dpkg -i, the user and modes,
#      check-config from /usr/bin as the service user, systemctl start under the unit's full
#      sandbox, reload, a bad reload, upgrade in place, dpkg -r, dpkg -P leaving nothing.
#
# The clean root is made with debootstrap from the host's own release (the binary is linked
# against the host's libc), imported into Docker as an image (no registry needed) and kept
# for the next run: fr-debian-systemd:<codename>.
#
# Usage: scripts/check-package.sh            Prints PASS/FAIL lines and the package size;
#        exits 1 when a check failed.
# Env:   PACKAGE_OUT (default $CARGO_TARGET_DIR/debian) where the .deb is written;
#        DEBIAN_MIRROR (default http://deb.debian.org/debian) for debootstrap.
# A missing tool is installed (Debian packages debootstrap, lintian, dpkg, binutils; cargo-deb from
# crates.io); if it cannot be, the check fails under CI=true and is skipped loudly otherwise.
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo" || exit 2
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/failover-responder/target}
tools="$HOME/.cache/failover-responder/tools"
cargo_deb_version=3.8.0
out_dir=${PACKAGE_OUT:-$CARGO_TARGET_DIR/debian}
ci=false
[ -n "${CI:-}" ] && ci=true

passed=0
failed=0
indent() { sed 's/^/      /'; }
pass() { passed=$((passed + 1)); printf 'PASS     %s\n' "$1"; }
fail() { failed=$((failed + 1)); printf 'FAIL     %s\n' "$1"; }
finish() {
  printf '%d passed, %d failed\n' "$passed" "$failed"
  [ "$failed" -eq 0 ]
  exit $?
}
# missing NAME WHY: a tool that could not be had. Fails under CI; outside it, says so loudly.
missing() {
  if $ci; then
    fail "$1 -- $2 (CI=true: a missing tool is a failure)"
  else
    printf 'SKIPPED  %s -- %s\n         !!!!!!!! NOT CHECKED: %s !!!!!!!!\n' "$1" "$2" "$1"
  fi
}

sudo_=""
[ "$(id -u)" -eq 0 ] || sudo_="sudo"
apt_install() {
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends "$@" >/dev/null ||
    { $sudo_ apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
}
# objcopy (binutils) splits the line tables into the -dbgsym package.
for tool in debootstrap:debootstrap lintian:lintian dpkg-deb:dpkg objcopy:binutils; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || apt_install "${tool##*:}" || true
done
# cargo-deb, pinned, in a root of its own under the cache (survives across clones).
if ! "$tools/bin/cargo-deb" --version 2>/dev/null | grep -qF "$cargo_deb_version"; then
  echo "check-package: installing cargo-deb $cargo_deb_version into $tools"
  env -u CARGO_TARGET_DIR cargo install --quiet --locked --root "$tools" "cargo-deb@$cargo_deb_version" ||
    true
fi

# --- 1. build ------------------------------------------------------------------------------
if ! [ -x "$tools/bin/cargo-deb" ]; then
  missing "cargo deb" "cargo-deb $cargo_deb_version could not be installed from crates.io"
  finish
fi
for tool in dpkg-deb objcopy; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    missing "cargo deb" "$tool not installed (Debian packages dpkg, binutils)"
    finish
  fi
done
mkdir -p "$out_dir"
rm -f "$out_dir"/failover-responder_*.deb "$out_dir"/failover-responder-dbgsym_*.ddeb
if "$tools/bin/cargo-deb" --locked --output "$out_dir" >"$out_dir/build.log" 2>&1; then
  deb=$(ls "$out_dir"/failover-responder_*.deb)
  dbgsym=$(ls "$out_dir"/failover-responder-dbgsym_*.ddeb 2>/dev/null)
  pass "cargo deb builds $(basename "$deb") ($(du -k "$deb" | cut -f1) KiB, $(dpkg-deb -f "$deb" Installed-Size) KiB installed) and $(basename "${dbgsym:-no dbgsym package}") ($(du -k "${dbgsym:-/dev/null}" | cut -f1) KiB)"
else
  tail -n 30 "$out_dir/build.log" | indent
  fail "cargo deb"
  finish
fi

# --- 2. contents ---------------------------------------------------------------------------
contents=$(dpkg-deb --contents "$deb" | awk '{ print $1, $6 }')
conffiles=$(dpkg-deb --info "$deb" conffiles 2>/dev/null)
want=(
  "-rwxr-xr-x ./usr/bin/failover-responder"
  "-rw-r--r-- ./usr/lib/systemd/system/failover-responder.service"
  "-rw-r--r-- ./usr/lib/sysusers.d/failover-responder.conf"
  "-rw-r----- ./etc/failover-responder/failover-responder.yaml"
  "-rw-r--r-- ./usr/share/doc/failover-responder/README.md"
  "-rw-r--r-- ./usr/share/man/man1/failover-responder.1.gz"
  "-rw-r--r-- ./usr/share/man/man1/failover-responder-serve.1.gz"
  "-rw-r--r-- ./usr/share/lintian/overrides/failover-responder"
  "-rw-r--r-- ./usr/share/doc/failover-responder/copyright"
  "-rw-r--r-- ./usr/share/doc/failover-responder/changelog.Debian.gz"
  "-rw-r--r-- ./usr/share/doc/failover-responder/examples/prometheus/rules/onprem.yml"
  "-rw-r--r-- ./usr/share/doc/failover-responder/examples/alertmanager/alertmanager.yml"
  "-rw-r--r-- ./usr/share/doc/failover-responder/examples/grafana/failover-responder.json"
  "-rw-r--r-- ./usr/share/doc/failover-responder/examples/haproxy/haproxy.cfg"
)
absent=()
for w in "${want[@]}"; do
  grep -qxF -- "$w" <<<"$contents" || absent+=("$w")
done
# The line tables: not in the main package, but in the -dbgsym one, under the binary's build id.
if grep -q -- ' \./usr/lib/debug/' <<<"$contents"; then
  absent+=("(debug files belong in the -dbgsym package, not here)")
fi
packaged_bin=$(mktemp)
dpkg-deb --fsys-tarfile "$deb" | tar -xOf - ./usr/bin/failover-responder >"$packaged_bin"
build_id=$(readelf -n "$packaged_bin" 2>/dev/null | awk '/Build ID/ { print $3 }')
rm -f "$packaged_bin"
if [ -z "$build_id" ] || [ -z "$dbgsym" ] ||
  ! dpkg-deb --contents "$dbgsym" | grep -q -- " \./usr/lib/debug/\.build-id/${build_id:0:2}/${build_id:2}\.debug$"; then
  absent+=("-dbgsym package with ./usr/lib/debug/.build-id/${build_id:0:2}/${build_id:2}.debug")
fi
if [ ${#absent[@]} -eq 0 ] && [ "$conffiles" = /etc/failover-responder/failover-responder.yaml ]; then
  pass "contents: binary, unit, sysusers.d, the config as the only conffile, man pages, docs and examples"
else
  printf '      missing or with other modes: %s\n' "${absent[@]}"
  printf '      conffiles: %s\n' "${conffiles:-none}"
  printf '      the package holds:\n'
  printf '%s\n' "$contents" | indent
  fail "contents"
fi
# The changelog's version is the package's: bump both together.
changelog_version=$(sed -n '1s/^failover-responder (\([^)]*\)).*/\1/p' deploy/debian/changelog)
if [ "$changelog_version" = "$(dpkg-deb -f "$deb" Version)" ]; then
  pass "deploy/debian/changelog names the package's version ($changelog_version)"
else
  fail "deploy/debian/changelog says $changelog_version, the package is $(dpkg-deb -f "$deb" Version)"
fi

# --- 3. lintian ----------------------------------------------------------------------------
# Errors fail the check. What lintian says that is deliberate or a false positive is overridden
# in the package itself, each with its reason: deploy/debian/lintian-overrides.
if command -v lintian >/dev/null 2>&1; then
  if lintian_out=$(lintian --fail-on error --display-level '>=info' --tag-display-limit 0 "$deb" 2>&1 | { grep -v '^running with root privileges' || true; }); then
    pass "lintian: no error ($(grep -c '^W:' <<<"$lintian_out") warning(s), $(grep -c '^I:' <<<"$lintian_out") info(s))"
  else
    fail "lintian reports errors"
  fi
  [ -z "$lintian_out" ] || printf '%s\n' "$lintian_out" | indent
else
  missing "lintian" "Debian package lintian not installed"
fi

# --- 4. the package's life on a clean Debian root with systemd ------------------------------
# shellcheck source=/dev/null  # the host's, not ours
. /etc/os-release
suite=${VERSION_CODENAME:-bookworm}
image="fr-debian-systemd:$suite"
if ! docker info >/dev/null 2>&1; then
  missing "install, run, remove, purge on $suite" "no Docker engine answers (docker info)"
  finish
fi
if ! docker image inspect "$image" >/dev/null 2>&1; then
  if command -v debootstrap >/dev/null 2>&1; then
    echo "check-package: building $image with debootstrap (once per machine)"
    root=$(mktemp -d)
    mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
    [ "${ID:-debian}" = ubuntu ] && mirror=${DEBIAN_MIRROR:-http://archive.ubuntu.com/ubuntu}
    if $sudo_ debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,procps \
      "$suite" "$root/fs" "$mirror" >"$out_dir/debootstrap.log" 2>&1; then
      $sudo_ tar -C "$root/fs" -c . | docker import \
        --change 'CMD ["/sbin/init"]' --change 'ENV container=docker' \
        - "$image" >/dev/null
    else
      tail -n 20 "$out_dir/debootstrap.log" | indent
    fi
    $sudo_ rm -rf "$root"
  fi
fi
if ! docker image inspect "$image" >/dev/null 2>&1; then
  missing "install, run, remove, purge on $suite" "could not build $image (debootstrap)"
  finish
fi
# systemd as PID 1 needs tmpfs on /run and a cgroup tree it may write: the host's hierarchy,
# mounted writable, in the host's cgroup namespace, where /proc/self/cgroup names the
# container's own subtree and systemd keeps to it (in a private namespace it would take the
# bind-mounted root for its own). That is the usual recipe on cgroup v1 (this machine) and v2
# (not run here). CAP_SYS_ADMIN lets it build the unit's sandbox (mount namespaces for
# ProtectSystem= and friends) as on a host; --privileged is refused where the Docker engine
# itself runs with fewer capabilities. No network: nothing in the scenario may reach out.
cgroup_args=(--cgroupns=host -v /sys/fs/cgroup:/sys/fs/cgroup:rw)
name="fr-package-$$"
docker rm -f "$name" >/dev/null 2>&1
trap 'docker rm -f "$name" >/dev/null 2>&1' EXIT
# AppArmor's docker-default profile (Ubuntu hosts) forbids the mounts the sandbox makes; this
# container is thrown away after the run.
docker run -d --name "$name" --cap-add SYS_ADMIN --security-opt apparmor=unconfined \
  "${cgroup_args[@]}" --network none \
  --tmpfs /run --tmpfs /run/lock --tmpfs /tmp \
  -v "$deb:/pkg/$(basename "$deb"):ro" -v "$repo/tests/package:/pkg/tests:ro" \
  "$image" >/dev/null
if timeout 600 docker exec "$name" /pkg/tests/lifecycle.sh "/pkg/$(basename "$deb")" 2>&1 | indent; then
  pass "install, configure, start under systemd, reload, upgrade, remove, purge on $suite"
else
  fail "install, configure, start under systemd, reload, upgrade, remove, purge on $suite"
  docker exec "$name" journalctl --no-pager -n 40 -u failover-responder 2>&1 | sed 's/^/      journal: /'
fi
finish

#!/bin/bash
# The Debian package's whole life on a clean Debian root, as an administrator lives it:
# install, configure, run under systemd, reload, upgrade in place, remove, purge.
#
# Runs INSIDE a throwaway container booted with systemd as PID 1 (scripts/check-package.sh
# starts it with no network); the package is at $1. Each step prints `ok - ...` or
# `not ok - ...` with what was seen; the exit status is the number of failed steps (0: all
# passed). Never run it on a machine you care about: it installs and purges a package.
# Most checks are inner `bash -c` scripts, expanded there and calling the functions exported
# below, which shellcheck cannot see:
# shellcheck disable=SC2016,SC2317
set -uo pipefail

deb=${1:?usage: lifecycle.sh PACKAGE.deb}
etc=/etc/failover-responder
failed=0
ok() { printf 'ok - %s\n' "$1"; }
not_ok() {
  failed=$((failed + 1))
  printf 'not ok - %s\n' "$1"
  [ -z "${2:-}" ] || printf '%s\n' "$2" | sed 's/^/    /'
}
# check NAME CMD...: one step, its output shown only when it fails.
check() {
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then ok "$name"; else not_ok "$name" "$out"; fi
}
# until_true SECONDS CMD...: polls CMD every 0.2 s until it succeeds or SECONDS pass.
until_true() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}
# The responder's own endpoints, through bash's /dev/tcp: the minimal root has no curl.
http_get() {
  exec 3<>/dev/tcp/127.0.0.1/9095 || return 1
  printf 'GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n' "$1" >&3
  cat <&3
  exec 3<&-
}
healthy() { http_get /-/healthy | head -n 1 | grep -q ' 200 '; }
metric() { http_get /metrics | awk -v m="$1" '$1 == m { print $2 }'; }
export -f until_true http_get healthy metric

# Every path with its mode and owner, outside the places that legitimately change (dpkg's own
# records, logs, caches, the user databases): what purge must leave as it found it.
snapshot() {
  find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path /tmp \
    -o -path /var/lib/dpkg -o -path /var/log -o -path /var/cache -o -path /var/lib/apt \) \
    -prune -o -printf '%p %m %u %g\n' |
    grep -Ev '^/etc/(passwd|group|shadow|gshadow)-? ' | sort
}

# systemd is PID 1 of a container just started: wait for its bus, then for the boot to end
# (systemd-tmpfiles cleans /tmp while booting, so nothing of ours may be written before).
until_true 30 test -S /run/systemd/private || not_ok "systemd's bus did not appear within 30 s"
timeout 60 systemctl is-system-running --wait >/dev/null ||
  printf '# systemd state: %s\n' "$(systemctl is-system-running 2>&1)"
# Docker's package would create the docker group; the unit's SupplementaryGroups= needs it.
groupadd --system docker
snapshot >/var/cache/lifecycle-before.txt

# --- install -------------------------------------------------------------------------------
check "dpkg -i installs the package" dpkg -i "$deb"
check "status is 'install ok installed'" \
  bash -c '[ "$(dpkg-query -W -f="\${Status}" failover-responder)" = "install ok installed" ]'
check "the binary is /usr/bin/failover-responder and runs" /usr/bin/failover-responder --version
check "postinst created the system user (sysusers)" \
  bash -c 'getent passwd failover-responder | grep -q ":/var/lib/failover-responder:/usr/sbin/nologin$"'
check "$etc is root:failover-responder 0750" \
  bash -c "[ \"\$(stat -c '%U:%G %a' $etc)\" = 'root:failover-responder 750' ]"
check "the config is a conffile, root:failover-responder 0640" \
  bash -c "dpkg-query -W -f='\${Conffiles}' failover-responder | grep -q ' $etc/failover-responder.yaml ' &&
           [ \"\$(stat -c '%U:%G %a' $etc/failover-responder.yaml)\" = 'root:failover-responder 640' ]"
check "the unit is installed, neither enabled nor started" \
  bash -c '[ "$(systemctl is-enabled failover-responder)" = disabled ] && ! systemctl is-active --quiet failover-responder'
check "the examples are under /usr/share/doc/failover-responder" \
  test -f /usr/share/doc/failover-responder/examples/prometheus/rules/onprem.yml

# --- configure -------------------------------------------------------------------------------
# Without the token file the shipped config is refused, naming the key and the file.
out=$(runuser -u failover-responder -- failover-responder check-config \
  --config.file "$etc/failover-responder.yaml" 2>&1)
rc=$?
if [ "$rc" -eq 1 ] && grep -q "auth.bearer_token_file: cannot read $etc/token" <<<"$out"; then
  ok "check-config without the token file: exit 1, names auth.bearer_token_file"
else
  not_ok "check-config without the token file: exit 1, names auth.bearer_token_file" "exit $rc: $out"
fi
# The README's step: the token, readable by root and the service's group only.
install -m 0640 -o root -g failover-responder /dev/null "$etc/token"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$etc/token"
check "check-config from /usr/bin, as the service user, on the shipped config" \
  runuser -u failover-responder -- /usr/bin/failover-responder check-config \
  --config.file "$etc/failover-responder.yaml"

# --- run under systemd ---------------------------------------------------------------------
# Type=notify: `start` returns once READY=1 came (store open, listener bound), under the
# unit's whole sandbox (ProtectSystem=strict, SystemCallFilter, MemoryDenyWriteExecute, ...).
# Docker and HAProxy are absent here: the responder runs and reports them unreachable.
check "systemctl start: active (READY=1 within TimeoutStartSec)" \
  bash -c 'systemctl start failover-responder && systemctl is-active --quiet failover-responder'
check "/-/healthy answers 200 on the shipped listen address" until_true 10 healthy
check "state lands in /var/lib/failover-responder (StateDirectory), owned by the service user" \
  bash -c '[ "$(stat -c %U /var/lib/failover-responder)" = failover-responder ] &&
           [ -n "$(find /var/lib/failover-responder -type f -print -quit)" ]'
pid=$(systemctl show -p MainPID --value failover-responder)
check "runs as failover-responder with the docker group, no capabilities" \
  bash -c "grep -q '^CapEff:[[:space:]]*0*\$' /proc/$pid/status &&
           [ \"\$(ps -o user= -p $pid)\" = failover-responder ] &&
           ps -o supgrp= -p $pid | grep -qw docker"
# The sandbox is really in force, not only written down: a mount namespace of its own (not
# this shell's), a seccomp filter (SystemCallFilter=), no_new_privs; in its mount table / is
# read-only (ProtectSystem=strict) and only its StateDirectory is mounted writable over it.
check "sandboxed: own mount namespace, seccomp filter, NoNewPrivs" \
  bash -c "[ -n \"\$(readlink /proc/self/ns/mnt)\" ] &&
           [ \"\$(readlink /proc/$pid/ns/mnt)\" != \"\$(readlink /proc/self/ns/mnt)\" ] &&
           grep -q '^Seccomp:[[:space:]]*2\$' /proc/$pid/status &&
           grep -q '^NoNewPrivs:[[:space:]]*1\$' /proc/$pid/status"
check "its / is read-only, /var/lib/failover-responder writable (ProtectSystem=strict)" \
  bash -c "awk '\$5 == \"/\" { print \$6 }' /proc/$pid/mountinfo | grep -q '^ro,' &&
           awk '\$5 == \"/var/lib/failover-responder\" { print \$6 }' /proc/$pid/mountinfo | grep -q '^rw,' &&
           awk '\$5 == \"/\" { print \$6 }' /proc/self/mountinfo | grep -q '^rw,'"
check "backend_up is 0 for the absent Docker (reported, not fatal)" \
  bash -c '[ "$(http_get /metrics | grep -c "^failover_responder_backend_up{.*} 0")" -ge 1 ]'

# `systemctl reload` (ExecReload: SIGHUP) applies a valid edit; same PID. ExecReload only sends
# the signal, so wait for the responder's own word that it reloaded (the journal; the reload
# metric is already 1 from the start and cannot tell).
reloaded() { journalctl -u failover-responder --no-pager -o cat | grep -c '"configuration reloaded"'; }
export -f reloaded
sed -i 's/max_transitions_per_hour: 6 /max_transitions_per_hour: 5 /' "$etc/failover-responder.yaml"
check "systemctl reload: the journal says reloaded, same PID, config_last_reload_successful 1" \
  bash -c "[ \"\$(reloaded)\" = 0 ] && systemctl reload failover-responder &&
           until_true 10 bash -c '[ \"\$(reloaded)\" = 1 ]' &&
           [ \"\$(systemctl show -p MainPID --value failover-responder)\" = $pid ] &&
           [ \"\$(metric failover_responder_config_last_reload_successful)\" = 1 ]"
# A bad edit: the reload fails, the responder keeps running on the old config.
cp "$etc/failover-responder.yaml" /tmp/good.yaml
sed -i 's/max_transitions_per_hour: 5 /max_transitions_per_hour: many /' "$etc/failover-responder.yaml"
systemctl reload failover-responder >/dev/null 2>&1
check "a bad file: still active, same PID, config_last_reload_successful 0" \
  bash -c "until_true 10 bash -c '[ \"\$(metric failover_responder_config_last_reload_successful)\" = 0 ]' &&
           systemctl is-active --quiet failover-responder &&
           [ \"\$(systemctl show -p MainPID --value failover-responder)\" = $pid ]"
cp /tmp/good.yaml "$etc/failover-responder.yaml"

# --- upgrades ------------------------------------------------------------------------------
# Versions 0.1.0-2 and -3 of the same package, each with another example config (a comment
# appended), repacked here: what an upgrade does to a conffile depends on whether it changed.
repack() {
  local version=$1 dir
  dir=$(mktemp -d)
  dpkg-deb -R "$deb" "$dir" &&
    printf '# example of %s\n' "$version" >>"$dir/etc/failover-responder/failover-responder.yaml" &&
    sed -i "s/^Version: .*/Version: $version/" "$dir/DEBIAN/control" &&
    dpkg-deb -b "$dir" "/tmp/failover-responder_$version.deb" >/dev/null
  rm -rf "$dir"
}
if ! { repack 0.1.0-2 && repack 0.1.0-3; }; then not_ok "repacking versions 0.1.0-2 and 0.1.0-3"; fi
check "the modes of $etc and of the config are registered dpkg stat overrides" \
  bash -c "dpkg-statoverride --list $etc | grep -qx 'root failover-responder 750 $etc' &&
           dpkg-statoverride --list $etc/failover-responder.yaml |
             grep -qx 'root failover-responder 640 $etc/failover-responder.yaml'"
# An edited config and a new example: --force-confold keeps the edit (the new example lands
# beside it as .dpkg-dist); the running responder restarts on the new files.
check "upgrade to 0.1.0-2 (--force-confold): the edited config kept, the example beside it" \
  bash -c "dpkg -i --force-confold /tmp/failover-responder_0.1.0-2.deb &&
           grep -q 'max_transitions_per_hour: 5 ' $etc/failover-responder.yaml &&
           grep -q '# example of 0.1.0-2' $etc/failover-responder.yaml.dpkg-dist"
check "after the upgrade: restarted on the new files (new PID)" \
  bash -c "until_true 30 systemctl is-active --quiet failover-responder &&
           [ \"\$(systemctl show -p MainPID --value failover-responder)\" != $pid ]"
# An unedited config and a new example: dpkg replaces the file, and the stat override gives
# the new one the service's group and 0640 (without it: root:root, and the responder could
# no longer read its config).
mv "$etc/failover-responder.yaml.dpkg-dist" "$etc/failover-responder.yaml"
check "upgrade to 0.1.0-3: the unedited config replaced, still root:failover-responder 0640" \
  bash -c "dpkg -i /tmp/failover-responder_0.1.0-3.deb &&
           grep -q '# example of 0.1.0-3' $etc/failover-responder.yaml &&
           [ \"\$(stat -c '%U:%G %a' $etc/failover-responder.yaml)\" = 'root:failover-responder 640' ] &&
           [ \"\$(stat -c '%U:%G %a' $etc)\" = 'root:failover-responder 750' ]"
check "the service user can still read it: check-config passes" \
  runuser -u failover-responder -- failover-responder check-config \
  --config.file "$etc/failover-responder.yaml"

# --- remove, then purge --------------------------------------------------------------------
check "dpkg -r: the service is stopped, the binary gone, the config kept" \
  bash -c "dpkg -r failover-responder && ! systemctl is-active --quiet failover-responder &&
           [ ! -e /usr/bin/failover-responder ] && [ -f $etc/failover-responder.yaml ]"
check "dpkg -P: config, token, state and stat overrides gone" \
  bash -c "dpkg -P failover-responder && [ ! -e $etc ] && [ ! -e /var/lib/failover-responder ] &&
           [ -z \"\$(dpkg-statoverride --list | grep failover-responder)\" ]"
snapshot >/var/cache/lifecycle-after.txt
check "purge leaves the file system as before the install (but the system user)" \
  diff /var/cache/lifecycle-before.txt /var/cache/lifecycle-after.txt

printf '# %d step(s) failed\n' "$failed"
exit "$failed"

#!/usr/bin/env bash
# Installs the real components that the demo and the tests talk to: Debian's haproxy,
# busybox-static (the cloud container image is built from it), prometheus and
# prometheus-alertmanager, etcd-server (and protoc, which the etcd client needs to build),
# chromium and chromium-driver (the status page's browser test), and from PyPI moto's server
# (the EC2 API stand-in) and selenium.
# Idempotent: does nothing when all are present.
set -euo pipefail

need=()
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -x httpd >/dev/null || need+=(busybox-static)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v alertmanager >/dev/null 2>&1 || command -v prometheus-alertmanager >/dev/null 2>&1 || need+=(prometheus-alertmanager)
command -v curl >/dev/null 2>&1 || need+=(curl)
# `ip` brings loopback up in the network namespace scripts/check-metrics.sh runs in.
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || need+=(iproute2)
# etcd holds the leader lease of a responder cluster (the HA tests start their own members);
# protoc compiles etcd's protos for the etcd-client crate at build time.
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)

# The status page is tested in Debian's headless chromium, driven through chromedriver by
# selenium (PyPI, in a venv of its own).
# FR_CHROMIUM / FR_CHROMEDRIVER name another build (a CI runner's Chrome) instead.
[ -x "${FR_CHROMIUM:-/usr/bin/chromium}" ] || need+=(chromium)
[ -x "${FR_CHROMEDRIVER:-/usr/bin/chromedriver}" ] || need+=(chromium-driver)
ui_venv=${UI_VENV:-$HOME/.cache/failover-responder/venv-ui}
if [ ! -x "$ui_venv/bin/python" ] || ! "$ui_venv/bin/python" -c 'import selenium' 2>/dev/null; then
  echo "install-deps: installing selenium into $ui_venv"
  python3 -m venv "$ui_venv"
  "$ui_venv/bin/pip" install -q --disable-pip-version-check "selenium==4.27.1"
fi

# moto's server stands in for the EC2 API in the tests (PyPI, in a venv of its own).
moto_venv=${MOTO_VENV:-$HOME/.cache/failover-responder/venv-moto}
if [ ! -x "$moto_venv/bin/moto_server" ]; then
  echo "install-deps: installing moto[server] into $moto_venv"
  python3 -m venv "$moto_venv"
  "$moto_venv/bin/pip" install -q --disable-pip-version-check "moto[server]==5.2.5"
fi

if [ ${#need[@]} -eq 0 ]; then
  echo "install-deps: all components present"
  exit 0
fi

echo "install-deps: installing ${need[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# --no-install-recommends keeps the install small; the packages' own services are not
# wanted (the tests start their own instances on loopback), so stop them if apt started them.
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
for svc in haproxy prometheus prometheus-alertmanager prometheus-node-exporter etcd; do
  $SUDO systemctl stop "$svc" >/dev/null 2>&1 || true
  $SUDO pkill -x "$svc" >/dev/null 2>&1 || true
done
echo "install-deps: done"

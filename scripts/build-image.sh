#!/usr/bin/env bash
# Builds a tiny HTTP service image without a registry: Debian's static busybox serving a page
# and /health on port 8080, imported through the Docker Engine API (POST /images/create?fromSrc=-).
# Usage: build-image.sh NAME:TAG [BODY]   (BODY is the index page, default "cloud")
# Env: DOCKER_SOCK (default /var/run/docker.sock). Idempotent: an existing image is kept
# unless FORCE=1.
set -euo pipefail

ref=${1:?usage: build-image.sh NAME:TAG [BODY]}
body=${2:-cloud}
sock=${DOCKER_SOCK:-/var/run/docker.sock}
repo=${ref%:*}
tag=${ref##*:}
[ "$repo" != "$ref" ] || tag=latest

api() { curl -fsS --unix-socket "$sock" "$@"; }

# Parallel test processes may build the same image at once: serialise on a lock.
exec 9>"/tmp/failover-responder-image-${repo//\//_}.lock"
flock 9

if [ "${FORCE:-0}" != 1 ] && api "http://localhost/images/$repo:$tag/json" >/dev/null 2>&1; then
  echo "build-image: $repo:$tag already present"
  exit 0
fi

busybox=/bin/busybox
[ -x "$busybox" ] || { echo "build-image: $busybox missing (apt-get install busybox-static)" >&2; exit 1; }
if ! { ldd "$busybox" 2>&1 || true; } | grep -q "not a dynamic executable"; then
  echo "build-image: $busybox is not static (install busybox-static)" >&2
  exit 1
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/www" "$root/tmp"
cp "$busybox" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
printf '%s\n' "$body" >"$root/www/index.html"
printf 'ok\n' >"$root/www/health"

urlencode() { python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"; }
cmd='CMD ["/bin/busybox","httpd","-f","-p","8080","-h","/www"]'
query="fromSrc=-&repo=$(urlencode "$repo")&tag=$(urlencode "$tag")&changes=$(urlencode "$cmd")&changes=$(urlencode 'EXPOSE 8080/tcp')"

out=$(tar -C "$root" -cf - . | api -X POST -H 'Content-Type: application/x-tar' --data-binary @- \
  "http://localhost/images/create?$query")
if printf '%s' "$out" | grep -q '"error'; then
  echo "build-image: import failed: $out" >&2
  exit 1
fi
echo "build-image: built $repo:$tag"

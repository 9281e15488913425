#!/usr/bin/env bash
# tests/deb_test.sh BUILD_DIR — the Debian package of tallyd as an operator
# gets it: cpack builds it from the build tree's install rules; its control
# data (name, dependencies, conffiles, maintainer scripts) and contents are
# checked with dpkg-deb; the packaged tallyd reads the packaged config; the
# unit says what the README promises (systemd-analyze verifies it); lintian
# runs on it and must be clean apart from the tags packaging/deb/
# lintian-overrides justifies. Every tool is required: a missing one fails.
set -euo pipefail
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:?usage: deb_test.sh BUILD_DIR}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tally-deb-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
for tool in cpack dpkg-deb dpkg-shlibdeps lintian systemd-analyze; do
  command -v "$tool" >/dev/null || fail "$tool not found (scripts/setup installs it)"
done

echo "--- cpack"
cpack --config "$build/CPackConfig.cmake" -B "$tmp/out" >"$tmp/cpack.log" 2>&1 || { cat "$tmp/cpack.log"; fail "cpack"; }
debs=("$tmp"/out/tallyd_*.deb)
[[ ${#debs[@]} -eq 1 && -f ${debs[0]} ]] || { ls -l "$tmp/out"; fail "expected one tallyd_*.deb"; }
deb=${debs[0]}
echo "$(basename "$deb"): $(stat -c %s "$deb") bytes"

echo "--- control (dpkg-deb -I)"
dpkg-deb -I "$deb" >"$tmp/info"
cat "$tmp/info"
field() { dpkg-deb -f "$deb" "$1"; }
[[ $(field Package) == tallyd ]] || fail "Package is not tallyd"
depends=$(field Depends)
for dep in adduser libcaf-core libcaf-io libhiredis libpq5 libsystemd0 libcpp-httplib; do
  grep -q "$dep" <<<"$depends" || fail "Depends lacks $dep: $depends"
done
for member in conffiles postinst prerm postrm md5sums; do
  grep -qE "^ +[0-9]+ bytes, +[0-9]+ lines +\*? *$member" "$tmp/info" || fail "control member $member missing"
done
grep -qE '^ +[0-9]+ bytes, +[0-9]+ lines +\* +postinst' "$tmp/info" || fail "postinst is not executable"
[[ $(dpkg-deb -I "$deb" conffiles) == /etc/tally/tallyd.toml ]] || fail "conffiles is not /etc/tally/tallyd.toml"
mkdir "$tmp/control"
dpkg-deb -e "$deb" "$tmp/control"
for script in postinst prerm postrm; do
  sh -n "$tmp/control/$script" || fail "$script: shell syntax"
done
grep -q 'adduser --system' "$tmp/control/postinst" || fail "postinst does not add the system user"
grep -q 'getent passwd tally' "$tmp/control/postinst" || fail "postinst adds the user without checking for it"

echo "--- contents (dpkg-deb -c)"
dpkg-deb -c "$deb" | awk '{print $1, $2, $6}' | tee "$tmp/contents"
has() { grep -qE " \./$1\$" "$tmp/contents" || fail "the package lacks /$1"; }
has usr/bin/tallyd
has etc/tally/tallyd.toml
has lib/systemd/system/tallyd.service
has usr/share/man/man8/tallyd.8.gz
has usr/share/doc/tallyd/copyright
has usr/share/doc/tallyd/changelog.Debian.gz
has usr/share/lintian/overrides/tallyd
grep -qE '^-rwxr-xr-x root/root \./usr/bin/tallyd$' "$tmp/contents" || fail "tallyd is not root-owned 0755"
if grep -E 'libtally|/include/|cmake/tally|pkgconfig' "$tmp/contents"; then
  fail "the daemon package carries development files"
fi

echo "--- the packaged tallyd reads the packaged config"
root=$tmp/root
dpkg-deb -x "$deb" "$root"
"$root/usr/bin/tallyd" --config "$root/etc/tally/tallyd.toml" --print-config >"$tmp/effective" 2>&1 ||
  { cat "$tmp/effective"; fail "tallyd rejects /etc/tally/tallyd.toml"; }
grep -qx 'state_dir = "/var/lib/tally"' "$tmp/effective" || fail "state_dir is not /var/lib/tally"
grep -qx 'postgres_url = "postgresql:///tally?host=/run/postgresql"' "$tmp/effective" ||
  fail "postgres_url is not the local socket"
file "$root/usr/bin/tallyd" | grep -q 'stripped' && ! file "$root/usr/bin/tallyd" | grep -q 'not stripped' ||
  fail "tallyd is not stripped"

echo "--- the unit"
unit=$root/lib/systemd/system/tallyd.service
for line in 'Type=notify' 'ExecStart=/usr/bin/tallyd --config /etc/tally/tallyd.toml' \
            'ExecReload=/bin/kill -HUP $MAINPID' 'User=tally' 'StateDirectory=tally' 'ProtectSystem=strict' \
            'ProtectHome=true' 'PrivateTmp=true' 'NoNewPrivileges=true'; do
  grep -qxF "$line" "$unit" || fail "tallyd.service lacks '$line'"
done
grep -qE '^WatchdogSec=[1-9]' "$unit" || fail "tallyd.service has no WatchdogSec"
# verify checks every key and that ExecStart= and ExecReload= are
# executables: the unit runs the extracted tallyd instead of /usr/bin's.
mkdir "$tmp/unit"
sed "s|^ExecStart=/usr/bin/tallyd|ExecStart=$root/usr/bin/tallyd|" "$unit" >"$tmp/unit/tallyd.service"
SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=no "$tmp/unit/tallyd.service" >"$tmp/verify" 2>&1 ||
  { cat "$tmp/verify"; fail "systemd-analyze verify"; }
if [[ -s $tmp/verify ]]; then
  cat "$tmp/verify"
  fail "systemd-analyze verify printed warnings"
fi
echo "systemd-analyze verify: clean"

echo "--- lintian"
# Overrides come from the package itself (/usr/share/lintian/overrides/tallyd).
# The verdict: any tag at info level or above that is not overridden fails.
lintian --fail-on error,warning,info --display-info "$deb" >"$tmp/lintian" 2>&1 ||
  { cat "$tmp/lintian"; fail "lintian"; }
if grep -qE '^[EWIP]: ' "$tmp/lintian"; then
  cat "$tmp/lintian"
  fail "lintian reported tags that are not overridden"
fi
# For the log: the overridden tags with their reasons (--show-overrides
# would count them toward --fail-on, hence the second run).
lintian --display-info --show-overrides "$deb" 2>&1 | grep -E '^(N|O): ' || true
echo "lintian: clean (overridden tags above)"
echo "PASS"

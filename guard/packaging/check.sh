#!/bin/bash
# Checks the guard's packaging: the DaemonSet passes the Kubernetes schemas (strict) and makes sense
# for the agent, and broken copies of it are refused; the AppArmor profile compiles; the PKGBUILD
# parses (makepkg refuses root, so as nobody); shellcheck on the PKGBUILD when available; makepkg
# builds the package for real as a non-root user (build-package.sh) and the package holds the
# repository's files, a runnable agent, and installs with pacman; doctored packages are refused.
# Run by `make guard-package-check` (which installs istio/schemas/node_modules first).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
fail() { echo "guard-package-check: FAIL: $*" >&2; exit 1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

# --- DaemonSet ---
# The flags the agent's parser knows (the match arms of parse_options in guard/src/main.rs).
mapfile -t flags < <(grep -o '^ *"--[a-z-]*" =>' "$root/guard/src/main.rs" | grep -o -- '--[a-z-]*')
[ "${#flags[@]}" -ge 5 ] || fail "could not read the agent's flags from guard/src/main.rs"
daemonset_checks() {  # FILE: schema check, then content check
  node "$root/istio/schemas/validate.mjs" "$1" &&
    node "$here/check-daemonset.mjs" "$1" "$here/txgate-guard.service" "$here/txgate-guard.conf" "${flags[@]}"
}
daemonset_checks "$here/daemonset.yaml" || fail "daemonset.yaml"
# The checks can fail: each broken copy must be refused, for the reason given.
refused() {  # NAME SED-EXPRESSION PATTERN-IN-THE-COMPLAINT
  sed -e "$2" "$here/daemonset.yaml" > "$tmp/$1.yaml"
  ! cmp -s "$here/daemonset.yaml" "$tmp/$1.yaml" || fail "broken copy $1: the edit '$2' changed nothing"
  if daemonset_checks "$tmp/$1.yaml" > "$tmp/$1.out" 2>&1; then
    cat "$tmp/$1.out"; fail "broken copy $1 was accepted"
  fi
  grep -q -- "$3" "$tmp/$1.out" || { cat "$tmp/$1.out"; fail "broken copy $1 refused, but not for '$3'"; }
  echo "daemonset: broken copy refused: $1 ($(grep -m1 -- "$3" "$tmp/$1.out" | sed 's/^[^ ]* //'))"
}
refused host-network-string 's/hostNetwork: true/hostNetwork: "yes"/' '/spec/template/spec/hostNetwork type'
refused unknown-field 's/^\( *\)readOnlyRootFilesystem: true/&\n\1readOnlyRootFileSystem: true/' 'securityContext/readOnlyRootFileSystem unknown field'
refused hostpath-type 's/type: Directory}/type: Dir}/' '/hostPath/type enum'
refused no-image '/^ *image: /d' 'no image'
refused no-host-network 's/hostNetwork: true/hostNetwork: false/' 'hostNetwork must be true'
refused extra-capability 's/"PERFMON"\]/"PERFMON", "SYS_ADMIN"]/' 'the systemd unit grants'
refused other-envoy-uid 's/"--allow-uid", "1337"/"--allow-uid", "1000"/' 'istio-proxy runs as uid 1337'
refused unknown-flag 's/"--xdp-mode"/"--xdp-mod"/' 'is not a flag of txgate-guard'
refused pins-off-bpffs 's|"--pin-dir", "/sys/fs/bpf/txgate"|"--pin-dir", "/var/lib/txgate"|' 'must be on the node.s bpffs'
refused socket-unmounted 's|"/var/run/txgate-guard/bans.sock"|"/tmp/bans.sock"|' 'must be a writable hostPath mount'

# --- AppArmor, PKGBUILD ---
apparmor_parser -Q -K -T "$here/usr.bin.txgate-guard" 2>&1 | grep -v "Cache read/write disabled" || true
apparmor_parser -Q -K -T "$here/usr.bin.txgate-guard" >/dev/null 2>&1 || { echo "AppArmor profile does not compile"; exit 1; }
echo "apparmor_parser: usr.bin.txgate-guard compiles"
mkdir "$tmp/srcinfo"; cp "$here/PKGBUILD" "$tmp/srcinfo/"; chmod -R a+rwX "$tmp"
out=$(cd "$tmp/srcinfo" && setpriv --reuid 65534 --regid 65534 --clear-groups env HOME="$tmp/srcinfo" makepkg --printsrcinfo)
grep -q "pkgname = txgate-guard" <<<"$out" || { echo "makepkg --printsrcinfo: $out"; exit 1; }
grep -q "backup = etc/txgate-guard.conf" <<<"$out" || { echo "makepkg --printsrcinfo lost backup=: $out"; exit 1; }
echo "makepkg --printsrcinfo: PKGBUILD parses"
if command -v shellcheck >/dev/null; then
  shellcheck --shell=bash -e SC2034,SC2154,SC2164 "$here/PKGBUILD"
  echo "shellcheck: PKGBUILD clean"
fi

# --- tmpfiles.d: the pin directory the unprivileged agent needs, applied to a scratch root ---
tmproot="$tmp/tmpfiles-root"
mkdir -p "$tmproot/etc" "$tmproot/sys/fs/bpf" && chmod 0700 "$tmproot/sys/fs/bpf"
echo 'txgate-guard:x:990:990::/:/usr/sbin/nologin' > "$tmproot/etc/passwd"
echo 'txgate-guard:x:990:' > "$tmproot/etc/group"
systemd-tmpfiles --root="$tmproot" --create "$here/txgate-guard.tmpfiles" || fail "systemd-tmpfiles refused txgate-guard.tmpfiles"
[ "$(stat -c '%a' "$tmproot/sys/fs/bpf")" = 711 ] && [ "$(stat -c '%a %u' "$tmproot/sys/fs/bpf/txgate")" = "700 990" ] ||
  fail "tmpfiles.d did not make /sys/fs/bpf traversable and /sys/fs/bpf/txgate the agent's"
grep -q '^ExecStartPre=+/usr/bin/systemd-tmpfiles --create /usr/lib/tmpfiles.d/txgate-guard.conf$' "$here/txgate-guard.service" ||
  fail "the unit does not create its pin directory before the sandbox"
echo "tmpfiles.d: /sys/fs/bpf 0711, /sys/fs/bpf/txgate 0700 txgate-guard"

# --- makepkg: a real build, as a non-root user (build-package.sh), and what the package holds ---
start_build=$(date +%s)
pkg=$("$here/build-package.sh" "$tmp/pkg" > "$tmp/makepkg.log" 2>&1 && tail -1 "$tmp/makepkg.log") ||
  { tail -40 "$tmp/makepkg.log"; fail "makepkg build failed (log above)"; }
echo "makepkg: built $(basename "$pkg") ($(stat -c %s "$pkg") bytes) in $(( $(date +%s) - start_build ))s as a non-root user"
! grep -q "reference to" "$tmp/makepkg.log" || { grep "reference to" "$tmp/makepkg.log"; fail "the package refers to its build directory"; }
expected_files="etc/apparmor.d/usr.bin.txgate-guard
etc/txgate-guard.conf
usr/bin/txgate-guard
usr/lib/systemd/system/txgate-guard.service
usr/lib/sysusers.d/txgate-guard.conf
usr/lib/tmpfiles.d/txgate-guard.conf
usr/share/txgate-guard/fail2ban/filter.d/txgate.conf
usr/share/txgate-guard/fail2ban/jail.d/txgate.conf"
# Each packaged file is the repository's (the binary: the agent, runnable, only glibc and libgcc_s).
package_holds() {  # PKG: exit 1 with the reasons when the package is not what PKGBUILD should make
  local p=$1 x; x=$(mktemp -d "$tmp/x.XXXXXX")
  bsdtar -xf "$p" -C "$x" || return 1
  local files; files=$(cd "$x" && find . -type f ! -name '.*' | sed 's,^\./,,' | sort)
  [ "$files" = "$expected_files" ] || { diff <(echo "$expected_files") <(echo "$files") | sed 's/^/  files: /'; return 1; }
  local ok=0
  cmp -s "$x/etc/apparmor.d/usr.bin.txgate-guard" "$here/usr.bin.txgate-guard" || { echo "  AppArmor profile differs"; ok=1; }
  cmp -s "$x/etc/txgate-guard.conf" "$here/txgate-guard.conf" || { echo "  txgate-guard.conf differs"; ok=1; }
  cmp -s "$x/usr/lib/systemd/system/txgate-guard.service" "$here/txgate-guard.service" || { echo "  unit differs"; ok=1; }
  cmp -s "$x/usr/lib/sysusers.d/txgate-guard.conf" "$here/txgate-guard.sysusers" || { echo "  sysusers differs"; ok=1; }
  cmp -s "$x/usr/lib/tmpfiles.d/txgate-guard.conf" "$here/txgate-guard.tmpfiles" || { echo "  tmpfiles differs"; ok=1; }
  cmp -s "$x/usr/share/txgate-guard/fail2ban/filter.d/txgate.conf" "$root/guard/fail2ban/filter.d/txgate.conf" || { echo "  fail2ban filter differs"; ok=1; }
  cmp -s "$x/usr/share/txgate-guard/fail2ban/jail.d/txgate.conf" "$root/guard/fail2ban/jail.d/txgate.conf" || { echo "  fail2ban jail differs"; ok=1; }
  ! grep -q "txgate-build" "$x/usr/bin/txgate-guard" || { echo "  usr/bin/txgate-guard names the build user's directories"; ok=1; }
  local usage; usage=$("$x/usr/bin/txgate-guard" --help 2>&1 || true)
  grep -q "usage: txgate-guard --iface" <<<"$usage" || { echo "  usr/bin/txgate-guard --help: $usage"; ok=1; }
  local needed; needed=$(readelf -d "$x/usr/bin/txgate-guard" 2>/dev/null | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | sort | tr '\n' ' ')
  for lib in $needed; do
    case $lib in libc.so.*|libgcc_s.so.*|libm.so.*|ld-linux*) ;; *) echo "  links $lib, not in depends=(gcc-libs glibc)"; ok=1;; esac
  done
  [ -n "$needed" ] || { echo "  usr/bin/txgate-guard: not a dynamic ELF binary"; ok=1; }
  local info; info=$(bsdtar -xOf "$p" .PKGINFO)
  for line in "pkgname = txgate-guard" "pkgver = $(sed -n 's/^pkgver=//p' "$here/PKGBUILD")-1" \
      "backup = etc/txgate-guard.conf" "depend = gcc-libs" "depend = glibc"; do
    grep -qx "$line" <<<"$info" || { echo "  .PKGINFO lacks '$line'"; ok=1; }
  done
  return $ok
}
package_holds "$pkg" || fail "$(basename "$pkg") does not hold what it should (above)"
echo "makepkg: package holds: $(tr '\n' ' ' <<<"$expected_files")"
echo "makepkg: usr/bin/txgate-guard runs (--help), links only $(readelf -d "$tmp/x".*/usr/bin/txgate-guard | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')"
# pacman itself installs it into a scratch root and verifies every file against the .MTREE.
mkdir -p "$tmp/pacroot/var/lib/pacman"
pacman -U --root "$tmp/pacroot" --dbpath "$tmp/pacroot/var/lib/pacman" --noscriptlet -dd --noconfirm "$pkg" > "$tmp/pacman.log" 2>&1 ||
  { cat "$tmp/pacman.log"; fail "pacman -U refused the package"; }
qkk=$(pacman --root "$tmp/pacroot" --dbpath "$tmp/pacroot/var/lib/pacman" -Qkk txgate-guard 2>&1) ||
  { echo "$qkk"; fail "pacman -Qkk"; }
echo "pacman: -U into a scratch root, -Qkk: ${qkk#txgate-guard: }"
# The package check can fail: a package without the AppArmor profile, or with another unit, is refused.
mkdir "$tmp/bad"; bsdtar -xf "$pkg" -C "$tmp/bad"
rm "$tmp/bad/etc/apparmor.d/usr.bin.txgate-guard"
(cd "$tmp/bad" && bsdtar -czf "$tmp/no-apparmor.pkg.tar.gz" .PKGINFO .BUILDINFO .MTREE etc usr)
package_holds "$tmp/no-apparmor.pkg.tar.gz" > "$tmp/bad.out" 2>&1 && fail "a package without the AppArmor profile passed"
grep -q "files: < etc/apparmor.d/usr.bin.txgate-guard" "$tmp/bad.out" || { cat "$tmp/bad.out"; fail "no-apparmor refused for another reason"; }
bsdtar -xf "$pkg" -C "$tmp/bad" etc/apparmor.d/usr.bin.txgate-guard
echo "# edited" >> "$tmp/bad/usr/lib/systemd/system/txgate-guard.service"
(cd "$tmp/bad" && bsdtar -czf "$tmp/other-unit.pkg.tar.gz" .PKGINFO .BUILDINFO .MTREE etc usr)
package_holds "$tmp/other-unit.pkg.tar.gz" > "$tmp/bad.out" 2>&1 && fail "a package with another unit passed"
grep -q "unit differs" "$tmp/bad.out" || { cat "$tmp/bad.out"; fail "other-unit refused for another reason"; }
echo "makepkg: doctored packages refused (no AppArmor profile; a changed unit)"

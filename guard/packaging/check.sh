#!/bin/bash
# Checks the guard's packaging: AppArmor profile compiles, PKGBUILD parses (makepkg refuses root,
# so as nobody), shellcheck on the PKGBUILD when available. Run by `make guard-package-check`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
apparmor_parser -Q -K -T "$here/usr.bin.txgate-guard" 2>&1 | grep -v "Cache read/write disabled" || true
apparmor_parser -Q -K -T "$here/usr.bin.txgate-guard" >/dev/null 2>&1 || { echo "AppArmor profile does not compile"; exit 1; }
echo "apparmor_parser: usr.bin.txgate-guard compiles"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cp "$here/PKGBUILD" "$tmp/"; chmod -R a+rwX "$tmp"
out=$(cd "$tmp" && setpriv --reuid 65534 --regid 65534 --clear-groups env HOME="$tmp" makepkg --printsrcinfo)
grep -q "pkgname = txgate-guard" <<<"$out" || { echo "makepkg --printsrcinfo: $out"; exit 1; }
grep -q "backup = etc/txgate-guard.conf" <<<"$out" || { echo "makepkg --printsrcinfo lost backup=: $out"; exit 1; }
echo "makepkg --printsrcinfo: PKGBUILD parses"
if command -v shellcheck >/dev/null; then
  shellcheck --shell=bash -e SC2034,SC2154,SC2164 "$here/PKGBUILD"
  echo "shellcheck: PKGBUILD clean"
fi

#!/bin/bash
# Builds the Arch package of txgate-guard with a real `makepkg` from this working tree, as a non-root
# user, and prints the path of the package. Run by check.sh (make guard-package-check).
# Usage: guard/packaging/build-package.sh OUTDIR
#
# - Source: a tarball of the working tree (tracked and untracked, not ignored, files; fuzz/ left
#   out), named as PKGBUILD's source=(): no download but crates from crates.io.
# - makepkg refuses to run as root. As root (the machine and CI), the build runs as the system user
#   txgate-build (made here if absent, home /var/lib/txgate-build), in a private mount namespace
#   where the root's Rust toolchain (`rustc --print sysroot`, under /root, which is 0700) is
#   bind-mounted into the build user's reach. As any other user, makepkg runs as that user.
# - --nodeps: makepkg would ask pacman whether makedepends (cargo, clang, ...) are installed, and
#   pacman's database knows no Debian package. They are checked by `command -v` below instead.
# - Kept between builds in the build user's home: CARGO_HOME (crates fetched once) and
#   CARGO_TARGET_DIR, and BUILDDIR is fixed, so $srcdir (in RUSTFLAGS' --remap-path-prefix) does
#   not change and cargo rebuilds only what changed.
# The bash -c scripts below take their values as arguments, so their $1 and $@ are meant literally.
# shellcheck disable=SC2016
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$1
for tool in makepkg bsdtar fakeroot cargo rustc clang llvm-strip; do
  command -v "$tool" >/dev/null || { echo "build-package: $tool not found (make tools installs it)" >&2; exit 1; }
done
pkgver=$(sed -n 's/^pkgver=//p' "$here/PKGBUILD")
crate=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/guard/Cargo.toml" | head -1)
[ "$pkgver" = "$crate" ] || { echo "build-package: PKGBUILD pkgver $pkgver, guard/Cargo.toml $crate" >&2; exit 1; }

if [ "$(id -u)" = 0 ]; then
  user=txgate-build
  home=/var/lib/txgate-build
  id -u "$user" >/dev/null 2>&1 ||
    useradd --system --home-dir "$home" --create-home --shell /usr/sbin/nologin --comment "txgate package builds" "$user"
  mkdir -p "$home"; chown "$user:" "$home"; chmod 0755 "$home"
else
  user=$(id -un)
  home=${TXGATE_BUILD_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/txgate-build}
  mkdir -p "$home"
fi
# One build at a time in that home (two work trees, or a developer and CI, may run this at once).
exec 9>>"$home/.lock"
flock 9
run_as() { if [ "$(id -u)" = 0 ]; then setpriv --reuid "$user" --regid "$user" --init-groups "$@"; else "$@"; fi; }

# A fresh startdir each time: PKGBUILD and the source tarball.
start=$home/start
run_as rm -rf "$start" "$home/pkg"
run_as mkdir -p "$start" "$home/pkg" "$home/toolchain" "$home/cargo" "$home/target" "$home/build"
cp "$here/PKGBUILD" "$start/"
(cd "$root" && git ls-files -z -co --exclude-standard -- . ':!fuzz' |
  while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
  tar --null -T - --transform "s,^,txgate-guard-$pkgver/," -czf "$start/txgate-guard-$pkgver.tar.gz")
chown -R "$(id -u "$user"):$(id -g "$user")" "$start"

sysroot=$(rustc --print sysroot)
build_env=(env -i HOME="$home" PATH="$home/toolchain/bin:/usr/local/bin:/usr/bin:/bin" LANG=C.UTF-8
  CARGO_HOME="$home/cargo" CARGO_TARGET_DIR="$home/target" BUILDDIR="$home/build" PKGDEST="$home/pkg"
  SRCDEST="$start" CARGO_TERM_COLOR=never)
makepkg_args=(--nodeps --force --cleanbuild --noconfirm --nocolor)
if [ "$(id -u)" = 0 ]; then
  # SSL_CERT_FILE and friends stay as the machine sets them (crates.io over TLS).
  for v in SSL_CERT_FILE SSL_CERT_DIR CARGO_HTTP_CAINFO; do
    if [ -n "${!v:-}" ]; then build_env+=("$v=${!v}"); fi
  done
  unshare --mount --propagation private -- bash -c '
    set -e
    mount --bind "$1" "$2/toolchain"
    shift 2
    exec "$@"' _ "$sysroot" "$home" setpriv --reuid "$user" --regid "$user" --init-groups \
    "${build_env[@]}" bash -c 'cd "$1" && shift && exec makepkg "$@"' _ "$start" "${makepkg_args[@]}"
else
  rm -rf "$home/toolchain"; ln -s "$sysroot" "$home/toolchain"
  "${build_env[@]}" bash -c 'cd "$1" && shift && exec makepkg "$@"' _ "$start" "${makepkg_args[@]}"
fi
mkdir -p "$out"
for pkg in "$home/pkg/txgate-guard-$pkgver-"*.pkg.tar.*; do cp "$pkg" "$out/"; echo "$out/$(basename "$pkg")"; done

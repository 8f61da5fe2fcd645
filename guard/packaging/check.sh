#!/bin/bash
# Checks the guard's packaging: the DaemonSet passes the Kubernetes schemas (strict) and makes sense
# for the agent, and broken copies of it are refused; the AppArmor profile compiles; the PKGBUILD
# parses (makepkg refuses root, so as nobody); shellcheck on the PKGBUILD when available.
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

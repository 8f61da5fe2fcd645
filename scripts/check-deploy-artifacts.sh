#!/usr/bin/env bash
# Checks the deployment artifacts of txgate (run by `make deploy-check`, part of `make test`):
#   1. the OCI image layout is reproducible (built twice, same manifest digest),
#   2. skopeo reads it; it is Istio's compat Wasm image (one tar+gzip layer, compat annotation)
#      and its plugin.wasm is byte for byte the current release wasm,
#   3. the istio/ manifests rendered for this image carry its manifest digest as sha256,
#   4. every manifest (committed and rendered) passes the vendored Istio CRD schemas, and a broken
#      manifest is rejected (the check can fail).
# Usage: scripts/check-deploy-artifacts.sh WASM LAYOUT TAG
set -euo pipefail
cd "$(dirname "$0")/.."
WASM="$1"; LAYOUT="$2"; TAG="$3"
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
fail() { echo "deploy-check: FAIL: $*" >&2; exit 1; }

digest="$(python3 scripts/build-oci-image.py "$WASM" "$LAYOUT" "$TAG")"
again="$(python3 scripts/build-oci-image.py "$WASM" "$work/again" "$TAG")"
[ "$digest" = "$again" ] || fail "image not reproducible: $digest vs $again"
cmp -s "$LAYOUT/index.json" "$work/again/index.json" || fail "index.json differs between builds"
echo "image: reproducible, manifest $digest"

inspected="$(skopeo inspect --format '{{.Digest}}' "oci:$LAYOUT:$TAG")"
[ "$inspected" = "$digest" ] || fail "skopeo sees $inspected, build printed $digest"
skopeo inspect --raw "oci:$LAYOUT:$TAG" > "$work/manifest.json"
[ "sha256:$(sha256sum < "$work/manifest.json" | cut -d' ' -f1)" = "$digest" ] || fail "raw manifest digest"
python3 - "$work/manifest.json" <<'PY' || fail "not an Istio compat Wasm image"
import json, sys
m = json.load(open(sys.argv[1]))
assert len(m["layers"]) == 1, m["layers"]
assert m["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip", m["layers"][0]
assert m["annotations"]["module.wasm.image/variant"] == "compat", m.get("annotations")
PY
# skopeo copy verifies every blob against its digest on the way.
skopeo copy -q "oci:$LAYOUT:$TAG" "dir:$work/copy"
layer="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["layers"][0]["digest"].split(":")[1])' "$work/manifest.json")"
tar -xzOf "$work/copy/$layer" plugin.wasm > "$work/plugin.wasm"
cmp -s "$work/plugin.wasm" "$WASM" || fail "plugin.wasm in the image is not $WASM"
echo "image: skopeo inspect ok, compat layer sha256:$layer holds $WASM ($(stat -c %s "$WASM") bytes, sha256 $(sha256sum < "$WASM" | cut -d' ' -f1))"

python3 scripts/render-istio.py "$digest" registry.example.com target/istio > /dev/null
for f in target/istio/wasmplugin-*.yaml; do
  got="$(sed -n 's/^  sha256: *\([0-9a-f]\{64\}\) *$/\1/p' "$f")"
  [ "sha256:$got" = "$digest" ] || fail "$f has sha256 '$got', image is $digest"
done
echo "istio: rendered WasmPlugins in target/istio/ carry sha256 ${digest#sha256:}"
for f in istio/wasmplugin-*.yaml; do
  grep -q "sha256: ${digest#sha256:}" "$f" || echo "istio: note: $f pins an older build; \`make istio-pin\` updates it"
done

node istio/schemas/validate.mjs istio/*.yaml target/istio/*.yaml
sed 's/failStrategy: FAIL_CLOSE/failStrategy: FAIL_CLOSED/' istio/wasmplugin-sidecar.yaml > "$work/broken-wasmplugin.yaml"
sed 's/mode: SIMPLE/mode: SIMPLE_TLS/' istio/explorer-public.yaml > "$work/broken-dr.yaml"
for broken in "$work/broken-wasmplugin.yaml" "$work/broken-dr.yaml"; do
  if node istio/schemas/validate.mjs "$broken" > "$work/out" 2>&1; then
    cat "$work/out"; fail "schema check accepted the broken manifest $(basename "$broken")"
  fi
done
echo "istio: broken manifests rejected by the schema check (as they must be)"
echo "deploy-check: ok"

#!/usr/bin/env bash
# Re-extracts the Istio CRD validators vendored under istio/schemas/istio-<version>/ from the npm
# package @kubernetes-models/istio, which compiles the openAPIV3Schema of Istio's own CRDs
# (manifests/charts/base/files/crd-all.gen.yaml of the Istio release named in its package.json,
# "crd-generate.input") into Ajv standalone validators. Only the kinds txgate ships are kept.
# Usage: scripts/extract-istio-schemas.sh [PACKAGE_VERSION]   (needs npm and the npm registry)
set -euo pipefail
cd "$(dirname "$0")/.."
PKG_VERSION="${1:-3.0.1}"
KINDS=(ExtensionsIstioIoV1alpha1WasmPlugin NetworkingIstioIoV1ServiceEntry
       NetworkingIstioIoV1DestinationRule NetworkingIstioIoV1Sidecar)
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "@kubernetes-models/istio@$PKG_VERSION" >/dev/null)
tar -xzf "$work"/kubernetes-models-istio-"$PKG_VERSION".tgz -C "$work"
istio_version="$(node -e '
  const p = require(process.argv[1]);
  const m = p["crd-generate"].input.map(u => u.match(/istio\/([0-9.]+)\/.*crd-all\.gen\.yaml$/)).find(Boolean);
  if (!m) { console.error("no crd-all.gen.yaml input in package.json"); process.exit(1); }
  console.log(m[1]);' "$work/package/package.json")"
dest="istio/schemas/istio-$istio_version"
rm -rf istio/schemas/istio-*/
mkdir -p "$dest"
for k in "${KINDS[@]}"; do cp "$work/package/_schemas/$k.js" "$dest/$k.js"; done
cp "$work/package/LICENSE" "$dest/LICENSE" 2>/dev/null || true
{
  echo "package: @kubernetes-models/istio@$PKG_VERSION"
  echo "integrity: $(cd "$work" && npm view "@kubernetes-models/istio@$PKG_VERSION" dist.integrity)"
  echo "istio: $istio_version ($(node -e 'console.log(require(process.argv[1])["crd-generate"].input.join(" "))' "$work/package/package.json"))"
  echo "files:"; (cd "$dest" && sha256sum ./*.js)
} > "$dest/SOURCE"
echo "extracted ${#KINDS[@]} validators for Istio $istio_version into $dest"

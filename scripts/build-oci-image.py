#!/usr/bin/env python3
"""Write txgate.wasm as an OCI image layout in Istio's Wasm image format, reproducibly.

Format: the *compat* variant of the Wasm image spec (solo-io/wasm spec-compat.md), which Istio's
puller (pkg/wasm/imagefetcher.go, extractOCIStandardImage) reads: one
`application/vnd.oci.image.layer.v1.tar+gzip` layer holding `plugin.wasm`, and the manifest
annotation `module.wasm.image/variant: compat`. Standard media types, so any OCI registry and skopeo,
crane, oras or docker can copy it.

Reproducible: no timestamps (tar mtime, gzip mtime and config `created` are fixed to
SOURCE_DATE_EPOCH, default 0), uid/gid 0, fixed modes, sorted compact JSON. The same wasm gives the
same manifest digest, which is what Istio compares a WasmPlugin's `sha256` with for oci:// URLs
(pkg/wasm/cache.go: the digest returned by PrepareFetch is the image manifest digest).

Usage: build-oci-image.py WASM LAYOUT_DIR TAG   (prints the manifest digest)
Only the Python standard library is used.
"""
import datetime
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile

MANIFEST_MT = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MT = "application/vnd.oci.image.config.v1+json"
LAYER_MT = "application/vnd.oci.image.layer.v1.tar+gzip"


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(wasm, epoch):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("plugin.wasm")
        info.size = len(wasm)
        info.mtime = epoch
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(wasm))
    return buf.getvalue()


def gzip_bytes(data, epoch):
    buf = io.BytesIO()
    # filename="" and a fixed mtime keep the gzip header free of build details.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=epoch, compresslevel=9) as gz:
        gz.write(data)
    return buf.getvalue()


def build(wasm_path, layout, tag):
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    with open(wasm_path, "rb") as f:
        wasm = f.read()
    if wasm[:4] != b"\0asm":
        sys.exit(f"{wasm_path} is not a wasm module")
    tar = layer_tar(wasm, epoch)
    layer = gzip_bytes(tar, epoch)
    created = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    config = canonical({
        "architecture": "wasm",
        "os": "wasip1",
        "created": created,
        "config": {"Labels": {"org.opencontainers.image.title": "txgate"}},
        "rootfs": {"type": "layers", "diff_ids": [sha256(tar)]},
    })
    manifest = canonical({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MT,
        "config": {"mediaType": CONFIG_MT, "digest": sha256(config), "size": len(config)},
        "layers": [{
            "mediaType": LAYER_MT, "digest": sha256(layer), "size": len(layer),
            "annotations": {"org.opencontainers.image.title": "plugin.wasm"},
        }],
        "annotations": {
            "module.wasm.image/variant": "compat",
            "org.opencontainers.image.title": "txgate",
            "org.opencontainers.image.version": tag,
            "org.opencontainers.image.created": created,
            "io.txgate.wasm.sha256": hashlib.sha256(wasm).hexdigest(),
        },
    })
    index = canonical({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": MANIFEST_MT, "digest": sha256(manifest), "size": len(manifest),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    })
    if os.path.exists(layout):
        shutil.rmtree(layout)
    blobs = os.path.join(layout, "blobs", "sha256")
    os.makedirs(blobs)
    for blob in (config, layer, manifest):
        with open(os.path.join(blobs, hashlib.sha256(blob).hexdigest()), "wb") as f:
            f.write(blob)
    with open(os.path.join(layout, "oci-layout"), "wb") as f:
        f.write(canonical({"imageLayoutVersion": "1.0.0"}))
    with open(os.path.join(layout, "index.json"), "wb") as f:
        f.write(index)
    return sha256(manifest)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    print(build(*sys.argv[1:]))

#!/usr/bin/env python3
"""Renders istio/*.yaml for one image: every WasmPlugin's `sha256:` becomes DIGEST (the OCI manifest
digest printed by `make image`) and its `url: oci://HOST/txgate:TAG` points at REGISTRY.

Usage: render-istio.py DIGEST REGISTRY OUT_DIR [FILES...]   (writes OUT_DIR/<name>.yaml)
       render-istio.py --pin DIGEST [FILES...]             (updates only the sha256 in place)
Line-based, so comments and layout stay as written. Only the standard library is used.
"""
import glob
import os
import re
import sys

SHA = re.compile(r"^(\s*sha256:\s*)[0-9a-f]{64}(\s*)$", re.M)
URL = re.compile(r"^(\s*url:\s*oci://)[^/\s]+(?:/[^\s]*)?/(txgate:[^\s@]+)(\s*)$", re.M)


def render(text, digest, registry):
    if "kind: WasmPlugin" not in text:
        return text
    text, n = SHA.subn(lambda m: m.group(1) + digest + m.group(2), text)
    if n != 1:
        sys.exit(f"expected one sha256 line per WasmPlugin file, found {n}")
    if registry is not None:
        text, n = URL.subn(lambda m: m.group(1) + registry + "/" + m.group(2) + m.group(3), text)
        if n != 1:
            sys.exit(f"expected one oci:// url line per WasmPlugin file, found {n}")
    return text


def main(argv):
    pin = argv[:1] == ["--pin"]
    if pin:
        digest, registry, out_dir, files = argv[1], None, None, argv[2:]
    else:
        if len(argv) < 3:
            sys.exit(__doc__)
        digest, registry, out_dir, files = argv[0], argv[1], argv[2], argv[3:]
    digest = digest.removeprefix("sha256:")
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        sys.exit(f"not a sha256 digest: {digest}")
    files = files or sorted(glob.glob("istio/*.yaml"))
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    for path in files:
        with open(path) as f:
            text = f.read()
        out = render(text, digest, registry)
        target = path if pin else os.path.join(out_dir, os.path.basename(path))
        if not pin or out != text:
            with open(target, "w") as f:
                f.write(out)
            print(f"{'pinned' if pin else 'rendered'} {target}")


if __name__ == "__main__":
    main(sys.argv[1:])

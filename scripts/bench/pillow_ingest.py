#!/usr/bin/env python3
"""The Pillow peer of `deno task ingest` for bench/ingest.ts.

Does, in one process, what the reference pipeline does per image: read the
file, decode, convert to RGB, resize to SIZE x SIZE with Lanczos (aspect not
kept), encode PNG, and append it to a tar (so both sides pay for output I/O).
Prints one JSON line: {"images": N, "seconds": T, "rate": N / T}.

Usage: /usr/bin/python3 scripts/bench/pillow_ingest.py --input DIR --out FILE.tar [--size 224]
"""
import argparse
import io
import json
import os
import sys
import tarfile
import time

from PIL import Image

EXTENSIONS = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}


def list_images(root):
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for f in sorted(filenames):
            if os.path.splitext(f)[1].lower() in EXTENSIONS:
                out.append(os.path.join(dirpath, f))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", required=True, help="folder of images (searched recursively)")
    ap.add_argument("--out", required=True, help="tar file to write the PNGs to")
    ap.add_argument("--size", type=int, default=224, help="output side in pixels")
    args = ap.parse_args()
    paths = list_images(args.input)
    if not paths:
        sys.exit(f"no images under --input {args.input}")
    t0 = time.perf_counter()
    with tarfile.open(args.out, "w") as tar:
        for i, p in enumerate(paths):
            with open(p, "rb") as f:
                data = f.read()
            im = Image.open(io.BytesIO(data)).convert("RGB")
            im = im.resize((args.size, args.size), Image.LANCZOS)
            buf = io.BytesIO()
            im.save(buf, "PNG")
            info = tarfile.TarInfo(f"{i:08d}.png")
            info.size = buf.tell()
            buf.seek(0)
            tar.addfile(info, buf)
    seconds = time.perf_counter() - t0
    print(json.dumps({"images": len(paths), "seconds": seconds, "rate": len(paths) / seconds}))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The Pillow peer of `deno task ingest` for bench/ingest.ts.

Does what the reference pipeline does per image: read the file, decode, convert to RGB,
resize to SIZE x SIZE with Lanczos (aspect not kept), encode PNG (Pillow's defaults), and
append it to a tar (so both sides pay for output I/O). One iteration ingests the whole
folder; with `--procs N` > 1, N worker processes (a pool started once) decode, resize and
encode while the main process writes the tar, as bloom's workers do. Iterations are timed by
the protocol of serve.py (bench/peers.ts); items are images.

Usage: /usr/bin/python3 scripts/bench/pillow_ingest.py --input DIR --out FILE.tar [--size 224]
       [--procs 1] [--serve]
"""
import argparse
import io
import os
import sys
import tarfile
from multiprocessing import Pool

from PIL import Image

import serve

EXTENSIONS = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}
SIZE = 224


def list_images(root):
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for f in sorted(filenames):
            if os.path.splitext(f)[1].lower() in EXTENSIONS:
                out.append(os.path.join(dirpath, f))
    return out


def convert(path):
    with open(path, "rb") as f:
        data = f.read()
    im = Image.open(io.BytesIO(data)).convert("RGB")
    im = im.resize((SIZE, SIZE), Image.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def main():
    global SIZE
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", required=True, help="folder of images (searched recursively)")
    ap.add_argument("--out", required=True, help="tar file to write the PNGs to")
    ap.add_argument("--size", type=int, default=224, help="output side in pixels")
    ap.add_argument("--procs", type=int, default=1, help="worker processes (1: this one)")
    serve.add_args(ap, warmup=0, iters=1)
    args = ap.parse_args()
    SIZE = args.size
    paths = list_images(args.input)
    if not paths:
        sys.exit(f"no images under --input {args.input}")
    pool = Pool(args.procs) if args.procs > 1 else None

    def ingest():
        pngs = pool.imap(convert, paths, chunksize=4) if pool else map(convert, paths)
        with tarfile.open(args.out, "w") as tar:
            for i, png in enumerate(pngs):
                info = tarfile.TarInfo(f"{i:08d}.png")
                info.size = len(png)
                tar.addfile(info, io.BytesIO(png))

    try:
        serve.run("pillow_ingest", lambda: serve.timed(ingest), len(paths),
                  {"procs": args.procs, "threads": args.procs}, args)
    finally:
        if pool:
            pool.close()
            pool.join()


if __name__ == "__main__":
    main()

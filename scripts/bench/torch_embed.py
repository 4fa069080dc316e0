"""PyTorch CPU peer of bloom's embed benchmark: a folder of JPEGs → PIL decode →
Resize((224, 224), bilinear) → ImageNet normalisation → ViT-S forward (the
reference model, random weights) → CLS features → features.npy, batch by batch.
One iteration embeds the whole folder; iterations are timed by the protocol of
serve.py (bench/peers.ts): `--iters` after `--warmup`, or one per request with
`--serve`. Items are images. Debian's torch 1.13, `--threads` threads (default
one per CPU).

usage: torch_embed.py --input DIR --out FILE.npy [--batch 32] [--threads N] [--serve]
"""
import argparse
import os
import sys

import numpy as np

import serve

p = argparse.ArgumentParser()
p.add_argument("--input", required=True)
p.add_argument("--out", required=True)
p.add_argument("--batch", type=int, default=32)
serve.add_args(p)
a = p.parse_args()
try:
    import torch
    from PIL import Image
except ImportError as e:
    serve.emit({"peer": "torch_embed", "unavailable": f"not importable: {e}"})
    sys.exit(0)
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "reference"))
from dinov2_ref import make_vit, randomize  # noqa: E402

threads = serve.threads(a)
torch.set_num_threads(threads)
files = sorted(os.path.join(r, f) for r, _, fs in os.walk(a.input) for f in fs
               if f.lower().endswith((".jpg", ".jpeg", ".png")))
if not files:
    sys.exit(f"torch_embed.py: no images under --input {a.input}")
model = make_vit("vit_small", pos_grid=16)
randomize(model, 0)
model.eval()
mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)
std = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def run():
    feats = []
    with torch.inference_mode():
        for i in range(0, len(files), a.batch):
            xs = []
            for f in files[i:i + a.batch]:
                img = Image.open(f).convert("RGB").resize((224, 224), Image.BILINEAR)
                xs.append(((np.asarray(img, dtype=np.float32) / 255.0 - mean) / std).transpose(2, 0, 1))
            x = torch.from_numpy(np.stack(xs))
            feats.append(model.forward_features(x)["clsNorm"].numpy())
    np.save(a.out, np.concatenate(feats))


serve.run("torch_embed", lambda: serve.timed(run), len(files),
          {"torch": torch.__version__, "threads": threads, "batch": a.batch}, a)

"""PyTorch CPU peer of bloom's embed benchmark: a folder of JPEGs → PIL decode →
Resize((224, 224), bilinear) → ImageNet normalisation → ViT-S forward (the
reference model, random weights) → CLS features → features.npy, batch by batch.
Prints {"images": N, "seconds": S, "rate": N/S} (median of --repeat runs after
one warm-up run). Debian's torch 1.13, all cores.

usage: torch_embed.py --input DIR --out FILE.npy [--batch 32] [--repeat 3]
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "reference"))
from dinov2_ref import make_vit, randomize  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--input", required=True)
p.add_argument("--out", required=True)
p.add_argument("--batch", type=int, default=32)
p.add_argument("--repeat", type=int, default=3)
a = p.parse_args()
torch.set_num_threads(os.cpu_count() or 1)
files = sorted(os.path.join(r, f) for r, _, fs in os.walk(a.input) for f in fs
               if f.lower().endswith((".jpg", ".jpeg", ".png")))
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


run()
times = []
for _ in range(a.repeat):
    t0 = time.perf_counter()
    run()
    times.append(time.perf_counter() - t0)
s = sorted(times)[len(times) // 2]
print(json.dumps({"images": len(files), "seconds": s, "rate": len(files) / s}))

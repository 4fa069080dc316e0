"""Oracle for bloom's embed command: the evaluation pipeline in PyTorch —
PIL image → RGB → Resize((S, S), bilinear) → ToTensor → ImageNet Normalize →
DINOv2 ViT → CLS after the final norm — for every image of a folder.

usage: embed_reference.py CHECKPOINT(.pth, DINOv2 hub layout) SIZE OUT.json IMAGE...
Writes {"path": [features...]} for each image. Built with the reference model in
scripts/reference/dinov2_ref.py (heads and sizes read from the checkpoint and argv).
"""
import json
import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "reference"))
from dinov2_ref import make_vit  # noqa: E402

ckpt, size, out, images = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
heads = int(os.environ.get("BLOOM_HEADS", "0"))
sd = torch.load(ckpt)
dim = sd["cls_token"].shape[-1]
depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
grid = int(round((sd["pos_embed"].shape[1] - 1) ** 0.5))
model = make_vit(dim=dim, depth=depth, heads=heads or dim // 64, mlp_hidden=sd["blocks.0.mlp.fc1.weight"].shape[0],
                 pos_grid=grid)
model.load_state_dict(sd)
model.eval()
mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)
std = np.array([0.229, 0.224, 0.225], dtype=np.float32)
res = {}
with torch.no_grad():
    for p in images:
        img = Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR)
        x = (np.asarray(img, dtype=np.float32) / 255.0 - mean) / std
        x = torch.from_numpy(x.transpose(2, 0, 1).copy()).unsqueeze(0)
        res[p] = model.forward_features(x)["clsNorm"][0].tolist()
json.dump(res, open(out, "w"))

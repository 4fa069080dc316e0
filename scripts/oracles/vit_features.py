"""Oracle for bloom's ViT tests: builds a DINOv2-format ViT with seeded random
weights, saves it the ways users receive it, and writes PyTorch's outputs.

usage: vit_features.py OUTDIR --arch vit_small|custom [--dim 32 --depth 2 --heads 2
       --mlp 64 --ffn mlp|swiglu --registers 0 --pos-grid 16] --image 224 --batch 2
       [--seed 0] [--masks] [--grads]

Writes to OUTDIR:
  hub.pth          torch.save(state_dict)                 (DINOv2 hub layout)
  dinobloom.pth    torch.save({"teacher": {"backbone.…", "dino_head.…"}})
  model.safetensors  timm-style names (no prefix)
  images.npy       [B, 3, S, S] float32 normalised inputs
  masks.npy        [B, Np] uint8 (with --masks)
  proj_*.npy       fixed projections for the backward check
  out_*.npy        clsNorm, patchNorm, cls, patch
  grad_*.npy       d(Σ proj·outputs)/d(param) for a few parameters (with --grads)
  meta.json        config and the names of the gradient files
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "reference"))
from dinov2_ref import ARCHS, DINOHead, make_vit, randomize, write_safetensors  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--arch", default="custom")
p.add_argument("--dim", type=int, default=32)
p.add_argument("--depth", type=int, default=2)
p.add_argument("--heads", type=int, default=2)
p.add_argument("--mlp", type=int, default=64)
p.add_argument("--ffn", default="mlp")
p.add_argument("--registers", type=int, default=0)
p.add_argument("--pos-grid", type=int, default=16)
p.add_argument("--interp", default="runtime")
p.add_argument("--image", type=int, default=224)
p.add_argument("--batch", type=int, default=2)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--masks", action="store_true")
p.add_argument("--grads", action="store_true")
p.add_argument("--head", action="store_true", help="also save a small DINO head in dinobloom.pth")
a = p.parse_args()
os.makedirs(a.out, exist_ok=True)
torch.set_num_threads(max(1, os.cpu_count() or 1))

if a.arch != "custom":
    cfg = dict(ARCHS[a.arch])
else:
    cfg = dict(dim=a.dim, depth=a.depth, heads=a.heads, mlp_hidden=a.mlp, ffn=a.ffn)
model = make_vit(**cfg, pos_grid=a.pos_grid, registers=a.registers, interp=a.interp)
randomize(model, a.seed)
sd = model.state_dict()
torch.save(sd, os.path.join(a.out, "hub.pth"))
teacher = {f"backbone.{k}": v for k, v in sd.items()}
if a.head:
    head = DINOHead(cfg["dim"], hidden=16, bottleneck=8, prototypes=32)
    randomize(head, a.seed + 7)
    teacher.update({f"dino_head.{k}": v for k, v in head.state_dict().items()})
    teacher.update({f"ibot_head.{k}": v for k, v in head.state_dict().items()})
torch.save({"teacher": teacher}, os.path.join(a.out, "dinobloom.pth"))
write_safetensors(os.path.join(a.out, "model.safetensors"), sd, {"format": "pt"})

g = torch.Generator().manual_seed(a.seed + 1)
images = torch.randn(a.batch, 3, a.image, a.image, generator=g)
np.save(os.path.join(a.out, "images.npy"), images.numpy())
npatch = (a.image // 14) ** 2
masks = None
if a.masks:
    masks = torch.rand(a.batch, npatch, generator=g) < 0.3
    np.save(os.path.join(a.out, "masks.npy"), masks.numpy().astype(np.uint8))

out = model.forward_features(images, masks)
loss = 0
for k, v in out.items():
    proj = torch.randn(v.shape, generator=g)
    np.save(os.path.join(a.out, f"proj_{k}.npy"), proj.numpy())
    np.save(os.path.join(a.out, f"out_{k}.npy"), v.detach().numpy())
    loss = loss + (proj * v).sum()
grads = []
if a.grads:
    loss.backward()
    names = ["cls_token", "pos_embed", "patch_embed.proj.weight", "norm.weight", "norm.bias",
             "blocks.0.attn.qkv.weight", "blocks.0.ls1.gamma", f"blocks.{cfg['depth'] - 1}.norm2.bias"]
    names += ["blocks.0.mlp.fc1.weight"] if cfg["ffn"] == "mlp" else ["blocks.0.mlp.w12.weight"]
    if masks is not None:
        names.append("mask_token")
    if a.registers:
        names.append("register_tokens")
    params = dict(model.named_parameters())
    for n in names:
        np.save(os.path.join(a.out, f"grad_{n}.npy"), params[n].grad.numpy())
        grads.append(n)
meta = dict(cfg, pos_grid=a.pos_grid, registers=a.registers, image=a.image, batch=a.batch,
            grads=grads, interp=a.interp, loss=float(loss))
json.dump(meta, open(os.path.join(a.out, "meta.json"), "w"), indent=1)

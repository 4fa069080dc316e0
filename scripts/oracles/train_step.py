"""Oracle for bloom's training step: one DinoBloom iteration in PyTorch,
transcribed from docs/recipe.md (DINOv2's ssl_meta_arch forward_backward
with two global crops and no local crops, its losses, parameter groups, AdamW,
per-module gradient clipping and the EMA teacher update).

usage: train_step.py DIR
DIR holds (written by the test):
  config.json   {"vit": {...}, "head": {...}, "lr", "wd", "momentum", "teacher_temp",
                 "last_layer_lr", "patch_embed_lr_mult", "clip", "koleo_eps",
                 "centering": "sinkhorn_knopp"|"centering", "steps": n}
  init.pth      {"teacher": {"backbone.…", "dino_head.…", "ibot_head.…"}} (student = teacher at start)
  crops_<i>.npy [2B, 3, S, S] global crops of step i, crop-major (crop 1 of every image, then crop 2)
  masks_<i>.npy [2B, Np] uint8
It writes:
  losses.json   per step: dino, ibot, koleo, total, grad norms per module
  student.pth / teacher.pth   state dicts after the last step
"""
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "reference"))
from dinov2_ref import DINOHead, make_vit  # noqa: E402

d = sys.argv[1]
cfg = json.load(open(os.path.join(d, "config.json")))
torch.set_num_threads(max(1, os.cpu_count() or 1))
v, h = cfg["vit"], cfg["head"]


def build():
    backbone = make_vit(dim=v["dim"], depth=v["depth"], heads=v["heads"], mlp_hidden=v["mlp"],
                        ffn=v.get("ffn", "mlp"), pos_grid=v["pos_grid"], registers=v.get("registers", 0))
    heads = {k: DINOHead(v["dim"], h["hidden"], h["bottleneck"], h["prototypes"]) for k in ("dino_head", "ibot_head")}
    return {"backbone": backbone, **heads}


student, teacher = build(), build()
init = torch.load(os.path.join(d, "init.pth"))["teacher"]
for name, m in student.items():
    sd = {k[len(name) + 1:]: t for k, t in init.items() if k.startswith(name + ".")}
    m.load_state_dict(sd)
    teacher[name].load_state_dict(sd)
for m in teacher.values():
    for p in m.parameters():
        p.requires_grad_(False)


def lr_decay_rate(name, rate, num_layers):
    layer = num_layers + 1
    if num_layers > 0:
        if any(k in name for k in ("pos_embed", "patch_embed", "mask_token", "cls_token", "register_tokens")):
            layer = 0
        elif "blocks." in name and "residual." not in name:
            layer = int(name[name.find("blocks."):].split(".")[1]) + 1
    return rate ** (num_layers + 1 - layer)


groups = []
for mname, m in student.items():
    n_blocks = len(m.blocks) if mname == "backbone" else 0
    for name, p in m.named_parameters():
        lr_mult = lr_decay_rate(name, cfg.get("layer_decay", 1.0), n_blocks)
        wd_mult = 0.0 if (name.endswith(".bias") or "norm" in name or "gamma" in name) else 1.0
        if "patch_embed" in name:
            lr_mult *= cfg["patch_embed_lr_mult"]
        groups.append({"params": [p], "lr_multiplier": lr_mult, "wd_multiplier": wd_mult,
                       "is_last_layer": "last_layer" in name, "lr": 0.0, "weight_decay": 0.0})
opt = torch.optim.AdamW(groups, betas=(0.9, 0.999))


def sinkhorn(t, temp, n=3, count=None):
    Q = torch.exp(t / temp).t()
    B = Q.shape[1] if count is None else count
    K = Q.shape[0]
    Q /= torch.sum(Q)
    for _ in range(n):
        Q /= torch.sum(Q, dim=1, keepdim=True)
        Q /= K
        Q /= torch.sum(Q, dim=0, keepdim=True)
        Q /= B
    Q *= B
    return Q.t()


def koleo(x, eps):
    x = F.normalize(x, eps=eps, p=2, dim=-1)
    dots = x @ x.t()
    n = x.shape[0]
    dots.view(-1)[:: (n + 1)].fill_(-1)
    _, I = torch.max(dots, dim=1)
    dist = torch.nn.PairwiseDistance(2, eps=1e-8)(x, x[I])
    return -torch.log(dist + eps).mean()


centers = {"dino": torch.zeros(1, h["prototypes"]), "ibot": torch.zeros(1, 1, h["prototypes"])}
log = []
for step in range(cfg.get("steps", 1)):
    s = cfg["schedule"][step]
    for g in opt.param_groups:
        g["weight_decay"] = s["wd"] * g["wd_multiplier"]
        g["lr"] = (s["last_layer_lr"] if g["is_last_layer"] else s["lr"]) * g["lr_multiplier"]
    crops = torch.from_numpy(np.load(os.path.join(d, f"crops_{step}.npy")))
    masks = torch.from_numpy(np.load(os.path.join(d, f"masks_{step}.npy"))).bool()
    temp = s["teacher_temp"]
    B2 = crops.shape[0]
    mask_idx = masks.flatten().nonzero().flatten()
    n_masked = mask_idx.shape[0]
    masks_weight = (1 / masks.sum(-1).clamp(min=1.0)).unsqueeze(-1).expand_as(masks)[masks]

    with torch.no_grad():
        tout = teacher["backbone"].forward_features(crops)
        tcls = tout["clsNorm"].chunk(2)
        tcls = torch.cat((tcls[1], tcls[0]))
        tpatch = tout["patchNorm"].flatten(0, 1).index_select(0, mask_idx)
        tcls_h = teacher["dino_head"](tcls)
        tpatch_h = teacher["ibot_head"](tpatch)
        if cfg["centering"] == "sinkhorn_knopp":
            t_dino = sinkhorn(tcls_h, temp)
            t_ibot = sinkhorn(tpatch_h, temp, count=n_masked)
        else:
            t_dino = F.softmax((tcls_h - centers["dino"]) / temp, dim=-1)
            t_ibot = F.softmax((tpatch_h.unsqueeze(0) - centers["ibot"]) / temp, dim=-1).squeeze(0)
            centers["dino"] = centers["dino"] * 0.9 + tcls_h.mean(0, keepdim=True) * 0.1
            centers["ibot"] = centers["ibot"] * 0.9 + tpatch_h.mean(0, keepdim=True).unsqueeze(0) * 0.1

    sout = student["backbone"].forward_features(crops, masks)
    scls = sout["clsNorm"]
    spatch = sout["patchNorm"].flatten(0, 1).index_select(0, mask_idx)
    scls_h = student["dino_head"](scls)
    spatch_h = student["ibot_head"](spatch)
    st = 0.1
    dino = -torch.sum(t_dino * F.log_softmax(scls_h / st, dim=-1), dim=-1).mean()
    ibot = -(torch.sum(t_ibot * F.log_softmax(spatch_h / st, dim=-1), dim=-1) * masks_weight).sum() / B2
    ko = sum(koleo(p, cfg["koleo_eps"]) for p in scls.chunk(2))
    total = 0.5 * dino + 1.0 * ibot + 0.1 * ko
    opt.zero_grad(set_to_none=True)
    total.backward()
    norms = {}
    for name, m in student.items():
        norms[name] = float(torch.nn.utils.clip_grad_norm_(m.parameters(), cfg["clip"]))
    opt.step()
    with torch.no_grad():
        mom = s["momentum"]
        for name in student:
            for ps, pt in zip(student[name].parameters(), teacher[name].parameters()):
                pt.mul_(mom).add_(ps.detach(), alpha=1 - mom)
    log.append({"dino": float(dino), "ibot": float(ibot), "koleo": float(ko), "total": float(total),
                "grad_norms": norms, "masked": int(n_masked)})

json.dump(log, open(os.path.join(d, "losses.json"), "w"), indent=1)
for tag, model in (("student", student), ("teacher", teacher)):
    sd = {}
    for name, m in model.items():
        sd.update({f"{name}.{k}": t for k, t in m.state_dict().items()})
    torch.save(sd, os.path.join(d, f"{tag}.pth"))

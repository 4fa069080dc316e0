#!/usr/bin/env python3
"""The PyTorch CPU peer of bench/train.ts: one DinoBloom training step, timed.

The step is the one scripts/oracles/train_step.py checks bloom against (two global crops, no
local crops): teacher forward without gradients, Sinkhorn-Knopp targets (crops swapped), student
forward with iBOT masks, DINO + iBOT + KoLeo losses, backward, per-module gradient clipping,
AdamW over DINOv2's parameter groups, and the EMA teacher update. The model comes from
scripts/reference/dinov2_ref.py; the oracle's own loss functions (sinkhorn, koleo,
lr_decay_rate) are loaded from its source rather than copied, because the oracle is a script
that runs on import and those definitions are the ones the training-step test validates.
Differences from the oracle, both as DINOv2 runs: parameter groups are fused by their
(lr, wd, last-layer) multipliers, and the EMA uses torch._foreach ops.

Crops are random; masks come from bloom (--masks, uint8 [2B, Np] .npy from batchMasks) so both
sides do the same iBOT work. Times steps by the protocol of serve.py (bench/peers.ts): `--iters`
after `--warmup`, or one per request with `--serve`; {"peer": "torch_train_step", "ms": [...],
"items": B, ...} where an item is one image (two crops), or {"peer": ..., "unavailable": "..."}
without torch. `--threads` sets torch's threads (default one per CPU).

Usage: /usr/bin/python3 scripts/bench/torch_train_step.py --dim 384 --depth 12 --heads 6
       --mlp 1536 --pos-grid 16 --image 224 --batch 8 --hidden 2048 --bottleneck 256
       --prototypes 65536 --masks masks.npy [--warmup 1] [--iters 3]
"""
import argparse
import ast
import json
import os
import sys
import time

import serve

HERE = os.path.dirname(os.path.abspath(__file__))
ORACLE = os.path.join(HERE, "..", "oracles", "train_step.py")


def oracle_functions(names, namespace):
    """The named top-level functions of the oracle script, without running the script."""
    with open(ORACLE) as f:
        tree = ast.parse(f.read(), ORACLE)
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
    missing = sorted(set(names) - {d.name for d in defs})
    if missing:
        sys.exit(f"torch_train_step.py: {ORACLE} no longer defines {', '.join(missing)}; "
                 "update the peer to where they moved")
    exec(compile(ast.Module(body=defs, type_ignores=[]), ORACLE, "exec"), namespace)
    return [namespace[n] for n in names]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for k in ("dim", "depth", "heads", "mlp", "pos-grid", "image", "batch", "hidden",
              "bottleneck", "prototypes"):
        ap.add_argument(f"--{k}", type=int, required=True)
    ap.add_argument("--patch", type=int, default=14)
    ap.add_argument("--masks", required=True, help="uint8 [2B, Np] .npy, crop-major")
    ap.add_argument("--clip", type=float, default=3.0)
    ap.add_argument("--koleo-eps", type=float, default=1e-4)
    ap.add_argument("--patch-embed-lr-mult", type=float, default=0.2)
    serve.add_args(ap)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    try:
        import numpy as np
        import torch
        import torch.nn.functional as F
    except ImportError as e:
        print(json.dumps({"peer": "torch_train_step", "unavailable": f"not importable: {e}"}))
        return
    sys.path.insert(0, os.path.join(HERE, "..", "reference"))
    from dinov2_ref import DINOHead, make_vit, randomize

    sinkhorn, koleo, lr_decay_rate = oracle_functions(
        ["sinkhorn", "koleo", "lr_decay_rate"], {"torch": torch, "F": F})
    threads = serve.threads(args)
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    B, S = args.batch, args.image
    masks = torch.from_numpy(np.load(args.masks)).bool()
    n_patches = (S // args.patch) ** 2
    if tuple(masks.shape) != (2 * B, n_patches):
        sys.exit(f"torch_train_step.py: --masks {args.masks} is {tuple(masks.shape)}, "
                 f"expected (2·batch, patches) = ({2 * B}, {n_patches})")

    def build():
        backbone = make_vit(dim=args.dim, depth=args.depth, heads=args.heads, mlp_hidden=args.mlp,
                            patch=args.patch, pos_grid=args.pos_grid)
        heads = {k: DINOHead(args.dim, args.hidden, args.bottleneck, args.prototypes)
                 for k in ("dino_head", "ibot_head")}
        return {"backbone": backbone, **heads}

    student, teacher = build(), build()
    for i, (name, m) in enumerate(student.items()):
        randomize(m, args.seed + i)
        teacher[name].load_state_dict(m.state_dict())
    for m in teacher.values():
        for p in m.parameters():
            p.requires_grad_(False)

    # DINOv2's parameter groups (the oracle's rules), fused by their multipliers.
    fused = {}
    for mname, m in student.items():
        n_blocks = len(m.blocks) if mname == "backbone" else 0
        for name, p in m.named_parameters():
            lr_mult = lr_decay_rate(name, 1.0, n_blocks)
            wd_mult = 0.0 if (name.endswith(".bias") or "norm" in name or "gamma" in name) else 1.0
            if "patch_embed" in name:
                lr_mult *= args.patch_embed_lr_mult
            key = (lr_mult, wd_mult, "last_layer" in name)
            fused.setdefault(key, []).append(p)
    groups = [{"params": ps, "lr": 1e-4 * k[0], "weight_decay": 0.04 * k[1]}
              for k, ps in fused.items()]
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.999))
    s_params = [p for m in student.values() for p in m.parameters()]
    t_params = [p for m in teacher.values() for p in m.parameters()]
    crops = torch.randn(2 * B, 3, S, S)
    mask_idx = masks.flatten().nonzero().flatten()
    n_masked = mask_idx.shape[0]
    masks_weight = (1 / masks.sum(-1).clamp(min=1.0)).unsqueeze(-1).expand_as(masks)[masks]
    temp, mom, st = 0.04, 0.994, 0.1

    def step():
        with torch.no_grad():
            tout = teacher["backbone"].forward_features(crops)
            tcls = tout["clsNorm"].chunk(2)
            tcls = torch.cat((tcls[1], tcls[0]))
            tpatch = tout["patchNorm"].flatten(0, 1).index_select(0, mask_idx)
            t_dino = sinkhorn(teacher["dino_head"](tcls), temp)
            t_ibot = sinkhorn(teacher["ibot_head"](tpatch), temp, count=n_masked)
        sout = student["backbone"].forward_features(crops, masks)
        scls = sout["clsNorm"]
        spatch = sout["patchNorm"].flatten(0, 1).index_select(0, mask_idx)
        scls_h = student["dino_head"](scls)
        spatch_h = student["ibot_head"](spatch)
        dino = -torch.sum(t_dino * F.log_softmax(scls_h / st, dim=-1), dim=-1).mean()
        ibot = -(torch.sum(t_ibot * F.log_softmax(spatch_h / st, dim=-1), dim=-1)
                 * masks_weight).sum() / (2 * B)
        ko = sum(koleo(p, args.koleo_eps) for p in scls.chunk(2))
        total = 0.5 * dino + 1.0 * ibot + 0.1 * ko
        opt.zero_grad(set_to_none=True)
        total.backward()
        for m in student.values():
            torch.nn.utils.clip_grad_norm_(m.parameters(), args.clip)
        opt.step()
        with torch.no_grad():
            torch._foreach_mul_(t_params, mom)
            torch._foreach_add_(t_params, s_params, alpha=1 - mom)
        return float(total)

    def timed_step():
        t0 = time.perf_counter()
        loss = step()
        ms = (time.perf_counter() - t0) * 1000
        if loss != loss:
            sys.exit("torch_train_step.py: the loss became NaN; the timing would not be of a "
                     "real step")
        return ms

    serve.run("torch_train_step", timed_step, B,
              {"masked": int(n_masked), "torch": torch.__version__, "threads": threads}, args)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The PyTorch CPU peer of bench/model.ts's ViT forward rows.

Builds the same DINOv2 ViT as bloom (scripts/reference/dinov2_ref.py, random weights), and
times the inference forward that bloom's row times: normalised images [B, 3, S, S] in, the
CLS token after the final norm out, under torch.inference_mode() with `--threads` threads
(default one per CPU). Times forwards by the protocol of serve.py (bench/peers.ts): `--iters`
after `--warmup`, or one per request with `--serve`:

  {"peer": "torch_vit", "ms": [...], "items": B, "torch": "1.13.1", "threads": N}

or {"peer": "torch_vit", "unavailable": "..."} where torch cannot be imported.

Usage: /usr/bin/python3 scripts/bench/torch_vit.py --arch vit_small --batch 32 [--image 224]
       [--dim D --depth L --heads H --mlp M] [--pos-grid 16] [--warmup 1] [--iters 3]
       [--threads N] [--serve]
"""
import argparse
import json
import os
import sys

import serve


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default=None, help="vit_small, vit_base, ... (or give the dims)")
    ap.add_argument("--dim", type=int)
    ap.add_argument("--depth", type=int)
    ap.add_argument("--heads", type=int)
    ap.add_argument("--mlp", type=int, help="FFN hidden width")
    ap.add_argument("--ffn", default=None, choices=["mlp", "swiglu"])
    ap.add_argument("--patch", type=int, default=14)
    ap.add_argument("--pos-grid", type=int, default=16)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--image", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    serve.add_args(ap)
    args = ap.parse_args()
    try:
        import torch
    except ImportError as e:
        print(json.dumps({"peer": "torch_vit", "unavailable": f"torch not importable: {e}"}))
        return
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "reference"))
    from dinov2_ref import make_vit, randomize

    over = {"patch": args.patch, "pos_grid": args.pos_grid}
    for k in ("dim", "depth", "heads", "ffn"):
        if getattr(args, k) is not None:
            over[k] = getattr(args, k)
    if args.mlp is not None:
        over["mlp_hidden"] = args.mlp
    if args.arch is None and not all(k in over for k in ("dim", "depth", "heads", "mlp_hidden")):
        sys.exit("torch_vit.py: give --arch or all of --dim --depth --heads --mlp")
    if args.iters < 1 or args.batch < 1:
        sys.exit("torch_vit.py: --iters and --batch must be at least 1")
    threads = serve.threads(args)
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    model = make_vit(args.arch, **over).eval()
    randomize(model, args.seed)
    x = torch.randn(args.batch, 3, args.image, args.image)

    def forward():
        with torch.inference_mode():
            out = model.forward_features(x)["clsNorm"]
            float(out[0, 0])  # the result is materialised before the clock stops

    serve.run("torch_vit", lambda: serve.timed(forward), args.batch,
              {"torch": torch.__version__, "threads": threads}, args)


if __name__ == "__main__":
    main()

"""A PyTorch DINOv2 vision transformer and DINO head, written from
docs/recipe.md and docs/checkpoints.md (DINOv2's module structure and state-dict names), used as the
oracle that bloom's ViT, checkpoint loaders and training step are compared to.

Run with Debian's /usr/bin/python3 (torch 1.13). Imported by the oracle and
fixture scripts beside it; it has no side effects.
"""
import json
import math
import struct

import torch
import torch.nn as nn
import torch.nn.functional as F

ARCHS = {
    "vit_small": dict(dim=384, depth=12, heads=6, mlp_hidden=1536, ffn="mlp"),
    "vit_base": dict(dim=768, depth=12, heads=12, mlp_hidden=3072, ffn="mlp"),
    "vit_large": dict(dim=1024, depth=24, heads=16, mlp_hidden=4096, ffn="mlp"),
    "vit_giant2": dict(dim=1536, depth=40, heads=24, mlp_hidden=4096, ffn="swiglu"),
}


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class LayerScale(nn.Module):
    def __init__(self, dim, init=1e-5):
        super().__init__()
        self.gamma = nn.Parameter(init * torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class SwiGLUFFN(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x):
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_hidden, ffn):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_hidden) if ffn == "mlp" else SwiGLUFFN(dim, mlp_hidden)
        self.ls2 = LayerScale(dim)

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, dim, patch):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class ViT(nn.Module):
    """DINOv2's DinoVisionTransformer, inference and training paths."""

    def __init__(self, dim, depth, heads, mlp_hidden, ffn="mlp", patch=14, pos_grid=16,
                 registers=0, interp="runtime"):
        super().__init__()
        self.patch = patch
        self.registers = registers
        self.interp = interp
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + pos_grid * pos_grid, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        if registers:
            self.register_tokens = nn.Parameter(torch.zeros(1, registers, dim))
        self.patch_embed = PatchEmbed(dim, patch)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_hidden, ffn) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def interpolate_pos_encoding(self, x, w, h):
        npatch = x.shape[1] - 1
        N = self.pos_embed.shape[1] - 1
        if npatch == N and w == h:
            return self.pos_embed
        pos = self.pos_embed.float()
        cls_pos, patch_pos = pos[:, 0], pos[:, 1:]
        dim = x.shape[-1]
        w0, h0 = w // self.patch, h // self.patch
        M = int(math.sqrt(N))
        if self.interp == "runtime":
            kwargs = {"scale_factor": (float(w0 + 0.1) / M, float(h0 + 0.1) / M)}
        else:
            kwargs = {"size": (w0, h0)}
        patch_pos = F.interpolate(patch_pos.reshape(1, M, M, dim).permute(0, 3, 1, 2),
                                  mode="bicubic", antialias=False, **kwargs)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat((cls_pos.unsqueeze(0), patch_pos), dim=1)

    def prepare_tokens(self, x, masks=None):
        B, _, w, h = x.shape
        x = self.patch_embed(x)
        if masks is not None:
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.interpolate_pos_encoding(x, w, h)
        if self.registers:
            x = torch.cat((x[:, :1], self.register_tokens.expand(B, -1, -1), x[:, 1:]), dim=1)
        return x

    def forward_features(self, x, masks=None):
        x = self.prepare_tokens(x, masks)
        for blk in self.blocks:
            x = blk(x)
        xn = self.norm(x)
        r = self.registers
        return {
            "clsNorm": xn[:, 0],
            "patchNorm": xn[:, r + 1:],
            "cls": x[:, 0],
            "patch": x[:, r + 1:],
        }


class DINOHead(nn.Module):
    def __init__(self, in_dim, hidden=2048, bottleneck=256, prototypes=65536):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden),
                                 nn.GELU(), nn.Linear(hidden, bottleneck))
        self.last_layer = nn.utils.weight_norm(nn.Linear(bottleneck, prototypes, bias=False))
        self.last_layer.weight_g.data.fill_(1)

    def forward(self, x):
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2, eps=1e-12)
        return self.last_layer(x)


def make_vit(arch=None, **over):
    cfg = dict(ARCHS[arch]) if arch else {}
    cfg.update(over)
    return ViT(**cfg)


def randomize(module, seed, std=0.02):
    """Deterministic random weights (normal, std 0.02; norms near 1; gammas near 0.1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("gamma"):
                p.copy_(0.1 + 0.05 * torch.randn(p.shape, generator=g))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("weight_g"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))
            if name in ("cls_token", "pos_embed", "register_tokens", "mask_token"):
                p.mul_(10)


def write_safetensors(path, tensors, metadata=None):
    """safetensors by hand (the format is a length, a JSON header and raw bytes)."""
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        t = t.detach().contiguous()
        dtype = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}[t.dtype]
        raw = t.view(torch.int16).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)

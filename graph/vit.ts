/**
 * The DINOv2 vision transformer family (patch 14, LayerScale, optional
 * register tokens, SwiGLU FFN for giant), with DINOv2's state-dict names, so
 * checkpoints map one to one. See docs/recipe.md and docs/checkpoints.md.
 */
import type { ParamSpec } from "./arena.ts";
import { fusedLinear } from "./fused.ts";
import {
  add,
  attention,
  bicubic,
  broadcastTo,
  concat,
  im2col,
  layerNorm,
  linear,
  maskRows,
  reshape,
  slice,
  swiglu,
} from "./ops.ts";
import type { Params } from "./params.ts";
import type { Tensor } from "./tensor.ts";

/** The four DINOv2 / DinoBloom sizes. */
export type VitArch = "vit_small" | "vit_base" | "vit_large" | "vit_giant2";

/** Everything that fixes a ViT's shapes. */
export interface VitConfig {
  /** One of the named sizes, or "custom" (tests, small models). */
  arch: VitArch | "custom";
  dim: number;
  depth: number;
  heads: number;
  /** FFN hidden width (fc1 out; for SwiGLU, w12 out / 2). */
  mlpHidden: number;
  ffn: "mlp" | "swiglu";
  patch: number;
  /** Register tokens after CLS (0 or 4 in DINOv2's "reg" models). */
  registers: number;
  /** Side of the stored position-embedding grid (37 for hub checkpoints, 16 for DinoBloom). */
  posGrid: number;
  /** LayerNorm eps (1e-6 in DINOv2). */
  eps: number;
  /**
   * How to fit the stored position grid to another input size: "runtime" is
   * DINOv2's interpolate_pos_encoding (bicubic, scale_factor = (g+0.1)/grid);
   * "size" resamples to the exact output size (what DinoBloom did once).
   */
  posInterp: "runtime" | "size";
}

/** The named sizes (docs/recipe.md, the backbone table). */
export const ARCHS: {
  readonly [A in VitArch]: Pick<VitConfig, "dim" | "depth" | "heads" | "mlpHidden" | "ffn">;
} = {
  vit_small: { dim: 384, depth: 12, heads: 6, mlpHidden: 1536, ffn: "mlp" },
  vit_base: { dim: 768, depth: 12, heads: 12, mlpHidden: 3072, ffn: "mlp" },
  vit_large: { dim: 1024, depth: 24, heads: 16, mlpHidden: 4096, ffn: "mlp" },
  vit_giant2: { dim: 1536, depth: 40, heads: 24, mlpHidden: 4096, ffn: "swiglu" },
};

/**
 * Bounds on a ViT bloom builds, from a checkpoint or a config: far above
 * DINOv2 giant (dim 1536, depth 40), low enough that a damaged or hostile
 * file cannot make bloom build millions of parameter specs or an absurd
 * arena before anything is checked.
 */
export const VIT_LIMITS = {
  dim: 8192,
  depth: 128,
  heads: 128,
  mlpHidden: 65536,
  patch: 64,
  registers: 64,
  posGrid: 256,
} as const;

/**
 * What is wrong with `cfg`'s shapes, as "field: expected …, found …" lines
 * (empty when it is fine): each a positive integer within VIT_LIMITS, and
 * heads dividing dim.
 */
export function vitConfigProblems(
  cfg: Pick<VitConfig, keyof typeof VIT_LIMITS>,
): string[] {
  const out: string[] = [];
  for (const k of Object.keys(VIT_LIMITS) as (keyof typeof VIT_LIMITS)[]) {
    const v = cfg[k];
    const min = k === "registers" ? 0 : 1;
    if (!Number.isSafeInteger(v) || v < min || v > VIT_LIMITS[k]) {
      out.push(`${k}: expected an integer in ${min}..${VIT_LIMITS[k]}, found ${v}`);
    }
  }
  if (out.length === 0 && cfg.dim % cfg.heads !== 0) {
    out.push(`heads: expected a divisor of dim ${cfg.dim}, found ${cfg.heads}`);
  }
  return out;
}

/** A named architecture with DINOv2's defaults (patch 14, 224 px grid unless given). */
export function vitConfig(arch: VitArch, over: Partial<VitConfig> = {}): VitConfig {
  return {
    arch,
    ...ARCHS[arch],
    patch: 14,
    registers: 0,
    posGrid: 16,
    eps: 1e-6,
    posInterp: "runtime",
    ...over,
  };
}

/** Parameter names and shapes, in DINOv2's state-dict order. */
export function vitParamSpecs(cfg: VitConfig): ParamSpec[] {
  const D = cfg.dim;
  const specs: ParamSpec[] = [
    { name: "cls_token", shape: [1, 1, D] },
    { name: "pos_embed", shape: [1, 1 + cfg.posGrid * cfg.posGrid, D] },
    { name: "mask_token", shape: [1, D] },
  ];
  if (cfg.registers > 0) specs.push({ name: "register_tokens", shape: [1, cfg.registers, D] });
  specs.push(
    { name: "patch_embed.proj.weight", shape: [D, 3, cfg.patch, cfg.patch] },
    { name: "patch_embed.proj.bias", shape: [D] },
  );
  for (let i = 0; i < cfg.depth; i++) {
    const p = `blocks.${i}`;
    specs.push(
      { name: `${p}.norm1.weight`, shape: [D] },
      { name: `${p}.norm1.bias`, shape: [D] },
      { name: `${p}.attn.qkv.weight`, shape: [3 * D, D] },
      { name: `${p}.attn.qkv.bias`, shape: [3 * D] },
      { name: `${p}.attn.proj.weight`, shape: [D, D] },
      { name: `${p}.attn.proj.bias`, shape: [D] },
      { name: `${p}.ls1.gamma`, shape: [D] },
      { name: `${p}.norm2.weight`, shape: [D] },
      { name: `${p}.norm2.bias`, shape: [D] },
    );
    const H = cfg.mlpHidden;
    if (cfg.ffn === "mlp") {
      specs.push(
        { name: `${p}.mlp.fc1.weight`, shape: [H, D] },
        { name: `${p}.mlp.fc1.bias`, shape: [H] },
        { name: `${p}.mlp.fc2.weight`, shape: [D, H] },
        { name: `${p}.mlp.fc2.bias`, shape: [D] },
      );
    } else {
      specs.push(
        { name: `${p}.mlp.w12.weight`, shape: [2 * H, D] },
        { name: `${p}.mlp.w12.bias`, shape: [2 * H] },
        { name: `${p}.mlp.w3.weight`, shape: [D, H] },
        { name: `${p}.mlp.w3.bias`, shape: [D] },
      );
    }
    specs.push({ name: `${p}.ls2.gamma`, shape: [D] });
  }
  specs.push({ name: "norm.weight", shape: [D] }, { name: "norm.bias", shape: [D] });
  return specs;
}

/** What a forward pass can return. */
export interface VitOutputs {
  /** CLS token after the final norm [B, D]: the embedding (DINOv2's x_norm_clstoken). */
  clsNorm: Tensor;
  /** Patch tokens after the final norm [B, Np, D] (x_norm_patchtokens). */
  patchNorm: Tensor;
  /** CLS token before the final norm [B, D]. */
  cls: Tensor;
  /** Patch tokens before the final norm [B, Np, D]. */
  patch: Tensor;
}

/** Options of a forward pass. */
export interface VitForwardOptions {
  /** u32 [B·Np], 1 where a patch is replaced by mask_token (iBOT student). */
  masks?: Tensor | null;
  /** Which outputs to compute (default: all). */
  outputs?: readonly (keyof VitOutputs)[];
  /**
   * Inference only: "f16" reads the block weights as f16 halves (f32 sums) where the adapter
   * offers `shader-f16` (kernels/matmul `precision`). Features then differ from PyTorch's f32
   * forward by ~1e-3 relative (tests/vit_test.ts states the tolerance). Default "f32".
   */
  precision?: "f32" | "f16";
}

/** Position embeddings for a gh × gw patch grid: [1, 1 + gh·gw, D]. */
export function positionEmbedding(ps: Params, cfg: VitConfig, gh: number, gw: number): Tensor {
  const g = ps.g;
  const pos = ps.get("pos_embed");
  const G = cfg.posGrid;
  if (gh === G && gw === G) return pos;
  const D = cfg.dim;
  const clsPos = slice(g, pos, 1, 0, 1);
  const grid = reshape(g, slice(g, pos, 1, 1, G * G), [G, G, D]);
  const resampled = cfg.posInterp === "runtime"
    ? bicubic(g, grid, { outH: gh, outW: gw, scaleH: (gh + 0.1) / G, scaleW: (gw + 0.1) / G })
    : bicubic(g, grid, { outH: gh, outW: gw });
  return concat(g, [clsPos, reshape(g, resampled, [1, gh * gw, D])], 1);
}

/**
 * One pre-norm transformer block. Without a recording graph (inference) every linear layer
 * runs as one matmul with its epilogue fused (`fusedLinear`: bias, GELU, LayerScale and the
 * residual in the write-out), and attention reads the qkv projection's output as it is —
 * [B, T, 3·H·Dh], heads side by side — so no permute pass sits between them.
 */
export function vitBlock(
  ps: Params,
  cfg: VitConfig,
  i: number,
  x: Tensor,
  precision: "f32" | "f16" = "f32",
): Tensor {
  const g = ps.g;
  const p = (n: string) => ps.get(`blocks.${i}.${n}`);
  const h = layerNorm(g, x, p("norm1.weight"), p("norm1.bias"), cfg.eps);
  const qkv = fusedLinear(g, h, p("attn.qkv.weight"), p("attn.qkv.bias"), { precision });
  const a = attention(g, qkv, cfg.heads);
  x = fusedLinear(g, a, p("attn.proj.weight"), p("attn.proj.bias"), {
    scale: p("ls1.gamma"),
    residual: x,
    precision,
  });
  const h2 = layerNorm(g, x, p("norm2.weight"), p("norm2.bias"), cfg.eps);
  if (cfg.ffn === "mlp") {
    const f = fusedLinear(g, h2, p("mlp.fc1.weight"), p("mlp.fc1.bias"), {
      activation: "gelu",
      precision,
    });
    return fusedLinear(g, f, p("mlp.fc2.weight"), p("mlp.fc2.bias"), {
      scale: p("ls2.gamma"),
      residual: x,
      precision,
    });
  }
  const f = swiglu(g, fusedLinear(g, h2, p("mlp.w12.weight"), p("mlp.w12.bias"), { precision }));
  return fusedLinear(g, f, p("mlp.w3.weight"), p("mlp.w3.bias"), {
    scale: p("ls2.gamma"),
    residual: x,
    precision,
  });
}

/** Patch embedding, masking, CLS, position and register tokens: [B, T, D]. */
export function vitTokens(
  ps: Params,
  cfg: VitConfig,
  images: Tensor,
  masks?: Tensor | null,
): Tensor {
  const g = ps.g;
  const [B, C, H, W] = images.shape;
  if (C !== 3) throw new RangeError(`images must be [B, 3, H, W], got [${images.shape}]`);
  const P = cfg.patch;
  const gh = Math.floor(H / P);
  const gw = Math.floor(W / P);
  if (gh < 1 || gw < 1) throw new RangeError(`images of ${H}×${W} are smaller than one patch`);
  const np = gh * gw;
  const D = cfg.dim;
  const cols = im2col(g, images, P);
  const w = reshape(g, ps.get("patch_embed.proj.weight"), [D, 3 * P * P]);
  let x = linear(g, cols, w, ps.get("patch_embed.proj.bias"));
  if (masks) {
    if (masks.numel !== B * np) {
      throw new RangeError(`masks must have B·Np = ${B * np} entries, got ${masks.numel}`);
    }
    x = maskRows(g, x, masks, reshape(g, ps.get("mask_token"), [D]));
  }
  x = reshape(g, x, [B, np, D]);
  const cls = broadcastTo(g, ps.get("cls_token"), [B, 1, D]);
  x = concat(g, [cls, x], 1);
  x = add(g, x, positionEmbedding(ps, cfg, gh, gw));
  if (cfg.registers > 0) {
    const reg = broadcastTo(g, ps.get("register_tokens"), [B, cfg.registers, D]);
    x = concat(g, [slice(g, x, 1, 0, 1), reg, slice(g, x, 1, 1, np)], 1);
  }
  return x;
}

/**
 * The forward pass. Images are normalised [B, 3, H, W] (ImageNet mean/std).
 * Each block runs in its own scope, so only what the tape saved outlives it.
 */
export function vitForward(
  ps: Params,
  cfg: VitConfig,
  images: Tensor,
  opts: VitForwardOptions = {},
): Partial<VitOutputs> {
  const g = ps.g;
  const want = new Set(opts.outputs ?? ["clsNorm", "patchNorm", "cls", "patch"]);
  return g.tidy(() => {
    let x = g.tidy(() => vitTokens(ps, cfg, images, opts.masks));
    for (let i = 0; i < cfg.depth; i++) {
      const xi = x;
      x = g.tidy(() => vitBlock(ps, cfg, i, xi, opts.precision));
    }
    const B = x.dim(0);
    const T = x.dim(1);
    const R = cfg.registers;
    const np = T - 1 - R;
    const D = cfg.dim;
    const out: Partial<VitOutputs> = {};
    if (want.has("cls")) out.cls = reshape(g, slice(g, x, 1, 0, 1), [B, D]);
    if (want.has("patch")) out.patch = slice(g, x, 1, 1 + R, np);
    if (want.has("clsNorm") || want.has("patchNorm")) {
      const xn = layerNorm(g, x, ps.get("norm.weight"), ps.get("norm.bias"), cfg.eps);
      if (want.has("clsNorm")) out.clsNorm = reshape(g, slice(g, xn, 1, 0, 1), [B, D]);
      if (want.has("patchNorm")) out.patchNorm = slice(g, xn, 1, 1 + R, np);
    }
    return out;
  });
}

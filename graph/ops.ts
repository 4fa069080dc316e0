/**
 * Differentiable ops: thin, typed front ends that record one primitive each
 * on the graph (see rules.ts for what they compute and how they differentiate).
 */
import type { BinaryOp, UnaryOp } from "../kernels/elementwise.ts";
import type { Graph } from "./graph.ts";
import type { Axis } from "./rules.ts";
import type { Tensor } from "./tensor.ts";

/** x [..., K] · w [N, K]ᵀ + b [N] (nn.Linear). */
export function linear(g: Graph, x: Tensor, w: Tensor, b?: Tensor | null): Tensor {
  if (x.dim(-1) !== w.dim(1)) {
    throw new RangeError(`linear: input [${x.shape}] does not match weight [${w.shape}]`);
  }
  return g.apply("linear", b ? [x, w, b] : [x, w], {});
}

/** alpha · op(a) · op(b), batched. */
export function matmul(
  g: Graph,
  a: Tensor,
  b: Tensor,
  opts: { transA?: boolean; transB?: boolean; alpha?: number } = {},
): Tensor {
  return g.apply("matmul", [a, b], {
    transA: opts.transA ?? false,
    transB: opts.transB ?? false,
    alpha: opts.alpha ?? 1,
  });
}

function bin(op: BinaryOp) {
  return (g: Graph, a: Tensor, b: Tensor): Tensor => g.apply("binary", [a, b], { op });
}
/** a + b with broadcasting. */
export const add: (g: Graph, a: Tensor, b: Tensor) => Tensor = bin("add");
/** a − b with broadcasting. */
export const sub: (g: Graph, a: Tensor, b: Tensor) => Tensor = bin("sub");
/** a · b with broadcasting. */
export const mul: (g: Graph, a: Tensor, b: Tensor) => Tensor = bin("mul");
/** a / b with broadcasting. */
export const div: (g: Graph, a: Tensor, b: Tensor) => Tensor = bin("div");

/** alpha · x + beta. */
export function affine(g: Graph, x: Tensor, alpha: number, beta = 0): Tensor {
  return g.apply("affine", [x], { alpha, beta });
}

/** Elementwise unary op. */
export function unary(g: Graph, op: UnaryOp, x: Tensor): Tensor {
  return g.apply("unary", [x], { op });
}

/** Exact (erf) GELU, as nn.GELU(). */
export function gelu(g: Graph, x: Tensor): Tensor {
  return g.apply("gelu", [x], {});
}

/** SiLU. */
export function silu(g: Graph, x: Tensor): Tensor {
  return g.apply("silu", [x], {});
}

/** silu(x[..., :H]) · x[..., H:] (DINOv2 SwiGLU). */
export function swiglu(g: Graph, x12: Tensor): Tensor {
  return g.apply("swiglu", [x12], {});
}

/** nn.LayerNorm over the last dim. */
export function layerNorm(g: Graph, x: Tensor, w: Tensor, b: Tensor, eps: number): Tensor {
  return g.apply("layerNorm", [x, w, b], { eps });
}

/** Multi-head self-attention over packed qkv [B, T, 3·H·Dh] → [B, T, H·Dh]. */
export function attention(g: Graph, qkv: Tensor, heads: number, scale?: number): Tensor {
  const dh = qkv.dim(-1) / 3 / heads;
  if (!Number.isInteger(dh)) {
    throw new RangeError(`attention: qkv width ${qkv.dim(-1)} is not 3 × ${heads} heads × Dh`);
  }
  return g.apply("attention", [qkv], { heads, scale: scale ?? 1 / Math.sqrt(dh) });
}

/** softmax(x / T) over the last dim. */
export function softmax(g: Graph, x: Tensor, temperature = 1): Tensor {
  return g.apply("softmax", [x], { temperature });
}

/** log_softmax(x / T) over the last dim. */
export function logSoftmax(g: Graph, x: Tensor, temperature = 1): Tensor {
  return g.apply("logSoftmax", [x], { temperature });
}

/** Per-row −Σ t · log_softmax(logits / T): shape [rows]; targets get no gradient. */
export function crossEntropySoft(
  g: Graph,
  logits: Tensor,
  targets: Tensor,
  temperature = 1,
): Tensor {
  return g.apply("crossEntropySoft", [logits, targets], { temperature });
}

/** F.normalize(x, dim=-1, eps). */
export function l2Normalize(g: Graph, x: Tensor, eps = 1e-12): Tensor {
  return g.apply("l2Normalize", [x], { eps });
}

/** weight_norm(dim=0): g · v / ‖v‖ per row. */
export function weightNorm(g: Graph, v: Tensor, gain: Tensor): Tensor {
  return g.apply("weightNorm", [v, gain], {});
}

/** Sum over an axis (default last) or all elements. */
export function sum(g: Graph, x: Tensor, axis: Axis = -1, keepDims = false): Tensor {
  return g.apply("sum", [x], { axis, keepDims });
}

/** Mean over an axis (default last) or all elements. */
export function mean(g: Graph, x: Tensor, axis: Axis = -1, keepDims = false): Tensor {
  return g.apply("mean", [x], { axis, keepDims });
}

/** Same data, new shape (no copy). */
export function reshape(g: Graph, x: Tensor, shape: readonly number[]): Tensor {
  return g.apply("reshape", [x], { shape });
}

/** Broadcast to a larger shape (numpy rules). */
export function broadcastTo(g: Graph, x: Tensor, shape: readonly number[]): Tensor {
  return g.apply("broadcastTo", [x], { shape });
}

/** `length` entries of `axis` from `start`. */
export function slice(g: Graph, x: Tensor, axis: number, start: number, length: number): Tensor {
  return g.apply("slice", [x], { axis, start, length });
}

/** Concatenation along `axis`. */
export function concat(g: Graph, xs: Tensor[], axis: number): Tensor {
  return g.apply("concat", xs, { axis });
}

/** Axis permutation. */
export function permute(g: Graph, x: Tensor, perm: readonly number[]): Tensor {
  return g.apply("permute", [x], { perm });
}

/** Rows of x [N, D] at u32 indices. */
export function gatherRows(g: Graph, x: Tensor, idx: Tensor): Tensor {
  return g.apply("gatherRows", [x, idx], {});
}

/** Rows where mask is 1 replaced by `token` (DINOv2's mask_token). */
export function maskRows(g: Graph, x: Tensor, mask: Tensor, token: Tensor): Tensor {
  return g.apply("maskRows", [x, mask, token], {});
}

/** Image patches as rows: [B, C, H, W] → [B·gh·gw, C·p·p]. */
export function im2col(g: Graph, images: Tensor, patch: number): Tensor {
  return g.apply("im2col", [images], { patch });
}

/** KoLeo loss of the rows of x, [1]. */
export function koleo(g: Graph, x: Tensor, eps = 1e-4, pdistEps = 1e-8): Tensor {
  return g.apply("koleo", [x], { eps, pdistEps });
}

/** Bicubic resampling of a channel-last grid [H, W, C]. */
export function bicubic(
  g: Graph,
  grid: Tensor,
  opts: { outH: number; outW: number; scaleH?: number; scaleW?: number },
): Tensor {
  return g.apply("bicubic", [grid], opts);
}

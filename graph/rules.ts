/**
 * The rule table: for every primitive, its forward (kernels it runs and what
 * it keeps) and its backward (input gradients from the output gradient). The
 * mapped type makes the type checker prove the table complete: add a field to
 * `PrimAttrs` and this file fails to compile until the rule exists.
 */
import { attention, attentionBackward } from "../kernels/attention.ts";
import {
  affine,
  binary,
  binaryBackward,
  type BinaryOp,
  gelu,
  geluBackward,
  silu,
  siluBackward,
  swiglu,
  swigluBackward,
  unary,
  unaryBackward,
  type UnaryOp,
} from "../kernels/elementwise.ts";
import { bicubicResample, bicubicResampleBackward } from "../kernels/resample.ts";
import { koleo, koleoBackward } from "../kernels/koleo.ts";
import {
  l2Normalize,
  l2NormalizeBackward,
  weightNorm,
  weightNormBackward,
} from "../kernels/l2norm.ts";
import { layerNorm, layerNormBackward } from "../kernels/layernorm.ts";
import {
  concat,
  gatherRows,
  maskRows,
  maskRowsBackward,
  permute,
  scatterRows,
  slice,
  sliceBackward,
} from "../kernels/layout/mod.ts";
import { matmul, matmulBackward } from "../kernels/matmul/mod.ts";
import { col2im, im2col } from "../kernels/patch_embed.ts";
import { type Axis, broadcastTo, sum, sumToShape } from "../kernels/reduce.ts";
import {
  crossEntropySoft,
  crossEntropySoftBackward,
  logSoftmax,
  logSoftmaxBackward,
  softmax,
  softmaxBackward,
} from "../kernels/softmax.ts";
import type { Gpu } from "../kernels/runtime.ts";
import { type GpuTensor, numel, retag } from "../kernels/tensor.ts";
import { normalizeAxis, sameShape } from "../kernels/common/shape.ts";
import { type BindingLimits, type Span, splitSpans } from "../kernels/common/split.ts";
import { ACCUMULATED, type BackwardContext, type Grads, type Rule, saved } from "./rule.ts";

export type { Axis };

/** Attributes of every primitive. */
export interface PrimAttrs {
  /** x [..., K] · w [N, K]ᵀ + b [N] (nn.Linear); inputs x, w, b? */
  linear: Record<never, never>;
  /** alpha · op(a) · op(b), batched with broadcasting. */
  matmul: { transA: boolean; transB: boolean; alpha: number };
  /** Broadcasting binary op. */
  binary: { op: BinaryOp };
  /** alpha · x + beta. */
  affine: { alpha: number; beta: number };
  unary: { op: UnaryOp };
  gelu: Record<never, never>;
  silu: Record<never, never>;
  /** silu(x[..., :H]) · x[..., H:] (DINOv2 SwiGLU FFN). */
  swiglu: Record<never, never>;
  /** nn.LayerNorm over the last dim; inputs x, weight, bias. */
  layerNorm: { eps: number };
  /** Multi-head softmax attention over a packed qkv [B, T, 3·H·Dh]. */
  attention: { heads: number; scale: number };
  softmax: { temperature: number };
  logSoftmax: { temperature: number };
  /** Per-row −Σ t · log_softmax(logits / T); inputs logits, targets (no gradient). */
  crossEntropySoft: { temperature: number };
  /** F.normalize(x, dim=-1, eps). */
  l2Normalize: { eps: number };
  /** weight_norm(dim=0): inputs v [K, Din], g [K] or [K, 1]. */
  weightNorm: Record<never, never>;
  sum: { axis: Axis; keepDims: boolean };
  mean: { axis: Axis; keepDims: boolean };
  /** Same data, new shape (a view). */
  reshape: { shape: readonly number[] };
  broadcastTo: { shape: readonly number[] };
  slice: { axis: number; start: number; length: number };
  concat: { axis: number };
  permute: { perm: readonly number[] };
  /** Rows of x [N, D] at u32 indices [M]; inputs x, idx. */
  gatherRows: Record<never, never>;
  /** y[i] = mask[i] ? token : x[i]; inputs x [N, D], mask u32 [N], token [D]. */
  maskRows: Record<never, never>;
  /** Patches of NCHW images as rows (conv as matmul). */
  im2col: { patch: number };
  /** KoLeo loss of the rows of x (DINOv2), a [1] tensor. */
  koleo: { eps: number; pdistEps: number };
  /** Bicubic resampling of a channel-last grid [H, W, C] (PyTorch semantics). */
  bicubic: { outH: number; outW: number; scaleH?: number; scaleW?: number };
}

/** Name of a primitive. */
export type Prim = keyof PrimAttrs;
/** Attributes by primitive. */
export type Attrs = PrimAttrs;

/** Shape after reducing `axis` with keepDims. */
function keptShape(shape: readonly number[], axis: Axis): number[] {
  if (axis === "all") return shape.map(() => 1);
  const a = normalizeAxis("keepDims", axis, shape.length);
  return shape.map((d, i) => (i === a ? 1 : d));
}

/** Copies a tensor (for a gradient that must go to two owners). */
function copyOf(gpu: Gpu, t: GpuTensor): GpuTensor {
  const out = gpu.empty(t.shape);
  gpu.copy(t, out, t.size);
  return out;
}

/** The gradient `dy` reduced to `shape` (after broadcasting); hands dy on when shapes match. */
function reduceTo(gpu: Gpu, dy: GpuTensor, shape: readonly number[]): GpuTensor {
  return sameShape(dy.shape, shape) ? dy : sumToShape(gpu, dy, [...shape]);
}

/**
 * Row spans of the weight gradient dyᵀ·x [N, K] over operands dy [rows, N] and
 * x [rows, K] (row-major) such that each operand's span fits one binding at an
 * aligned offset (one span when the whole fits). The linear rule sums over
 * these; `graph/tune.ts` tunes the K they give.
 */
export function weightGradSpans(limits: BindingLimits, rows: number, n: number, k: number): Span[] {
  return splitSpans(limits, {
    op: "linear (weight gradient)",
    item: "row",
    count: rows,
    itemBytes: [n * 4, k * 4],
    fix: "use a smaller output or input dimension",
  });
}

const linear: Rule<PrimAttrs["linear"]> = {
  forward(gpu, [x, w, b]) {
    return { y: matmul(gpu, x, w, { transB: true, bias: b }), saveInputs: [0, 1] };
  },
  backward(ctx, dy) {
    const { gpu, needs, targets } = ctx;
    const x = saved(ctx, 0);
    const w = saved(ctx, 1);
    const n = w.shape[0];
    const k = w.shape[1];
    const m = numel(dy.shape) / n;
    const grads: Grads = [null, null, null];
    if (needs[0]) grads[0] = matmul(gpu, dy, w);
    const dy2 = dy.reshape([m, n]);
    if (needs[1]) {
      const x2 = x.reshape([m, k]);
      // dW = dyᵀ x reduces over the rows; when dy or x is too large for one binding
      // (iBOT logits over every masked token: [tokens, 65,536]) it is summed over row blocks.
      // The first block writes a fresh gradient; the rest (and a given target) accumulate.
      let dw = targets[1];
      for (const c of weightGradSpans(gpu.limits, m, n, k)) {
        const dyb = dy2.view(c.start * n, [c.count, n]);
        const xb = x2.view(c.start * k, [c.count, k]);
        if (dw) matmul(gpu, dyb, xb, { transA: true, accumulate: dw });
        else dw = matmul(gpu, dyb, xb, { transA: true });
      }
      grads[1] = targets[1] ? ACCUMULATED : dw!;
    }
    if (ctx.inShapes.length > 2 && needs[2]) grads[2] = sum(gpu, dy2, { axis: 0 });
    return grads;
  },
};

const matmulRule: Rule<PrimAttrs["matmul"]> = {
  forward(gpu, [a, b], at) {
    return {
      y: matmul(gpu, a, b, { transA: at.transA, transB: at.transB, alpha: at.alpha }),
      saveInputs: [0, 1],
    };
  },
  backward(ctx, dy) {
    const { da, db } = matmulBackward(ctx.gpu, dy, saved(ctx, 0), saved(ctx, 1), {
      ...ctx.attrs,
      needA: ctx.needs[0],
      needB: ctx.needs[1],
    });
    return [da ?? null, db ?? null];
  },
};

const binaryRule: Rule<PrimAttrs["binary"]> = {
  forward(gpu, [a, b], { op }) {
    const needValues = op !== "add" && op !== "sub";
    return { y: binary(gpu, op, a, b), saveInputs: needValues ? [0, 1] : [] };
  },
  backward(ctx, dy) {
    const { gpu, needs, inShapes, attrs } = ctx;
    if (attrs.op === "add" || attrs.op === "sub") {
      // Each gradient needs its own buffer: dy itself goes to the first taker.
      let dyTaken = false;
      const take = (shape: readonly number[]): GpuTensor => {
        if (!sameShape(dy.shape, shape)) return sumToShape(gpu, dy, [...shape]);
        if (dyTaken) return copyOf(gpu, dy);
        dyTaken = true;
        return retag(dy, shape);
      };
      const da = needs[0] ? take(inShapes[0]) : null;
      let db: GpuTensor | null = null;
      if (needs[1]) {
        if (attrs.op === "add") db = take(inShapes[1]);
        else if (sameShape(dy.shape, inShapes[1])) db = affine(gpu, dy, -1, 0);
        else {
          const r = sumToShape(gpu, dy, [...inShapes[1]]);
          db = affine(gpu, r, -1, 0);
          gpu.release(r);
        }
      }
      return [da, db];
    }
    const { da, db } = binaryBackward(gpu, attrs.op, dy, saved(ctx, 0), saved(ctx, 1), {
      a: needs[0],
      b: needs[1],
    });
    return [da ?? null, db ?? null];
  },
};

const affineRule: Rule<PrimAttrs["affine"]> = {
  forward(gpu, [x], { alpha, beta }) {
    return { y: affine(gpu, x, alpha, beta) };
  },
  backward(ctx, dy) {
    return [affine(ctx.gpu, dy, ctx.attrs.alpha, 0)];
  },
};

const unaryRule: Rule<PrimAttrs["unary"]> = {
  forward(gpu, [x], { op }) {
    return { y: unary(gpu, op, x), saveInputs: [0], saveOutput: true };
  },
  backward(ctx, dy) {
    return [unaryBackward(ctx.gpu, ctx.attrs.op, dy, saved(ctx, 0), ctx.y!)];
  },
};

const geluRule: Rule<PrimAttrs["gelu"]> = {
  forward: (gpu, [x]) => ({ y: gelu(gpu, x), saveInputs: [0] }),
  backward: (ctx, dy) => [geluBackward(ctx.gpu, dy, saved(ctx, 0))],
};

const siluRule: Rule<PrimAttrs["silu"]> = {
  forward: (gpu, [x]) => ({ y: silu(gpu, x), saveInputs: [0] }),
  backward: (ctx, dy) => [siluBackward(ctx.gpu, dy, saved(ctx, 0))],
};

const swigluRule: Rule<PrimAttrs["swiglu"]> = {
  forward: (gpu, [x]) => ({ y: swiglu(gpu, x), saveInputs: [0] }),
  backward: (ctx, dy) => [swigluBackward(ctx.gpu, dy, saved(ctx, 0))],
};

/** [..., D] as [N, D]. */
function rows(t: GpuTensor): GpuTensor {
  const d = t.shape[t.shape.length - 1];
  return t.reshape([numel(t.shape) / d, d]);
}

const layerNormRule: Rule<PrimAttrs["layerNorm"]> = {
  forward(gpu, [x, w, b], { eps }) {
    const { y, mean, rstd } = layerNorm(gpu, rows(x), w, b, eps);
    return { y: retag(y, x.shape), saveInputs: [0, 1], aux: [mean, rstd] };
  },
  backward(ctx, dy) {
    const x = saved(ctx, 0);
    const [mean, rstd] = ctx.aux;
    const { dx, dweight, dbias } = layerNormBackward(
      ctx.gpu,
      rows(dy),
      rows(x),
      saved(ctx, 1),
      mean,
      rstd,
    );
    const keep = (t: GpuTensor, need: boolean) => {
      if (need) return t;
      ctx.gpu.release(t);
      return null;
    };
    return [
      keep(retag(dx, x.shape), ctx.needs[0]),
      keep(dweight, ctx.needs[1]),
      keep(dbias, ctx.needs[2]),
    ];
  },
};

const attentionRule: Rule<PrimAttrs["attention"]> = {
  forward(gpu, [qkv], { heads, scale }, training) {
    const { out, lse } = attention(gpu, qkv, { heads, scale });
    if (!training) {
      gpu.release(lse);
      return { y: out };
    }
    return { y: out, saveInputs: [0], saveOutput: true, aux: [lse] };
  },
  backward(ctx, dy) {
    return [
      attentionBackward(ctx.gpu, dy, saved(ctx, 0), ctx.y!, ctx.aux[0], {
        heads: ctx.attrs.heads,
        scale: ctx.attrs.scale,
      }),
    ];
  },
};

/** The rule of softmax or log-softmax: row-wise with a temperature, backward from the output. */
function softmaxFamilyRule(
  fwd: typeof softmax,
  bwd: typeof softmaxBackward,
): Rule<{ temperature: number }> {
  return {
    forward: (gpu, [x], { temperature }) => ({
      y: retag(fwd(gpu, rows(x), { temperature }), x.shape),
      saveOutput: true,
    }),
    backward: (ctx, dy) => [
      retag(
        bwd(ctx.gpu, rows(dy), rows(ctx.y!), { temperature: ctx.attrs.temperature }),
        dy.shape,
      ),
    ],
  };
}

const softmaxRule = softmaxFamilyRule(softmax, softmaxBackward);
const logSoftmaxRule = softmaxFamilyRule(logSoftmax, logSoftmaxBackward);

const crossEntropyRule: Rule<PrimAttrs["crossEntropySoft"]> = {
  forward(gpu, [logits, targets], { temperature }) {
    const { loss, logp } = crossEntropySoft(gpu, rows(logits), rows(targets), { temperature });
    return { y: loss, saveInputs: [1], aux: [logp] };
  },
  backward(ctx, dy) {
    const targets = saved(ctx, 1);
    const d = crossEntropySoftBackward(ctx.gpu, dy, ctx.aux[0], rows(targets), {
      temperature: ctx.attrs.temperature,
    });
    return [retag(d, ctx.inShapes[0]), null];
  },
};

const l2NormalizeRule: Rule<PrimAttrs["l2Normalize"]> = {
  forward(gpu, [x], { eps }) {
    const { y, norm } = l2Normalize(gpu, rows(x), eps);
    return { y: retag(y, x.shape), saveInputs: [0], aux: [norm] };
  },
  backward(ctx, dy) {
    const x = saved(ctx, 0);
    const dx = l2NormalizeBackward(ctx.gpu, rows(dy), rows(x), ctx.aux[0], ctx.attrs.eps);
    return [retag(dx, x.shape)];
  },
};

const weightNormRule: Rule<PrimAttrs["weightNorm"]> = {
  forward(gpu, [v, g]) {
    const { w, norm } = weightNorm(gpu, v, g.reshape([v.shape[0]]));
    return { y: w, saveInputs: [0, 1], aux: [norm] };
  },
  backward(ctx, dy) {
    const v = saved(ctx, 0);
    const g = saved(ctx, 1);
    const { dv, dg } = weightNormBackward(ctx.gpu, dy, v, g.reshape([v.shape[0]]), ctx.aux[0]);
    return [dv, retag(dg, ctx.inShapes[1])];
  },
};

function reduceRule(mean: boolean): Rule<PrimAttrs["sum"]> {
  return {
    forward(gpu, [x], { axis, keepDims }) {
      let y = sum(gpu, x, { axis, keepDims });
      if (mean) {
        const n = numel(x.shape) / numel(y.shape);
        const m = affine(gpu, y, 1 / n, 0);
        gpu.release(y);
        y = m;
      }
      return { y };
    },
    backward(ctx, dy) {
      const shape = ctx.inShapes[0];
      const kept = dy.reshape(keptShape(shape, ctx.attrs.axis));
      let dx = broadcastTo(ctx.gpu, kept, [...shape]);
      if (mean) {
        const n = numel(shape) / numel(dy.shape);
        const s = affine(ctx.gpu, dx, 1 / n, 0);
        ctx.gpu.release(dx);
        dx = s;
      }
      return [dx];
    },
  };
}

const reshapeRule: Rule<PrimAttrs["reshape"]> = {
  forward: (_gpu, [x], { shape }) => ({ y: x.reshape(shape), view: true }),
  backward: (ctx, dy) => [retag(dy, ctx.inShapes[0])],
};

const broadcastRule: Rule<PrimAttrs["broadcastTo"]> = {
  forward: (gpu, [x], { shape }) => ({ y: broadcastTo(gpu, x, [...shape]) }),
  backward: (ctx, dy) => [reduceTo(ctx.gpu, dy, ctx.inShapes[0])],
};

const sliceRule: Rule<PrimAttrs["slice"]> = {
  forward: (gpu, [x], { axis, start, length }) => ({ y: slice(gpu, x, axis, start, length) }),
  backward: (ctx, dy) => [
    sliceBackward(ctx.gpu, dy, [...ctx.inShapes[0]], ctx.attrs.axis, ctx.attrs.start),
  ],
};

const concatRule: Rule<PrimAttrs["concat"]> = {
  forward: (gpu, xs, { axis }) => ({ y: concat(gpu, xs, axis) }),
  backward(ctx, dy) {
    const a = normalizeAxis("concat backward", ctx.attrs.axis, dy.shape.length);
    let at = 0;
    return ctx.inShapes.map((s, i) => {
      const len = s[a];
      const g = ctx.needs[i] ? slice(ctx.gpu, dy, a, at, len) : null;
      at += len;
      return g;
    });
  },
};

const permuteRule: Rule<PrimAttrs["permute"]> = {
  forward: (gpu, [x], { perm }) => ({ y: permute(gpu, x, [...perm]) }),
  backward(ctx, dy) {
    const inv: number[] = [];
    ctx.attrs.perm.forEach((p, i) => (inv[p] = i));
    return [permute(ctx.gpu, dy, inv)];
  },
};

const gatherRule: Rule<PrimAttrs["gatherRows"]> = {
  forward: (gpu, [x, idx]) => ({ y: gatherRows(gpu, x, idx), saveInputs: [1] }),
  backward: (ctx, dy) => [
    scatterRows(ctx.gpu, dy, saved(ctx, 1), ctx.inShapes[0][0], { accumulate: true }),
    null,
  ],
};

const maskRowsRule: Rule<PrimAttrs["maskRows"]> = {
  forward: (gpu, [x, mask, token]) => ({ y: maskRows(gpu, x, mask, token), saveInputs: [1] }),
  backward(ctx, dy) {
    const { dx, dtoken } = maskRowsBackward(ctx.gpu, dy, saved(ctx, 1));
    return [dx, null, retag(dtoken, ctx.inShapes[2])];
  },
};

const im2colRule: Rule<PrimAttrs["im2col"]> = {
  forward: (gpu, [images], { patch }) => ({ y: im2col(gpu, images, patch) }),
  backward: (ctx, dy) => [col2im(ctx.gpu, dy, [...ctx.inShapes[0]], ctx.attrs.patch)],
};

const koleoRule: Rule<PrimAttrs["koleo"]> = {
  forward(gpu, [x], { eps, pdistEps }) {
    const { loss, saved: sv } = koleo(gpu, x, { eps, pdistEps });
    return { y: loss, saveInputs: [0], aux: [sv.xn, sv.norm, sv.nn, sv.dist] };
  },
  backward(ctx, dy) {
    const [xn, norm, nn, dist] = ctx.aux;
    const { eps, pdistEps } = ctx.attrs;
    return [koleoBackward(ctx.gpu, dy, saved(ctx, 0), { xn, norm, nn, dist, eps, pdistEps })];
  },
};

const bicubicRule: Rule<PrimAttrs["bicubic"]> = {
  forward: (gpu, [grid], opts) => ({ y: bicubicResample(gpu, grid, opts) }),
  backward: (ctx, dy) => [
    bicubicResampleBackward(ctx.gpu, dy, ctx.inShapes[0][0], ctx.inShapes[0][1], ctx.attrs),
  ],
};

/** Every primitive's rule (the type proves none is missing). */
export const RULES: { readonly [P in Prim]: Rule<PrimAttrs[P]> } = {
  linear,
  matmul: matmulRule,
  binary: binaryRule,
  affine: affineRule,
  unary: unaryRule,
  gelu: geluRule,
  silu: siluRule,
  swiglu: swigluRule,
  layerNorm: layerNormRule,
  attention: attentionRule,
  softmax: softmaxRule,
  logSoftmax: logSoftmaxRule,
  crossEntropySoft: crossEntropyRule,
  l2Normalize: l2NormalizeRule,
  weightNorm: weightNormRule,
  sum: reduceRule(false),
  mean: reduceRule(true),
  reshape: reshapeRule,
  broadcastTo: broadcastRule,
  slice: sliceRule,
  concat: concatRule,
  permute: permuteRule,
  gatherRows: gatherRule,
  maskRows: maskRowsRule,
  im2col: im2colRule,
  koleo: koleoRule,
  bicubic: bicubicRule,
};

export type { BackwardContext };

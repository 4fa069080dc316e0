/**
 * The matmul backward: gradients of out = alpha·op(A)·op(B) for both
 * operands, summed over the batch dims an operand was broadcast along.
 */
import { broadcastShapes, sameShape } from "../common/shape.ts";
import type { Gpu } from "../runtime.ts";
import { type GpuTensor, numel, retag } from "../tensor.ts";
import { matDims, matmul, matmulStrided } from "./dispatch.ts";
import type { MatmulInternal } from "./variants.ts";

/**
 * Backward of out = alpha·op(A)·op(B) (no epilogue). Returns gradients shaped like a and b;
 * a gradient of an operand broadcast over batch dims is summed over them. Either may be
 * skipped with needA / needB = false.
 */
export function matmulBackward(
  gpu: Gpu,
  dy: GpuTensor,
  a: GpuTensor,
  b: GpuTensor,
  opts: {
    transA?: boolean;
    transB?: boolean;
    alpha?: number;
    needA?: boolean;
    needB?: boolean;
  } = {},
  internal: MatmulInternal = {},
): { da?: GpuTensor; db?: GpuTensor } {
  const transA = opts.transA ?? false;
  const transB = opts.transB ?? false;
  const alpha = opts.alpha ?? 1;
  const { M, N } = matDims(a, b, transA, transB);
  const outBatch = broadcastShapes(
    "matmulBackward (batch dims)",
    a.shape.slice(0, -2),
    b.shape.slice(0, -2),
  );
  const outShape = [...outBatch, M, N];
  if (!sameShape(dy.shape, outShape)) {
    throw new RangeError(
      `matmulBackward: dy has shape [${dy.shape}] but the forward output was [${outShape}]`,
    );
  }
  const res: { da?: GpuTensor; db?: GpuTensor } = {};
  if (opts.needA ?? true) {
    // op(A) = alpha·dY·op(B)ᵀ; stored A = that, or its transpose when transA.
    res.da = transA
      ? gradFor(gpu, a, b, dy, { transA: transB, transB: true, alpha }, internal)
      : gradFor(gpu, a, dy, b, { transA: false, transB: !transB, alpha }, internal);
  }
  if (opts.needB ?? true) {
    res.db = transB
      ? gradFor(gpu, b, dy, a, { transA: true, transB: transA, alpha }, internal)
      : gradFor(gpu, b, a, dy, { transA: !transA, transB: false, alpha }, internal);
  }
  return res;
}

/**
 * x·y (with flags) reduced to `like`'s shape. When `like` has its own batch dims everywhere
 * this is one batched matmul; when it was broadcast, the batch is summed: folded into K where
 * both factors allow it, otherwise computed per batch and reduced with a ones-vector matmul.
 */
function gradFor(
  gpu: Gpu,
  like: GpuTensor,
  x: GpuTensor,
  y: GpuTensor,
  o: { transA: boolean; transB: boolean; alpha: number },
  internal: MatmulInternal,
): GpuTensor {
  const full = broadcastShapes(
    "matmulBackward (batch dims)",
    x.shape.slice(0, -2),
    y.shape.slice(0, -2),
  );
  const likeBatch = like.shape.slice(0, -2);
  const padded = [...new Array(full.length - likeBatch.length).fill(1), ...likeBatch];
  if (padded.every((d, i) => d === full[i])) {
    return retag(matmul(gpu, x, y, o, internal), like.shape);
  }
  const rows = like.shape[like.shape.length - 2];
  const cols = like.shape[like.shape.length - 1];
  // Summing over every batch dim with both factors contiguous along the summed K: fold.
  if (likeBatch.every((d) => d === 1) && o.transA && !o.transB) {
    const xb = x.shape.slice(0, -2);
    const yb = y.shape.slice(0, -2);
    const nb = numel(full);
    const xn = numel(xb);
    const yn = numel(yb);
    if (xn === nb && yn === nb) {
      // xᵀ·y summed over batches = [x_1; x_2; …]ᵀ·[y_1; y_2; …] with the batches stacked as rows.
      const kx = x.shape[x.shape.length - 2];
      const x2 = x.reshape([nb * kx, x.shape[x.shape.length - 1]]);
      const y2 = y.reshape([nb * kx, y.shape[y.shape.length - 1]]);
      return retag(matmul(gpu, x2, y2, o, internal), like.shape);
    }
  }
  const per = matmul(gpu, x, y, o, internal); // [...full, rows, cols]
  const reduced = sumBatchTo(gpu, per, full, padded, rows * cols, internal);
  return retag(reduced, like.shape);
}

/**
 * Sums `t` (batch `from`, matrices of `mat` elements) down to batch `to` (same rank, 1 where
 * summed), one run of summed dims at a time. Each run is a matmul with a ones vector, laid out
 * as curᵀ·1 so the long dimension is M (which the dispatch can split) rather than N.
 * Consumes `t` (releases it).
 */
function sumBatchTo(
  gpu: Gpu,
  t: GpuTensor,
  from: readonly number[],
  to: readonly number[],
  mat: number,
  internal: MatmulInternal,
): GpuTensor {
  let cur = t;
  let shape = [...from];
  for (let d = 0; d < shape.length; d++) {
    if (shape[d] === to[d]) continue;
    let e = d;
    while (e + 1 < shape.length && shape[e + 1] !== to[e + 1]) e++;
    const outer = numel(shape.slice(0, d));
    const r = numel(shape.slice(d, e + 1));
    const inner = numel(shape.slice(e + 1)) * mat;
    const ones = gpu.tensor(new Float32Array(r).fill(1), [r, 1]);
    const next = gpu.empty([outer, inner, 1]);
    // cur[outer] stored [r, inner] read transposed, times ones [r, 1] → [inner, 1] per outer.
    matmulStrided(gpu, {
      a: cur,
      b: ones,
      out: next,
      M: inner,
      N: 1,
      K: r,
      batch: outer,
      transA: true,
      strideA: r * inner,
      strideB: 0,
      strideOut: inner,
    }, internal);
    gpu.release(ones, cur);
    cur = next;
    shape = [...shape.slice(0, d), ...new Array(e - d + 1).fill(1), ...shape.slice(e + 1)];
    d = e;
  }
  return cur;
}

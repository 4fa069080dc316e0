/**
 * The matmul entry points: `matmul` (batched, numpy broadcasting, fused
 * epilogue) and the lower-level `matmulStrided` it runs on, which validates a
 * strided multiply, picks the variant, splits K (split-K variants) and the
 * dispatch (`plan.ts`), and packs the uniforms.
 */
import { broadcastShapes, broadcastStrides, checkTensor, sameShape } from "../common/shape.ts";
import { bindWindow } from "../common/window.ts";
import { GpuLimitError } from "../errors.ts";
import type { Gpu } from "../runtime.ts";
import { type BufferView, type GpuTensor, numel } from "../tensor.ts";
import { Uniforms } from "../uniforms.ts";
import { type Layout, operands, planChunks, twoLevel, vecFlags } from "./plan.ts";
import {
  blockOf,
  fitVariant,
  type MatmulInternal,
  type MatmulVariant,
  selectMatmulVariant,
} from "./variants.ts";
import type { GpuTexture } from "../textures.ts";
import {
  type KernelSpec,
  matmulKernel,
  packF16Kernel,
  PARAM_FIELDS,
  type ParamName,
  UNIFORM_BYTES,
} from "./wgsl.ts";

/** The transpose flags and the fused epilogue, shared by `matmul` and `matmulStrided`. */
export interface MatmulEpilogue {
  /** a is [..., K, M] instead of [..., M, K]. */
  transA?: boolean;
  /** b is [..., N, K] instead of [..., K, N] (nn.Linear weight [out, in] → transB). */
  transB?: boolean;
  /** out = alpha · A·B (before the epilogue). */
  alpha?: number;
  /** [N], added to every row. */
  bias?: GpuTensor;
  /** After bias; GELU is the exact erf form (PyTorch nn.GELU(), `../gelu.ts`). */
  activation?: "none" | "gelu";
  /** [N], LayerScale: out = residual + scale ⊙ act(alpha·A·B + bias). */
  scale?: GpuTensor;
  /** Same shape as the output. */
  residual?: GpuTensor;
  /**
   * "f16": B may be stored as f16 halves (weights, inference), sums in f32. Runs where the
   * adapter offers `shader-f16` and the `tex` kernel runs with a transposed B whose K is a
   * multiple of 8; elsewhere in f32 (more accurate, never less). Default "f32".
   */
  precision?: "f32" | "f16";
}

/** Epilogue and layout options of `matmul`. */
export interface MatmulOptions extends MatmulEpilogue {
  /** Add the result into this existing tensor (out += …) and return it. */
  accumulate?: GpuTensor;
}

/** The lower-level entry point: one (possibly batched) strided multiply into `out`. */
export interface MatmulStridedSpec extends MatmulEpilogue {
  a: GpuTensor;
  b: GpuTensor;
  out: GpuTensor;
  M: number;
  N: number;
  K: number;
  /** Batch count, or [outer, inner] for a two-level batch (e.g. [images, heads]). Default 1. */
  batch?: number | readonly [number, number];
  /** Element offsets into each tensor of batch 0's matrix. */
  offsetA?: number;
  offsetB?: number;
  offsetOut?: number;
  /** Row strides in elements (defaults: contiguous rows of the stored layout). */
  lda?: number;
  ldb?: number;
  ldo?: number;
  /** Element strides between batches: a number for one level, [outer, inner] for two. */
  strideA?: number | readonly [number, number];
  strideB?: number | readonly [number, number];
  strideOut?: number | readonly [number, number];
  /** The residual's layout, where it is not laid out like `out`. */
  offsetResidual?: number;
  ldr?: number;
  strideResidual?: number | readonly [number, number];
  /** Read `out` and add the result to it. */
  accumulate?: boolean;
}

function checkInt(name: string, v: number, min = 0): void {
  if (!Number.isInteger(v) || v < min) {
    throw new RangeError(`matmul: ${name} must be an integer ≥ ${min}, got ${v}`);
  }
}

function checkF32(name: string, t: GpuTensor): void {
  checkTensor("matmul", `'${name}'`, t, "f32");
}

/**
 * One strided (optionally two-level batched) multiply into `out`, with the fused epilogue.
 * Offsets, row strides and batch strides are in elements of each tensor; every element the
 * multiply touches must lie inside its tensor. Splits the dispatch when a binding would exceed
 * the adapter's limit.
 */
export function matmulStrided(
  gpu: Gpu,
  spec: MatmulStridedSpec,
  internal: MatmulInternal = {},
): void {
  const { a, b, out, M, N, K } = spec;
  const transA = spec.transA ?? false;
  const transB = spec.transB ?? false;
  for (const [n, v] of [["M", M], ["N", N], ["K", K]] as const) checkInt(n, v);
  checkF32("a", a);
  checkF32("b", b);
  checkF32("out", out);
  const [outer, inner] = typeof spec.batch === "object"
    ? [spec.batch[0], spec.batch[1]]
    : [1, spec.batch ?? 1];
  checkInt("batch", outer);
  checkInt("batch", inner);
  if (M === 0 || N === 0 || outer === 0 || inner === 0) return;
  const activation = spec.activation ?? "none";
  if (activation !== "none" && activation !== "gelu") {
    throw new RangeError(`matmul: unknown activation '${activation}'; use "none" or "gelu"`);
  }
  const lay = (
    t: GpuTensor,
    name: string,
    off: number | undefined,
    ld: number | undefined,
    ldDefault: number,
    stride: number | readonly [number, number] | undefined,
    rows: number,
  ): Layout => {
    const l = ld ?? ldDefault;
    const [s1, s0] = twoLevel(stride, [inner * rows * l, rows * l]);
    const lay: Layout = { t, name, off: off ?? 0, ld: l, s0, s1 };
    for (const [k, v] of Object.entries({ off: lay.off, ld: l, s0, s1 })) {
      checkInt(`${name}.${k}`, v);
    }
    return lay;
  };
  const A = lay(a, "a", spec.offsetA, spec.lda, transA ? M : K, spec.strideA, transA ? K : M);
  const B = lay(b, "b", spec.offsetB, spec.ldb, transB ? K : N, spec.strideB, transB ? N : K);
  const O = lay(out, "out", spec.offsetOut, spec.ldo, N, spec.strideOut, M);
  let R: Layout | null = null;
  if (spec.residual) {
    checkF32("residual", spec.residual);
    R = lay(
      spec.residual,
      "residual",
      spec.offsetResidual ?? O.off,
      spec.ldr ?? O.ld,
      N,
      spec.strideResidual ?? [O.s1, O.s0],
      M,
    );
  }
  for (const [name, t] of [["bias", spec.bias], ["scale", spec.scale]] as const) {
    if (!t) continue;
    checkF32(name, t);
    if (t.numel !== N) {
      throw new RangeError(`matmul: ${name} has shape [${t.shape}] but N is ${N}; expected [${N}]`);
    }
  }
  const ops = operands({ M, N, K, transA, transB }, A, B, O, R);
  for (const op of ops) {
    const [lo, hi] = op.extent(0, outer, 0, inner, 0, M);
    if (K === 0 && op.lay !== O && op.lay !== R) continue;
    if (lo < 0 || hi > op.lay.t.numel) {
      throw new RangeError(
        `matmul: '${op.lay.name}' [${op.lay.t.shape}] is too small for M=${M} N=${N} K=${K} ` +
          `batch=[${outer},${inner}] with offset ${op.lay.off}, ld ${op.lay.ld}, strides ` +
          `[${op.lay.s1},${op.lay.s0}]: elements up to ${hi} are needed, it has ${op.lay.t.numel}`,
      );
    }
  }
  let variant = selectMatmulVariant(
    gpu,
    { M, N, K, batch: outer * inner, transA, transB },
    internal,
  );
  if (
    variant.kind === "tex" && !texEligible(gpu, { M, N, K, transA, transB }, outer * inner, A, B)
  ) {
    // Layouts a texture copy cannot take: the buffer kernel of the same register block.
    const { tm, tn } = variant;
    variant = fitVariant(
      { kind: "reg", tm: Math.min(tm, 16), tn: Math.min(tn, 16), wgm: 8, wgn: 2 },
      M,
      N,
    );
  }
  const plain = !spec.bias && !spec.scale && !R && activation === "none";
  if (variant.kind === "reg" && variant.kChunk && K > variant.kChunk && plain) {
    // Split-K over consecutive dispatches: alpha distributes over the partial sums, and every
    // chunk after the first accumulates. Batch strides stay those of the whole operands.
    const kc = variant.kChunk;
    const whole: MatmulVariant = { ...variant, kChunk: undefined };
    for (let k0 = 0; k0 < K; k0 += kc) {
      matmulStrided(gpu, {
        ...spec,
        K: Math.min(kc, K - k0),
        offsetA: A.off + (transA ? k0 * A.ld : k0),
        offsetB: B.off + (transB ? k0 : k0 * B.ld),
        lda: A.ld,
        ldb: B.ld,
        strideA: [A.s1, A.s0],
        strideB: [B.s1, B.s0],
        accumulate: (spec.accumulate ?? false) || k0 > 0,
      }, { ...internal, variant: whole });
    }
    return;
  }
  // K = 0 is an empty sum: the kernel runs only its epilogue, and A/B get 1-element scalar
  // windows that are never read.
  const vec = vecFlags(M, N, K, transA, transB, A, B, O, R);
  if (K === 0) vec.a = vec.b = false;
  const f16B = variant.kind === "tex" && (spec.precision ?? "f32") === "f16" &&
    gpu.features.f16 && transB && K % 8 === 0;
  const ks: KernelSpec = {
    f16B,
    variant,
    transA,
    transB,
    vecA: vec.a,
    vecB: vec.b,
    vecO: vec.o,
    bias: !!spec.bias,
    gelu: activation === "gelu",
    scale: !!spec.scale,
    residual: !!R,
    accumulate: spec.accumulate ?? false,
  };
  const k = matmulKernel(ks);
  const block = blockOf(variant);
  const maxBytes = Math.min(
    internal.maxBindingBytes ?? Infinity,
    gpu.limits.maxStorageBufferBindingSize,
  );
  const maxWg = gpu.limits.maxComputeWorkgroupsPerDimension;
  const gx = Math.ceil(N / block.cols);
  if (gx > maxWg) {
    throw new GpuLimitError(
      `matmul: N=${N} needs ${gx} workgroups along x, over maxComputeWorkgroupsPerDimension ` +
        `(${maxWg}); split the output columns`,
    );
  }
  // Texture operands are not buffer bindings; their height caps the rows of a dispatch.
  const chunks = planChunks(
    gpu,
    K === 0 || variant.kind === "tex" ? ops.slice(2) : ops,
    outer,
    inner,
    M,
    block.rows,
    maxBytes,
    variant.kind === "tex"
      ? Math.min(gpu.limits.maxTextureDimension2D, internal.maxTextureRows ?? Infinity)
      : Infinity,
  );
  const tex = variant.kind === "tex" ? texOperands(gpu, K, N, transB, B, chunks, f16B) : null;
  const small = (t: GpuTensor): BufferView => bindWindow(gpu, t, 0, 1).view;
  const extras = (t: GpuTensor) => bindWindow(gpu, t, 0, t.numel);
  const biasW = spec.bias ? extras(spec.bias) : null;
  const scaleW = spec.scale ? extras(spec.scale) : null;
  for (const c of chunks) {
    const views: BufferView[] = [];
    const offs: number[] = [];
    if (tex) {
      // This chunk's rows of A into the A texture (B's texture is filled once for all).
      const bytes = (A.off + c.r0 * A.ld) * 4;
      gpu.copyToTexture(
        { buffer: a.buffer, offset: a.offset + bytes, size: c.nr * A.ld * 4 },
        A.ld * 4,
        tex.a,
        K / 4,
        c.nr,
      );
    }
    for (const [i, op] of ops.entries()) {
      if ((K === 0 || tex) && i < 2) {
        views.push(small(op.lay.t));
        offs.push(0);
        continue;
      }
      const [lo, hi] = op.extent(c.o0, c.o0 + c.no, c.i0, c.i0 + c.ni, c.r0, c.r0 + c.nr);
      const w = bindWindow(gpu, op.lay.t, lo, hi);
      views.push(w.view);
      // w.shift counts from element lo; the kernel's offsets count from the window's start.
      offs.push(w.shift - lo + op.lay.off + op.start(c.o0, c.i0, c.r0));
    }
    const bufs: (BufferView | GpuTexture)[] = tex
      ? [tex.a, tex.b, views[2]]
      : [views[0], views[1], views[2]];
    if (biasW) bufs.push(biasW.view);
    if (scaleW) bufs.push(scaleW.view);
    if (R) bufs.push(views[3]);
    const P: Record<ParamName, number> = {
      M: c.nr,
      N,
      K,
      lda: A.ld,
      ldb: B.ld,
      ldo: O.ld,
      ldr: R?.ld ?? 0,
      offA: offs[0],
      offB: offs[1],
      offO: offs[2],
      offR: R ? offs[3] : 0,
      offBias: biasW?.shift ?? 0,
      offScale: scaleW?.shift ?? 0,
      bInner: c.ni,
      sA0: A.s0,
      sA1: A.s1,
      sB0: B.s0,
      sB1: B.s1,
      sO0: O.s0,
      sO1: O.s1,
      sR0: R?.s0 ?? 0,
      sR1: R?.s1 ?? 0,
    };
    const params = new Uniforms(UNIFORM_BYTES);
    for (const f of PARAM_FIELDS) params.u32(P[f]);
    params.f32(spec.alpha ?? 1);
    gpu.dispatch(k, bufs, [gx, Math.ceil(c.nr / block.rows), c.no * c.ni], params.bytes);
  }
  if (tex) gpu.releaseTexture(tex.a, tex.b);
}

/**
 * Whether the `tex` kernel can run this multiply: one batch, K a multiple of 4, A plain and B
 * either way, each stored as rows a buffer-to-texture copy can take (a row pitch that is a
 * multiple of 256 bytes, a start at a multiple of 16 bytes), within the texture size limit.
 */
export function texEligible(
  gpu: Pick<Gpu, "limits">,
  sp: { M: number; N: number; K: number; transA: boolean; transB: boolean },
  batch: number,
  A: Layout,
  B: Layout,
): boolean {
  const max = gpu.limits.maxTextureDimension2D;
  const { N, K } = sp;
  const rows = (l: Layout) => (l.ld * 4) % 256 === 0 && (l.t.offset + l.off * 4) % 16 === 0;
  if (batch !== 1 || sp.transA || K === 0 || K % 4 !== 0 || K / 4 > max) return false;
  if (!rows(A) || !rows(B)) return false;
  return sp.transB ? N <= max : N % 4 === 0 && N / 4 <= max && K <= max;
}

/**
 * The textures of a `tex` dispatch: B copied whole ((K/4) × N transposed, (N/4) × K plain),
 * and an A texture tall enough for the largest row chunk, filled per chunk.
 */
function texOperands(
  gpu: Gpu,
  K: number,
  N: number,
  transB: boolean,
  B: Layout,
  chunks: readonly { nr: number }[],
  f16B: boolean,
): { a: GpuTexture; b: GpuTexture } {
  const rows = Math.max(...chunks.map((c) => c.nr));
  const a = gpu.texture(K / 4, rows, "rgba32float", "matmul A");
  if (f16B) {
    // B [N, K] packed to halves: (K/8) × N texels of 8 halves, by a kernel (a copy cannot).
    const b = gpu.texture(K / 8, N, "rgba32uint", "matmul B f16");
    const win = bindWindow(gpu, B.t, B.off, B.off + (N - 1) * B.ld + K);
    const params = new Uniforms(16).u32(win.shift).u32(B.ld).u32(K / 8).u32(N);
    gpu.dispatch(packF16Kernel, [win.view, b], [Math.ceil(K / 64), Math.ceil(N / 8)], params.bytes);
    return { a, b };
  }
  const [w, h] = transB ? [K / 4, N] : [N / 4, K];
  const b = gpu.texture(w, h, "rgba32float", "matmul B");
  gpu.copyToTexture(
    { buffer: B.t.buffer, offset: B.t.offset + B.off * 4, size: h * B.ld * 4 },
    B.ld * 4,
    b,
    w,
    h,
  );
  return { a, b };
}

/** Element strides of a contiguous operand's batch dims within `outBatch` (0 = broadcast). */
export function batchStrides(
  batch: readonly number[],
  outBatch: readonly number[],
  mat: number,
): number[] {
  return broadcastStrides(batch, outBatch).map((s) => s * mat);
}

/** Dims of the matrices of a and b after transposition flags: M, K (from a), N (from b). */
export function matDims(
  a: GpuTensor,
  b: GpuTensor,
  transA: boolean,
  transB: boolean,
): { M: number; K: number; N: number } {
  if (a.shape.length < 2 || b.shape.length < 2) {
    throw new RangeError(
      `matmul: operands need at least 2 dims, got a [${a.shape}] and b [${b.shape}]; ` +
        `reshape vectors to [1, n] or [n, 1]`,
    );
  }
  const [a0, a1] = a.shape.slice(-2);
  const [b0, b1] = b.shape.slice(-2);
  const M = transA ? a1 : a0;
  const K = transA ? a0 : a1;
  const Kb = transB ? b1 : b0;
  const N = transB ? b0 : b1;
  if (K !== Kb) {
    throw new RangeError(
      `matmul: a [${a.shape}] (transA=${transA}) has K=${K} but b [${b.shape}] ` +
        `(transB=${transB}) has K=${Kb}; check the transpose flags`,
    );
  }
  return { M, K, N };
}

/**
 * out = residual + scale ⊙ act(alpha · op(a) · op(b) + bias), batch dims broadcast numpy-style.
 * Returns a new tensor of shape [...batch, M, N], or `opts.accumulate` after adding into it.
 */
export function matmul(
  gpu: Gpu,
  a: GpuTensor,
  b: GpuTensor,
  opts: MatmulOptions = {},
  internal: MatmulInternal = {},
): GpuTensor {
  const transA = opts.transA ?? false;
  const transB = opts.transB ?? false;
  const { M, K, N } = matDims(a, b, transA, transB);
  const aBatch = a.shape.slice(0, -2);
  const bBatch = b.shape.slice(0, -2);
  const outBatch = broadcastShapes("matmul (batch dims)", aBatch, bBatch);
  const outShape = [...outBatch, M, N];
  for (const [name, t] of [["residual", opts.residual], ["accumulate", opts.accumulate]] as const) {
    if (t && !sameShape(t.shape, outShape)) {
      throw new RangeError(
        `matmul: ${name} has shape [${t.shape}] but the output is [${outShape}]`,
      );
    }
  }
  const out = opts.accumulate ?? gpu.empty(outShape, "f32", "matmul");
  if (numel(outShape) === 0) return out;
  const sA = batchStrides(aBatch, outBatch, M * K);
  const sB = batchStrides(bBatch, outBatch, K * N);
  const sO = batchStrides(outBatch, outBatch, M * N);
  // Collapse batch dims that are one stride progression for every operand.
  const dims = collapse(outBatch, [sA, sB, sO]);
  const base = {
    a,
    b,
    out,
    N,
    K,
    transA,
    transB,
    alpha: opts.alpha,
    bias: opts.bias,
    activation: opts.activation,
    scale: opts.scale,
    residual: opts.residual,
    accumulate: !!opts.accumulate,
    precision: opts.precision,
  };
  // A weight shared by every batch with plain row-major A: one tall multiply instead.
  const foldable = dims.sizes.length === 1 && dims.strides[1][0] === 0 && !transA &&
    dims.strides[0][0] === M * K;
  if (dims.sizes.length === 0 || foldable) {
    const rows = dims.sizes.length ? dims.sizes[0] * M : M;
    matmulStrided(gpu, { ...base, M: rows }, internal);
    return out;
  }
  // Two innermost collapsed dims go to the kernel; any further ones loop here.
  const nd = dims.sizes.length;
  const inner = dims.sizes[nd - 1];
  const outer = nd >= 2 ? dims.sizes[nd - 2] : 1;
  const loops = dims.sizes.slice(0, Math.max(0, nd - 2));
  const pick = (op: number, d: number) => dims.strides[op][d];
  const total = loops.reduce((x, y) => x * y, 1);
  for (let l = 0; l < total; l++) {
    let rem = l;
    const off = [0, 0, 0];
    for (let d = loops.length - 1; d >= 0; d--) {
      const i = rem % loops[d];
      rem = Math.floor(rem / loops[d]);
      for (let op = 0; op < 3; op++) off[op] += i * pick(op, d);
    }
    const two = (op: number): [number, number] => [
      nd >= 2 ? pick(op, nd - 2) : 0,
      pick(op, nd - 1),
    ];
    matmulStrided(gpu, {
      ...base,
      M,
      batch: [outer, inner],
      offsetA: off[0],
      offsetB: off[1],
      offsetOut: off[2],
      strideA: two(0),
      strideB: two(1),
      strideOut: two(2),
    }, internal);
  }
  return out;
}

/** Merges adjacent batch dims when every operand's strides chain; drops size-1 dims. */
function collapse(
  sizes: readonly number[],
  strides: number[][],
): { sizes: number[]; strides: number[][] } {
  const outS: number[] = [];
  const outT: number[][] = strides.map(() => []);
  for (let d = 0; d < sizes.length; d++) {
    if (sizes[d] === 1) continue;
    const last = outS.length - 1;
    if (last >= 0 && strides.every((s, op) => outT[op][last] === s[d] * sizes[d])) {
      outS[last] *= sizes[d];
      for (let op = 0; op < strides.length; op++) outT[op][last] = strides[op][d];
    } else {
      outS.push(sizes[d]);
      for (let op = 0; op < strides.length; op++) outT[op].push(strides[op][d]);
    }
  }
  return { sizes: outS, strides: outT };
}

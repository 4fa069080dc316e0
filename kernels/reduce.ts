/**
 * Reductions: sum, mean, max, squared norm and argmax along one axis or over
 * the whole tensor, plus the pair the autodiff graph needs for broadcasting
 * (`sumToShape`, `broadcastTo`).
 *
 * A reduction of axis k views x as [outer, R, inner]:
 * - inner = 1 (rows, and "all"): 8 threads share a row (strided vec4 loads,
 *   then a 3-level tree in workgroup memory), 32 rows per workgroup; a row
 *   longer than 8·64 vec4s is split into segments whose partials the same
 *   kernel reduces again.
 * - inner > 1 (axis 0 of [N, D], middle axes): a 2-D grid of (column,
 *   chunk of 16 rows); each invocation sums its chunk in blocks of 8 and the
 *   chunk partials are reduced again along axis 0 until one remains.
 * Both shapes were chosen by measurement on llvmpipe (see the constants) and
 * keep loads contiguous across neighbouring invocations for GPUs.
 *
 * Determinism: no atomics; every sum has a fixed order for a given shape.
 * Accuracy: no running sum is longer than 64 terms before it is combined
 * pairwise (tree) or blockwise, so error grows like (64 + log n)·ε rather
 * than n·ε: a sum of 1e7 values keeps ~1e-6 relative accuracy.
 */
import { GpuLimitError } from "./errors.ts";
import {
  FLAT_WORKGROUP_INDEX,
  flatMain,
  grid,
  GRID_BUILTINS,
  type Kernel,
  kernel,
} from "./kernel.ts";
import {
  broadcastIndex,
  broadcastShapes,
  checkTensor,
  fmtShape,
  normalizeAxis,
  sameShape,
} from "./common/shape.ts";
import { type Span, splitSpans } from "./common/split.ts";
import { bindableElements, bindWindow, vec4Rows } from "./common/window.ts";
import { operand, stridedMap } from "./strided_map.ts";
import type { Gpu } from "./runtime.ts";
import { type GpuTensor, numel, retag } from "./tensor.ts";
import { Uniforms } from "./uniforms.ts";

/** A reduction axis (negative counts from the end) or every element. */
export type Axis = number | "all";

/** Options of the reductions. */
export interface ReduceOptions {
  /** Axis to reduce (default -1, the last) or "all". */
  axis?: Axis;
  /** Keep the reduced axis as size 1 (default false). */
  keepDims?: boolean;
}

/** What a stage does with each loaded value and how it combines two partials. */
type ReduceOp = "sum" | "sqsum" | "max";

/**
 * Row kernel shape: 8 threads share a row (or a segment of a long one), 32
 * rows per 256-wide workgroup, so a 3-level tree with 3 barriers serves 32
 * rows. On llvmpipe barriers are costly (a workgroup per row measured 3–4×
 * slower); on GPUs 8 threads read 128 contiguous bytes of a row per step.
 */
const ROW_WG = 256;
const ROW_TPR = 8;
/** Load units (vec4s or scalars) per thread and segment: the longest sequential run. */
const ROW_PER_THREAD = 64;
/** argmax keeps a workgroup of 64 per row (a rarely hot op; long rows such as 65k logits). */
const ARGMAX_WG = 64;
/** Column stages: 64 columns per workgroup, chunks of 16 rows summed in blocks of 8. */
const COL_WG = 64;
const COL_BLOCK = 8;
const COL_CHUNK = 16;

/** -inf: WGSL has no infinity literal. */
const NEG_INF = "bitcast<f32>(0xff800000u)";

/**
 * WGSL NaN tests on the bits: llvmpipe's compiler folds `a != a` to false
 * (WGSL lets implementations assume no NaN in float comparisons).
 */
export const ISNAN_WGSL = `
fn isnan1(a: f32) -> bool { return (bitcast<u32>(a) & 0x7fffffffu) > 0x7f800000u; }
fn isnan4(a: vec4<f32>) -> vec4<bool> {
  return (bitcast<vec4<u32>>(a) & vec4<u32>(0x7fffffffu)) > vec4<u32>(0x7f800000u);
}`;

function combineFn(op: ReduceOp, T: string, name = "comb"): string {
  if (op === "max") {
    // max() of a NaN is implementation-defined in WGSL; propagate NaN explicitly.
    const nan = T === "f32" ? "isnan1" : "isnan4";
    return `fn ${name}(a: ${T}, b: ${T}) -> ${T} {
  return select(select(max(a, b), b, ${nan}(b)), a, ${nan}(a));
}`;
  }
  return `fn ${name}(a: ${T}, b: ${T}) -> ${T} { return a + b; }`;
}

function identity(op: ReduceOp, T: string): string {
  return op === "max" ? `${T}(${NEG_INF})` : `${T}(0.0)`;
}

/** Horizontal combine of a vec4 partial: pairwise, (x∘y)∘(z∘w). */
function horizontal(vec: boolean): string {
  return vec ? "comb(comb(acc.x, acc.y), comb(acc.z, acc.w))" : "acc";
}

const kernels = new Map<string, Kernel>();

function cached(key: string, make: () => Kernel): Kernel {
  let k = kernels.get(key);
  if (!k) {
    k = make();
    kernels.set(key, k);
  }
  return k;
}

/**
 * Row kernel: 8 threads per work item (a row, or a segment of a long row),
 * one partial per item. `multi` (nseg > 1) adds the row/segment split.
 */
function rowKernel(
  op: ReduceOp,
  square: boolean,
  scaled: boolean,
  vec: boolean,
  multi: boolean,
): Kernel {
  const key = `${op}|${square}|${scaled}|${vec}|${multi}`;
  return cached(`row|${key}`, () => {
    const T = vec ? "vec4<f32>" : "f32";
    const perWg = ROW_WG / ROW_TPR;
    return kernel({
      name: `reduce_rows_${op}`,
      key,
      bindings: ["read", "read_write"],
      uniformBytes: 32,
      source: () => `
struct P { items: u32, len: u32, seg: u32, nseg: u32, xshift: u32, xbase: u32, wbase: u32, scale: f32 }
@group(0) @binding(0) var<storage, read> x: array<${T}>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<uniform> p: P;
var<workgroup> sh: array<f32, ${ROW_WG}>;
${ISNAN_WGSL}
${combineFn(op, "f32")}
${vec ? combineFn(op, T, "combv") : ""}
@compute @workgroup_size(${ROW_WG})
fn main(${GRID_BUILTINS}) {
  let lane = lid % ${ROW_TPR}u;
  let local = ${FLAT_WORKGROUP_INDEX} * ${perWg}u + lid / ${ROW_TPR}u;
  let w = p.wbase + local;
  var acc = ${identity(op, T)};
  // Items past the end still reach every barrier, with an empty range.
  if (local < p.items) {
    ${
        multi
          ? `let row = w / p.nseg;
    let s = w - row * p.nseg;
    let start = row * p.len + s * p.seg;
    let end = row * p.len + min(p.len, (s + 1u) * p.seg);`
          : `let start = w * p.len;
    let end = start + p.len;`
      }
    for (var i = start + lane; i < end; i += ${ROW_TPR}u) {
      let v = x[p.xshift + i - p.xbase];
      acc = ${vec ? "combv" : "comb"}(acc, ${square ? "v * v" : "v"});
    }
  }
  sh[lid] = ${horizontal(vec)};
  workgroupBarrier();
  for (var h = ${ROW_TPR / 2}u; h > 0u; h >>= 1u) {
    if (lane < h) { sh[lid] = comb(sh[lid], sh[lid + h]); }
    workgroupBarrier();
  }
  if (lane == 0u && local < p.items) { out[w] = sh[lid]${scaled ? " * p.scale" : ""}; }
}`,
    });
  });
}

/**
 * Column kernel on a 2-D grid: x runs over columns (64 per workgroup, loads
 * linear in the lane), y·z over (outer, chunk) blocks; each invocation sums
 * one chunk of ≤ 16 rows of one (vec4) column in blocks of 8.
 */
function colKernel(op: ReduceOp, square: boolean, scaled: boolean, vec: boolean): Kernel {
  const key = `${op}|${square}|${scaled}|${vec}`;
  return cached(`col|${key}`, () => {
    const T = vec ? "vec4<f32>" : "f32";
    return kernel({
      name: `reduce_cols_${op}`,
      key,
      bindings: ["read", "read_write"],
      uniformBytes: 48,
      source: () => `
struct P { outer: u32, len: u32, inner: u32, chunk: u32, nchunk: u32, xshift: u32, xbase: u32,
           bbase: u32, blocks: u32, jbase: u32, scale: f32 }
@group(0) @binding(0) var<storage, read> x: array<${T}>;
@group(0) @binding(1) var<storage, read_write> out: array<${T}>;
@group(0) @binding(2) var<uniform> p: P;
${ISNAN_WGSL}
${combineFn(op, T)}
@compute @workgroup_size(${COL_WG})
fn main(${GRID_BUILTINS}) {
  let j = p.jbase + wid.x * ${COL_WG}u + lid;
  let local = wid.y + wid.z * nwg.y;
  if (j >= p.inner || local >= p.blocks) { return; }
  // Blocks run (outer, chunk) so a window of them reads one contiguous range of x.
  let b = p.bbase + local;
  let o = b / p.nchunk;
  let c = b - o * p.nchunk;
  let r0 = c * p.chunk;
  let n = min(p.len, r0 + p.chunk) - r0;
  // Row r0 of this column; xbase is the window's first element, at or before it.
  let base = p.xshift + (o * p.len + r0) * p.inner - p.xbase + j;
  var total = ${identity(op, T)};
  for (var b8 = 0u; b8 < n; b8 += ${COL_BLOCK}u) {
    var part = ${identity(op, T)};
    for (var r = b8; r < min(n, b8 + ${COL_BLOCK}u); r++) {
      let v = x[base + r * p.inner];
      part = comb(part, ${square ? "v * v" : "v"});
    }
    total = comb(total, part);
  }
  out[(c * p.outer + o) * p.inner + j] = total${scaled ? " * p.scale" : ""};
}`,
    });
  });
}

/**
 * What one stage of a reduction computes: `op` ("sum" or "max"), of squares
 * (the first stage of "sqsum"), times `scale` when it is the last stage (mean).
 */
interface Stage {
  op: ReduceOp;
  square: boolean;
  scale: number | null;
}

/** One stage over rows of `len` (inner = 1). Returns partials [rows, nseg] (nseg = 1: done). */
function rowStage(
  gpu: Gpu,
  x: GpuTensor,
  rows: number,
  len: number,
  { op, square, scale }: Stage,
): { out: GpuTensor; nseg: number } {
  const vec = vec4Rows(len, x);
  const V = vec ? 4 : 1;
  const lenU = len / V;
  const segMax = ROW_TPR * ROW_PER_THREAD;
  const nseg = Math.ceil(lenU / segMax);
  // Spread a long row evenly over its segments (each a multiple of the threads per row).
  const seg = nseg === 1 ? lenU : Math.ceil(lenU / nseg / ROW_TPR) * ROW_TPR;
  const final = nseg === 1 && scale !== null;
  const k = rowKernel(op, square, final, vec, nseg > 1);
  const out = gpu.empty([rows, nseg], "f32", `reduce_${op}`);
  const total = rows * nseg;
  // Work items (row segments) lie one after another in x: split them into windows.
  const items = windowSpans(gpu, `reduce (${op})`, total, Math.min(seg, lenU) * V);
  const start = (w: number) => Math.floor(w / nseg) * lenU + (w % nseg) * seg;
  const end = (w: number) => Math.floor(w / nseg) * lenU + Math.min(lenU, ((w % nseg) + 1) * seg);
  const perWg = ROW_WG / ROW_TPR;
  for (const { start: w0, count } of items) {
    const w1 = w0 + count;
    const xbase = start(w0);
    const win = bindWindow(gpu, x, xbase * V, end(w1 - 1) * V);
    const p = new Uniforms(32).u32(w1 - w0).u32(lenU).u32(seg).u32(nseg).u32(win.shift / V)
      .u32(xbase).u32(w0).f32(scale ?? 1);
    gpu.dispatch(k, [win.view, out], grid(Math.ceil((w1 - w0) / perWg)), p.bytes);
  }
  return { out, nseg };
}

/** Rows per chunk of a column stage: all of them when few, else 16 (more stages follow). */
function colChunk(len: number): number {
  return len <= 2 * COL_CHUNK ? len : COL_CHUNK;
}

/** One stage over [outer, len, inner]; returns partials [nchunk, outer, inner]. */
function colStage(
  gpu: Gpu,
  x: GpuTensor,
  [outer, len, inner]: [number, number, number],
  { op, square, scale }: Stage,
): { out: GpuTensor; nchunk: number } {
  const vec = vec4Rows(inner, x);
  const V = vec ? 4 : 1;
  const innerU = inner / V;
  const limit = Math.floor(bindableElements(gpu) / V);
  if (innerU > limit) throw tooBig(gpu, `reduce (${op})`, x);
  // A chunk of rows must fit one binding.
  const chunk = Math.max(1, Math.min(colChunk(len), Math.floor(limit / innerU)));
  const nchunk = Math.ceil(len / chunk);
  if (nchunk * outer * inner > bindableElements(gpu)) throw tooBig(gpu, `reduce (${op})`, x);
  const final = nchunk === 1 && scale !== null;
  const k = colKernel(op, square, final, vec);
  const out = gpu.empty([nchunk, outer, inner], "f32", `reduce_${op}`);
  const blocks = outer * nchunk;
  const spans = windowSpans(gpu, `reduce (${op})`, blocks, chunk * inner);
  const first = (b: number) => (Math.floor(b / nchunk) * len + (b % nchunk) * chunk) * innerU;
  const last = (b: number) =>
    (Math.floor(b / nchunk) * len + Math.min(len, ((b % nchunk) + 1) * chunk)) * innerU;
  const maxDim = gpu.limits.maxComputeWorkgroupsPerDimension;
  for (const { start: b0, count } of spans) {
    const b1 = b0 + count;
    const xbase = first(b0);
    const win = bindWindow(gpu, x, xbase * V, last(b1 - 1) * V);
    const y = Math.min(b1 - b0, maxDim);
    const z = Math.ceil((b1 - b0) / y);
    // Columns beyond 64·maxDim go in further dispatches (jbase).
    for (let j0 = 0; j0 < innerU; j0 += COL_WG * maxDim) {
      const xs = Math.min(maxDim, Math.ceil((innerU - j0) / COL_WG));
      const p = new Uniforms(48).u32(outer).u32(len).u32(innerU).u32(chunk).u32(nchunk)
        .u32(win.shift / V).u32(xbase).u32(b0).u32(b1 - b0).u32(j0).f32(scale ?? 1);
      gpu.dispatch(k, [win.view, out], [xs, y, z], p.bytes);
    }
  }
  return { out, nchunk };
}

/** Spans of `count` consecutive items of `elements` f32 each in x, one binding window each. */
function windowSpans(gpu: Gpu, op: string, count: number, elements: number): Span[] {
  return splitSpans(gpu.limits, {
    op,
    item: `block of ${elements} values`,
    count,
    itemBytes: [elements * 4],
    starts: "window",
    fix: "reduce a smaller tensor",
  });
}

function tooBig(gpu: Gpu, op: string, x: GpuTensor): GpuLimitError {
  return new GpuLimitError(
    `${op}: x ${fmtShape(x.shape)} cannot be split to fit maxStorageBufferBindingSize ` +
      `(${gpu.limits.maxStorageBufferBindingSize} B); reduce a smaller tensor`,
  );
}

/**
 * Reduces x viewed as [outer, len, inner] over `len`; returns a fresh
 * [outer·inner] tensor. `scale` multiplies the result (mean) in the last stage.
 */
function reduce3(
  gpu: Gpu,
  x: GpuTensor,
  outer: number,
  len: number,
  inner: number,
  op: ReduceOp,
  scale: number | null,
): GpuTensor {
  let cur = x;
  const stage: Stage = { op: op === "max" ? "max" : "sum", square: op === "sqsum", scale };
  const release = (t: GpuTensor) => {
    if (t !== x) gpu.release(t);
  };
  if (inner === 1) {
    const rows = outer;
    let n = len;
    for (;;) {
      const { out, nseg } = rowStage(gpu, cur, rows, n, stage);
      release(cur);
      cur = out;
      stage.square = false;
      if (nseg === 1) return cur;
      n = nseg;
    }
  }
  let o = outer;
  let n = len;
  let i = inner;
  for (;;) {
    const { out, nchunk } = colStage(gpu, cur, [o, n, i], stage);
    release(cur);
    cur = out;
    stage.square = false;
    if (nchunk === 1) return cur;
    // Partials [nchunk, outer, inner]: reduce their axis 0 next.
    n = nchunk;
    i = o * i;
    o = 1;
  }
}

/** Resolves axis options to the [outer, len, inner] view and the output shape. */
function plan(
  op: string,
  x: GpuTensor,
  opts: ReduceOptions,
): { outer: number; len: number; inner: number; shape: number[] } {
  const axis = opts.axis ?? -1;
  const keep = opts.keepDims ?? false;
  if (axis === "all") {
    return { outer: 1, len: x.numel, inner: 1, shape: keep ? x.shape.map(() => 1) : [] };
  }
  const a = normalizeAxis(op, axis, x.shape.length);
  const shape = keep ? x.shape.map((d, i) => (i === a ? 1 : d)) : x.shape.filter((_, i) => i !== a);
  return {
    outer: numel(x.shape.slice(0, a)),
    len: x.shape[a],
    inner: numel(x.shape.slice(a + 1)),
    shape,
  };
}

/** A fresh tensor of `shape` filled with `value` (used for empty reductions). */
function filled(gpu: Gpu, shape: number[], value: number, label: string): GpuTensor {
  const y = gpu.empty(shape, "f32", label);
  stridedMap(gpu, {
    name: "fill",
    body: "return p.s0;",
    shape,
    inputs: [],
    out: operand(y, shape),
    scalars: [value],
  });
  return y;
}

function reduceOp(
  gpu: Gpu,
  name: string,
  op: ReduceOp,
  x: GpuTensor,
  opts: ReduceOptions,
  mean = false,
): GpuTensor {
  checkTensor(name, "x", x, "f32");
  const { outer, len, inner, shape } = plan(name, x, opts);
  if (numel(shape) === 0) return gpu.empty(shape, "f32", name);
  if (len === 0) {
    if (op === "max") {
      throw new RangeError(
        `${name}: cannot take the max over an empty axis of x ${fmtShape(x.shape)}`,
      );
    }
    // torch: sum of nothing is 0, mean of nothing is NaN.
    return mean ? filled(gpu, shape, NaN, name) : gpu.zeros(shape, "f32", name);
  }
  return retag(reduce3(gpu, x, outer, len, inner, op, mean ? 1 / len : null), shape);
}

/**
 * The fresh result `y` under its final shape, still owning its buffer (a
 * `reshape` view would not own it, and the caller must be able to release it).
 */

/** Σ x along `axis` (default -1) or over "all" elements. */
export function sum(gpu: Gpu, x: GpuTensor, opts: ReduceOptions = {}): GpuTensor {
  return reduceOp(gpu, "sum", "sum", x, opts);
}

/** Mean along `axis` (default -1) or over "all" (NaN for an empty axis, as torch). */
export function mean(gpu: Gpu, x: GpuTensor, opts: ReduceOptions = {}): GpuTensor {
  return reduceOp(gpu, "mean", "sum", x, opts, true);
}

/** Max along `axis` (default -1) or over "all"; NaN propagates. */
export function max(gpu: Gpu, x: GpuTensor, opts: ReduceOptions = {}): GpuTensor {
  return reduceOp(gpu, "max", "max", x, opts);
}

/** Σ x² along `axis` (default -1) or over "all" (gradient-norm clipping). */
export function sqNorm(gpu: Gpu, x: GpuTensor, opts: ReduceOptions = {}): GpuTensor {
  return reduceOp(gpu, "sqNorm", "sqsum", x, opts);
}

// ----------------------------------------------------------------- argmax

/**
 * WGSL: whether candidate (bv, bi) beats (av, ai) for argmax: larger value,
 * the smaller index on ties, and any NaN beats a number (torch returns the
 * first NaN).
 */
const BETTER = `${ISNAN_WGSL}
fn better(av: f32, ai: u32, bv: f32, bi: u32) -> bool {
  let an = isnan1(av);
  let bn = isnan1(bv);
  if (an) { return bn && bi < ai; }
  if (bn) { return true; }
  return bv > av || (bv == av && bi < ai);
}`;

function argmaxRowKernel(): Kernel {
  return cached("argmax_rows", () =>
    kernel({
      name: "argmax_rows",
      bindings: ["read", "read_write"],
      uniformBytes: 16,
      source: () => `
struct P { rows: u32, len: u32, xshift: u32, rbase: u32 }
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@group(0) @binding(2) var<uniform> p: P;
var<workgroup> shv: array<f32, ${ARGMAX_WG}>;
var<workgroup> shi: array<u32, ${ARGMAX_WG}>;
${BETTER}
@compute @workgroup_size(${ARGMAX_WG})
fn main(${GRID_BUILTINS}) {
  let row = ${FLAT_WORKGROUP_INDEX};
  var bv = ${NEG_INF};
  var bi = 0xffffffffu;
  if (row < p.rows) {
    for (var i = lid; i < p.len; i += ${ARGMAX_WG}u) {
      let v = x[p.xshift + row * p.len + i];
      if (better(bv, bi, v, i)) { bv = v; bi = i; }
    }
  }
  shv[lid] = bv;
  shi[lid] = bi;
  workgroupBarrier();
  for (var h = ${ARGMAX_WG / 2}u; h > 0u; h >>= 1u) {
    if (lid < h && better(shv[lid], shi[lid], shv[lid + h], shi[lid + h])) {
      shv[lid] = shv[lid + h];
      shi[lid] = shi[lid + h];
    }
    workgroupBarrier();
  }
  if (lid == 0u && row < p.rows) { out[p.rbase + row] = shi[0]; }
}`,
    }));
}

function argmaxColKernel(): Kernel {
  return cached("argmax_cols", () =>
    kernel({
      name: "argmax_cols",
      bindings: ["read", "read_write"],
      uniformBytes: 32,
      source: () => `
struct P { outer: u32, len: u32, inner: u32, xshift: u32, obase: u32, pad0: u32, pad1: u32, pad2: u32 }
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@group(0) @binding(2) var<uniform> p: P;
${BETTER}
${flatMain(64, "e", "p.outer * p.inner")}
  let o = e / p.inner;
  let j = e % p.inner;
  var bv = ${NEG_INF};
  var bi = 0xffffffffu;
  for (var r = 0u; r < p.len; r++) {
    let v = x[p.xshift + (o * p.len + r) * p.inner + j];
    if (better(bv, bi, v, r)) { bv = v; bi = r; }
  }
  out[p.obase + e] = bi;
}`,
    }));
}

/**
 * Index of the max along `axis` (default -1) as u32, the first one on ties
 * (like torch.argmax); a NaN counts as the max (the first NaN wins).
 */
export function argmax(gpu: Gpu, x: GpuTensor, axis: number = -1): GpuTensor {
  checkTensor("argmax", "x", x, "f32");
  const { outer, len, inner, shape } = plan("argmax", x, { axis });
  if (len === 0 && outer * inner > 0) {
    throw new RangeError(
      `argmax: cannot take the argmax over an empty axis of ${fmtShape(x.shape)}`,
    );
  }
  const y = gpu.empty(shape, "u32", "argmax");
  if (y.numel === 0) return y;
  // Windows of whole outer blocks (len·inner elements each).
  const block = len * inner;
  for (const { start: o0, count } of windowSpans(gpu, "argmax", outer, block)) {
    const o1 = o0 + count;
    const win = bindWindow(gpu, x, o0 * block, o1 * block);
    if (inner === 1) {
      const p = new Uniforms(16).u32(o1 - o0).u32(len).u32(win.shift).u32(o0).bytes;
      gpu.dispatch(argmaxRowKernel(), [win.view, y], grid(o1 - o0), p);
    } else {
      const p = new Uniforms(32).u32(o1 - o0).u32(len).u32(inner).u32(win.shift).u32(o0 * inner)
        .bytes;
      gpu.dispatch(argmaxColKernel(), [win.view, y], grid(Math.ceil(((o1 - o0) * inner) / 64)), p);
    }
  }
  return y;
}

// ------------------------------------------------------ broadcast pair

/**
 * Sums `x` down to `shape`, which must broadcast to x's shape (the backward
 * of broadcasting): leading extra dims and dims where `shape` has 1 are
 * summed. Returns a fresh tensor of `shape` (a copy when nothing is reduced).
 */
export function sumToShape(gpu: Gpu, x: GpuTensor, shape: number[]): GpuTensor {
  checkTensor("sumToShape", "x", x, "f32");
  let ok = shape.length <= x.shape.length;
  try {
    ok &&= sameShape(broadcastShapes("sumToShape", shape, x.shape), x.shape);
  } catch {
    ok = false;
  }
  if (!ok) {
    throw new RangeError(
      `sumToShape: ${fmtShape(shape)} does not broadcast to x ${fmtShape(x.shape)}; ` +
        `the target must be x's shape with some dims set to 1 or dropped from the left`,
    );
  }
  const lead = x.shape.length - shape.length;
  // Groups of neighbouring dims that are all reduced or all kept (size-1 dims dropped).
  const groups: { size: number; reduced: boolean }[] = [];
  x.shape.forEach((n, d) => {
    if (n === 1) return;
    const reduced = d < lead || shape[d - lead] === 1;
    const g = groups[groups.length - 1];
    if (g && g.reduced === reduced) g.size *= n;
    else groups.push({ size: n, reduced });
  });
  const y0 = numel(shape);
  if (x.numel === 0 || !groups.some((g) => g.reduced)) {
    if (x.numel === 0) return gpu.zeros(shape, "f32", "sumToShape");
    const y = gpu.empty(shape, "f32", "sumToShape");
    gpu.copy(x, y, x.size);
    return y;
  }
  let cur = x;
  while (groups.some((g) => g.reduced)) {
    // Largest reduced group first: later passes then read less.
    let gi = -1;
    groups.forEach((g, i) => {
      if (g.reduced && (gi < 0 || g.size > groups[gi].size)) gi = i;
    });
    const outer = groups.slice(0, gi).reduce((s, g) => s * g.size, 1);
    const inner = groups.slice(gi + 1).reduce((s, g) => s * g.size, 1);
    const next = reduce3(gpu, cur, outer, groups[gi].size, inner, "sum", null);
    if (cur !== x) gpu.release(cur);
    cur = next;
    groups.splice(gi, 1);
  }
  if (cur.numel !== y0) throw new Error(`sumToShape: internal size mismatch`);
  return retag(cur, shape);
}

/** `x` materialised at `shape` (numpy broadcasting; any dtype). */
export function broadcastTo(gpu: Gpu, x: GpuTensor, shape: number[]): GpuTensor {
  checkTensor("broadcastTo", "x", x);
  let ok = x.shape.length <= shape.length;
  try {
    ok &&= sameShape(broadcastShapes("broadcastTo", x.shape, shape), shape);
  } catch {
    ok = false;
  }
  if (!ok) {
    throw new RangeError(
      `broadcastTo: x ${fmtShape(x.shape)} cannot be broadcast to ${fmtShape(shape)} ` +
        `(sizes must match or be 1, aligned from the right)`,
    );
  }
  const y = gpu.empty(shape, x.dtype, "broadcastTo");
  stridedMap(gpu, {
    name: "broadcast",
    body: "return x0;",
    raw: true,
    shape,
    inputs: [operand(x, shape)],
    out: operand(y, shape),
  });
  return y;
}

// ------------------------------------------------------- CPU references

function refPlan(shape: readonly number[], opts: ReduceOptions) {
  const axis = opts.axis ?? -1;
  if (axis === "all") return { outer: 1, len: numel(shape), inner: 1 };
  const a = normalizeAxis("reduceRef", axis, shape.length);
  return {
    outer: numel(shape.slice(0, a)),
    len: shape[a],
    inner: numel(shape.slice(a + 1)),
  };
}

function reduceRef(
  x: ArrayLike<number>,
  shape: readonly number[],
  opts: ReduceOptions,
  init: number,
  step: (acc: number, v: number) => number,
): Float64Array {
  const { outer, len, inner } = refPlan(shape, opts);
  const y = new Float64Array(outer * inner).fill(init);
  for (let o = 0; o < outer; o++) {
    for (let r = 0; r < len; r++) {
      for (let j = 0; j < inner; j++) {
        y[o * inner + j] = step(y[o * inner + j], x[(o * len + r) * inner + j]);
      }
    }
  }
  return y;
}

/** Reference of `sum` (float64 accumulation). */
export function sumRef(
  x: ArrayLike<number>,
  shape: readonly number[],
  opts: ReduceOptions = {},
): Float32Array {
  return Float32Array.from(reduceRef(x, shape, opts, 0, (a, v) => a + v));
}

/** Reference of `mean`. */
export function meanRef(
  x: ArrayLike<number>,
  shape: readonly number[],
  opts: ReduceOptions = {},
): Float32Array {
  const { len } = refPlan(shape, opts);
  return Float32Array.from(reduceRef(x, shape, opts, 0, (a, v) => a + v), (v) => v / len);
}

/** Reference of `max` (NaN propagates). */
export function maxRef(
  x: ArrayLike<number>,
  shape: readonly number[],
  opts: ReduceOptions = {},
): Float32Array {
  return Float32Array.from(
    reduceRef(
      x,
      shape,
      opts,
      -Infinity,
      (a, v) => (Number.isNaN(a) || Number.isNaN(v) ? NaN : Math.max(a, v)),
    ),
  );
}

/** Reference of `sqNorm`. */
export function sqNormRef(
  x: ArrayLike<number>,
  shape: readonly number[],
  opts: ReduceOptions = {},
): Float32Array {
  return Float32Array.from(reduceRef(x, shape, opts, 0, (a, v) => a + v * v));
}

/** Reference of `argmax` (first max; first NaN wins). */
export function argmaxRef(x: ArrayLike<number>, shape: readonly number[], axis = -1): Uint32Array {
  const { outer, len, inner } = refPlan(shape, { axis });
  const y = new Uint32Array(outer * inner);
  for (let o = 0; o < outer; o++) {
    for (let j = 0; j < inner; j++) {
      let bi = 0;
      let bv = x[o * len * inner + j];
      for (let r = 1; r < len && !Number.isNaN(bv); r++) {
        const v = x[(o * len + r) * inner + j];
        if (Number.isNaN(v) || v > bv) {
          bv = v;
          bi = r;
        }
      }
      y[o * inner + j] = bi;
    }
  }
  return y;
}

/** Reference of `sumToShape` (float64). */
export function sumToShapeRef(
  x: ArrayLike<number>,
  xShape: readonly number[],
  shape: readonly number[],
): Float32Array {
  const at = broadcastIndex(shape, xShape);
  const acc = new Float64Array(numel(shape));
  for (let i = 0; i < x.length; i++) acc[at[i]] += x[i];
  return Float32Array.from(acc);
}

/** Reference of `broadcastTo`. */
export function broadcastToRef(
  x: Float32Array,
  xShape: readonly number[],
  shape: readonly number[],
): Float32Array {
  return Float32Array.from(broadcastIndex(xShape, shape), (at) => x[at]);
}

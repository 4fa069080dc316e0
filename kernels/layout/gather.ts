/**
 * Row gather and scatter by u32 index (the token selection of iBOT and its
 * backward), the accumulating scatter by a GPU bitonic sort (deterministic,
 * no atomics), and their references.
 */
import { bindWindow, checkBindable, vec4Rows } from "../common/window.ts";
import { checkTensor, fmtShape } from "../common/shape.ts";
import {
  FLAT_WORKGROUP_INDEX,
  flatMain,
  grid,
  GRID_BUILTINS,
  type Kernel,
  kernel,
} from "../kernel.ts";
import type { Gpu } from "../runtime.ts";
import { type GpuTensor, numel } from "../tensor.ts";
import { Uniforms } from "../uniforms.ts";

/** x as [rows, row length] for the row ops; throws naming `op` for a scalar. */
function asRows(op: string, x: GpuTensor): [number, number] {
  if (x.shape.length < 1) throw new RangeError(`${op}: x ${fmtShape(x.shape)} has no rows`);
  return [x.shape[0], numel(x.shape.slice(1))];
}

const rowKernels = new Map<string, Kernel>();

/**
 * Row copy by index: `gather` reads `dst[m] = src[idx[m]]` (zeros when the
 * index is out of range), `scatter` writes `dst[idx[m]] = src[m]` (dropped
 * when out of range). One invocation per chunk of up to `ROW_CHUNK` vec4s (or
 * elements) of a row: the index load and the div/mod run once per chunk, not
 * once per vec4 (on llvmpipe each is a per-lane loop).
 */
function rowCopyKernel(dir: "gather" | "scatter", vec: boolean): Kernel {
  const key = `${dir}|${vec}`;
  let k = rowKernels.get(key);
  if (k) return k;
  const T = vec ? "vec4<u32>" : "u32";
  k = kernel({
    name: `${dir}_rows`,
    key,
    bindings: ["read", "read", "read_write"],
    uniformBytes: 32,
    source: () => `
struct P { m: u32, n: u32, d: u32, sshift: u32, ishift: u32, dshift: u32, len: u32, chunks: u32 }
@group(0) @binding(0) var<storage, read> src: array<${T}>;
@group(0) @binding(1) var<storage, read> idx: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<${T}>;
@group(0) @binding(3) var<uniform> p: P;
${flatMain(64, "e", "p.m * p.chunks")}
  let m = e / p.chunks;
  let j0 = (e % p.chunks) * p.len;
  let j1 = min(j0 + p.len, p.d);
  let r = idx[p.ishift + m];
${
      dir === "gather"
        ? `  let o = p.dshift + m * p.d;
  if (r < p.n) {
    let s = p.sshift + r * p.d;
    for (var j = j0; j < j1; j++) { dst[o + j] = src[s + j]; }
  } else {
    for (var j = j0; j < j1; j++) { dst[o + j] = ${T}(0u); }
  }`
        : `  if (r < p.n) {
    let o = p.dshift + r * p.d;
    let s = p.sshift + m * p.d;
    for (var j = j0; j < j1; j++) { dst[o + j] = src[s + j]; }
  }`
    }
}`,
  });
  rowKernels.set(key, k);
  return k;
}

/** Vec4s (or elements) of a row one row-copy invocation moves. */
const ROW_CHUNK = 16;

function runRowCopy(
  gpu: Gpu,
  dir: "gather" | "scatter",
  src: GpuTensor,
  idx: GpuTensor,
  dst: GpuTensor,
  m: number,
  n: number,
  d: number,
): void {
  if (m === 0 || d === 0) return;
  const vec = vec4Rows(d, src, dst);
  const V = vec ? 4 : 1;
  const k = rowCopyKernel(dir, vec);
  const s = bindWindow(gpu, src, 0, src.numel);
  const i = bindWindow(gpu, idx, 0, m);
  const o = bindWindow(gpu, dst, 0, dst.numel);
  const len = Math.min(d / V, ROW_CHUNK);
  const chunks = Math.ceil(d / V / len);
  const p = new Uniforms(32).u32(m).u32(n).u32(d / V).u32(s.shift / V).u32(i.shift)
    .u32(o.shift / V).u32(len).u32(chunks).bytes;
  gpu.dispatch(k, [s.view, i.view, o.view], grid(Math.ceil((m * chunks) / 64)), p);
}

/** Rows of `x` [N, …] at u32 `idx` [M] → [M, …]; an index ≥ N gives a zero row. */
export function gatherRows(gpu: Gpu, x: GpuTensor, idx: GpuTensor): GpuTensor {
  checkTensor("gatherRows", "x", x);
  checkTensor("gatherRows", "idx", idx, "u32");
  if (idx.shape.length !== 1) {
    throw new RangeError(`gatherRows: idx must be 1-D u32, got ${fmtShape(idx.shape)}`);
  }
  const [n, d] = asRows("gatherRows", x);
  const m = idx.shape[0];
  const shape = [m, ...x.shape.slice(1)];
  // No source rows: every index is out of range.
  if (n === 0) return gpu.zeros(shape, x.dtype, "gatherRows");
  const y = gpu.empty(shape, x.dtype, "gatherRows");
  if (y.numel === 0) return y;
  checkBindable(gpu, "gatherRows", "x", x);
  checkBindable(gpu, "gatherRows", "output", y);
  runRowCopy(gpu, "gather", x, idx, y, m, n, d);
  return y;
}

const sortKernels = new Map<string, Kernel>();

/** Bitonic sort support: pack (idx, position) pairs, one compare-exchange step, and lookups. */
function sortKernel(stage: "init" | "step" | "starts" | "accumulate", vec: boolean): Kernel {
  const key = `${stage}|${vec}`;
  let k = sortKernels.get(key);
  if (k) return k;
  const head = `@compute @workgroup_size(64)
fn main(${GRID_BUILTINS}) {
  let e = ${FLAT_WORKGROUP_INDEX} * 64u + lid;`;
  if (stage === "init") {
    k = kernel({
      name: "scatter_sort_init",
      bindings: ["read", "read_write"],
      uniformBytes: 16,
      source: () => `
struct P { m: u32, size: u32, ishift: u32, pad: u32 }
@group(0) @binding(0) var<storage, read> idx: array<u32>;
@group(0) @binding(1) var<storage, read_write> keys: array<vec2<u32>>;
@group(0) @binding(2) var<uniform> p: P;
${head}
  if (e >= p.size) { return; }
  // Padding sorts last: key 0xffffffff never names an output row.
  var key = 0xffffffffu;
  if (e < p.m) { key = idx[p.ishift + e]; }
  keys[e] = vec2<u32>(key, e);
}`,
    });
  } else if (stage === "step") {
    k = kernel({
      name: "scatter_sort_step",
      bindings: ["read_write"],
      uniformBytes: 16,
      source: () => `
struct P { size: u32, j: u32, k: u32, pad: u32 }
@group(0) @binding(0) var<storage, read_write> keys: array<vec2<u32>>;
@group(0) @binding(1) var<uniform> p: P;
fn less(a: vec2<u32>, b: vec2<u32>) -> bool { return a.x < b.x || (a.x == b.x && a.y < b.y); }
${head}
  if (e >= p.size) { return; }
  let l = e ^ p.j;
  if (l <= e) { return; }
  let a = keys[e];
  let b = keys[l];
  let up = (e & p.k) == 0u;
  if (less(b, a) == up) {
    keys[e] = b;
    keys[l] = a;
  }
}`,
    });
  } else if (stage === "starts") {
    k = kernel({
      name: "scatter_rows_starts",
      bindings: ["read", "read_write"],
      uniformBytes: 16,
      source: () => `
struct P { m: u32, n: u32, pad0: u32, pad1: u32 }
@group(0) @binding(0) var<storage, read> keys: array<vec2<u32>>;
@group(0) @binding(1) var<storage, read_write> starts: array<u32>;
@group(0) @binding(2) var<uniform> p: P;
${head}
  if (e > p.n) { return; }
  // First sorted position whose key is ≥ e: row e's sources are [starts[e], starts[e + 1]).
  var lo = 0u;
  var hi = p.m;
  while (lo < hi) {
    let mid = (lo + hi) / 2u;
    if (keys[mid].x < e) { lo = mid + 1u; } else { hi = mid; }
  }
  starts[e] = lo;
}`,
    });
  } else {
    const T = vec ? "vec4<f32>" : "f32";
    k = kernel({
      name: "scatter_rows_acc",
      key,
      bindings: ["read", "read", "read", "read_write"],
      uniformBytes: 16,
      source: () => `
struct P { n: u32, d: u32, sshift: u32, pad: u32 }
@group(0) @binding(0) var<storage, read> src: array<${T}>;
@group(0) @binding(1) var<storage, read> keys: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read> starts: array<u32>;
@group(0) @binding(3) var<storage, read_write> dst: array<${T}>;
@group(0) @binding(4) var<uniform> p: P;
${head}
  if (e >= p.n * p.d) { return; }
  let r = e / p.d;
  let j = e - r * p.d;
  // Sources of row r in ascending source order: a fixed summation order, so the
  // result is deterministic.
  var acc = ${T}(0.0);
  for (var q = starts[r]; q < starts[r + 1u]; q++) {
    acc += src[p.sshift + keys[q].y * p.d + j];
  }
  dst[e] = acc;
}`,
    });
  }
  sortKernels.set(key, k);
  return k;
}

/**
 * `src` [M, …] rows written to rows `idx` [M] of zeros [n, …] (the backward
 * of `gatherRows`; indices ≥ n are dropped). Without `accumulate` indices must
 * be unique (which duplicate lands is unspecified, as in torch's index_put_).
 * With `accumulate` duplicates are summed in ascending source order: the
 * (index, position) pairs are bitonic-sorted on the GPU and each output row
 * sums its run, so results are bit-for-bit repeatable (no atomics).
 */
export function scatterRows(
  gpu: Gpu,
  src: GpuTensor,
  idx: GpuTensor,
  n: number,
  opts: { accumulate?: boolean } = {},
): GpuTensor {
  checkTensor("scatterRows", "src", src);
  checkTensor("scatterRows", "idx", idx, "u32");
  const [m, d] = asRows("scatterRows", src);
  if (idx.shape.length !== 1 || idx.shape[0] !== m) {
    throw new RangeError(
      `scatterRows: idx ${fmtShape(idx.shape)} must be 1-D with one index per row of src ` +
        `${fmtShape(src.shape)}`,
    );
  }
  if (!Number.isInteger(n) || n < 0) {
    throw new RangeError(`scatterRows: n must be an integer ≥ 0, got ${n}`);
  }
  const shape = [n, ...src.shape.slice(1)];
  if (!opts.accumulate || m === 0 || n * d === 0) {
    const y = gpu.zeros(shape, src.dtype, "scatterRows");
    if (y.numel === 0 || m === 0) return y;
    checkBindable(gpu, "scatterRows", "src", src);
    checkBindable(gpu, "scatterRows", "output", y);
    runRowCopy(gpu, "scatter", src, idx, y, m, n, d);
    return y;
  }
  checkTensor("scatterRows", "src", src, "f32");
  const y = gpu.empty(shape, "f32", "scatterRows");
  checkBindable(gpu, "scatterRows", "src", src);
  checkBindable(gpu, "scatterRows", "output", y);
  const size = 2 ** Math.ceil(Math.log2(Math.max(2, m)));
  const keys = gpu.empty([size, 2], "u32", "scatter_keys");
  const iw = bindWindow(gpu, idx, 0, m);
  gpu.dispatch(
    sortKernel("init", false),
    [iw.view, keys],
    grid(Math.ceil(size / 64)),
    new Uniforms(16).u32(m).u32(size).u32(iw.shift).bytes,
  );
  const step = sortKernel("step", false);
  for (let k = 2; k <= size; k *= 2) {
    for (let j = k / 2; j >= 1; j /= 2) {
      gpu.dispatch(
        step,
        [keys],
        grid(Math.ceil(size / 64)),
        new Uniforms(16).u32(size).u32(j).u32(k).bytes,
      );
    }
  }
  const starts = gpu.empty([n + 1], "u32", "scatter_starts");
  gpu.dispatch(
    sortKernel("starts", false),
    [keys, starts],
    grid(Math.ceil((n + 1) / 64)),
    new Uniforms(16).u32(m).u32(n).bytes,
  );
  const vec = vec4Rows(d, src);
  const V = vec ? 4 : 1;
  const s = bindWindow(gpu, src, 0, src.numel);
  gpu.dispatch(
    sortKernel("accumulate", vec),
    [s.view, keys, starts, y],
    grid(Math.ceil((n * d) / V / 64)),
    new Uniforms(16).u32(n).u32(d / V).u32(s.shift / V).bytes,
  );
  gpu.release(starts);
  gpu.release(keys);
  return y;
}

// ------------------------------------------------------- CPU references

/** Reference of `gatherRows` for x [N, D]. */
export function gatherRowsRef(x: Float32Array, d: number, idx: ArrayLike<number>): Float32Array {
  const n = x.length / d;
  const y = new Float32Array(idx.length * d);
  for (let m = 0; m < idx.length; m++) {
    if (idx[m] < n) y.set(x.subarray(idx[m] * d, (idx[m] + 1) * d), m * d);
  }
  return y;
}

/** Reference of `scatterRows` (accumulating in float64, in ascending source order). */
export function scatterRowsRef(
  src: Float32Array,
  d: number,
  idx: ArrayLike<number>,
  n: number,
  opts: { accumulate?: boolean } = {},
): Float32Array {
  const acc = new Float64Array(n * d);
  for (let m = 0; m < idx.length; m++) {
    const r = idx[m];
    if (r >= n) continue;
    for (let j = 0; j < d; j++) {
      acc[r * d + j] = opts.accumulate ? acc[r * d + j] + src[m * d + j] : src[m * d + j];
    }
  }
  return Float32Array.from(acc);
}

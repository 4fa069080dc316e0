/**
 * Layer norm over the last dim, as PyTorch's `nn.LayerNorm` computes it
 * (biased variance, `rstd = 1 / sqrt(var + eps)`; DINOv2 uses eps 1e-6), its
 * backward and float64 CPU references.
 *
 * Forward: one row per T threads, two-pass statistics (mean, then the mean
 * of squared deviations) so rows with a large offset keep their variance.
 * Backward: one kernel writes dx and, per block of rows, partial sums of
 * dweight and dbias; a second kernel adds the partials in a fixed order.
 * No atomics, so the parameter gradients are bit-for-bit repeatable.
 */
import { grid, GRID_BUILTINS, type Kernel, kernel } from "./kernel.ts";
import type { Gpu } from "./runtime.ts";
import type { GpuTensor } from "./tensor.ts";
import {
  dispatchRows,
  layoutKey,
  ROW_SUM,
  rowChunks,
  type RowLayout,
  rowLayout,
  rowMain,
  type RowReduction,
  rowsCols,
  rowSegment,
  rowThreadCap,
  rowView,
  rowWgsl,
  SEGMENT_LANES,
  vecWgsl,
  vecWidth,
} from "./common/rows.ts";
import { expectShape } from "./common/shape.ts";
import { checkBindingBytes } from "./common/window.ts";
import { Uniforms } from "./uniforms.ts";

/** Options of the layer-norm kernels. */
export interface LayerNormOptions {
  /** Threads per row (power of two ≤ 256); the default suits the row length. */
  threadsPerRow?: number;
}

/**
 * WGSL loop over this thread's columns with their register index `j`: opens
 * two blocks (`for` and `if`) that the caller closes with `} }`.
 */
const REG_LOOP = "for (var j = 0u; j < CPT; j++) { let c = sb + j * S; if (c < se) {";

const SUM2: RowReduction = ["rowSum2", "vec2f", "a + b"];

/**
 * Each thread reads its `CPT` columns of the row; when they fit the register
 * cache (`CACHE_COLUMNS`) it reads them once and the mean, the variance and
 * the output come from registers, else each pass re-reads them (from cache).
 */
function fwdKernel(w: 1 | 4, l: RowLayout, units: number): Kernel {
  const cpt = columnsPerThread(l, units);
  const cached = cpt <= CACHE_COLUMNS;
  const xv = cached ? "xs[j]" : "x[base + c]";
  return kernel({
    name: "layernorm_fwd",
    key: `w${w}${layoutKey(l)}n${units}`,
    bindings: ["read", "read", "read", "read_write", "read_write", "read_write"],
    uniformBytes: 16,
    source: () => `
struct P { rows: u32, cols: u32, rowBase: u32, eps: f32 }
@group(0) @binding(0) var<storage, read> x: array<V>;
@group(0) @binding(1) var<storage, read> wt: array<V>;
@group(0) @binding(2) var<storage, read> bs: array<V>;
@group(0) @binding(3) var<storage, read_write> y: array<V>;
@group(0) @binding(4) var<storage, read_write> mean: array<f32>;
@group(0) @binding(5) var<storage, read_write> rstd: array<f32>;
@group(0) @binding(6) var<uniform> p: P;
${vecWgsl(w)}
${rowWgsl(l, [ROW_SUM])}
const CPT = ${cpt}u;
${rowMain(w)}
  let inv = 1.0 / f32(p.cols);
  ${cached ? "var xs: array<V, CPT>;" : ""}
  var s = 0.0;
  if (valid) { ${REG_LOOP} ${cached ? "xs[j] = x[base + c]; " : ""}s += hsum(${xv}); } } }
  let mu = rowSum(s, lid) * inv;
  var q = 0.0;
  if (valid) { ${REG_LOOP} let d = ${xv} - mu; q += hsum(d * d); } } }
  let r = 1.0 / sqrt(rowSum(q, lid) * inv + p.eps);
  if (valid) {
    ${REG_LOOP} y[base + c] = (${xv} - mu) * r * wt[c] + bs[c]; } }
    if (t == 0u) {
      mean[p.rowBase + row] = mu;
      rstd[p.rowBase + row] = r;
    }
  }
}`,
  });
}

/**
 * dx for each row, and per block of `K·R` rows the partial sums of dweight
 * (Σ dy·x̂) and dbias (Σ dy). Each thread keeps the partials of its own
 * columns in private memory (`CPT` of them, fixed by the row length), so no
 * two threads of a group write one column. With several threads per row the
 * R groups then add theirs in workgroup memory in group order (one partial
 * row per block); with one thread per row (the barrier-free layout) each
 * group writes its own partial row instead (`R` per block).
 */
function bwdKernel(w: 1 | 4, l: RowLayout, units: number): Kernel {
  const cpt = columnsPerThread(l, units);
  const cached = cpt <= CACHE_COLUMNS;
  const combine = l.rowsPerGroup > 1 && l.threads > 1;
  return kernel({
    name: "layernorm_bwd",
    key: `w${w}${layoutKey(l)}n${units}`,
    bindings: ["read", "read", "read", "read", "read", "read_write", "read_write"],
    uniformBytes: 32,
    source: () => `
struct P { rows: u32, cols: u32, rowBase: u32, K: u32, blockBase: u32 }
@group(0) @binding(0) var<storage, read> dy: array<V>;
@group(0) @binding(1) var<storage, read> x: array<V>;
@group(0) @binding(2) var<storage, read> wt: array<V>;
@group(0) @binding(3) var<storage, read> mean: array<f32>;
@group(0) @binding(4) var<storage, read> rstd: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx: array<V>;
@group(0) @binding(6) var<storage, read_write> part: array<V>;
@group(0) @binding(7) var<uniform> p: P;
${vecWgsl(w)}
${rowWgsl(l, [SUM2])}
const CPT = ${cpt}u;
${combine ? `var<workgroup> comb: array<V, ${2 * units}>;` : ""}
@compute @workgroup_size(WG)
fn main(${GRID_BUILTINS}) {
  let g = lid / T;
  let t = lid % T;
  let blk = wid.x + wid.y * nwg.x;
  let n = p.cols / ${w}u;
  ${rowSegment("n")}
  let inv = 1.0 / f32(p.cols);
  var accW: array<V, CPT>;
  var accB: array<V, CPT>;
  ${cached ? "var gs: array<V, CPT>;\n  var xhs: array<V, CPT>;" : ""}
  for (var k = 0u; k < p.K; k++) {
    // Rows of a block interleave over its R groups: group g takes g, g + R, …
    let row = (blk * p.K + k) * R + g;
    let valid = row < p.rows;
    let base = row * n;
    var mu = 0.0;
    var r = 0.0;
    var ab = vec2f(0.0);
    if (valid) {
      mu = mean[p.rowBase + row];
      r = rstd[p.rowBase + row];
      ${REG_LOOP}
        let d = dy[base + c];
        let xh = (x[base + c] - mu) * r;
        let gy = d * wt[c];
        ${cached ? "gs[j] = gy;\n        xhs[j] = xh;" : ""}
        accW[j] += d * xh;
        accB[j] += d;
        ab += vec2f(hsum(gy), hsum(gy * xh));
      } }
    }
    ab = rowSum2(ab, lid) * inv;
    if (valid) {
      ${REG_LOOP}
        ${
      cached
        ? "dx[base + c] = r * (gs[j] - ab.x - xhs[j] * ab.y);"
        : "dx[base + c] = r * (dy[base + c] * wt[c] - ab.x - (x[base + c] - mu) * r * ab.y);"
    }
      } }
    }
  }
  // Partial rows are [dweight | dbias], n units each: one per block, or per group of a block.
  let pr = ${combine ? "(p.blockBase + blk)" : "((p.blockBase + blk) * R + g)"} * 2u * n;
  let live = blk < (p.rows + p.K * R - 1u) / (p.K * R);
${
      !combine
        ? `  if (live) {
    for (var j = 0u; j < CPT; j++) {
      let c = sb + j * S;
      if (c < se) {
        part[pr + c] = accW[j];
        part[pr + n + c] = accB[j];
      }
    }
  }`
        : `  // The R groups add their column partials in group order (deterministic), one at a time.
  for (var gg = 0u; gg < R; gg++) {
    if (g == gg) {
      for (var j = 0u; j < CPT; j++) {
        let c = sb + j * S;
        if (c < se) {
          if (gg == 0u) {
            comb[c] = accW[j];
            comb[n + c] = accB[j];
          } else {
            comb[c] += accW[j];
            comb[n + c] += accB[j];
          }
        }
      }
    }
    workgroupBarrier();
  }
  if (live) {
    for (var c = lid; c < 2u * n; c += WG) { part[pr + c] = comb[c]; }
  }`
    }
}`,
  });
}

/** Sums `count` partial rows of `width` units column by column, in row order. */
function sumKernel(w: 1 | 4): Kernel {
  return kernel({
    name: "layernorm_bwd_sum",
    key: `w${w}`,
    bindings: ["read", "read_write"],
    uniformBytes: 16,
    source: () => `
struct P { count: u32, width: u32 }
@group(0) @binding(0) var<storage, read> part: array<V>;
@group(0) @binding(1) var<storage, read_write> out: array<V>;
@group(0) @binding(2) var<uniform> p: P;
${vecWgsl(w)}
@compute @workgroup_size(64)
fn main(${GRID_BUILTINS}) {
  let c = (wid.x + wid.y * nwg.x) * 64u + lid;
  if (c >= p.width) { return; }
  var s = V(0.0);
  for (var i = 0u; i < p.count; i++) { s += part[i * p.width + c]; }
  out[c] = s;
}`,
  });
}

/** Columns (loads) per thread of a row of `units` under layout `l`: segment length / S. */
function columnsPerThread(l: RowLayout, units: number): number {
  const s = Math.min(l.threads, SEGMENT_LANES);
  const k = l.threads / s;
  return Math.ceil(Math.ceil(units / k) / s);
}

/**
 * Most columns one thread may own: its backward keeps two partials per
 * column in private memory (registers on a GPU, where the default layouts
 * give ≤ 8; the stack on a CPU adapter's one-thread-per-row layout).
 */
const MAX_COLUMNS_PER_THREAD = 512;

/** Most columns a thread also caches (x, or x̂ and dy·w) instead of re-reading them. */
const CACHE_COLUMNS = 16;

/**
 * The layout for rows of `n` units: enough threads that each holds at most
 * `MAX_COLUMNS_PER_THREAD` loads in registers; an explicit `threadsPerRow`
 * that leaves more is refused.
 */
function checkedLayout(
  gpu: Gpu,
  op: string,
  rows: number,
  n: number,
  cols: number,
  opts: LayerNormOptions,
): RowLayout {
  const l = rowLayout(n, {
    threads: opts.threadsPerRow,
    cap: rowThreadCap(gpu),
    minThreads: n / MAX_COLUMNS_PER_THREAD,
    rows,
  });
  if (columnsPerThread(l, n) > MAX_COLUMNS_PER_THREAD) {
    throw new RangeError(
      `${op}: threadsPerRow ${l.threads} leaves ${columnsPerThread(l, n)} columns per thread ` +
        `for D = ${cols} (at most ${MAX_COLUMNS_PER_THREAD}); use more threads per row`,
    );
  }
  return l;
}

function checkParams(op: string, cols: number, weight: GpuTensor, bias: GpuTensor | null) {
  expectShape(op, "weight", weight, [cols]);
  if (bias) expectShape(op, "bias", bias, [cols]);
}

/**
 * Layer norm over the last dim of `x` ([…, D]) with affine `weight`, `bias`
 * ([D]). Returns y (shape of x) and the per-row `mean` and `rstd` (leading
 * shape) the backward needs.
 */
export function layerNorm(
  gpu: Gpu,
  x: GpuTensor,
  weight: GpuTensor,
  bias: GpuTensor,
  eps: number,
  opts: LayerNormOptions = {},
): { y: GpuTensor; mean: GpuTensor; rstd: GpuTensor } {
  const op = "layerNorm";
  const { rows, cols } = rowsCols(op, "x", x);
  if (cols === 0) throw new RangeError(`${op}: x has shape [${x.shape}]; D must be ≥ 1`);
  checkParams(op, cols, weight, bias);
  if (!(eps >= 0) || !Number.isFinite(eps)) {
    throw new RangeError(`${op}: eps must be a finite number ≥ 0, got ${eps}`);
  }
  const lead = x.shape.slice(0, -1);
  const y = gpu.empty(x.shape);
  const mean = gpu.empty(lead);
  const rstd = gpu.empty(lead);
  if (rows === 0) return { y, mean, rstd };
  const w = vecWidth(cols);
  const n = cols / w;
  const l = checkedLayout(gpu, op, rows, n, cols, opts);
  dispatchRows(gpu, op, fwdKernel(w, l, n), l, rows, cols, eps, (c) => [
    rowView(x, c, cols),
    weight,
    bias,
    rowView(y, c, cols),
    mean,
    rstd,
  ]);
  return { y, mean, rstd };
}

/**
 * Rows each group of threads handles per block: at most 256 blocks (enough to
 * fill a GPU), so the partials stay small next to x. One thread per row writes
 * a partial per group: up to 16 rows each (partials ≤ 1/16 of x, ≥ 8 blocks).
 */
function rowsPerGroup(rows: number, l: RowLayout): number {
  if (l.threads === 1) {
    return Math.max(1, Math.min(16, Math.floor(rows / (l.rowsPerGroup * 8))));
  }
  return Math.max(1, Math.ceil(rows / (l.rowsPerGroup * 256)));
}

/**
 * Gradients of `layerNorm`: dx (shape of x), dweight and dbias ([D]), from
 * the upstream `dy`, the input `x`, `weight` and the saved `mean`, `rstd`.
 */
export function layerNormBackward(
  gpu: Gpu,
  dy: GpuTensor,
  x: GpuTensor,
  weight: GpuTensor,
  mean: GpuTensor,
  rstd: GpuTensor,
  opts: LayerNormOptions = {},
): { dx: GpuTensor; dweight: GpuTensor; dbias: GpuTensor } {
  const op = "layerNormBackward";
  const { rows, cols } = rowsCols(op, "x", x);
  if (cols === 0) throw new RangeError(`${op}: x has shape [${x.shape}]; D must be ≥ 1`);
  expectShape(op, "dy", dy, x.shape);
  checkParams(op, cols, weight, null);
  const lead = x.shape.slice(0, -1);
  expectShape(op, "mean", mean, lead);
  expectShape(op, "rstd", rstd, lead);
  const dx = gpu.empty(x.shape);
  if (rows === 0) {
    return { dx, dweight: gpu.zeros([cols]), dbias: gpu.zeros([cols]) };
  }
  const w = vecWidth(cols);
  const n = cols / w;
  const l = checkedLayout(gpu, op, rows, n, cols, opts);
  const combBytes = 2 * cols * 4;
  if (
    l.rowsPerGroup > 1 && l.threads > 1 && combBytes > gpu.limits.maxComputeWorkgroupStorageSize / 2
  ) {
    throw new RangeError(
      `${op}: threadsPerRow ${l.threads} puts ${l.rowsPerGroup} rows of D = ${cols} in a ` +
        `workgroup, whose ${combBytes} B of column partials exceed half the workgroup storage; ` +
        "use 64 or more threads per row",
    );
  }
  const K = rowsPerGroup(rows, l);
  const rowsPerBlock = K * l.rowsPerGroup;
  const blocks = Math.ceil(rows / rowsPerBlock);
  const partRows = l.threads === 1 ? blocks * l.rowsPerGroup : blocks;
  const partBytes = partRows * 2 * cols * 4;
  checkBindingBytes(
    gpu,
    op,
    `the partial parameter gradients for [${x.shape}]`,
    partBytes,
    "run the backward on fewer rows at a time and add the dweight/dbias results",
  );
  const part = gpu.empty([partRows, 2, cols]);
  const k = bwdKernel(w, l, n);
  for (const c of rowChunks(gpu, op, rows, [cols * 4], rowsPerBlock)) {
    const p = new Uniforms(32).u32(c.count).u32(cols).u32(c.start).u32(K)
      .u32(c.start / rowsPerBlock).bytes;
    gpu.dispatch(
      k,
      [rowView(dy, c, cols), rowView(x, c, cols), weight, mean, rstd, rowView(dx, c, cols), part],
      grid(Math.ceil(c.count / rowsPerBlock)),
      p,
    );
  }
  // part is [partRows, 2·n units]: its column sums are [dweight | dbias].
  const both = gpu.empty([2, cols]);
  gpu.dispatch(
    sumKernel(w),
    [part, both],
    grid(Math.ceil((2 * n) / 64)),
    new Uniforms(16).u32(partRows).u32(2 * n).bytes,
  );
  gpu.release(part);
  const dweight = gpu.empty([cols]);
  const dbias = gpu.empty([cols]);
  gpu.copy(both.view(0, [cols]), dweight, cols * 4);
  gpu.copy(both.view(cols, [cols]), dbias, cols * 4);
  gpu.release(both);
  return { dx, dweight, dbias };
}

// -------------------------------------------------------------- references

/** float64 layer norm of rows of `cols`: y, mean and rstd. */
export function layerNormRef(
  x: ArrayLike<number>,
  weight: ArrayLike<number>,
  bias: ArrayLike<number>,
  cols: number,
  eps: number,
): { y: Float64Array; mean: Float64Array; rstd: Float64Array } {
  const rows = x.length / cols;
  if (!Number.isInteger(rows) || weight.length !== cols || bias.length !== cols) {
    throw new RangeError(`layerNormRef: ${x.length} values, weight ${weight.length}, D ${cols}`);
  }
  const y = new Float64Array(x.length);
  const mean = new Float64Array(rows);
  const rstd = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let c = 0; c < cols; c++) s += x[r * cols + c];
    const mu = s / cols;
    let q = 0;
    for (let c = 0; c < cols; c++) q += (x[r * cols + c] - mu) ** 2;
    const rs = 1 / Math.sqrt(q / cols + eps);
    for (let c = 0; c < cols; c++) {
      y[r * cols + c] = (x[r * cols + c] - mu) * rs * weight[c] + bias[c];
    }
    mean[r] = mu;
    rstd[r] = rs;
  }
  return { y, mean, rstd };
}

/** float64 gradients of layer norm (statistics recomputed from x in float64). */
export function layerNormBackwardRef(
  dy: ArrayLike<number>,
  x: ArrayLike<number>,
  weight: ArrayLike<number>,
  cols: number,
  eps: number,
): { dx: Float64Array; dweight: Float64Array; dbias: Float64Array } {
  const { mean, rstd } = layerNormRef(x, weight, new Float64Array(cols), cols, eps);
  const rows = mean.length;
  const dx = new Float64Array(x.length);
  const dweight = new Float64Array(cols);
  const dbias = new Float64Array(cols);
  for (let r = 0; r < rows; r++) {
    let a = 0;
    let b = 0;
    for (let c = 0; c < cols; c++) {
      const i = r * cols + c;
      const xh = (x[i] - mean[r]) * rstd[r];
      const g = dy[i] * weight[c];
      a += g;
      b += g * xh;
      dweight[c] += dy[i] * xh;
      dbias[c] += dy[i];
    }
    for (let c = 0; c < cols; c++) {
      const i = r * cols + c;
      const xh = (x[i] - mean[r]) * rstd[r];
      dx[i] = rstd[r] * (dy[i] * weight[c] - a / cols - xh * b / cols);
    }
  }
  return { dx, dweight, dbias };
}

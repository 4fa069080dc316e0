/**
 * The KoLeo regulariser as DINOv2's `KoLeoLoss` computes it and DinoBloom
 * calls it (eps 1e-4), its backward and a float64 CPU reference:
 *
 *   x̂ = F.normalize(x, eps=eps)
 *   dots = x̂ x̂ᵀ with the diagonal set to −1;  I = argmax per row (first max)
 *   d = PairwiseDistance(p=2, eps=pdistEps)(x̂, x̂[I]) = ‖x̂ − x̂[I] + pdistEps‖₂
 *   loss = −mean(log(d + eps))
 *
 * Three kernels after the normalisation: the nearest neighbour and its
 * distance per row (one workgroup per row, threads over candidate rows, then
 * over features), and a one-workgroup mean, summed in a fixed order.
 * The backward treats I as constant, as autograd does.
 */
import { grid, GRID_BUILTINS, type Kernel, kernel } from "./kernel.ts";
import { l2Normalize, l2NormalizeBackwardRef, l2NormalizeRef } from "./l2norm.ts";
import type { Gpu } from "./runtime.ts";
import type { GpuTensor } from "./tensor.ts";
import {
  F32_LOWEST,
  ROW_LOOP,
  ROW_SUM,
  rowLayout,
  rowsCols,
  rowSegment,
  rowWgsl,
  vecWgsl,
  vecWidth,
} from "./common/rows.ts";
import { Uniforms } from "./uniforms.ts";

/** Options of KoLeo: DinoBloom's eps 1e-4 (normalise and log) and PairwiseDistance's 1e-8. */
export interface KoleoOptions {
  eps?: number;
  pdistEps?: number;
}

/**
 * What `koleoBackward` needs. The caller owns the tensors: release `xn`,
 * `norm`, `dist` and `nn` once each (`nn` is the same tensor `koleo` returns).
 */
export interface KoleoSaved {
  /** Normalised rows [N, D]. */
  xn: GpuTensor;
  /** Unclamped row norms of x [N]. */
  norm: GpuTensor;
  /** Nearest-neighbour index per row, u32 [N]. */
  nn: GpuTensor;
  /** ‖x̂ − x̂[I] + pdistEps‖ per row [N]. */
  dist: GpuTensor;
  eps: number;
  pdistEps: number;
}

/** Threads per workgroup of the KoLeo kernels. */
const WG = 64;

/**
 * Row i: best (dot, j) over j ≠ i, preferring the lower j on ties (torch.max
 * returns the first maximum), then d_i over the features.
 */
function nnKernel(w: 1 | 4): Kernel {
  const l = rowLayout(WG, { threads: WG });
  return kernel({
    name: "koleo_nn",
    key: `w${w}`,
    bindings: ["read", "read_write", "read_write"],
    uniformBytes: 16,
    source: () => `
struct P { rows: u32, cols: u32, pdistEps: f32 }
@group(0) @binding(0) var<storage, read> xn: array<V>;
@group(0) @binding(1) var<storage, read_write> nn: array<u32>;
@group(0) @binding(2) var<storage, read_write> dist: array<f32>;
@group(0) @binding(3) var<uniform> p: P;
${vecWgsl(w)}
// (dot, index as f32: exact below 2^24 rows); a beats b if larger, or equal with a lower index.
fn better(a: vec2f, b: vec2f) -> vec2f {
  if (a.x > b.x || (a.x == b.x && a.y < b.y)) { return a; }
  return b;
}
${rowWgsl(l, [["rowBest", "vec2f", "better(a, b)"], ROW_SUM])}
@compute @workgroup_size(WG)
fn main(${GRID_BUILTINS}) {
  let i = wid.x + wid.y * nwg.x;
  let t = lid;
  let valid = i < p.rows;
  let n = p.cols / ${w}u;
  let bi = i * n;
  var best = vec2f(${F32_LOWEST}, 3.0e38);
  if (valid) {
    for (var j = t; j < p.rows; j += T) {
      var d = -1.0;
      if (j != i) {
        d = 0.0;
        let bj = j * n;
        for (var c = 0u; c < n; c++) { d += hsum(xn[bi + c] * xn[bj + c]); }
      }
      // Threads visit their j in increasing order: strict > keeps the first maximum.
      if (d > best.x) { best = vec2f(d, f32(j)); }
    }
  }
  best = rowBest(best, lid);
  let nb = u32(best.y);
  ${rowSegment("n")}
  var q = 0.0;
  if (valid) {
    let bj = nb * n;
    ${ROW_LOOP} { let u = xn[bi + c] - xn[bj + c] + p.pdistEps; q += hsum(u * u); }
  }
  let dd = sqrt(rowSum(q, lid));
  if (valid && t == 0u) {
    nn[i] = nb;
    dist[i] = dd;
  }
}`,
  });
}

/** loss[0] = −(1/N) Σ log(d_i + eps), summed per thread in index order, then as a tree. */
const meanKernel: Kernel = kernel({
  name: "koleo_mean",
  bindings: ["read", "read_write"],
  uniformBytes: 16,
  source: () => `
struct P { rows: u32, eps: f32 }
@group(0) @binding(0) var<storage, read> dist: array<f32>;
@group(0) @binding(1) var<storage, read_write> loss: array<f32>;
@group(0) @binding(2) var<uniform> p: P;
${rowWgsl(rowLayout(WG, { threads: WG }), [ROW_SUM])}
@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
  var s = 0.0;
  for (var i = lid; i < p.rows; i += WG) { s += log(dist[i] + p.eps); }
  let total = rowSum(s, lid);
  if (lid == 0u) { loss[0] = -total / f32(p.rows); }
}`,
});

/**
 * Row j of dx. With c_i = −dloss / (N (d_i + eps) d_i) and u_i = x̂_i − x̂_{I_i} + δ,
 * the gradient at x̂_j is g = c_j u_j − Σ_{i: I_i = j} c_i u_i; then the
 * F.normalize rule: dx = g/n − x (x·g)/n³ where n ≥ eps, else g/eps.
 */
function bwdKernel(w: 1 | 4): Kernel {
  const l = rowLayout(WG, { threads: WG });
  return kernel({
    name: "koleo_bwd",
    key: `w${w}`,
    bindings: ["read", "read", "read", "read", "read", "read", "read_write"],
    uniformBytes: 16,
    source: () => `
struct P { rows: u32, cols: u32, eps: f32, pdistEps: f32 }
@group(0) @binding(0) var<storage, read> dloss: array<f32>;
@group(0) @binding(1) var<storage, read> x: array<V>;
@group(0) @binding(2) var<storage, read> xn: array<V>;
@group(0) @binding(3) var<storage, read> norm: array<f32>;
@group(0) @binding(4) var<storage, read> nn: array<u32>;
@group(0) @binding(5) var<storage, read> dist: array<f32>;
@group(0) @binding(6) var<storage, read_write> dx: array<V>;
@group(0) @binding(7) var<uniform> p: P;
${vecWgsl(w)}
${rowWgsl(l, [ROW_SUM])}
// dL/dd_i / d_i; a zero distance has no direction (torch's norm gradient is 0 there).
fn coef(i: u32) -> f32 {
  let d = dist[i];
  if (d == 0.0) { return 0.0; }
  return -dloss[0] / (f32(p.rows) * (d + p.eps) * d);
}
fn grad(j: u32, c: u32, n: u32) -> V {
  var g = coef(j) * (xn[j * n + c] - xn[nn[j] * n + c] + p.pdistEps);
  for (var i = 0u; i < p.rows; i++) {
    if (nn[i] == j) { g -= coef(i) * (xn[i * n + c] - xn[j * n + c] + p.pdistEps); }
  }
  return g;
}
@compute @workgroup_size(WG)
fn main(${GRID_BUILTINS}) {
  let j = wid.x + wid.y * nwg.x;
  let t = lid;
  let valid = j < p.rows;
  let n = p.cols / ${w}u;
  let base = j * n;
  ${rowSegment("n")}
  var q = 0.0;
  if (valid) { ${ROW_LOOP} { q += hsum(x[base + c] * grad(j, c, n)); } }
  let s = rowSum(q, lid);
  if (valid) {
    let nrm = norm[j];
    if (nrm >= p.eps) {
      let k = s / (nrm * nrm * nrm);
      ${ROW_LOOP} { dx[base + c] = grad(j, c, n) / nrm - x[base + c] * k; }
    } else {
      ${ROW_LOOP} { dx[base + c] = grad(j, c, n) / p.eps; }
    }
  }
}`,
  });
}

function checkX(op: string, x: GpuTensor): { rows: number; cols: number } {
  const { rows, cols } = rowsCols(op, "x", x);
  if (x.shape.length !== 2 || rows < 1 || cols < 1) {
    throw new RangeError(`${op}: x must be [N, D] with N, D ≥ 1, got [${x.shape}]`);
  }
  if (rows >= 2 ** 24) throw new RangeError(`${op}: N = ${rows} rows is over 2^24`);
  return { rows, cols };
}

/**
 * KoLeo loss of the rows of x ([N, D]). Returns the loss ([1]), the
 * nearest-neighbour indices (u32 [N]) and what the backward needs.
 * Binds x whole: [N, D] must fit one binding (N is a batch of embeddings).
 */
export function koleo(
  gpu: Gpu,
  x: GpuTensor,
  opts: KoleoOptions = {},
): { loss: GpuTensor; nn: GpuTensor; saved: KoleoSaved } {
  const op = "koleo";
  const { rows, cols } = checkX(op, x);
  const eps = opts.eps ?? 1e-4;
  const pdistEps = opts.pdistEps ?? 1e-8;
  for (const [k, v] of [["eps", eps], ["pdistEps", pdistEps]] as const) {
    if (!(v >= 0) || !Number.isFinite(v)) {
      throw new RangeError(`${op}: ${k} must be a finite number ≥ 0, got ${v}`);
    }
  }
  const { y: xn, norm } = l2Normalize(gpu, x, eps);
  const nn = gpu.empty([rows], "u32");
  const dist = gpu.empty([rows]);
  const w = vecWidth(cols);
  gpu.dispatch(
    nnKernel(w),
    [xn, nn, dist],
    grid(rows),
    new Uniforms(16).u32(rows).u32(cols).f32(pdistEps).bytes,
  );
  const loss = gpu.empty([1]);
  gpu.dispatch(meanKernel, [dist, loss], [1], new Uniforms(16).u32(rows).f32(eps).bytes);
  return { loss, nn, saved: { xn, norm, nn, dist, eps, pdistEps } };
}

/** dx of `koleo` for the upstream gradient `dloss` ([1]), treating the neighbours as constant. */
export function koleoBackward(
  gpu: Gpu,
  dloss: GpuTensor,
  x: GpuTensor,
  saved: KoleoSaved,
): GpuTensor {
  const op = "koleoBackward";
  const { rows, cols } = checkX(op, x);
  if (dloss.numel !== 1 || dloss.dtype !== "f32") {
    throw new RangeError(`${op}: dloss must be one f32 value, got [${dloss.shape}] ${dloss.dtype}`);
  }
  if (saved.xn.numel !== x.numel || saved.nn.numel !== rows || saved.dist.numel !== rows) {
    throw new RangeError(`${op}: saved tensors do not belong to x [${x.shape}]`);
  }
  const dx = gpu.empty(x.shape);
  const w = vecWidth(cols);
  gpu.dispatch(
    bwdKernel(w),
    [dloss, x, saved.xn, saved.norm, saved.nn, saved.dist, dx],
    grid(rows),
    new Uniforms(16).u32(rows).u32(cols).f32(saved.eps).f32(saved.pdistEps).bytes,
  );
  return dx;
}

// -------------------------------------------------------------- references

/** float64 KoLeo of rows of `cols`: loss, neighbours and distances. */
export function koleoRef(
  x: ArrayLike<number>,
  cols: number,
  opts: KoleoOptions = {},
): { loss: number; nn: Uint32Array; dist: Float64Array } {
  const eps = opts.eps ?? 1e-4;
  const pe = opts.pdistEps ?? 1e-8;
  const { y: xn } = l2NormalizeRef(x, cols, eps);
  const rows = xn.length / cols;
  const nn = new Uint32Array(rows);
  const dist = new Float64Array(rows);
  let loss = 0;
  for (let i = 0; i < rows; i++) {
    let best = -Infinity;
    for (let j = 0; j < rows; j++) {
      let d = -1;
      if (j !== i) {
        d = 0;
        for (let c = 0; c < cols; c++) d += xn[i * cols + c] * xn[j * cols + c];
      }
      if (d > best) {
        best = d;
        nn[i] = j;
      }
    }
    let q = 0;
    for (let c = 0; c < cols; c++) q += (xn[i * cols + c] - xn[nn[i] * cols + c] + pe) ** 2;
    dist[i] = Math.sqrt(q);
    loss -= Math.log(dist[i] + eps);
  }
  return { loss: loss / rows, nn, dist };
}

/** float64 dx of KoLeo (neighbours from the float64 forward) for upstream `dloss`. */
export function koleoBackwardRef(
  dloss: number,
  x: ArrayLike<number>,
  cols: number,
  opts: KoleoOptions = {},
): Float64Array {
  const eps = opts.eps ?? 1e-4;
  const pe = opts.pdistEps ?? 1e-8;
  const { nn, dist } = koleoRef(x, cols, opts);
  const { y: xn } = l2NormalizeRef(x, cols, eps);
  const rows = nn.length;
  const g = new Float64Array(xn.length);
  for (let i = 0; i < rows; i++) {
    const d = dist[i];
    if (d === 0) continue;
    const k = -dloss / (rows * (d + eps) * d);
    for (let c = 0; c < cols; c++) {
      const u = xn[i * cols + c] - xn[nn[i] * cols + c] + pe;
      g[i * cols + c] += k * u;
      g[nn[i] * cols + c] -= k * u;
    }
  }
  return l2NormalizeBackwardRef(g, x, cols, eps);
}

/**
 * Row L2 normalisation and weight normalisation, with backward rules and
 * float64 CPU references.
 *
 * - `l2Normalize` is `F.normalize(x, p=2, dim=-1, eps)`: y = x / max(‖x‖, eps)
 *   (the DINO/iBOT heads' bottleneck, eps 1e-12; KoLeo, eps 1e-4).
 * - `weightNorm` is `torch.nn.utils.weight_norm(nn.Linear(in, out,
 *   bias=False))` with dim 0: W[k, :] = g[k] · v[k, :] / ‖v[k, :]‖ (the heads'
 *   last layer). Like PyTorch it has no eps: a zero row of v gives NaN.
 *
 * Both are one row kernel: a sum of squares reduced over the row's threads,
 * then a scaled write. The returned `norm` is the unclamped ‖row‖.
 */
import { type Kernel, kernel } from "./kernel.ts";
import type { Gpu } from "./runtime.ts";
import type { GpuTensor } from "./tensor.ts";
import {
  dispatchRows,
  layoutKey,
  ROW_LOOP,
  ROW_SUM,
  type RowLayout,
  rowMain,
  rowPlan,
  rowsCols,
  rowView,
  rowWgsl,
  vecWgsl,
} from "./common/rows.ts";
import { expectShape } from "./common/shape.ts";

/** Options of the normalisation kernels. */
export interface L2NormOptions {
  /** Threads per row (power of two ≤ 256); the default suits the row length. */
  threadsPerRow?: number;
}

type Mode = "l2" | "wn";

/** Forward: l2 writes x / max(n, eps); wn writes x · (g / n). Both write n. */
function fwdKernel(mode: Mode, w: 1 | 4, l: RowLayout): Kernel {
  const wn = mode === "wn";
  return kernel({
    name: wn ? "weight_norm_fwd" : "l2_normalize_fwd",
    key: `w${w}${layoutKey(l)}`,
    bindings: wn
      ? ["read", "read_write", "read_write", "read"]
      : ["read", "read_write", "read_write"],
    uniformBytes: 16,
    source: () => `
struct P { rows: u32, cols: u32, rowBase: u32, eps: f32 }
@group(0) @binding(0) var<storage, read> x: array<V>;
@group(0) @binding(1) var<storage, read_write> y: array<V>;
@group(0) @binding(2) var<storage, read_write> norm: array<f32>;
${wn ? "@group(0) @binding(3) var<storage, read> gain: array<f32>;" : ""}
@group(0) @binding(${wn ? 4 : 3}) var<uniform> p: P;
${vecWgsl(w)}
${rowWgsl(l, [ROW_SUM])}
${rowMain(w)}
  var q = 0.0;
  if (valid) { ${ROW_LOOP} { let v = x[base + c]; q += hsum(v * v); } }
  let nrm = sqrt(rowSum(q, lid));
  if (valid) {
${
      wn
        ? `    let scale = gain[p.rowBase + row] / nrm;
    ${ROW_LOOP} { y[base + c] = x[base + c] * scale; }`
        : `    // A true division, as F.normalize does, so y matches it to the last bit more often.
    let d = max(nrm, p.eps);
    ${ROW_LOOP} { y[base + c] = x[base + c] / d; }`
    }
    if (t == 0u) { norm[p.rowBase + row] = nrm; }
  }
}`,
  });
}

/**
 * Backward, with s = Σ x·dy over the row:
 * l2: dx = dy/n − x·s/n³ where n ≥ eps (the clamp passes its gradient), else dy/eps.
 * wn: dv = (g/n)·(dy − x·s/n²), dg = s/n.
 */
function bwdKernel(mode: Mode, w: 1 | 4, l: RowLayout): Kernel {
  const wn = mode === "wn";
  return kernel({
    name: wn ? "weight_norm_bwd" : "l2_normalize_bwd",
    key: `w${w}${layoutKey(l)}`,
    bindings: wn
      ? ["read", "read", "read", "read_write", "read", "read_write"]
      : ["read", "read", "read", "read_write"],
    uniformBytes: 16,
    source: () => `
struct P { rows: u32, cols: u32, rowBase: u32, eps: f32 }
@group(0) @binding(0) var<storage, read> dy: array<V>;
@group(0) @binding(1) var<storage, read> x: array<V>;
@group(0) @binding(2) var<storage, read> norm: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<V>;
${wn ? "@group(0) @binding(4) var<storage, read> gain: array<f32>;" : ""}
${wn ? "@group(0) @binding(5) var<storage, read_write> dgain: array<f32>;" : ""}
@group(0) @binding(${wn ? 6 : 4}) var<uniform> p: P;
${vecWgsl(w)}
${rowWgsl(l, [ROW_SUM])}
${rowMain(w)}
  var q = 0.0;
  if (valid) { ${ROW_LOOP} { q += hsum(x[base + c] * dy[base + c]); } }
  let s = rowSum(q, lid);
  if (valid) {
    let nrm = norm[p.rowBase + row];
${
      wn
        ? `    let gn = gain[p.rowBase + row] / nrm;
    let k = s / (nrm * nrm);
    ${ROW_LOOP} { dx[base + c] = gn * (dy[base + c] - x[base + c] * k); }
    if (t == 0u) { dgain[p.rowBase + row] = s / nrm; }`
        : `    if (nrm >= p.eps) {
      let k = s / (nrm * nrm * nrm);
      ${ROW_LOOP} { dx[base + c] = dy[base + c] / nrm - x[base + c] * k; }
    } else {
      ${ROW_LOOP} { dx[base + c] = dy[base + c] / p.eps; }
    }`
    }
  }
}`,
  });
}

function checkEps(op: string, eps: number): void {
  if (!(eps >= 0) || !Number.isFinite(eps)) {
    throw new RangeError(`${op}: eps must be a finite number ≥ 0, got ${eps}`);
  }
}

function runFwd(
  gpu: Gpu,
  mode: Mode,
  op: string,
  x: GpuTensor,
  gain: GpuTensor | null,
  eps: number,
  opts: L2NormOptions,
): { y: GpuTensor; norm: GpuTensor } {
  const { rows, cols } = rowsCols(op, mode === "wn" ? "v" : "x", x);
  const y = gpu.empty(x.shape);
  // An empty row has norm 0 (an empty sum) and nothing to scale.
  const lead = x.shape.slice(0, -1);
  const norm = cols === 0 ? gpu.zeros(lead) : gpu.empty(lead);
  if (rows === 0 || cols === 0) return { y, norm };
  const { w, l } = rowPlan(gpu, rows, cols, opts.threadsPerRow);
  dispatchRows(gpu, op, fwdKernel(mode, w, l), l, rows, cols, eps, (c) => {
    const bufs = [rowView(x, c, cols), rowView(y, c, cols), norm];
    if (gain) bufs.push(gain);
    return bufs;
  });
  return { y, norm };
}

/**
 * `F.normalize(x, p=2, dim=-1, eps)`: each row of x ([…, D]) divided by
 * max(‖row‖, eps). Returns y and the unclamped row norms (leading shape).
 */
export function l2Normalize(
  gpu: Gpu,
  x: GpuTensor,
  eps = 1e-12,
  opts: L2NormOptions = {},
): { y: GpuTensor; norm: GpuTensor } {
  checkEps("l2Normalize", eps);
  return runFwd(gpu, "l2", "l2Normalize", x, null, eps, opts);
}

/** Input gradient of `l2Normalize` from dy, x and the saved `norm` (same eps). */
export function l2NormalizeBackward(
  gpu: Gpu,
  dy: GpuTensor,
  x: GpuTensor,
  norm: GpuTensor,
  eps = 1e-12,
  opts: L2NormOptions = {},
): GpuTensor {
  const op = "l2NormalizeBackward";
  checkEps(op, eps);
  const { rows, cols } = rowsCols(op, "x", x);
  expectShape(op, "dy", dy, x.shape);
  expectShape(op, "norm", norm, x.shape.slice(0, -1));
  const dx = gpu.empty(x.shape);
  if (rows === 0 || cols === 0) return dx;
  const { w, l } = rowPlan(gpu, rows, cols, opts.threadsPerRow);
  dispatchRows(gpu, op, bwdKernel("l2", w, l), l, rows, cols, eps, (c) => [
    rowView(dy, c, cols),
    rowView(x, c, cols),
    norm,
    rowView(dx, c, cols),
  ]);
  return dx;
}

/** Checks g is [K] or [K, 1] (PyTorch stores weight_g as [K, 1]). */
function checkGain(op: string, g: GpuTensor, rows: number): void {
  const ok = (g.shape.length === 1 && g.shape[0] === rows) ||
    (g.shape.length === 2 && g.shape[0] === rows && g.shape[1] === 1);
  if (!ok || g.dtype !== "f32") {
    throw new RangeError(
      `${op}: g has shape [${g.shape}] ${g.dtype}, expected [${rows}] or [${rows}, 1] f32 ` +
        "(one gain per row of v)",
    );
  }
}

/**
 * Weight normalisation with dim 0: w[k, :] = g[k] · v[k, :] / ‖v[k, :]‖ for
 * v [K, Din] and g [K] (or [K, 1]). Returns w and the row norms ‖v[k, :]‖ [K].
 */
export function weightNorm(
  gpu: Gpu,
  v: GpuTensor,
  g: GpuTensor,
  opts: L2NormOptions = {},
): { w: GpuTensor; norm: GpuTensor } {
  const op = "weightNorm";
  if (v.shape.length !== 2) throw new RangeError(`${op}: v must be [K, Din], got [${v.shape}]`);
  checkGain(op, g, v.shape[0]);
  const r = runFwd(gpu, "wn", op, v, g, 0, opts);
  return { w: r.y, norm: r.norm };
}

/** Gradients of `weightNorm`: dv ([K, Din]) and dg (g's shape) from dw, v, g and `norm`. */
export function weightNormBackward(
  gpu: Gpu,
  dw: GpuTensor,
  v: GpuTensor,
  g: GpuTensor,
  norm: GpuTensor,
  opts: L2NormOptions = {},
): { dv: GpuTensor; dg: GpuTensor } {
  const op = "weightNormBackward";
  if (v.shape.length !== 2) throw new RangeError(`${op}: v must be [K, Din], got [${v.shape}]`);
  const [rows, cols] = v.shape;
  expectShape(op, "dw", dw, v.shape);
  checkGain(op, g, rows);
  expectShape(op, "norm", norm, [rows]);
  const dv = gpu.empty(v.shape);
  // An empty row contributes nothing to its gain's gradient.
  const dg = cols === 0 ? gpu.zeros(g.shape) : gpu.empty(g.shape);
  if (rows === 0 || cols === 0) return { dv, dg };
  const { w, l } = rowPlan(gpu, rows, cols, opts.threadsPerRow);
  dispatchRows(gpu, op, bwdKernel("wn", w, l), l, rows, cols, 0, (c) => [
    rowView(dw, c, cols),
    rowView(v, c, cols),
    norm,
    rowView(dv, c, cols),
    g,
    dg,
  ]);
  return { dv, dg };
}

// -------------------------------------------------------------- references

function rowNorms(x: ArrayLike<number>, cols: number): Float64Array {
  const rows = x.length / cols;
  if (!Number.isInteger(rows)) throw new RangeError(`${x.length} values are not rows of ${cols}`);
  const n = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let q = 0;
    for (let c = 0; c < cols; c++) q += x[r * cols + c] ** 2;
    n[r] = Math.sqrt(q);
  }
  return n;
}

/** float64 F.normalize of rows of `cols`: y and the unclamped norms. */
export function l2NormalizeRef(
  x: ArrayLike<number>,
  cols: number,
  eps = 1e-12,
): { y: Float64Array; norm: Float64Array } {
  const norm = rowNorms(x, cols);
  const y = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) y[i] = x[i] / Math.max(norm[Math.floor(i / cols)], eps);
  return { y, norm };
}

/** float64 gradient of F.normalize (PyTorch's rule at the clamp: n ≥ eps passes). */
export function l2NormalizeBackwardRef(
  dy: ArrayLike<number>,
  x: ArrayLike<number>,
  cols: number,
  eps = 1e-12,
): Float64Array {
  const norm = rowNorms(x, cols);
  const dx = new Float64Array(x.length);
  for (let r = 0; r < norm.length; r++) {
    const n = norm[r];
    let s = 0;
    for (let c = 0; c < cols; c++) s += x[r * cols + c] * dy[r * cols + c];
    for (let c = 0; c < cols; c++) {
      const i = r * cols + c;
      dx[i] = n >= eps ? dy[i] / n - x[i] * s / n ** 3 : dy[i] / eps;
    }
  }
  return dx;
}

/** float64 weight norm (dim 0) of v [K, cols] with gains g [K]. */
export function weightNormRef(
  v: ArrayLike<number>,
  g: ArrayLike<number>,
  cols: number,
): { w: Float64Array; norm: Float64Array } {
  const norm = rowNorms(v, cols);
  const w = new Float64Array(v.length);
  for (let i = 0; i < v.length; i++) {
    const r = Math.floor(i / cols);
    w[i] = v[i] * g[r] / norm[r];
  }
  return { w, norm };
}

/** float64 gradients of weight norm: dv and dg. */
export function weightNormBackwardRef(
  dw: ArrayLike<number>,
  v: ArrayLike<number>,
  g: ArrayLike<number>,
  cols: number,
): { dv: Float64Array; dg: Float64Array } {
  const norm = rowNorms(v, cols);
  const dv = new Float64Array(v.length);
  const dg = new Float64Array(norm.length);
  for (let r = 0; r < norm.length; r++) {
    const n = norm[r];
    let s = 0;
    for (let c = 0; c < cols; c++) s += v[r * cols + c] * dw[r * cols + c];
    dg[r] = s / n;
    for (let c = 0; c < cols; c++) {
      const i = r * cols + c;
      dv[i] = (g[r] / n) * (dw[i] - v[i] * s / (n * n));
    }
  }
  return { dv, dg };
}

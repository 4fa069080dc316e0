/**
 * Softmax, log-softmax and soft-target cross-entropy along the last dim, with
 * a temperature that divides the logits first (DINOv2's DINO/iBOT heads:
 * `log_softmax(s / 0.1)`, teacher `softmax(t / 0.04)`), their backward rules
 * and float64 CPU references.
 *
 * Built on the row-kernel framework (`common/rows.ts`), as layernorm, l2norm
 * and koleo are; `tuneRowKernels` measures that framework's thread cap here.
 *
 * Numerics: max subtraction with an online (max, sum) pair per thread (the
 * running sum is rescaled only when the max grows), so logits of 1e4 at
 * temperature 0.04 (2.5e5 after scaling) neither overflow nor lose the small
 * terms; one pass reads the row for (max, sum), a second writes the result.
 * `z = x / T` is a true division, as PyTorch does it.
 */
import type { Autotuner } from "./autotune.ts";
import {
  dispatchRows,
  F32_LOWEST,
  layoutKey,
  MAX_ROW_THREADS,
  ROW_CAP_KEY,
  ROW_LOOP,
  ROW_SUM,
  type RowLayout,
  rowMain,
  rowPlan,
  type RowReduction,
  rowsCols,
  rowThreadCapOverride,
  rowTuner,
  rowView,
  rowWgsl,
  setRowThreadCap,
  vecWgsl,
} from "./common/rows.ts";
import { expectShape } from "./common/shape.ts";
import { type Kernel, kernel } from "./kernel.ts";
import type { Gpu } from "./runtime.ts";
import type { GpuTensor } from "./tensor.ts";

// ------------------------------------------------------------- temperature

/**
 * A temperature: a number baked into the dispatch's uniforms, or a [1] f32
 * tensor read by the kernel (for a recorded step whose temperature changes
 * between replays, e.g. the teacher's warm-up from 0.04 to 0.07).
 */
export type Temperature = number | GpuTensor;

/** Options of the softmax family. */
export interface SoftmaxOptions {
  /** Divides the logits first (default 1). */
  temperature?: Temperature;
  /** Threads per row (power of two ≤ 256); the default suits the row length. */
  threadsPerRow?: number;
}

function checkTemperature(op: string, t: Temperature | undefined): Temperature {
  if (t === undefined) return 1;
  if (typeof t === "number") {
    if (!(t > 0) || !Number.isFinite(t)) {
      throw new RangeError(`${op}: temperature must be a positive number, got ${t}`);
    }
    return t;
  }
  if (t.numel !== 1 || t.dtype !== "f32") {
    throw new RangeError(
      `${op}: a temperature tensor must be one f32 value, got [${t.shape}] ${t.dtype}`,
    );
  }
  return t;
}

/** The temperature field of the uniforms: the number, or 1 when a tensor holds it. */
function uniformTemp(t: Temperature): number {
  return typeof t === "number" ? t : 1;
}

/** WGSL `tau()`: the temperature from the uniforms, or from a bound [1] tensor. */
function tempWgsl(fromTensor: boolean, binding: number): string {
  return !fromTensor
    ? "fn tau() -> f32 { return p.temp; }"
    : `@group(0) @binding(${binding}) var<storage, read> tempT: array<f32>;\n` +
      "fn tau() -> f32 { return tempT[0]; }";
}

// ------------------------------------------------------------------ kernels

const MAXSUM: RowReduction = [
  "rowMaxSum",
  "vec2f",
  // Merge two (max, Σ exp(z − max)) pairs; the identity is (F32_LOWEST, 0).
  "vec2f(max(a.x, b.x), a.y * exp(a.x - max(a.x, b.x)) + b.y * exp(b.x - max(a.x, b.x)))",
];

type FwdMode = "softmax" | "log" | "ce";

/**
 * One online (max, sum) pass over the row, then a pass that writes
 * lp = z − max − log Σ (log), exp(lp) (softmax), or lp while summing t · lp
 * (ce). Two reads of x, one write: exp costs ~1 per element in each pass.
 */
function fwdKernel(mode: FwdMode, w: 1 | 4, l: RowLayout, tempTensor: boolean): Kernel {
  const ce = mode === "ce";
  const bindings: ("read" | "read_write")[] = ce
    ? ["read", "read_write", "read", "read_write"]
    : ["read", "read_write"];
  if (tempTensor) bindings.push("read");
  const tb = ce ? 4 : 2;
  const ub = bindings.length;
  const body = `
  // Online (max, sum): rescale the running sum only when the max grows.
  var m = ${F32_LOWEST};
  var s = 0.0;
  if (valid) {
    ${ROW_LOOP} {
      let z = x[base + c] / tauv;
      let mz = hmax(z);
      if (mz > m) { s *= exp(m - mz); m = mz; }
      s += hsum(exp(z - m));
    }
  }
  let ms = rowMaxSum(vec2f(m, s), lid);
  m = ms.x;
  let logS = log(ms.y);
  var acc = 0.0;
  if (valid) {
    ${ROW_LOOP} {
      let lp = (x[base + c] / tauv - m) - logS;
      y[base + c] = ${mode === "softmax" ? "exp(lp)" : "lp"};${
    ce ? "\n      acc += hsum(tg[base + c] * lp);" : ""
  }
    }
  }${
    ce
      ? `
  let total = rowSum(acc, lid);
  if (valid && t == 0u) { loss[p.rowBase + row] = -total; }`
      : ""
  }`;
  return kernel({
    name: `${ce ? "xent_soft" : mode === "log" ? "log_softmax" : "softmax"}_fwd`,
    key: `w${w}${layoutKey(l)}${tempTensor ? "T" : ""}`,
    bindings,
    uniformBytes: 16,
    source: () => `
struct P { rows: u32, cols: u32, rowBase: u32, temp: f32 }
@group(0) @binding(0) var<storage, read> x: array<V>;
@group(0) @binding(1) var<storage, read_write> y: array<V>;
${ce ? "@group(0) @binding(2) var<storage, read> tg: array<V>;" : ""}
${ce ? "@group(0) @binding(3) var<storage, read_write> loss: array<f32>;" : ""}
@group(0) @binding(${ub}) var<uniform> p: P;
${tempWgsl(tempTensor, tb)}
${vecWgsl(w)}
${rowWgsl(l, ce ? [MAXSUM, ROW_SUM] : [MAXSUM])}
${rowMain(w)}
  let tauv = tau();${body}
}`,
  });
}

type BwdMode = "softmax" | "log" | "ce";

/**
 * Backward kernels share one shape: a row dot product `S`, then a map.
 * softmax: a = dy, b = y, S = Σ dy·y, dx = y·(dy − S)/T.
 * log:     a = dy, b = y (log-probs), S = Σ dy, dx = (dy − exp(y)·S)/T.
 * ce:      a = logp, b = targets, S = Σ t, dx = dloss·(exp(logp)·S − t)/T.
 */
function bwdKernel(mode: BwdMode, w: 1 | 4, l: RowLayout, tempTensor: boolean): Kernel {
  const ce = mode === "ce";
  const bindings: ("read" | "read_write")[] = ["read", "read", "read_write"];
  if (ce) bindings.push("read");
  if (tempTensor) bindings.push("read");
  const tb = ce ? 4 : 3;
  const ub = bindings.length;
  const acc = mode === "softmax" ? "a[i] * b[i]" : mode === "log" ? "a[i]" : "b[i]";
  const out = mode === "softmax"
    ? "b[i] * (a[i] - dsum) * k"
    : mode === "log"
    ? "(a[i] - exp(b[i]) * dsum) * k"
    : "(exp(a[i]) * dsum - b[i]) * k";
  return kernel({
    name: `${mode === "ce" ? "xent_soft" : mode === "log" ? "log_softmax" : "softmax"}_bwd`,
    key: `w${w}${layoutKey(l)}${tempTensor ? "T" : ""}`,
    bindings,
    uniformBytes: 16,
    source: () => `
struct P { rows: u32, cols: u32, rowBase: u32, temp: f32 }
@group(0) @binding(0) var<storage, read> a: array<V>;
@group(0) @binding(1) var<storage, read> b: array<V>;
@group(0) @binding(2) var<storage, read_write> dx: array<V>;
${ce ? "@group(0) @binding(3) var<storage, read> dloss: array<f32>;" : ""}
@group(0) @binding(${ub}) var<uniform> p: P;
${tempWgsl(tempTensor, tb)}
${vecWgsl(w)}
${rowWgsl(l, [ROW_SUM])}
${rowMain(w)}
  var part = 0.0;
  if (valid) {
    ${ROW_LOOP} { let i = base + c; part += hsum(${acc}); }
  }
  let dsum = rowSum(part, lid);
  if (valid) {
    let k = ${ce ? "dloss[p.rowBase + row]" : "1.0"} / tau();
    ${ROW_LOOP} { let i = base + c; dx[i] = ${out}; }
  }
}`,
  });
}

// ---------------------------------------------------------------- dispatch

function runFwd(
  gpu: Gpu,
  mode: FwdMode,
  op: string,
  x: GpuTensor,
  targets: GpuTensor | null,
  opts: SoftmaxOptions,
): { y: GpuTensor; loss: GpuTensor | null } {
  const { rows, cols } = rowsCols(op, "x", x);
  if (targets) expectShape(op, "targets", targets, x.shape);
  const temp = checkTemperature(op, opts.temperature);
  const y = gpu.empty(x.shape);
  // An empty class dim gives a zero loss (an empty sum) with no dispatch to write it.
  const lossShape = x.shape.slice(0, -1);
  const loss = !targets ? null : cols === 0 ? gpu.zeros(lossShape) : gpu.empty(lossShape);
  if (rows === 0 || cols === 0) return { y, loss };
  const { w, l } = rowPlan(gpu, rows, cols, opts.threadsPerRow);
  const k = fwdKernel(mode, w, l, typeof temp !== "number");
  dispatchRows(gpu, op, k, l, rows, cols, uniformTemp(temp), (c) => {
    const bufs: GpuTensor[] = [rowView(x, c, cols), rowView(y, c, cols)];
    if (targets) bufs.push(rowView(targets, c, cols), loss!);
    if (typeof temp !== "number") bufs.push(temp);
    return bufs;
  });
  return { y, loss };
}

function runBwd(
  gpu: Gpu,
  mode: BwdMode,
  op: string,
  a: GpuTensor,
  b: GpuTensor,
  dloss: GpuTensor | null,
  opts: SoftmaxOptions,
): GpuTensor {
  const { rows, cols } = rowsCols(op, mode === "ce" ? "logp" : "dy", a);
  expectShape(op, mode === "ce" ? "targets" : "y", b, a.shape);
  if (dloss && (dloss.numel !== rows || dloss.dtype !== "f32")) {
    throw new RangeError(
      `${op}: dloss has shape [${dloss.shape}] ${dloss.dtype}, expected ${rows} f32 values ` +
        `(one per row of [${a.shape}])`,
    );
  }
  const temp = checkTemperature(op, opts.temperature);
  const dx = gpu.empty(a.shape);
  if (rows === 0 || cols === 0) return dx;
  const { w, l } = rowPlan(gpu, rows, cols, opts.threadsPerRow);
  const k = bwdKernel(mode, w, l, typeof temp !== "number");
  dispatchRows(gpu, op, k, l, rows, cols, uniformTemp(temp), (c) => {
    const bufs: GpuTensor[] = [rowView(a, c, cols), rowView(b, c, cols), rowView(dx, c, cols)];
    if (dloss) bufs.push(dloss);
    if (typeof temp !== "number") bufs.push(temp);
    return bufs;
  });
  return dx;
}

/** softmax(x / T) along the last dim. */
export function softmax(gpu: Gpu, x: GpuTensor, opts: SoftmaxOptions = {}): GpuTensor {
  return runFwd(gpu, "softmax", "softmax", x, null, opts).y;
}

/** Input gradient of `softmax` from its output `y`: dx = y·(dy − Σ dy·y) / T. */
export function softmaxBackward(
  gpu: Gpu,
  dy: GpuTensor,
  y: GpuTensor,
  opts: SoftmaxOptions = {},
): GpuTensor {
  return runBwd(gpu, "softmax", "softmaxBackward", dy, y, null, opts);
}

/** log_softmax(x / T) along the last dim. */
export function logSoftmax(gpu: Gpu, x: GpuTensor, opts: SoftmaxOptions = {}): GpuTensor {
  return runFwd(gpu, "log", "logSoftmax", x, null, opts).y;
}

/** Input gradient of `logSoftmax` from its output `y`: dx = (dy − exp(y)·Σ dy) / T. */
export function logSoftmaxBackward(
  gpu: Gpu,
  dy: GpuTensor,
  y: GpuTensor,
  opts: SoftmaxOptions = {},
): GpuTensor {
  return runBwd(gpu, "log", "logSoftmaxBackward", dy, y, null, opts);
}

/**
 * Soft-target cross-entropy per row: loss_n = −Σ_c t_nc · log_softmax(x_n / T)_c
 * (DINOv2's DINO/iBOT loss term). Returns the loss per row and the log-probs
 * the backward needs. Targets need not sum to 1.
 */
export function crossEntropySoft(
  gpu: Gpu,
  logits: GpuTensor,
  targets: GpuTensor,
  opts: SoftmaxOptions = {},
): { loss: GpuTensor; logp: GpuTensor } {
  const r = runFwd(gpu, "ce", "crossEntropySoft", logits, targets, opts);
  return { loss: r.loss!, logp: r.y };
}

/** Logit gradient of `crossEntropySoft`: dlogits = dloss·(softmax·Σ_c t − t) / T. */
export function crossEntropySoftBackward(
  gpu: Gpu,
  dloss: GpuTensor,
  logp: GpuTensor,
  targets: GpuTensor,
  opts: SoftmaxOptions = {},
): GpuTensor {
  return runBwd(gpu, "ce", "crossEntropySoftBackward", logp, targets, dloss, opts);
}

// -------------------------------------------------------------- references

/** Options of the CPU references (a number temperature only). */
export interface RefOptions {
  temperature?: number;
}

function refShape(x: ArrayLike<number>, cols: number): number {
  if (!(cols > 0) || x.length % cols !== 0) {
    throw new RangeError(`reference: ${x.length} values do not form rows of ${cols}`);
  }
  return x.length / cols;
}

/** float64 log_softmax(x / T) of rows of `cols`. */
export function logSoftmaxRef(
  x: ArrayLike<number>,
  cols: number,
  opts: RefOptions = {},
): Float64Array {
  const T = opts.temperature ?? 1;
  const rows = refShape(x, cols);
  const y = new Float64Array(x.length);
  for (let r = 0; r < rows; r++) {
    let m = -Infinity;
    for (let c = 0; c < cols; c++) m = Math.max(m, x[r * cols + c] / T);
    let s = 0;
    for (let c = 0; c < cols; c++) s += Math.exp(x[r * cols + c] / T - m);
    const ls = Math.log(s);
    for (let c = 0; c < cols; c++) y[r * cols + c] = x[r * cols + c] / T - m - ls;
  }
  return y;
}

/** float64 softmax(x / T) of rows of `cols`. */
export function softmaxRef(
  x: ArrayLike<number>,
  cols: number,
  opts: RefOptions = {},
): Float64Array {
  return logSoftmaxRef(x, cols, opts).map(Math.exp);
}

/**
 * The shape every backward reference shares (as the backward kernels do): per
 * row of `cols`, S = Σ_c acc(i), then dx[i] = out(i, S, row) over the row.
 */
function rowBackwardRef(
  n: number,
  cols: number,
  acc: (i: number) => number,
  out: (i: number, s: number, row: number) => number,
): Float64Array {
  const rows = refShape({ length: n }, cols);
  const dx = new Float64Array(n);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let c = 0; c < cols; c++) s += acc(r * cols + c);
    for (let c = 0; c < cols; c++) dx[r * cols + c] = out(r * cols + c, s, r);
  }
  return dx;
}

/** float64 gradient of softmax from its output. */
export function softmaxBackwardRef(
  dy: ArrayLike<number>,
  y: ArrayLike<number>,
  cols: number,
  opts: RefOptions = {},
): Float64Array {
  const T = opts.temperature ?? 1;
  return rowBackwardRef(y.length, cols, (i) => dy[i] * y[i], (i, s) => y[i] * (dy[i] - s) / T);
}

/** float64 gradient of log-softmax from its output (log-probs). */
export function logSoftmaxBackwardRef(
  dy: ArrayLike<number>,
  y: ArrayLike<number>,
  cols: number,
  opts: RefOptions = {},
): Float64Array {
  const T = opts.temperature ?? 1;
  return rowBackwardRef(y.length, cols, (i) => dy[i], (i, s) => (dy[i] - Math.exp(y[i]) * s) / T);
}

/** float64 soft-target cross-entropy per row, and the log-probs. */
export function crossEntropySoftRef(
  logits: ArrayLike<number>,
  targets: ArrayLike<number>,
  cols: number,
  opts: RefOptions = {},
): { loss: Float64Array; logp: Float64Array } {
  const logp = logSoftmaxRef(logits, cols, opts);
  const rows = logp.length / cols;
  const loss = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let c = 0; c < cols; c++) s += targets[r * cols + c] * logp[r * cols + c];
    loss[r] = -s;
  }
  return { loss, logp };
}

/** float64 logit gradient of the soft cross-entropy. */
export function crossEntropySoftBackwardRef(
  dloss: ArrayLike<number>,
  logp: ArrayLike<number>,
  targets: ArrayLike<number>,
  cols: number,
  opts: RefOptions = {},
): Float64Array {
  const T = opts.temperature ?? 1;
  return rowBackwardRef(
    logp.length,
    cols,
    (i) => targets[i],
    (i, st, r) => dloss[r] * (Math.exp(logp[i]) * st - targets[i]) / T,
  );
}

// ------------------------------------------------------------------ tuning

/** Options of `tuneRowKernels`. */
export interface RowTuneOptions {
  /** Caps to measure (default 1, 8, 64, 256). */
  candidates?: readonly number[];
  /** Where the choice is recorded (default: the process-wide `rowTuner()`). */
  tuner?: Autotuner<number>;
  /** Measure again even when this adapter has a recorded choice. */
  force?: boolean;
}

/**
 * Measures which cap on threads per row suits this adapter and records it
 * (`rowThreadCap` then returns it, in this and later processes). Each
 * candidate runs two probes: wide rows (a softmax over 16,384 classes) and
 * narrow ones (a log-softmax over 384, like a ViT-S layer-norm row); rounds
 * interleave the candidates and the median of the summed times counts. GPUs
 * favour many threads per row; llvmpipe favours one (cap 1: no barrier at
 * all, and a barrier slows a whole shader there). About two seconds on
 * llvmpipe; nothing when a choice is cached. Returns the cap chosen.
 */
export async function tuneRowKernels(gpu: Gpu, opts: RowTuneOptions = {}): Promise<number> {
  const candidates = opts.candidates ?? [1, 8, 64, MAX_ROW_THREADS];
  const tuner = opts.tuner ?? rowTuner();
  const probes: [number, number, FwdMode][] = [[16, 16384, "softmax"], [1024, 384, "log"]];
  const inputs = probes.map(([rows, cols]) => {
    const data = new Float32Array(rows * cols);
    for (let i = 0; i < data.length; i++) data[i] = Math.sin(i * 0.37) * 4;
    return gpu.tensor(data, [rows, cols]);
  });
  const saved = rowThreadCapOverride(gpu);
  const compiled = new Set<number>();
  try {
    const r = await tuner.tuneWith(gpu.adapter.name, ROW_CAP_KEY, candidates, async (cap) => {
      setRowThreadCap(gpu, cap);
      let ms = 0;
      for (const [i, [, , mode]] of probes.entries()) {
        const run = () => gpu.release(runFwd(gpu, mode, "tuneRowKernels", inputs[i], null, {}).y);
        if (!compiled.has(cap)) run(); // compile outside the timing
        const t = await gpu.time(run);
        ms += t.gpuMs ?? t.wallMs;
      }
      compiled.add(cap);
      return ms;
    }, { force: opts.force });
    return r.choice;
  } finally {
    gpu.release(...inputs);
    setRowThreadCap(gpu, saved ?? null);
  }
}

/**
 * Softmax, log-softmax and soft-target cross-entropy along the last dim, with
 * a temperature that divides the logits first (DINOv2's DINO/iBOT heads:
 * `log_softmax(s / 0.1)`, teacher `softmax(t / 0.04)`), their backward rules
 * and float64 CPU references.
 *
 * The file also holds the row plumbing the other norm kernels share
 * (layernorm, l2norm, koleo): how rows map to threads, the in-workgroup row
 * reductions and the splitting of long tensors into bindable row chunks.
 *
 * Numerics: max subtraction with an online (max, sum) pair per thread (the
 * running sum is rescaled only when the max grows), so logits of 1e4 at
 * temperature 0.04 (2.5e5 after scaling) neither overflow nor lose the small
 * terms; one pass reads the row for (max, sum), a second writes the result.
 * `z = x / T` is a true division, as PyTorch does it.
 */
import { type AutotuneCache, type Autotuner, newAutotuner } from "./autotune.ts";
import { GpuLimitError } from "./errors.ts";
import { FLAT_WORKGROUP_INDEX, grid, type Kernel, kernel, Params } from "./kernel.ts";
import { fmtBytes } from "./pool.ts";
import type { Gpu } from "./runtime.ts";
import type { GpuTensor } from "./tensor.ts";

// ------------------------------------------------------------ row plumbing

/**
 * How a row kernel spreads work: `threads` invocations cooperate on one row
 * (striding over its columns), `rowsPerGroup` rows share a workgroup of
 * `workgroupSize = threads · rowsPerGroup` invocations.
 */
export interface RowLayout {
  threads: number;
  rowsPerGroup: number;
  workgroupSize: number;
}

/** Largest threads-per-row; rows longer than 256·W·k loop k times per thread. */
export const MAX_ROW_THREADS = 256;

/** How a caller shapes a row layout; every field is optional. */
export interface LayoutRequest {
  /** Threads per row: a power of two in 1..256 (overrides the default). */
  threads?: number;
  /** Most threads per row the default may use (see `rowThreadCap`). */
  cap?: number;
  /** Fewest threads per row the default may use (register budgets). */
  minThreads?: number;
  /** Rows to dispatch: one-thread-per-row layouts shrink their workgroup for a few rows. */
  rows?: number;
}

/**
 * The layout for rows of `units` loads each (columns, or vec4s of columns).
 * The default gives each thread about 8 loads before the reduction (a wide
 * workgroup for the 65,536-prototype heads, one thread per row for rows of a
 * few values), within `[minThreads, cap]`. One thread per row has no barrier
 * at all; its workgroup shrinks to 8 (but never below) so that a few long rows
 * still spread over several workgroups.
 */
export function rowLayout(units: number, req: LayoutRequest = {}): RowLayout {
  const want = Math.min(req.cap ?? MAX_ROW_THREADS, pow2Ceil(Math.ceil(units / 8)));
  const t = req.threads ??
    Math.min(MAX_ROW_THREADS, Math.max(want, pow2Ceil(req.minThreads ?? 1)));
  if (!Number.isInteger(t) || t < 1 || t > MAX_ROW_THREADS || (t & (t - 1)) !== 0) {
    throw new RangeError(`threads per row must be a power of two in 1..256, got ${req.threads}`);
  }
  const workgroupSize = t > 1 || req.rows === undefined
    ? Math.max(t, 64)
    : Math.min(64, Math.max(8, 2 ** Math.floor(Math.log2(Math.max(1, req.rows / 8)))));
  return { threads: t, rowsPerGroup: workgroupSize / t, workgroupSize };
}

const rowCaps = new WeakMap<Gpu, number>();

/** Cache key of the adapter-wide cap (one choice serves every norm kernel). */
const CAP_KEY = "cap";

function validCap(cap: number): boolean {
  return Number.isInteger(cap) && cap >= 1 && cap <= MAX_ROW_THREADS && (cap & (cap - 1)) === 0;
}

/** A tuner of the row thread cap on `cache` (op "rows"; candidates stored as "cap<N>"). */
export function newRowTuner(cache?: AutotuneCache): Autotuner<number> {
  return newAutotuner<number>("rows", {
    id: (c) => `cap${c}`,
    parse: (id) => {
      const m = /^cap(\d+)$/.exec(id);
      return m && validCap(Number(m[1])) ? Number(m[1]) : null;
    },
  }, cache);
}

let sharedRowTuner: Autotuner<number> | null = null;

/** The process-wide row tuner (its cache file: see `autotune.ts`). */
export function rowTuner(): Autotuner<number> {
  sharedRowTuner ??= newRowTuner();
  return sharedRowTuner;
}

/**
 * The most threads per row the default layouts use on `gpu`: the override
 * set with `setRowThreadCap`, else the tuned choice for this adapter
 * (`tuneRowKernels`, cached across processes), else 256 (what GPUs want).
 * Never measures.
 */
export function rowThreadCap(gpu: Gpu): number {
  return rowCaps.get(gpu) ?? rowTuner().lookup(gpu.adapter.name, CAP_KEY) ?? MAX_ROW_THREADS;
}

/** Overrides the cap on threads per row for `gpu` (null: back to the tuned choice). */
export function setRowThreadCap(gpu: Gpu, cap: number | null): void {
  if (cap === null) {
    rowCaps.delete(gpu);
    return;
  }
  if (!validCap(cap)) {
    throw new RangeError(`the row thread cap must be a power of two in 1..256, got ${cap}`);
  }
  rowCaps.set(gpu, cap);
}

function pow2Ceil(n: number): number {
  return n <= 1 ? 1 : 2 ** Math.ceil(Math.log2(n));
}

/** Cache-key fragment of a layout. */
export function layoutKey(l: RowLayout): string {
  return `t${l.threads}w${l.workgroupSize}`;
}

/**
 * WGSL for a row kernel: constants `T` (threads per row), `R` (rows per
 * workgroup), `WG`, and a reduction `name(v, lid)` over the T threads of the
 * caller's row for each `[name, type, combine]` in `reductions` (`combine` is
 * an expression of `a` and `b`). Invariant: every invocation of the workgroup
 * must call a reduction (uniform control flow, for the barriers), also those
 * whose row is out of range; they pass an identity value.
 */
export function rowWgsl(l: RowLayout, reductions: readonly [string, string, string][]): string {
  const out = [
    `const T = ${l.threads}u;`,
    `const R = ${l.rowsPerGroup}u;`,
    `const WG = ${l.workgroupSize}u;`,
    `const S = ${Math.min(l.threads, SEGMENT_LANES)}u;`,
    `fn segLen(n: u32) -> u32 { let k = T / S; return ((n + k - 1u) / k + S - 1u) / S * S; }`,
    `fn segBegin(t: u32, n: u32) -> u32 { return (t / S) * segLen(n) + t % S; }`,
    `fn segEnd(t: u32, n: u32) -> u32 { return min((t / S + 1u) * segLen(n), n); }`,
  ];
  for (const [name, type, combine] of reductions) {
    const comb = `fn ${name}_comb(a: ${type}, b: ${type}) -> ${type} { return ${combine}; }`;
    if (l.threads === 1) {
      out.push(comb, `fn ${name}(v: ${type}, lid: u32) -> ${type} { return v; }`);
      continue;
    }
    // Tree over the T slots of this row; the trailing barrier lets the array be reused.
    out.push(
      `var<workgroup> ${name}_buf: array<${type}, WG>;`,
      comb,
      `fn ${name}(v: ${type}, lid: u32) -> ${type} {
  ${name}_buf[lid] = v;
  workgroupBarrier();
  let lane = lid % T;
  for (var s = T / 2u; s > 0u; s = s / 2u) {
    if (lane < s) { ${name}_buf[lid] = ${name}_comb(${name}_buf[lid], ${name}_buf[lid + s]); }
    workgroupBarrier();
  }
  let r = ${name}_buf[lid - lane];
  workgroupBarrier();
  return r;
}`,
    );
  }
  return out.join("\n");
}

/**
 * Lanes that stream one contiguous segment of a row: a row's T threads split
 * it into T/S segments, and the S lanes of a segment read adjacent elements.
 * Adjacent lanes keep GPU loads coalesced (8 vec4 = one 128 B line); whole
 * segments keep a SIMD software adapter streaming memory in order.
 */
export const SEGMENT_LANES = 8;

/**
 * WGSL loop header over this thread's elements `c` of a row of `n` units
 * (inside a kernel built with `rowWgsl`, after `rowSegment("n")`).
 */
export const ROW_LOOP = "for (var c = sb; c < se; c += S)";

/** WGSL: this thread's segment `[sb, se)` of a row of `n` units, computed once. */
export function rowSegment(n: string): string {
  return `let sb = segBegin(t, ${n});\n  let se = segEnd(t, ${n});`;
}

/** The most negative finite f32, the identity of max (WGSL has no -inf literal). */
export const F32_LOWEST = "-3.4028234663852886e38";

/** A range of rows dispatched together. */
export interface RowChunk {
  start: number;
  count: number;
}

/**
 * Splits `rows` into chunks whose bound ranges (one per entry of `rowBytes`,
 * the bytes of one row of each row-major binding) fit the adapter's
 * `maxStorageBufferBindingSize`, with every chunk start at a byte offset that
 * is a multiple of `minStorageBufferOffsetAlignment` and of `multiple` rows.
 * Throws `GpuLimitError` naming `op` when even the smallest aligned block of
 * rows is too large to bind.
 */
export function rowChunks(
  gpu: Gpu,
  op: string,
  rows: number,
  rowBytes: readonly number[],
  multiple = 1,
): RowChunk[] {
  const limit = gpu.limits.maxStorageBufferBindingSize;
  const align = gpu.limits.minStorageBufferOffsetAlignment;
  const widest = Math.max(...rowBytes);
  const fit = Math.floor(limit / widest);
  if (rows <= fit) return [{ start: 0, count: rows }];
  let step = multiple;
  for (const b of rowBytes) step = lcm(step, align / gcd(b, align));
  const per = Math.floor(fit / step) * step;
  if (per === 0) {
    throw new GpuLimitError(
      `${op}: a block of ${step} rows of ${fmtBytes(widest)} cannot be bound within ` +
        `maxStorageBufferBindingSize (${fmtBytes(limit)}) at aligned offsets; ` +
        `use shorter rows (split the last dim)`,
    );
  }
  const chunks: RowChunk[] = [];
  for (let s = 0; s < rows; s += per) chunks.push({ start: s, count: Math.min(per, rows - s) });
  return chunks;
}

function gcd(a: number, b: number): number {
  while (b) [a, b] = [b, a % b];
  return a;
}

function lcm(a: number, b: number): number {
  return (a / gcd(a, b)) * b;
}

/** A view of rows `[c.start, c.start + c.count)` of a row-major tensor with `cols` columns. */
export function rowView(t: GpuTensor, c: RowChunk, cols: number): GpuTensor {
  if (c.start === 0 && c.count * cols === t.numel) return t;
  return t.view(c.start * cols, [c.count, cols]);
}

/**
 * Rows and columns of a tensor reduced along its last dim (leading dims
 * flatten into rows). Throws naming `op` and `what` for a 0-d or non-f32 tensor.
 */
export function rowsCols(op: string, what: string, t: GpuTensor): { rows: number; cols: number } {
  if (t.shape.length < 1) throw new RangeError(`${op}: ${what} must have at least one dim`);
  if (t.dtype !== "f32") throw new TypeError(`${op}: ${what} must be f32, got ${t.dtype}`);
  const cols = t.shape[t.shape.length - 1];
  return { rows: cols === 0 ? 0 : t.numel / cols, cols };
}

/** Throws naming `op` unless `t` has exactly `shape`. */
export function expectShape(op: string, what: string, t: GpuTensor, shape: readonly number[]) {
  if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
    throw new RangeError(`${op}: ${what} has shape [${t.shape}], expected [${shape}]`);
  }
  if (t.dtype !== "f32") throw new TypeError(`${op}: ${what} must be f32, got ${t.dtype}`);
}

/** WGSL prologue of a row kernel: `g` (row in group), `t` (lane in row), `row`, `valid`. */
export const ROW_PROLOGUE = `
  let g = lid / T;
  let t = lid % T;
  let row = ${FLAT_WORKGROUP_INDEX} * R + g;
  let valid = row < p.rows;`;

/** WGSL builtins a row kernel's `main` takes. */
export const ROW_BUILTINS = "@builtin(workgroup_id) wid: vec3u, " +
  "@builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32";

/** Workgroups for `rows` rows of layout `l`. */
export function rowGrid(rows: number, l: RowLayout): [number, number, number] {
  return grid(Math.ceil(rows / l.rowsPerGroup));
}

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

/** WGSL `tau()`: the temperature from the uniforms, or from a bound [1] tensor. */
function tempWgsl(fromTensor: boolean, binding: number): string {
  return !fromTensor
    ? "fn tau() -> f32 { return p.temp; }"
    : `@group(0) @binding(${binding}) var<storage, read> tempT: array<f32>;\n` +
      "fn tau() -> f32 { return tempT[0]; }";
}

// ------------------------------------------------------------------ kernels

/** Whether rows can be read as vec4 (the column count is a multiple of 4). */
function widthOf(cols: number): 1 | 4 {
  return cols % 4 === 0 ? 4 : 1;
}

/** WGSL `V` (f32, or vec4f for rows read 4 columns at a time) with its horizontal sum and max. */
export function vecWgsl(w: 1 | 4): string {
  return w === 4
    ? `alias V = vec4f;
fn hsum(v: V) -> f32 { return dot(v, V(1.0)); }
fn hmax(v: V) -> f32 { return max(max(v.x, v.y), max(v.z, v.w)); }`
    : `alias V = f32;
fn hsum(v: V) -> f32 { return v; }
fn hmax(v: V) -> f32 { return v; }`;
}

const MAXSUM: [string, string, string] = [
  "rowMaxSum",
  "vec2f",
  // Merge two (max, Σ exp(z − max)) pairs; the identity is (F32_LOWEST, 0).
  "vec2f(max(a.x, b.x), a.y * exp(a.x - max(a.x, b.x)) + b.y * exp(b.x - max(a.x, b.x)))",
];
const SUM: [string, string, string] = ["rowSum", "f32", "a + b"];

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
${rowWgsl(l, ce ? [MAXSUM, SUM] : [MAXSUM])}
@compute @workgroup_size(WG)
fn main(${ROW_BUILTINS}) {${ROW_PROLOGUE}
  let n = p.cols / ${w}u;
  let base = row * n;
  ${rowSegment("n")}
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
${rowWgsl(l, [SUM])}
@compute @workgroup_size(WG)
fn main(${ROW_BUILTINS}) {${ROW_PROLOGUE}
  let n = p.cols / ${w}u;
  let base = row * n;
  ${rowSegment("n")}
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

function params(rows: number, cols: number, rowBase: number, temp: Temperature): Uint8Array {
  return new Params(16).u32(rows).u32(cols).u32(rowBase).f32(typeof temp === "number" ? temp : 1)
    .bytes;
}

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
  const w = widthOf(cols);
  const l = rowLayout(cols / w, { threads: opts.threadsPerRow, cap: rowThreadCap(gpu), rows });
  const k = fwdKernel(mode, w, l, typeof temp !== "number");
  for (const c of rowChunks(gpu, op, rows, [cols * 4])) {
    const bufs: GpuTensor[] = [rowView(x, c, cols), rowView(y, c, cols)];
    if (targets) bufs.push(rowView(targets, c, cols), loss!);
    if (typeof temp !== "number") bufs.push(temp);
    gpu.dispatch(k, bufs, rowGrid(c.count, l), params(c.count, cols, c.start, temp));
  }
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
  const w = widthOf(cols);
  const l = rowLayout(cols / w, { threads: opts.threadsPerRow, cap: rowThreadCap(gpu), rows });
  const k = bwdKernel(mode, w, l, typeof temp !== "number");
  for (const c of rowChunks(gpu, op, rows, [cols * 4])) {
    const bufs: GpuTensor[] = [rowView(a, c, cols), rowView(b, c, cols), rowView(dx, c, cols)];
    if (dloss) bufs.push(dloss);
    if (typeof temp !== "number") bufs.push(temp);
    gpu.dispatch(k, bufs, rowGrid(c.count, l), params(c.count, cols, c.start, temp));
  }
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

/** float64 gradient of softmax from its output. */
export function softmaxBackwardRef(
  dy: ArrayLike<number>,
  y: ArrayLike<number>,
  cols: number,
  opts: RefOptions = {},
): Float64Array {
  const T = opts.temperature ?? 1;
  const rows = refShape(y, cols);
  const dx = new Float64Array(y.length);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let c = 0; c < cols; c++) s += dy[r * cols + c] * y[r * cols + c];
    for (let c = 0; c < cols; c++) {
      const i = r * cols + c;
      dx[i] = y[i] * (dy[i] - s) / T;
    }
  }
  return dx;
}

/** float64 gradient of log-softmax from its output (log-probs). */
export function logSoftmaxBackwardRef(
  dy: ArrayLike<number>,
  y: ArrayLike<number>,
  cols: number,
  opts: RefOptions = {},
): Float64Array {
  const T = opts.temperature ?? 1;
  const rows = refShape(y, cols);
  const dx = new Float64Array(y.length);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let c = 0; c < cols; c++) s += dy[r * cols + c];
    for (let c = 0; c < cols; c++) {
      const i = r * cols + c;
      dx[i] = (dy[i] - Math.exp(y[i]) * s) / T;
    }
  }
  return dx;
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
  const rows = refShape(logp, cols);
  const dx = new Float64Array(logp.length);
  for (let r = 0; r < rows; r++) {
    let st = 0;
    for (let c = 0; c < cols; c++) st += targets[r * cols + c];
    for (let c = 0; c < cols; c++) {
      const i = r * cols + c;
      dx[i] = dloss[r] * (Math.exp(logp[i]) * st - targets[i]) / T;
    }
  }
  return dx;
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
  const saved = rowCaps.get(gpu);
  const compiled = new Set<number>();
  try {
    const r = await tuner.tuneWith(gpu.adapter.name, CAP_KEY, candidates, async (cap) => {
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

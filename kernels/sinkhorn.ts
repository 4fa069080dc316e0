/**
 * Teacher targets for the DINO and iBOT losses: DINOv2's Sinkhorn-Knopp
 * (`sinkhorn_knopp_teacher`) and the softmax-centering alternative.
 *
 * Sinkhorn-Knopp, as DINOv2 writes it on `Q = exp(t / T)ᵀ` (K×B):
 * `Q /= ΣQ`, then per iteration `Q /= Q.sum(1); Q /= K; Q /= Q.sum(0); Q /= B`, finally `Q *= B`.
 * Each normalisation multiplies by a diagonal, so Q stays `E[b,k]·u_k·w_b` with
 * `E = exp((t[b,k] − c_k) / T)`: an iteration is `u_k = 1 / (K·Σ_b E[b,k]·w_b)` then
 * `w_b = 1 / (B·Σ_k E[b,k]·u_k)` (starting from w = 1), and the result is `B·E·u·w`.
 * `c_k` is the max of prototype k over the (valid) samples. The first division, per prototype
 * over the samples, cancels any per-prototype factor, so this is the same Q as DINOv2's `exp(t/T)`
 * (and as the global-max shift); unlike either, it can neither overflow (every E ≤ 1) nor leave a
 * prototype's column all zero (its max gives E = 1), which a global max does in f32 once logits
 * spread over more than 87·T (3.5 at T = 0.04). It still fails (NaN row) where one sample is
 * more than 87·T below the best sample of every prototype, as torch's f32 code fails earlier.
 * E is written once (into the output) and read by every pass; nothing else is rewritten.
 *
 * Reductions are deterministic and two-stage: column sums (over rows b) by slabs of rows, each
 * slab a serial sum per column, then the slab partials summed in order; row sums (over the K
 * prototypes) by invocations that each sum 16 strided columns and write their own partial, then
 * one workgroup per row over those partials (strided, then a fixed tree). The streaming passes
 * have no barriers: on llvmpipe a barrier anywhere in a shader slows its whole main loop (4x
 * measured on the gradient norm); trees run only over partials, 1/16 of the data.
 * The same inputs give the same bits on every run.
 *
 * Rows past `count` (a padded masked-patch buffer in a replayed iBOT step) are left out of every
 * sum and get zero targets; B is `count`. Tensors larger than one binding are processed in row
 * blocks (each a bound window), with the column slabs laid out across blocks.
 *
 * Temperature, like the other scheduled values, is read from a one-element storage tensor so a
 * recorded step replays with the value the host writes before each replay.
 */
import { F32_LOWEST, rowView } from "./common/rows.ts";
import { type Span, splitSpans } from "./common/split.ts";
import {
  bindingsWgsl,
  FLAT_WORKGROUP_INDEX,
  flatMain,
  grid,
  GRID_BUILTINS,
  type Kernel,
  kernel,
  type StorageDecl,
} from "./kernel.ts";
import type { Gpu } from "./runtime.ts";
import type { GpuTensor } from "./tensor.ts";
import { Uniforms } from "./uniforms.ts";

const WG = 256;
/** Elements each invocation of a row pass reads (strided by WG). */
const PER_THREAD = 16;
/** Width of one row slice: one workgroup's share of a row. */
const SLICE = WG * PER_THREAD;
/** Column slabs per call (at most): slab rows = max(64, ceil(rows / 16)). */
const MAX_SLABS = 16;
const MIN_SLAB_ROWS = 64;
/** How the number of valid rows reaches a kernel. */
type CountMode = "uniform" | "u32" | "f32";

/** The uniform block every kernel of this file takes (unused fields are 0). */
const UNIFORM = `struct P {
  K: u32, nRows: u32, rowBase: u32, count: u32,
  slabRows: u32, slabBase: u32, n: u32, pad: u32,
  a: f32, b: f32, p0: u32, p1: u32,
}`;
const UNIFORM_BYTES = 48;

interface Fields {
  K: number;
  nRows?: number;
  rowBase?: number;
  count?: number;
  slabRows?: number;
  slabBase?: number;
  n?: number;
  a?: number;
  b?: number;
}

function params(f: Fields): Uint8Array {
  return new Uniforms(UNIFORM_BYTES).u32(f.K).u32(f.nRows ?? 0).u32(f.rowBase ?? 0)
    .u32(f.count ?? 0).u32(f.slabRows ?? 0).u32(f.slabBase ?? 0).u32(f.n ?? 0)
    .u32(0).f32(f.a ?? 0).f32(f.b ?? 0).bytes;
}

/**
 * A kernel of this file: the uniforms `u` and the storage bindings of `list`
 * (in order) declared before the rest of its WGSL, `body`.
 */
function sinkhornKernel(
  name: string,
  key: string,
  list: readonly StorageDecl[],
  body: () => string,
): Kernel {
  return kernel({
    name,
    key,
    bindings: list.map((b) => b[1]),
    uniformBytes: UNIFORM_BYTES,
    source: () => `${UNIFORM}\n${bindingsWgsl(list, ["u", "P"])}\n${body()}`,
  });
}

/**
 * The count binding (absent in uniform mode) and `countValue()`, the count as given; kernels
 * clamp it to their rows.
 */
function countDecl(mode: CountMode): { binding: StorageDecl[]; fn: string } {
  if (mode === "uniform") {
    return { binding: [], fn: "fn countValue() -> u32 { return u.count; }" };
  }
  return {
    binding: [["cnt", "read", `array<${mode}>`]],
    fn: mode === "u32"
      ? "fn countValue() -> u32 { return cnt[0]; }"
      : "fn countValue() -> u32 { return u32(max(cnt[0], 0.0)); }",
  };
}

// ------------------------------------------------------------------ kernels

/**
 * Stage 1 of column reductions, one invocation per (slab, column) of the block:
 * - "max": the largest logit of the valid rows (the lowest f32 when the slab has none);
 * - "exp": E = exp((x − max_k) / T) for valid rows (0 for the others) is written to `e` and summed;
 * - "weighted": Σ_b e[b,k]·w[b] (invalid rows have w = 0 and e = 0);
 * - "plain": Σ_b x[b,k] over all rows (centering).
 */
function colPartialKernel(kind: "max" | "exp" | "weighted" | "plain", mode: CountMode): Kernel {
  const c = countDecl(mode);
  const f32s = "array<f32>";
  const list: StorageDecl[] = kind === "max"
    ? [["x", "read", f32s], ...c.binding, ["partial", "read_write", f32s]]
    : kind === "exp"
    ? [
      ["x", "read", f32s],
      ["mx", "read", f32s],
      ["temp", "read", f32s],
      ...c.binding,
      ["e", "read_write", f32s],
      ["partial", "read_write", f32s],
    ]
    : kind === "weighted"
    ? [["e", "read", f32s], ["w", "read", f32s], ["partial", "read_write", f32s]]
    : [["x", "read", f32s], ["partial", "read_write", f32s]];
  const valid = "let valid = min(u.nRows, max(countValue(), u.rowBase) - u.rowBase);";
  const body = kind === "max"
    ? `${valid}
  s = ${F32_LOWEST};
  for (var r = r0; r < min(r1, valid); r++) { s = max(s, x[r * u.K + k]); }`
    : kind === "exp"
    ? `${valid}
  let m = mx[k];
  let t = temp[0];
  for (var r = r0; r < r1; r++) {
    var v = 0.0;
    if (r < valid) { v = exp((x[r * u.K + k] - m) / t); }
    e[r * u.K + k] = v;
    s += v;
  }`
    : kind === "weighted"
    ? `for (var r = r0; r < r1; r++) { s += e[r * u.K + k] * w[u.rowBase + r]; }`
    : `for (var r = r0; r < r1; r++) { s += x[r * u.K + k]; }`;
  const counted = kind === "max" || kind === "exp";
  return sinkhornKernel(`sinkhorn_col_${kind}`, counted ? mode : "", list, () => `
${counted ? c.fn : ""}
${flatMain(WG, "i", "u.n")}
  let k = i % u.K;
  let slab = i / u.K;
  let r0 = slab * u.slabRows;
  let r1 = min(r0 + u.slabRows, u.nRows);
  var s = 0.0;
  ${body}
  partial[(u.slabBase + slab) * u.K + k] = s;
}`);
}

/**
 * Stage 2 of column reductions, one invocation per column over `n` slabs:
 * - "max": the column's max;
 * - "sum": the column's sum (what a data-parallel run sums across processes);
 * - "scale": `u_k = 1 / (K · Σ)` (Sinkhorn's prototype normalisation);
 * - "center": `center_k = center_k·a + (Σ / rows)·b` with a = m, b = 1 − m.
 */
function colFinishKernel(kind: "max" | "sum" | "scale" | "center"): Kernel {
  const finish = {
    max: "out[k] = s;",
    sum: "out[k] = s;",
    scale: "out[k] = 1.0 / (f32(u.K) * s);",
    center: "out[k] = out[k] * u.a + (s / f32(u.nRows)) * u.b;",
  }[kind];
  return sinkhornKernel(`sinkhorn_colsum_${kind}`, "", [
    ["partial", "read", "array<f32>"],
    ["out", "read_write", "array<f32>"],
  ], () => `
${flatMain(WG, "k", "u.K")}
  var s = ${kind === "max" ? F32_LOWEST : "0.0"};
  for (var j = 0u; j < u.n; j++) {
    ${kind === "max" ? "s = max(s, partial[j * u.K + k]);" : "s += partial[j * u.K + k];"}
  }
  ${finish}
}`);
}

/**
 * WGSL head of the barrier-free row kernels: invocation (row, slice, lane) of a
 * grid of nRows · slices workgroups (`u.n` slices per row), out-of-range rows
 * return.
 */
const SLICE_MAIN = `@compute @workgroup_size(${WG})
fn main(${GRID_BUILTINS}) {
  let g = ${FLAT_WORKGROUP_INDEX};
  let slices = u.n;
  let row = g / slices;
  let slice = g % slices;
  if (row >= u.nRows) { return; }`;

/** WGSL: `body` for each of this lane's PER_THREAD columns `k = slice·SLICE + j·WG + lane < K`. */
function sliceColumns(body: string): string {
  return `for (var j = 0u; j < ${PER_THREAD}u; j++) {
    let k = slice * ${SLICE}u + j * ${WG}u + lid;
    if (k < u.K) { ${body} }
  }`;
}

/**
 * Stage 1 of row sums Σ_k e[b,k]·u_k, without barriers: invocation (row, slice, lane) sums the
 * PER_THREAD columns `slice·SLICE + j·WG + lane` and writes its own partial; a row has
 * `slices·WG` partials.
 */
const rowPartialKernel = sinkhornKernel("sinkhorn_row_partial", "", [
  ["e", "read", "array<f32>"],
  ["uk", "read", "array<f32>"],
  ["partial", "read_write", "array<f32>"],
], () => `
${SLICE_MAIN}
  var s = 0.0;
  ${sliceColumns("s += e[row * u.K + k] * uk[k];")}
  partial[((u.rowBase + row) * slices + slice) * ${WG}u + lid] = s;
}`);

/** WGSL: workgroup `red` tree over WG values of type T with `op`, the result in red[0]. */
function treeWgsl(type: string, op: (a: string, b: string) => string): string {
  return `var<workgroup> red: array<${type}, ${WG}>;
fn tree(lid: u32, v: ${type}) -> ${type} {
  red[lid] = v;
  for (var st = ${WG / 2}u; st > 0u; st >>= 1u) {
    workgroupBarrier();
    if (lid < st) { red[lid] = ${op("red[lid]", "red[lid + st]")}; }
  }
  workgroupBarrier();
  return red[0];
}`;
}

/**
 * Stage 2 of row sums, one workgroup per row over its `slices·WG` partials (strided, then a
 * tree): `w_b = 1 / (B · Σ)` for valid rows, 0 for the rest.
 */
function rowFinishKernel(mode: CountMode): Kernel {
  const c = countDecl(mode);
  const list: StorageDecl[] = [
    ["partial", "read", "array<f32>"],
    ...c.binding,
    ["w", "read_write", "array<f32>"],
  ];
  return sinkhornKernel("sinkhorn_row_finish", mode, list, () => `
${c.fn}
${treeWgsl("f32", (a, b) => `${a} + ${b}`)}
@compute @workgroup_size(${WG})
fn main(${GRID_BUILTINS}) {
  let b = ${FLAT_WORKGROUP_INDEX};
  let n = u.n * ${WG}u;
  var s = 0.0;
  if (b < u.nRows) {
    for (var i = lid; i < n; i += ${WG}u) { s += partial[b * n + i]; }
  }
  let total = tree(lid, s);
  if (lid == 0u && b < u.nRows) {
    let count = countValue();
    w[b] = select(0.0, 1.0 / (f32(count) * total), b < count);
  }
}`);
}

/** Final pass: `q[b,k] = e[b,k]·u_k·w_b·B` in place, 0 for rows past the count. */
function scaleKernel(mode: CountMode): Kernel {
  const c = countDecl(mode);
  const list: StorageDecl[] = [
    ["uk", "read", "array<f32>"],
    ["w", "read", "array<f32>"],
    ...c.binding,
    ["q", "read_write", "array<f32>"],
  ];
  return sinkhornKernel("sinkhorn_scale", mode, list, () => `
${c.fn}
${flatMain(WG, "i", "u.n")}
  let k = i % u.K;
  let row = u.rowBase + i / u.K;
  let count = countValue();
  q[i] = select(0.0, q[i] * uk[k] * w[row] * f32(count), row < count);
}`);
}

/** Merge of two (max, Σexp(z − max)) pairs. */
const MERGE_WGSL = `fn merge(a: vec2f, b: vec2f) -> vec2f {
  let m = max(a.x, b.x);
  return vec2f(m, a.y * exp(a.x - m) + b.y * exp(b.x - m));
}`;

/**
 * Centered softmax stage 1, without barriers: invocation (row, slice, lane) writes the
 * (max, Σexp) pair of z = (x − c)/T over its PER_THREAD columns.
 */
const centerPartialKernel = sinkhornKernel("center_softmax_partial", "", [
  ["x", "read", "array<f32>"],
  ["center", "read", "array<f32>"],
  ["temp", "read", "array<f32>"],
  ["partial", "read_write", "array<vec2f>"],
], () => `
${SLICE_MAIN}
  let t = temp[0];
  var acc = vec2f(${F32_LOWEST}, 0.0);
  // Max first, then one exp per element (the loads of the second loop hit the cache).
  ${sliceColumns("acc.x = max(acc.x, (x[row * u.K + k] - center[k]) / t);")}
  ${sliceColumns("acc.y += exp((x[row * u.K + k] - center[k]) / t - acc.x);")}
  partial[((u.rowBase + row) * slices + slice) * ${WG}u + lid] = acc;
}`);

/** Centered softmax stage 2 and output, one workgroup-sized pass per element of the block. */
const centerWriteKernel = sinkhornKernel("center_softmax_write", "", [
  ["x", "read", "array<f32>"],
  ["center", "read", "array<f32>"],
  ["temp", "read", "array<f32>"],
  ["stats", "read", "array<vec2f>"],
  ["y", "read_write", "array<f32>"],
], () => `
${flatMain(WG, "i", "u.nRows * u.K")}
  let k = i % u.K;
  let st = stats[u.rowBase + i / u.K];
  y[i] = exp((x[i] - center[k]) / temp[0] - st.x) / st.y;
}`);

/** Centered softmax stage 2, one workgroup per row: merges its partials into (max, Σexp). */
const centerStatsKernel = sinkhornKernel("center_softmax_stats", "", [
  ["partial", "read", "array<vec2f>"],
  ["stats", "read_write", "array<vec2f>"],
], () => `
${MERGE_WGSL}
${treeWgsl("vec2f", (a, b) => `merge(${a}, ${b})`)}
@compute @workgroup_size(${WG})
fn main(${GRID_BUILTINS}) {
  let b = ${FLAT_WORKGROUP_INDEX};
  let n = u.n * ${WG}u;
  var acc = vec2f(${F32_LOWEST}, 0.0);
  if (b < u.nRows) {
    for (var i = lid; i < n; i += ${WG}u) { acc = merge(acc, partial[b * n + i]); }
  }
  let total = tree(lid, acc);
  if (lid == 0u && b < u.nRows) { stats[b] = total; }
}`);

// ------------------------------------------------------------------ planning

/** One bound window of rows: rows [start, start + count). */
interface RowBlock extends Span {
  /** Index of the block's first column slab. */
  slabBase: number;
  slabs: number;
}

interface Plan {
  rows: number;
  K: number;
  slabRows: number;
  totalSlabs: number;
  blocks: RowBlock[];
}

/**
 * Splits `rows × K` into row windows that fit one binding (aligned starts) and lays the column
 * slabs out across them. Depends on the shape only, so a replayed step sees the same plan.
 */
function planRows(gpu: Gpu, op: string, rows: number, K: number, maxBindingBytes?: number): Plan {
  const windows = splitSpans(gpu.limits, {
    op,
    item: `row of ${K} values`,
    count: rows,
    itemBytes: [K * 4],
    maxBytes: maxBindingBytes,
    fix: "use fewer prototypes",
  });
  const perBlock = windows[0]?.count ?? rows;
  const slabRows = Math.min(perBlock, Math.max(MIN_SLAB_ROWS, Math.ceil(rows / MAX_SLABS)));
  const blocks: RowBlock[] = [];
  let slabBase = 0;
  for (const w of windows) {
    const slabs = Math.ceil(w.count / slabRows);
    blocks.push({ start: w.start, count: w.count, slabBase, slabs });
    slabBase += slabs;
  }
  return { rows, K, slabRows, totalSlabs: slabBase, blocks };
}

function checkLogits(op: string, logits: GpuTensor): [number, number] {
  if (logits.shape.length !== 2 || logits.dtype !== "f32") {
    throw new RangeError(`${op}: logits must be f32 [B, K], got [${logits.shape}] ${logits.dtype}`);
  }
  return logits.shape as [number, number];
}

function checkScalar(op: string, what: string, t: GpuTensor) {
  if (t.dtype !== "f32" || t.numel !== 1) {
    throw new RangeError(`${op}: ${what} must be an f32 tensor of one element, got [${t.shape}]`);
  }
}

/** Column sums of one tensor in row blocks: stage 1 into `partial` [totalSlabs, K]. */
function colPartials(
  gpu: Gpu,
  plan: Plan,
  k: Kernel,
  bind: (b: RowBlock) => GpuTensor[],
  partial: GpuTensor,
  count: number,
) {
  for (const b of plan.blocks) {
    const n = b.slabs * plan.K;
    gpu.dispatch(
      k,
      [...bind(b), partial],
      grid(Math.ceil(n / WG)),
      params({
        K: plan.K,
        nRows: b.count,
        rowBase: b.start,
        count,
        slabRows: plan.slabRows,
        slabBase: b.slabBase,
        n,
      }),
    );
  }
}

// ------------------------------------------------------------------ public API

/** Options of `sinkhornKnopp`. */
export interface SinkhornOptions {
  /** Normalisation rounds (DINOv2: 3). */
  iterations?: number;
  /**
   * B: the number of valid rows (default: all rows). A u32 or f32 one-element tensor lets a
   * replayed step vary it; rows at and past it are ignored and get zero targets. A tensor value
   * above the row count keeps every row and still divides by it (DINOv2's multi-process B).
   */
  count?: GpuTensor | number;
  /** Pretend the binding limit is this many bytes (tests of the row-block path). */
  maxBindingBytes?: number;
}

/**
 * A data-parallel run's reduction across processes: replaces `t` (f32) by its elementwise sum or
 * max over every process. The `…Across` functions call it where DINOv2's distributed code calls
 * `all_reduce`; every process must make the same calls in the same order.
 */
export type CrossReduce = (t: GpuTensor, op: "sum" | "max") => Promise<void>;

/** A point where a pass needs the other processes' values: the tensor and how to combine it. */
type ReducePoint = [GpuTensor, "sum" | "max"];

/** Runs passes that never yield (one process). */
function alone<T>(passes: Generator<ReducePoint, T>): T {
  const r = passes.next();
  if (!r.done) throw new Error("a single-process pass asked for a cross-process reduction");
  return r.value;
}

/** Runs passes to the end, reducing across processes where they yield. */
async function across<T>(passes: Generator<ReducePoint, T>, reduce: CrossReduce): Promise<T> {
  let r = passes.next();
  while (!r.done) {
    await reduce(...r.value);
    r = passes.next();
  }
  return r.value;
}

/**
 * DINOv2's `sinkhorn_knopp_teacher(logits, temp, iterations)`: targets `[B, K]` whose rows sum
 * to 1 and whose prototype marginals are balanced. `temp` is a `[1]` f32 tensor.
 */
export function sinkhornKnopp(
  gpu: Gpu,
  logits: GpuTensor,
  temp: GpuTensor,
  opts: SinkhornOptions = {},
): GpuTensor {
  return alone(sinkhornPasses(gpu, logits, temp, opts, false));
}

/**
 * `sinkhornKnopp` of a data-parallel run, as DINOv2's distributed `sinkhorn_knopp_teacher`: each
 * process holds its own rows (any number, zero included) and the per-prototype max and column
 * sums are reduced across processes with `reduce`; rows stay local. `count` is B, the rows of
 * every process together (default: this process's rows).
 */
export function sinkhornKnoppAcross(
  gpu: Gpu,
  logits: GpuTensor,
  temp: GpuTensor,
  reduce: CrossReduce,
  opts: Omit<SinkhornOptions, "count"> & { count?: number } = {},
): Promise<GpuTensor> {
  return across(sinkhornPasses(gpu, logits, temp, opts, true), reduce);
}

function* sinkhornPasses(
  gpu: Gpu,
  logits: GpuTensor,
  temp: GpuTensor,
  opts: SinkhornOptions,
  shared: boolean,
): Generator<ReducePoint, GpuTensor> {
  const op = shared ? "sinkhornKnoppAcross" : "sinkhornKnopp";
  const [rows, K] = checkLogits(op, logits);
  checkScalar(op, "temp", temp);
  const iterations = opts.iterations ?? 3;
  if (!Number.isInteger(iterations) || iterations < 1) {
    throw new RangeError(`${op}: iterations must be a positive integer, got ${iterations}`);
  }
  let mode: CountMode = "uniform";
  let countU = rows;
  let countT: GpuTensor[] = [];
  if (typeof opts.count === "number") {
    // Across processes B counts every process's rows, so it is at least this one's.
    const [lo, hi] = shared ? [rows, Infinity] : [0, rows];
    if (!Number.isInteger(opts.count) || opts.count < lo || opts.count > hi) {
      throw new RangeError(
        `${op}: count ${opts.count} must be an integer ${shared ? `≥ ${rows}` : `in [0, ${rows}]`}`,
      );
    }
    countU = opts.count;
  } else if (opts.count) {
    const c = opts.count;
    if (c.numel !== 1 || c.dtype === "i32") {
      throw new RangeError(`${op}: count must be a u32 or f32 tensor of one element`);
    }
    mode = c.dtype as "u32" | "f32";
    countT = [c];
  }
  const q = gpu.empty([rows, K]);
  if (q.numel === 0 && !shared) return q;
  const plan = planRows(gpu, op, rows, K, opts.maxBindingBytes);

  // Per-prototype max over the valid rows (see the file comment).
  const cpart = gpu.empty([Math.max(1, plan.totalSlabs) * K]);
  const mx = gpu.empty([K]);
  colPartials(
    gpu,
    plan,
    colPartialKernel("max", mode),
    (b) => [
      rowView(logits, b, K),
      ...countT,
    ],
    cpart,
    countU,
  );
  gpu.dispatch(
    colFinishKernel("max"),
    [cpart, mx],
    grid(Math.ceil(K / WG)),
    params({ K, n: plan.totalSlabs }),
  );
  if (shared) yield [mx, "max"];
  const uk = gpu.empty([K]);
  const w = gpu.empty([Math.max(1, rows)]);
  const slices = Math.ceil(K / SLICE);
  const rpart = gpu.empty([Math.max(1, rows) * slices * WG]);
  // Across processes the column sums are reduced before u_k = 1 / (K·Σ) is taken.
  const colSum = shared ? gpu.empty([K]) : null;
  for (let it = 0; it < iterations; it++) {
    if (it === 0) {
      colPartials(
        gpu,
        plan,
        colPartialKernel("exp", mode),
        (b) => [rowView(logits, b, K), mx, temp, ...countT, rowView(q, b, K)],
        cpart,
        countU,
      );
    } else {
      colPartials(
        gpu,
        plan,
        colPartialKernel("weighted", mode),
        (b) => [rowView(q, b, K), w],
        cpart,
        countU,
      );
    }
    if (colSum) {
      gpu.dispatch(
        colFinishKernel("sum"),
        [cpart, colSum],
        grid(Math.ceil(K / WG)),
        params({ K, n: plan.totalSlabs }),
      );
      yield [colSum, "sum"];
    }
    gpu.dispatch(
      colFinishKernel("scale"),
      [colSum ?? cpart, uk],
      grid(Math.ceil(K / WG)),
      params({ K, n: colSum ? 1 : plan.totalSlabs }),
    );
    if (rows === 0) continue;
    for (const b of plan.blocks) {
      gpu.dispatch(
        rowPartialKernel,
        [rowView(q, b, K), uk, rpart],
        grid(b.count * slices),
        params({ K, nRows: b.count, rowBase: b.start, n: slices }),
      );
    }
    gpu.dispatch(
      rowFinishKernel(mode),
      [rpart, ...countT, w],
      grid(rows),
      params({ K, nRows: rows, count: countU, n: slices }),
    );
  }
  for (const b of plan.blocks) {
    const n = b.count * K;
    gpu.dispatch(
      scaleKernel(mode),
      [uk, w, ...countT, rowView(q, b, K)],
      grid(Math.ceil(n / WG)),
      params({ K, rowBase: b.start, count: countU, n }),
    );
  }
  gpu.release(mx, cpart, uk, w, rpart, colSum);
  return q;
}

/** Options of the centering kernels. */
export interface CenterOptions {
  /** Pretend the binding limit is this many bytes (tests of the row-block path). */
  maxBindingBytes?: number;
}

/**
 * The softmax-centering teacher targets: `softmax((logits − center) / temp)` along K, with
 * `center` `[K]` and `temp` a `[1]` f32 tensor. Call before `updateCenter` for DINOv2's order.
 */
export function centeredSoftmax(
  gpu: Gpu,
  logits: GpuTensor,
  center: GpuTensor,
  temp: GpuTensor,
  opts: CenterOptions = {},
): GpuTensor {
  const op = "centeredSoftmax";
  const [rows, K] = checkLogits(op, logits);
  checkScalar(op, "temp", temp);
  if (center.dtype !== "f32" || center.numel !== K) {
    throw new RangeError(`${op}: center must be f32 [${K}], got [${center.shape}]`);
  }
  const y = gpu.empty([rows, K]);
  if (y.numel === 0) return y;
  const plan = planRows(gpu, op, rows, K, opts.maxBindingBytes);
  const slices = Math.ceil(K / SLICE);
  const partial = gpu.empty([rows * slices * WG * 2]);
  const stats = gpu.empty([rows * 2]);
  for (const b of plan.blocks) {
    gpu.dispatch(
      centerPartialKernel,
      [rowView(logits, b, K), center, temp, partial],
      grid(b.count * slices),
      params({ K, nRows: b.count, rowBase: b.start, n: slices }),
    );
  }
  gpu.dispatch(
    centerStatsKernel,
    [partial, stats],
    grid(rows),
    params({ K, nRows: rows, n: slices }),
  );
  for (const b of plan.blocks) {
    gpu.dispatch(
      centerWriteKernel,
      [rowView(logits, b, K), center, temp, stats, rowView(y, b, K)],
      grid(Math.ceil((b.count * K) / WG)),
      params({ K, nRows: b.count, rowBase: b.start }),
    );
  }
  gpu.release(partial, stats);
  return y;
}

/**
 * DINOv2's center update, in place: `center ← center·m + mean_rows(logits)·(1 − m)`. The momentum
 * is a constant of the run, so it travels in the uniform block (1 − m from float64).
 */
export function updateCenter(
  gpu: Gpu,
  center: GpuTensor,
  logits: GpuTensor,
  momentum: number,
  opts: CenterOptions = {},
): void {
  alone(centerPasses(gpu, center, logits, momentum, opts, null));
}

/**
 * `updateCenter` of a data-parallel run, as DINOv2's distributed `update_center`: the column
 * sums of this process's rows are summed across processes with `reduce`, and the mean is taken
 * over `totalRows`, the rows of every process together.
 */
export function updateCenterAcross(
  gpu: Gpu,
  center: GpuTensor,
  logits: GpuTensor,
  momentum: number,
  reduce: CrossReduce,
  totalRows: number,
  opts: CenterOptions = {},
): Promise<void> {
  return across(centerPasses(gpu, center, logits, momentum, opts, totalRows), reduce);
}

function* centerPasses(
  gpu: Gpu,
  center: GpuTensor,
  logits: GpuTensor,
  momentum: number,
  opts: CenterOptions,
  totalRows: number | null,
): Generator<ReducePoint, void> {
  const op = totalRows === null ? "updateCenter" : "updateCenterAcross";
  const [rows, K] = checkLogits(op, logits);
  if (center.dtype !== "f32" || center.numel !== K) {
    throw new RangeError(`${op}: center must be f32 [${K}], got [${center.shape}]`);
  }
  if (!(momentum >= 0 && momentum <= 1)) {
    throw new RangeError(`${op}: momentum must lie in [0, 1], got ${momentum}`);
  }
  if (totalRows !== null && !(Number.isInteger(totalRows) && totalRows >= rows)) {
    throw new RangeError(`${op}: totalRows ${totalRows} must be an integer ≥ ${rows}`);
  }
  if (totalRows === null ? rows === 0 || K === 0 : totalRows === 0) return;
  const plan = planRows(gpu, op, rows, K, opts.maxBindingBytes);
  const partial = gpu.empty([Math.max(1, plan.totalSlabs) * K]);
  colPartials(
    gpu,
    plan,
    colPartialKernel("plain", "uniform"),
    (b) => [
      rowView(logits, b, K),
    ],
    partial,
    rows,
  );
  let sums = partial;
  let slabs = plan.totalSlabs;
  if (totalRows !== null) {
    sums = gpu.empty([K]);
    gpu.dispatch(
      colFinishKernel("sum"),
      [partial, sums],
      grid(Math.ceil(K / WG)),
      params({ K, n: slabs }),
    );
    yield [sums, "sum"];
    slabs = 1;
  }
  gpu.dispatch(
    colFinishKernel("center"),
    [sums, center],
    grid(Math.ceil(K / WG)),
    params({ K, nRows: totalRows ?? rows, n: slabs, a: momentum, b: 1 - momentum }),
  );
  gpu.release(partial, sums === partial ? null : sums);
}

// ------------------------------------------------------------------ references

/**
 * CPU reference: DINOv2's `sinkhorn_knopp_teacher` transcribed (float64), on `[B, K]` logits,
 * with `count` valid rows (default B; the rest get zeros). Like the kernel it subtracts each
 * prototype's max before exp, which the first normalisation cancels exactly.
 */
export function sinkhornKnoppRef(
  logits: ArrayLike<number>,
  B: number,
  K: number,
  temp: number,
  iterations = 3,
  count = B,
): Float64Array {
  const n = Math.min(count, B);
  const max = new Float64Array(K).fill(-Infinity);
  for (let b = 0; b < n; b++) {
    for (let k = 0; k < K; k++) max[k] = Math.max(max[k], logits[b * K + k]);
  }
  // Q is K × n, as in DINOv2 (Q = exp(t / T).T).
  const Q = new Float64Array(K * n);
  let total = 0;
  for (let b = 0; b < n; b++) {
    for (let k = 0; k < K; k++) {
      total += Q[k * n + b] = Math.exp((logits[b * K + k] - max[k]) / temp);
    }
  }
  for (let i = 0; i < Q.length; i++) Q[i] /= total;
  for (let it = 0; it < iterations; it++) {
    for (let k = 0; k < K; k++) {
      let s = 0;
      for (let b = 0; b < n; b++) s += Q[k * n + b];
      for (let b = 0; b < n; b++) Q[k * n + b] = Q[k * n + b] / s / K;
    }
    for (let b = 0; b < n; b++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += Q[k * n + b];
      for (let k = 0; k < K; k++) Q[k * n + b] = Q[k * n + b] / s / count;
    }
  }
  const out = new Float64Array(B * K);
  for (let b = 0; b < n; b++) for (let k = 0; k < K; k++) out[b * K + k] = Q[k * n + b] * count;
  return out;
}

/** CPU reference of `centeredSoftmax` (float64). */
export function centeredSoftmaxRef(
  logits: ArrayLike<number>,
  center: ArrayLike<number>,
  B: number,
  K: number,
  temp: number,
): Float64Array {
  const out = new Float64Array(B * K);
  for (let b = 0; b < B; b++) {
    let m = -Infinity;
    for (let k = 0; k < K; k++) m = Math.max(m, (logits[b * K + k] - center[k]) / temp);
    let s = 0;
    for (let k = 0; k < K; k++) {
      s += out[b * K + k] = Math.exp((logits[b * K + k] - center[k]) / temp - m);
    }
    for (let k = 0; k < K; k++) out[b * K + k] /= s;
  }
  return out;
}

/** CPU reference of `updateCenter` (float64): the new center. */
export function updateCenterRef(
  center: ArrayLike<number>,
  logits: ArrayLike<number>,
  B: number,
  K: number,
  momentum: number,
): Float64Array {
  const out = new Float64Array(K);
  for (let k = 0; k < K; k++) {
    let s = 0;
    for (let b = 0; b < B; b++) s += logits[b * K + k];
    out[k] = center[k] * momentum + (s / B) * (1 - momentum);
  }
  return out;
}

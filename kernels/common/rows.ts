/**
 * The row-kernel framework: kernels that reduce along the last dim of a
 * tensor, one row per group of threads (softmax, layer norm, l2 norm, KoLeo).
 * It says how rows map to threads (`rowLayout`, with the adapter's tuned cap
 * on threads per row), gives the WGSL for the in-workgroup row reductions and
 * the per-thread column segments, and splits long tensors into bindable row
 * spans (`rowChunks`).
 */
import { type AutotuneCache, type Autotuner, newAutotuner } from "../autotune.ts";
import { classDefaults } from "../defaults.ts";
import { FLAT_WORKGROUP_INDEX, grid, GRID_BUILTINS, type Kernel } from "../kernel.ts";
import type { Gpu } from "../runtime.ts";
import type { BufferView, GpuTensor } from "../tensor.ts";
import { Uniforms } from "../uniforms.ts";
import { pow2Ceil } from "./shape.ts";
import { type Span, splitSpans } from "./split.ts";

// ------------------------------------------------------------------ layouts

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

/**
 * How a row kernel runs `rows` rows of `cols` columns on `gpu` by default:
 * vec4 loads where the columns allow, and `rowLayout` under the adapter's
 * thread cap (`threads` overrides the threads per row).
 */
export function rowPlan(
  gpu: Gpu,
  rows: number,
  cols: number,
  threads?: number,
): { w: 1 | 4; l: RowLayout } {
  const w = vecWidth(cols);
  return { w, l: rowLayout(cols / w, { threads, cap: rowThreadCap(gpu), rows }) };
}

/** Cache-key fragment of a layout. */
export function layoutKey(l: RowLayout): string {
  return `t${l.threads}w${l.workgroupSize}`;
}

/** Workgroups for `rows` rows of layout `l`. */
export function rowGrid(rows: number, l: RowLayout): [number, number, number] {
  return grid(Math.ceil(rows / l.rowsPerGroup));
}

// ------------------------------------------------------- the thread-per-row cap

const rowCaps = new WeakMap<Gpu, number>();

/** Cache key of the adapter-wide cap (one choice serves every row kernel). */
export const ROW_CAP_KEY = "cap";

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

/** The cap set with `setRowThreadCap` on `gpu`, if any. */
export function rowThreadCapOverride(gpu: Gpu): number | undefined {
  return rowCaps.get(gpu);
}

/**
 * The most threads per row the default layouts use on `gpu`: the override
 * set with `setRowThreadCap`, else the tuned choice for this adapter
 * (`tuneRowKernels`, cached across processes), else the adapter class's shipped cap
 * (`../defaults.ts`: 8 on llvmpipe, 256 on GPUs).
 * Never measures.
 */
export function rowThreadCap(gpu: Gpu): number {
  return rowCaps.get(gpu) ?? rowTuner().lookup(gpu.adapter.name, ROW_CAP_KEY) ??
    classDefaults(gpu).rowCap;
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

// -------------------------------------------------------------------- WGSL

/** A row reduction for `rowWgsl`: [function name, WGSL type, combine expression of a and b]. */
export type RowReduction = readonly [string, string, string];

/** The row sum `rowSum(v, lid)`, the reduction most row kernels need. */
export const ROW_SUM: RowReduction = ["rowSum", "f32", "a + b"];

/**
 * WGSL for a row kernel: constants `T` (threads per row), `R` (rows per
 * workgroup), `WG`, and a reduction `name(v, lid)` over the T threads of the
 * caller's row for each `[name, type, combine]` in `reductions` (`combine` is
 * an expression of `a` and `b`). Invariant: every invocation of the workgroup
 * must call a reduction (uniform control flow, for the barriers), also those
 * whose row is out of range; they pass an identity value.
 */
export function rowWgsl(l: RowLayout, reductions: readonly RowReduction[]): string {
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

/**
 * WGSL head of a row kernel's `main` (dispatched with `rowGrid`, uniforms
 * `p.rows`, `p.cols`) over rows read `w` columns at a time: `g` (row in
 * group), `t` (lane in row), `row`, `valid`, `n` (units per row), `base` (the
 * row's first unit) and this thread's segment `[sb, se)`. The caller writes
 * the body and the closing brace.
 */
export function rowMain(w: 1 | 4): string {
  return `@compute @workgroup_size(WG)
fn main(${GRID_BUILTINS}) {
  let g = lid / T;
  let t = lid % T;
  let row = ${FLAT_WORKGROUP_INDEX} * R + g;
  let valid = row < p.rows;
  let n = p.cols / ${w}u;
  let base = row * n;
  ${rowSegment("n")}`;
}

/** How many columns a row kernel reads at once: 4 (as vec4) when they divide the row. */
export function vecWidth(cols: number): 1 | 4 {
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

// ----------------------------------------------------------------- dispatch

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

/**
 * Splits `rows` into spans whose bound ranges (one per entry of `rowBytes`,
 * the bytes of one row of each row-major binding) fit the adapter's
 * `maxStorageBufferBindingSize`, each span starting at an aligned byte offset
 * and a multiple of `multiple` rows (`splitSpans`). Throws `GpuLimitError`
 * naming `op` when even the smallest aligned block of rows is too large.
 */
export function rowChunks(
  gpu: Gpu,
  op: string,
  rows: number,
  rowBytes: readonly number[],
  multiple = 1,
): Span[] {
  return splitSpans(gpu.limits, {
    op,
    item: "row",
    count: rows,
    itemBytes: rowBytes,
    multiple,
    fix: "use shorter rows (split the last dim)",
  });
}

/** A view of rows `[c.start, c.start + c.count)` of a row-major tensor with `cols` columns. */
export function rowView(t: GpuTensor, c: Span, cols: number): GpuTensor {
  if (c.start === 0 && c.count * cols === t.numel) return t;
  return t.view(c.start * cols, [c.count, cols]);
}

/**
 * Dispatches row kernel `k` of layout `l` over `rows` rows of `cols` columns,
 * once per bindable span (`rowChunks`). The kernel's uniforms are
 * `struct P { rows: u32, cols: u32, rowBase: u32, <f32> }`: the span's row
 * count, the columns, the span's first row, and `value` (eps, temperature).
 * `bind(c)` gives the span's bindings (`rowView` of each row-major tensor).
 */
export function dispatchRows(
  gpu: Gpu,
  op: string,
  k: Kernel,
  l: RowLayout,
  rows: number,
  cols: number,
  value: number,
  bind: (c: Span) => BufferView[],
): void {
  for (const c of rowChunks(gpu, op, rows, [cols * 4])) {
    const p = new Uniforms(16).u32(c.count).u32(cols).u32(c.start).f32(value).bytes;
    gpu.dispatch(k, bind(c), rowGrid(c.count, l), p);
  }
}

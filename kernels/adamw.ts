/**
 * AdamW over a flat parameter arena, exactly `torch.optim.AdamW` (1.13, foreach=False,
 * amsgrad=False, maximize=False), one dispatch per arena chunk.
 *
 * The arena: parameters live back to back in one or more f32 buffers ("chunks", each within the
 * binding limit) at offsets aligned to `ARENA_ALIGN` (64) elements; gradients, `m` and `v` have the
 * identical layout. Every parameter belongs to an optimiser group (lr and weight-decay multipliers,
 * frozen or not) and a clip module (backbone, DINO head, iBOT head).
 *
 * The segment table (one per chunk, a u32 tensor) has one word per 64-element block:
 * `count | group << 8 | module << 16`, `count` being how many leading elements of the block belong
 * to the segment (0 for padding). Because offsets are 64-aligned, a block never holds two
 * segments, so a kernel finds an element's group and module with one load and no search, and it
 * never touches padding (which may hold garbage from a reused buffer).
 *
 * The hyper tensor (f32, `HYPER_STRIDE` values per group) is rewritten by the host each step, so a
 * recorded step replays with new learning rates. Scalars are derived in float64 on the host, the
 * way PyTorch's Python-side scalars are, and rounded to f32 once.
 */
import { flatMain, grid, kernel } from "./kernel.ts";
import type { Gpu } from "./runtime.ts";
import type { GpuTensor } from "./tensor.ts";
import { u32Uniforms } from "./uniforms.ts";

/** Parameters start at multiples of this many elements; the table has one word per block. */
export const ARENA_ALIGN = 64;
/** Largest group and module index the table can hold (8 bits each). */
export const MAX_TABLE_INDEX = 255;
/** f32 values per group in the hyper tensor. */
export const HYPER_STRIDE = 16;
/**
 * Offsets of the per-group values in the hyper tensor:
 * active (1 or 0), 1 − lr·wd, β1, 1 − β1, β2, 1 − β2, lr / (1 − β1^t), sqrt(1 − β2^t), eps.
 */
export const HYPER = {
  active: 0,
  decay: 1,
  beta1: 2,
  oneMinusBeta1: 3,
  beta2: 4,
  oneMinusBeta2: 5,
  stepSize: 6,
  sqrtBc2: 7,
  eps: 8,
} as const;

const WG = 256;

/** A run of one parameter's elements inside a chunk. */
export interface Segment {
  /** First element, relative to the chunk; a multiple of `ARENA_ALIGN`. */
  offset: number;
  length: number;
  /** Optimiser group (index into the hyper tensor). */
  group: number;
  /** Clip module (index into the clip-factor tensor). */
  module: number;
}

/**
 * Builds a chunk's segment table (see the file comment) from its segments. Throws on unaligned,
 * overlapping or out-of-range segments, naming the segment.
 */
export function segmentTable(segments: readonly Segment[], chunkLength: number): Uint32Array {
  if (!Number.isInteger(chunkLength) || chunkLength < 0 || chunkLength % 4 !== 0) {
    throw new RangeError(
      `segmentTable: chunk length ${chunkLength} must be a non-negative multiple of 4 ` +
        "(the kernels read vec4s); pad the chunk",
    );
  }
  const table = new Uint32Array(Math.ceil(chunkLength / ARENA_ALIGN));
  const sorted = segments.map((s, i) => ({ ...s, i })).sort((a, b) => a.offset - b.offset);
  let end = 0;
  for (const s of sorted) {
    const what = `segmentTable: segment ${s.i} (offset ${s.offset}, length ${s.length})`;
    if (!Number.isInteger(s.offset) || s.offset % ARENA_ALIGN !== 0 || s.offset < 0) {
      throw new RangeError(`${what}: offset must be a multiple of ${ARENA_ALIGN}`);
    }
    if (!Number.isInteger(s.length) || s.length < 1) {
      throw new RangeError(`${what}: length must be a positive integer`);
    }
    if (s.offset < end) throw new RangeError(`${what} overlaps the previous segment`);
    if (s.offset + s.length > chunkLength) {
      throw new RangeError(`${what} runs past the chunk end (${chunkLength})`);
    }
    for (const [k, v] of [["group", s.group], ["module", s.module]] as const) {
      if (!Number.isInteger(v) || v < 0 || v > MAX_TABLE_INDEX) {
        throw new RangeError(`${what}: ${k} ${v} must be an integer in [0, ${MAX_TABLE_INDEX}]`);
      }
    }
    end = s.offset + s.length;
    for (let at = s.offset; at < end; at += ARENA_ALIGN) {
      const count = Math.min(ARENA_ALIGN, end - at);
      table[at / ARENA_ALIGN] = count | (s.group << 8) | (s.module << 16);
    }
  }
  return table;
}

/** A parameter to place in the arena. */
export interface ParamSpec {
  length: number;
  group: number;
  module: number;
  /** For error messages. */
  name?: string;
}

/** Where `planArena` put everything. */
export interface ArenaPlan {
  /** Chunk lengths (multiples of `ARENA_ALIGN`) and their segments, in parameter order. */
  chunks: { length: number; segments: Segment[] }[];
  /** Per parameter: its chunk and element offset in it. */
  placements: { chunk: number; offset: number }[];
}

/**
 * Lays parameters out back to back at 64-element offsets, starting a new chunk whenever the next
 * one would pass `maxChunkElements` (pass the binding limit / 4). A parameter larger than a chunk
 * is an error: the graph binds each parameter as one tensor.
 */
export function planArena(params: readonly ParamSpec[], maxChunkElements: number): ArenaPlan {
  const cap = Math.floor(maxChunkElements / ARENA_ALIGN) * ARENA_ALIGN;
  if (!(cap > 0)) {
    throw new RangeError(`planArena: maxChunkElements ${maxChunkElements} is under one block`);
  }
  const chunks: ArenaPlan["chunks"] = [];
  const placements: ArenaPlan["placements"] = [];
  let used = cap; // forces a first chunk
  for (const [i, p] of params.entries()) {
    if (!Number.isInteger(p.length) || p.length < 1) {
      throw new RangeError(`planArena: parameter ${p.name ?? i} has length ${p.length}`);
    }
    const len = Math.ceil(p.length / ARENA_ALIGN) * ARENA_ALIGN;
    if (len > cap) {
      throw new RangeError(
        `planArena: parameter ${p.name ?? i} (${p.length} elements) is larger than one chunk ` +
          `(${cap} elements, the binding limit); it cannot be bound as one tensor`,
      );
    }
    if (used + len > cap) {
      chunks.push({ length: 0, segments: [] });
      used = 0;
    }
    const c = chunks[chunks.length - 1];
    c.segments.push({ offset: used, length: p.length, group: p.group, module: p.module });
    placements.push({ chunk: chunks.length - 1, offset: used });
    used += len;
    c.length = used;
  }
  return { chunks, placements };
}

/** One optimiser group's settings for one step. */
export interface AdamwGroupHyper {
  /** Learning rate of the group this step (schedule × group multiplier). */
  lr: number;
  /** Weight decay of the group this step (schedule × group multiplier). */
  weightDecay: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  /**
   * The group's own step count t, including this step: PyTorch counts per parameter, and a
   * parameter without a gradient (a frozen group) does not count. Must be ≥ 1 when active.
   */
  step: number;
  /**
   * False skips the group entirely (parameters, m and v untouched, step not counted), as PyTorch
   * does for a parameter whose grad is None. DINOv2's own trainer freezes the head's last layer
   * differently: its lr schedule is 0 for the first epoch while m, v and the step count keep
   * updating (and the gradient still counts in the clip norm); reproduce that with `active: true`
   * and `lr: 0`.
   */
  active?: boolean;
}

/** The hyper tensor's contents for `groups` (see `HYPER`). */
export function adamwHyper(groups: readonly AdamwGroupHyper[]): Float32Array {
  const out = new Float32Array(groups.length * HYPER_STRIDE);
  for (const [i, g] of groups.entries()) {
    const active = g.active ?? true;
    const b1 = g.beta1 ?? 0.9;
    const b2 = g.beta2 ?? 0.999;
    const eps = g.eps ?? 1e-8;
    const where = `adamwHyper: group ${i}`;
    if (!(b1 >= 0 && b1 < 1) || !(b2 >= 0 && b2 < 1)) {
      throw new RangeError(`${where}: betas (${b1}, ${b2}) must lie in [0, 1)`);
    }
    if (!(g.lr >= 0) || !(g.weightDecay >= 0) || !(eps >= 0)) {
      throw new RangeError(`${where}: lr ${g.lr}, weightDecay ${g.weightDecay}, eps ${eps} < 0`);
    }
    if (active && !(Number.isInteger(g.step) && g.step >= 1)) {
      throw new RangeError(`${where}: step ${g.step} must be an integer ≥ 1 for an active group`);
    }
    const o = i * HYPER_STRIDE;
    out[o + HYPER.active] = active ? 1 : 0;
    out[o + HYPER.decay] = 1 - g.lr * g.weightDecay;
    out[o + HYPER.beta1] = b1;
    out[o + HYPER.oneMinusBeta1] = 1 - b1;
    out[o + HYPER.beta2] = b2;
    out[o + HYPER.oneMinusBeta2] = 1 - b2;
    out[o + HYPER.stepSize] = active ? g.lr / (1 - b1 ** g.step) : 0;
    out[o + HYPER.sqrtBc2] = active ? Math.sqrt(1 - b2 ** g.step) : 1;
    out[o + HYPER.eps] = eps;
  }
  return out;
}

/** Writes `groups` into an existing hyper tensor (`[groups · HYPER_STRIDE]` f32). */
export function writeAdamwHyper(
  gpu: Gpu,
  hyper: GpuTensor,
  groups: readonly AdamwGroupHyper[],
): void {
  if (hyper.dtype !== "f32" || hyper.numel < groups.length * HYPER_STRIDE) {
    throw new RangeError(
      `writeAdamwHyper: hyper is [${hyper.shape}] ${hyper.dtype}; ${groups.length} groups need ` +
        `an f32 tensor of ${groups.length * HYPER_STRIDE} elements`,
    );
  }
  gpu.write(hyper, adamwHyper(groups));
}

/**
 * WGSL shared by the arena kernels: decodes a table word. `lane0 >= count` means the whole vec4 is
 * padding; `laneMask` keeps the lanes that belong to the segment.
 */
export const TABLE_WGSL = `
fn segCount(e: u32) -> u32 { return e & 127u; }
fn segGroup(e: u32) -> u32 { return (e >> 8u) & 255u; }
fn segModule(e: u32) -> u32 { return (e >> 16u) & 255u; }
fn laneMask(lane0: u32, count: u32) -> vec4<bool> {
  return vec4<bool>(lane0 < count, lane0 + 1u < count, lane0 + 2u < count, lane0 + 3u < count);
}`;

const adamwKernel = kernel({
  name: "adamw",
  bindings: ["read_write", "read", "read_write", "read_write", "read", "read", "read"],
  uniformBytes: 16,
  source: () => `
struct P { n4: u32, p0: u32, p1: u32, p2: u32 }
@group(0) @binding(0) var<storage, read_write> param: array<vec4f>;
@group(0) @binding(1) var<storage, read> grad: array<vec4f>;
@group(0) @binding(2) var<storage, read_write> mom: array<vec4f>;
@group(0) @binding(3) var<storage, read_write> vel: array<vec4f>;
@group(0) @binding(4) var<storage, read> table: array<u32>;
@group(0) @binding(5) var<storage, read> hyper: array<f32>;
@group(0) @binding(6) var<storage, read> clip: array<f32>;
@group(0) @binding(7) var<uniform> u: P;
${TABLE_WGSL}
${flatMain(WG, "i", "u.n4")}
  let e = table[i >> 4u];
  let count = segCount(e);
  let lane0 = (i & 15u) * 4u;
  if (lane0 >= count) { return; }
  let h = segGroup(e) * ${HYPER_STRIDE}u;
  if (hyper[h + ${HYPER.active}u] == 0.0) { return; }
  let g = grad[i] * clip[segModule(e)];
  let p0 = param[i];
  let m0 = mom[i];
  let v0 = vel[i];
  // PyTorch's order: decay the parameter, update the moments, then the Adam step.
  var p = p0 * hyper[h + ${HYPER.decay}u];
  let m = m0 * hyper[h + ${HYPER.beta1}u] + g * hyper[h + ${HYPER.oneMinusBeta1}u];
  let v = v0 * hyper[h + ${HYPER.beta2}u] + hyper[h + ${HYPER.oneMinusBeta2}u] * g * g;
  let denom = sqrt(v) / hyper[h + ${HYPER.sqrtBc2}u] + hyper[h + ${HYPER.eps}u];
  p = p + (-hyper[h + ${HYPER.stepSize}u]) * (m / denom);
  let keep = laneMask(lane0, count);
  param[i] = select(p0, p, keep);
  mom[i] = select(m0, m, keep);
  vel[i] = select(v0, v, keep);
}`,
});

/** Tensors of one AdamW step over one arena chunk. */
export interface AdamwArgs {
  /** Parameter chunk `[n]` f32, n a multiple of 4; updated in place. */
  param: GpuTensor;
  /** Gradient chunk, same layout; read only (the clip factor is applied on the fly). */
  grad: GpuTensor;
  /** First moment, same layout; updated in place. */
  m: GpuTensor;
  /** Second moment, same layout; updated in place. */
  v: GpuTensor;
  /** The chunk's segment table (`segmentTable`), u32. */
  table: GpuTensor;
  /** Per-group hyperparameters (`writeAdamwHyper`), f32. */
  hyper: GpuTensor;
  /** Per-module gradient factors (`clipFactors`), f32. */
  clip: GpuTensor;
}

/** Checks the arena tensors of one chunk agree; returns the element count. */
export function checkChunk(
  op: string,
  tensors: Record<string, GpuTensor>,
  table?: GpuTensor,
): number {
  const entries = Object.entries(tensors);
  const n = entries[0][1].numel;
  for (const [name, t] of entries) {
    if (t.dtype !== "f32") throw new TypeError(`${op}: ${name} must be f32, got ${t.dtype}`);
    if (t.numel !== n) {
      throw new RangeError(
        `${op}: ${name} has ${t.numel} elements but ${entries[0][0]} has ${n}; all arena ` +
          "tensors of a chunk share one layout",
      );
    }
  }
  if (n % 4 !== 0) {
    throw new RangeError(`${op}: the chunk has ${n} elements; pad it to a multiple of 4`);
  }
  if (table) {
    const want = Math.ceil(n / ARENA_ALIGN);
    if (table.dtype !== "u32" || table.numel !== want) {
      throw new RangeError(
        `${op}: table is [${table.shape}] ${table.dtype}, expected u32 [${want}] ` +
          `(one word per ${ARENA_ALIGN} elements; build it with segmentTable)`,
      );
    }
  }
  return n;
}

/**
 * One AdamW step over one arena chunk, in one dispatch: per element, `g = grad · clip[module]`,
 * then PyTorch's update with its group's hyperparameters; frozen groups and padding are skipped.
 */
export function adamwStep(gpu: Gpu, args: AdamwArgs): void {
  const { param, grad, m, v, table, hyper, clip } = args;
  const n = checkChunk("adamwStep", { param, grad, m, v }, table);
  if (hyper.dtype !== "f32" || clip.dtype !== "f32") {
    throw new TypeError("adamwStep: hyper and clip must be f32 tensors");
  }
  if (n === 0) return;
  const n4 = n / 4;
  gpu.dispatch(
    adamwKernel,
    [param, grad, m, v, table, hyper, clip],
    grid(Math.ceil(n4 / WG)),
    u32Uniforms(n4),
  );
}

/**
 * CPU reference of `adamwStep` on plain arrays, in the same f32 roundings PyTorch performs
 * (each tensor op rounds to f32; Python scalars are float64). Updates `param`, `m`, `v` in place.
 */
export function adamwRef(args: {
  param: Float32Array;
  grad: Float32Array;
  m: Float32Array;
  v: Float32Array;
  segments: readonly Segment[];
  groups: readonly AdamwGroupHyper[];
  clip: ArrayLike<number>;
}): void {
  const f = Math.fround;
  const hyper = adamwHyper(args.groups);
  for (const s of args.segments) {
    const h = s.group * HYPER_STRIDE;
    if (hyper[h + HYPER.active] === 0) continue;
    const c = f(args.clip[s.module]);
    for (let i = s.offset; i < s.offset + s.length; i++) {
      const g = f(args.grad[i] * c);
      const p = f(args.param[i] * hyper[h + HYPER.decay]);
      const m = f(f(args.m[i] * hyper[h + HYPER.beta1]) + f(g * hyper[h + HYPER.oneMinusBeta1]));
      const v = f(
        f(args.v[i] * hyper[h + HYPER.beta2]) + f(f(hyper[h + HYPER.oneMinusBeta2] * g) * g),
      );
      const denom = f(f(f(Math.sqrt(v)) / hyper[h + HYPER.sqrtBc2]) + hyper[h + HYPER.eps]);
      args.param[i] = f(p - f(hyper[h + HYPER.stepSize] * f(m / denom)));
      args.m[i] = m;
      args.v[i] = v;
    }
  }
}

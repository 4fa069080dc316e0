/**
 * Per-module gradient clipping on the GPU, `torch.nn.utils.clip_grad_norm_` semantics, with no
 * read-back: squared gradient norms per clip module (accumulated over arena chunks), then one
 * factor per module that `adamwStep` multiplies the gradients by.
 *
 * The norm is a deterministic two-stage reduction: a fixed number of invocations (a function of
 * the chunk size only) stride over the chunk, each keeping one running sum per module that it
 * writes out; then one workgroup per module sums those partials (strided, then a fixed tree). The
 * streaming stage has no barrier on purpose: on llvmpipe a barrier anywhere in a shader slowed
 * its main loop 4x (0.35 vs 1.5 GB/s measured); the tree runs only over the partials. The same
 * inputs give the same bits on every run.
 */
import { checkChunk, HYPER, HYPER_STRIDE, TABLE_WGSL } from "./adamw.ts";
import { kernel } from "./kernel.ts";
import type { Gpu } from "./runtime.ts";
import type { GpuTensor } from "./tensor.ts";
import { u32Uniforms, Uniforms } from "./uniforms.ts";

const WG = 256;
/** Most workgroups of the streaming stage (bounds the partials; plenty to fill a GPU). */
const MAX_PARTIALS = 512;
/** Most clip modules one call reduces (the private accumulators and the partials grow with it). */
export const MAX_CLIP_MODULES = 8;

function sqNormKernel(modules: number, skipFrozen: boolean) {
  const M = modules;
  const acc = Array.from({ length: M }, (_, k) => k);
  return kernel({
    name: "grad_sq_norm",
    key: `${M}:${skipFrozen ? 1 : 0}`,
    bindings: skipFrozen ? ["read", "read", "read", "read_write"] : ["read", "read", "read_write"],
    uniformBytes: 16,
    source: () => `
struct P { n4: u32, stride: u32, p0: u32, p1: u32 }
@group(0) @binding(0) var<storage, read> grad: array<vec4f>;
@group(0) @binding(1) var<storage, read> table: array<u32>;
${
      skipFrozen
        ? `@group(0) @binding(2) var<storage, read> hyper: array<f32>;
@group(0) @binding(3) var<storage, read_write> partial: array<f32>;
@group(0) @binding(4) var<uniform> u: P;`
        : `@group(0) @binding(2) var<storage, read_write> partial: array<f32>;
@group(0) @binding(3) var<uniform> u: P;`
    }
${TABLE_WGSL}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
${acc.map((k) => `  var a${k} = 0.0;`).join("\n")}
  let tid = wid.x * ${WG}u + lid;
  for (var i = tid; i < u.n4; i += u.stride) {
    let e = table[i >> 4u];
    let lane0 = (i & 15u) * 4u;
    let count = segCount(e);
    if (lane0 >= count) { continue; }
${
      skipFrozen
        ? `    // A frozen group has no gradient in PyTorch, so it adds nothing to the norm.
    if (hyper[segGroup(e) * ${HYPER_STRIDE}u + ${HYPER.active}u] == 0.0) { continue; }`
        : ""
    }
    let g = select(vec4f(0.0), grad[i], laneMask(lane0, count));
    let s = dot(g, g);
    let mdl = segModule(e);
${acc.map((k) => `    a${k} += select(0.0, s, mdl == ${k}u);`).join("\n")}
  }
  // Module-major, so the finishing workgroup of a module reads one contiguous run.
${acc.map((k) => `  partial[${k}u * u.stride + tid] = a${k};`).join("\n")}
}`,
  });
}

/** One workgroup per module: strided sums of the partials, a fixed tree, then `out[m] +=`. */
const finishKernel = kernel({
  name: "grad_sq_norm_finish",
  bindings: ["read", "read_write"],
  uniformBytes: 16,
  source: () => `
struct P { parts: u32, p0: u32, p1: u32, p2: u32 }
@group(0) @binding(0) var<storage, read> partial: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<uniform> u: P;
var<workgroup> red: array<f32, ${WG}>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let m = wid.x;
  var s = 0.0;
  for (var i = lid; i < u.parts; i += ${WG}u) { s += partial[m * u.parts + i]; }
  red[lid] = s;
  for (var st = ${WG / 2}u; st > 0u; st >>= 1u) {
    workgroupBarrier();
    if (lid < st) { red[lid] += red[lid + st]; }
  }
  if (lid == 0u) { out[m] += red[0]; }
}`,
});

/** Options of `gradSqNorms`. */
export interface GradNormOptions {
  /**
   * The AdamW hyper tensor: when given, groups marked inactive (frozen) are left out of the
   * norm, as PyTorch leaves out parameters whose grad is None.
   */
  hyper?: GpuTensor;
}

/**
 * Adds Σ g² of each clip module over one arena chunk to `out` (`[modules]` f32, created zeroed when
 * absent), so calling it once per chunk with the same `out` gives the norms over the whole arena.
 * Modules of the table at or above `modules` are not counted.
 */
export function gradSqNorms(
  gpu: Gpu,
  grads: GpuTensor,
  table: GpuTensor,
  modules: number,
  out?: GpuTensor,
  opts: GradNormOptions = {},
): GpuTensor {
  if (!Number.isInteger(modules) || modules < 1 || modules > MAX_CLIP_MODULES) {
    throw new RangeError(`gradSqNorms: modules must be 1..${MAX_CLIP_MODULES}, got ${modules}`);
  }
  const n = checkChunk("gradSqNorms", { grads }, table);
  if (out && (out.dtype !== "f32" || out.numel !== modules)) {
    throw new RangeError(
      `gradSqNorms: out is [${out.shape}] ${out.dtype}, expected f32 [${modules}]`,
    );
  }
  const result = out ?? gpu.zeros([modules]);
  if (n === 0) return result;
  const n4 = n / 4;
  // Invocations of the streaming stage: each handles ≥ 16 vec4s, at most MAX_PARTIALS workgroups.
  const groups = Math.min(MAX_PARTIALS, Math.ceil(n4 / (WG * 16)));
  const threads = groups * WG;
  const partial = gpu.empty([threads * modules]);
  const k = sqNormKernel(modules, opts.hyper !== undefined);
  const bufs = opts.hyper ? [grads, table, opts.hyper, partial] : [grads, table, partial];
  gpu.dispatch(k, bufs, [groups], u32Uniforms(n4, threads));
  gpu.dispatch(finishKernel, [partial, result], [modules], u32Uniforms(threads));
  gpu.release(partial);
  return result;
}

const clipKernel = kernel({
  name: "clip_factors",
  bindings: ["read", "read_write"],
  uniformBytes: 16,
  source: () => `
struct P { modules: u32, maxNorm: f32, p0: u32, p1: u32 }
@group(0) @binding(0) var<storage, read> sq: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<uniform> u: P;
@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) lid: u32) {
  if (lid >= u.modules) { return; }
  // clip_grad_norm_: coef = max_norm / (norm + 1e-6), applied clamped to 1.
  out[lid] = min(1.0, u.maxNorm / (sqrt(sq[lid]) + 1e-6));
}`,
});

/**
 * Per-module gradient factors `min(1, maxNorm / (sqrt(s) + 1e-6))` from squared norms `s`
 * (`[modules]`), computed on the GPU. A non-finite norm gives an unspecified factor (WGSL leaves
 * NaN in `min` to the implementation): skip such steps before the update.
 */
export function clipFactors(gpu: Gpu, sqNorms: GpuTensor, maxNorm: number): GpuTensor {
  if (!(maxNorm > 0) || !Number.isFinite(maxNorm)) {
    throw new RangeError(
      `clipFactors: maxNorm must be positive and finite, got ${maxNorm}; to disable clipping ` +
        "pass a tensor of ones as the clip factors instead",
    );
  }
  const modules = sqNorms.numel;
  if (sqNorms.dtype !== "f32" || modules < 1 || modules > 64) {
    throw new RangeError(
      `clipFactors: sqNorms must be f32 [1..64], got [${sqNorms.shape}] ${sqNorms.dtype}`,
    );
  }
  const out = gpu.empty([modules]);
  gpu.dispatch(clipKernel, [sqNorms, out], [1], new Uniforms(16).u32(modules).f32(maxNorm).bytes);
  return out;
}

/** CPU reference: Σ g² per module over the segments (float64), skipping inactive groups if given. */
export function gradSqNormsRef(
  grads: Float32Array,
  segments: readonly { offset: number; length: number; group: number; module: number }[],
  modules: number,
  activeGroups?: readonly boolean[],
): Float64Array {
  const out = new Float64Array(modules);
  for (const s of segments) {
    if (s.module >= modules || (activeGroups && !activeGroups[s.group])) continue;
    for (let i = s.offset; i < s.offset + s.length; i++) out[s.module] += grads[i] * grads[i];
  }
  return out;
}

/** CPU reference of `clipFactors`. */
export function clipFactorsRef(sqNorms: ArrayLike<number>, maxNorm: number): Float64Array {
  return Float64Array.from(sqNorms, (s) => Math.min(1, maxNorm / (Math.sqrt(s) + 1e-6)));
}

/**
 * Matrix multiplication: `out = residual + scale ⊙ act(alpha · op(A) · op(B) + bias)`, with the
 * epilogue fused into the write-out, in two handwritten WGSL variants:
 *
 * - `reg`: register blocking without workgroup memory or barriers. Each invocation owns a
 *   `tm × tn` block of the output and walks K four at a time with vec4 loads. This is what pays
 *   on llvmpipe, where every storage or workgroup load is a per-lane scalar loop and barriers
 *   are coroutine switches: the only lever is more FMAs per loaded value (bigger blocks).
 * - `tiled`: the classic shared-memory kernel for real GPUs: a `bm × bn` output tile per
 *   workgroup, `bk`-deep slabs of A and B staged in workgroup memory, `tm × tn` outputs per
 *   thread read as vec4 rows from the staged slabs.
 *
 * Which one (and which tile sizes) runs for a shape is decided by measurement on the running
 * adapter (`tuneMatmul`, cached by `autotune.ts`); `matmul` itself only looks the choice up.
 *
 * Invariants that bite:
 * - vec4 loads are used only where every address they touch is 16-byte aligned relative to the
 *   binding and never straddles a row end (see `vecFlags`); otherwise the kernel is built with
 *   scalar loads. Binding windows start at `minStorageBufferOffsetAlignment` boundaries (a
 *   multiple of 16 bytes), so element offsets keep their residue mod 4 inside the window.
 * - Out-of-range rows and columns are clamped on load (the kernel never reads outside its
 *   window) and masked on store; K tails are handled by a scalar loop (reg) or zero-filled
 *   staging (tiled).
 * - A binding never exceeds `maxStorageBufferBindingSize`: dispatches are split over batches
 *   and then rows (`planChunks`); what cannot be split (B itself too large, a transposed A too
 *   large) throws `GpuLimitError`.
 */
import { type Autotuner, newAutotuner } from "./autotune.ts";
import { GpuLimitError } from "./errors.ts";
import { type Kernel, kernel, Params } from "./kernel.ts";
import { fmtBytes } from "./pool.ts";
import type { Gpu } from "./runtime.ts";
import { type BufferView, GpuTensor, numel } from "./tensor.ts";

// ------------------------------------------------------------------ public types

/** Epilogue and layout options of `matmul`. */
export interface MatmulOptions {
  /** a is [..., K, M] instead of [..., M, K]. */
  transA?: boolean;
  /** b is [..., N, K] instead of [..., K, N] (nn.Linear weight [out, in] → transB). */
  transB?: boolean;
  /** out = alpha · A·B (before the epilogue). */
  alpha?: number;
  /** [N], added to every row. */
  bias?: GpuTensor;
  /** After bias; GELU is the exact erf form (PyTorch nn.GELU()). */
  activation?: "none" | "gelu";
  /** [N], LayerScale: out = residual + scale ⊙ act(alpha·A·B + bias). */
  scale?: GpuTensor;
  /** Same shape as the output. */
  residual?: GpuTensor;
  /** Add the result into this existing tensor (out += …) and return it. */
  accumulate?: GpuTensor;
}

/** A matmul kernel variant and its tile parameters. */
export type MatmulVariant =
  | {
    kind: "reg";
    /** Output rows per invocation. */
    tm: number;
    /** Output columns per invocation. */
    tn: number;
    /** Invocations per workgroup along M. */
    wgm: number;
    /** Invocations per workgroup along N. */
    wgn: number;
    /**
     * K per dispatch: a longer sum (the weight gradient, K = tokens) runs as consecutive
     * dispatches accumulating into the output, so each one's A and B panels stay in cache
     * between the workgroups that share them. Only for plain epilogues (no bias, activation,
     * scale or residual); otherwise ignored. A multiple of 4.
     */
    kChunk?: number;
  }
  | {
    kind: "tiled";
    /** Output tile of a workgroup: rows, columns; K slab depth. */
    bm: number;
    bn: number;
    bk: number;
    /** Outputs per thread: rows, columns (multiples of 4). */
    tm: number;
    tn: number;
  };

/** Knobs tests and the autotuner use; not part of the public contract. */
export interface MatmulInternal {
  /** Run this variant instead of the tuned one. */
  variant?: MatmulVariant;
  /** Pretend the binding limit is this many bytes (tests the split path at small sizes). */
  maxBindingBytes?: number;
  /** Look choices up in this tuner instead of the process-wide one. */
  tuner?: Autotuner<MatmulVariant>;
}

/** The lower-level entry point: one (possibly batched) strided multiply into `out`. */
export interface MatmulStridedSpec {
  a: GpuTensor;
  b: GpuTensor;
  out: GpuTensor;
  M: number;
  N: number;
  K: number;
  /** Batch count, or [outer, inner] for a two-level batch (e.g. [images, heads]). Default 1. */
  batch?: number | readonly [number, number];
  /** Element offsets into each tensor of batch 0's matrix. */
  offsetA?: number;
  offsetB?: number;
  offsetOut?: number;
  /** Row strides in elements (defaults: contiguous rows of the stored layout). */
  lda?: number;
  ldb?: number;
  ldo?: number;
  /** Element strides between batches: a number for one level, [outer, inner] for two. */
  strideA?: number | readonly [number, number];
  strideB?: number | readonly [number, number];
  strideOut?: number | readonly [number, number];
  transA?: boolean;
  transB?: boolean;
  alpha?: number;
  bias?: GpuTensor;
  activation?: "none" | "gelu";
  scale?: GpuTensor;
  /** Residual laid out like `out` unless its own offset/ld/stride are given. */
  residual?: GpuTensor;
  offsetResidual?: number;
  ldr?: number;
  strideResidual?: number | readonly [number, number];
  /** Read `out` and add the result to it. */
  accumulate?: boolean;
}

/** Host-side options of `matmulRef` (the same epilogue on plain arrays). */
export interface MatmulRefOptions {
  transA?: boolean;
  transB?: boolean;
  alpha?: number;
  bias?: Float32Array;
  activation?: "none" | "gelu";
  scale?: Float32Array;
  residual?: Float32Array;
  accumulate?: Float32Array;
}

// ------------------------------------------------------------------ erf / GELU

/**
 * erfc(z) = t·exp(−z² + P(t − ½)) with t = 1/(1 + z/2), z ≥ 0. P is a degree-10 least-squares
 * fit (fitted for bloom on Chebyshev nodes of t ∈ [1/7, 1], i.e. z ∈ [0, 12]) of
 * log(erfc(z)/t) + z²; relative error of the formula 1.1e-8, of its f32 evaluation < 5e-7.
 */
const ERFC_P = [
  -0.6717940743078177,
  1.3452864148440051,
  0.1893698165976333,
  -0.37515757184418985,
  -0.157772489030821,
  0.28196450643005794,
  0.10890388668126229,
  -0.290400086232791,
  -0.0108118744539408,
  0.24949812129077265,
  -0.12844595019914143,
];

/** Maclaurin coefficients of erf(x)/x in x²: (−1)ⁿ·2/(√π·n!·(2n+1)), n = 0..12. */
const ERF_SERIES = Array.from({ length: 13 }, (_, n) => {
  let fact = 1;
  for (let i = 2; i <= n; i++) fact *= i;
  return ((n % 2 ? -1 : 1) * 2) / (Math.sqrt(Math.PI) * fact * (2 * n + 1));
});

function wgslFloat(x: number): string {
  const s = x.toPrecision(17);
  return s.includes(".") || s.includes("e") ? s : `${s}.0`;
}

function horner(coeffs: number[], v: string): string {
  let s = wgslFloat(coeffs[coeffs.length - 1]);
  for (let i = coeffs.length - 2; i >= 0; i--) s = `fma(${s}, ${v}, ${wgslFloat(coeffs[i])})`;
  return s;
}

/**
 * WGSL functions `bloom_erfc_pos(z)` (z ≥ 0, relative error < 1e-6), `bloom_erf(x)` (absolute
 * error ~1e-7) and `bloom_gelu(x)` (x·Φ(x), PyTorch's exact nn.GELU(), relative error ~1e-6).
 * WGSL has no erf; elementwise kernels paste this snippet into their source.
 */
export const ERF_WGSL = `
// erfc(z) = t·exp(-z² + P(t - 1/2)), z >= 0, given z² = yh + yl with yh exact and small yl.
// A large exponent must not cost accuracy: exp of an argument near -100 is only as exact as
// the argument (and some exp implementations multiply by log2(e) first), so z² arrives split
// (callers clear the low 12 mantissa bits of z, or x, to make yh exact) and yh = n·ln2 + r is
// reduced Cody-Waite style (n·L1 exact, ln2 = L1 + L2), leaving exp() a small argument.
fn bloom_erfc_split(z: f32, yh: f32, yl: f32) -> f32 {
  let t = 1.0 / fma(0.5, z, 1.0);
  let u = t - 0.5;
  let p = ${horner(ERFC_P, "u")};
  let n = round(yh * 1.4426950408889634);
  let r = (yh - n * 0.693359375) - n * -2.1219444005469058e-4;
  return t * ldexp(exp((p - yl) - r), -i32(n));
}

fn bloom_hi12(x: f32) -> f32 {
  return bitcast<f32>(bitcast<u32>(x) & 0xfffff000u);
}

// erfc for z >= 0 (relative error < 1e-6; 0 beyond z = 10, where f32 underflows anyway).
fn bloom_erfc_pos(z_in: f32) -> f32 {
  let z = min(z_in, 10.0);
  let zh = bloom_hi12(z);
  return bloom_erfc_split(z, zh * zh, (z - zh) * (z + zh));
}

fn bloom_erf(x: f32) -> f32 {
  let ax = abs(x);
  if (ax < 1.0) {
    let x2 = x * x;
    return x * ${horner(ERF_SERIES, "x2")};
  }
  return sign(x) * (1.0 - bloom_erfc_pos(ax));
}

// gelu(x) = x·Φ(x); Φ(x) = 1 − erfc(x/√2)/2 for x ≥ 0 and erfc(−x/√2)/2 for x < 0, so the
// negative side never subtracts nearly equal numbers.
// (x/√2)² is formed from x, not from the rounded x/√2, whose error erfc would amplify by x².
fn bloom_gelu(x: f32) -> f32 {
  let ax = min(abs(x), 14.0);
  let xh = bloom_hi12(ax);
  let y = 0.5 * xh * xh;
  let e = 0.5 * bloom_erfc_split(ax * 0.70710678118654752, y, 0.5 * (ax - xh) * (ax + xh));
  return select(x * e, x - x * e, x >= 0.0);
}
`;

/** erf in float64 (absolute error < 1e-15), for references. */
export function erfRef(x: number): number {
  if (Number.isNaN(x)) return NaN;
  const ax = Math.abs(x);
  const r = ax < 3 ? erfSeries(ax) : 1 - erfcFraction(ax);
  return x < 0 ? -r : r;
}

/** erfc in float64 (relative error < 1e-12 for x ≥ 0), for references. */
export function erfcRef(x: number): number {
  if (x < 0) return 2 - erfcRef(-x);
  return x < 2 ? 1 - erfSeries(x) : erfcFraction(x);
}

/** erf(x) = 2/√π · e^{−x²} · Σ 2ⁿx^{2n+1}/(1·3·…·(2n+1)): all terms positive, no cancellation. */
function erfSeries(x: number): number {
  let term = x;
  let sum = x;
  for (let n = 1; n < 200 && term > 1e-17 * sum; n++) {
    term *= (2 * x * x) / (2 * n + 1);
    sum += term;
  }
  return (2 / Math.sqrt(Math.PI)) * Math.exp(-x * x) * sum;
}

/** erfc by its continued fraction z + (1/2)/(z + 1/(z + (3/2)/(z + …))), for z ≥ 2. */
function erfcFraction(z: number): number {
  let f = z;
  for (let n = 300; n >= 1; n--) f = z + n / 2 / f;
  return Math.exp(-z * z) / Math.sqrt(Math.PI) / f;
}

/** GELU (exact erf form) in float64: x·Φ(x). */
export function geluRef(x: number): number {
  return 0.5 * x * erfcRef(-x / Math.SQRT2);
}

// ------------------------------------------------------------------ variants

/** Stable text form of a variant: "reg-8x8-8x8", "reg-16x16-8x2-k512", "tiled-64x64x16-4x4". */
export function variantId(v: MatmulVariant): string {
  return v.kind === "reg"
    ? `reg-${v.tm}x${v.tn}-${v.wgm}x${v.wgn}${v.kChunk ? `-k${v.kChunk}` : ""}`
    : `tiled-${v.bm}x${v.bn}x${v.bk}-${v.tm}x${v.tn}`;
}

/** Parses `variantId`'s form; null for anything malformed or invalid. */
export function parseVariant(id: string): MatmulVariant | null {
  let m = /^reg-(\d+)x(\d+)-(\d+)x(\d+)(?:-k(\d+))?$/.exec(id);
  if (m) {
    const v: MatmulVariant = { kind: "reg", tm: +m[1], tn: +m[2], wgm: +m[3], wgn: +m[4] };
    if (m[5] !== undefined) v.kChunk = +m[5];
    return validVariant(v) ? v : null;
  }
  m = /^tiled-(\d+)x(\d+)x(\d+)-(\d+)x(\d+)$/.exec(id);
  if (m) {
    const v: MatmulVariant = {
      kind: "tiled",
      bm: +m[1],
      bn: +m[2],
      bk: +m[3],
      tm: +m[4],
      tn: +m[5],
    };
    return validVariant(v) ? v : null;
  }
  return null;
}

function validVariant(v: MatmulVariant): boolean {
  const pos = (x: number, max: number) => Number.isInteger(x) && x >= 1 && x <= max;
  if (v.kind === "reg") {
    return pos(v.tm, 64) && pos(v.tn, 64) && v.tm % 4 === 0 && v.tn % 4 === 0 &&
      pos(v.wgm, 256) && pos(v.wgn, 256) && v.wgm * v.wgn <= 256 &&
      (v.kChunk === undefined || (pos(v.kChunk, 1 << 20) && v.kChunk % 4 === 0));
  }
  return pos(v.tm, 16) && pos(v.tn, 16) && v.tm % 4 === 0 && v.tn % 4 === 0 &&
    pos(v.bk, 64) && v.bk % 4 === 0 && v.bm % v.tm === 0 && v.bn % v.tn === 0 &&
    pos(v.bm, 256) && pos(v.bn, 256) && (v.bm / v.tm) * (v.bn / v.tn) <= 256 &&
    // every thread stages whole vec4s: the slab sizes must divide evenly
    (v.bm * v.bk) % 4 === 0 && (v.bn * v.bk) % 4 === 0;
}

/**
 * Variants the autotuner measures. On llvmpipe (2 cores, measured as CPU-time ratios to the
 * FMA-peak kernel) the 16×16 register block wins at ~0.3–0.35 on 512³ and the ViT-S layers,
 * 8×8 reaches ~0.2–0.25, and bigger blocks (20×20, 24×16, 24×24, 32×16) lose again (spills,
 * 2–10× compile time); the workgroup-memory kernels are ~10× slower there and are here for
 * real GPUs, where 64–256-thread workgroups with shared tiles are what pays. The split-K form
 * (`kChunk` 512) wins where K is long — the weight gradient, K = tokens: ~2× on llvmpipe,
 * whose caches then hold the panels that consecutive workgroups share.
 */
export const MATMUL_CANDIDATES: readonly MatmulVariant[] = [
  { kind: "reg", tm: 4, tn: 4, wgm: 8, wgn: 8 },
  { kind: "reg", tm: 8, tn: 8, wgm: 8, wgn: 8 },
  { kind: "reg", tm: 16, tn: 16, wgm: 8, wgn: 2 },
  { kind: "reg", tm: 16, tn: 16, wgm: 8, wgn: 2, kChunk: 512 },
  { kind: "tiled", bm: 64, bn: 64, bk: 16, tm: 4, tn: 4 },
  { kind: "tiled", bm: 128, bn: 64, bk: 16, tm: 8, tn: 4 },
  { kind: "tiled", bm: 128, bn: 128, bk: 8, tm: 8, tn: 8 },
];

/** What runs when nothing was tuned for the shape or the adapter. */
export const FALLBACK_VARIANT: MatmulVariant = { kind: "reg", tm: 8, tn: 8, wgm: 8, wgn: 8 };

/** Rows and columns of output one workgroup covers. */
function blockOf(v: MatmulVariant): { rows: number; cols: number; threads: number } {
  return v.kind === "reg"
    ? { rows: v.tm * v.wgm, cols: v.tn * v.wgn, threads: v.wgm * v.wgn }
    : { rows: v.bm, cols: v.bn, threads: (v.bm / v.tm) * (v.bn / v.tn) };
}

/**
 * Shrinks a `reg` variant whose per-invocation block is far larger than the problem (a 16×16
 * block on a 1-row matmul computes 16 copies of the row). A shape rule, not an adapter rule.
 */
function fitVariant(v: MatmulVariant, M: number, N: number): MatmulVariant {
  if (v.kind !== "reg") return v;
  const shrink = (t: number, d: number) => Math.max(4, Math.min(t, 4 * Math.ceil(d / 4)));
  const tm = shrink(v.tm, M);
  const tn = shrink(v.tn, N);
  return tm === v.tm && tn === v.tn ? v : { ...v, tm, tn };
}

// ------------------------------------------------------------------ WGSL generation

/** Everything a matmul kernel's source depends on. */
interface KernelSpec {
  variant: MatmulVariant;
  transA: boolean;
  transB: boolean;
  /** A / B are bound as array<vec4f> and read four elements at a time. */
  vecA: boolean;
  vecB: boolean;
  /** out (and residual) are written / read as vec4 along N. */
  vecO: boolean;
  bias: boolean;
  gelu: boolean;
  scale: boolean;
  residual: boolean;
  accumulate: boolean;
}

const PARAM_FIELDS = [
  "M",
  "N",
  "K",
  "lda",
  "ldb",
  "ldo",
  "ldr",
  "offA",
  "offB",
  "offO",
  "offR",
  "offBias",
  "offScale",
  "bInner",
  "sA0",
  "sA1",
  "sB0",
  "sB1",
  "sO0",
  "sO1",
  "sR0",
  "sR1",
] as const;
type ParamName = (typeof PARAM_FIELDS)[number];
const UNIFORM_BYTES = 96;

/** Pipeline cache key: the variant, the layout and one letter per specialisation flag. */
function specKey(s: KernelSpec): string {
  const flags: [boolean, string][] = [
    [s.vecA, "a"],
    [s.vecB, "b"],
    [s.vecO, "o"],
    [s.bias, "B"],
    [s.gelu, "G"],
    [s.scale, "S"],
    [s.residual, "R"],
    [s.accumulate, "+"],
  ];
  const layout = `${s.transA ? "T" : "N"}${s.transB ? "T" : "N"}`;
  return `${variantId(s.variant)}|${layout}|${flags.map(([on, c]) => (on ? c : "-")).join("")}`;
}

const kernelCache = new Map<string, Kernel>();

/** The kernel for a spec (descriptions are memoised; the runtime caches pipelines). */
function matmulKernel(s: KernelSpec): Kernel {
  const key = specKey(s);
  let k = kernelCache.get(key);
  if (!k) {
    const bindings: ("read" | "read_write")[] = ["read", "read", "read_write"];
    if (s.bias) bindings.push("read");
    if (s.scale) bindings.push("read");
    if (s.residual) bindings.push("read");
    k = kernel({
      name: `matmul_${s.variant.kind}`,
      key,
      bindings,
      uniformBytes: UNIFORM_BYTES,
      source: () => (s.variant.kind === "reg" ? regSource(s) : tiledSource(s)),
    });
    kernelCache.set(key, k);
  }
  return k;
}

/** Declarations shared by both variants: params, bindings, erf. */
function header(s: KernelSpec): string {
  const L: string[] = [];
  L.push(`struct P { ${PARAM_FIELDS.map((f) => `${f}: u32`).join(", ")}, alpha: f32 }`);
  let b = 0;
  L.push(`@group(0) @binding(${b++}) var<storage, read> A: array<${s.vecA ? "vec4f" : "f32"}>;`);
  L.push(`@group(0) @binding(${b++}) var<storage, read> B: array<${s.vecB ? "vec4f" : "f32"}>;`);
  const o = s.vecO ? "vec4f" : "f32";
  L.push(`@group(0) @binding(${b++}) var<storage, read_write> O: array<${o}>;`);
  if (s.bias) L.push(`@group(0) @binding(${b++}) var<storage, read> BIAS: array<f32>;`);
  if (s.scale) L.push(`@group(0) @binding(${b++}) var<storage, read> SCALE: array<f32>;`);
  if (s.residual) L.push(`@group(0) @binding(${b++}) var<storage, read> RES: array<${o}>;`);
  L.push(`@group(0) @binding(${b}) var<uniform> p: P;`);
  if (s.gelu) L.push(ERF_WGSL);
  return L.join("\n");
}

/** Batch base offsets of every operand, from the workgroup's z. */
function batchBases(s: KernelSpec): string {
  return `  let bi = wid.z % p.bInner;
  let bo = wid.z / p.bInner;
  let baseA = p.offA + bo * p.sA1 + bi * p.sA0;
  let baseB = p.offB + bo * p.sB1 + bi * p.sB0;
  let baseO = p.offO + bo * p.sO1 + bi * p.sO0;` +
    (s.residual ? `\n  let baseR = p.offR + bo * p.sR1 + bi * p.sR0;` : "");
}

/**
 * The fused write-out of a tm × tn block at (m0, n0) whose accumulators are `c{r}_{c}`:
 * alpha, bias, GELU, LayerScale, residual, accumulate; rows and columns past M, N are masked.
 * With `vecO` (N, ldo and offsets multiples of 4) a group of 4 columns is wholly inside or
 * outside N and moves as one vec4 — on llvmpipe every store is a loop over lanes, so this
 * quarters the write-out's cost.
 */
function epilogue(s: KernelSpec, tm: number, tn: number): string {
  const L: string[] = [];
  for (let c = 0; c < tn; c++) {
    const n = `min(n0 + ${c}u, p.N - 1u)`;
    if (s.bias) L.push(`  let bias${c} = BIAS[p.offBias + ${n}];`);
    if (s.scale) L.push(`  let scale${c} = SCALE[p.offScale + ${n}];`);
  }
  const group = s.vecO ? 4 : 1;
  const vt = s.vecO ? "vec4f" : "f32";
  const cols = (c0: number) => Array.from({ length: group }, (_, i) => c0 + i);
  const vec = (parts: string[]) => (s.vecO ? `vec4f(${parts.join(", ")})` : parts[0]);
  for (let r = 0; r < tm; r++) {
    L.push(`  if (m0 + ${r}u < p.M) {`);
    L.push(`    let orow = baseO + (m0 + ${r}u) * p.ldo + n0;`);
    if (s.residual) L.push(`    let rrow = baseR + (m0 + ${r}u) * p.ldr + n0;`);
    for (let c0 = 0; c0 < tn; c0 += group) {
      const at = (row: string) => (s.vecO ? `(${row} >> 2u) + ${c0 / 4}u` : `${row} + ${c0}u`);
      const ops = [`var v: ${vt} = ${vec(cols(c0).map((c) => `c${r}_${c}`))} * p.alpha;`];
      if (s.bias) ops.push(`v += ${vec(cols(c0).map((c) => `bias${c}`))};`);
      if (s.gelu) {
        ops.push(
          s.vecO
            ? `v = vec4f(bloom_gelu(v.x), bloom_gelu(v.y), bloom_gelu(v.z), bloom_gelu(v.w));`
            : `v = bloom_gelu(v);`,
        );
      }
      if (s.scale) ops.push(`v *= ${vec(cols(c0).map((c) => `scale${c}`))};`);
      if (s.residual) ops.push(`v += RES[${at("rrow")}];`);
      if (s.accumulate) ops.push(`v += O[${at("orow")}];`);
      ops.push(`O[${at("orow")}] = v;`);
      L.push(`    if (n0 + ${c0}u < p.N) { ${ops.join(" ")} }`);
    }
    L.push(`  }`);
  }
  return L.join("\n");
}

/** A scalar element of a binding declared as vec4 or scalar array. */
function elem(name: string, vec: boolean, idx: string): string {
  return vec ? `${name}[(${idx}) >> 2u][(${idx}) & 3u]` : `${name}[${idx}]`;
}

/**
 * The register-blocked kernel. Invocation `li` of a workgroup owns rows m0.. (li % wgm) and
 * columns n0.. (li / wgm). Per K step of 4 it loads its A side (tm rows × 4 k) once, then the B
 * side block by block (one column, or 4 columns), each block's tm·4·(1 or 4) FMAs right after
 * its load. Cost model on llvmpipe (read off its machine code): a vec4 load is a loop over the
 * 8 lanes of ~40 scalar instructions per lane, an FMA on a spilled accumulator ~3 vector
 * instructions for 8 lanes, so time goes as 40·(tm + tn) per lane against 0.35·4·tm·tn.
 */
function regSource(s: KernelSpec): string {
  const v = s.variant as Extract<MatmulVariant, { kind: "reg" }>;
  const { tm, tn, wgm, wgn } = v;
  const L: string[] = [header(s)];
  L.push(`@compute @workgroup_size(${wgm * wgn})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) li: u32) {
  let m0 = (wid.y * ${wgm}u + li % ${wgm}u) * ${tm}u;
  let n0 = (wid.x * ${wgn}u + li / ${wgm}u) * ${tn}u;
  // No barriers in this kernel, so invocations past the edge may leave at once.
  if (m0 >= p.M || n0 >= p.N) { return; }
${batchBases(s)}`);
  for (let r = 0; r < tm; r++) for (let c = 0; c < tn; c++) L.push(`  var c${r}_${c} = 0.0;`);

  // Per-row / per-column base addresses (clamped so edge blocks read valid memory).
  const a: string[][] = Array.from({ length: tm }, () => []);
  const b: string[][] = Array.from({ length: tn }, () => []);
  const loadsA: string[] = [];
  if (!s.transA) {
    // A[m, k] at baseA + m·lda + k: contiguous along k.
    for (let r = 0; r < tm; r++) {
      L.push(`  let ra${r} = baseA + min(m0 + ${r}u, p.M - 1u) * p.lda;`);
      if (s.vecA) {
        loadsA.push(`let a${r} = A[(ra${r} >> 2u) + k4];`);
        for (let j = 0; j < 4; j++) a[r][j] = `a${r}.${"xyzw"[j]}`;
      } else {
        for (let j = 0; j < 4; j++) {
          loadsA.push(`let a${r}_${j} = A[ra${r} + k + ${j}u];`);
          a[r][j] = `a${r}_${j}`;
        }
      }
    }
  } else {
    // A stored [K, M]: A[m, k] at baseA + k·lda + m: contiguous along m.
    if (s.vecA) {
      for (let g = 0; g < tm / 4; g++) {
        L.push(`  let ga${g} = min((m0 >> 2u) + ${g}u, (p.M >> 2u) - 1u);`);
      }
      for (let j = 0; j < 4; j++) {
        loadsA.push(`let ka${j} = (baseA + (k + ${j}u) * p.lda) >> 2u;`);
        for (let g = 0; g < tm / 4; g++) {
          loadsA.push(`let a${j}_${g} = A[ka${j} + ga${g}];`);
          for (let i = 0; i < 4; i++) a[4 * g + i][j] = `a${j}_${g}.${"xyzw"[i]}`;
        }
      }
    } else {
      for (let r = 0; r < tm; r++) L.push(`  let ma${r} = min(m0 + ${r}u, p.M - 1u);`);
      for (let j = 0; j < 4; j++) {
        loadsA.push(`let ka${j} = baseA + (k + ${j}u) * p.lda;`);
        for (let r = 0; r < tm; r++) {
          loadsA.push(`let a${r}_${j} = A[ka${j} + ma${r}];`);
          a[r][j] = `a${r}_${j}`;
        }
      }
    }
  }
  // The B side comes in blocks (one column, or a group of 4 columns), each loaded right
  // before the FMAs that use it: on llvmpipe this measured ~1.6× faster than loading every
  // operand first, which keeps far more values live across the load loops.
  const pre: string[] = [];
  const blocks: { loads: string[]; cols: number[] }[] = [];
  if (s.transB) {
    // B stored [N, K]: B[k, n] at baseB + n·ldb + k: contiguous along k.
    for (let c = 0; c < tn; c++) {
      L.push(`  let rb${c} = baseB + min(n0 + ${c}u, p.N - 1u) * p.ldb;`);
      const loads: string[] = [];
      if (s.vecB) {
        loads.push(`let b${c} = B[(rb${c} >> 2u) + k4];`);
        for (let j = 0; j < 4; j++) b[c][j] = `b${c}.${"xyzw"[j]}`;
      } else {
        for (let j = 0; j < 4; j++) {
          loads.push(`let b${c}_${j} = B[rb${c} + k + ${j}u];`);
          b[c][j] = `b${c}_${j}`;
        }
      }
      blocks.push({ loads, cols: [c] });
    }
  } else {
    // B[k, n] at baseB + k·ldb + n: contiguous along n; a block is 4 k-rows × 4 columns.
    for (let g = 0; g < tn / 4; g++) {
      if (s.vecB) L.push(`  let gb${g} = min((n0 >> 2u) + ${g}u, (p.N >> 2u) - 1u);`);
    }
    if (!s.vecB) {
      for (let c = 0; c < tn; c++) L.push(`  let nb${c} = min(n0 + ${c}u, p.N - 1u);`);
    }
    for (let j = 0; j < 4; j++) {
      pre.push(
        s.vecB
          ? `let kb${j} = (baseB + (k + ${j}u) * p.ldb) >> 2u;`
          : `let kb${j} = baseB + (k + ${j}u) * p.ldb;`,
      );
    }
    for (let g = 0; g < tn / 4; g++) {
      const loads: string[] = [];
      for (let j = 0; j < 4; j++) {
        if (s.vecB) {
          loads.push(`let b${j}_${g} = B[kb${j} + gb${g}];`);
          for (let i = 0; i < 4; i++) b[4 * g + i][j] = `b${j}_${g}.${"xyzw"[i]}`;
        } else {
          for (let i = 0; i < 4; i++) {
            const c = 4 * g + i;
            loads.push(`let b${c}_${j} = B[kb${j} + nb${c}];`);
            b[c][j] = `b${c}_${j}`;
          }
        }
      }
      blocks.push({ loads, cols: [0, 1, 2, 3].map((i) => 4 * g + i) });
    }
  }
  L.push(`  let k4n = p.K >> 2u;
  for (var k4 = 0u; k4 < k4n; k4++) {
    let k = k4 << 2u;`);
  for (const l of [...loadsA, ...pre]) L.push(`    ${l}`);
  for (const blk of blocks) {
    for (const l of blk.loads) L.push(`    ${l}`);
    for (const c of blk.cols) {
      for (let r = 0; r < tm; r++) {
        for (let j = 0; j < 4; j++) {
          L.push(`    c${r}_${c} = fma(${a[r][j]}, ${b[c][j]}, c${r}_${c});`);
        }
      }
    }
  }
  L.push(`  }`);
  // K tail (K % 4 elements): scalar loads. vec4-bound A/B only occur with K % 4 == 0 on the
  // side that is vectorised along K, so `elem` on a vec4 binding here reads along M or N.
  L.push(`  for (var k = k4n << 2u; k < p.K; k++) {`);
  for (let r = 0; r < tm; r++) {
    const idx = s.transA
      ? `baseA + k * p.lda + min(m0 + ${r}u, p.M - 1u)`
      : `baseA + min(m0 + ${r}u, p.M - 1u) * p.lda + k`;
    L.push(`    let ta${r} = ${elem("A", s.vecA, idx)};`);
  }
  for (let c = 0; c < tn; c++) {
    const idx = s.transB
      ? `baseB + min(n0 + ${c}u, p.N - 1u) * p.ldb + k`
      : `baseB + k * p.ldb + min(n0 + ${c}u, p.N - 1u)`;
    L.push(`    let tb${c} = ${elem("B", s.vecB, idx)};`);
  }
  for (let r = 0; r < tm; r++) {
    for (let c = 0; c < tn; c++) L.push(`    c${r}_${c} = fma(ta${r}, tb${c}, c${r}_${c});`);
  }
  L.push(`  }`);
  L.push(epilogue(s, tm, tn));
  L.push(`}`);
  return L.join("\n");
}

/**
 * The workgroup-memory kernel. Each slab step stages A as [bk][bm] and B as [bk][bn] (both
 * k-major, so a thread reads its tm rows / tn columns of one k as vec4s), zero-filling past
 * M, N and K, then every thread accumulates its tm × tn block.
 */
function tiledSource(s: KernelSpec): string {
  const v = s.variant as Extract<MatmulVariant, { kind: "tiled" }>;
  const { bm, bn, bk, tm, tn } = v;
  const tx = bn / tn;
  const threads = (bm / tm) * tx;
  const L: string[] = [header(s)];
  L.push(`var<workgroup> As: array<vec4f, ${(bk * bm) / 4}>;
var<workgroup> Bs: array<vec4f, ${(bk * bn) / 4}>;
@compute @workgroup_size(${threads})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) li: u32) {
  let tileM = wid.y * ${bm}u;
  let tileN = wid.x * ${bn}u;
  let m0 = tileM + (li / ${tx}u) * ${tm}u;
  let n0 = tileN + (li % ${tx}u) * ${tn}u;
${batchBases(s)}`);
  for (let r = 0; r < tm; r++) for (let c = 0; c < tn; c++) L.push(`  var c${r}_${c} = 0.0;`);
  L.push(`  for (var k0 = 0u; k0 < p.K; k0 += ${bk}u) {`);
  L.push(stageA(s, bm, bk, threads).map((l) => `    ${l}`).join("\n"));
  L.push(stageB(s, bn, bk, threads).map((l) => `    ${l}`).join("\n"));
  L.push(`    workgroupBarrier();
    for (var kk = 0u; kk < ${bk}u; kk++) {`);
  for (let g = 0; g < tm / 4; g++) {
    L.push(`      let a${g} = As[(kk * ${bm}u + m0 - tileM) / 4u + ${g}u];`);
  }
  for (let g = 0; g < tn / 4; g++) {
    L.push(`      let b${g} = Bs[(kk * ${bn}u + n0 - tileN) / 4u + ${g}u];`);
  }
  for (let r = 0; r < tm; r++) {
    for (let c = 0; c < tn; c++) {
      const av = `a${r >> 2}.${"xyzw"[r & 3]}`;
      const bv = `b${c >> 2}.${"xyzw"[c & 3]}`;
      L.push(`      c${r}_${c} = fma(${av}, ${bv}, c${r}_${c});`);
    }
  }
  L.push(`    }
    workgroupBarrier();
  }`);
  L.push(epilogue(s, tm, tn));
  L.push(`}`);
  return L.join("\n");
}

/** Staging of A's slab into As ([bk][bm], k-major), zero outside the matrix. */
function stageA(s: KernelSpec, bm: number, bk: number, threads: number): string[] {
  const L: string[] = [];
  const quads = (bm * bk) / 4;
  for (let q0 = 0; q0 < quads; q0 += threads) {
    const guard = q0 + threads > quads ? `if (q < ${quads}u) ` : "";
    L.push(`{ let q = li + ${q0}u; ${guard}{`);
    if (!s.transA) {
      // quad q: row mm = q / (bk/4), k group kq; the 4 values go to 4 k-rows of As.
      L.push(`  let mm = q / ${bk / 4}u; let kq = (q % ${bk / 4}u) * 4u;`);
      L.push(`  let m = tileM + mm; let k = k0 + kq;`);
      L.push(`  let row = baseA + min(m, p.M - 1u) * p.lda;`);
      if (s.vecA) {
        // K % 4 == 0 here, so a quad is either wholly inside K or wholly outside.
        L.push(
          `  let val = select(vec4f(0.0), A[(row + min(k, p.K - 4u)) >> 2u], m < p.M && k < p.K);`,
        );
      } else {
        const e = (j: number) =>
          `select(0.0, A[row + min(k + ${j}u, p.K - 1u)], m < p.M && k + ${j}u < p.K)`;
        L.push(`  let val = vec4f(${[0, 1, 2, 3].map(e).join(", ")});`);
      }
      L.push(`  let base = kq * ${bm}u + mm;`);
      for (let j = 0; j < 4; j++) {
        L.push(`  As[(base + ${j * bm}u) >> 2u][(base + ${j * bm}u) & 3u] = val.${"xyzw"[j]};`);
      }
    } else {
      // A stored [K, M]: quad q covers k row kk, m columns mq..mq+3 → one vec4 store.
      L.push(`  let kk = q / ${bm / 4}u; let mq = (q % ${bm / 4}u) * 4u;`);
      L.push(`  let m = tileM + mq; let k = k0 + kk;`);
      L.push(`  let row = baseA + min(k, p.K - 1u) * p.lda;`);
      if (s.vecA) {
        L.push(
          `  let val = select(vec4f(0.0), A[(row + min(m, p.M - 4u)) >> 2u], m < p.M && k < p.K);`,
        );
      } else {
        const e = (j: number) =>
          `select(0.0, A[row + min(m + ${j}u, p.M - 1u)], m + ${j}u < p.M && k < p.K)`;
        L.push(`  let val = vec4f(${[0, 1, 2, 3].map(e).join(", ")});`);
      }
      L.push(`  As[(kk * ${bm}u + mq) >> 2u] = val;`);
    }
    L.push(`}}`);
  }
  return L;
}

/** Staging of B's slab into Bs ([bk][bn], k-major), zero outside the matrix. */
function stageB(s: KernelSpec, bn: number, bk: number, threads: number): string[] {
  const L: string[] = [];
  const quads = (bn * bk) / 4;
  for (let q0 = 0; q0 < quads; q0 += threads) {
    const guard = q0 + threads > quads ? `if (q < ${quads}u) ` : "";
    L.push(`{ let q = li + ${q0}u; ${guard}{`);
    if (s.transB) {
      // B stored [N, K]: quad q covers column nn, k group kq → 4 k-rows of Bs.
      L.push(`  let nn = q / ${bk / 4}u; let kq = (q % ${bk / 4}u) * 4u;`);
      L.push(`  let n = tileN + nn; let k = k0 + kq;`);
      L.push(`  let row = baseB + min(n, p.N - 1u) * p.ldb;`);
      if (s.vecB) {
        L.push(
          `  let val = select(vec4f(0.0), B[(row + min(k, p.K - 4u)) >> 2u], n < p.N && k < p.K);`,
        );
      } else {
        const e = (j: number) =>
          `select(0.0, B[row + min(k + ${j}u, p.K - 1u)], n < p.N && k + ${j}u < p.K)`;
        L.push(`  let val = vec4f(${[0, 1, 2, 3].map(e).join(", ")});`);
      }
      L.push(`  let base = kq * ${bn}u + nn;`);
      for (let j = 0; j < 4; j++) {
        L.push(`  Bs[(base + ${j * bn}u) >> 2u][(base + ${j * bn}u) & 3u] = val.${"xyzw"[j]};`);
      }
    } else {
      L.push(`  let kk = q / ${bn / 4}u; let nq = (q % ${bn / 4}u) * 4u;`);
      L.push(`  let n = tileN + nq; let k = k0 + kk;`);
      L.push(`  let row = baseB + min(k, p.K - 1u) * p.ldb;`);
      if (s.vecB) {
        L.push(
          `  let val = select(vec4f(0.0), B[(row + min(n, p.N - 4u)) >> 2u], n < p.N && k < p.K);`,
        );
      } else {
        const e = (j: number) =>
          `select(0.0, B[row + min(n + ${j}u, p.N - 1u)], n + ${j}u < p.N && k < p.K)`;
        L.push(`  let val = vec4f(${[0, 1, 2, 3].map(e).join(", ")});`);
      }
      L.push(`  Bs[(kk * ${bn}u + nq) >> 2u] = val;`);
    }
    L.push(`}}`);
  }
  return L;
}

// ------------------------------------------------------------------ geometry and splitting

/** How one operand is laid out: base offset, row stride, two batch strides (elements). */
interface Layout {
  t: GpuTensor;
  name: string;
  off: number;
  ld: number;
  s0: number;
  s1: number;
}

/** Normalises a one- or two-level batch spec to [outer, inner]. */
function twoLevel(
  v: number | readonly [number, number] | undefined,
  dflt: readonly [number, number],
): [number, number] {
  if (v === undefined) return [dflt[0], dflt[1]];
  return typeof v === "number" ? [0, v] : [v[0], v[1]];
}

/** Element range [lo, hi) an operand touches for batches (o0..o1, i0..i1) and rows r0..r1. */
type Extent = (o0: number, o1: number, i0: number, i1: number, r0: number, r1: number) => [
  number,
  number,
];

interface Operand {
  lay: Layout;
  extent: Extent;
  /** Element offset of (outer o0, inner i0, row r0) relative to `off`. */
  start: (o0: number, i0: number, r0: number) => number;
}

function operands(
  sp: Required<Pick<MatmulStridedSpec, "M" | "N" | "K" | "transA" | "transB">>,
  A: Layout,
  B: Layout,
  O: Layout,
  R: Layout | null,
): Operand[] {
  const { N, K, transA, transB } = sp;
  const batch = (l: Layout, o0: number, o1: number, i0: number, i1: number) => [
    l.off + o0 * l.s1 + i0 * l.s0,
    l.off + (o1 - 1) * l.s1 + (i1 - 1) * l.s0,
  ];
  const ops: Operand[] = [
    {
      lay: A,
      extent: (o0, o1, i0, i1, r0, r1) => {
        const [lo, hi] = batch(A, o0, o1, i0, i1);
        return transA
          ? [lo + r0, hi + (K - 1) * A.ld + r1]
          : [lo + r0 * A.ld, hi + (r1 - 1) * A.ld + K];
      },
      start: (o0, i0, r0) => o0 * A.s1 + i0 * A.s0 + (transA ? r0 : r0 * A.ld),
    },
    {
      lay: B,
      extent: (o0, o1, i0, i1) => {
        const [lo, hi] = batch(B, o0, o1, i0, i1);
        return [lo, hi + (transB ? (N - 1) * B.ld + K : (K - 1) * B.ld + N)];
      },
      start: (o0, i0) => o0 * B.s1 + i0 * B.s0,
    },
  ];
  for (const l of R ? [O, R] : [O]) {
    ops.push({
      lay: l,
      extent: (o0, o1, i0, i1, r0, r1) => {
        const [lo, hi] = batch(l, o0, o1, i0, i1);
        return [lo + r0 * l.ld, hi + (r1 - 1) * l.ld + N];
      },
      start: (o0, i0, r0) => o0 * l.s1 + i0 * l.s0 + r0 * l.ld,
    });
  }
  return ops;
}

/** One dispatch: outer batches [o0, o0+no), inner [i0, i0+ni), rows [r0, r0+nr). */
interface Chunk {
  o0: number;
  no: number;
  i0: number;
  ni: number;
  r0: number;
  nr: number;
}

/**
 * Splits the work so no binding window exceeds `maxBytes` and no grid dimension exceeds
 * `maxWg`: first over outer batches, then inner batches, then rows (in multiples of the row
 * block, which keeps vec4 row groups aligned). Throws GpuLimitError when one block row of one
 * batch already needs too large a window.
 */
function planChunks(
  ops: Operand[],
  outer: number,
  inner: number,
  M: number,
  rowBlock: number,
  maxBytes: number,
  maxWg: number,
  align: number,
): Chunk[] {
  const windowBytes = (op: Operand, c: Chunk): number => {
    const [lo, hi] = op.extent(c.o0, c.o0 + c.no, c.i0, c.i0 + c.ni, c.r0, c.r0 + c.nr);
    const loB = op.lay.t.offset + lo * 4;
    return hi * 4 + op.lay.t.offset - Math.floor(loB / align) * align;
  };
  const fits = (c: Chunk) =>
    c.no * c.ni <= maxWg && Math.ceil(c.nr / rowBlock) <= maxWg &&
    ops.every((op) => windowBytes(op, c) <= maxBytes);
  const largest = (max: number, ok: (n: number) => boolean): number => {
    // Window sizes grow monotonically with the count: binary search the largest that fits.
    let lo = 0;
    let hi = max;
    while (lo < hi) {
      const mid = Math.ceil((lo + hi + 1) / 2);
      if (ok(mid)) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  };
  const chunks: Chunk[] = [];
  const whole: Chunk = { o0: 0, no: outer, i0: 0, ni: inner, r0: 0, nr: M };
  if (fits(whole)) return [whole];
  const no = largest(outer, (n) => fits({ ...whole, no: n }));
  if (no >= 1) {
    for (let o = 0; o < outer; o += no) {
      chunks.push({ ...whole, o0: o, no: Math.min(no, outer - o) });
    }
    return chunks;
  }
  const one: Chunk = { ...whole, no: 1 };
  const ni = largest(inner, (n) => fits({ ...one, ni: n }));
  if (ni >= 1) {
    for (let o = 0; o < outer; o++) {
      for (let i = 0; i < inner; i += ni) {
        chunks.push({ ...one, o0: o, i0: i, ni: Math.min(ni, inner - i) });
      }
    }
    return chunks;
  }
  const blocks = largest(Math.ceil(M / rowBlock), (n) => fits({ ...one, ni: 1, nr: n * rowBlock }));
  if (blocks < 1) {
    const probe: Chunk = { ...one, ni: 1, nr: Math.min(M, rowBlock) };
    const worst = ops.find((op) => windowBytes(op, probe) > maxBytes) ?? ops[0];
    throw new GpuLimitError(
      `matmul: tensor '${worst.lay.name}' [${worst.lay.t.shape}] needs a ${
        fmtBytes(windowBytes(worst, probe))
      } binding even for one batch and ${probe.nr} rows, over the ${
        fmtBytes(maxBytes)
      } binding limit (maxStorageBufferBindingSize); split '${worst.lay.name}' ` +
        `(e.g. over its columns) or use smaller operands`,
    );
  }
  const nr = blocks * rowBlock;
  for (let o = 0; o < outer; o++) {
    for (let i = 0; i < inner; i++) {
      for (let r = 0; r < M; r += nr) {
        chunks.push({ o0: o, no: 1, i0: i, ni: 1, r0: r, nr: Math.min(nr, M - r) });
      }
    }
  }
  return chunks;
}

/** A window of a tensor's buffer starting at an aligned byte offset; `skip` elements precede lo. */
function windowOf(t: GpuTensor, lo: number, hi: number, align: number): {
  view: BufferView;
  skip: number;
} {
  const start = Math.floor((t.offset + lo * 4) / align) * align;
  const end = t.offset + hi * 4;
  return {
    view: { buffer: t.buffer, offset: start, size: end - start },
    skip: (t.offset - start) / 4,
  };
}

// ------------------------------------------------------------------ dispatch

let defaultTuner: Autotuner<MatmulVariant> | null = null;

/** The process-wide matmul tuner (cache file: see `autotune.ts`). */
export function matmulTuner(): Autotuner<MatmulVariant> {
  defaultTuner ??= newAutotuner<MatmulVariant>("matmul", {
    id: variantId,
    parse: parseVariant,
  });
  return defaultTuner;
}

/** The shape class a tuned choice is stored under. */
export function shapeClass(
  M: number,
  N: number,
  K: number,
  batch: number,
  transA: boolean,
  transB: boolean,
): string {
  const b = (x: number) => (x <= 4 ? x : Math.min(2 ** Math.ceil(Math.log2(x)), 8192));
  const bb = batch <= 1 ? 1 : batch <= 16 ? 16 : 256;
  return `${transA ? "T" : "N"}${transB ? "T" : "N"}.m${b(M)}.n${b(N)}.k${b(K)}.b${bb}`;
}

/**
 * The variant `matmul` runs for a shape: the forced one, else the tuned choice for its class,
 * else the adapter-wide tuned default, else `FALLBACK_VARIANT` (register blocks shrunk to
 * tiny shapes). Never measures.
 */
export function selectMatmulVariant(
  gpu: Gpu,
  shape: MatmulShape,
  internal: MatmulInternal = {},
): MatmulVariant {
  const { M, N, K } = shape;
  const batch = shape.batch ?? 1;
  const transA = shape.transA ?? false;
  const transB = shape.transB ?? false;
  if (internal.variant) {
    if (!validVariant(internal.variant)) {
      throw new RangeError(`matmul: invalid variant ${JSON.stringify(internal.variant)}`);
    }
    return internal.variant;
  }
  const tuner = internal.tuner ?? matmulTuner();
  const name = gpu.adapter.name;
  const tuned = tuner.lookup(name, shapeClass(M, N, K, batch, transA, transB));
  if (tuned) return tuned;
  return fitVariant(tuner.lookup(name, "default") ?? FALLBACK_VARIANT, M, N);
}

function checkInt(name: string, v: number, min = 0): void {
  if (!Number.isInteger(v) || v < min) {
    throw new RangeError(`matmul: ${name} must be an integer ≥ ${min}, got ${v}`);
  }
}

function checkF32(name: string, t: GpuTensor): void {
  if (t.dtype !== "f32") throw new TypeError(`matmul: '${name}' must be f32, got ${t.dtype}`);
  if (t.released) throw new Error(`matmul: '${name}' [${t.shape}] was already released`);
}

/**
 * One strided (optionally two-level batched) multiply into `out`, with the fused epilogue.
 * Offsets, row strides and batch strides are in elements of each tensor; every element the
 * multiply touches must lie inside its tensor. Splits the dispatch when a binding would exceed
 * the adapter's limit.
 */
export function matmulStrided(
  gpu: Gpu,
  spec: MatmulStridedSpec,
  internal: MatmulInternal = {},
): void {
  const { a, b, out, M, N, K } = spec;
  const transA = spec.transA ?? false;
  const transB = spec.transB ?? false;
  for (const [n, v] of [["M", M], ["N", N], ["K", K]] as const) checkInt(n, v);
  checkF32("a", a);
  checkF32("b", b);
  checkF32("out", out);
  const [outer, inner] = typeof spec.batch === "object"
    ? [spec.batch[0], spec.batch[1]]
    : [1, spec.batch ?? 1];
  checkInt("batch", outer);
  checkInt("batch", inner);
  if (M === 0 || N === 0 || outer === 0 || inner === 0) return;
  const activation = spec.activation ?? "none";
  if (activation !== "none" && activation !== "gelu") {
    throw new RangeError(`matmul: unknown activation '${activation}'; use "none" or "gelu"`);
  }
  const lay = (
    t: GpuTensor,
    name: string,
    off: number | undefined,
    ld: number | undefined,
    ldDefault: number,
    stride: number | readonly [number, number] | undefined,
    rows: number,
  ): Layout => {
    const l = ld ?? ldDefault;
    const [s1, s0] = twoLevel(stride, [inner * rows * l, rows * l]);
    const lay: Layout = { t, name, off: off ?? 0, ld: l, s0, s1 };
    for (const [k, v] of Object.entries({ off: lay.off, ld: l, s0, s1 })) {
      checkInt(`${name}.${k}`, v);
    }
    return lay;
  };
  const A = lay(a, "a", spec.offsetA, spec.lda, transA ? M : K, spec.strideA, transA ? K : M);
  const B = lay(b, "b", spec.offsetB, spec.ldb, transB ? K : N, spec.strideB, transB ? N : K);
  const O = lay(out, "out", spec.offsetOut, spec.ldo, N, spec.strideOut, M);
  let R: Layout | null = null;
  if (spec.residual) {
    checkF32("residual", spec.residual);
    R = lay(
      spec.residual,
      "residual",
      spec.offsetResidual ?? O.off,
      spec.ldr ?? O.ld,
      N,
      spec.strideResidual ?? [O.s1, O.s0],
      M,
    );
  }
  for (const [name, t] of [["bias", spec.bias], ["scale", spec.scale]] as const) {
    if (!t) continue;
    checkF32(name, t);
    if (t.numel !== N) {
      throw new RangeError(`matmul: ${name} has shape [${t.shape}] but N is ${N}; expected [${N}]`);
    }
  }
  const ops = operands({ M, N, K, transA, transB }, A, B, O, R);
  for (const op of ops) {
    const [lo, hi] = op.extent(0, outer, 0, inner, 0, M);
    if (K === 0 && op.lay !== O && op.lay !== R) continue;
    if (lo < 0 || hi > op.lay.t.numel) {
      throw new RangeError(
        `matmul: '${op.lay.name}' [${op.lay.t.shape}] is too small for M=${M} N=${N} K=${K} ` +
          `batch=[${outer},${inner}] with offset ${op.lay.off}, ld ${op.lay.ld}, strides ` +
          `[${op.lay.s1},${op.lay.s0}]: elements up to ${hi} are needed, it has ${op.lay.t.numel}`,
      );
    }
  }
  const variant = selectMatmulVariant(
    gpu,
    { M, N, K, batch: outer * inner, transA, transB },
    internal,
  );
  const plain = !spec.bias && !spec.scale && !R && activation === "none";
  if (variant.kind === "reg" && variant.kChunk && K > variant.kChunk && plain) {
    // Split-K over consecutive dispatches: alpha distributes over the partial sums, and every
    // chunk after the first accumulates. Batch strides stay those of the whole operands.
    const kc = variant.kChunk;
    const whole: MatmulVariant = { ...variant, kChunk: undefined };
    for (let k0 = 0; k0 < K; k0 += kc) {
      matmulStrided(gpu, {
        ...spec,
        K: Math.min(kc, K - k0),
        offsetA: A.off + (transA ? k0 * A.ld : k0),
        offsetB: B.off + (transB ? k0 : k0 * B.ld),
        lda: A.ld,
        ldb: B.ld,
        strideA: [A.s1, A.s0],
        strideB: [B.s1, B.s0],
        accumulate: (spec.accumulate ?? false) || k0 > 0,
      }, { ...internal, variant: whole });
    }
    return;
  }
  // K = 0 is an empty sum: the kernel runs only its epilogue, and A/B get 1-element scalar
  // windows that are never read.
  const vec = vecFlags(M, N, K, transA, transB, A, B, O, R);
  if (K === 0) vec.a = vec.b = false;
  const ks: KernelSpec = {
    variant,
    transA,
    transB,
    vecA: vec.a,
    vecB: vec.b,
    vecO: vec.o,
    bias: !!spec.bias,
    gelu: activation === "gelu",
    scale: !!spec.scale,
    residual: !!R,
    accumulate: spec.accumulate ?? false,
  };
  const k = matmulKernel(ks);
  const block = blockOf(variant);
  const align = gpu.limits.minStorageBufferOffsetAlignment;
  const maxBytes = Math.min(
    internal.maxBindingBytes ?? Infinity,
    gpu.limits.maxStorageBufferBindingSize,
  );
  const maxWg = gpu.limits.maxComputeWorkgroupsPerDimension;
  const gx = Math.ceil(N / block.cols);
  if (gx > maxWg) {
    throw new GpuLimitError(
      `matmul: N=${N} needs ${gx} workgroups along x, over maxComputeWorkgroupsPerDimension ` +
        `(${maxWg}); split the output columns`,
    );
  }
  const chunks = planChunks(
    K === 0 ? ops.slice(2) : ops,
    outer,
    inner,
    M,
    block.rows,
    maxBytes,
    maxWg,
    align,
  );
  const small = (t: GpuTensor): BufferView => windowOf(t, 0, 1, align).view;
  const extras = (t: GpuTensor) => windowOf(t, 0, t.numel, align);
  const biasW = spec.bias ? extras(spec.bias) : null;
  const scaleW = spec.scale ? extras(spec.scale) : null;
  for (const c of chunks) {
    const views: BufferView[] = [];
    const offs: number[] = [];
    for (const [i, op] of ops.entries()) {
      if (K === 0 && i < 2) {
        views.push(small(op.lay.t));
        offs.push(0);
        continue;
      }
      const [lo, hi] = op.extent(c.o0, c.o0 + c.no, c.i0, c.i0 + c.ni, c.r0, c.r0 + c.nr);
      const w = windowOf(op.lay.t, lo, hi, align);
      views.push(w.view);
      offs.push(w.skip + op.lay.off + op.start(c.o0, c.i0, c.r0));
    }
    const bufs: BufferView[] = [views[0], views[1], views[2]];
    if (biasW) bufs.push(biasW.view);
    if (scaleW) bufs.push(scaleW.view);
    if (R) bufs.push(views[3]);
    const P: Record<ParamName, number> = {
      M: c.nr,
      N,
      K,
      lda: A.ld,
      ldb: B.ld,
      ldo: O.ld,
      ldr: R?.ld ?? 0,
      offA: offs[0],
      offB: offs[1],
      offO: offs[2],
      offR: R ? offs[3] : 0,
      offBias: biasW?.skip ?? 0,
      offScale: scaleW?.skip ?? 0,
      bInner: c.ni,
      sA0: A.s0,
      sA1: A.s1,
      sB0: B.s0,
      sB1: B.s1,
      sO0: O.s0,
      sO1: O.s1,
      sR0: R?.s0 ?? 0,
      sR1: R?.s1 ?? 0,
    };
    const params = new Params(UNIFORM_BYTES);
    for (const f of PARAM_FIELDS) params.u32(P[f]);
    params.f32(spec.alpha ?? 1);
    gpu.dispatch(k, bufs, [gx, Math.ceil(c.nr / block.rows), c.no * c.ni], params.bytes);
  }
}

/**
 * Which operands can be read as vec4: every address must be a multiple of 4 elements and no
 * vec4 may straddle the end of a row. Along K that needs K % 4 == 0; along M (transposed A) or
 * N (plain B) it needs M % 4 == 0 or N % 4 == 0, and the tile rows/columns to be multiples
 * of 4 (they are, see `validVariant`). out and residual go vec4 along N when N % 4 == 0.
 */
function vecFlags(
  M: number,
  N: number,
  K: number,
  transA: boolean,
  transB: boolean,
  A: Layout,
  B: Layout,
  O: Layout,
  R: Layout | null,
): { a: boolean; b: boolean; o: boolean } {
  const aligned = (l: Layout) =>
    l.off % 4 === 0 && l.ld % 4 === 0 && l.s0 % 4 === 0 && l.s1 % 4 === 0 &&
    (l.t.offset / 4) % 4 === 0;
  return {
    a: aligned(A) && (transA ? M % 4 === 0 : K % 4 === 0),
    b: aligned(B) && (transB ? K % 4 === 0 : N % 4 === 0),
    o: N % 4 === 0 && aligned(O) && (!R || aligned(R)),
  };
}

/** Batch dims broadcast numpy-style; throws naming both shapes when they do not. */
function broadcastBatch(a: readonly number[], b: readonly number[]): number[] {
  const n = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const x = a[a.length - n + i] ?? 1;
    const y = b[b.length - n + i] ?? 1;
    if (x !== y && x !== 1 && y !== 1) {
      throw new RangeError(
        `matmul: batch dims [${a}] and [${b}] do not broadcast (dim ${i}: ${x} vs ${y})`,
      );
    }
    out.push(Math.max(x, y));
  }
  return out;
}

/** Element strides of a contiguous operand's batch dims within `outBatch` (0 = broadcast). */
function batchStrides(
  batch: readonly number[],
  outBatch: readonly number[],
  mat: number,
): number[] {
  const n = outBatch.length;
  const strides = new Array<number>(n).fill(0);
  let s = mat;
  for (let i = n - 1; i >= 0; i--) {
    const d = batch[batch.length - n + i] ?? 1;
    strides[i] = d === 1 ? 0 : s;
    s *= d;
  }
  return strides;
}

/** Dims of the matrices of a and b after transposition flags: M, K (from a), N (from b). */
function matDims(
  a: GpuTensor,
  b: GpuTensor,
  transA: boolean,
  transB: boolean,
): { M: number; K: number; N: number } {
  if (a.shape.length < 2 || b.shape.length < 2) {
    throw new RangeError(
      `matmul: operands need at least 2 dims, got a [${a.shape}] and b [${b.shape}]; ` +
        `reshape vectors to [1, n] or [n, 1]`,
    );
  }
  const [a0, a1] = a.shape.slice(-2);
  const [b0, b1] = b.shape.slice(-2);
  const M = transA ? a1 : a0;
  const K = transA ? a0 : a1;
  const Kb = transB ? b1 : b0;
  const N = transB ? b0 : b1;
  if (K !== Kb) {
    throw new RangeError(
      `matmul: a [${a.shape}] (transA=${transA}) has K=${K} but b [${b.shape}] ` +
        `(transB=${transB}) has K=${Kb}; check the transpose flags`,
    );
  }
  return { M, K, N };
}

/**
 * out = residual + scale ⊙ act(alpha · op(a) · op(b) + bias), batch dims broadcast numpy-style.
 * Returns a new tensor of shape [...batch, M, N], or `opts.accumulate` after adding into it.
 */
export function matmul(
  gpu: Gpu,
  a: GpuTensor,
  b: GpuTensor,
  opts: MatmulOptions = {},
  internal: MatmulInternal = {},
): GpuTensor {
  const transA = opts.transA ?? false;
  const transB = opts.transB ?? false;
  const { M, K, N } = matDims(a, b, transA, transB);
  const aBatch = a.shape.slice(0, -2);
  const bBatch = b.shape.slice(0, -2);
  const outBatch = broadcastBatch(aBatch, bBatch);
  const outShape = [...outBatch, M, N];
  for (const [name, t] of [["residual", opts.residual], ["accumulate", opts.accumulate]] as const) {
    if (t && (t.shape.length !== outShape.length || t.shape.some((d, i) => d !== outShape[i]))) {
      throw new RangeError(
        `matmul: ${name} has shape [${t.shape}] but the output is [${outShape}]`,
      );
    }
  }
  const out = opts.accumulate ?? gpu.empty(outShape, "f32", "matmul");
  if (numel(outShape) === 0) return out;
  const sA = batchStrides(aBatch, outBatch, M * K);
  const sB = batchStrides(bBatch, outBatch, K * N);
  const sO = batchStrides(outBatch, outBatch, M * N);
  // Collapse batch dims that are one stride progression for every operand.
  const dims = collapse(outBatch, [sA, sB, sO]);
  const base = {
    a,
    b,
    out,
    N,
    K,
    transA,
    transB,
    alpha: opts.alpha,
    bias: opts.bias,
    activation: opts.activation,
    scale: opts.scale,
    residual: opts.residual,
    accumulate: !!opts.accumulate,
  };
  // A weight shared by every batch with plain row-major A: one tall multiply instead.
  const foldable = dims.sizes.length === 1 && dims.strides[1][0] === 0 && !transA &&
    dims.strides[0][0] === M * K;
  if (dims.sizes.length === 0 || foldable) {
    const rows = dims.sizes.length ? dims.sizes[0] * M : M;
    matmulStrided(gpu, { ...base, M: rows }, internal);
    return out;
  }
  // Two innermost collapsed dims go to the kernel; any further ones loop here.
  const nd = dims.sizes.length;
  const inner = dims.sizes[nd - 1];
  const outer = nd >= 2 ? dims.sizes[nd - 2] : 1;
  const loops = dims.sizes.slice(0, Math.max(0, nd - 2));
  const pick = (op: number, d: number) => dims.strides[op][d];
  const total = loops.reduce((x, y) => x * y, 1);
  for (let l = 0; l < total; l++) {
    let rem = l;
    const off = [0, 0, 0];
    for (let d = loops.length - 1; d >= 0; d--) {
      const i = rem % loops[d];
      rem = Math.floor(rem / loops[d]);
      for (let op = 0; op < 3; op++) off[op] += i * pick(op, d);
    }
    const two = (op: number): [number, number] => [
      nd >= 2 ? pick(op, nd - 2) : 0,
      pick(op, nd - 1),
    ];
    matmulStrided(gpu, {
      ...base,
      M,
      batch: [outer, inner],
      offsetA: off[0],
      offsetB: off[1],
      offsetOut: off[2],
      strideA: two(0),
      strideB: two(1),
      strideOut: two(2),
    }, internal);
  }
  return out;
}

/** Merges adjacent batch dims when every operand's strides chain; drops size-1 dims. */
function collapse(
  sizes: readonly number[],
  strides: number[][],
): { sizes: number[]; strides: number[][] } {
  const outS: number[] = [];
  const outT: number[][] = strides.map(() => []);
  for (let d = 0; d < sizes.length; d++) {
    if (sizes[d] === 1) continue;
    const last = outS.length - 1;
    if (last >= 0 && strides.every((s, op) => outT[op][last] === s[d] * sizes[d])) {
      outS[last] *= sizes[d];
      for (let op = 0; op < strides.length; op++) outT[op][last] = strides[op][d];
    } else {
      outS.push(sizes[d]);
      for (let op = 0; op < strides.length; op++) outT[op].push(strides[op][d]);
    }
  }
  return { sizes: outS, strides: outT };
}

// ------------------------------------------------------------------ tuning

/** A shape to tune for (per-batch matrix sizes). */
export interface MatmulShape {
  M: number;
  N: number;
  K: number;
  batch?: number;
  transA?: boolean;
  transB?: boolean;
}

/** What `tuneMatmul` decided for one shape class. */
export interface MatmulTuning {
  key: string;
  choice: string;
  ms: number;
  /** Best ms of every candidate (null: failed or skipped). */
  timings: Record<string, number | null>;
  /** True when the choice came from the cache. */
  cached: boolean;
}

/**
 * Measures the candidates on the running adapter for each shape's class (skipping classes
 * already tuned unless `force`), records the fastest, and refreshes the adapter-wide default:
 * the candidate with the best geometric-mean slowdown over every class tuned so far.
 */
export async function tuneMatmul(
  gpu: Gpu,
  shapes: readonly MatmulShape[],
  opts: {
    tuner?: Autotuner<MatmulVariant>;
    candidates?: readonly MatmulVariant[];
    iters?: number;
    force?: boolean;
  } = {},
): Promise<MatmulTuning[]> {
  const tuner = opts.tuner ?? matmulTuner();
  const candidates = opts.candidates ?? MATMUL_CANDIDATES;
  const results: MatmulTuning[] = [];
  const seen = new Set<string>();
  for (const sh of shapes) {
    const transA = sh.transA ?? false;
    const transB = sh.transB ?? false;
    const batch = sh.batch ?? 1;
    const key = shapeClass(sh.M, sh.N, sh.K, batch, transA, transB);
    if (seen.has(key)) continue;
    seen.add(key);
    const rnd = (n: number) => {
      const x = new Float32Array(n);
      for (let i = 0; i < n; i++) x[i] = ((i * 2654435761) % 1000) / 1000 - 0.5;
      return x;
    };
    const a = gpu.tensor(rnd(batch * sh.M * sh.K));
    const b = gpu.tensor(rnd(batch * sh.K * sh.N));
    const out = gpu.empty([batch * sh.M * sh.N]);
    try {
      const r = await tuner.tune(
        gpu,
        key,
        candidates,
        (variant) => () =>
          matmulStrided(gpu, { a, b, out, M: sh.M, N: sh.N, K: sh.K, batch, transA, transB }, {
            variant,
          }),
        { iters: opts.iters, force: opts.force },
      );
      results.push({
        key,
        choice: r.record.choice,
        ms: r.record.ms,
        timings: r.record.timings,
        cached: r.cached,
      });
    } finally {
      gpu.release(a, b, out);
    }
  }
  refreshDefault(gpu.adapter.name, tuner);
  return results;
}

/** Re-derives the adapter-wide default from every tuned class of this adapter. */
function refreshDefault(adapter: string, tuner: Autotuner<MatmulVariant>): void {
  const records = Object.entries(tuner.cache.entries(adapter, tuner.op))
    .filter(([k]) => k !== "default")
    .map(([, r]) => r);
  if (!records.length) return;
  const ids = new Set(records.flatMap((r) => Object.keys(r.timings)));
  let best: string | null = null;
  let bestScore = Infinity;
  const scores: Record<string, number | null> = {};
  for (const id of ids) {
    if (!parseVariant(id)) continue;
    // A candidate that failed or was not measured for a class counts as 10× slower there.
    const logs = records.map((r) => Math.log((r.timings[id] ?? 10 * r.ms) / r.ms));
    const score = Math.exp(logs.reduce((x, y) => x + y, 0) / logs.length);
    scores[id] = score;
    if (score < bestScore) {
      best = id;
      bestScore = score;
    }
  }
  if (!best) return;
  const prev = tuner.cache.get(adapter, tuner.op, "default");
  if (prev?.choice === best && prev.ms === bestScore) return;
  tuner.record(adapter, "default", {
    choice: best,
    ms: bestScore,
    timings: scores,
    at: new Date().toISOString(),
  });
}

// ------------------------------------------------------------------ backward

/**
 * Backward of out = alpha·op(A)·op(B) (no epilogue). Returns gradients shaped like a and b;
 * a gradient of an operand broadcast over batch dims is summed over them. Either may be
 * skipped with needA / needB = false.
 */
export function matmulBackward(
  gpu: Gpu,
  dy: GpuTensor,
  a: GpuTensor,
  b: GpuTensor,
  opts: {
    transA?: boolean;
    transB?: boolean;
    alpha?: number;
    needA?: boolean;
    needB?: boolean;
  } = {},
  internal: MatmulInternal = {},
): { da?: GpuTensor; db?: GpuTensor } {
  const transA = opts.transA ?? false;
  const transB = opts.transB ?? false;
  const alpha = opts.alpha ?? 1;
  const { M, N } = matDims(a, b, transA, transB);
  const outBatch = broadcastBatch(a.shape.slice(0, -2), b.shape.slice(0, -2));
  const outShape = [...outBatch, M, N];
  if (dy.shape.length !== outShape.length || dy.shape.some((d, i) => d !== outShape[i])) {
    throw new RangeError(
      `matmulBackward: dy has shape [${dy.shape}] but the forward output was [${outShape}]`,
    );
  }
  const res: { da?: GpuTensor; db?: GpuTensor } = {};
  if (opts.needA ?? true) {
    // op(A) = alpha·dY·op(B)ᵀ; stored A = that, or its transpose when transA.
    res.da = transA
      ? gradFor(gpu, a, b, dy, { transA: transB, transB: true, alpha }, internal)
      : gradFor(gpu, a, dy, b, { transA: false, transB: !transB, alpha }, internal);
  }
  if (opts.needB ?? true) {
    res.db = transB
      ? gradFor(gpu, b, dy, a, { transA: true, transB: transA, alpha }, internal)
      : gradFor(gpu, b, a, dy, { transA: !transA, transB: false, alpha }, internal);
  }
  return res;
}

/** The same pooled buffer under another shape, still owned (unlike `reshape`'s view). */
function retag(t: GpuTensor, shape: readonly number[]): GpuTensor {
  if (t.shape.length === shape.length && t.shape.every((d, i) => d === shape[i])) return t;
  if (numel(shape) !== t.numel) throw new RangeError(`cannot retag [${t.shape}] as [${shape}]`);
  return new GpuTensor(t.buffer, shape, t.dtype, t.offset, t.pooled);
}

/**
 * x·y (with flags) reduced to `like`'s shape. When `like` has its own batch dims everywhere
 * this is one batched matmul; when it was broadcast, the batch is summed: folded into K where
 * both factors allow it, otherwise computed per batch and reduced with a ones-vector matmul.
 */
function gradFor(
  gpu: Gpu,
  like: GpuTensor,
  x: GpuTensor,
  y: GpuTensor,
  o: { transA: boolean; transB: boolean; alpha: number },
  internal: MatmulInternal,
): GpuTensor {
  const full = broadcastBatch(x.shape.slice(0, -2), y.shape.slice(0, -2));
  const likeBatch = like.shape.slice(0, -2);
  const padded = [...new Array(full.length - likeBatch.length).fill(1), ...likeBatch];
  if (padded.every((d, i) => d === full[i])) {
    return retag(matmul(gpu, x, y, o, internal), like.shape);
  }
  const rows = like.shape[like.shape.length - 2];
  const cols = like.shape[like.shape.length - 1];
  // Summing over every batch dim with both factors contiguous along the summed K: fold.
  if (likeBatch.every((d) => d === 1) && o.transA && !o.transB) {
    const xb = x.shape.slice(0, -2);
    const yb = y.shape.slice(0, -2);
    const nb = full.reduce((p, q) => p * q, 1);
    const xn = xb.reduce((p, q) => p * q, 1);
    const yn = yb.reduce((p, q) => p * q, 1);
    if (xn === nb && yn === nb) {
      // xᵀ·y summed over batches = [x_1; x_2; …]ᵀ·[y_1; y_2; …] with the batches stacked as rows.
      const kx = x.shape[x.shape.length - 2];
      const x2 = x.reshape([nb * kx, x.shape[x.shape.length - 1]]);
      const y2 = y.reshape([nb * kx, y.shape[y.shape.length - 1]]);
      return retag(matmul(gpu, x2, y2, o, internal), like.shape);
    }
  }
  const per = matmul(gpu, x, y, o, internal); // [...full, rows, cols]
  const reduced = sumBatchTo(gpu, per, full, padded, rows * cols, internal);
  return retag(reduced, like.shape);
}

/**
 * Sums `t` (batch `from`, matrices of `mat` elements) down to batch `to` (same rank, 1 where
 * summed), one run of summed dims at a time. Each run is a matmul with a ones vector, laid out
 * as curᵀ·1 so the long dimension is M (which the dispatch can split) rather than N.
 * Consumes `t` (releases it).
 */
function sumBatchTo(
  gpu: Gpu,
  t: GpuTensor,
  from: readonly number[],
  to: readonly number[],
  mat: number,
  internal: MatmulInternal,
): GpuTensor {
  let cur = t;
  let shape = [...from];
  for (let d = 0; d < shape.length; d++) {
    if (shape[d] === to[d]) continue;
    let e = d;
    while (e + 1 < shape.length && shape[e + 1] !== to[e + 1]) e++;
    const outer = shape.slice(0, d).reduce((p, q) => p * q, 1);
    const r = shape.slice(d, e + 1).reduce((p, q) => p * q, 1);
    const inner = shape.slice(e + 1).reduce((p, q) => p * q, 1) * mat;
    const ones = gpu.tensor(new Float32Array(r).fill(1), [r, 1]);
    const next = gpu.empty([outer, inner, 1]);
    // cur[outer] stored [r, inner] read transposed, times ones [r, 1] → [inner, 1] per outer.
    matmulStrided(gpu, {
      a: cur,
      b: ones,
      out: next,
      M: inner,
      N: 1,
      K: r,
      batch: outer,
      transA: true,
      strideA: r * inner,
      strideB: 0,
      strideOut: inner,
    }, internal);
    gpu.release(ones, cur);
    cur = next;
    shape = [...shape.slice(0, d), ...new Array(e - d + 1).fill(1), ...shape.slice(e + 1)];
    d = e;
  }
  return cur;
}

// ------------------------------------------------------------------ reference

/**
 * The definition on the host: float64 accumulation, numpy batch broadcasting, the same
 * epilogue (bias, exact GELU, LayerScale, residual, accumulate). Returns the new output.
 */
export function matmulRef(
  a: Float32Array,
  aShape: number[],
  b: Float32Array,
  bShape: number[],
  opts: MatmulRefOptions = {},
): Float32Array {
  const transA = opts.transA ?? false;
  const transB = opts.transB ?? false;
  const alpha = opts.alpha ?? 1;
  if (a.length !== numel(aShape) || b.length !== numel(bShape)) {
    throw new RangeError(`matmulRef: data lengths do not match shapes [${aShape}] / [${bShape}]`);
  }
  const [a0, a1] = aShape.slice(-2);
  const [b0, b1] = bShape.slice(-2);
  const M = transA ? a1 : a0;
  const K = transA ? a0 : a1;
  const N = transB ? b0 : b1;
  if ((transB ? b1 : b0) !== K) {
    throw new RangeError(`matmulRef: K mismatch between [${aShape}] and [${bShape}]`);
  }
  const outBatch = broadcastBatch(aShape.slice(0, -2), bShape.slice(0, -2));
  const sA = batchStrides(aShape.slice(0, -2), outBatch, M * K);
  const sB = batchStrides(bShape.slice(0, -2), outBatch, K * N);
  const nb = outBatch.reduce((p, q) => p * q, 1);
  const out = new Float32Array(nb * M * N);
  for (let bi = 0; bi < nb; bi++) {
    let rem = bi;
    let offA = 0;
    let offB = 0;
    for (let d = outBatch.length - 1; d >= 0; d--) {
      const i = rem % outBatch[d];
      rem = Math.floor(rem / outBatch[d]);
      offA += i * sA[d];
      offB += i * sB[d];
    }
    for (let m = 0; m < M; m++) {
      for (let n = 0; n < N; n++) {
        let s = 0;
        for (let k = 0; k < K; k++) {
          const av = a[offA + (transA ? k * M + m : m * K + k)];
          const bv = b[offB + (transB ? n * K + k : k * N + n)];
          s += av * bv;
        }
        let v = alpha * s;
        if (opts.bias) v += opts.bias[n];
        if (opts.activation === "gelu") v = geluRef(v);
        if (opts.scale) v *= opts.scale[n];
        const o = bi * M * N + m * N + n;
        if (opts.residual) v += opts.residual[o];
        if (opts.accumulate) v += opts.accumulate[o];
        out[o] = v;
      }
    }
  }
  return out;
}

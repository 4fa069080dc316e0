/**
 * Shipped kernel defaults per adapter class (`adapters.ts`): what runs before anything is tuned
 * on the running adapter, which candidates tuning considers there, and the cost-model numbers
 * that prune candidates before any is measured (`matmul/cost.ts`). Tuned choices (cached by
 * `autotune.ts`) override these.
 *
 * Only the software class could be measured where bloom is developed (llvmpipe, 2 cores; see
 * `basis`). The GPU classes are unmeasured choices among the workgroup-tiled kernels, each with
 * its reason; tuning on such a GPU replaces them with measurements.
 */
import { type AdapterClass, adapterClass } from "./adapters.ts";
import type { AttentionPlan, AttentionVariant } from "./attention.ts";
import type { MatmulVariant } from "./matmul/variants.ts";
import type { AdapterDescription } from "./runtime.ts";

/** The cost model's view of one matmul kernel family on a class (see `matmul/cost.ts`). */
export interface MatmulCostModel {
  /**
   * Fraction of the FMA peak a register block of `tm × tn` outputs per invocation reaches on
   * large shapes: `min(cap, slope · tm·tn / (tm + tn))` (loads per FMA fall as the block grows,
   * until accumulators spill), per family; tiled kernels a flat fraction.
   */
  reg: { slope: number; cap: number };
  tex: { slope: number; cap: number };
  tiled: number;
  /**
   * Cost of moving one element into a texture (the `tex` kernel's copies), in FLOPs at the
   * FMA peak: a copy streams memory, which on a CPU adapter is slow against its FMA rate.
   */
  texCopyFlops: number;
  /** Pipeline compile time per output of a register block (ms · tm·tn); 0 where negligible. */
  compileMsPerOutput: number;
}

/** Everything shipped for one adapter class. */
export interface ClassDefaults {
  /** True when the entries below were measured on an adapter of this class. */
  measured: boolean;
  /** Where the numbers come from (measured: date, adapter, figures; else the reasoning). */
  basis: string;
  matmul: {
    /** Linear layers: the forward x·Wᵀ and the input gradient dy·W (A plain). */
    general: MatmulVariant;
    /** A transposed with a long sum: the weight gradient dyᵀ·x (K = tokens). */
    weightGrad: MatmulVariant;
    /** What tuning measures here (after the cost model prunes those that cannot win). */
    candidates: readonly MatmulVariant[];
    cost: MatmulCostModel;
  };
  attention: {
    plan: AttentionPlan;
    /** What tuning measures here. */
    candidates: readonly AttentionVariant[];
    /**
     * Cold pipeline compile time (ms) of a `rows`-row kernel: forward `fwdPerRow · rows`,
     * dQ and dK/dV `bwdPerRow2 · rows²` each (their register rows multiply).
     */
    compile: { fwdPerRow: number; bwdPerRow2: number };
  };
  /** Cap on threads per row of the row kernels (softmax, layer norm, …). */
  rowCap: number;
  /** A rough FMA peak of the class in GFLOP/s, for ETAs before anything was measured. */
  peakGflops: number;
}

const REG16: MatmulVariant = { kind: "reg", tm: 16, tn: 16, wgm: 8, wgn: 2 };
const REG16_SPLITK: MatmulVariant = { kind: "reg", tm: 16, tn: 16, wgm: 8, wgn: 2, kChunk: 512 };
const REG8: MatmulVariant = { kind: "reg", tm: 8, tn: 8, wgm: 8, wgn: 8 };
const TEX_32x24: MatmulVariant = { kind: "tex", tm: 32, tn: 24, wgm: 8, wgn: 1 };
const TEX_32x32: MatmulVariant = { kind: "tex", tm: 32, tn: 32, wgm: 8, wgn: 1 };
const TEX_24x32: MatmulVariant = { kind: "tex", tm: 24, tn: 32, wgm: 8, wgn: 1 };
const TILED_64: MatmulVariant = { kind: "tiled", bm: 64, bn: 64, bk: 16, tm: 4, tn: 4 };
const TILED_128x64: MatmulVariant = { kind: "tiled", bm: 128, bn: 64, bk: 16, tm: 8, tn: 4 };
const TILED_128: MatmulVariant = { kind: "tiled", bm: 128, bn: 128, bk: 8, tm: 8, tn: 8 };

const ROWS4: AttentionVariant = { kind: "rows", wg: 8, rows: 4, block: 1, dot: "vec" };
const ROWS8: AttentionVariant = { kind: "rows", wg: 8, rows: 8, block: 2, dot: "scalar" };
const ROWS16: AttentionVariant = { kind: "rows", wg: 8, rows: 16, block: 2, dot: "scalar" };
const TEX8: AttentionVariant = { ...ROWS8, tex: true };
const TEX12: AttentionVariant = {
  kind: "rows",
  wg: 8,
  rows: 12,
  block: 2,
  dot: "scalar",
  tex: true,
};
const TEX16: AttentionVariant = { ...ROWS16, tex: true };
const WG64: AttentionVariant = { kind: "rows", wg: 64, rows: 1, block: 4, dot: "vec" };
const TILED_T32: AttentionVariant = {
  kind: "tiled",
  wg: 64,
  rows: 1,
  block: 4,
  tile: 32,
  dot: "vec",
};
const TILED_T64: AttentionVariant = {
  kind: "tiled",
  wg: 128,
  rows: 1,
  block: 4,
  tile: 64,
  dot: "vec",
};

/** Cost model of a CPU rasteriser (llvmpipe measured; SwiftShader runs the same kernels). */
const CPU_COST: MatmulCostModel = {
  reg: { slope: 0.05, cap: 0.42 },
  tex: { slope: 0.045, cap: 0.62 },
  tiled: 0.04,
  // ~6 GB/s of copy against ~40 GFLOP/s: one 4-byte element costs ~27 FLOPs.
  texCopyFlops: 27,
  // 32×24 compiles in ~2–3 s, 32×32 in 4–5 s, 16×16 in ~1 s (cold Mesa cache).
  compileMsPerOutput: 4,
};

/** GPU cost model: every family at full speed (nothing measured), copies cheap, compiles fast. */
const GPU_COST: MatmulCostModel = {
  reg: { slope: 0.1, cap: 0.5 },
  tex: { slope: 0.1, cap: 0.5 },
  tiled: 0.8,
  texCopyFlops: 4,
  compileMsPerOutput: 0,
};

const GPU_MATMUL_CANDIDATES: readonly MatmulVariant[] = [TILED_64, TILED_128x64, TILED_128, REG8];
const GPU_ATTENTION_CANDIDATES: readonly AttentionVariant[] = [ROWS4, WG64, TILED_T32, TILED_T64];
const GPU_ATTENTION_DEFAULTS: ClassDefaults["attention"] = {
  // Key/value tiles in workgroup memory, one query row per thread: the FlashAttention shape.
  plan: { forward: TILED_T32, dq: TILED_T32, dkv: TILED_T32 },
  candidates: GPU_ATTENTION_CANDIDATES,
  compile: { fwdPerRow: 0, bwdPerRow2: 0 },
};

/** An unmeasured GPU class: one tiled kernel for every matmul role, tiled attention. */
function gpuDefaults(general: MatmulVariant, peakGflops: number, basis: string): ClassDefaults {
  return {
    measured: false,
    basis,
    matmul: { general, weightGrad: general, candidates: GPU_MATMUL_CANDIDATES, cost: GPU_COST },
    attention: GPU_ATTENTION_DEFAULTS,
    rowCap: 256,
    peakGflops,
  };
}

/** The table; the type checker proves every class has an entry. */
export const KERNEL_DEFAULTS: { readonly [C in AdapterClass]: ClassDefaults } = {
  software: {
    measured: true,
    basis: "measured 2026-12-03 on llvmpipe (LLVM 15.0.6, 256 bits), 2 shared cores, as " +
      "CPU-time ratios to the FMA-peak kernel: tex-32x24-8x1 0.53–0.65 on 1024³ and the ViT-S " +
      "b32 linears (reg-16x16-8x2 0.37–0.42, tex-32x32 0.57–0.66 but 5 s to compile, " +
      "tiled ~0.04); split-K reg-16x16-8x2-k512 ~2× on the weight gradient; attention " +
      "forward rows 12 from a texture 0.36 (rows 4 from storage 0.19, rows 16 0.27, rows 16 " +
      "from a texture 0.35 but 7 s to compile); dQ, dK-dV rows 4 (rows 8 13–19 % faster but " +
      "7 s to compile, rows 16 ~1 min); row-kernel cap 8 (cap 1 within 3 %)",
    matmul: {
      general: TEX_32x24,
      weightGrad: REG16_SPLITK,
      candidates: [TEX_32x24, TEX_32x32, TEX_24x32, REG16, REG16_SPLITK, REG8, TILED_64],
      cost: CPU_COST,
    },
    attention: {
      // Rows 8 runs dQ / dK-dV 13 % / 19 % faster than rows 4 but compiles for ~7 s each on
      // a cold shader cache, against ~2 s: a first run starts sooner on rows 4, and tuning
      // (budget permitting) moves to rows 8 or 16 where they win.
      plan: { forward: ROWS16, dq: ROWS4, dkv: ROWS4 },
      candidates: [ROWS4, ROWS8, ROWS16, TEX8, TEX12, TEX16],
      // Measured: rows 4 forward ~1 s, rows 16 ~8 s; dQ + dK/dV rows 4 ~5 s, rows 16 ~58 s.
      compile: { fwdPerRow: 500, bwdPerRow2: 115 },
    },
    rowCap: 8,
    peakGflops: 40,
  },
  swiftshader: {
    measured: true,
    basis: "measured 2026-12-03 in Chromium's SwiftShader (the browser app's software " +
      "adapter): llvmpipe's kernels, except that the rows-16 attention forward loses the " +
      "device ('Instance dropped in popErrorScope', its compile outlasts the GPU process's " +
      "watchdog) where rows 4 loads and embeds a ViT-S; so attention stays at rows 4 and " +
      "tuning never tries rows 16",
    matmul: {
      general: TEX_32x24,
      weightGrad: REG16_SPLITK,
      candidates: [TEX_32x24, TEX_24x32, REG16, REG16_SPLITK, REG8],
      cost: CPU_COST,
    },
    attention: {
      plan: { forward: ROWS4, dq: ROWS4, dkv: ROWS4 },
      candidates: [ROWS4, ROWS8, TEX8],
      compile: { fwdPerRow: 500, bwdPerRow2: 115 },
    },
    rowCap: 8,
    peakGflops: 40,
  },
  nvidia: gpuDefaults(
    TILED_128,
    20000,
    "unmeasured: 128×128 output tiles, 8-deep slabs, 8×8 outputs per thread (256 " +
      "threads) is the classic SGEMM blocking on NVIDIA SMs: 64 accumulators fit their 255 " +
      "registers per thread, 8 KiB of shared tiles leaves room for several blocks per SM",
  ),
  amd: gpuDefaults(
    TILED_128x64,
    15000,
    "unmeasured: 64-lane wavefronts favour 256-thread groups; a 128×64 tile with " +
      "16-deep slabs (8×4 outputs per thread) halves the barriers per FMA against 8-deep " +
      "slabs, and LDS has room for it",
  ),
  intel: gpuDefaults(
    TILED_64,
    4000,
    "unmeasured: Intel EUs run SIMD8/16 threads with a small register file, so 4×4 " +
      "outputs per thread (64×64 tiles, 16-deep slabs, 256 threads) avoids spilling",
  ),
  apple: gpuDefaults(
    TILED_64,
    5000,
    "unmeasured: Apple GPUs run 32-wide SIMD groups with 32 KiB of threadgroup memory; " +
      "64×64 tiles with 4×4 outputs per thread keep register use low enough for full occupancy",
  ),
  other: gpuDefaults(
    TILED_64,
    2000,
    "unmeasured, unknown GPU: the smallest workgroup-tiled kernel (64×64, 4×4 per " +
      "thread), which every WebGPU adapter's limits admit",
  ),
};

const byAdapter = new WeakMap<object, ClassDefaults>();

/** The shipped defaults of the running adapter's class. */
export function classDefaults(gpu: { adapter: AdapterDescription }): ClassDefaults {
  let d = byAdapter.get(gpu.adapter);
  if (!d) byAdapter.set(gpu.adapter, d = KERNEL_DEFAULTS[adapterClass(gpu.adapter)]);
  return d;
}

/**
 * A short tag of a candidate list (ids joined), stored with tuning records: a record made from
 * another list (an older bloom) never measured today's candidates against each other.
 */
export function candidateSetTag(
  gpu: { adapter: AdapterDescription },
  ids: readonly string[],
): string {
  let h = 5381;
  const s = ids.join(",");
  for (let i = 0; i < s.length; i++) h = (Math.imul(h, 33) ^ s.charCodeAt(i)) >>> 0;
  return `${adapterClass(gpu.adapter)}:${h.toString(36)}`;
}

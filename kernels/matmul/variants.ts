/**
 * The matmul kernel variants (register-blocked `reg`, its texture-operand form `tex`,
 * workgroup-tiled `tiled`), the candidates the autotuner measures, and how `matmul` picks one
 * for a shape: the tuned choice for its shape class where one was measured against the
 * current candidates, else the shipped default of the adapter's class (`../defaults.ts`).
 */
import { type Autotuner, newAutotuner } from "../autotune.ts";
import { pow2Ceil } from "../common/shape.ts";
import { candidateSetTag, classDefaults, KERNEL_DEFAULTS } from "../defaults.ts";
import type { Gpu } from "../runtime.ts";

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
    /**
     * The register-blocked kernel reading both operands from rgba32float textures (a texel is
     * 4 consecutive elements of a row) that the dispatch copies them into: on llvmpipe a
     * `textureLoad` is a branch-free gather, where a storage load is a per-lane loop with a
     * bounds check per component. Runs where the layouts allow a buffer-to-texture copy
     * (`texEligible`, dispatch.ts); elsewhere the `reg` kernel of the same block runs.
     */
    kind: "tex";
    tm: number;
    tn: number;
    wgm: number;
    wgn: number;
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
  /** Pretend textures hold at most this many rows (tests the `tex` row split). */
  maxTextureRows?: number;
  /** Look choices up in this tuner instead of the process-wide one. */
  tuner?: Autotuner<MatmulVariant>;
}

/** A shape to tune for (per-batch matrix sizes). */
export interface MatmulShape {
  M: number;
  N: number;
  K: number;
  batch?: number;
  transA?: boolean;
  transB?: boolean;
}

/**
 * Stable text form of a variant: "reg-8x8-8x8", "reg-16x16-8x2-k512", "tex-32x16-8x1",
 * "tiled-64x64x16-4x4".
 */
export function variantId(v: MatmulVariant): string {
  switch (v.kind) {
    case "reg":
      return `reg-${v.tm}x${v.tn}-${v.wgm}x${v.wgn}${v.kChunk ? `-k${v.kChunk}` : ""}`;
    case "tex":
      return `tex-${v.tm}x${v.tn}-${v.wgm}x${v.wgn}`;
    case "tiled":
      return `tiled-${v.bm}x${v.bn}x${v.bk}-${v.tm}x${v.tn}`;
  }
}

/** Parses `variantId`'s form; null for anything malformed or invalid. */
export function parseVariant(id: string): MatmulVariant | null {
  let m = /^reg-(\d+)x(\d+)-(\d+)x(\d+)(?:-k(\d+))?$/.exec(id);
  if (m) {
    const v: MatmulVariant = { kind: "reg", tm: +m[1], tn: +m[2], wgm: +m[3], wgn: +m[4] };
    if (m[5] !== undefined) v.kChunk = +m[5];
    return validVariant(v) ? v : null;
  }
  m = /^tex-(\d+)x(\d+)-(\d+)x(\d+)$/.exec(id);
  if (m) {
    const v: MatmulVariant = { kind: "tex", tm: +m[1], tn: +m[2], wgm: +m[3], wgn: +m[4] };
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

export function validVariant(v: MatmulVariant): boolean {
  const pos = (x: number, max: number) => Number.isInteger(x) && x >= 1 && x <= max;
  if (v.kind === "reg" || v.kind === "tex") {
    return pos(v.tm, 64) && pos(v.tn, 64) && v.tm % 4 === 0 && v.tn % 4 === 0 &&
      pos(v.wgm, 256) && pos(v.wgn, 256) && v.wgm * v.wgn <= 256 &&
      (v.kind === "tex" || v.kChunk === undefined ||
        (pos(v.kChunk, 1 << 20) && v.kChunk % 4 === 0));
  }
  return pos(v.tm, 16) && pos(v.tn, 16) && v.tm % 4 === 0 && v.tn % 4 === 0 &&
    pos(v.bk, 64) && v.bk % 4 === 0 && v.bm % v.tm === 0 && v.bn % v.tn === 0 &&
    pos(v.bm, 256) && pos(v.bn, 256) && (v.bm / v.tm) * (v.bn / v.tn) <= 256 &&
    // every thread stages whole vec4s: the slab sizes must divide evenly
    (v.bm * v.bk) % 4 === 0 && (v.bn * v.bk) % 4 === 0;
}

/**
 * Every variant some adapter class tunes (`../defaults.ts` lists each class's own): the tests
 * check each against the reference, the benchmark times each. On llvmpipe the texture-operand
 * 32×24 block wins (~0.55–0.65 of the FMA peak), the buffer 16×16 block reaches ~0.4 and the
 * workgroup-memory kernels ~0.04; those are for real GPUs, where shared tiles are what pays.
 * The split-K form (`kChunk` 512) wins where K is long — the weight gradient, K = tokens:
 * ~2× on llvmpipe, whose caches then hold the panels that consecutive workgroups share.
 */
export const MATMUL_CANDIDATES: readonly MatmulVariant[] = (() => {
  const seen = new Map<string, MatmulVariant>();
  for (const d of Object.values(KERNEL_DEFAULTS)) {
    for (const v of [d.matmul.general, d.matmul.weightGrad, ...d.matmul.candidates]) {
      seen.set(variantId(v), v);
    }
  }
  return [...seen.values()];
})();

export { classDefaults };

/** The portable register-blocked kernel (tests; a safe choice on any adapter). */
export const FALLBACK_VARIANT: MatmulVariant = { kind: "reg", tm: 8, tn: 8, wgm: 8, wgn: 8 };

/**
 * The tag of tuning records made from this class's candidates: a record made from another
 * candidate set (an older bloom) never measured today's defaults, so it does not override them.
 */
export function candidateTag(gpu: Pick<Gpu, "adapter">): string {
  const d = classDefaults(gpu);
  const ids = [d.matmul.general, d.matmul.weightGrad, ...d.matmul.candidates].map(variantId);
  return candidateSetTag(gpu, ids);
}

/** Which shipped default a shape takes: the weight gradient's (A transposed) or the general. */
export function defaultRole(shape: Pick<MatmulShape, "transA">): "general" | "weightGrad" {
  return shape.transA ? "weightGrad" : "general";
}

/** Rows and columns of output one workgroup covers. */
export function blockOf(v: MatmulVariant): { rows: number; cols: number; threads: number } {
  return v.kind !== "tiled"
    ? { rows: v.tm * v.wgm, cols: v.tn * v.wgn, threads: v.wgm * v.wgn }
    : { rows: v.bm, cols: v.bn, threads: (v.bm / v.tm) * (v.bn / v.tn) };
}

/**
 * Shrinks a `reg` variant whose per-invocation block is far larger than the problem (a 16×16
 * block on a 1-row matmul computes 16 copies of the row). A shape rule, not an adapter rule.
 */
export function fitVariant(v: MatmulVariant, M: number, N: number): MatmulVariant {
  if (v.kind === "tiled") return v;
  const shrink = (t: number, d: number) => Math.max(4, Math.min(t, 4 * Math.ceil(d / 4)));
  const tm = shrink(v.tm, M);
  const tn = shrink(v.tn, N);
  return tm === v.tm && tn === v.tn ? v : { ...v, tm, tn };
}

// ------------------------------------------------------------------ selection

let defaultTuner: Autotuner<MatmulVariant> | null = null;

/** The process-wide matmul tuner (cache file: see `autotune.ts`). */
export function matmulTuner(): Autotuner<MatmulVariant> {
  defaultTuner ??= newAutotuner<MatmulVariant>("matmul", {
    id: variantId,
    parse: parseVariant,
  });
  return defaultTuner;
}

/**
 * The largest M, N or K a shape class tells apart: larger dimensions share the
 * class of this one (so tuning may measure a class at this size).
 */
export const SHAPE_CLASS_CAP = 8192;

/** The shape class a tuned choice is stored under. */
export function shapeClass(
  M: number,
  N: number,
  K: number,
  batch: number,
  transA: boolean,
  transB: boolean,
): string {
  const b = (x: number) => (x <= 4 ? x : Math.min(pow2Ceil(x), SHAPE_CLASS_CAP));
  const bb = batch <= 1 ? 1 : batch <= 16 ? 16 : 256;
  return `${transA ? "T" : "N"}${transB ? "T" : "N"}.m${b(M)}.n${b(N)}.k${b(K)}.b${bb}`;
}

/**
 * The variant `matmul` runs for a shape: the forced one, else the tuned choice for its shape
 * class, else (on classes whose defaults are unmeasured) the adapter-wide tuned default of its
 * role, else the class's shipped default (register blocks shrunk to tiny shapes). Tuned records count only when made from the current
 * candidates (`candidateTag`). Never measures.
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
  const tag = candidateTag(gpu);
  const tuned = tuner.lookup(name, shapeClass(M, N, K, batch, transA, transB), tag);
  if (tuned) return tuned;
  const role = defaultRole(shape);
  const d = classDefaults(gpu);
  // Where the shipped default was measured on this class it beats an average over whichever
  // classes happen to be tuned; elsewhere (GPU classes) the measured average is the better bet.
  const tunedDefault = d.measured ? undefined : tuner.lookup(name, defaultKey(role), tag);
  return fitVariant(tunedDefault ?? d.matmul[role], M, N);
}

/** The cache key of the adapter-wide tuned default of a role. */
export function defaultKey(role: "general" | "weightGrad"): string {
  return role === "general" ? "default" : "default.weightGrad";
}

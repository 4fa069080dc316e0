/**
 * Matmul benchmark: square products and the ViT-S/B linear layers (257 tokens), every candidate
 * variant plus what `matmul` runs after tuning, as ratios to the FMA peak of the same run.
 *
 * Running it also tunes: a shape class with no cached choice gets this run's measurements
 * recorded (see `kernels/autotune.ts`), so the "tuned" row is what later processes run.
 */
import {
  candidateTag,
  matmul,
  MATMUL_CANDIDATES,
  matmulStrided,
  matmulTuner,
  type MatmulVariant,
  selectMatmulVariant,
  shapeClass,
  variantId,
} from "../kernels/matmul/mod.ts";
import type { Gpu } from "../kernels/runtime.ts";
import type { GpuTensor } from "../kernels/tensor.ts";
import { type BenchRow, type BenchSuite, computeRow, timeGpu } from "./harness.ts";

interface Shape {
  name: string;
  M: number;
  N: number;
  K: number;
  transB: boolean;
}

/** ViT linear layers for `dim` with a 4× MLP: x [B·257, in] · W[out, in]ᵀ. */
function vitShapes(arch: string, dim: number, batch: number): Shape[] {
  const M = batch * 257;
  const at = (layer: string, inF: number, outF: number): Shape => ({
    name: `${arch} ${layer} b${batch} [${M}x${inF}]·[${outF}x${inF}]ᵀ`,
    M,
    N: outF,
    K: inF,
    transB: true,
  });
  return [
    at("qkv", dim, 3 * dim),
    at("proj", dim, dim),
    at("fc1", dim, 4 * dim),
    at("fc2", 4 * dim, dim),
  ];
}

function shapes(quick: boolean): Shape[] {
  const sq = (n: number): Shape => ({ name: `${n}³`, M: n, N: n, K: n, transB: false });
  // Quick runs keep the layer shapes but with fewer images, so they finish in minutes.
  const batch = quick ? 8 : 32;
  return [
    ...(quick ? [sq(512), sq(1024)] : [sq(1024), sq(2048)]),
    ...vitShapes("vit_s", 384, batch),
    ...vitShapes("vit_b", 768, batch),
  ];
}

/** Deterministic values in [-0.5, 0.5): timing does not depend on them, denormals would. */
function data(n: number): Float32Array {
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = ((i * 2654435761) % 4096) / 4096 - 0.5;
  return x;
}

export const matmulSuite: BenchSuite = {
  name: "matmul",
  async run({ gpu, peaks, quick }) {
    const rows: BenchRow[] = [];
    // Best GFLOP/s each variant reached so far: predicts (and skips) hopeless long runs, such
    // as the workgroup-memory kernel on a CPU adapter on the largest layers.
    const rate = new Map<string, number>();
    const budgetMs = quick ? 3000 : 10000;
    const iters = quick ? 2 : 3;
    for (const s of shapes(quick)) {
      const flops = 2 * s.M * s.N * s.K;
      const a = gpu.tensor(data(s.M * s.K), [s.M, s.K]);
      const b = gpu.tensor(data(s.K * s.N), s.transB ? [s.N, s.K] : [s.K, s.N]);
      const out = gpu.empty([s.M, s.N]);
      const measured = new Map<string, number | null>();
      for (const v of MATMUL_CANDIDATES) {
        const id = variantId(v);
        const predicted = rate.has(id) ? flops / (rate.get(id)! * 1e6) : 0;
        if (predicted > budgetMs) {
          measured.set(id, null);
          rows.push(skipRow(`matmul ${s.name} ${id}`, predicted, peaks.fmaGflops));
          continue;
        }
        const ms = await timeVariant(gpu, s, a, b, out, v, iters);
        measured.set(id, ms);
        rate.set(id, Math.max(rate.get(id) ?? 0, flops / ms / 1e6));
        rows.push(computeRow(`matmul ${s.name} ${id}`, flops, ms, peaks));
      }
      // Record this run's measurements as the tuning of the class when none is cached.
      const tuner = matmulTuner();
      const key = shapeClass(s.M, s.N, s.K, 1, false, s.transB);
      await tuner.tuneWith(
        gpu.adapter.name,
        key,
        MATMUL_CANDIDATES,
        (v) => Promise.resolve(measured.get(variantId(v)) ?? null),
        { iters: 1, tag: candidateTag(gpu) },
      );
      const chosen = variantId(
        selectMatmulVariant(gpu, { M: s.M, N: s.N, K: s.K, transB: s.transB }),
      );
      // The tuned row times `matmul` itself: lookup, fitting and dispatch as callers get them.
      const ms = await timeGpu(gpu, () => {
        gpu.release(matmul(gpu, a, b, { transB: s.transB }));
      }, { warmup: 1, iters });
      rows.push(computeRow(`matmul ${s.name} tuned`, flops, ms, peaks, `→ ${chosen}`));
      gpu.release(a, b, out);
    }
    return rows;
  },
};

async function timeVariant(
  gpu: Gpu,
  s: Shape,
  a: GpuTensor,
  b: GpuTensor,
  out: GpuTensor,
  variant: MatmulVariant,
  iters: number,
): Promise<number> {
  return await timeGpu(gpu, () => {
    matmulStrided(gpu, { a, b, out, M: s.M, N: s.N, K: s.K, transB: s.transB }, { variant });
  }, { warmup: 1, iters });
}

function skipRow(name: string, predictedMs: number, peak: number): BenchRow {
  return {
    name,
    ms: NaN,
    peak,
    peakName: "fma peak",
    ratio: NaN,
    note: `skipped: ~${
      (predictedMs / 1000).toFixed(0)
    } s predicted from its rate on earlier shapes`,
  };
}

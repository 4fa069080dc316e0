/**
 * Norm-kernel benchmarks: layer norm forward/backward at ViT-S/B token
 * batches ([32·257, 384] and [32·257, 768]), softmax and soft cross-entropy
 * at the DINO head's [64, 65536]. Every row is memory-bound, so it is a ratio
 * to the copy bandwidth measured in the same run; bytes are the minimum each
 * op must move (each input read once, each output written once).
 */
import { layerNorm, layerNormBackward } from "../kernels/layernorm.ts";
import type { Gpu } from "../kernels/runtime.ts";
import {
  crossEntropySoft,
  crossEntropySoftBackward,
  softmax,
  tuneRowKernels,
} from "../kernels/softmax.ts";
import type { GpuTensor } from "../kernels/tensor.ts";
import {
  type BenchContext,
  type BenchRow,
  type BenchSuite,
  memoryRow,
  timeGpu,
} from "./harness.ts";

/** A deterministic f32 tensor with values in [-2, 2] (no host RNG state to carry). */
function filled(gpu: Gpu, shape: number[], seed: number): GpuTensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = 2 * Math.sin(i * 0.7071 + seed);
  return gpu.tensor(a, shape);
}

async function layerNormRows(ctx: BenchContext, rows: number, cols: number, note: string) {
  const { gpu, peaks } = ctx;
  const x = filled(gpu, [rows, cols], 1);
  const dy = filled(gpu, [rows, cols], 2);
  const w = filled(gpu, [cols], 3);
  const b = filled(gpu, [cols], 4);
  const iters = ctx.quick ? 3 : 7;
  const fwdMs = await timeGpu(gpu, () => {
    const r = layerNorm(gpu, x, w, b, 1e-6);
    gpu.release(r.y, r.mean, r.rstd);
  }, { iters });
  const saved = layerNorm(gpu, x, w, b, 1e-6);
  const bwdMs = await timeGpu(gpu, () => {
    const g = layerNormBackward(gpu, dy, x, w, saved.mean, saved.rstd);
    gpu.release(g.dx, g.dweight, g.dbias);
  }, { iters });
  gpu.release(x, dy, w, b, saved.y, saved.mean, saved.rstd);
  const nd = rows * cols * 4;
  const shape = `[${rows}, ${cols}]`;
  return [
    // x in, y out; mean and rstd out; weight and bias in.
    memoryRow(`layernorm fwd ${shape}`, 2 * nd + 8 * rows + 8 * cols, fwdMs, peaks, note),
    // dy and x in, dx out; mean, rstd in; weight in, dweight and dbias out.
    memoryRow(`layernorm bwd ${shape}`, 3 * nd + 8 * rows + 12 * cols, bwdMs, peaks, note),
  ];
}

async function headRows(ctx: BenchContext, rows: number, cols: number, note: string) {
  const { gpu, peaks } = ctx;
  const logits = filled(gpu, [rows, cols], 5);
  const teacher = filled(gpu, [rows, cols], 6);
  const targets = softmax(gpu, teacher, { temperature: 0.04 });
  gpu.release(teacher);
  const dloss = filled(gpu, [rows], 7);
  const temperature = 0.1;
  const iters = ctx.quick ? 3 : 7;
  const smMs = await timeGpu(gpu, () => {
    gpu.release(softmax(gpu, logits, { temperature }));
  }, { iters });
  const ceMs = await timeGpu(gpu, () => {
    const r = crossEntropySoft(gpu, logits, targets, { temperature });
    gpu.release(r.loss, r.logp);
  }, { iters });
  const fwd = crossEntropySoft(gpu, logits, targets, { temperature });
  const ceBwdMs = await timeGpu(gpu, () => {
    gpu.release(crossEntropySoftBackward(gpu, dloss, fwd.logp, targets, { temperature }));
  }, { iters });
  gpu.release(logits, targets, dloss, fwd.loss, fwd.logp);
  const nc = rows * cols * 4;
  const shape = `[${rows}, ${cols}]`;
  return [
    memoryRow(`softmax ${shape} T=0.1`, 2 * nc, smMs, peaks, note),
    // logits and targets in, logp out, loss out.
    memoryRow(`soft cross-entropy fwd ${shape}`, 3 * nc + 4 * rows, ceMs, peaks, note),
    // logp and targets in, dlogits out, dloss in.
    memoryRow(`soft cross-entropy bwd ${shape}`, 3 * nc + 4 * rows, ceBwdMs, peaks, note),
  ];
}

/** The norm suite: layer norm, softmax and soft cross-entropy. */
export const normsSuite: BenchSuite = {
  name: "norms",
  async run(ctx: BenchContext): Promise<BenchRow[]> {
    // Kernels run with the layout the trainer would pick after tuning on this adapter.
    const cap = await tuneRowKernels(ctx.gpu);
    const note = `≤${cap} threads/row (tuned for this adapter)`;
    const tokens = (ctx.quick ? 8 : 32) * 257;
    const rows: BenchRow[] = [];
    rows.push(...await layerNormRows(ctx, tokens, 384, note));
    rows.push(...await layerNormRows(ctx, tokens, 768, note));
    rows.push(...await headRows(ctx, ctx.quick ? 16 : 64, 65536, note));
    return rows;
  },
};

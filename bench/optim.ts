/**
 * Optimiser-step kernels over a ViT-S-sized parameter arena (AdamW, teacher EMA, gradient norm)
 * and the teacher-target kernels (Sinkhorn-Knopp, centering) at DINO head size. All are
 * memory-bound: rows are bytes moved per call against the copy bandwidth of this run.
 */
import {
  type AdamwGroupHyper,
  adamwHyper,
  adamwStep,
  type ParamSpec,
  planArena,
  segmentTable,
} from "../kernels/adamw.ts";
import { clipFactors, gradSqNorms } from "../kernels/clip.ts";
import { emaUpdate, momentumValues } from "../kernels/ema.ts";
import type { Gpu } from "../kernels/runtime.ts";
import { centeredSoftmax, sinkhornKnopp } from "../kernels/sinkhorn.ts";
import type { GpuTensor } from "../kernels/tensor.ts";
import { type BenchRow, type BenchSuite, memoryRow, timeGpu } from "./harness.ts";

/**
 * DINOv2 ViT-S/14 backbone parameters (dim 384, 12 blocks, 257 tokens) with DinoBloom's groups:
 * 0 decayed, 1 biases/norms/LayerScale (no decay), 2 patch_embed (lr × 0.2). `blocks` trims it.
 */
export function vitSmallParams(blocks = 12): ParamSpec[] {
  const D = 384, H = 1536;
  const p: ParamSpec[] = [
    { name: "cls_token", length: D, group: 1, module: 0 },
    { name: "pos_embed", length: 257 * D, group: 1, module: 0 },
    { name: "mask_token", length: D, group: 1, module: 0 },
    { name: "patch_embed.proj.weight", length: D * 3 * 14 * 14, group: 2, module: 0 },
    { name: "patch_embed.proj.bias", length: D, group: 2, module: 0 },
  ];
  for (let i = 0; i < blocks; i++) {
    const b = (name: string, length: number, group: number) =>
      p.push({ name: `blocks.${i}.${name}`, length, group, module: 0 });
    b("norm1.weight", D, 1);
    b("norm1.bias", D, 1);
    b("attn.qkv.weight", 3 * D * D, 0);
    b("attn.qkv.bias", 3 * D, 1);
    b("attn.proj.weight", D * D, 0);
    b("attn.proj.bias", D, 1);
    b("ls1.gamma", D, 1);
    b("norm2.weight", D, 1);
    b("norm2.bias", D, 1);
    b("mlp.fc1.weight", H * D, 0);
    b("mlp.fc1.bias", H, 1);
    b("mlp.fc2.weight", D * H, 0);
    b("mlp.fc2.bias", D, 1);
    b("ls2.gamma", D, 1);
  }
  p.push({ name: "norm.weight", length: D, group: 1, module: 0 });
  p.push({ name: "norm.bias", length: D, group: 1, module: 0 });
  return p;
}

async function arenaRows(
  ctx: { gpu: Gpu; quick: boolean },
  peaks: Parameters<typeof memoryRow>[3],
) {
  const { gpu, quick } = ctx;
  // Full: 21.7 M parameters (one 87 MB chunk); quick: 2 blocks, 3.9 M.
  const specs = vitSmallParams(quick ? 2 : 12);
  const plan = planArena(specs, gpu.limits.maxStorageBufferBindingSize / 4);
  const chunks = plan.chunks.map((c) => ({
    n: c.length,
    table: gpu.tensor(segmentTable(c.segments, c.length)),
    param: gpu.zeros([c.length]),
    grad: gpu.zeros([c.length]),
    m: gpu.zeros([c.length]),
    v: gpu.zeros([c.length]),
    teacher: gpu.zeros([c.length]),
  }));
  const n = chunks.reduce((a, c) => a + c.n, 0);
  const groups: AdamwGroupHyper[] = [
    { lr: 1e-4, weightDecay: 0.04, step: 10 },
    { lr: 1e-4, weightDecay: 0, step: 10 },
    { lr: 2e-5, weightDecay: 0.04, step: 10 },
  ];
  const hyper = gpu.tensor(adamwHyper(groups));
  const ones = gpu.tensor(new Float32Array([1]));
  const mom = gpu.tensor(momentumValues(0.996));
  const iters = quick ? 3 : 5;
  const note = `${
    (n / 1e6).toFixed(1)
  } M params, ${specs.length} segments, ${chunks.length} chunk(s)`;
  const rows: BenchRow[] = [];

  const adam = await timeGpu(gpu, () => {
    for (const c of chunks) adamwStep(gpu, { ...c, hyper, clip: ones });
  }, { iters });
  rows.push(memoryRow(`adamw ${note}`, n * 28, adam, peaks, "reads p, g, m, v; writes p, m, v"));

  const ema = await timeGpu(gpu, () => {
    for (const c of chunks) emaUpdate(gpu, c.teacher, c.param, mom);
  }, { iters });
  rows.push(memoryRow(`ema ${note}`, n * 12, ema, peaks, "reads teacher, student; writes teacher"));

  let sq: GpuTensor | undefined;
  const norm = await timeGpu(gpu, () => {
    gpu.release(sq);
    sq = undefined;
    for (const c of chunks) sq = gradSqNorms(gpu, c.grad, c.table, 1, sq);
  }, { iters });
  rows.push(memoryRow(`grad sq-norm ${note}`, n * 4, norm, peaks, "two-stage, deterministic"));

  // The whole optimiser step as a trainer runs it: norms, factors, AdamW, EMA.
  const step = await timeGpu(gpu, () => {
    let s: GpuTensor | undefined;
    for (const c of chunks) s = gradSqNorms(gpu, c.grad, c.table, 1, s, { hyper });
    const clip = clipFactors(gpu, s!, 3);
    for (const c of chunks) adamwStep(gpu, { ...c, hyper, clip });
    for (const c of chunks) emaUpdate(gpu, c.teacher, c.param, mom);
    gpu.release(s, clip);
  }, { iters });
  rows.push(memoryRow(`clip + adamw + ema ${note}`, n * 44, step, peaks, "one submit"));

  gpu.release(sq, hyper, ones, mom);
  for (const c of chunks) gpu.release(c.table, c.param, c.grad, c.m, c.v, c.teacher);
  return rows;
}

async function targetRows(gpu: Gpu, peaks: Parameters<typeof memoryRow>[3], quick: boolean) {
  const [B, K] = quick ? [64, 16384] : [64, 65536];
  const x = gpu.tensor(new Float32Array(B * K).map((_, i) => Math.sin(i * 0.37)), [B, K]);
  const temp = gpu.tensor(new Float32Array([0.04]));
  const center = gpu.zeros([K]);
  const iters = quick ? 3 : 5;
  const rows: BenchRow[] = [];
  let q: GpuTensor | undefined;
  const sk = await timeGpu(gpu, () => {
    gpu.release(q);
    q = sinkhornKnopp(gpu, x, temp);
  }, { iters });
  // max (1 read), 1st round (read x, write E, read E), 2 more rounds (2 reads), scale (r + w).
  rows.push(memoryRow(`sinkhorn [${B}, ${K}] 3 iters`, B * K * 4 * 10, sk, peaks, "10 passes"));
  gpu.release(q);
  q = undefined;
  const cs = await timeGpu(gpu, () => {
    gpu.release(q);
    q = centeredSoftmax(gpu, x, center, temp);
  }, { iters });
  rows.push(memoryRow(`centered softmax [${B}, ${K}]`, B * K * 4 * 3, cs, peaks, "3 passes"));
  gpu.release(q, x, temp, center);
  return rows;
}

/** AdamW, EMA and grad-norm over a ViT-S arena; Sinkhorn and centering at [64, 65536]. */
export const optimSuite: BenchSuite = {
  name: "optim",
  async run({ gpu, peaks, quick }) {
    return [...await arenaRows({ gpu, quick }, peaks), ...await targetRows(gpu, peaks, quick)];
  },
};

/**
 * Fused attention at DINOv2 shapes: ViT-S (6 heads) and ViT-B (12 heads), head dim 64,
 * T = 257 (224 px: CLS + 16×16 patches), batch 32 (`--quick`: 4).
 *
 * FLOPs counted (2 per multiply-add; exp and softmax bookkeeping not counted):
 * - forward: 4·B·H·T²·Dh, the two T×T×Dh matmuls Q·Kᵀ and P·V;
 * - backward: 2.5× forward, the five matmuls of the textbook backward (S = Q·Kᵀ recomputed,
 *   dV = Pᵀ·dO, dP = dO·Vᵀ, dQ = dS·K, dK = dSᵀ·Q). The kernels execute seven (S and dP are
 *   recomputed by both the dQ and the dK/dV kernel, the price of having no float atomics),
 *   so the arithmetic actually done is 3.5× forward; rows report the 2.5× convention.
 *
 * The plan is tuned first (`tuneAttention`, measured on this adapter); full runs also time
 * every forward candidate at ViT-S and the batch-split path (ViT-B at batch 64: qkv is
 * 151 MB, over a 128 MiB binding limit).
 */
import {
  attention,
  attentionBackward,
  attentionCandidates,
  type AttentionVariant,
  tuneAttention,
} from "../kernels/attention.ts";
import type { Gpu } from "../kernels/runtime.ts";
import type { GpuTensor } from "../kernels/tensor.ts";
import { type BenchRow, type BenchSuite, computeRow, timeGpu } from "./harness.ts";

const T = 257;
const DH = 64;
const ARCHS = [{ name: "vit_s", heads: 6 }, { name: "vit_b", heads: 12 }] as const;

/** Forward FLOPs of one call: 4·B·H·T²·Dh. */
export function attentionFlops(batch: number, heads: number, tokens: number, dh: number): number {
  return 4 * batch * heads * tokens * tokens * dh;
}

function describe(v: AttentionVariant): string {
  const tile = v.kind === "tiled" ? ` tile ${v.tile}` : "";
  return `${v.kind} wg ${v.wg} rows ${v.rows} block ${v.block}${tile} ${v.dot ?? "vec"}` +
    (v.tex ? " from a texture" : "");
}

/** Deterministic qkv in [-0.5, 0.5] (scores of order 1, like a trained model's). */
function makeQkv(gpu: Gpu, batch: number, heads: number): GpuTensor {
  const n = batch * T * 3 * heads * DH;
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = Math.sin(i * 0.61803398875) * 0.5;
  return gpu.tensor(data, [batch, T, 3 * heads * DH]);
}

export const attentionSuite: BenchSuite = {
  name: "attention",
  async run({ gpu, peaks, quick }) {
    const rows: BenchRow[] = [];
    const B = quick ? 4 : 32;
    const iters = quick ? 3 : 5;
    const { plan } = await tuneAttention(gpu, { batch: 4, tokens: T, heads: 6, headDim: DH });
    for (const arch of ARCHS) {
      const H = arch.heads;
      const qkv = makeQkv(gpu, B, H);
      const { out, lse } = attention(gpu, qkv, { heads: H });
      const flops = attentionFlops(B, H, T, DH);
      const fwdMs = await timeGpu(gpu, () => {
        const r = attention(gpu, qkv, { heads: H });
        gpu.release(r.out, r.lse);
      }, { iters });
      rows.push(
        computeRow(`attention fwd ${arch.name} b${B}`, flops, fwdMs, peaks, describe(plan.forward)),
      );
      const bwdMs = await timeGpu(gpu, () => {
        gpu.release(attentionBackward(gpu, out, qkv, out, lse, { heads: H }));
      }, { iters });
      rows.push(
        computeRow(
          `attention bwd ${arch.name} b${B}`,
          2.5 * flops,
          bwdMs,
          peaks,
          `dq: ${describe(plan.dq)}; dkv: ${describe(plan.dkv)}; 2.5× fwd FLOPs (3.5× executed)`,
        ),
      );
      gpu.release(qkv, out, lse);
    }
    if (quick) return rows;

    // What the tuner chose from: every forward candidate at ViT-S.
    const qkv = makeQkv(gpu, B, 6);
    for (const variant of attentionCandidates(gpu, "fwd", DH)) {
      const ms = await timeGpu(gpu, () => {
        const r = attention(gpu, qkv, { heads: 6, variant });
        gpu.release(r.out, r.lse);
      }, { iters: 3 });
      rows.push(
        computeRow(
          `attention fwd vit_s b${B} candidate`,
          attentionFlops(B, 6, T, DH),
          ms,
          peaks,
          describe(variant),
        ),
      );
    }
    gpu.release(qkv);

    // The batch split: ViT-B at batch 64 binds more than 128 MiB of qkv.
    const big = makeQkv(gpu, 64, 12);
    const chunks = big.size > gpu.limits.maxStorageBufferBindingSize
      ? "split over the batch"
      : "one binding";
    const ms = await timeGpu(gpu, () => {
      const r = attention(gpu, big, { heads: 12 });
      gpu.release(r.out, r.lse);
    }, { iters: 3 });
    rows.push(
      computeRow(
        "attention fwd vit_b b64",
        attentionFlops(64, 12, T, DH),
        ms,
        peaks,
        `qkv ${(big.size / 2 ** 20).toFixed(0)} MiB: ${chunks}`,
      ),
    );
    gpu.release(big);
    return rows;
  },
};

/**
 * Autotuning for a model: measures the kernel variants on the running adapter
 * for the shapes a ViT uses (its linear layers, forward and, for training,
 * backward; its attention; the row kernels) once, and caches the choices
 * (kernels/autotune.ts), so later runs start at full speed. Never selects by
 * adapter name.
 */
import { tuneAttention } from "../kernels/attention.ts";
import { type MatmulShape, tuneMatmul } from "../kernels/matmul.ts";
import type { Gpu } from "../kernels/runtime.ts";
import { tuneRowKernels } from "../kernels/softmax.ts";
import type { VitConfig } from "./vit.ts";

/** The matmul shapes of one ViT pass over `rows` tokens. */
export function vitMatmulShapes(cfg: VitConfig, rows: number, training: boolean): MatmulShape[] {
  const D = cfg.dim;
  const H = cfg.ffn === "swiglu" ? 2 * cfg.mlpHidden : cfg.mlpHidden;
  const Hin = cfg.mlpHidden;
  // nn.Linear: y = x Wᵀ, W [out, in].
  const linears: [number, number][] = [[D, 3 * D], [D, D], [D, H], [Hin, D]];
  const shapes: MatmulShape[] = linears.map(([k, n]) => ({ M: rows, N: n, K: k, transB: true }));
  if (training) {
    for (const [k, n] of linears) {
      shapes.push({ M: rows, N: k, K: n }); // dx = dy W
      shapes.push({ M: n, N: k, K: rows, transA: true }); // dW = dyᵀ x
    }
  }
  return shapes;
}

/**
 * Tunes what a ViT of `cfg` runs at `tokens` tokens per image and `batch`
 * images per pass. Cached per adapter: a second call measures nothing.
 */
export async function tuneForVit(
  gpu: Gpu,
  cfg: VitConfig,
  opts: { tokens: number; batch: number; training: boolean; log?: (s: string) => void },
): Promise<void> {
  const rows = Math.min(opts.tokens * opts.batch, 8192);
  const t0 = performance.now();
  const mm = await tuneMatmul(gpu, vitMatmulShapes(cfg, rows, opts.training));
  // Batch ≥ 4: with one image the many-rows-per-invocation variants get too few workgroups.
  const at = await tuneAttention(gpu, {
    batch: Math.min(opts.batch, 4),
    tokens: opts.tokens,
    heads: cfg.heads,
    headDim: cfg.dim / cfg.heads,
  });
  await tuneRowKernels(gpu);
  const measured = mm.filter((r) => !r.cached).length + at.tunings.filter((r) => !r.cached).length;
  if (measured > 0) {
    opts.log?.(
      `tuned ${measured} kernel shapes for ${gpu.adapter.name} in ` +
        `${((performance.now() - t0) / 1000).toFixed(1)} s (cached for later runs)`,
    );
  }
}

/**
 * Embedding: a batch of RGB cells → the evaluation transform (bilinear
 * resize, ImageNet normalisation) → the ViT in inference mode → pooled
 * features (and, if asked, the patch tokens), read back to the host. The
 * `embed` command and the trainer's periodic kNN evaluation both use this.
 */
import type { ParamArena } from "../graph/arena.ts";
import { Graph } from "../graph/graph.ts";
import { concat, mean } from "../graph/ops.ts";
import { Params } from "../graph/params.ts";
import { type VitConfig, vitForward } from "../graph/vit.ts";
import type { Gpu } from "../kernels/runtime.ts";
import { evalTransform } from "./augment.ts";
import type { Batch } from "./loader.ts";

/** How per-image features are pooled from the final tokens. */
export type Pool = "cls" | "mean" | "cls+mean";

/** A model ready to embed. */
export interface EmbedModel {
  arena: ParamArena;
  config: VitConfig;
}

/** What one batch gives. */
export interface Embedded {
  /** [count, dim] row-major. */
  features: Float32Array;
  dim: number;
  /** [count, Np, D] patch tokens after the final norm, when asked for. */
  patchTokens?: Float32Array;
  /** Patches per image. */
  patches: number;
}

/** Feature width for a pool mode. */
export function pooledDim(cfg: VitConfig, pool: Pool): number {
  return pool === "cls+mean" ? 2 * cfg.dim : cfg.dim;
}

/**
 * Embeds one loader batch: CLS after the final norm (DINOv2's
 * x_norm_clstoken, the paper's embedding), the mean of the normalised patch
 * tokens, or both concatenated. `inputSize` is the side the model sees (224
 * for the paper's models).
 */
export async function embedBatch(
  gpu: Gpu,
  model: EmbedModel,
  batch: Batch,
  opts: { pool?: Pool; patchTokens?: boolean; inputSize?: number } = {},
): Promise<Embedded> {
  const pool = opts.pool ?? "cls";
  const N = opts.inputSize ?? 224;
  const raw = gpu.uploadBytes(batch.pixels.subarray(0, batch.count * batch.size * batch.size * 3));
  const images = evalTransform(gpu, raw, { count: batch.count, size: batch.size, outSize: N });
  gpu.release(raw);
  const g = new Graph(gpu, { training: false });
  try {
    const ps = new Params(g, model.arena);
    const needPatch = pool !== "cls" || Boolean(opts.patchTokens);
    const out = vitForward(ps, model.config, g.adopt(images), {
      outputs: needPatch ? ["clsNorm", "patchNorm"] : ["clsNorm"],
    });
    const cls = out.clsNorm!;
    let feats = cls;
    if (pool === "mean") feats = mean(g, out.patchNorm!, 1);
    else if (pool === "cls+mean") feats = concat(g, [cls, mean(g, out.patchNorm!, 1)], 1);
    const features = await gpu.readF32(feats.value);
    const patches = out.patchNorm ? out.patchNorm.dim(1) : (N / model.config.patch) ** 2;
    const patchTokens = opts.patchTokens ? await gpu.readF32(out.patchNorm!.value) : undefined;
    return {
      features: features.slice(),
      dim: features.length / batch.count,
      patchTokens: patchTokens?.slice(),
      patches,
    };
  } finally {
    g.dispose();
  }
}

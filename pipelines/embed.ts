/**
 * Embedding: images → the ViT in inference mode → pooled features (and, if
 * asked, the patch tokens), read back to the host. One path for every
 * caller: `embedImages` runs the model on normalised images already on the
 * GPU; `embedBatch` first applies the evaluation transform (bilinear resize,
 * ImageNet normalisation) to a batch of RGB cells. The `embed` command, the
 * trainer's periodic kNN evaluation and the library's `Model` all go through
 * here. `prepareEmbedBatch` / `prepareEmbedImages` split a pass into record,
 * submit and collect, so a run can overlap one batch with the next.
 */
import type { Pooling } from "../data/embeddings_file.ts";
import { InputError } from "../data/errors.ts";
import type { ParamArena } from "../graph/arena.ts";
import { Graph } from "../graph/graph.ts";
import { concat, mean } from "../graph/ops.ts";
import { Params } from "../graph/params.ts";
import { type VitConfig, vitForward } from "../graph/vit.ts";
import type { Gpu, QueuedReads } from "../kernels/runtime.ts";
import type { GpuTensor } from "../kernels/tensor.ts";
import { evalTransform } from "./augment.ts";
import type { Batch } from "./loader.ts";

/** A model ready to embed. */
export interface EmbedModel {
  arena: ParamArena;
  config: VitConfig;
}

/** Options of an embedding pass. */
export interface EmbedOptions {
  /** How tokens are pooled into one vector per image (default "cls"). */
  pool?: Pooling;
  /** Also read back the patch tokens. */
  patchTokens?: boolean;
}

/** What embedding a batch of images gives. */
export interface Embeddings {
  /**
   * Pooled features [count, dim] row-major. With the default "cls" pooling:
   * the CLS token after the final norm (DINOv2's x_norm_clstoken), the
   * DinoBloom embedding.
   */
  features: Float32Array;
  /** Images embedded. */
  count: number;
  /** Feature width: the model's width, twice it for "cls+mean". */
  dim: number;
  pool: Pooling;
  /** Patch tokens after the final norm, [count, patches, model width], when asked for. */
  patchTokens?: Float32Array;
  /** Patches per image (Np). */
  patches: number;
}

/**
 * Refuses an image side the patch grid does not tile: below one patch, or
 * not a multiple of the patch (the remainder would be dropped silently).
 * `what` names the side for the message.
 */
export function checkInputSide(cfg: VitConfig, side: number, what: string): void {
  const P = cfg.patch;
  if (Number.isInteger(side) && side >= P && side % P === 0) return;
  const lo = Math.max(P, Math.floor(side / P) * P);
  const hi = lo === side ? lo + P : Math.max(P, Math.ceil(side / P) * P);
  const near = lo === hi ? `${lo}` : `${lo} or ${hi}`;
  throw new InputError(
    `${what} is ${side}, but the model's patches are ${P} px: the side must be a multiple of ` +
      `${P} and at least ${P} (use ${near}; 224 for the paper's models)`,
  );
}

/**
 * Embeds normalised images on the GPU, [count, 3, H, W] (ImageNet mean/std
 * applied; H and W multiples of the patch): CLS after the final norm, the
 * mean of the normalised patch tokens, or both concatenated. Takes ownership
 * of `images` (it is released).
 */
export async function embedImages(
  gpu: Gpu,
  model: EmbedModel,
  images: GpuTensor,
  opts: EmbedOptions = {},
): Promise<Embeddings> {
  return await prepareEmbedImages(gpu, model, images, opts).collect();
}

/**
 * A batch recorded for the GPU (`prepareEmbedImages`), not yet read back.
 * Overlapping batch k+1 with batch k: prepare k+1, collect k, submit k+1.
 */
export interface EmbedJob {
  /** Images in the batch. */
  count: number;
  /** Submits the recorded work (a flush of the open encoder; collect does it too). */
  submit(): void;
  /** The batch's embeddings, once its work has run. Call once. */
  collect(): Promise<Embeddings>;
  /** Drops the batch unread (a run that stops). */
  discard(): void;
}

/**
 * `embedImages` in steps: the forward and the copies of its outputs to the
 * host are recorded in the open encoder, unsubmitted; `submit` sends them,
 * `collect` reads them. Recording takes the host tens of milliseconds and
 * needs no wait, so it is done while the previous batch runs; and on drivers
 * where a submit or a read-back blocks until the GPU is idle (llvmpipe under
 * Deno), the next batch is submitted only after the previous one is
 * collected. Queue order keeps it correct: each batch's copies follow its
 * own forward, before the next batch's forward reuses the freed buffers.
 * Input errors throw here, at once.
 */
export function prepareEmbedImages(
  gpu: Gpu,
  model: EmbedModel,
  images: GpuTensor,
  opts: EmbedOptions = {},
): EmbedJob {
  const pool = opts.pool ?? "cls";
  const [count, , H, W] = images.shape;
  const g = new Graph(gpu, { training: false });
  let reads: QueuedReads;
  try {
    const x = g.adopt(images);
    checkInputSide(model.config, H, "the image height");
    checkInputSide(model.config, W, "the image width");
    const ps = new Params(g, model.arena);
    const needPatch = pool !== "cls" || Boolean(opts.patchTokens);
    const out = vitForward(ps, model.config, x, {
      outputs: needPatch ? ["clsNorm", "patchNorm"] : ["clsNorm"],
    });
    const cls = out.clsNorm!;
    let feats = cls;
    if (pool === "mean") feats = mean(g, out.patchNorm!, 1);
    else if (pool === "cls+mean") feats = concat(g, [cls, mean(g, out.patchNorm!, 1)], 1);
    reads = gpu.queueReads(
      opts.patchTokens ? [feats.value, out.patchNorm!.value] : [feats.value],
      { submit: false },
    );
  } finally {
    // Released into the open encoder: reused by later GPU writes in queue order, and by
    // host uploads only after the submit (pool.ts).
    g.dispose();
  }
  const patches = (H / model.config.patch) * (W / model.config.patch);
  return {
    count,
    submit: () => gpu.flush(),
    collect: async () => {
      const [f, t] = await reads.collect();
      // Reads return arrays of their own (copied out of the staging buffer): no copy needed.
      return {
        features: f as Float32Array,
        count,
        dim: f.length / count,
        pool,
        patchTokens: t as Float32Array | undefined,
        patches,
      };
    },
    discard: () => reads.discard(),
  };
}

/**
 * Embeds RGB cells, [count, size, size, 3] uint8 (a loader batch): resized
 * to `inputSize`, the side the model sees (224 for the paper's models;
 * bilinear, antialiased), normalised as the paper's evaluation does, then
 * `embedImages`.
 */
export async function embedBatch(
  gpu: Gpu,
  model: EmbedModel,
  batch: Pick<Batch, "pixels" | "count" | "size">,
  opts: EmbedOptions & { inputSize?: number } = {},
): Promise<Embeddings> {
  return await prepareEmbedBatch(gpu, model, batch, opts).collect();
}

/**
 * `embedBatch` in steps (see `prepareEmbedImages`): the upload (a host write,
 * queued at once), the evaluation transform, the forward and the read-back
 * copies are recorded; `submit` sends them.
 */
export function prepareEmbedBatch(
  gpu: Gpu,
  model: EmbedModel,
  batch: Pick<Batch, "pixels" | "count" | "size">,
  opts: EmbedOptions & { inputSize?: number } = {},
): EmbedJob {
  const N = opts.inputSize ?? 224;
  checkInputSide(model.config, N, "inputSize (the side the cells are resized to)");
  const raw = gpu.uploadBytes(batch.pixels.subarray(0, batch.count * batch.size * batch.size * 3));
  const images = evalTransform(gpu, raw, { count: batch.count, size: batch.size, outSize: N });
  gpu.release(raw);
  return prepareEmbedImages(gpu, model, images, opts);
}

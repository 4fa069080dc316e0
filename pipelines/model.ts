/**
 * The library entry point for embedding: load a DINOv2 / DinoBloom / timm /
 * bloom checkpoint, then embed normalised images (or raw RGB cells) and get
 * CLS embeddings and patch tokens as plain arrays.
 */
import { loadCheckpoint, type LoadedModel } from "../graph/checkpoint.ts";
import type { VitArch, VitConfig } from "../graph/vit.ts";
import { InputError } from "../data/errors.ts";
import { getGpu, type Gpu } from "../kernels/runtime.ts";
import { embedBatch, type Embeddings, embedImages, type EmbedOptions } from "./embed.ts";
import { type FetchWeightsOptions, resolveWeights } from "./weights/download.ts";

/** A loaded ViT on the GPU. */
export class Model {
  readonly gpu: Gpu;
  readonly config: VitConfig;
  readonly layout: LoadedModel["layout"];
  readonly #model: LoadedModel;

  private constructor(gpu: Gpu, m: LoadedModel) {
    this.gpu = gpu;
    this.#model = m;
    this.config = m.config;
    this.layout = m.layout;
  }

  /**
   * Loads weights: a name ("dinobloom-s", "dinov2-vitb14": downloaded,
   * verified and cached on first use, `weights` says how; docs/weights.md),
   * or a DINOv2 hub `.pth`, DinoBloom `.pth` ({"teacher": …}), timm-style
   * `.safetensors` or bloom's own checkpoint; the architecture is read from
   * the tensors (`arch` only checks it).
   */
  static async load(
    nameOrPath: string,
    opts: { arch?: VitArch; heads?: number; gpu?: Gpu; weights?: FetchWeightsOptions } = {},
  ): Promise<Model> {
    const path = await resolveWeights(nameOrPath, opts.weights);
    const gpu = opts.gpu ?? await getGpu();
    return new Model(gpu, await loadCheckpoint(gpu, path, { arch: opts.arch, heads: opts.heads }));
  }

  /**
   * Embeds normalised images: `images` is [B, 3, H, W] float32 (ImageNet
   * mean/std applied; H and W multiples of the patch, 14 — 224 for the
   * paper's setup). Features are the CLS token after the final norm unless
   * `pool` says otherwise.
   */
  async embed(
    images: Float32Array,
    shape: readonly [number, number, number, number],
    opts: EmbedOptions = {},
  ): Promise<Embeddings> {
    const [B, C, H, W] = shape;
    if (C !== 3 || images.length !== B * C * H * W) {
      throw new InputError(
        `embed: images must be [B, 3, H, W] float32 with B·3·H·W values; got ${images.length} ` +
          `values for shape [${shape}]`,
      );
    }
    const t = this.gpu.tensor(images, [B, C, H, W]);
    return await embedImages(this.gpu, this.#embedModel, t, opts);
  }

  /**
   * Embeds raw RGB cells, [B, S, S, 3] uint8 of any side S: resized to
   * `inputSize` (default 224, a multiple of the patch; bilinear,
   * antialiased) and normalised as the paper's evaluation does.
   */
  async embedPixels(
    pixels: Uint8Array,
    batch: number,
    size: number,
    opts: EmbedOptions & { inputSize?: number } = {},
  ): Promise<Embeddings> {
    if (!Number.isInteger(batch) || batch < 1 || !Number.isInteger(size) || size < 1) {
      throw new InputError(
        `embedPixels: batch and size must be positive integers, got ${batch} and ${size}`,
      );
    }
    if (pixels.length !== batch * size * size * 3) {
      throw new InputError(
        `embedPixels: expected ${batch}·${size}·${size}·3 = ${
          batch * size * size * 3
        } bytes, got ${pixels.length}`,
      );
    }
    return await embedBatch(this.gpu, this.#embedModel, { pixels, count: batch, size }, opts);
  }

  get #embedModel() {
    return { arena: this.#model.arena, config: this.config };
  }

  /** Frees the weights on the GPU. */
  dispose(): void {
    this.#model.arena.destroy();
  }
}

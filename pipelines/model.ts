/**
 * The library entry point for embedding: load a DINOv2 / DinoBloom / timm /
 * bloom checkpoint, then embed normalised images (or raw RGB cells) and get
 * CLS embeddings and patch tokens as plain arrays.
 */
import { loadCheckpoint, type LoadedModel } from "../graph/checkpoint.ts";
import { Graph } from "../graph/graph.ts";
import { Params } from "../graph/params.ts";
import { type VitArch, type VitConfig, vitForward } from "../graph/vit.ts";
import { getGpu, type Gpu } from "../kernels/runtime.ts";
import type { GpuTensor } from "../kernels/tensor.ts";
import { evalTransform } from "./augment.ts";

/** Outputs of `Model.embed`. */
export interface Embeddings {
  /** CLS token after the final norm, [B, D] row-major: the DinoBloom embedding. */
  cls: Float32Array;
  /** Patch tokens after the final norm, [B, Np, D], when asked for. */
  patchTokens?: Float32Array;
  batch: number;
  dim: number;
  /** Patches per image (Np). */
  patches: number;
}

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
   * Loads weights: DINOv2 hub `.pth`, DinoBloom `.pth` ({"teacher": …}),
   * timm-style `.safetensors` or bloom's own checkpoints; the architecture
   * is read from the tensors (`arch` only checks it).
   */
  static async load(
    path: string,
    opts: { arch?: VitArch; heads?: number; gpu?: Gpu } = {},
  ): Promise<Model> {
    const gpu = opts.gpu ?? await getGpu();
    return new Model(gpu, await loadCheckpoint(gpu, path, { arch: opts.arch, heads: opts.heads }));
  }

  /**
   * Embeds normalised images: `images` is [B, 3, H, W] float32 (ImageNet
   * mean/std applied; H and W multiples of 14 — 224 for the paper's setup).
   */
  async embed(
    images: Float32Array,
    shape: readonly [number, number, number, number],
    opts: { patchTokens?: boolean } = {},
  ): Promise<Embeddings> {
    const [B, C, H, W] = shape;
    if (C !== 3 || images.length !== B * C * H * W) {
      throw new RangeError(
        `embed: images must be [B, 3, H, W] float32 with B·3·H·W values; got ${images.length} ` +
          `values for shape [${shape}]`,
      );
    }
    const t = this.gpu.tensor(images, [B, C, H, W]);
    return await this.#run(t, B, Boolean(opts.patchTokens));
  }

  /**
   * Embeds raw RGB cells, [B, S, S, 3] uint8: resized to `inputSize`
   * (bilinear, antialiased) and normalised as the paper's evaluation does.
   */
  async embedPixels(
    pixels: Uint8Array,
    batch: number,
    size: number,
    opts: { patchTokens?: boolean; inputSize?: number } = {},
  ): Promise<Embeddings> {
    if (pixels.length !== batch * size * size * 3) {
      throw new RangeError(
        `embedPixels: expected ${batch}·${size}·${size}·3 = ${
          batch * size * size * 3
        } bytes, got ${pixels.length}`,
      );
    }
    const raw = this.gpu.uploadBytes(pixels);
    const t = evalTransform(this.gpu, raw, { count: batch, size, outSize: opts.inputSize ?? 224 });
    this.gpu.release(raw);
    return await this.#run(t, batch, Boolean(opts.patchTokens));
  }

  async #run(images: GpuTensor, B: number, patch: boolean): Promise<Embeddings> {
    const g = new Graph(this.gpu, { training: false });
    try {
      const ps = new Params(g, this.#model.arena);
      const out = vitForward(ps, this.config, g.adopt(images), {
        outputs: patch ? ["clsNorm", "patchNorm"] : ["clsNorm"],
      });
      const cls = (await this.gpu.readF32(out.clsNorm!.value)).slice();
      const tokens = patch ? (await this.gpu.readF32(out.patchNorm!.value)).slice() : undefined;
      return {
        cls,
        patchTokens: tokens,
        batch: B,
        dim: this.config.dim,
        patches: patch ? out.patchNorm!.dim(1) : 0,
      };
    } finally {
      g.dispose();
    }
  }

  /** Frees the weights on the GPU. */
  dispose(): void {
    this.#model.arena.destroy();
  }
}

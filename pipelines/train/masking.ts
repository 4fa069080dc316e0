/**
 * iBOT block masking as DINOv2 does it (MaskingGenerator and
 * collate_data_and_mask): half of the images get masks whose target sizes are
 * spread over linspace(0.1, 0.5) of the patches; a mask is grown from random
 * blocks of area ≥ 4 and log-uniform aspect ratio in [0.3, 1/0.3], ten tries
 * per block.
 */
import type { Random } from "../../graph/random.ts";

/** Block-mask generator for a grid of patches. */
export class MaskingGenerator {
  readonly height: number;
  readonly width: number;
  readonly minPatches: number;
  readonly maxPatches: number;
  readonly #logAspect: [number, number];

  constructor(
    grid: number,
    opts: { minPatches?: number; maxPatches?: number; minAspect?: number } = {},
  ) {
    this.height = grid;
    this.width = grid;
    this.minPatches = opts.minPatches ?? 4;
    // DINOv2: max_num_patches = 0.5 · grid²
    this.maxPatches = opts.maxPatches ?? Math.floor(0.5 * grid * grid);
    const minAspect = opts.minAspect ?? 0.3;
    this.#logAspect = [Math.log(minAspect), Math.log(1 / minAspect)];
  }

  #block(mask: Uint8Array, maxMask: number, rand: Random): number {
    let delta = 0;
    for (let attempt = 0; attempt < 10; attempt++) {
      const target = this.minPatches + (maxMask - this.minPatches) * rand();
      const aspect = Math.exp(
        this.#logAspect[0] + (this.#logAspect[1] - this.#logAspect[0]) * rand(),
      );
      const h = Math.round(Math.sqrt(target * aspect));
      const w = Math.round(Math.sqrt(target / aspect));
      if (w < this.width && h < this.height) {
        const top = Math.floor(rand() * (this.height - h + 1));
        const left = Math.floor(rand() * (this.width - w + 1));
        let masked = 0;
        for (let i = top; i < top + h; i++) {
          for (let j = left; j < left + w; j++) masked += mask[i * this.width + j];
        }
        if (h * w - masked > 0 && h * w - masked <= maxMask) {
          for (let i = top; i < top + h; i++) {
            for (let j = left; j < left + w; j++) {
              if (!mask[i * this.width + j]) {
                mask[i * this.width + j] = 1;
                delta++;
              }
            }
          }
        }
        if (delta > 0) break;
      }
    }
    return delta;
  }

  /** A mask with (about) `count` patches set, 1 = masked, row-major. */
  generate(count: number, rand: Random): Uint8Array {
    const mask = new Uint8Array(this.height * this.width);
    let n = 0;
    while (n < count) {
      const maxMask = Math.min(count - n, this.maxPatches);
      const delta = this.#block(mask, maxMask, rand);
      if (delta === 0) break;
      n += delta;
    }
    return mask;
  }
}

/** Masks for one training batch of `images` crops (both crops of every image, crop-major). */
export interface BatchMasks {
  /** [images, grid²], 1 = masked. */
  masks: Uint8Array;
  /** Flat indices (image·grid² + patch) of masked patches, ascending. */
  indices: Uint32Array;
  /** Per masked patch: 1 / (masked patches in its image). */
  weights: Float32Array;
  /** Masked patches in all. */
  count: number;
}

/**
 * DINOv2's collate_data_and_mask: ⌊images · probability⌋ crops get masks with
 * ratios drawn from consecutive intervals of linspace(ratio[0], ratio[1]),
 * the rest none; the list is shuffled.
 */
export function batchMasks(
  gen: MaskingGenerator,
  images: number,
  rand: Random,
  opts: { probability?: number; ratio?: [number, number] } = {},
): BatchMasks {
  const p = opts.probability ?? 0.5;
  const [r0, r1] = opts.ratio ?? [0.1, 0.5];
  const N = gen.height * gen.width;
  const nMasked = Math.floor(images * p);
  const list: Uint8Array[] = [];
  for (let i = 0; i < nMasked; i++) {
    const lo = r0 + ((r1 - r0) * i) / nMasked;
    const hi = r0 + ((r1 - r0) * (i + 1)) / nMasked;
    list.push(gen.generate(Math.floor(N * (lo + (hi - lo) * rand())), rand));
  }
  for (let i = nMasked; i < images; i++) list.push(new Uint8Array(N));
  for (let i = list.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [list[i], list[j]] = [list[j], list[i]];
  }
  const masks = new Uint8Array(images * N);
  list.forEach((m, i) => masks.set(m, i * N));
  return masksFrom(masks, images);
}

/** Indices and weights for given masks ([images, N] of 0/1). */
export function masksFrom(masks: Uint8Array, images: number): BatchMasks {
  const N = masks.length / images;
  const idx: number[] = [];
  const w: number[] = [];
  for (let b = 0; b < images; b++) {
    let c = 0;
    for (let j = 0; j < N; j++) c += masks[b * N + j] ? 1 : 0;
    for (let j = 0; j < N; j++) {
      if (masks[b * N + j]) {
        idx.push(b * N + j);
        w.push(1 / Math.max(c, 1));
      }
    }
  }
  return {
    masks,
    indices: Uint32Array.from(idx),
    weights: Float32Array.from(w),
    count: idx.length,
  };
}

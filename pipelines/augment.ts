/**
 * DinoBloom's global-crop augmentation on the GPU (docs/recipe.md), and the
 * eval-time resize + normalise (docs/evaluation.md).
 *
 * Training crops, from a batch of uint8 RGB images `[B, S, S, 3]` (packed in
 * u32 words by `gpu.uploadBytes`) to f32 `[2B, 3, N, N]`, crop-major (crop 1
 * of every image, then crop 2): the parameters are drawn on the host
 * (`augment_params.ts`), mapped to what the kernels read (`cropKernelParams`:
 * the crop box, flips and rotation composed into one affine map, the colour
 * ops in their drawn order, the blur weights) and run by the augmentation
 * kernels (`kernels/augment.ts`), which the eval transform shares.
 *
 * Semantics are torchvision's tensor ops on float images in [0, 1]
 * (`u8 / 255`), with one deliberate choice: the bicubic result is clamped to
 * [0, 1], as torchvision's uint8 path and PIL (what the reference ran) do;
 * torch's float path would let overshoot through. Unlike PIL, nothing is
 * rounded to uint8 between ops, and PIL's bicubic uses A = −0.5: the recipe
 * fixes A = −0.75 (torch). Crops never shrink (w, h ≤ S ≤ 224 → N), so no
 * antialiasing is involved.
 *
 * Invariant: crops are independent — every output value depends only on its
 * own crop's parameters and source image, so a sample's crops are bitwise the
 * same whatever batch it is in.
 */
import {
  augmentCrops,
  blurFinishRef as blurKernelRef,
  COLOR_OP_CODES,
  type CropKernelParams,
  encodeCrops,
  type ImageBatch,
  PARAM_WORDS,
  resizeNormalize,
  resizeNormalizeRef,
  warpColorRef as warpKernelRef,
} from "../kernels/augment.ts";
import type { Gpu } from "../kernels/runtime.ts";
import type { GpuTensor } from "../kernels/tensor.ts";
import {
  type AugmentConfig,
  checkAugmentConfig,
  cropAffine,
  type CropParams,
  DINOBLOOM_AUGMENT,
  drawBatchParams,
  gaussianKernel1d,
  IMAGENET_MEAN,
  IMAGENET_STD,
} from "./augment_params.ts";

export * from "./augment_params.ts";
export { type ImageBatch, PARAM_WORDS };

/** What the kernels read of one crop: `p` under `cfg`, its geometry as one affine map. */
export function cropKernelParams(p: CropParams, cfg: AugmentConfig): CropKernelParams {
  const m = cropAffine(p, cfg.outSize);
  const j = p.jitter;
  return {
    // mat3 is column-major with 4-word columns: m[0], m[4], m[8] form the x row.
    affine: [m[0], m[4], m[8], m[1], m[5], m[9]],
    box: p.crop,
    image: p.image,
    ops: (j?.order ?? []).map((op) => COLOR_OP_CODES[op]),
    factors: j ? [j.brightness, j.contrast, j.saturation, j.hue] : [0, 0, 0, 0],
    grayscale: p.grayscale,
    blur: p.blurSigma === null ? null : gaussianKernel1d(cfg.blurKernel, p.blurSigma),
    solarize: p.solarize,
  };
}

/**
 * Packs crop parameters into the f32 words the kernels read (`PARAM_WORDS`
 * per crop). Exported so a recorded training step can `gpu.write` it into a
 * tensor it keeps bound.
 */
export function encodeCropParams(
  params: readonly CropParams[],
  cfg: AugmentConfig = DINOBLOOM_AUGMENT,
): Float32Array {
  return encodeCrops(params.map((p) => cropKernelParams(p, cfg)));
}

/**
 * Runs the augmentation kernels for explicit crop parameters: returns f32
 * `[params.length, 3, N, N]`, row i made from `params[i]`. `augmentGlobalCrops`
 * draws the parameters; tests and replays call this directly.
 */
export function applyCropParams(
  gpu: Gpu,
  images: GpuTensor,
  params: readonly CropParams[],
  batch: ImageBatch & {
    config?: AugmentConfig;
    /** A tensor holding `encodeCropParams(params)` (for recorded steps); default: uploaded here. */
    paramTensor?: GpuTensor;
    /**
     * At most this many crops per pass, to bound the temporaries (24·N² bytes per crop in a
     * pass; rounded up to what keeps output views aligned). Default: as many as one binding holds.
     */
    chunkCrops?: number;
  },
): GpuTensor {
  const op = "applyCropParams";
  const cfg = batch.config ?? DINOBLOOM_AUGMENT;
  checkAugmentConfig(cfg);
  checkParams(op, params, batch);
  const prm = batch.paramTensor ??
    gpu.tensor(encodeCropParams(params, cfg), [params.length * PARAM_WORDS], "augment params");
  try {
    return augmentCrops(gpu, op, images, prm, { ...batch, crops: params.length }, cfg);
  } finally {
    if (prm !== batch.paramTensor) gpu.release(prm);
  }
}

function checkParams(op: string, params: readonly CropParams[], b: ImageBatch): void {
  params.forEach((p, i) => {
    const { top, left, height, width } = p.crop;
    const ok = [top, left, height, width].every(Number.isInteger) && top >= 0 && left >= 0 &&
      height >= 1 && width >= 1 && top + height <= b.size && left + width <= b.size;
    if (!ok) {
      throw new RangeError(
        `${op}: params[${i}].crop ${JSON.stringify(p.crop)} does not lie inside the ` +
          `${b.size}×${b.size} images`,
      );
    }
    if (!Number.isInteger(p.image) || p.image < 0 || p.image >= b.count) {
      throw new RangeError(
        `${op}: params[${i}].image is ${p.image}, outside the batch of ${b.count} images`,
      );
    }
    if (p.jitter && new Set(p.jitter.order).size !== p.jitter.order.length) {
      throw new RangeError(`${op}: params[${i}].jitter.order repeats an op`);
    }
    if (p.blurSigma !== null && !(p.blurSigma > 0)) {
      throw new RangeError(`${op}: params[${i}].blurSigma must be > 0, got ${p.blurSigma}`);
    }
  });
}

/** Options of `augmentGlobalCrops`. */
export interface AugmentOptions extends ImageBatch {
  /** Seed of the run; with the sample ids it fixes every crop. */
  seed: number;
  /**
   * One id per image, stable across batches (e.g. `epoch · N + dataset index`);
   * default `0 … count − 1`.
   */
  sampleIds?: readonly number[];
  config?: AugmentConfig;
}

/** The crops and the parameters that made them (for logs and tests). */
export interface AugmentResult {
  /** f32 `[2B, 3, N, N]`, crop-major. The caller owns it. */
  crops: GpuTensor;
  /** One entry per row of `crops`. */
  params: CropParams[];
}

/**
 * Two global crops per image, DinoBloom's recipe: draws the parameters
 * (deterministic by seed and sample id) and runs the kernels. Input: uint8
 * RGB `[B, S, S, 3]` packed by `gpu.uploadBytes`; output crop-major
 * `[2B, 3, N, N]`, normalised.
 */
export function augmentGlobalCrops(
  gpu: Gpu,
  images: GpuTensor,
  opts: AugmentOptions,
): AugmentResult {
  const cfg = opts.config ?? DINOBLOOM_AUGMENT;
  const ids = opts.sampleIds ?? Array.from({ length: opts.count }, (_, i) => i);
  if (ids.length !== opts.count) {
    throw new RangeError(
      `augmentGlobalCrops: sampleIds has ${ids.length} entries for ${opts.count} images`,
    );
  }
  const params = drawBatchParams(opts.seed, ids, opts.size, cfg);
  const crops = applyCropParams(gpu, images, params, { ...opts, config: cfg });
  return { crops, params };
}

// ------------------------------------------------------------ eval transform

/** Options of `evalTransform`. */
export interface EvalTransformOptions extends ImageBatch {
  /** Output side (default 224). */
  outSize?: number;
  mean?: readonly [number, number, number];
  std?: readonly [number, number, number];
}

function evalConfig(o: EvalTransformOptions): AugmentConfig {
  const cfg: AugmentConfig = {
    ...DINOBLOOM_AUGMENT,
    outSize: o.outSize ?? 224,
    mean: o.mean ?? IMAGENET_MEAN,
    std: o.std ?? IMAGENET_STD,
  };
  checkAugmentConfig(cfg);
  return cfg;
}

/**
 * The evaluation transform (docs/evaluation.md): uint8 `[B, S, S, 3]` (packed by
 * `gpu.uploadBytes`) → bilinear resize to N (antialiased when shrinking, as
 * PIL and torch's `antialias=True`; the identity when S = N) → ImageNet
 * normalisation → f32 `[B, 3, N, N]`.
 */
export function evalTransform(gpu: Gpu, images: GpuTensor, opts: EvalTransformOptions): GpuTensor {
  return resizeNormalize(gpu, "evalTransform", images, opts, evalConfig(opts));
}

// ------------------------------------------------------------ CPU references

/**
 * Reference of the first three kernels (luma pre-pass, mean, warp + colour):
 * planar `[crops, 3, N, N]` before blur, in float64 rounded once to f32.
 */
export function warpColorRef(
  pixels: Uint8Array,
  batch: ImageBatch,
  params: readonly CropParams[],
  cfg: AugmentConfig = DINOBLOOM_AUGMENT,
): Float32Array {
  return warpKernelRef(pixels, batch, params.map((p) => cropKernelParams(p, cfg)), cfg);
}

/**
 * Reference of the blur passes: Gaussian blur (reflect padding) where drawn,
 * solarize, normalise; `x` is planar `[crops, 3, N, N]`.
 */
export function blurFinishRef(
  x: Float32Array,
  params: readonly CropParams[],
  cfg: AugmentConfig = DINOBLOOM_AUGMENT,
): Float32Array {
  return blurKernelRef(x, params.map((p) => cropKernelParams(p, cfg)), cfg);
}

/** Reference of `applyCropParams`: `blurFinishRef(warpColorRef(…))`. */
export function augmentRef(
  pixels: Uint8Array,
  batch: ImageBatch,
  params: readonly CropParams[],
  cfg: AugmentConfig = DINOBLOOM_AUGMENT,
): Float32Array {
  return blurFinishRef(warpColorRef(pixels, batch, params, cfg), params, cfg);
}

/** Reference of `evalTransform` on raw `[B, S, S, 3]` bytes (float64, planar f32 out). */
export function evalTransformRef(pixels: Uint8Array, opts: EvalTransformOptions): Float32Array {
  return resizeNormalizeRef(pixels, opts, evalConfig(opts));
}

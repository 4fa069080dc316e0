/**
 * Host-side random parameters of DinoBloom's global-crop augmentation
 * (docs/recipe.md, DINOv2's DataAugmentationDINO without local crops), drawn
 * with torchvision's sampling procedures but from bloom's own seeded source:
 *
 * - RandomResizedCrop(scale (0.32, 1), ratio (3/4, 4/3)): ten tries of a
 *   uniform area and a log-uniform aspect, `w = round(√(a·r))`,
 *   `h = round(√(a/r))`, accepted when `0 < w ≤ W` and `0 < h ≤ H`, the corner
 *   uniform over the fitting positions; else the central-crop fallback.
 * - h-flip, v-flip, 90° rotation (counter-clockwise, as `torch.rot90(x, 1)`;
 *   with both flips at p 0.5 the direction does not change the distribution).
 * - ColorJitter(0.4, 0.4, 0.2, 0.1) with p 0.8: a random order of the four ops
 *   (torch.randperm), then the factors in the order brightness, contrast,
 *   saturation, hue.
 * - RandomGrayscale p 0.2; Gaussian blur sigma U(0.1, 2) with p 0 (crop 1) or
 *   0.9 (crop 2); solarize p 0.2 on crop 2 only. DINOv2's `GaussianBlur(p)`
 *   applies the blur with probability `1 − p`; DinoBloom passes the values
 *   meant as apply-probabilities, so what ran is the inverse: kept here.
 *
 * Invariant: a crop's parameters depend only on (seed, sample id, crop index),
 * never on the batch it is drawn in, so a sample gets the same crops whatever
 * the batch size, order or shard interleaving.
 *
 * The geometric steps (crop box → flips → rotation) compose into one affine
 * map from output pixel indices to source positions (`cropAffine`), built with
 * wgpu-matrix; the GPU kernel then resamples each output pixel once.
 */
import { mat3d } from "npm:wgpu-matrix@3.4.2";
import { mixSeed, mulberry32, type Random } from "../graph/random.ts";

/** A crop box in source pixels (torchvision's `i, j, h, w`). */
export interface CropBox {
  top: number;
  left: number;
  height: number;
  width: number;
}

/** The four ColorJitter ops, in torchvision's index order (0 … 3). */
export const COLOR_OPS = ["brightness", "contrast", "saturation", "hue"] as const;
/** One ColorJitter op. */
export type ColorOp = typeof COLOR_OPS[number];

/** A drawn ColorJitter: the order its ops run in and their factors. */
export interface JitterParams {
  order: ColorOp[];
  brightness: number;
  contrast: number;
  saturation: number;
  hue: number;
}

/** Everything random about one augmented crop. */
export interface CropParams {
  /** Which source image of the batch (row of the input tensor). */
  image: number;
  /** 0 for the first global crop, 1 for the second. */
  cropIndex: number;
  crop: CropBox;
  /** RandomResizedCrop tries used (1 … 10), 0 when the central fallback was taken. */
  tries: number;
  hflip: boolean;
  vflip: boolean;
  rot90: boolean;
  /** Null when ColorJitter was not applied (it is with p 0.8). */
  jitter: JitterParams | null;
  grayscale: boolean;
  /** Blur sigma, or null for no blur. */
  blurSigma: number | null;
  solarize: boolean;
}

/** The augmentation recipe; `DINOBLOOM_AUGMENT` is what DinoBloom trained with. */
export interface AugmentConfig {
  /** Output side of a crop (224). */
  outSize: number;
  /** RandomResizedCrop area range, as fractions of the source area. */
  scale: readonly [number, number];
  /** RandomResizedCrop aspect-ratio range (w/h). */
  ratio: readonly [number, number];
  hflipP: number;
  vflipP: number;
  rot90P: number;
  jitterP: number;
  /** ColorJitter strengths: factor ranges are [1 − b, 1 + b] etc., hue [−h, h]. */
  brightness: number;
  contrast: number;
  saturation: number;
  hue: number;
  grayscaleP: number;
  /** Blur probability per crop index. */
  blurP: readonly [number, number];
  blurSigma: readonly [number, number];
  /** Blur kernel size (odd). */
  blurKernel: number;
  /** Solarize probability per crop index. */
  solarizeP: readonly [number, number];
  /** Solarize threshold on [0, 1] values (pixels ≥ it are inverted). */
  solarizeThreshold: number;
  mean: readonly [number, number, number];
  std: readonly [number, number, number];
}

/** DinoBloom's global-crop recipe (docs/recipe.md). */
export const DINOBLOOM_AUGMENT: Readonly<AugmentConfig> = Object.freeze<AugmentConfig>({
  outSize: 224,
  scale: [0.32, 1],
  ratio: [3 / 4, 4 / 3],
  hflipP: 0.5,
  vflipP: 0.5,
  rot90P: 0.5,
  jitterP: 0.8,
  brightness: 0.4,
  contrast: 0.4,
  saturation: 0.2,
  hue: 0.1,
  grayscaleP: 0.2,
  blurP: [0, 0.9],
  blurSigma: [0.1, 2],
  blurKernel: 9,
  solarizeP: [0, 0.2],
  solarizeThreshold: 128 / 255,
  mean: [0.485, 0.456, 0.406],
  std: [0.229, 0.224, 0.225],
});

/** ImageNet normalisation, shared by the training crops and the eval transform. */
export const IMAGENET_MEAN: readonly [number, number, number] = DINOBLOOM_AUGMENT.mean;
/** ImageNet standard deviations. */
export const IMAGENET_STD: readonly [number, number, number] = DINOBLOOM_AUGMENT.std;

/**
 * Checks a config's ranges, throwing a RangeError that names the key and the
 * allowed range (so a hand-edited config fails before any GPU work).
 */
export function checkAugmentConfig(cfg: AugmentConfig): void {
  const bad = (key: string, want: string, got: unknown) => {
    throw new RangeError(`augment config: ${key} must be ${want}, got ${JSON.stringify(got)}`);
  };
  if (!Number.isInteger(cfg.outSize) || cfg.outSize < 8) {
    bad("outSize", "an integer ≥ 8", cfg.outSize);
  }
  const [s0, s1] = cfg.scale;
  if (!(s0 > 0 && s0 <= s1 && s1 <= 1)) bad("scale", "0 < min ≤ max ≤ 1", cfg.scale);
  const [r0, r1] = cfg.ratio;
  if (!(r0 > 0 && r0 <= r1 && Number.isFinite(r1))) bad("ratio", "0 < min ≤ max", cfg.ratio);
  const probs: [string, number][] = [
    ["hflipP", cfg.hflipP],
    ["vflipP", cfg.vflipP],
    ["rot90P", cfg.rot90P],
    ["jitterP", cfg.jitterP],
    ["grayscaleP", cfg.grayscaleP],
    ["blurP[0]", cfg.blurP[0]],
    ["blurP[1]", cfg.blurP[1]],
    ["solarizeP[0]", cfg.solarizeP[0]],
    ["solarizeP[1]", cfg.solarizeP[1]],
  ];
  for (const [k, p] of probs) if (!(p >= 0 && p <= 1)) bad(k, "a probability in [0, 1]", p);
  for (const k of ["brightness", "contrast", "saturation"] as const) {
    if (!(cfg[k] >= 0 && cfg[k] <= 1)) bad(k, "in [0, 1] (factor range [1 − v, 1 + v])", cfg[k]);
  }
  if (!(cfg.hue >= 0 && cfg.hue <= 0.5)) bad("hue", "in [0, 0.5]", cfg.hue);
  const [g0, g1] = cfg.blurSigma;
  if (!(g0 > 0 && g0 <= g1 && Number.isFinite(g1))) bad("blurSigma", "0 < min ≤ max", [g0, g1]);
  if (!Number.isInteger(cfg.blurKernel) || cfg.blurKernel < 1 || cfg.blurKernel % 2 === 0) {
    bad("blurKernel", "an odd positive integer", cfg.blurKernel);
  }
  if (Math.floor(cfg.blurKernel / 2) >= cfg.outSize) {
    // Reflect padding needs a pad below the side (torch's rule).
    bad("blurKernel", `below 2·outSize (${cfg.outSize}) for reflect padding`, cfg.blurKernel);
  }
  if (cfg.blurKernel > MAX_BLUR_KERNEL) {
    bad("blurKernel", `at most ${MAX_BLUR_KERNEL}`, cfg.blurKernel);
  }
  if (!(cfg.solarizeThreshold >= 0 && cfg.solarizeThreshold <= 1)) {
    bad("solarizeThreshold", "in [0, 1]", cfg.solarizeThreshold);
  }
  for (let c = 0; c < 3; c++) {
    if (!(cfg.std[c] > 0) || !Number.isFinite(cfg.mean[c])) {
      bad("mean/std", "finite, with std > 0", { mean: cfg.mean, std: cfg.std });
    }
  }
}

/** The largest blur kernel the GPU parameter block has room for. */
export const MAX_BLUR_KERNEL = 15;

/**
 * The seed of one crop's random stream. Sample ids may be any non-negative
 * integer below 2^53 (e.g. `epoch · N + index`): both 32-bit halves are mixed.
 */
export function cropSeed(seed: number, sampleId: number, cropIndex: number): number {
  if (!Number.isSafeInteger(sampleId) || sampleId < 0) {
    throw new RangeError(`sample id must be a non-negative safe integer, got ${sampleId}`);
  }
  const lo = sampleId >>> 0;
  const hi = Math.floor(sampleId / 4294967296) >>> 0;
  return mixSeed(mixSeed(mixSeed(seed >>> 0, lo), hi), 0x51ed27 + cropIndex);
}

/**
 * torchvision's `RandomResizedCrop.get_params` on a `height`×`width` image with
 * `rand` in place of torch's generator.
 */
export function sampleResizedCrop(
  rand: Random,
  height: number,
  width: number,
  scale: readonly [number, number],
  ratio: readonly [number, number],
): CropBox & { tries: number } {
  const area = height * width;
  const logR0 = Math.log(ratio[0]);
  const logR1 = Math.log(ratio[1]);
  for (let t = 1; t <= 10; t++) {
    const targetArea = area * (scale[0] + (scale[1] - scale[0]) * rand());
    const aspect = Math.exp(logR0 + (logR1 - logR0) * rand());
    // Python's round() is half-to-even; equal halves occur with probability ~0.
    const w = roundHalfEven(Math.sqrt(targetArea * aspect));
    const h = roundHalfEven(Math.sqrt(targetArea / aspect));
    if (w > 0 && w <= width && h > 0 && h <= height) {
      const top = Math.floor(rand() * (height - h + 1));
      const left = Math.floor(rand() * (width - w + 1));
      return { top, left, height: h, width: w, tries: t };
    }
  }
  const inRatio = width / height;
  let w: number, h: number;
  if (inRatio < Math.min(...ratio)) {
    w = width;
    h = roundHalfEven(w / Math.min(...ratio));
  } else if (inRatio > Math.max(...ratio)) {
    h = height;
    w = roundHalfEven(h * Math.max(...ratio));
  } else {
    w = width;
    h = height;
  }
  return {
    top: Math.floor((height - h) / 2),
    left: Math.floor((width - w) / 2),
    height: h,
    width: w,
    tries: 0,
  };
}

function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * Draws every random parameter of crop `cropIndex` (0 or 1) of one sample, in
 * the order DataAugmentationDINO consumes randomness: crop box, flips,
 * rotation, jitter (apply?, order, factors), grayscale, blur, solarize.
 */
export function drawCropParams(
  seed: number,
  sampleId: number,
  cropIndex: number,
  inSize: number,
  image: number,
  cfg: AugmentConfig = DINOBLOOM_AUGMENT,
): CropParams {
  if (cropIndex !== 0 && cropIndex !== 1) {
    throw new RangeError(`cropIndex must be 0 or 1 (two global crops), got ${cropIndex}`);
  }
  const rand = mulberry32(cropSeed(seed, sampleId, cropIndex));
  const box = sampleResizedCrop(rand, inSize, inSize, cfg.scale, cfg.ratio);
  const hflip = rand() < cfg.hflipP;
  const vflip = rand() < cfg.vflipP;
  const rot90 = rand() < cfg.rot90P;
  let jitter: JitterParams | null = null;
  if (rand() < cfg.jitterP) {
    const order: ColorOp[] = [...COLOR_OPS];
    // torch.randperm(4): a uniform permutation (Fisher–Yates here).
    for (let i = order.length - 1; i > 0; i--) {
      const j = Math.floor(rand() * (i + 1));
      [order[i], order[j]] = [order[j], order[i]];
    }
    const u = (lo: number, hi: number) => lo + (hi - lo) * rand();
    jitter = {
      order,
      brightness: u(1 - cfg.brightness, 1 + cfg.brightness),
      contrast: u(1 - cfg.contrast, 1 + cfg.contrast),
      saturation: u(1 - cfg.saturation, 1 + cfg.saturation),
      hue: u(-cfg.hue, cfg.hue),
    };
  }
  const grayscale = rand() < cfg.grayscaleP;
  let blurSigma: number | null = null;
  if (rand() < cfg.blurP[cropIndex]) {
    blurSigma = cfg.blurSigma[0] + (cfg.blurSigma[1] - cfg.blurSigma[0]) * rand();
  }
  const solarize = rand() < cfg.solarizeP[cropIndex];
  const { tries, ...crop } = box;
  return {
    image,
    cropIndex,
    crop,
    tries,
    hflip,
    vflip,
    rot90,
    jitter,
    grayscale,
    blurSigma,
    solarize,
  };
}

/**
 * Parameters of both global crops of a batch, crop-major: rows `0 … B−1` are
 * crop 1 of images `0 … B−1`, rows `B … 2B−1` their crop 2 (what the training
 * step expects). `sampleIds[b]` identifies image b across epochs and batches.
 */
export function drawBatchParams(
  seed: number,
  sampleIds: readonly number[],
  inSize: number,
  cfg: AugmentConfig = DINOBLOOM_AUGMENT,
): CropParams[] {
  const out: CropParams[] = [];
  for (let c = 0; c < 2; c++) {
    sampleIds.forEach((id, b) => out.push(drawCropParams(seed, id, c, inSize, b, cfg)));
  }
  return out;
}

/**
 * The affine map of one crop, from output pixel indices `(x, y, 1)` to the
 * continuous source position *relative to the crop's top-left corner*, as a
 * wgpu-matrix mat3 (column-major, float64). Composition, applied to the index
 * of an output pixel (inverse order of the forward transform):
 * undo the rotation (`out[y][x] = Z[x][N−1−y]`), undo the flips
 * (`x → N−1−x`, `y → N−1−y`), then torch's resize mapping
 * `src = (dst + 0.5)·(w/N) − 0.5` per axis (align_corners=False).
 */
export function cropAffine(p: CropParams, outSize: number): Float64Array {
  const n1 = outSize - 1;
  // Rotation undone: (zx, zy) = (N−1−oy, ox).
  const unrotate = p.rot90 ? mat3d.create(0, 1, 0, -1, 0, 0, n1, 0, 1) : mat3d.identity();
  const unflip = mat3d.create(
    p.hflip ? -1 : 1,
    0,
    0,
    0,
    p.vflip ? -1 : 1,
    0,
    p.hflip ? n1 : 0,
    p.vflip ? n1 : 0,
    1,
  );
  const sx = p.crop.width / outSize;
  const sy = p.crop.height / outSize;
  const resize = mat3d.create(sx, 0, 0, 0, sy, 0, 0.5 * sx - 0.5, 0.5 * sy - 0.5, 1);
  return mat3d.multiply(resize, mat3d.multiply(unflip, unrotate)) as Float64Array;
}

/**
 * The normalised 1-D Gaussian kernel torchvision's `gaussian_blur` uses
 * (`exp(−x²/2σ²)` on `linspace(−k/2, k/2)`, divided by its sum), in float64.
 */
export function gaussianKernel1d(size: number, sigma: number): Float64Array {
  const half = (size - 1) / 2;
  const k = new Float64Array(size);
  let sum = 0;
  for (let i = 0; i < size; i++) {
    const x = (i - half) / sigma;
    k[i] = Math.exp(-0.5 * x * x);
    sum += k[i];
  }
  for (let i = 0; i < size; i++) k[i] /= sum;
  return k;
}

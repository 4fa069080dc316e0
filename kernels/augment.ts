/**
 * The augmentation kernels: DinoBloom's global crops and the evaluation
 * resize, from uint8 RGB images `[B, S, S, 3]` (packed in u32 words by
 * `gpu.uploadBytes`) to normalised f32 `[crops, 3, N, N]`. What the crops are
 * (drawn parameters, torchvision's semantics) is `pipelines/augment.ts`; here
 * is how each crop's parameters (`CropKernelParams`, packed by `encodeCrops`)
 * turn into pixels, in these kernels:
 *
 * 0. `augment_unpack_rgb`: one word per source pixel, so a bicubic tap is one
 *    aligned load (both crops of an image read it).
 * 1. `augment_luma_rows`: for crops whose colour ops include contrast, the
 *    grayscale sum of each output row of the image as it stands just before
 *    contrast (torch blends with the mean of the grayscale of the *current*
 *    image, a whole-image reduction in the middle of the per-pixel chain).
 *    It recomputes the resampling rather than storing it; then
 *    `augment_luma_mean` folds the rows into one mean per crop.
 * 2. `augment_warp_color`: one invocation per output pixel resamples it through
 *    the crop's affine map with PyTorch's bicubic (A = −0.75,
 *    align_corners=False, taps clamped to the crop box), clamps to [0, 1], and
 *    applies the colour ops in their order (brightness, contrast, saturation
 *    as `_blend`, hue through torch's RGB→HSV→RGB), then grayscale (0.2989,
 *    0.587, 0.114, replicated).
 * 3. `augment_blur_rows` and `augment_blur_cols`: the separable Gaussian blur
 *    (reflect padding) where the crop has one — a copy elsewhere — and, in the
 *    second pass, solarize and the normalisation.
 * And `eval_resize_normalize`: torch's antialiased bilinear resize (PIL's
 * triangle filter) and the normalisation, one invocation per output pixel.
 *
 * Per-crop parameters live in a storage tensor (`PARAM_WORDS` f32 per crop),
 * not in the uniform block: they change every step. Invariant: crops are
 * independent — every output value depends only on its own crop's parameters
 * and source image, so a sample's crops are bitwise the same whatever batch
 * it is in.
 */
import { splitSpans } from "./common/split.ts";
import { checkBindingBytes } from "./common/window.ts";
import { flatMain, grid, kernel } from "./kernel.ts";
import type { Gpu } from "./runtime.ts";
import type { GpuTensor } from "./tensor.ts";
import { Uniforms } from "./uniforms.ts";

// ------------------------------------------------------------------ parameters

const WG = 256;
/** f32 words per crop in the parameter tensor (see `encodeCrops`). */
export const PARAM_WORDS = 40;
// Word offsets inside one crop's block.
const P_AFFINE = 0; // 6: sx = a·x + b·y + c, sy = d·x + e·y + f
const P_BOX = 6; // left, top, width, height
const P_IMAGE = 10;
const P_NOPS = 11;
const P_OPS = 12; // 4 op codes (COLOR_OP_CODES)
const P_FACTORS = 16; // brightness, contrast, saturation, hue
const P_GRAY = 20;
const P_CONTRAST_AT = 21; // position of contrast in the order, 4 if absent
const P_BLUR = 22;
const P_SOLARIZE = 23;
const P_WEIGHTS = 24; // MAX_BLUR_WEIGHTS blur weights
/** The most blur weights a crop's words hold. */
export const MAX_BLUR_WEIGHTS = PARAM_WORDS - P_WEIGHTS;
/** Bytes of the shared uniform block (12 scalars). */
const UNIFORM_BYTES = 48;

/** The colour-op codes the kernels know, in torchvision's ColorJitter index order. */
export const COLOR_OP_CODES = { brightness: 0, contrast: 1, saturation: 2, hue: 3 } as const;

/** One crop as the kernels see it (what `encodeCrops` packs). */
export interface CropKernelParams {
  /** Source position of output pixel (x, y): (a·x + b·y + c, d·x + e·y + f). */
  affine: readonly [number, number, number, number, number, number];
  /** The crop box in source pixels; bicubic taps are clamped to it. */
  box: { left: number; top: number; width: number; height: number };
  /** Source image of the batch. */
  image: number;
  /** Colour ops in the order they run (`COLOR_OP_CODES`), at most 4, none twice. */
  ops: readonly number[];
  /** Factors by op code: brightness, contrast, saturation, hue. */
  factors: readonly [number, number, number, number];
  grayscale: boolean;
  /** Gaussian blur weights (the config's `blurKernel` of them), or null for no blur. */
  blur: ArrayLike<number> | null;
  solarize: boolean;
}

/**
 * Packs crops into the f32 words the kernels read. Integers (box, image
 * index, flags, op codes) are stored as exact f32 values (all < 2^24).
 */
export function encodeCrops(crops: readonly CropKernelParams[]): Float32Array {
  const w = new Float32Array(crops.length * PARAM_WORDS);
  crops.forEach((c, i) => {
    const o = i * PARAM_WORDS;
    w.set(c.affine, o + P_AFFINE);
    w.set([c.box.left, c.box.top, c.box.width, c.box.height], o + P_BOX);
    w[o + P_IMAGE] = c.image;
    w[o + P_NOPS] = c.ops.length;
    w.set(c.ops, o + P_OPS);
    w.set(c.factors, o + P_FACTORS);
    w[o + P_GRAY] = c.grayscale ? 1 : 0;
    const at = c.ops.indexOf(COLOR_OP_CODES.contrast);
    w[o + P_CONTRAST_AT] = at < 0 ? 4 : at;
    w[o + P_BLUR] = c.blur === null ? 0 : 1;
    w[o + P_SOLARIZE] = c.solarize ? 1 : 0;
    if (c.blur !== null) {
      if (c.blur.length > MAX_BLUR_WEIGHTS) {
        throw new RangeError(
          `encodeCrops: crop ${i} has ${c.blur.length} blur weights, at most ${MAX_BLUR_WEIGHTS}`,
        );
      }
      w.set(c.blur, o + P_WEIGHTS);
    }
  });
  return w;
}

/** What the kernels read from the augmentation config (every kernel's uniforms). */
export interface PixelConfig {
  /** Output side N. */
  outSize: number;
  /** Gaussian blur taps (odd). */
  blurKernel: number;
  /** Solarize flips values at or above this level. */
  solarizeThreshold: number;
  /** Per-channel normalisation: (v − mean) / std. */
  mean: readonly [number, number, number];
  std: readonly [number, number, number];
}

/** Shape facts of an image batch tensor. */
export interface ImageBatch {
  /** Images in the tensor. */
  count: number;
  /** Side S of the square images. */
  size: number;
}

// ------------------------------------------------------------------ kernels

const UNIFORM_WGSL = `
struct U {
  total: u32, N: u32, S: u32, c0: u32, K: u32, thr: f32,
  m0: f32, m1: f32, m2: f32, s0: f32, s1: f32, s2: f32,
}`;

/** Resampling and colour ops, shared by the luma pre-pass and the main kernel. */
const PIXEL_WGSL = `
const PW = ${PARAM_WORDS}u;
// One source pixel, unscaled (0 … 255): \`img\` holds one word per pixel (augment_unpack_rgb).
fn texel(base: u32, x: u32, y: u32) -> vec3f {
  let w = img[base + y * u.S + x];
  return vec3f(f32(w & 255u), f32((w >> 8u) & 255u), f32((w >> 16u) & 255u));
}
// Keys' cubic convolution weights for taps idx-1 … idx+2 at fraction t (PyTorch's A).
fn cubic_w(t: f32) -> vec4f {
  let A = -0.75;
  let a = t + 1.0;
  let b = 1.0 - t;
  let c = 2.0 - t;
  return vec4f(((A * a - 5.0 * A) * a + 8.0 * A) * a - 4.0 * A,
               ((A + 2.0) * t - (A + 3.0)) * t * t + 1.0,
               ((A + 2.0) * b - (A + 3.0)) * b * b + 1.0,
               ((A * c - 5.0 * A) * c + 8.0 * A) * c - 4.0 * A);
}
// The bicubic sample of output pixel (ox, oy) of crop c, clamped to [0, 1].
fn warp(c: u32, ox: u32, oy: u32) -> vec3f {
  let p = (u.c0 + c) * PW;
  let fx = f32(ox);
  let fy = f32(oy);
  let a = p + ${P_AFFINE}u;
  let sx = prm[a] * fx + prm[a + 1u] * fy + prm[a + 2u];
  let sy = prm[a + 3u] * fx + prm[a + 4u] * fy + prm[a + 5u];
  let left = u32(prm[p + ${P_BOX}u]);
  let top = u32(prm[p + ${P_BOX + 1}u]);
  let w = i32(prm[p + ${P_BOX + 2}u]);
  let h = i32(prm[p + ${P_BOX + 3}u]);
  let fxi = min(floor(sx), f32(w - 1));
  let fyi = min(floor(sy), f32(h - 1));
  let wx = cubic_w(clamp(sx - fxi, 0.0, 1.0));
  let wy = cubic_w(clamp(sy - fyi, 0.0, 1.0));
  let ix = i32(fxi);
  let iy = i32(fyi);
  let base = u32(prm[p + ${P_IMAGE}u]) * u.S * u.S;
  // PyTorch's order: interpolate along x within each row, then weight the rows.
  var acc = vec3f(0.0);
  for (var i = 0; i < 4; i++) {
    let yy = u32(clamp(iy - 1 + i, 0, h - 1)) + top;
    var row = vec3f(0.0);
    for (var j = 0; j < 4; j++) {
      let xx = u32(clamp(ix - 1 + j, 0, w - 1)) + left;
      row += wx[j] * texel(base, xx, yy);
    }
    acc += wy[i] * row;
  }
  // One division per pixel instead of one per tap; exact for the identity weights (0, 1, 0, 0).
  return clamp(acc / 255.0, vec3f(0.0), vec3f(1.0));
}
fn gray(c: vec3f) -> f32 { return 0.2989 * c.x + 0.587 * c.y + 0.114 * c.z; }
fn blend(a: vec3f, b: vec3f, r: f32) -> vec3f {
  return clamp(r * a + (1.0 - r) * b, vec3f(0.0), vec3f(1.0));
}
// torchvision's _rgb2hsv / _hsv2rgb, operation for operation.
fn adjust_hue(c: vec3f, hf: f32) -> vec3f {
  let maxc = max(max(c.x, c.y), c.z);
  let minc = min(min(c.x, c.y), c.z);
  let eqc = maxc == minc;
  let cr = maxc - minc;
  let s = cr / select(maxc, 1.0, eqc);
  let crd = select(cr, 1.0, eqc);
  let rc = (maxc - c.x) / crd;
  let gc = (maxc - c.y) / crd;
  let bc = (maxc - c.z) / crd;
  var hh = 0.0;
  if (maxc == c.x) { hh = bc - gc; }
  else if (maxc == c.y) { hh = 2.0 + rc - bc; }
  else { hh = 4.0 + gc - rc; }
  let h0 = fract(hh / 6.0 + 1.0);
  let h1 = h0 + hf;
  let h = h1 - floor(h1);
  let v = maxc;
  let i6 = floor(h * 6.0);
  let f = h * 6.0 - i6;
  let i = u32(i6) % 6u;
  let pp = clamp(v * (1.0 - s), 0.0, 1.0);
  let qq = clamp(v * (1.0 - s * f), 0.0, 1.0);
  let tt = clamp(v * (1.0 - s * (1.0 - f)), 0.0, 1.0);
  switch i {
    case 0u: { return vec3f(v, tt, pp); }
    case 1u: { return vec3f(qq, v, pp); }
    case 2u: { return vec3f(pp, v, tt); }
    case 3u: { return vec3f(pp, qq, v); }
    case 4u: { return vec3f(tt, pp, v); }
    default: { return vec3f(v, pp, qq); }
  }
}
fn color_op(k: u32, col: vec3f, p: u32, mean: f32) -> vec3f {
  let op = u32(prm[p + ${P_OPS}u + k]);
  let f = prm[p + ${P_FACTORS}u + op];
  switch op {
    case 0u: { return blend(col, vec3f(0.0), f); }
    case 1u: { return blend(col, vec3f(mean), f); }
    case 2u: { return blend(col, vec3f(gray(col)), f); }
    default: { return adjust_hue(col, f); }
  }
}`;

/**
 * Repacks the uint8 RGB batch (3 bytes per pixel, straddling words) into one
 * word per pixel, so that each of the warp's 16 taps is one aligned load
 * instead of three byte extractions. Both crops of an image share it.
 */
const unpackKernel = kernel({
  name: "augment_unpack_rgb",
  bindings: ["read", "read_write"],
  uniformBytes: UNIFORM_BYTES,
  source: () =>
    `${UNIFORM_WGSL}
@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
@group(0) @binding(2) var<uniform> u: U;
fn byte_at(i: u32) -> u32 { return (src[i >> 2u] >> ((i & 3u) * 8u)) & 255u; }
${flatMain(WG, "idx", "u.total")}
  let i = idx * 3u;
  dst[idx] = byte_at(i) | (byte_at(i + 1u) << 8u) | (byte_at(i + 2u) << 16u);
}`,
});

const lumaRowsKernel = kernel({
  name: "augment_luma_rows",
  bindings: ["read", "read", "read_write"],
  uniformBytes: UNIFORM_BYTES,
  source: () =>
    `${UNIFORM_WGSL}
@group(0) @binding(0) var<storage, read> img: array<u32>;
@group(0) @binding(1) var<storage, read> prm: array<f32>;
@group(0) @binding(2) var<storage, read_write> rows: array<f32>;
@group(0) @binding(3) var<uniform> u: U;
${PIXEL_WGSL}
${flatMain(WG, "idx", "u.total")}
  let c = idx / u.N;
  let oy = idx % u.N;
  let p = (u.c0 + c) * PW;
  let at = u32(prm[p + ${P_CONTRAST_AT}u]);
  if (at >= 4u) { rows[idx] = 0.0; return; }
  var s = 0.0;
  for (var ox = 0u; ox < u.N; ox++) {
    var col = warp(c, ox, oy);
    for (var k = 0u; k < at; k++) { col = color_op(k, col, p, 0.0); }
    s += gray(col);
  }
  rows[idx] = s;
}`,
});

const lumaMeanKernel = kernel({
  name: "augment_luma_mean",
  bindings: ["read", "read_write"],
  uniformBytes: UNIFORM_BYTES,
  source: () =>
    `${UNIFORM_WGSL}
@group(0) @binding(0) var<storage, read> rows: array<f32>;
@group(0) @binding(1) var<storage, read_write> means: array<f32>;
@group(0) @binding(2) var<uniform> u: U;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let c = gid.x;
  if (c >= u.total) { return; }
  var s = 0.0;
  for (var y = 0u; y < u.N; y++) { s += rows[c * u.N + y]; }
  means[c] = s / f32(u.N * u.N);
}`,
});

const warpColorKernel = kernel({
  name: "augment_warp_color",
  bindings: ["read", "read", "read", "read_write"],
  uniformBytes: UNIFORM_BYTES,
  source: () =>
    `${UNIFORM_WGSL}
@group(0) @binding(0) var<storage, read> img: array<u32>;
@group(0) @binding(1) var<storage, read> prm: array<f32>;
@group(0) @binding(2) var<storage, read> means: array<f32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;
@group(0) @binding(4) var<uniform> u: U;
${PIXEL_WGSL}
${flatMain(WG, "idx", "u.total")}
  let nn = u.N * u.N;
  let c = idx / nn;
  let pix = idx % nn;
  let p = (u.c0 + c) * PW;
  var col = warp(c, pix % u.N, pix / u.N);
  let nops = u32(prm[p + ${P_NOPS}u]);
  let mean = means[c];
  for (var k = 0u; k < nops; k++) { col = color_op(k, col, p, mean); }
  if (prm[p + ${P_GRAY}u] != 0.0) { col = vec3f(gray(col)); }
  let o = c * 3u * nn + pix;
  dst[o] = col.x;
  dst[o + nn] = col.y;
  dst[o + 2u * nn] = col.z;
}`,
});

/** The two blur passes: along rows (`axis` x) or columns plus solarize and normalise. */
function blurKernel(axis: "rows" | "cols") {
  const finish = axis === "cols";
  return kernel({
    name: `augment_blur_${axis}`,
    bindings: ["read", "read", "read_write"],
    uniformBytes: UNIFORM_BYTES,
    source: () =>
      `${UNIFORM_WGSL}
@group(0) @binding(0) var<storage, read> prm: array<f32>;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<uniform> u: U;
const PW = ${PARAM_WORDS}u;
// torch's "reflect" padding: -k → k, N-1+k → N-1-k (needs K/2 < N).
fn reflect(i: i32, n: i32) -> u32 {
  var j = i;
  if (j < 0) { j = -j; }
  if (j >= n) { j = 2 * n - 2 - j; }
  return u32(j);
}
${flatMain(WG, "idx", "u.total")}
  let nn = u.N * u.N;
  let plane = idx / nn;
  let c = plane / 3u;
  let pix = idx % nn;
  let x = pix % u.N;
  let y = pix / u.N;
  let p = (u.c0 + c) * PW;
  var v = src[idx];
  if (prm[p + ${P_BLUR}u] != 0.0) {
    let half = i32(u.K / 2u);
    let n = i32(u.N);
    var acc = 0.0;
    for (var k = 0u; k < u.K; k++) {
      let wk = prm[p + ${P_WEIGHTS}u + k];
      ${
        finish
          ? "acc += wk * src[plane * nn + reflect(i32(y) + i32(k) - half, n) * u.N + x];"
          : "acc += wk * src[plane * nn + y * u.N + reflect(i32(x) + i32(k) - half, n)];"
      }
    }
    v = acc;
  }
  ${
        finish
          ? `if (prm[p + ${P_SOLARIZE}u] != 0.0 && v >= u.thr) { v = 1.0 - v; }
  let ch = plane % 3u;
  let m = select(select(u.m2, u.m1, ch == 1u), u.m0, ch == 0u);
  let s = select(select(u.s2, u.s1, ch == 1u), u.s0, ch == 0u);
  v = (v - m) / s;`
          : ""
      }
  dst[idx] = v;
}`,
  });
}

const blurRowsKernel = blurKernel("rows");
const blurColsKernel = blurKernel("cols");

const evalKernel = kernel({
  name: "eval_resize_normalize",
  bindings: ["read", "read_write"],
  uniformBytes: UNIFORM_BYTES,
  source: () =>
    `${UNIFORM_WGSL}
@group(0) @binding(0) var<storage, read> img: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<uniform> u: U;
fn byte_at(i: u32) -> f32 { return f32((img[i >> 2u] >> ((i & 3u) * 8u)) & 255u); }
// One axis of torch's antialiased bilinear (PIL's triangle filter, support
// scaled when shrinking): first tap, tap count, and the weights' sum.
struct Axis { lo: u32, n: u32, center: f32, inv: f32, total: f32 }
fn axis(o: u32) -> Axis {
  let scale = f32(u.S) / f32(u.N);
  let center = scale * (f32(o) + 0.5);
  let inv = select(1.0, 1.0 / scale, scale >= 1.0);
  let support = select(1.0, scale, scale >= 1.0);
  let lo = max(i32(center - support + 0.5), 0);
  let hi = min(i32(center + support + 0.5), i32(u.S));
  var total = 0.0;
  for (var j = lo; j < hi; j++) {
    total += max(0.0, 1.0 - abs((f32(j) - center + 0.5) * inv));
  }
  return Axis(u32(lo), u32(hi - lo), center, inv, total);
}
fn tri(a: Axis, j: u32) -> f32 {
  return max(0.0, 1.0 - abs((f32(a.lo + j) - a.center + 0.5) * a.inv)) / a.total;
}
${flatMain(WG, "idx", "u.total")}
  let nn = u.N * u.N;
  let b = idx / nn + u.c0;
  let pix = idx % nn;
  let ax = axis(pix % u.N);
  let ay = axis(pix / u.N);
  let base = b * u.S * u.S * 3u;
  var acc = vec3f(0.0);
  for (var i = 0u; i < ay.n; i++) {
    var row = vec3f(0.0);
    let rb = base + (ay.lo + i) * u.S * 3u;
    for (var j = 0u; j < ax.n; j++) {
      let q = rb + (ax.lo + j) * 3u;
      row += tri(ax, j) * vec3f(byte_at(q), byte_at(q + 1u), byte_at(q + 2u));
    }
    acc += tri(ay, i) * row;
  }
  acc = acc / 255.0;
  let o = (idx / nn) * 3u * nn + pix;
  dst[o] = (acc.x - u.m0) / u.s0;
  dst[o + nn] = (acc.y - u.m1) / u.s1;
  dst[o + 2u * nn] = (acc.z - u.m2) / u.s2;
}`,
});

// ------------------------------------------------------------------ dispatch

function uniforms(
  total: number,
  N: number,
  S: number,
  c0: number,
  cfg: PixelConfig,
): Uint8Array {
  const p = new Uniforms(UNIFORM_BYTES).u32(total).u32(N).u32(S).u32(c0).u32(cfg.blurKernel);
  p.f32(cfg.solarizeThreshold);
  for (const m of cfg.mean) p.f32(m);
  for (const s of cfg.std) p.f32(s);
  return p.bytes;
}

/**
 * Checks that `images` holds `count` uint8 RGB `size`² images packed in u32
 * words, within one binding; errors name `op`.
 */
export function checkImageBatch(gpu: Gpu, op: string, images: GpuTensor, b: ImageBatch): void {
  if (!Number.isInteger(b.count) || b.count < 1) {
    throw new RangeError(`${op}: count must be a positive integer, got ${b.count}`);
  }
  if (!Number.isInteger(b.size) || b.size < 1) {
    throw new RangeError(`${op}: size must be a positive integer, got ${b.size}`);
  }
  const words = Math.ceil((b.count * b.size * b.size * 3) / 4);
  if (images.dtype !== "u32" || images.numel !== words) {
    throw new RangeError(
      `${op}: images must be ${b.count} RGB images of ${b.size}×${b.size} uint8 packed as ` +
        `${words} u32 words (gpu.uploadBytes of [B, S, S, 3]), got a ${images.dtype} tensor ` +
        `[${images.shape}]`,
    );
  }
  const per = b.size * b.size * 3;
  checkBindingBytes(
    gpu,
    op,
    `${b.count} images of ${b.size}² px`,
    images.size,
    `use batches of at most ${Math.floor(gpu.limits.maxStorageBufferBindingSize / per)} images`,
  );
}

/** Spans of `count` output items of `N`² RGB f32 pixels that each fit a binding. */
function outputSpans(gpu: Gpu, op: string, count: number, N: number, maxCount?: number) {
  return splitSpans(gpu.limits, {
    op,
    item: `${N}×${N} output`,
    count,
    itemBytes: [3 * N * N * 4],
    maxCount,
    fix:
      `use an output size whose 12·N² is a multiple of ${gpu.limits.minStorageBufferOffsetAlignment}`,
  });
}

/**
 * The crop kernels: f32 `[crops, 3, N, N]` from `images` (a checked
 * `ImageBatch`) and `params`, f32 `[crops · PARAM_WORDS]` (`encodeCrops`).
 * `chunkCrops` bounds the crops per pass (temporaries: 24·N² bytes per crop;
 * rounded up to keep output views aligned). Errors name `op`.
 */
export function augmentCrops(
  gpu: Gpu,
  op: string,
  images: GpuTensor,
  params: GpuTensor,
  batch: ImageBatch & { crops: number; chunkCrops?: number },
  cfg: PixelConfig,
): GpuTensor {
  checkImageBatch(gpu, op, images, batch);
  const { crops, chunkCrops } = batch;
  if (chunkCrops !== undefined && !(Number.isInteger(chunkCrops) && chunkCrops >= 1)) {
    throw new RangeError(`${op}: chunkCrops must be a positive integer, got ${chunkCrops}`);
  }
  const N = cfg.outSize;
  const S = batch.size;
  if (crops === 0) return gpu.empty([0, 3, N, N]);
  if (params.dtype !== "f32" || params.numel !== crops * PARAM_WORDS) {
    throw new RangeError(
      `${op}: paramTensor must be f32 [${crops * PARAM_WORDS}] (PARAM_WORDS per crop), got ` +
        `${params.dtype} [${params.shape}]`,
    );
  }
  const pixels = batch.count * S * S;
  checkBindingBytes(
    gpu,
    op,
    "the repacked batch's pixels (4 B each)",
    4 * pixels,
    `use batches of at most ${
      Math.floor(gpu.limits.maxStorageBufferBindingSize / (4 * S * S))
    } images`,
  );
  const spans = outputSpans(gpu, op, crops, N, chunkCrops);
  const out = gpu.empty([crops, 3, N, N]);
  const rgb = gpu.empty([pixels], "u32", "augment rgb words");
  gpu.dispatch(
    unpackKernel,
    [images, rgb],
    grid(Math.ceil(pixels / WG)),
    uniforms(pixels, N, S, 0, cfg),
  );
  const perCrop = 3 * N * N;
  for (const { start: c0, count: n } of spans) {
    const rows = gpu.empty([n, N], "f32", "augment luma rows");
    const means = gpu.empty([n], "f32", "augment means");
    const tmp = gpu.empty([n, 3, N, N], "f32", "augment colour");
    const tmp2 = gpu.empty([n, 3, N, N], "f32", "augment blur rows");
    const dst = out.view(c0 * perCrop, [n, 3, N, N]);
    gpu.dispatch(
      lumaRowsKernel,
      [rgb, params, rows],
      grid(Math.ceil((n * N) / WG)),
      uniforms(n * N, N, S, c0, cfg),
    );
    gpu.dispatch(lumaMeanKernel, [rows, means], [Math.ceil(n / 64)], uniforms(n, N, S, c0, cfg));
    const total = n * N * N;
    gpu.dispatch(
      warpColorKernel,
      [rgb, params, means, tmp],
      grid(Math.ceil(total / WG)),
      uniforms(total, N, S, c0, cfg),
    );
    const u3 = uniforms(3 * total, N, S, c0, cfg);
    gpu.dispatch(blurRowsKernel, [params, tmp, tmp2], grid(Math.ceil((3 * total) / WG)), u3);
    gpu.dispatch(blurColsKernel, [params, tmp2, dst], grid(Math.ceil((3 * total) / WG)), u3);
    gpu.release(rows, means, tmp, tmp2);
  }
  gpu.release(rgb);
  return out;
}

/**
 * The evaluation kernel: f32 `[count, 3, N, N]`, each image resized to N by
 * torch's antialiased bilinear (the identity when S = N) and normalised.
 * Errors name `op`.
 */
export function resizeNormalize(
  gpu: Gpu,
  op: string,
  images: GpuTensor,
  batch: ImageBatch,
  cfg: Pick<PixelConfig, "outSize" | "mean" | "std">,
): GpuTensor {
  checkImageBatch(gpu, op, images, batch);
  const N = cfg.outSize;
  const out = gpu.empty([batch.count, 3, N, N]);
  const u = { ...cfg, blurKernel: 0, solarizeThreshold: 0 };
  for (const { start: b0, count: n } of outputSpans(gpu, op, batch.count, N)) {
    const total = n * N * N;
    gpu.dispatch(
      evalKernel,
      [images, out.view(b0 * 3 * N * N, [n, 3, N, N])],
      grid(Math.ceil(total / WG)),
      uniforms(total, N, batch.size, b0, u),
    );
  }
  return out;
}

// ------------------------------------------------------------ CPU references

const A = -0.75;
function cubicWeights(t: number): [number, number, number, number] {
  const cc1 = (x: number) => ((A + 2) * x - (A + 3)) * x * x + 1;
  const cc2 = (x: number) => ((A * x - 5 * A) * x + 8 * A) * x - 4 * A;
  return [cc2(t + 1), cc1(t), cc1(1 - t), cc2(2 - t)];
}

const grayRef = (r: number, g: number, b: number) => 0.2989 * r + 0.587 * g + 0.114 * b;
const clamp01 = (x: number) => Math.min(Math.max(x, 0), 1);

/** torchvision's `adjust_hue` on one RGB value (float64). */
export function adjustHueRef(
  r: number,
  g: number,
  b: number,
  hf: number,
): [number, number, number] {
  const maxc = Math.max(r, g, b);
  const minc = Math.min(r, g, b);
  const eqc = maxc === minc;
  const cr = maxc - minc;
  const s = cr / (eqc ? 1 : maxc);
  const crd = eqc ? 1 : cr;
  const rc = (maxc - r) / crd;
  const gc = (maxc - g) / crd;
  const bc = (maxc - b) / crd;
  const hh = maxc === r ? bc - gc : maxc === g ? 2 + rc - bc : 4 + gc - rc;
  const h0 = (hh / 6 + 1) % 1;
  const h1 = h0 + hf;
  const h = h1 - Math.floor(h1);
  const v = maxc;
  const i6 = Math.floor(h * 6);
  const f = h * 6 - i6;
  const p = clamp01(v * (1 - s));
  const q = clamp01(v * (1 - s * f));
  const t = clamp01(v * (1 - s * (1 - f)));
  switch (i6 % 6) {
    case 0:
      return [v, t, p];
    case 1:
      return [q, v, p];
    case 2:
      return [p, v, t];
    case 3:
      return [p, q, v];
    case 4:
      return [t, p, v];
    default:
      return [v, p, q];
  }
}

/** One colour op (`COLOR_OP_CODES`) on an RGB value; `mean`: the image's grayscale mean. */
function colorOpRef(op: number, c: number[], f: number, mean: number): number[] {
  const blend = (o: number[]) => c.map((v, i) => clamp01(f * v + (1 - f) * o[i]));
  switch (op) {
    case COLOR_OP_CODES.brightness:
      return blend([0, 0, 0]);
    case COLOR_OP_CODES.contrast:
      return blend([mean, mean, mean]);
    case COLOR_OP_CODES.saturation: {
      const g = grayRef(c[0], c[1], c[2]);
      return blend([g, g, g]);
    }
    default:
      return adjustHueRef(c[0], c[1], c[2], f);
  }
}

/** The clamped bicubic sample of every output pixel of one crop, `[N·N·3]` (float64). */
function warpRef(pixels: Uint8Array, S: number, c: CropKernelParams, N: number): Float64Array {
  const [a, b, cx, d, e, cy] = c.affine;
  const { left, top, width: w, height: h } = c.box;
  const base = c.image * S * S * 3;
  const out = new Float64Array(N * N * 3);
  for (let oy = 0; oy < N; oy++) {
    for (let ox = 0; ox < N; ox++) {
      const sx = a * ox + b * oy + cx;
      const sy = d * ox + e * oy + cy;
      const ix = Math.min(Math.floor(sx), w - 1);
      const iy = Math.min(Math.floor(sy), h - 1);
      const wx = cubicWeights(clamp01(sx - ix));
      const wy = cubicWeights(clamp01(sy - iy));
      for (let ch = 0; ch < 3; ch++) {
        let acc = 0;
        for (let i = 0; i < 4; i++) {
          const yy = Math.min(Math.max(iy - 1 + i, 0), h - 1) + top;
          let row = 0;
          for (let j = 0; j < 4; j++) {
            const xx = Math.min(Math.max(ix - 1 + j, 0), w - 1) + left;
            row += wx[j] * pixels[base + (yy * S + xx) * 3 + ch] / 255;
          }
          acc += wy[i] * row;
        }
        out[(oy * N + ox) * 3 + ch] = clamp01(acc);
      }
    }
  }
  return out;
}

/**
 * Reference of the first three crop kernels (luma pre-pass, mean, warp +
 * colour): planar `[crops, 3, N, N]` before blur, in float64 rounded once to f32.
 */
export function warpColorRef(
  pixels: Uint8Array,
  batch: ImageBatch,
  crops: readonly CropKernelParams[],
  cfg: Pick<PixelConfig, "outSize">,
): Float32Array {
  const N = cfg.outSize;
  const nn = N * N;
  const out = new Float32Array(crops.length * 3 * nn);
  crops.forEach((p, c) => {
    const px = warpRef(pixels, batch.size, p, N);
    const at = p.ops.indexOf(COLOR_OP_CODES.contrast);
    let mean = 0;
    if (at >= 0) {
      // The grayscale mean of the image as it stands when contrast runs.
      for (let i = 0; i < nn; i++) {
        let col = [px[3 * i], px[3 * i + 1], px[3 * i + 2]];
        for (let k = 0; k < at; k++) col = colorOpRef(p.ops[k], col, p.factors[p.ops[k]], 0);
        mean += grayRef(col[0], col[1], col[2]);
      }
      mean /= nn;
    }
    for (let i = 0; i < nn; i++) {
      let col = [px[3 * i], px[3 * i + 1], px[3 * i + 2]];
      for (const op of p.ops) col = colorOpRef(op, col, p.factors[op], mean);
      if (p.grayscale) col = new Array(3).fill(grayRef(col[0], col[1], col[2]));
      for (let ch = 0; ch < 3; ch++) out[(c * 3 + ch) * nn + i] = col[ch];
    }
  });
  return out;
}

/**
 * Reference of the blur passes: Gaussian blur (reflect padding) where a crop
 * has one, solarize, normalise; `x` is planar `[crops, 3, N, N]`.
 */
export function blurFinishRef(
  x: Float32Array,
  crops: readonly CropKernelParams[],
  cfg: PixelConfig,
): Float32Array {
  const N = cfg.outSize;
  const nn = N * N;
  const out = new Float32Array(x.length);
  const half = Math.floor(cfg.blurKernel / 2);
  const reflect = (i: number) => (i < 0 ? -i : i >= N ? 2 * N - 2 - i : i);
  const thr = Math.fround(cfg.solarizeThreshold);
  crops.forEach((p, c) => {
    const k = p.blur;
    for (let ch = 0; ch < 3; ch++) {
      const plane = (c * 3 + ch) * nn;
      const rows = new Float64Array(nn);
      for (let y = 0; y < N; y++) {
        for (let xx = 0; xx < N; xx++) {
          let v = 0;
          if (!k) v = x[plane + y * N + xx];
          else {
            for (let t = 0; t < k.length; t++) {
              v += k[t] * x[plane + y * N + reflect(xx + t - half)];
            }
          }
          rows[y * N + xx] = v;
        }
      }
      for (let y = 0; y < N; y++) {
        for (let xx = 0; xx < N; xx++) {
          let v = 0;
          if (!k) v = rows[y * N + xx];
          else for (let t = 0; t < k.length; t++) v += k[t] * rows[reflect(y + t - half) * N + xx];
          if (p.solarize && v >= thr) v = 1 - v;
          out[plane + y * N + xx] = (v - cfg.mean[ch]) / cfg.std[ch];
        }
      }
    }
  });
  return out;
}

/** Taps and weights of one axis of torch's antialiased bilinear resize (float64). */
function aaBilinearTaps(inSize: number, outSize: number): { lo: number; w: number[] }[] {
  const scale = inSize / outSize;
  const inv = scale >= 1 ? 1 / scale : 1;
  const support = scale >= 1 ? scale : 1;
  const taps = [];
  for (let o = 0; o < outSize; o++) {
    const center = scale * (o + 0.5);
    const lo = Math.max(Math.trunc(center - support + 0.5), 0);
    const hi = Math.min(Math.trunc(center + support + 0.5), inSize);
    const w: number[] = [];
    for (let j = lo; j < hi; j++) w.push(Math.max(0, 1 - Math.abs((j - center + 0.5) * inv)));
    const total = w.reduce((a, b) => a + b, 0);
    taps.push({ lo, w: w.map((v) => v / total) });
  }
  return taps;
}

/** Reference of `resizeNormalize` on raw `[B, S, S, 3]` bytes (float64, planar f32 out). */
export function resizeNormalizeRef(
  pixels: Uint8Array,
  batch: ImageBatch,
  cfg: Pick<PixelConfig, "outSize" | "mean" | "std">,
): Float32Array {
  const { count: B, size: S } = batch;
  const N = cfg.outSize;
  const taps = aaBilinearTaps(S, N);
  const out = new Float32Array(B * 3 * N * N);
  for (let b = 0; b < B; b++) {
    for (let y = 0; y < N; y++) {
      for (let x = 0; x < N; x++) {
        for (let ch = 0; ch < 3; ch++) {
          let acc = 0;
          const ty = taps[y];
          const tx = taps[x];
          for (let i = 0; i < ty.w.length; i++) {
            let row = 0;
            for (let j = 0; j < tx.w.length; j++) {
              row += tx.w[j] * pixels[((b * S + ty.lo + i) * S + tx.lo + j) * 3 + ch] / 255;
            }
            acc += ty.w[i] * row;
          }
          out[((b * 3 + ch) * N + y) * N + x] = (acc - cfg.mean[ch]) / cfg.std[ch];
        }
      }
    }
  }
  return out;
}

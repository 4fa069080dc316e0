/**
 * Separable resampling of 8-bit RGB, computed the way Pillow's
 * `Image.resize(size, filter)` computes it (`libImaging/Resample.c`:
 * horizontal pass then vertical, centre-aligned taps, a filter support that
 * grows with the reduction factor, coefficients normalised and rounded to
 * 22-bit fixed point, 8-bit intermediate), so the result equals Pillow's to
 * the bit. Two filters:
 *
 * - "lanczos": Lanczos-3, the reference's ingest and training resize
 *   (`resize((224, 224), LANCZOS)`, docs/recipe.md).
 * - "bilinear": the triangle filter of support 1, widened by the reduction
 *   factor (so a reduction averages, it does not alias): torchvision's
 *   `Resize((S, S))` on a PIL image, the evaluation resize (docs/evaluation.md).
 *
 * Why it exists: the reference resizes with Pillow. libvips reduces with a
 * Lanczos-3 kernel that agrees with Pillow's to rounding, but it enlarges
 * with an interpolator sampled half a pixel off (an image enlarged in y only
 * also moves in x), up to 20 levels off Pillow on real cells; and its linear
 * kernel rounds differently from Pillow's in every case. So `images.ts` sends
 * every Lanczos resize that enlarges an axis, and every bilinear resize,
 * here, and keeps libvips (multi-threaded, faster) for Lanczos reductions.
 */

/** Filters with Pillow's exact definition. */
export type ResampleFilter = "lanczos" | "bilinear";

/** All filters, for validating user input. */
export const RESAMPLE_FILTERS: readonly ResampleFilter[] = ["lanczos", "bilinear"];

const PRECISION_BITS = 32 - 8 - 2;

function sinc(x: number): number {
  if (x === 0) return 1;
  const px = x * Math.PI;
  return Math.sin(px) / px;
}

/** Pillow's filters: the kernel and its support at scale 1. */
const FILTERS: Record<ResampleFilter, { support: number; fn: (x: number) => number }> = {
  lanczos: { support: 3, fn: (x) => (x >= -3 && x < 3 ? sinc(x) * sinc(x / 3) : 0) },
  bilinear: {
    support: 1,
    fn: (x) => {
      const a = Math.abs(x);
      return a < 1 ? 1 - a : 0;
    },
  },
};

/** Per output pixel: first input index, tap count and fixed-point weights. */
interface Coeffs {
  bounds: Int32Array; // [xmin, count] per output
  k: Int32Array; // ksize weights per output
  ksize: number;
}

/** Coefficients by "filter:in:out"; cell datasets repeat a handful of sizes. Bounded. */
const cache = new Map<string, Coeffs>();
const CACHE_ENTRIES = 256;

function coeffs(filter: ResampleFilter, inSize: number, outSize: number): Coeffs {
  const key = `${filter}:${inSize}:${outSize}`;
  let c = cache.get(key);
  if (!c) {
    if (cache.size >= CACHE_ENTRIES) cache.delete(cache.keys().next().value!);
    c = computeCoeffs(FILTERS[filter], inSize, outSize);
    cache.set(key, c);
  }
  return c;
}

/** Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the full source range. */
function computeCoeffs(
  filter: { support: number; fn: (x: number) => number },
  inSize: number,
  outSize: number,
): Coeffs {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = filter.support * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const k = new Int32Array(outSize * ksize);
  const w = new Float64Array(ksize);
  const ss = 1 / filterscale;
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    // Math.trunc is C's (int) cast: Pillow rounds these bounds toward zero.
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      w[x] = filter.fn((x + xmin - center + 0.5) * ss);
      ww += w[x];
    }
    for (let x = 0; x < xmax; x++) {
      const v = ww !== 0 ? w[x] / ww : w[x];
      k[xx * ksize + x] = v < 0
        ? Math.trunc(-0.5 + v * (1 << PRECISION_BITS))
        : Math.trunc(0.5 + v * (1 << PRECISION_BITS));
    }
    bounds[2 * xx] = xmin;
    bounds[2 * xx + 1] = xmax;
  }
  return { bounds, k, ksize };
}

/**
 * Pillow's `clip8`. Accumulators are int32 as in Pillow's C (`| 0` keeps V8
 * on integer arithmetic, ~25% faster than doubles); they cannot overflow:
 * |sum| ≤ 255 · Σ|k| + 2^21 < 1.4e9 for either filter (Lanczos Σ|k| < 1.3 · 2^22).
 */
function clip8(v: number): number {
  if (v >= 1 << PRECISION_BITS << 8) return 255;
  if (v <= 0) return 0;
  return v >> PRECISION_BITS;
}

/**
 * Resizes interleaved RGB `src` (`w`×`h`) to `ow`×`oh` with Pillow's
 * `filter`. An axis whose size does not change is not filtered (Pillow skips
 * it too), so a same-size call returns a copy of `src`.
 */
export function resizeRgb(
  src: Uint8Array,
  w: number,
  h: number,
  ow: number,
  oh: number,
  filter: ResampleFilter,
): Uint8Array {
  if (!(filter in FILTERS)) {
    throw new RangeError(
      `resizeRgb: unknown filter '${filter}' (expected ${RESAMPLE_FILTERS.join(" or ")})`,
    );
  }
  if (src.length !== w * h * 3) {
    throw new RangeError(`resizeRgb: ${src.length} bytes is not ${w}x${h}x3`);
  }
  if (!Number.isInteger(ow) || !Number.isInteger(oh) || ow < 1 || oh < 1) {
    throw new RangeError(`resizeRgb: bad output size ${ow}x${oh}`);
  }
  const half = 1 << (PRECISION_BITS - 1);
  let img = src;
  let rows = h;
  const vert = oh !== h ? coeffs(filter, h, oh) : null;
  // Pillow filters only the source rows the vertical pass will read.
  let first = 0;
  if (ow !== w) {
    let last = h;
    if (vert) {
      first = vert.bounds[0];
      last = vert.bounds[2 * oh - 2] + vert.bounds[2 * oh - 1];
    }
    rows = last - first;
    const c = coeffs(filter, w, ow);
    const out = new Uint8Array(ow * rows * 3);
    for (let y = 0; y < rows; y++) {
      const rowIn = (y + first) * w * 3;
      const rowOut = y * ow * 3;
      for (let xx = 0; xx < ow; xx++) {
        const xmin = c.bounds[2 * xx];
        const n = c.bounds[2 * xx + 1];
        const kb = xx * c.ksize;
        let r = half, g = half, b = half;
        let p = rowIn + xmin * 3;
        for (let x = 0; x < n; x++, p += 3) {
          const kv = c.k[kb + x];
          r = (r + img[p] * kv) | 0;
          g = (g + img[p + 1] * kv) | 0;
          b = (b + img[p + 2] * kv) | 0;
        }
        const o = rowOut + xx * 3;
        out[o] = clip8(r);
        out[o + 1] = clip8(g);
        out[o + 2] = clip8(b);
      }
    }
    img = out;
  }
  if (!vert) return img === src ? src.slice() : img;
  const stride = ow * 3;
  const out = new Uint8Array(ow * oh * 3);
  // Row-at-a-time accumulation keeps memory access sequential (the
  // column-at-a-time loop Pillow writes in C is 3x slower in JS).
  const acc = new Int32Array(stride);
  for (let yy = 0; yy < oh; yy++) {
    const ymin = vert.bounds[2 * yy] - first;
    const n = vert.bounds[2 * yy + 1];
    const kb = yy * vert.ksize;
    acc.fill(half);
    for (let y = 0; y < n; y++) {
      const kv = vert.k[kb + y];
      const row = (ymin + y) * stride;
      for (let i = 0; i < stride; i++) acc[i] = (acc[i] + img[row + i] * kv) | 0;
    }
    const o = yy * stride;
    for (let i = 0; i < stride; i++) out[o + i] = clip8(acc[i]);
  }
  return out;
}

/**
 * Lanczos-3 resampling of 8-bit RGB, computed the way Pillow's
 * `Image.resize(size, Image.LANCZOS)` computes it (separable passes,
 * horizontal then vertical, centre-aligned taps, coefficients normalised and
 * rounded to 22-bit fixed point, 8-bit intermediate), so the result equals
 * Pillow's to the bit.
 *
 * Why it exists: the reference resizes with Pillow. libvips reduces with a
 * Lanczos-3 kernel that agrees with Pillow's to rounding, but it enlarges
 * with an interpolator sampled half a pixel off (an image enlarged in y only
 * also moves in x), up to 20 levels off Pillow on real cells. So
 * `images.ts` sends every resize that enlarges an axis here, and keeps
 * libvips (multi-threaded, faster) for pure reductions.
 */

const PRECISION_BITS = 32 - 8 - 2;
const SUPPORT = 3;

function sinc(x: number): number {
  if (x === 0) return 1;
  const px = x * Math.PI;
  return Math.sin(px) / px;
}

function lanczos(x: number): number {
  return x >= -SUPPORT && x < SUPPORT ? sinc(x) * sinc(x / SUPPORT) : 0;
}

/** Per output pixel: first input index, tap count and fixed-point weights. */
interface Coeffs {
  bounds: Int32Array; // [xmin, count] per output
  k: Int32Array; // ksize weights per output
  ksize: number;
}

/** Coefficients by "in:out"; cell datasets repeat a handful of sizes. Bounded. */
const cache = new Map<string, Coeffs>();
const CACHE_ENTRIES = 256;

function coeffs(inSize: number, outSize: number): Coeffs {
  const key = `${inSize}:${outSize}`;
  let c = cache.get(key);
  if (!c) {
    if (cache.size >= CACHE_ENTRIES) cache.delete(cache.keys().next().value!);
    c = computeCoeffs(inSize, outSize);
    cache.set(key, c);
  }
  return c;
}

/** Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the full source range. */
function computeCoeffs(inSize: number, outSize: number): Coeffs {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = SUPPORT * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const k = new Int32Array(outSize * ksize);
  const w = new Float64Array(ksize);
  const ss = 1 / filterscale;
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      w[x] = lanczos((x + xmin - center + 0.5) * ss);
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

function clip8(v: number): number {
  if (v >= 1 << PRECISION_BITS << 8) return 255;
  if (v <= 0) return 0;
  return v >> PRECISION_BITS;
}

/**
 * Resizes interleaved RGB `src` (`w`×`h`) to `ow`×`oh` with Pillow's Lanczos.
 * An axis whose size does not change is not filtered (Pillow skips it too).
 */
export function resizeLanczosRgb(
  src: Uint8Array,
  w: number,
  h: number,
  ow: number,
  oh: number,
): Uint8Array {
  if (src.length !== w * h * 3) {
    throw new RangeError(`resizeLanczosRgb: ${src.length} bytes is not ${w}x${h}x3`);
  }
  if (ow < 1 || oh < 1) throw new RangeError(`resizeLanczosRgb: bad output size ${ow}x${oh}`);
  const half = 1 << (PRECISION_BITS - 1);
  let img = src;
  let rows = h;
  const vert = oh !== h ? coeffs(h, oh) : null;
  // Pillow filters only the source rows the vertical pass will read.
  let first = 0;
  if (ow !== w) {
    let last = h;
    if (vert) {
      first = vert.bounds[0];
      last = vert.bounds[2 * oh - 2] + vert.bounds[2 * oh - 1];
    }
    rows = last - first;
    const c = coeffs(w, ow);
    const out = new Uint8Array(ow * rows * 3);
    for (let y = 0; y < rows; y++) {
      const rowIn = (y + first) * w * 3;
      const rowOut = y * ow * 3;
      for (let xx = 0; xx < ow; xx++) {
        const xmin = c.bounds[2 * xx];
        const n = c.bounds[2 * xx + 1];
        const kb = xx * c.ksize;
        let r = half, g = half, b = half;
        for (let x = 0; x < n; x++) {
          const kv = c.k[kb + x];
          const p = rowIn + (xmin + x) * 3;
          r += img[p] * kv;
          g += img[p + 1] * kv;
          b += img[p + 2] * kv;
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
  const acc = new Float64Array(stride);
  for (let yy = 0; yy < oh; yy++) {
    const ymin = vert.bounds[2 * yy] - first;
    const n = vert.bounds[2 * yy + 1];
    const kb = yy * vert.ksize;
    acc.fill(half);
    for (let y = 0; y < n; y++) {
      const kv = vert.k[kb + y];
      const row = (ymin + y) * stride;
      for (let i = 0; i < stride; i++) acc[i] += img[row + i] * kv;
    }
    const o = yy * stride;
    for (let i = 0; i < stride; i++) out[o + i] = clip8(acc[i]);
  }
  return out;
}

/**
 * Bicubic resampling of position-embedding grids, matching PyTorch's
 * `F.interpolate(x, mode="bicubic", align_corners=False)` without antialias:
 * - cubic convolution with A = −0.75 (Keys), 4 taps per axis;
 * - source coordinate `real = scale·(dst + 0.5) − 0.5`, `idx = min(floor(real), in − 1)`,
 *   `t = clamp(real − idx, 0, 1)`; taps `idx − 1 … idx + 2` clamped to the border. `scale` is f32
 *   and the position float64: that is what PyTorch 1.13's CPU kernel was measured to do (its weights,
 *   read back through one-hot inputs, fit this to 5e-7 and an all-f32 position to only 1.4e-6);
 * - `scale = in / out` when only the output size is given, but `1 / scale_factor` when a scale
 *   factor is given (recompute_scale_factor unset): DINOv2 hub's `interpolate_pos_encoding` passes
 *   `scale_factor = ((w0 + 0.1)/37, (h0 + 0.1)/37)`, output size `floor(37·sf)`, so its scale is
 *   not in/out. Note that DINOv2 passes the w-based factor for the H axis (a quirk that only
 *   matters for non-square inputs); `scaleFactorOptions` takes them in (H, W) order as given.
 *
 * Grids are channel-last, `[H, W, C]`: a pos_embed `[1, 1 + H·W, C]` without its CLS row is one
 * such grid with no copy (`view(C, [H, W, C])`, whose byte offset 4·C must be a multiple of
 * minStorageBufferOffsetAlignment: true for C = 384, 768, 1024, 1536).
 *
 * Taps and weights are computed once per (in, out, scale) on the host (`cubicTaps`, float64, rounded
 * to f32 once) and kept on the GPU for the life of the device: a few hundred bytes per axis, and a
 * recorded step that replays the resampling finds them unchanged.
 *
 * The operator is separable, `Y = Ry X Rxᵀ` per channel, so the backward is `Ryᵀ dY Rx`: two
 * gather passes (x axis, then y axis) that loop over the output positions of each axis and add the
 * weights whose (clamped) tap lands on the input position. Cost O(in·out) per axis and element:
 * fine for position grids (tens per side), not meant for images.
 */
import { flatMain, grid, kernel } from "./kernel.ts";
import type { Gpu } from "./runtime.ts";
import type { GpuTensor } from "./tensor.ts";
import { u32Uniforms } from "./uniforms.ts";

const WG = 256;
/** PyTorch's cubic convolution coefficient. */
const A = -0.75;

/** Output size and, optionally, PyTorch `scale_factor`s (which then set the source scale). */
export interface ResampleOptions {
  outH: number;
  outW: number;
  /** PyTorch `scale_factor` along H: the source scale becomes 1/scaleH instead of inH/outH. */
  scaleH?: number;
  /** PyTorch `scale_factor` along W. */
  scaleW?: number;
}

/** Options equivalent to `F.interpolate(..., scale_factor=(sh, sw))` on an `[inH, inW]` grid. */
export function scaleFactorOptions(
  inH: number,
  inW: number,
  scaleH: number,
  scaleW: number,
): ResampleOptions {
  // PyTorch: output size = floor(in · scale_factor), computed in double.
  return {
    outH: Math.floor(inH * scaleH),
    outW: Math.floor(inW * scaleW),
    scaleH,
    scaleW,
  };
}

/** The f32 source scale of one axis, as PyTorch computes it (`compute_scales_value`). */
function axisScale(op: string, axis: string, inSize: number, outSize: number, sf?: number): number {
  if (sf === undefined) return Math.fround(inSize / outSize);
  if (!(sf > 0) || !Number.isFinite(sf)) {
    throw new RangeError(`${op}: scale${axis} must be a positive finite scale factor, got ${sf}`);
  }
  return Math.fround(1 / sf);
}

function checkOpts(op: string, inH: number, inW: number, opts: ResampleOptions) {
  for (const [k, v] of [["outH", opts.outH], ["outW", opts.outW]] as const) {
    if (!Number.isInteger(v) || v < 1) {
      throw new RangeError(`${op}: ${k} must be a positive integer, got ${v}`);
    }
  }
  if (!Number.isInteger(inH) || !Number.isInteger(inW) || inH < 1 || inW < 1) {
    throw new RangeError(`${op}: the input grid must be at least 1×1, got ${inH}×${inW}`);
  }
  return {
    sh: axisScale(op, "H", inH, opts.outH, opts.scaleH),
    sw: axisScale(op, "W", inW, opts.outW, opts.scaleW),
  };
}

/** Words per output position in a tap table: 4 indices, then 4 f32 weights (bit patterns). */
const TAP_WORDS = 8;

/** Tap tables on the GPU, per device, by "in:out:scale"; never released (see the file comment). */
const tapCache = new WeakMap<Gpu, Map<string, GpuTensor>>();

/** The GPU tap table of one axis: `[out · 8]` u32 (`TAP_WORDS` per output position). */
function tapTable(gpu: Gpu, inSize: number, outSize: number, scale: number): GpuTensor {
  let byKey = tapCache.get(gpu);
  if (!byKey) tapCache.set(gpu, byKey = new Map());
  const key = `${inSize}:${outSize}:${scale}`;
  let t = byKey.get(key);
  if (!t) {
    const { index, weight } = cubicTaps(inSize, outSize, scale);
    const words = new Uint32Array(outSize * TAP_WORDS);
    const w32 = new Float32Array(words.buffer);
    for (let o = 0; o < outSize; o++) {
      for (let j = 0; j < 4; j++) {
        words[o * TAP_WORDS + j] = index[o * 4 + j];
        w32[o * TAP_WORDS + 4 + j] = weight[o * 4 + j];
      }
    }
    t = gpu.tensor(words, [words.length], `cubic taps ${key}`);
    byKey.set(key, t);
  }
  return t;
}

const forwardKernel = kernel({
  name: "bicubic_resample",
  bindings: ["read", "read", "read", "read_write"],
  uniformBytes: 16,
  source: () => `
struct P { n: u32, inW: u32, outW: u32, C: u32 }
@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read> ty: array<u32>;
@group(0) @binding(2) var<storage, read> tx: array<u32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;
@group(0) @binding(4) var<uniform> u: P;
${flatMain(WG, "idx", "u.n")}
  let c = idx % u.C;
  let pix = idx / u.C;
  let ox = pix % u.outW;
  let oy = pix / u.outW;
  let by = oy * ${TAP_WORDS}u;
  let bx = ox * ${TAP_WORDS}u;
  // PyTorch's order: the x-interpolated rows, then their y-weighted sum.
  var acc = 0.0;
  for (var i = 0u; i < 4u; i++) {
    let row = ty[by + i] * u.inW;
    var r = 0.0;
    for (var j = 0u; j < 4u; j++) {
      r += bitcast<f32>(tx[bx + 4u + j]) * src[(row + tx[bx + j]) * u.C + c];
    }
    acc += bitcast<f32>(ty[by + 4u + i]) * r;
  }
  dst[idx] = acc;
}`,
});

/**
 * Adjoint along one axis of a `[outer, size, C]` layout: `dst[o, i, c] = Σ_s w(s → i)·src[o, s, c]`
 * where `s` runs over the `srcSize` resampled positions and `i` over the `dstSize` input ones.
 */
const adjointKernel = kernel({
  name: "bicubic_resample_adjoint",
  bindings: ["read", "read", "read_write"],
  uniformBytes: 16,
  source: () => `
struct P { n: u32, srcSize: u32, dstSize: u32, C: u32 }
@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read> taps: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<uniform> u: P;
${flatMain(WG, "idx", "u.n")}
  let c = idx % u.C;
  let t = idx / u.C;
  let i = t % u.dstSize;
  let o = t / u.dstSize;
  let base = o * u.srcSize * u.C + c;
  var acc = 0.0;
  for (var s = 0u; s < u.srcSize; s++) {
    // A clamped border tap can hit i more than once: add every weight that lands on it.
    var k = 0.0;
    for (var j = 0u; j < 4u; j++) {
      if (taps[s * ${TAP_WORDS}u + j] == i) { k += bitcast<f32>(taps[s * ${TAP_WORDS}u + 4u + j]); }
    }
    if (k != 0.0) { acc += k * src[base + s * u.C]; }
  }
  dst[idx] = acc;
}`,
});

function gridShape(op: string, t: GpuTensor, what: string): [number, number, number] {
  if (t.shape.length !== 3) {
    throw new RangeError(`${op}: ${what} must be a channel-last grid [H, W, C], got [${t.shape}]`);
  }
  if (t.dtype !== "f32") throw new TypeError(`${op}: ${what} must be f32, got ${t.dtype}`);
  return t.shape as [number, number, number];
}

/**
 * Resamples a channel-last grid `[H, W, C]` to `[outH, outW, C]` with PyTorch's bicubic
 * interpolation (see the file comment for the exact semantics of `scaleH`/`scaleW`).
 */
export function bicubicResample(gpu: Gpu, grid_: GpuTensor, opts: ResampleOptions): GpuTensor {
  const [H, W, C] = gridShape("bicubicResample", grid_, "grid");
  const { sh, sw } = checkOpts("bicubicResample", H, W, opts);
  const out = gpu.empty([opts.outH, opts.outW, C]);
  const n = out.numel;
  if (n === 0) return out;
  const ty = tapTable(gpu, H, opts.outH, sh);
  const tx = tapTable(gpu, W, opts.outW, sw);
  gpu.dispatch(
    forwardKernel,
    [grid_, ty, tx, out],
    grid(Math.ceil(n / WG)),
    u32Uniforms(n, W, opts.outW, C),
  );
  return out;
}

/**
 * The adjoint of `bicubicResample`: maps `dy [outH, outW, C]` to the gradient of the input grid
 * `[inH, inW, C]` (same options as the forward).
 */
export function bicubicResampleBackward(
  gpu: Gpu,
  dy: GpuTensor,
  inH: number,
  inW: number,
  opts: ResampleOptions,
): GpuTensor {
  const [oh, ow, C] = gridShape("bicubicResampleBackward", dy, "dy");
  const { sh, sw } = checkOpts("bicubicResampleBackward", inH, inW, opts);
  if (oh !== opts.outH || ow !== opts.outW) {
    throw new RangeError(
      `bicubicResampleBackward: dy is [${dy.shape}] but the options say outH=${opts.outH}, ` +
        `outW=${opts.outW}`,
    );
  }
  const dx = gpu.empty([inH, inW, C]);
  if (dx.numel === 0) return dx;
  const ty = tapTable(gpu, inH, oh, sh);
  const tx = tapTable(gpu, inW, ow, sw);
  // Pass 1 (x axis): [outH, outW, C] → [outH, inW, C]; pass 2 (y axis): → [inH, inW, C].
  const tmp = gpu.empty([oh, inW, C]);
  const n1 = tmp.numel;
  gpu.dispatch(adjointKernel, [dy, tx, tmp], grid(Math.ceil(n1 / WG)), u32Uniforms(n1, ow, inW, C));
  const n2 = dx.numel;
  gpu.dispatch(
    adjointKernel,
    [tmp, ty, dx],
    grid(Math.ceil(n2 / WG)),
    u32Uniforms(n2, oh, inH, inW * C),
  );
  gpu.release(tmp);
  return dx;
}

/**
 * Taps and weights of one axis: for output o, `index[4o + j]` (clamped) and `weight[4o + j]`,
 * from the f32 `scale` with the position in float64 (see the file comment).
 */
export function cubicTaps(
  inSize: number,
  outSize: number,
  scale: number,
): { index: Int32Array; weight: Float64Array } {
  const index = new Int32Array(outSize * 4);
  const weight = new Float64Array(outSize * 4);
  const cc1 = (x: number) => ((A + 2) * x - (A + 3)) * x * x + 1;
  const cc2 = (x: number) => ((A * x - 5 * A) * x + 8 * A) * x - 4 * A;
  const s = Math.fround(scale);
  for (let o = 0; o < outSize; o++) {
    const real = s * (o + 0.5) - 0.5;
    const idx = Math.min(Math.floor(real), inSize - 1);
    const t = Math.min(Math.max(real - idx, 0), 1);
    const w = [cc2(t + 1), cc1(t), cc1(1 - t), cc2(2 - t)];
    for (let j = 0; j < 4; j++) {
      index[o * 4 + j] = Math.min(Math.max(idx - 1 + j, 0), inSize - 1);
      weight[o * 4 + j] = w[j];
    }
  }
  return { index, weight };
}

function refTaps(op: string, inH: number, inW: number, opts: ResampleOptions) {
  const { sh, sw } = checkOpts(op, inH, inW, opts);
  return { ty: cubicTaps(inH, opts.outH, sh), tx: cubicTaps(inW, opts.outW, sw) };
}

/** CPU reference of `bicubicResample` on a `[H, W, C]` array (float64 sums). */
export function bicubicResampleRef(
  grid_: Float32Array,
  shape: readonly [number, number, number] | readonly number[],
  opts: ResampleOptions,
): Float32Array {
  const [H, W, C] = shape;
  const { ty, tx } = refTaps("bicubicResampleRef", H, W, opts);
  const out = new Float32Array(opts.outH * opts.outW * C);
  for (let oy = 0; oy < opts.outH; oy++) {
    for (let ox = 0; ox < opts.outW; ox++) {
      for (let c = 0; c < C; c++) {
        let acc = 0;
        for (let i = 0; i < 4; i++) {
          const y = ty.index[oy * 4 + i];
          for (let j = 0; j < 4; j++) {
            const x = tx.index[ox * 4 + j];
            acc += ty.weight[oy * 4 + i] * tx.weight[ox * 4 + j] * grid_[(y * W + x) * C + c];
          }
        }
        out[(oy * opts.outW + ox) * C + c] = acc;
      }
    }
  }
  return out;
}

/** CPU reference of `bicubicResampleBackward`: the transpose of `bicubicResampleRef`. */
export function bicubicResampleBackwardRef(
  dy: Float32Array,
  inH: number,
  inW: number,
  C: number,
  opts: ResampleOptions,
): Float32Array {
  const { ty, tx } = refTaps("bicubicResampleBackwardRef", inH, inW, opts);
  const dx = new Float64Array(inH * inW * C);
  for (let oy = 0; oy < opts.outH; oy++) {
    for (let ox = 0; ox < opts.outW; ox++) {
      for (let i = 0; i < 4; i++) {
        const y = ty.index[oy * 4 + i];
        for (let j = 0; j < 4; j++) {
          const x = tx.index[ox * 4 + j];
          const w = ty.weight[oy * 4 + i] * tx.weight[ox * 4 + j];
          for (let c = 0; c < C; c++) {
            dx[(y * inW + x) * C + c] += w * dy[(oy * opts.outW + ox) * C + c];
          }
        }
      }
    }
  }
  return Float32Array.from(dx);
}

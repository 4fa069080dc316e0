/**
 * Bicubic resampling of position-embedding grids, matching PyTorch's
 * `F.interpolate(x, mode="bicubic", align_corners=False)` without antialias:
 * - cubic convolution with A = −0.75 (Keys), 4 taps per axis;
 * - source coordinate `real = scale·(dst + 0.5) − 0.5` in f32, `idx = min(floor(real), in − 1)`,
 *   `t = clamp(real − idx, 0, 1)`; taps `idx − 1 … idx + 2` clamped to the border;
 * - `scale = in / out` when only the output size is given, but `1 / scale_factor` when a scale
 *   factor is given (recompute_scale_factor unset): DINOv2 hub's `interpolate_pos_encoding` passes
 *   `scale_factor = ((w0 + 0.1)/37, (h0 + 0.1)/37)`, output size `floor(37·sf)`, so its scale is
 *   not in/out. Note that DINOv2 passes the w-based factor for the H axis (a quirk that only
 *   matters for non-square inputs); `scaleFactorOptions` takes them in (H, W) order as given.
 *
 * Grids are channel-last, `[H, W, C]`: a pos_embed `[1, 1 + H·W, C]` without its CLS row is one
 * such grid with no copy.
 *
 * The operator is separable, `Y = Ry X Rxᵀ` per channel, so the backward is `Ryᵀ dY Rx`: two
 * gather passes (x axis, then y axis) that loop over the output positions of each axis and add the
 * weights whose (clamped) tap lands on the input position. Cost O(in·out) per axis and element:
 * fine for position grids (tens per side), not meant for images.
 */
import { FLAT_WORKGROUP_INDEX, grid, kernel, Params } from "./kernel.ts";
import type { Gpu } from "./runtime.ts";
import type { GpuTensor } from "./tensor.ts";

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

/** WGSL: source index and fraction of an output position, and the four cubic weights. */
const CUBIC_WGSL = `
const A = ${A};
fn cc1(x: f32) -> f32 { return ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0; }
fn cc2(x: f32) -> f32 { return ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A; }
fn cubicWeights(t: f32) -> vec4f {
  return vec4f(cc2(t + 1.0), cc1(t), cc1(1.0 - t), cc2(2.0 - t));
}
// (idx, t) of output position o: PyTorch's area_pixel_compute_source_index (cubic) and
// guard_index_and_lambda.
fn sourceIndex(o: u32, scale: f32, inSize: u32) -> vec2f {
  let real = scale * (f32(o) + 0.5) - 0.5;
  let idx = min(floor(real), f32(inSize) - 1.0);
  return vec2f(idx, clamp(real - idx, 0.0, 1.0));
}
fn tap(idx: f32, j: u32, inSize: u32) -> u32 {
  return u32(clamp(i32(idx) - 1 + i32(j), 0, i32(inSize) - 1));
}`;

const forwardKernel = kernel({
  name: "bicubic_resample",
  bindings: ["read", "read_write"],
  uniformBytes: 32,
  source: () => `
struct P { n: u32, inH: u32, inW: u32, outH: u32, outW: u32, C: u32, sh: f32, sw: f32 }
@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<uniform> u: P;
${CUBIC_WGSL}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let idx = ${FLAT_WORKGROUP_INDEX} * ${WG}u + lid;
  if (idx >= u.n) { return; }
  let c = idx % u.C;
  let pix = idx / u.C;
  let ox = pix % u.outW;
  let oy = pix / u.outW;
  let sy = sourceIndex(oy, u.sh, u.inH);
  let sx = sourceIndex(ox, u.sw, u.inW);
  let wy = cubicWeights(sy.y);
  let wx = cubicWeights(sx.y);
  var x0: array<u32, 4>;
  for (var j = 0u; j < 4u; j++) { x0[j] = tap(sx.x, j, u.inW); }
  // PyTorch's order: the x-interpolated rows, then their y-weighted sum.
  var acc = 0.0;
  for (var i = 0u; i < 4u; i++) {
    let row = tap(sy.x, i, u.inH) * u.inW;
    var r = 0.0;
    for (var j = 0u; j < 4u; j++) { r += wx[j] * src[(row + x0[j]) * u.C + c]; }
    acc += wy[i] * r;
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
  bindings: ["read", "read_write"],
  uniformBytes: 32,
  source: () => `
struct P { n: u32, srcSize: u32, dstSize: u32, C: u32, scale: f32, p0: u32, p1: u32, p2: u32 }
@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<uniform> u: P;
${CUBIC_WGSL}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let idx = ${FLAT_WORKGROUP_INDEX} * ${WG}u + lid;
  if (idx >= u.n) { return; }
  let c = idx % u.C;
  let t = idx / u.C;
  let i = t % u.dstSize;
  let o = t / u.dstSize;
  let base = o * u.srcSize * u.C + c;
  var acc = 0.0;
  for (var s = 0u; s < u.srcSize; s++) {
    let si = sourceIndex(s, u.scale, u.dstSize);
    let w = cubicWeights(si.y);
    // A clamped border tap can hit i more than once: add every weight that lands on it.
    var k = 0.0;
    for (var j = 0u; j < 4u; j++) {
      if (tap(si.x, j, u.dstSize) == i) { k += w[j]; }
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
  const params = new Params(32).u32(n).u32(H).u32(W).u32(opts.outH).u32(opts.outW).u32(C)
    .f32(sh).f32(sw).bytes;
  gpu.dispatch(forwardKernel, [grid_, out], grid(Math.ceil(n / WG)), params);
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
  // Pass 1 (x axis): [outH, outW, C] → [outH, inW, C]; pass 2 (y axis): → [inH, inW, C].
  const tmp = gpu.empty([oh, inW, C]);
  const n1 = tmp.numel;
  gpu.dispatch(
    adjointKernel,
    [dy, tmp],
    grid(Math.ceil(n1 / WG)),
    new Params(32).u32(n1).u32(ow).u32(inW).u32(C).f32(sw).bytes,
  );
  const n2 = dx.numel;
  gpu.dispatch(
    adjointKernel,
    [tmp, dx],
    grid(Math.ceil(n2 / WG)),
    new Params(32).u32(n2).u32(oh).u32(inH).u32(inW * C).f32(sh).bytes,
  );
  gpu.release(tmp);
  return dx;
}

/** Taps and weights of one axis, from f32 source positions as PyTorch computes them. */
export function cubicTaps(
  inSize: number,
  outSize: number,
  scale: number,
): { index: Int32Array; weight: Float64Array } {
  const f = Math.fround;
  const index = new Int32Array(outSize * 4);
  const weight = new Float64Array(outSize * 4);
  const cc1 = (x: number) => ((A + 2) * x - (A + 3)) * x * x + 1;
  const cc2 = (x: number) => ((A * x - 5 * A) * x + 8 * A) * x - 4 * A;
  for (let o = 0; o < outSize; o++) {
    const real = f(f(f(scale) * f(o + 0.5)) - 0.5);
    const idx = Math.min(Math.floor(real), inSize - 1);
    const t = Math.min(Math.max(f(real - idx), 0), 1);
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

/**
 * DINOv2's mask-token rows (`torch.where(mask, token, x)`), their backward
 * (the token's gradient is a masked column sum, in a fixed order) and
 * references.
 */
import { bindWindow, checkBindable, vec4Rows } from "../common/window.ts";
import { checkTensor, fmtShape } from "../common/shape.ts";
import { flatMain, grid, type Kernel, kernel } from "../kernel.ts";
import type { Gpu } from "../runtime.ts";
import { stridedMap } from "../strided_map.ts";
import type { GpuTensor } from "../tensor.ts";
import { Uniforms } from "../uniforms.ts";

function checkMaskRows(op: string, x: GpuTensor, mask: GpuTensor): [number, number] {
  checkTensor(op, "x", x, "f32");
  checkTensor(op, "mask", mask, "u32");
  if (x.shape.length !== 2 || mask.shape.length !== 1 || mask.shape[0] !== x.shape[0]) {
    throw new RangeError(
      `${op}: expects x [N, D] and mask u32 [N]; got x ${fmtShape(x.shape)}, mask ` +
        `${fmtShape(mask.shape)}`,
    );
  }
  return [x.shape[0], x.shape[1]];
}

/**
 * DINOv2's mask-token substitution: `y[i] = mask[i] ? token : x[i]` for
 * x [N, D], mask u32 [N] (0/1) and token [D] (torch.where semantics: NaNs in a
 * replaced row do not leak).
 */
export function maskRows(gpu: Gpu, x: GpuTensor, mask: GpuTensor, token: GpuTensor): GpuTensor {
  const [n, d] = checkMaskRows("maskRows", x, mask);
  checkTensor("maskRows", "token", token, "f32");
  if (token.numel !== d) {
    throw new RangeError(
      `maskRows: token ${fmtShape(token.shape)} must have D = ${d} elements (x is ${
        fmtShape(x.shape)
      })`,
    );
  }
  const y = gpu.empty([n, d], "f32", "maskRows");
  stridedMap(gpu, {
    name: "mask_rows",
    body: "return select(x0, x2, x1 != 0u);",
    shape: [n, d],
    inputs: [
      { t: x, strides: [d, 1] },
      { t: mask, strides: [1, 0] },
      { t: token, strides: [0, 1] },
    ],
    out: { t: y, strides: [d, 1] },
  });
  return y;
}

const maskSumKernels = new Map<string, Kernel>();

/**
 * Column sums over chunks of rows, optionally only rows whose mask is set:
 * `out[c, j] = Σ_{r in chunk c, mask[r] ≠ 0} x[r, j]`. Rows are summed in
 * blocks of 8 into a fresh partial, so the error grows with chunk/8 + 8.
 */
function maskedColumnSumKernel(masked: boolean, vec: boolean): Kernel {
  const key = `${masked}|${vec}`;
  let k = maskSumKernels.get(key);
  if (k) return k;
  const T = vec ? "vec4<f32>" : "f32";
  k = kernel({
    name: "mask_rows_colsum",
    key,
    bindings: ["read", "read", "read_write"],
    uniformBytes: 24,
    source: () => `
struct P { n: u32, d: u32, chunk: u32, nchunk: u32, xshift: u32, mshift: u32 }
@group(0) @binding(0) var<storage, read> x: array<${T}>;
@group(0) @binding(1) var<storage, read> mask: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<${T}>;
@group(0) @binding(3) var<uniform> p: P;
${flatMain(64, "e", "p.nchunk * p.d")}
  let c = e / p.d;
  let j = e % p.d;
  let r0 = c * p.chunk;
  let r1 = min(p.n, r0 + p.chunk);
  var total = ${T}(0.0);
  for (var b = r0; b < r1; b += 8u) {
    var part = ${T}(0.0);
    for (var r = b; r < min(r1, b + 8u); r++) {
      ${masked ? "if (mask[p.mshift + r] != 0u) { part += x[p.xshift + r * p.d + j]; }" : ""}
      ${masked ? "" : "part += x[p.xshift + r * p.d + j];"}
    }
    total += part;
  }
  out[e] = total;
}`,
  });
  maskSumKernels.set(key, k);
  return k;
}

/** Rows per chunk of a column sum: enough chunks to fill the device, each ≤ 256 rows. */
function columnChunk(n: number, cols: number): number {
  const wanted = Math.ceil(8192 / Math.max(1, cols));
  return Math.min(256, Math.max(16, Math.ceil(n / wanted)));
}

/** Backward of `maskRows`: `dx = mask ? 0 : dy` and `dtoken = Σ_{i: mask[i]} dy[i]` [D]. */
export function maskRowsBackward(
  gpu: Gpu,
  dy: GpuTensor,
  mask: GpuTensor,
): { dx: GpuTensor; dtoken: GpuTensor } {
  const [n, d] = checkMaskRows("maskRowsBackward", dy, mask);
  const dx = gpu.empty([n, d], "f32", "maskRows_dx");
  stridedMap(gpu, {
    name: "mask_rows_bwd",
    body: "return select(x0, 0.0, x1 != 0u);",
    shape: [n, d],
    inputs: [{ t: dy, strides: [d, 1] }, { t: mask, strides: [1, 0] }],
    out: { t: dx, strides: [d, 1] },
  });
  if (n === 0 || d === 0) return { dx, dtoken: gpu.zeros([d], "f32", "maskRows_dtoken") };
  checkBindable(gpu, "maskRowsBackward", "dy", dy);
  let cur = dy;
  let rows = n;
  let masked = true;
  // Stage 1 sums masked rows in chunks; later stages sum the chunk partials.
  for (;;) {
    const vec = vec4Rows(d, cur);
    const V = vec ? 4 : 1;
    const chunk = columnChunk(rows, d / V);
    const nchunk = Math.ceil(rows / chunk);
    const out = gpu.empty(nchunk === 1 ? [d] : [nchunk, d], "f32", "maskRows_dtoken");
    const xw = bindWindow(gpu, cur, 0, rows * d);
    const mw = bindWindow(gpu, mask, 0, n);
    gpu.dispatch(
      maskedColumnSumKernel(masked, vec),
      [xw.view, mw.view, out],
      grid(Math.ceil((nchunk * d) / V / 64)),
      new Uniforms(24).u32(rows).u32(d / V).u32(chunk).u32(nchunk).u32(xw.shift / V)
        .u32(mw.shift).bytes,
    );
    if (cur !== dy) gpu.release(cur);
    cur = out;
    rows = nchunk;
    masked = false;
    if (nchunk === 1) return { dx, dtoken: out };
  }
}

// ------------------------------------------------------- CPU references

/** Reference of `maskRows`. */
export function maskRowsRef(
  x: Float32Array,
  d: number,
  mask: ArrayLike<number>,
  token: Float32Array,
): Float32Array {
  const y = Float32Array.from(x);
  for (let i = 0; i < mask.length; i++) if (mask[i]) y.set(token, i * d);
  return y;
}

/** Reference of `maskRowsBackward` (float64 column sums). */
export function maskRowsBackwardRef(
  dy: Float32Array,
  d: number,
  mask: ArrayLike<number>,
): { dx: Float32Array; dtoken: Float32Array } {
  const dx = Float32Array.from(dy);
  const dt = new Float64Array(d);
  for (let i = 0; i < mask.length; i++) {
    if (!mask[i]) continue;
    for (let j = 0; j < d; j++) dt[j] += dy[i * d + j];
    dx.fill(0, i * d, (i + 1) * d);
  }
  return { dx, dtoken: Float32Array.from(dt) };
}

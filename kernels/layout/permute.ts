/**
 * Permute and transpose: a new contiguous tensor with the dimensions
 * reordered (any dtype, moved as raw 32-bit words), and their references.
 */
import { bindableElements, bindWindow } from "../common/window.ts";
import { checkTensor, contiguousStrides, fmtShape } from "../common/shape.ts";
import { flatMain, grid, type Kernel, kernel } from "../kernel.ts";
import type { Gpu } from "../runtime.ts";
import { collapseDims, stridedCopy } from "../strided_map.ts";
import { emptyLike, type GpuTensor, type HostArray, numel } from "../tensor.ts";
import { Uniforms } from "../uniforms.ts";

/**
 * The shared start of the permute kernels: the uniform struct of `fields`, vec4<u32> src/dst
 * bindings, the flat invocation index `e` (guarded by `p.n`), and WGSL that walks `r` over
 * the uniform dims `d{dims-1}..d0`, adding each coordinate's input and output strides to
 * `ib` and `ob` (declared by `body`, which places that walk where it needs it).
 */
function permuteWgsl(
  fields: readonly string[],
  dims: number,
  body: (decompose: string) => string,
): string {
  const dec: string[] = [];
  for (let d = dims - 1; d >= 0; d--) {
    dec.push(
      `{ let c = r % p.d${d}; r = r / p.d${d}; ib += c * p.is${d}; ob += c * p.os${d}; }`,
    );
  }
  return `
struct P { ${fields.map((f) => `${f}: u32`).join(", ")} }
@group(0) @binding(0) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<u32>>;
@group(0) @binding(2) var<uniform> p: P;
${flatMain(64, "e", "p.n")}
${body(dec.join("\n  "))}
}`;
}

const transposeKernels = new Map<number, Kernel>();

/**
 * 4×4-blocked transpose of a collapsed permutation whose innermost output
 * dimension is not the input's innermost: each invocation loads four vec4s
 * along the input's contiguous dim and stores four vec4s along the output's,
 * with no workgroup memory (cheap on llvmpipe, coalesced enough on GPUs).
 * Dimension `q` is where the input is contiguous; both it and the output's
 * innermost dimension count in blocks of 4.
 */
function transposeKernel(rank: number): Kernel {
  let k = transposeKernels.get(rank);
  if (k) return k;
  const fields = ["n", "q"];
  for (let d = 0; d < rank; d++) fields.push(`d${d}`, `is${d}`, `os${d}`);
  fields.push("ist", "ishift", "oshift");
  k = kernel({
    name: "permute_t4",
    key: `${rank}`,
    bindings: ["read", "read_write"],
    uniformBytes: fields.length * 4,
    source: () =>
      permuteWgsl(
        fields,
        rank,
        (decompose) =>
          `  var r = e;
  var ib = p.ishift;
  var ob = p.oshift;
  ${decompose}
  // Inside a block, rows step the input by ist vec4s and columns the output by q vec4s.
  let st = p.ist;
  let v0 = src[ib];
  let v1 = src[ib + st];
  let v2 = src[ib + 2u * st];
  let v3 = src[ib + 3u * st];
  let oq = p.q;
  dst[ob] = vec4<u32>(v0.x, v1.x, v2.x, v3.x);
  dst[ob + oq] = vec4<u32>(v0.y, v1.y, v2.y, v3.y);
  dst[ob + 2u * oq] = vec4<u32>(v0.z, v1.z, v2.z, v3.z);
  dst[ob + 3u * oq] = vec4<u32>(v0.w, v1.w, v2.w, v3.w);`,
      ),
  });
  transposeKernels.set(rank, k);
  return k;
}

const permuteRowsKernels = new Map<number, Kernel>();

/**
 * Row copy of a collapsed permutation that keeps the innermost dimension: each invocation
 * moves up to `len` vec4s of one row. Index arithmetic (a div/mod per outer dimension, a
 * per-lane loop on llvmpipe) then runs once per row chunk instead of once per vec4, which
 * is what held the element-wise path to ~0.35 of copy bandwidth on the qkv head split.
 */
function permuteRowsKernel(outer: number): Kernel {
  let k = permuteRowsKernels.get(outer);
  if (k) return k;
  const fields = ["n", "chunks", "len", "rowv", "ishift"];
  for (let d = 0; d < outer; d++) fields.push(`d${d}`, `is${d}`, `os${d}`);
  k = kernel({
    name: "permute_rows",
    key: `${outer}`,
    bindings: ["read", "read_write"],
    uniformBytes: fields.length * 4,
    source: () =>
      permuteWgsl(
        fields,
        outer,
        (decompose) =>
          `  let start = (e % p.chunks) * p.len;
  var r = e / p.chunks;
  var ib = p.ishift;
  var ob = 0u;
  ${decompose}
  let stop = min(start + p.len, p.rowv);
  for (var j = start; j < stop; j++) { dst[ob + j] = src[ib + j]; }`,
      ),
  });
  permuteRowsKernels.set(outer, k);
  return k;
}

/**
 * `x.permute(perm)` as a new contiguous tensor (any dtype, up to 6-D after
 * collapsing). Permutations that keep the innermost dimension copy rows (up
 * to 16 vec4s of a row per invocation) when it is a multiple of 4; ones that
 * move it use a 4×4-blocked transpose when both moved dimensions are multiples
 * of 4; anything else is an element gather.
 */
export function permute(gpu: Gpu, x: GpuTensor, perm: number[]): GpuTensor {
  checkTensor("permute", "x", x);
  const rank = x.shape.length;
  const seen = new Set(perm);
  if (perm.length !== rank || seen.size !== rank || perm.some((p) => !(p >= 0 && p < rank))) {
    throw new RangeError(
      `permute: perm ${fmtShape(perm)} is not a permutation of 0..${rank - 1} for x ${
        fmtShape(x.shape)
      }`,
    );
  }
  const outShape = perm.map((p) => x.shape[p]);
  const y = gpu.empty(outShape, x.dtype, "permute");
  if (y.numel === 0) return y;
  const xs = contiguousStrides(x.shape);
  const inStrides = perm.map((p) => xs[p]);
  const outStrides = contiguousStrides(outShape);
  const col = collapseDims(outShape, [outStrides, inStrides]);
  const dims = col.dims;
  const [os, is] = col.strides;
  const r = dims.length;
  const q = is.indexOf(1);
  const aligned = (x.offset / 4) % 4 === 0 && x.numel <= bindableElements(gpu);
  if (r > 1 && is[r - 1] === 1 && dims[r - 1] % 4 === 0 && aligned) {
    permuteRows(gpu, x, y, dims, is, os);
    return y;
  }
  const blocked = is[r - 1] !== 1 && q >= 0 && dims[r - 1] % 4 === 0 && dims[q] % 4 === 0 &&
    aligned;
  if (!blocked) {
    stridedCopy(gpu, "permute", outShape, { t: x, strides: inStrides }, {
      t: y,
      strides: outStrides,
    });
    return y;
  }
  const k = transposeKernel(r);
  const n = y.numel / 16;
  const p = new Uniforms(k.uniformBytes).u32(n).u32(os[q] / 4);
  const w = bindWindow(gpu, x, 0, x.numel);
  for (let d = 0; d < r; d++) {
    // Steps in vec4s per block coordinate. The block dims (the output's innermost, r-1,
    // and the input's innermost, q) count in fours: a step of r-1 moves the input by
    // 4·is[r-1] elements = is[r-1] vec4s and the output by one vec4; a step of q moves the
    // input by one vec4 and the output by 4·os[q] elements = os[q] vec4s. Every other
    // stride is a multiple of 4 elements (it spans a whole innermost dim).
    const size = d === r - 1 || d === q ? dims[d] / 4 : dims[d];
    const isd = d === q ? 1 : d === r - 1 ? is[d] : is[d] / 4;
    const osd = d === r - 1 ? 1 : d === q ? os[d] : os[d] / 4;
    p.u32(size).u32(isd).u32(osd);
  }
  p.u32(is[r - 1] / 4).u32(w.shift / 4).u32(0);
  gpu.dispatch(k, [w.view, y], grid(Math.ceil(n / 64)), p.bytes);
  return y;
}

/**
 * Dispatches `permuteRowsKernel` for collapsed `dims` whose innermost dimension is contiguous on
 * both sides and a multiple of 4 (so every outer stride is a whole number of vec4s).
 */
function permuteRows(
  gpu: Gpu,
  x: GpuTensor,
  y: GpuTensor,
  dims: number[],
  is: number[],
  os: number[],
): void {
  const outer = dims.length - 1;
  const rowv = dims[outer] / 4;
  // Up to 16 vec4s (a 64-wide head row) per invocation; longer rows are cut into chunks.
  const len = Math.min(rowv, 16);
  const chunks = Math.ceil(rowv / len);
  const n = (y.numel / dims[outer]) * chunks;
  const k = permuteRowsKernel(outer);
  const w = bindWindow(gpu, x, 0, x.numel);
  const p = new Uniforms(k.uniformBytes).u32(n).u32(chunks).u32(len).u32(rowv).u32(w.shift / 4);
  for (let d = 0; d < outer; d++) p.u32(dims[d]).u32(is[d] / 4).u32(os[d] / 4);
  gpu.dispatch(k, [w.view, y], grid(Math.ceil(n / 64)), p.bytes);
}

/** Swaps the last two dimensions (a new contiguous tensor). */
export function transpose(gpu: Gpu, x: GpuTensor): GpuTensor {
  const r = x.shape.length;
  if (r < 2) throw new RangeError(`transpose: x ${fmtShape(x.shape)} needs at least 2 dims`);
  const perm = [...Array(r).keys()];
  [perm[r - 2], perm[r - 1]] = [perm[r - 1], perm[r - 2]];
  return permute(gpu, x, perm);
}

// ------------------------------------------------------- CPU references

/** Reference of `permute` on a row-major array of `shape`. */
export function permuteRef<T extends HostArray>(x: T, shape: readonly number[], perm: number[]): T {
  const outShape = perm.map((p) => shape[p]);
  const xs = contiguousStrides(shape);
  const n = numel(shape);
  const y = emptyLike(x, n);
  const c = new Array<number>(outShape.length).fill(0);
  for (let i = 0; i < n; i++) {
    let src = 0;
    for (let d = 0; d < outShape.length; d++) src += c[d] * xs[perm[d]];
    y[i] = x[src];
    for (let d = outShape.length - 1; d >= 0; d--) {
      if (++c[d] < outShape[d]) break;
      c[d] = 0;
    }
  }
  return y;
}

/** Reference of `transpose` (swap the last two dims). */
export function transposeRef<T extends HostArray>(x: T, shape: readonly number[]): T {
  const r = shape.length;
  const perm = [...Array(r).keys()];
  [perm[r - 2], perm[r - 1]] = [perm[r - 1], perm[r - 2]];
  return permuteRef(x, shape, perm);
}

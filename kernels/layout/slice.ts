/**
 * Slice, its backward, and concat along any axis (any dtype, moved as raw
 * 32-bit words), and their references.
 */
import { checkTensor, contiguousStrides, fmtShape, normalizeAxis } from "../common/shape.ts";
import type { Gpu } from "../runtime.ts";
import { stridedCopy } from "../strided_map.ts";
import { emptyLike, type GpuTensor, type HostArray, numel } from "../tensor.ts";

function checkSlice(
  op: string,
  shape: readonly number[],
  axis: number,
  start: number,
  length: number,
): number {
  const a = normalizeAxis(op, axis, shape.length);
  if (!Number.isInteger(start) || !Number.isInteger(length) || start < 0 || length < 0) {
    throw new RangeError(`${op}: start ${start} and length ${length} must be integers ≥ 0`);
  }
  if (start + length > shape[a]) {
    throw new RangeError(
      `${op}: [${start}, ${start + length}) runs past axis ${axis} of size ${shape[a]} ` +
        `(shape ${fmtShape(shape)})`,
    );
  }
  return a;
}

/** Copies `n` elements from `src` at `srcAt` to `dst` at `dstAt` with one buffer copy. */
function copyRange(
  gpu: Gpu,
  src: GpuTensor,
  dst: GpuTensor,
  srcAt: number,
  dstAt: number,
  n: number,
): void {
  gpu.copy(
    { buffer: src.buffer, offset: src.offset + srcAt * 4, size: n * 4 },
    { buffer: dst.buffer, offset: dst.offset + dstAt * 4, size: n * 4 },
    n * 4,
  );
}

/** `x` narrowed to `[start, start + length)` along `axis` (a new contiguous tensor). */
export function slice(
  gpu: Gpu,
  x: GpuTensor,
  axis: number,
  start: number,
  length: number,
): GpuTensor {
  checkTensor("slice", "x", x);
  const a = checkSlice("slice", x.shape, axis, start, length);
  const shape = x.shape.map((d, i) => (i === a ? length : d));
  const y = gpu.empty(shape, x.dtype, "slice");
  if (y.numel === 0) return y;
  const xs = contiguousStrides(x.shape);
  const outer = numel(x.shape.slice(0, a));
  if (outer === 1) {
    copyRange(gpu, x, y, start * xs[a], 0, y.numel);
    return y;
  }
  stridedCopy(gpu, "slice", shape, { t: x, strides: xs, offset: start * xs[a] }, {
    t: y,
    strides: contiguousStrides(shape),
  });
  return y;
}

/** Gradient of `slice`: `dy` placed at `[start, …)` of `axis` in zeros of `inputShape`. */
export function sliceBackward(
  gpu: Gpu,
  dy: GpuTensor,
  inputShape: number[],
  axis: number,
  start: number,
): GpuTensor {
  checkTensor("sliceBackward", "dy", dy);
  const a = normalizeAxis("sliceBackward", axis, inputShape.length);
  const ok = dy.shape.length === inputShape.length &&
    dy.shape.every((d, i) => i === a || d === inputShape[i]);
  if (!ok) {
    throw new RangeError(
      `sliceBackward: dy ${fmtShape(dy.shape)} is not a slice of ${fmtShape(inputShape)} ` +
        `along axis ${axis}`,
    );
  }
  checkSlice("sliceBackward", inputShape, a, start, dy.shape[a]);
  const dx = gpu.zeros(inputShape, dy.dtype, "sliceBackward");
  if (dy.numel === 0) return dx;
  const xs = contiguousStrides(inputShape);
  stridedCopy(gpu, "slice_bwd", dy.shape, { t: dy, strides: contiguousStrides(dy.shape) }, {
    t: dx,
    strides: xs,
    offset: start * xs[a],
  });
  return dx;
}

/** `xs` joined along `axis` (same dtype; equal sizes on every other axis). */
export function concat(gpu: Gpu, xs: GpuTensor[], axis: number): GpuTensor {
  if (xs.length === 0) throw new RangeError("concat: needs at least one tensor");
  xs.forEach((x, i) => checkTensor("concat", `xs[${i}]`, x, xs[0].dtype));
  const rank = xs[0].shape.length;
  const a = normalizeAxis("concat", axis, rank);
  for (const [i, x] of xs.entries()) {
    if (x.shape.length !== rank || x.shape.some((d, j) => j !== a && d !== xs[0].shape[j])) {
      throw new RangeError(
        `concat: xs[${i}] ${fmtShape(x.shape)} does not match xs[0] ${fmtShape(xs[0].shape)} ` +
          `off axis ${axis}`,
      );
    }
  }
  const shape = xs[0].shape.map((d, j) => (j === a ? xs.reduce((s, x) => s + x.shape[a], 0) : d));
  const y = gpu.empty(shape, xs[0].dtype, "concat");
  const ys = contiguousStrides(shape);
  const outer = numel(shape.slice(0, a));
  let at = 0;
  for (const x of xs) {
    if (x.numel > 0) {
      if (outer === 1) copyRange(gpu, x, y, 0, at * ys[a], x.numel);
      else {
        stridedCopy(gpu, "concat", x.shape, { t: x, strides: contiguousStrides(x.shape) }, {
          t: y,
          strides: ys,
          offset: at * ys[a],
        });
      }
    }
    at += x.shape[a];
  }
  return y;
}

// ------------------------------------------------------- CPU references

/** `axis` of `shape` normalised, with the element counts before it (outer) and after it (inner). */
function aroundAxis(op: string, shape: readonly number[], axis: number) {
  const a = normalizeAxis(op, axis, shape.length);
  return { a, outer: numel(shape.slice(0, a)), inner: numel(shape.slice(a + 1)) };
}

/** Reference of `slice`. */
export function sliceRef<T extends HostArray>(
  x: T,
  shape: readonly number[],
  axis: number,
  start: number,
  length: number,
): T {
  const { a, outer, inner } = aroundAxis("sliceRef", shape, axis);
  const y = emptyLike(x, outer * length * inner);
  for (let o = 0; o < outer; o++) {
    const from = (o * shape[a] + start) * inner;
    y.set(x.subarray(from, from + length * inner), o * length * inner);
  }
  return y;
}

/** Reference of `sliceBackward`. */
export function sliceBackwardRef(
  dy: Float32Array,
  inputShape: readonly number[],
  axis: number,
  start: number,
): Float32Array {
  const { a, outer, inner } = aroundAxis("sliceBackwardRef", inputShape, axis);
  const len = dy.length / (outer * inner);
  const y = new Float32Array(numel(inputShape));
  for (let o = 0; o < outer; o++) {
    y.set(dy.subarray(o * len * inner, (o + 1) * len * inner), (o * inputShape[a] + start) * inner);
  }
  return y;
}

/** Reference of `concat`. */
export function concatRef<T extends HostArray>(
  xs: T[],
  shapes: readonly (readonly number[])[],
  axis: number,
): T {
  const { outer } = aroundAxis("concatRef", shapes[0], axis);
  const y = emptyLike(xs[0], xs.reduce((s, x) => s + x.length, 0));
  let at = 0;
  for (let o = 0; o < outer; o++) {
    for (const x of xs) {
      const block = x.length / outer;
      y.set(x.subarray(o * block, (o + 1) * block), at);
      at += block;
    }
  }
  return y;
}

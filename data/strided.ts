/**
 * Strided views over a storage: how many storage elements a (size, stride,
 * offset) view reaches, whether it is C-contiguous, and gathering it into a
 * contiguous copy. PyTorch saves a transposed or sliced tensor as its whole
 * storage plus strides; bloom hands out contiguous data.
 */

/** Element count of `shape`. */
export function numelOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/**
 * Storage elements [first, end) the view touches, relative to the storage
 * start, for non-negative strides; an empty view touches nothing.
 */
export function viewExtent(
  shape: readonly number[],
  stride: readonly number[],
  offset: number,
): { first: number; end: number } {
  if (numelOf(shape) === 0) return { first: offset, end: offset };
  let last = offset;
  for (let d = 0; d < shape.length; d++) last += (shape[d] - 1) * stride[d];
  return { first: offset, end: last + 1 };
}

/** Whether the strides are C-contiguous for the shape (size-1 dimensions may have any stride). */
export function isContiguous(shape: readonly number[], stride: readonly number[]): boolean {
  let expect = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    if (shape[d] !== 1 && stride[d] !== expect) return numelOf(shape) === 0;
    expect *= shape[d];
  }
  return true;
}

/**
 * Gathers the view (shape, stride, offset in elements of `elemSize` bytes)
 * over `src` into a fresh C-contiguous byte array. Elements are copied as
 * whole words (never through floats, so NaN payloads survive).
 * Invariant: the view's extent lies within `src` (callers check).
 */
export function gatherStrided(
  src: Uint8Array,
  elemSize: number,
  shape: readonly number[],
  stride: readonly number[],
  offset: number,
): Uint8Array {
  const n = numelOf(shape);
  const out = new Uint8Array(n * elemSize);
  if (n === 0) return out;
  // Copy in units of the element size (8-byte elements as two 32-bit words).
  const unit = elemSize === 8 ? 4 : elemSize;
  const per = elemSize / unit;
  const s = src.byteOffset % unit === 0 ? src : src.slice();
  const Arr = unit === 4 ? Uint32Array : unit === 2 ? Uint16Array : Uint8Array;
  const from = new Arr(s.buffer as ArrayBuffer, s.byteOffset, Math.floor(s.byteLength / unit));
  const to = new Arr(out.buffer);
  // Size-1 dimensions never move the view, but each would cost the odometer a carry per
  // element; without them every dimension has ≥ 2 steps and carries average under one.
  const dims = [...shape.keys()].filter((d) => shape[d] !== 1);
  const sh = dims.map((d) => shape[d]);
  const st = dims.map((d) => stride[d]);
  const nd = dims.length;
  const idx = new Array<number>(nd).fill(0);
  let at = offset;
  for (let o = 0; o < n; o++) {
    for (let w = 0; w < per; w++) to[o * per + w] = from[at * per + w];
    // Odometer: step the last dimension, carrying into earlier ones.
    for (let d = nd - 1; d >= 0; d--) {
      at += st[d];
      if (++idx[d] < sh[d]) break;
      at -= st[d] * sh[d];
      idx[d] = 0;
    }
  }
  return out;
}

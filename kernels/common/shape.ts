/**
 * Shape helpers every kernel file shares: formatting, strides, broadcasting,
 * axis normalisation, the checks a dispatch runs on its tensors, and the
 * integer arithmetic (gcd, lcm) that alignment splits need.
 */
import { type DType, GpuTensor, numel } from "../tensor.ts";

/** `[2, 3]`, for messages. */
export function fmtShape(shape: readonly number[]): string {
  return `[${shape.join(", ")}]`;
}

/** Row-major strides of a contiguous tensor of `shape`, in elements. */
export function contiguousStrides(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    s[d] = acc;
    acc *= shape[d];
  }
  return s;
}

/** Whether two shapes are equal. */
export function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/**
 * The numpy broadcast of `shapes` (right-aligned; a dimension of 1 stretches).
 * Throws a RangeError naming `op` and the shapes when they do not broadcast.
 */
export function broadcastShapes(op: string, ...shapes: (readonly number[])[]): number[] {
  const rank = Math.max(0, ...shapes.map((s) => s.length));
  const out = new Array<number>(rank).fill(1);
  for (const s of shapes) {
    for (let i = 0; i < s.length; i++) {
      const d = rank - s.length + i;
      const n = s[i];
      if (n === out[d] || n === 1) continue;
      if (out[d] !== 1) {
        throw new RangeError(
          `${op}: shapes ${shapes.map(fmtShape).join(" and ")} do not broadcast ` +
            `(dimension ${d} from the left is ${out[d]} vs ${n}); sizes must match or be 1`,
        );
      }
      out[d] = n;
    }
  }
  return out;
}

/**
 * Strides (elements) that read a contiguous tensor of `shape` as if it had
 * been broadcast to `outShape`: 0 on stretched and missing leading dimensions.
 * `shape` must broadcast to `outShape`.
 */
export function broadcastStrides(shape: readonly number[], outShape: readonly number[]): number[] {
  const own = contiguousStrides(shape);
  const lead = outShape.length - shape.length;
  return outShape.map((n, d) => {
    if (d < lead) return 0;
    const m = shape[d - lead];
    if (m === n) return m === 1 ? 0 : own[d - lead];
    if (m === 1) return 0;
    throw new RangeError(`shape ${fmtShape(shape)} does not broadcast to ${fmtShape(outShape)}`);
  });
}

/**
 * For each element of `shape` (row-major), the index of the element of a
 * contiguous operand of shape `from` that broadcasts to it (CPU references).
 */
export function broadcastIndex(from: readonly number[], shape: readonly number[]): Int32Array {
  const n = numel(shape);
  const lead = shape.length - from.length;
  const fs = from.map((_, i) => numel(from.slice(i + 1)));
  const idx = new Int32Array(n);
  const c = new Array<number>(shape.length).fill(0);
  for (let i = 0; i < n; i++) {
    let at = 0;
    for (let d = lead; d < shape.length; d++) if (from[d - lead] !== 1) at += c[d] * fs[d - lead];
    idx[i] = at;
    for (let d = shape.length - 1; d >= 0; d--) {
      if (++c[d] < shape[d]) break;
      c[d] = 0;
    }
  }
  return idx;
}

/** `axis` (negative counts from the end) as an index in [0, rank); RangeError naming `op`. */
export function normalizeAxis(op: string, axis: number, rank: number): number {
  const a = axis < 0 ? axis + rank : axis;
  if (!Number.isInteger(axis) || a < 0 || a >= rank) {
    throw new RangeError(`${op}: axis ${axis} is out of range for a tensor of rank ${rank}`);
  }
  return a;
}

/** Throws when `t` was released or has the wrong dtype; `what` names it in the message. */
export function checkTensor(op: string, what: string, t: GpuTensor, dtype?: DType): void {
  if (!(t instanceof GpuTensor)) throw new TypeError(`${op}: ${what} is not a GpuTensor`);
  if (t.released) {
    throw new Error(`${op}: ${what} ${fmtShape(t.shape)} was released before use`);
  }
  if (dtype && t.dtype !== dtype) {
    throw new TypeError(`${op}: ${what} must be ${dtype}, got ${t.dtype} ${fmtShape(t.shape)}`);
  }
}

/** Throws naming `op` unless `t` is f32 with exactly `shape`. */
export function expectShape(op: string, what: string, t: GpuTensor, shape: readonly number[]) {
  if (!sameShape(t.shape, shape)) {
    throw new RangeError(`${op}: ${what} has shape [${t.shape}], expected [${shape}]`);
  }
  if (t.dtype !== "f32") throw new TypeError(`${op}: ${what} must be f32, got ${t.dtype}`);
}

/** Greatest common divisor of two non-negative integers. */
export function gcd(a: number, b: number): number {
  while (b) [a, b] = [b, a % b];
  return a;
}

/** Least common multiple of two positive integers. */
export function lcm(a: number, b: number): number {
  return (a / gcd(a, b)) * b;
}

/** The smallest power of two ≥ n (1 for n ≤ 1). */
export function pow2Ceil(n: number): number {
  return n <= 1 ? 1 : 2 ** Math.ceil(Math.log2(n));
}

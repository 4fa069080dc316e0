/**
 * GpuTensor: a shaped, typed view of (part of) a GPU buffer. Kernels take and
 * return these; the autodiff graph wraps them.
 */

/** Element types the kernels use: f32 for data, u32/i32 for indices and masks. */
export type DType = "f32" | "u32" | "i32";

/** Bytes per element of each dtype. */
export const DTYPE_BYTES: { readonly [D in DType]: number } = { f32: 4, u32: 4, i32: 4 };

/** A host array of any dtype (what references of dtype-agnostic ops take). */
export type HostArray = Float32Array | Uint32Array | Int32Array;

/** A zeroed array of `n` elements of the same type as `x`. */
export function emptyLike<T extends HostArray>(x: T, n: number): T {
  return new (x.constructor as new (n: number) => T)(n);
}

/** Anything a kernel can bind as a storage buffer: a buffer range. */
export interface BufferView {
  readonly buffer: GPUBuffer;
  /** Byte offset into `buffer`. */
  readonly offset: number;
  /** Bytes bound; the WGSL `arrayLength` sees exactly this many. */
  readonly size: number;
}

/** Number of elements of a shape. */
export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) throw new RangeError(`bad shape [${shape}]`);
    n *= d;
  }
  return n;
}

/**
 * A tensor on the GPU. It owns its buffer when `pooled` is true (the runtime
 * returns it to the pool on `release`); views made with `view()` never own it.
 */
export class GpuTensor implements BufferView {
  readonly buffer: GPUBuffer;
  readonly shape: readonly number[];
  readonly dtype: DType;
  readonly offset: number;
  readonly pooled: boolean;
  #released = false;

  constructor(
    buffer: GPUBuffer,
    shape: readonly number[],
    dtype: DType = "f32",
    offset = 0,
    pooled = false,
  ) {
    const bytes = numel(shape) * DTYPE_BYTES[dtype];
    if (offset + bytes > buffer.size) {
      throw new RangeError(
        `tensor [${shape}] ${dtype} at byte ${offset} needs ${bytes} B but buffer ` +
          `'${buffer.label}' has ${buffer.size} B`,
      );
    }
    this.buffer = buffer;
    this.shape = [...shape];
    this.dtype = dtype;
    this.offset = offset;
    this.pooled = pooled;
  }

  /** Element count. */
  get numel(): number {
    return numel(this.shape);
  }

  /** Bytes of data (not the buffer's size, which is rounded to a size class). */
  get size(): number {
    return this.numel * DTYPE_BYTES[this.dtype];
  }

  /** Whether `release` has been called. */
  get released(): boolean {
    return this.#released;
  }

  /** Marks the tensor released; the runtime calls this from `Gpu.release`. */
  markReleased(): void {
    if (this.#released) throw new Error(`tensor [${this.shape}] released twice`);
    this.#released = true;
  }

  /** Same data, another shape with the same element count (no copy, does not own). */
  reshape(shape: readonly number[]): GpuTensor {
    if (numel(shape) !== this.numel) {
      throw new RangeError(`cannot reshape [${this.shape}] to [${shape}]`);
    }
    return new GpuTensor(this.buffer, shape, this.dtype, this.offset, false);
  }

  /** A view of `count` elements starting at element `start`, shaped `shape`. */
  view(start: number, shape: readonly number[]): GpuTensor {
    const bytes = DTYPE_BYTES[this.dtype];
    if (start < 0 || start + numel(shape) > this.numel) {
      throw new RangeError(`view [${start}, +${numel(shape)}) outside tensor [${this.shape}]`);
    }
    return new GpuTensor(this.buffer, shape, this.dtype, this.offset + start * bytes, false);
  }
}

/**
 * The buffer `t` owns under another shape of the same size, still owned (the
 * caller releases the result instead of `t`); `reshape` gives a view instead.
 */
export function retag(t: GpuTensor, shape: readonly number[]): GpuTensor {
  if (numel(shape) !== t.numel) throw new RangeError(`cannot retag [${t.shape}] as [${shape}]`);
  return new GpuTensor(t.buffer, shape, t.dtype, t.offset, t.pooled);
}

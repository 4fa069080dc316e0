/**
 * Kernel descriptions: pure data that says what a kernel is (name, cache key,
 * bindings, WGSL). The runtime (`runtime.ts`) is the one engine that compiles
 * and dispatches them; op files (`kernels/*.ts`) build descriptions and call
 * `gpu.dispatch`. Keeping the two apart lets the autotuner, the benchmarks and
 * the recorder treat every kernel alike.
 */

/**
 * How a storage binding is declared in WGSL: `read` is
 * `var<storage, read>`, `read_write` is `var<storage, read_write>`.
 * A buffer both read and written by one dispatch must be bound once, as
 * `read_write` (binding it twice is a validation error).
 */
export type StorageAccess = "read" | "read_write";

/** A compiled-once, dispatched-many kernel. */
export interface Kernel {
  /** Short op name, shown in errors and timings: "matmul", "layernorm_fwd". */
  readonly name: string;
  /**
   * Specialisation key: everything the WGSL depends on besides the name
   * (tile sizes, flags, constants baked into the source). Pipelines are cached
   * by `name + key`, so two kernels with equal name and key must have equal
   * source.
   */
  readonly key: string;
  /** Storage bindings `@group(0) @binding(0..n-1)`, in order. */
  readonly bindings: readonly StorageAccess[];
  /**
   * Bytes of the uniform block at `@binding(n)` (n = bindings.length), or 0 for
   * none. Each dispatch gets its own copy (see `Gpu.dispatch`).
   */
  readonly uniformBytes: number;
  /** WGSL source with entry point `main`. Called once per pipeline. */
  source(): string;
}

/** Builds a kernel description with a lazily built, memoised source. */
export function kernel(spec: {
  name: string;
  key?: string;
  bindings: readonly StorageAccess[];
  uniformBytes?: number;
  source: () => string;
}): Kernel {
  let src: string | undefined;
  return {
    name: spec.name,
    key: spec.key ?? "",
    bindings: spec.bindings,
    uniformBytes: spec.uniformBytes ?? 0,
    source: () => (src ??= spec.source()),
  };
}

/** Workgroup counts of one dispatch. */
export type Workgroups = readonly [number, number?, number?];

/** The most workgroups per dimension WebGPU guarantees everywhere. */
export const MAX_WORKGROUPS_PER_DIM = 65535;

/**
 * Spreads `count` workgroups over x and y so neither exceeds the per-dimension
 * limit. Kernels recover the flat index with
 * `wid.x + wid.y * nwg.x` (`@builtin(workgroup_id)` and
 * `@builtin(num_workgroups)`) and must bounds-check it: up to `x - 1` extra
 * workgroups run in the last row.
 */
export function grid(count: number, maxPerDim = MAX_WORKGROUPS_PER_DIM): [number, number, number] {
  if (count <= maxPerDim) return [Math.max(1, count), 1, 1];
  const y = Math.ceil(count / maxPerDim);
  const x = Math.ceil(count / y);
  return [x, y, 1];
}

/** WGSL snippet for kernels dispatched with `grid`: the flat workgroup index. */
export const FLAT_WORKGROUP_INDEX = "(wid.x + wid.y * nwg.x)";

/** Rounds `n` up to a multiple of `m`. */
export function roundUp(n: number, m: number): number {
  return Math.ceil(n / m) * m;
}

/**
 * Uniform block writer: packs u32/i32/f32 fields in declaration order with
 * 4-byte alignment (declare WGSL uniform structs with scalar fields only, in
 * the same order, so layouts agree).
 */
export class Params {
  readonly #view: DataView;
  readonly bytes: Uint8Array;
  #at = 0;
  constructor(byteLength: number) {
    this.bytes = new Uint8Array(roundUp(Math.max(byteLength, 16), 16));
    this.#view = new DataView(this.bytes.buffer);
  }
  u32(v: number): this {
    this.#view.setUint32(this.#at, v >>> 0, true);
    this.#at += 4;
    return this;
  }
  i32(v: number): this {
    this.#view.setInt32(this.#at, v | 0, true);
    this.#at += 4;
    return this;
  }
  f32(v: number): this {
    this.#view.setFloat32(this.#at, v, true);
    this.#at += 4;
    return this;
  }
}

/** Convenience: a uniform block of u32 values, in order. */
export function u32Params(...values: number[]): Uint8Array {
  const p = new Params(values.length * 4);
  for (const v of values) p.u32(v);
  return p.bytes;
}

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

/**
 * A texture binding (`textures.ts`): `texture_f32` / `texture_u32` are sampled textures read
 * with `textureLoad` (`texture_2d<f32>` over rgba32float, `texture_2d<u32>` over rgba32uint);
 * `write_rgba32float` / `write_rgba32uint` are write-only storage textures (`textureStore`).
 */
export type TextureAccess =
  | "texture_f32"
  | "texture_u32"
  | "write_rgba32float"
  | "write_rgba32uint";

/** What a kernel binds at one slot: a storage buffer or a texture. */
export type BindingKind = StorageAccess | TextureAccess;

/** Whether a binding kind takes a texture rather than a buffer. */
export function isTextureBinding(kind: BindingKind): kind is TextureAccess {
  return kind !== "read" && kind !== "read_write";
}

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
  /** Storage (or texture) bindings `@group(0) @binding(0..n-1)`, in order. */
  readonly bindings: readonly BindingKind[];
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
  bindings: readonly BindingKind[];
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

/** One storage binding as a kernel's WGSL declares it: name, access, WGSL type ("array<f32>"). */
export type StorageDecl = readonly [name: string, access: StorageAccess, type: string];

/**
 * WGSL declarations of storage bindings 0…n−1 in `decls` order, then the
 * uniform block `uniform` = [variable, struct type] at binding n, if given.
 * The kernel's `bindings` are `decls.map((d) => d[1])`.
 */
export function bindingsWgsl(
  decls: readonly StorageDecl[],
  uniform?: readonly [string, string],
): string {
  const lines = decls.map(([name, access, type], i) =>
    `@group(0) @binding(${i}) var<storage, ${access}> ${name}: ${type};`
  );
  if (uniform) {
    lines.push(`@group(0) @binding(${decls.length}) var<uniform> ${uniform[0]}: ${uniform[1]};`);
  }
  return lines.join("\n");
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

/** WGSL parameters of a `main` dispatched with `grid`: workgroup id and count, local index. */
export const GRID_BUILTINS = "@builtin(workgroup_id) wid: vec3u, " +
  "@builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32";

/**
 * WGSL head of a kernel with one invocation per item, dispatched with
 * `grid(ceil(items / wg))`: `fn main`, the item's flat index `index`, and an
 * early return past `bound`. The caller writes the body and the closing brace.
 */
export function flatMain(wg: number, index: string, bound: string): string {
  return `@compute @workgroup_size(${wg})
fn main(${GRID_BUILTINS}) {
  let ${index} = ${FLAT_WORKGROUP_INDEX} * ${wg}u + lid;
  if (${index} >= ${bound}) { return; }`;
}

/** Rounds `n` up to a multiple of `m`. */
export function roundUp(n: number, m: number): number {
  return Math.ceil(n / m) * m;
}

/**
 * The strided-map engine: y[i] = f(x0[i], x1[i], …) where each operand is
 * addressed by its own strides (0 = broadcast) and offset. The layout ops
 * (`layout/`), every elementwise op (`elementwise.ts`) and `reduce.ts`'s
 * `broadcastTo` are bodies for it. It collapses dimensions that are
 * contiguous for every operand, loads vec4s where the innermost dimension
 * allows, and splits work that would bind more than
 * `maxStorageBufferBindingSize` into windows.
 */
import { spans } from "./common/split.ts";
import { bindableElements, bindWindow } from "./common/window.ts";
import { broadcastStrides, contiguousStrides, fmtShape } from "./common/shape.ts";
import { GpuLimitError } from "./errors.ts";
import { FLAT_WORKGROUP_INDEX, grid, GRID_BUILTINS, type Kernel, kernel } from "./kernel.ts";
import type { Gpu } from "./runtime.ts";
import { type BufferView, type DType, type GpuTensor, numel } from "./tensor.ts";
import { Uniforms } from "./uniforms.ts";

/** One operand of `stridedMap`: element (c0..ck) lives at `offset + Σ c_d·strides[d]` of `t`. */
export interface StridedOperand {
  t: GpuTensor;
  /** Per iteration dimension, in elements; 0 broadcasts. */
  strides: readonly number[];
  /** Elements from the start of `t` (default 0). */
  offset?: number;
}

/** What `stridedMap` computes: `out[c] = f(inputs[0][c], …, [acc = out[c]])` over `shape`. */
export interface MapSpec {
  /** Kernel name, shown in errors and timings. */
  name: string;
  /**
   * Body of `fn f(x0: T0, x1: T1, …[, acc: Tout]) -> Tout` (T from each operand's
   * dtype, or u32 for every operand when `raw`). Uniform scalars are `p.s0`…`p.s3`.
   */
  body: string;
  /** WGSL helper functions the body calls. */
  prelude?: string;
  shape: readonly number[];
  inputs: readonly StridedOperand[];
  out: StridedOperand;
  /** Pass the current output value as `acc` (in-place update; out bound once, read_write). */
  readOut?: boolean;
  /** Up to four f32 uniforms. */
  scalars?: readonly number[];
  /** Treat every operand as raw 32-bit words (bit-exact copies of any dtype). */
  raw?: boolean;
}

/** Most iteration dimensions after collapsing. */
export const MAX_RANK = 6;
/**
 * 256 invocations × 4 items each, the items strided by 256 so consecutive
 * invocations touch consecutive addresses (coalesced on GPUs; on llvmpipe
 * this shape measured ~2× faster than 64 × 4 and 256 × 1).
 */
const MAP_WG = 256;
const MAP_ITEMS = 4;
/**
 * Items per dispatch stay below 2^23, so the float-reciprocal division in
 * `DIVMOD_WGSL` is exact after one correction (see there).
 */
const MAX_ITEMS_PER_DISPATCH = 2 ** 23 - 1;

/**
 * WGSL n / d and n % d for n < 2^23 by a float reciprocal and one integer
 * correction: fl(n)·fl(1/d) is within (n/d)·2^-23 < 0.5 of n/d, so the
 * truncated quotient is off by at most one. Vectorises where an integer
 * division would not (llvmpipe emulates u32 division lane by lane).
 */
export const DIVMOD_WGSL = `
fn divmod(n: u32, d: u32, rcp: u32) -> vec2<u32> {
  var q = u32(f32(n) * bitcast<f32>(rcp));
  q = select(q, q - 1u, q * d > n);
  q = select(q, q + 1u, (q + 1u) * d <= n);
  return vec2<u32>(q, n - q * d);
}`;

/** f32 bits of 1/d, for `divmod`. */
export function rcpBits(d: number): number {
  const f = new Float32Array([1 / d]);
  return new Uint32Array(f.buffer)[0];
}
/**
 * Drops size-1 dimensions and merges neighbours that are contiguous for every
 * operand (outer stride = inner stride × inner size). Returns at least one dim.
 */
export function collapseDims(
  shape: readonly number[],
  strides: readonly (readonly number[])[],
): { dims: number[]; strides: number[][] } {
  const dims: number[] = [];
  const st: number[][] = strides.map(() => []);
  for (let d = 0; d < shape.length; d++) {
    const n = shape[d];
    if (n === 1) continue;
    const last = dims.length - 1;
    if (last >= 0 && strides.every((s, k) => st[k][last] === s[d] * n)) {
      dims[last] *= n;
      strides.forEach((s, k) => (st[k][last] = s[d]));
    } else {
      dims.push(n);
      strides.forEach((s, k) => st[k].push(s[d]));
    }
  }
  if (dims.length === 0) return { dims: [1], strides: strides.map(() => [0]) };
  return { dims, strides: st };
}

/**
 * How an operand's innermost dimension is addressed: "v" vec4 loads with unit
 * stride, "c" scalar unit stride, "s" broadcast (stride 0, one scalar per item),
 * "e" scalar with any stride. Unit strides are baked into the index (no
 * multiply), which keeps contiguous loads recognisably linear in the lane.
 */
type Mode = "v" | "c" | "s" | "e";

const mapKernels = new Map<string, Kernel>();

function mapKernel(
  name: string,
  rank: number,
  modes: readonly Mode[],
  linear: readonly boolean[],
  types: readonly string[],
  readOut: boolean,
  body: string,
  prelude: string,
): Kernel {
  // modes/linear/types: [out, ...inputs]
  const lin = linear.map((l) => (l ? "l" : "-")).join("");
  const key = `${rank}|${modes.join("")}|${lin}|${types.join(",")}|${readOut}|${prelude}|${body}`;
  let k = mapKernels.get(`${name}|${key}`);
  if (k) return k;
  const nOps = modes.length;
  const nIn = nOps - 1;
  const vec = modes[0] === "v";
  const last = rank - 1;
  const uniformFields = ["n"];
  for (let d = 1; d < rank; d++) uniformFields.push(`d${d}`, `r${d}`);
  for (let o = 0; o < nOps; o++) {
    uniformFields.push(`o${o}`);
    for (let d = 0; d < rank; d++) uniformFields.push(`t${o}_${d}`);
  }
  const uniformBytes = (uniformFields.length + 4) * 4;
  k = kernel({
    name,
    key,
    bindings: [...Array(nIn).fill("read"), "read_write"],
    uniformBytes,
    source: () => {
      const decl = (o: number) => {
        const t = types[o];
        return modes[o] === "v" ? `vec4<${t}>` : t;
      };
      const lines: string[] = [];
      lines.push(
        `struct P { ${uniformFields.map((f) => `${f}: u32`).join(", ")}, ` +
          `s0: f32, s1: f32, s2: f32, s3: f32 }`,
      );
      for (let i = 0; i < nIn; i++) {
        lines.push(`@group(0) @binding(${i}) var<storage, read> in${i}: array<${decl(i + 1)}>;`);
      }
      lines.push(`@group(0) @binding(${nIn}) var<storage, read_write> out: array<${decl(0)}>;`);
      lines.push(`@group(0) @binding(${nIn + 1}) var<uniform> p: P;`);
      if (rank > 1) lines.push(DIVMOD_WGSL);
      lines.push(prelude);
      const params = types.slice(1).map((t, i) => `x${i}: ${t}`);
      if (readOut) params.push(`acc: ${types[0]}`);
      lines.push(`fn f(${params.join(", ")}) -> ${types[0]} {\n  ${body}\n}`);
      const idx = (o: number) => {
        // Contiguous over the whole iteration space: the flat item index itself.
        if (linear[o]) return `p.o${o} + e`;
        const terms = [`p.o${o}`];
        for (let d = 0; d < last; d++) terms.push(`c${d} * p.t${o}_${d}`);
        const m = modes[o];
        if (m === "v" || m === "c") terms.push(`c${last}`);
        else if (m === "e") terms.push(`c${last} * p.t${o}_${last}`);
        return terms.join(" + ");
      };
      const stmts: string[] = [];
      // Decompose the flat item index, innermost dimension first.
      if (rank === 1) stmts.push("let c0 = e;");
      else {
        stmts.push("var r = e;");
        for (let d = last; d >= 1; d--) {
          stmts.push(`let q${d} = divmod(r, p.d${d}, p.r${d}); let c${d} = q${d}.y; r = q${d}.x;`);
        }
        stmts.push("let c0 = r;");
      }
      for (let i = 0; i < nIn; i++) stmts.push(`let a${i} = in${i}[${idx(i + 1)}];`);
      stmts.push(`let io = ${idx(0)};`);
      if (vec) {
        const comps = ["x", "y", "z", "w"].map((c) => {
          const args = modes.slice(1).map((m, i) => (m === "v" ? `a${i}.${c}` : `a${i}`));
          if (readOut) args.push(`cur.${c}`);
          return `f(${args.join(", ")})`;
        });
        if (readOut) stmts.push("let cur = out[io];");
        stmts.push(`out[io] = vec4<${types[0]}>(${comps.join(", ")});`);
      } else {
        const args = modes.slice(1).map((_, i) => `a${i}`);
        if (readOut) args.push("out[io]");
        stmts.push(`out[io] = f(${args.join(", ")});`);
      }
      lines.push(`@compute @workgroup_size(${MAP_WG})
fn main(${GRID_BUILTINS}) {
  let base = ${FLAT_WORKGROUP_INDEX} * ${MAP_WG * MAP_ITEMS}u + lid;
  for (var k = 0u; k < ${MAP_ITEMS}u; k++) {
    let e = base + k * ${MAP_WG}u;
    if (e >= p.n) { return; }
    ${stmts.join("\n    ")}
  }
}`);
      return lines.join("\n");
    },
  });
  mapKernels.set(`${name}|${key}`, k);
  return k;
}

/**
 * Runs `out[c] = f(inputs…[c])` over `shape` (see `MapSpec`). Dimensions are
 * collapsed first; vec4 loads are used when the innermost collapsed dimension
 * is a multiple of 4 and every operand is contiguous (or broadcast) along it
 * at a 16-byte-aligned offset. Work binding more than the adapter allows is
 * split along the outermost dimension; a single outermost slice that is still
 * too large throws `GpuLimitError`.
 */
export function stridedMap(gpu: Gpu, spec: MapSpec): void {
  const { shape, inputs, out } = spec;
  const ops = [out, ...inputs];
  if (spec.inputs.length > 6) throw new RangeError(`${spec.name}: at most 6 inputs`);
  for (const o of ops) {
    if (o.strides.length !== shape.length) {
      throw new RangeError(
        `${spec.name}: operand strides ${fmtShape(o.strides)} do not match shape ${
          fmtShape(shape)
        }`,
      );
    }
  }
  const total = numel(shape);
  if (total === 0) return;
  const col = collapseDims(shape, ops.map((o) => o.strides));
  const dims = col.dims;
  const rank = dims.length;
  if (rank > MAX_RANK) {
    throw new RangeError(
      `${spec.name}: shape ${fmtShape(shape)} has ${rank} non-contiguous dimensions after ` +
        `collapsing; at most ${MAX_RANK} are supported (make an operand contiguous first)`,
    );
  }
  const last = rank - 1;
  const base = ops.map((o) => o.t.offset / 4 + (o.offset ?? 0));
  const vecOk = (k: number) =>
    col.strides[k][last] === 1 && base[k] % 4 === 0 &&
    col.strides[k].every((s, d) => d === last || s % 4 === 0);
  const inner = (k: number): Mode => {
    const s = col.strides[k][last];
    return s === 0 ? "s" : s === 1 ? "c" : "e";
  };
  const vec = dims[last] % 4 === 0 && ops.every((_, k) => vecOk(k) || (k > 0 && inner(k) === "s"));
  const modes: Mode[] = ops.map((_, k) => (vec && inner(k) !== "s" ? "v" : inner(k)));
  const V = vec ? 4 : 1;
  const types = ops.map((o) => (spec.raw ? "u32" : wgslType(o.t.dtype)));
  const dense = contiguousStrides(dims);
  const linear = col.strides.map((st, k) => modes[k] !== "s" && st.every((v, d) => v === dense[d]));
  const k = mapKernel(
    spec.name,
    rank,
    modes,
    linear,
    types,
    Boolean(spec.readOut),
    spec.body,
    spec.prelude ?? "",
  );

  // Windows along dimension 0 so every binding fits the adapter's limit.
  const limit = bindableElements(gpu);
  const extent = col.strides.map((s) => {
    let e = 1;
    for (let d = 1; d < rank; d++) e += (dims[d] - 1) * s[d];
    return e;
  });
  const innerItems = numel(dims.slice(1)) / (rank === 1 ? 1 : V);
  let rowsPer = Math.min(
    dims[0],
    Math.floor(MAX_ITEMS_PER_DISPATCH / innerItems) * (rank === 1 ? V : 1),
  );
  col.strides.forEach((s, o) => {
    const room = limit - extent[o];
    if (room < 0) {
      throw new GpuLimitError(
        `${spec.name}: one slice of shape ${fmtShape(dims.slice(1))} spans ${extent[o] * 4} B ` +
          `of operand ${o}, over maxStorageBufferBindingSize ` +
          `(${gpu.limits.maxStorageBufferBindingSize} B); use a smaller batch`,
      );
    }
    if (s[0] > 0) rowsPer = Math.min(rowsPer, Math.floor(room / s[0]) + 1);
  });
  if (rowsPer < 1) {
    throw new GpuLimitError(
      `${spec.name}: a slice of shape ${fmtShape(dims.slice(1))} has over 2^23 items; ` +
        `split the op`,
    );
  }
  // A rank-1 vec4 map steps its only dimension in whole vec4s.
  if (rank === 1 && V === 4) rowsPer = Math.max(4, rowsPer - (rowsPer % 4));
  for (const { start: r0, count } of spans(dims[0], rowsPer)) {
    const r1 = r0 + count;
    const views: BufferView[] = [];
    const shifts: number[] = [];
    ops.forEach((o, j) => {
      const s = col.strides[j];
      const first = base[j] - o.t.offset / 4 + r0 * s[0];
      const end = first + (r1 - r0 - 1) * s[0] + extent[j];
      const w = bindWindow(gpu, o.t, first, end);
      views.push(w.view);
      shifts.push(w.shift);
    });
    const n = rank === 1 ? (r1 - r0) / V : (r1 - r0) * innerItems;
    const p = new Uniforms(k.uniformBytes).u32(n);
    for (let d = 1; d < rank; d++) {
      const size = d === last ? dims[d] / V : dims[d];
      p.u32(size).u32(rcpBits(size));
    }
    ops.forEach((_, j) => {
      const unit = modes[j] === "v" ? 4 : 1;
      p.u32(shifts[j] / unit);
      for (let d = 0; d < rank; d++) {
        // vec4 operands count their strides in vec4s; the innermost unit stride is implicit.
        p.u32(d === last && V === 4 ? 0 : col.strides[j][d] / unit);
      }
    });
    const sc = spec.scalars ?? [];
    for (let i = 0; i < 4; i++) p.f32(sc[i] ?? 0);
    const bufs = [...views.slice(1), views[0]];
    gpu.dispatch(k, bufs, grid(Math.ceil(n / (MAP_WG * MAP_ITEMS))), p.bytes);
  }
}

/**
 * Copies the elements of `src` to `dst` over `shape` as raw 32-bit words
 * (any dtype, bit for bit): `stridedMap` with the identity.
 */
export function stridedCopy(
  gpu: Gpu,
  name: string,
  shape: readonly number[],
  src: StridedOperand,
  dst: StridedOperand,
): void {
  stridedMap(gpu, { name, body: "return x0;", raw: true, shape, inputs: [src], out: dst });
}

/** A contiguous operand of `stridedMap` read as `shape`, broadcasting its own shape. */
export function operand(t: GpuTensor, shape: readonly number[], offset = 0): StridedOperand {
  return { t, strides: broadcastStrides(t.shape, shape), offset };
}

function wgslType(dtype: DType): string {
  return dtype === "f32" ? "f32" : dtype === "u32" ? "u32" : "i32";
}

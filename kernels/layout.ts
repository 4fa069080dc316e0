/**
 * Layout: strides, broadcasting, and the kernels that move elements without
 * arithmetic (permute, slice, concat, row gather/scatter, mask-token rows).
 *
 * It also holds the one strided-map engine (`stridedMap`) that these ops and
 * every elementwise op (`elementwise.ts`, `reduce.ts`'s `broadcastTo`) are
 * built on: y[i] = f(x0[i], x1[i], …) where each operand is addressed by its
 * own strides (0 = broadcast) and offset. The engine collapses dimensions
 * that are contiguous for every operand, loads vec4s where the innermost
 * dimension allows, and splits work that would bind more than
 * `maxStorageBufferBindingSize` into windows.
 *
 * Module order (no cycles): layout.ts ← reduce.ts ← elementwise.ts.
 */
import { GpuLimitError } from "./errors.ts";
import { FLAT_WORKGROUP_INDEX, grid, type Kernel, kernel, Params } from "./kernel.ts";
import type { Gpu } from "./runtime.ts";
import { type BufferView, type DType, GpuTensor, numel } from "./tensor.ts";

// ------------------------------------------------------------------ shapes

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

// --------------------------------------------------------------- windows

/**
 * A binding window over elements [first, end) of `t`: a view whose start is
 * aligned down to `minStorageBufferOffsetAlignment`, and the element `shift`
 * of `first` inside it. Lets a kernel bind any part of any tensor.
 */
export function bindWindow(
  gpu: Gpu,
  t: BufferView,
  first: number,
  end: number,
): { view: BufferView; shift: number } {
  const align = gpu.limits.minStorageBufferOffsetAlignment;
  const startByte = t.offset + first * 4;
  const viewStart = Math.floor(startByte / align) * align;
  const size = t.offset + end * 4 - viewStart;
  return {
    view: { buffer: t.buffer, offset: viewStart, size },
    shift: (startByte - viewStart) / 4,
  };
}

/** Elements a binding may hold, less the slack an aligned-down window start may add. */
export function bindableElements(gpu: Gpu): number {
  return Math.floor(gpu.limits.maxStorageBufferBindingSize / 4) -
    gpu.limits.minStorageBufferOffsetAlignment / 4;
}

function wgslType(dtype: DType): string {
  return dtype === "f32" ? "f32" : dtype === "u32" ? "u32" : "i32";
}

// ------------------------------------------------------- strided engine

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
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
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
  for (let r0 = 0; r0 < dims[0]; r0 += rowsPer) {
    const r1 = Math.min(dims[0], r0 + rowsPer);
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
    const p = new Params(k.uniformBytes).u32(n);
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

/** A contiguous operand of `stridedMap` read as `shape`, broadcasting its own shape. */
export function operand(t: GpuTensor, shape: readonly number[], offset = 0): StridedOperand {
  return { t, strides: broadcastStrides(t.shape, shape), offset };
}

// --------------------------------------------------------------- permute

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
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let e = ${FLAT_WORKGROUP_INDEX} * 64u + lid;
  if (e >= p.n) { return; }
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
    stridedMap(gpu, {
      name: "permute",
      body: "return x0;",
      raw: true,
      shape: outShape,
      inputs: [{ t: x, strides: inStrides }],
      out: { t: y, strides: outStrides },
    });
    return y;
  }
  const k = transposeKernel(r);
  const n = y.numel / 16;
  const p = new Params(k.uniformBytes).u32(n).u32(os[q] / 4);
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
  const p = new Params(k.uniformBytes).u32(n).u32(chunks).u32(len).u32(rowv).u32(w.shift / 4);
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

// ------------------------------------------------------- slice / concat

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
  stridedMap(gpu, {
    name: "slice",
    body: "return x0;",
    raw: true,
    shape,
    inputs: [{ t: x, strides: xs, offset: start * xs[a] }],
    out: { t: y, strides: contiguousStrides(shape) },
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
  stridedMap(gpu, {
    name: "slice_bwd",
    body: "return x0;",
    raw: true,
    shape: dy.shape,
    inputs: [{ t: dy, strides: contiguousStrides(dy.shape) }],
    out: { t: dx, strides: xs, offset: start * xs[a] },
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
        stridedMap(gpu, {
          name: "concat",
          body: "return x0;",
          raw: true,
          shape: x.shape,
          inputs: [{ t: x, strides: contiguousStrides(x.shape) }],
          out: { t: y, strides: ys, offset: at * ys[a] },
        });
      }
    }
    at += x.shape[a];
  }
  return y;
}

// ------------------------------------------------------ gather / scatter

/** x as [rows, row length] for the row ops; throws naming `op` for a scalar. */
function asRows(op: string, x: GpuTensor): [number, number] {
  if (x.shape.length < 1) throw new RangeError(`${op}: x ${fmtShape(x.shape)} has no rows`);
  return [x.shape[0], numel(x.shape.slice(1))];
}

function checkBinding(gpu: Gpu, op: string, what: string, t: GpuTensor): void {
  if (t.numel > bindableElements(gpu)) {
    throw new GpuLimitError(
      `${op}: ${what} ${fmtShape(t.shape)} is ${t.size} B, over maxStorageBufferBindingSize ` +
        `(${gpu.limits.maxStorageBufferBindingSize} B); split the rows into smaller calls`,
    );
  }
}

const rowKernels = new Map<string, Kernel>();

/**
 * Row copy by index: `gather` reads `dst[m] = src[idx[m]]` (zeros when the
 * index is out of range), `scatter` writes `dst[idx[m]] = src[m]` (dropped
 * when out of range). One invocation per chunk of up to `ROW_CHUNK` vec4s (or
 * elements) of a row: the index load and the div/mod run once per chunk, not
 * once per vec4 (on llvmpipe each is a per-lane loop).
 */
function rowCopyKernel(dir: "gather" | "scatter", vec: boolean): Kernel {
  const key = `${dir}|${vec}`;
  let k = rowKernels.get(key);
  if (k) return k;
  const T = vec ? "vec4<u32>" : "u32";
  k = kernel({
    name: `${dir}_rows`,
    key,
    bindings: ["read", "read", "read_write"],
    uniformBytes: 32,
    source: () => `
struct P { m: u32, n: u32, d: u32, sshift: u32, ishift: u32, dshift: u32, len: u32, chunks: u32 }
@group(0) @binding(0) var<storage, read> src: array<${T}>;
@group(0) @binding(1) var<storage, read> idx: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<${T}>;
@group(0) @binding(3) var<uniform> p: P;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let e = ${FLAT_WORKGROUP_INDEX} * 64u + lid;
  if (e >= p.m * p.chunks) { return; }
  let m = e / p.chunks;
  let j0 = (e % p.chunks) * p.len;
  let j1 = min(j0 + p.len, p.d);
  let r = idx[p.ishift + m];
${
      dir === "gather"
        ? `  let o = p.dshift + m * p.d;
  if (r < p.n) {
    let s = p.sshift + r * p.d;
    for (var j = j0; j < j1; j++) { dst[o + j] = src[s + j]; }
  } else {
    for (var j = j0; j < j1; j++) { dst[o + j] = ${T}(0u); }
  }`
        : `  if (r < p.n) {
    let o = p.dshift + r * p.d;
    let s = p.sshift + m * p.d;
    for (var j = j0; j < j1; j++) { dst[o + j] = src[s + j]; }
  }`
    }
}`,
  });
  rowKernels.set(key, k);
  return k;
}

/** Vec4s (or elements) of a row one row-copy invocation moves. */
const ROW_CHUNK = 16;

function runRowCopy(
  gpu: Gpu,
  dir: "gather" | "scatter",
  src: GpuTensor,
  idx: GpuTensor,
  dst: GpuTensor,
  m: number,
  n: number,
  d: number,
): void {
  if (m === 0 || d === 0) return;
  const vec = d % 4 === 0 && (src.offset / 4) % 4 === 0 && (dst.offset / 4) % 4 === 0;
  const V = vec ? 4 : 1;
  const k = rowCopyKernel(dir, vec);
  const s = bindWindow(gpu, src, 0, src.numel);
  const i = bindWindow(gpu, idx, 0, m);
  const o = bindWindow(gpu, dst, 0, dst.numel);
  const len = Math.min(d / V, ROW_CHUNK);
  const chunks = Math.ceil(d / V / len);
  const p = new Params(32).u32(m).u32(n).u32(d / V).u32(s.shift / V).u32(i.shift)
    .u32(o.shift / V).u32(len).u32(chunks).bytes;
  gpu.dispatch(k, [s.view, i.view, o.view], grid(Math.ceil((m * chunks) / 64)), p);
}

/** Rows of `x` [N, …] at u32 `idx` [M] → [M, …]; an index ≥ N gives a zero row. */
export function gatherRows(gpu: Gpu, x: GpuTensor, idx: GpuTensor): GpuTensor {
  checkTensor("gatherRows", "x", x);
  checkTensor("gatherRows", "idx", idx, "u32");
  if (idx.shape.length !== 1) {
    throw new RangeError(`gatherRows: idx must be 1-D u32, got ${fmtShape(idx.shape)}`);
  }
  const [n, d] = asRows("gatherRows", x);
  const m = idx.shape[0];
  const shape = [m, ...x.shape.slice(1)];
  // No source rows: every index is out of range.
  if (n === 0) return gpu.zeros(shape, x.dtype, "gatherRows");
  const y = gpu.empty(shape, x.dtype, "gatherRows");
  if (y.numel === 0) return y;
  checkBinding(gpu, "gatherRows", "x", x);
  checkBinding(gpu, "gatherRows", "output", y);
  runRowCopy(gpu, "gather", x, idx, y, m, n, d);
  return y;
}

const sortKernels = new Map<string, Kernel>();

/** Bitonic sort support: pack (idx, position) pairs, one compare-exchange step, and lookups. */
function sortKernel(stage: "init" | "step" | "starts" | "accumulate", vec: boolean): Kernel {
  const key = `${stage}|${vec}`;
  let k = sortKernels.get(key);
  if (k) return k;
  const head = `@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let e = ${FLAT_WORKGROUP_INDEX} * 64u + lid;`;
  if (stage === "init") {
    k = kernel({
      name: "scatter_sort_init",
      bindings: ["read", "read_write"],
      uniformBytes: 16,
      source: () => `
struct P { m: u32, size: u32, ishift: u32, pad: u32 }
@group(0) @binding(0) var<storage, read> idx: array<u32>;
@group(0) @binding(1) var<storage, read_write> keys: array<vec2<u32>>;
@group(0) @binding(2) var<uniform> p: P;
${head}
  if (e >= p.size) { return; }
  // Padding sorts last: key 0xffffffff never names an output row.
  var key = 0xffffffffu;
  if (e < p.m) { key = idx[p.ishift + e]; }
  keys[e] = vec2<u32>(key, e);
}`,
    });
  } else if (stage === "step") {
    k = kernel({
      name: "scatter_sort_step",
      bindings: ["read_write"],
      uniformBytes: 16,
      source: () => `
struct P { size: u32, j: u32, k: u32, pad: u32 }
@group(0) @binding(0) var<storage, read_write> keys: array<vec2<u32>>;
@group(0) @binding(1) var<uniform> p: P;
fn less(a: vec2<u32>, b: vec2<u32>) -> bool { return a.x < b.x || (a.x == b.x && a.y < b.y); }
${head}
  if (e >= p.size) { return; }
  let l = e ^ p.j;
  if (l <= e) { return; }
  let a = keys[e];
  let b = keys[l];
  let up = (e & p.k) == 0u;
  if (less(b, a) == up) {
    keys[e] = b;
    keys[l] = a;
  }
}`,
    });
  } else if (stage === "starts") {
    k = kernel({
      name: "scatter_rows_starts",
      bindings: ["read", "read_write"],
      uniformBytes: 16,
      source: () => `
struct P { m: u32, n: u32, pad0: u32, pad1: u32 }
@group(0) @binding(0) var<storage, read> keys: array<vec2<u32>>;
@group(0) @binding(1) var<storage, read_write> starts: array<u32>;
@group(0) @binding(2) var<uniform> p: P;
${head}
  if (e > p.n) { return; }
  // First sorted position whose key is ≥ e: row e's sources are [starts[e], starts[e + 1]).
  var lo = 0u;
  var hi = p.m;
  while (lo < hi) {
    let mid = (lo + hi) / 2u;
    if (keys[mid].x < e) { lo = mid + 1u; } else { hi = mid; }
  }
  starts[e] = lo;
}`,
    });
  } else {
    const T = vec ? "vec4<f32>" : "f32";
    k = kernel({
      name: "scatter_rows_acc",
      key,
      bindings: ["read", "read", "read", "read_write"],
      uniformBytes: 16,
      source: () => `
struct P { n: u32, d: u32, sshift: u32, pad: u32 }
@group(0) @binding(0) var<storage, read> src: array<${T}>;
@group(0) @binding(1) var<storage, read> keys: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read> starts: array<u32>;
@group(0) @binding(3) var<storage, read_write> dst: array<${T}>;
@group(0) @binding(4) var<uniform> p: P;
${head}
  if (e >= p.n * p.d) { return; }
  let r = e / p.d;
  let j = e - r * p.d;
  // Sources of row r in ascending source order: a fixed summation order, so the
  // result is deterministic.
  var acc = ${T}(0.0);
  for (var q = starts[r]; q < starts[r + 1u]; q++) {
    acc += src[p.sshift + keys[q].y * p.d + j];
  }
  dst[e] = acc;
}`,
    });
  }
  sortKernels.set(key, k);
  return k;
}

/**
 * `src` [M, …] rows written to rows `idx` [M] of zeros [n, …] (the backward
 * of `gatherRows`; indices ≥ n are dropped). Without `accumulate` indices must
 * be unique (which duplicate lands is unspecified, as in torch's index_put_).
 * With `accumulate` duplicates are summed in ascending source order: the
 * (index, position) pairs are bitonic-sorted on the GPU and each output row
 * sums its run, so results are bit-for-bit repeatable (no atomics).
 */
export function scatterRows(
  gpu: Gpu,
  src: GpuTensor,
  idx: GpuTensor,
  n: number,
  opts: { accumulate?: boolean } = {},
): GpuTensor {
  checkTensor("scatterRows", "src", src);
  checkTensor("scatterRows", "idx", idx, "u32");
  const [m, d] = asRows("scatterRows", src);
  if (idx.shape.length !== 1 || idx.shape[0] !== m) {
    throw new RangeError(
      `scatterRows: idx ${fmtShape(idx.shape)} must be 1-D with one index per row of src ` +
        `${fmtShape(src.shape)}`,
    );
  }
  if (!Number.isInteger(n) || n < 0) {
    throw new RangeError(`scatterRows: n must be an integer ≥ 0, got ${n}`);
  }
  const shape = [n, ...src.shape.slice(1)];
  if (!opts.accumulate || m === 0 || n * d === 0) {
    const y = gpu.zeros(shape, src.dtype, "scatterRows");
    if (y.numel === 0 || m === 0) return y;
    checkBinding(gpu, "scatterRows", "src", src);
    checkBinding(gpu, "scatterRows", "output", y);
    runRowCopy(gpu, "scatter", src, idx, y, m, n, d);
    return y;
  }
  checkTensor("scatterRows", "src", src, "f32");
  const y = gpu.empty(shape, "f32", "scatterRows");
  checkBinding(gpu, "scatterRows", "src", src);
  checkBinding(gpu, "scatterRows", "output", y);
  const size = 2 ** Math.ceil(Math.log2(Math.max(2, m)));
  const keys = gpu.empty([size, 2], "u32", "scatter_keys");
  const iw = bindWindow(gpu, idx, 0, m);
  gpu.dispatch(
    sortKernel("init", false),
    [iw.view, keys],
    grid(Math.ceil(size / 64)),
    new Params(16).u32(m).u32(size).u32(iw.shift).bytes,
  );
  const step = sortKernel("step", false);
  for (let k = 2; k <= size; k *= 2) {
    for (let j = k / 2; j >= 1; j /= 2) {
      gpu.dispatch(
        step,
        [keys],
        grid(Math.ceil(size / 64)),
        new Params(16).u32(size).u32(j).u32(k).bytes,
      );
    }
  }
  const starts = gpu.empty([n + 1], "u32", "scatter_starts");
  gpu.dispatch(
    sortKernel("starts", false),
    [keys, starts],
    grid(Math.ceil((n + 1) / 64)),
    new Params(16).u32(m).u32(n).bytes,
  );
  const vec = d % 4 === 0 && (src.offset / 4) % 4 === 0;
  const V = vec ? 4 : 1;
  const s = bindWindow(gpu, src, 0, src.numel);
  gpu.dispatch(
    sortKernel("accumulate", vec),
    [s.view, keys, starts, y],
    grid(Math.ceil((n * d) / V / 64)),
    new Params(16).u32(n).u32(d / V).u32(s.shift / V).bytes,
  );
  gpu.release(starts);
  gpu.release(keys);
  return y;
}

// ------------------------------------------------------------ mask rows

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
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let e = ${FLAT_WORKGROUP_INDEX} * 64u + lid;
  if (e >= p.nchunk * p.d) { return; }
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
  checkBinding(gpu, "maskRowsBackward", "dy", dy);
  let cur = dy;
  let rows = n;
  let masked = true;
  // Stage 1 sums masked rows in chunks; later stages sum the chunk partials.
  for (;;) {
    const vec = d % 4 === 0 && (cur.offset / 4) % 4 === 0;
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
      new Params(24).u32(rows).u32(d / V).u32(chunk).u32(nchunk).u32(xw.shift / V)
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

type Typed = Float32Array | Uint32Array | Int32Array;

function like<T extends Typed>(x: T, n: number): T {
  return new (x.constructor as new (n: number) => T)(n);
}

/** Reference of `permute` on a row-major array of `shape`. */
export function permuteRef<T extends Typed>(x: T, shape: readonly number[], perm: number[]): T {
  const outShape = perm.map((p) => shape[p]);
  const xs = contiguousStrides(shape);
  const n = numel(shape);
  const y = like(x, n);
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
export function transposeRef<T extends Typed>(x: T, shape: readonly number[]): T {
  const r = shape.length;
  const perm = [...Array(r).keys()];
  [perm[r - 2], perm[r - 1]] = [perm[r - 1], perm[r - 2]];
  return permuteRef(x, shape, perm);
}

/** Reference of `slice`. */
export function sliceRef<T extends Typed>(
  x: T,
  shape: readonly number[],
  axis: number,
  start: number,
  length: number,
): T {
  const a = normalizeAxis("sliceRef", axis, shape.length);
  const outer = numel(shape.slice(0, a));
  const inner = numel(shape.slice(a + 1));
  const y = like(x, outer * length * inner);
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
  const a = normalizeAxis("sliceBackwardRef", axis, inputShape.length);
  const outer = numel(inputShape.slice(0, a));
  const inner = numel(inputShape.slice(a + 1));
  const len = dy.length / (outer * inner);
  const y = new Float32Array(numel(inputShape));
  for (let o = 0; o < outer; o++) {
    y.set(dy.subarray(o * len * inner, (o + 1) * len * inner), (o * inputShape[a] + start) * inner);
  }
  return y;
}

/** Reference of `concat`. */
export function concatRef<T extends Typed>(
  xs: T[],
  shapes: readonly (readonly number[])[],
  axis: number,
): T {
  const a = normalizeAxis("concatRef", axis, shapes[0].length);
  const outer = numel(shapes[0].slice(0, a));
  const y = like(xs[0], xs.reduce((s, x) => s + x.length, 0));
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

/** Reference of `gatherRows` for x [N, D]. */
export function gatherRowsRef(x: Float32Array, d: number, idx: ArrayLike<number>): Float32Array {
  const n = x.length / d;
  const y = new Float32Array(idx.length * d);
  for (let m = 0; m < idx.length; m++) {
    if (idx[m] < n) y.set(x.subarray(idx[m] * d, (idx[m] + 1) * d), m * d);
  }
  return y;
}

/** Reference of `scatterRows` (accumulating in float64, in ascending source order). */
export function scatterRowsRef(
  src: Float32Array,
  d: number,
  idx: ArrayLike<number>,
  n: number,
  opts: { accumulate?: boolean } = {},
): Float32Array {
  const acc = new Float64Array(n * d);
  for (let m = 0; m < idx.length; m++) {
    const r = idx[m];
    if (r >= n) continue;
    for (let j = 0; j < d; j++) {
      acc[r * d + j] = opts.accumulate ? acc[r * d + j] + src[m * d + j] : src[m * d + j];
    }
  }
  return Float32Array.from(acc);
}

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

/**
 * Fused softmax attention (FlashAttention style), forward and backward, on
 * DINOv2's packed `qkv` layout.
 *
 * `qkv` is the output of the `qkv` Linear, [B, T, 3·H·Dh], laid out like
 * `qkv.reshape(B, T, 3, H, Dh)`: per token the queries of every head, then the
 * keys, then the values. The forward returns the heads merged, [B, T, H·Dh]
 * (what `proj` consumes), and the log-sum-exp of each query's scaled scores,
 * [B, H, T], which is all the backward needs to recompute probabilities.
 *
 * Invariants (each one bites if broken):
 * - The T×T score matrix never exists in global memory: keys are visited in
 *   blocks with an online softmax (running max `m`, running sum `l`), so
 *   memory is linear in tokens. The output is rescaled by exp(m_old − m_new)
 *   only when a score exceeds m by more than e^8 (lazy rescaling): every
 *   p = exp(s − m) stays ≤ e^8, so nothing overflows, and the O(Dh) rescale
 *   runs a handful of times per row instead of once per key block.
 * - The backward has no float atomics (WGSL has none): the dQ kernel walks
 *   keys for a block of queries, the dK/dV kernel walks queries for a block of
 *   keys; both recompute P = exp(s − lse). The dQ kernel also writes
 *   D = rowsum(dout ∘ out), which the dK/dV kernel (dispatched after it, in
 *   encoder order) reads. Every output element has exactly one writer, in a
 *   fixed order of additions, so results are deterministic.
 * - Bindings never exceed `maxStorageBufferBindingSize`: the batch is split
 *   into chunks bound as views. A view must start at a multiple of
 *   `minStorageBufferOffsetAlignment`, so each view starts at the aligned byte
 *   at or below its data and the kernel gets the remainder as a base offset
 *   (`*B` fields of the uniform block). Nothing is truncated: a batch element
 *   that alone exceeds the limit is a `GpuLimitError`.
 * - Rows past T (the tail of the last block) load row T−1 and never store,
 *   so control flow stays uniform (no divergent loops, barriers stay legal).
 *
 * Cost model that shaped the kernels (Mesa 22.3 llvmpipe, measured with perf
 * on the JIT code): every storage or workgroup-memory load becomes a loop
 * over the 8 SIMD lanes with a bounds check per component, even at a uniform
 * address, while arithmetic is one AVX instruction per 8 lanes; and every
 * write to a loop-carried variable is a masked read-blend-write. So the
 * register-blocked kernels keep `rows` rows per invocation (each loaded key
 * or value component feeds `rows` vector FMAs), update accumulators once per
 * `block` keys, and emit each row's loads and stores once inside a loop over
 * rows (compile time grows with the number of memory operations in the
 * source). Variants are chosen by measurement (`tuneAttention`).
 */
import {
  type AutotuneCache,
  type Autotuner,
  type CandidateCodec,
  fmtSeconds,
  newAutotuner,
  TuneBudget,
  type TuneRecord,
} from "./autotune.ts";
import { candidateSetTag, classDefaults } from "./defaults.ts";
import { sameShape } from "./common/shape.ts";
import { bindWindow } from "./common/window.ts";
import { splitSpans } from "./common/split.ts";
import { GpuLimitError } from "./errors.ts";
import { bindingsWgsl, grid, GRID_BUILTINS, type Kernel, kernel } from "./kernel.ts";
import type { Gpu } from "./runtime.ts";
import type { GpuTensor } from "./tensor.ts";
import { Uniforms } from "./uniforms.ts";

// ------------------------------------------------------------------ variants

/**
 * One way to run an attention kernel. Two families:
 * - `rows`: no workgroup memory and no barriers; each invocation keeps `rows`
 *   query (or key) rows in registers and reads the other side straight from
 *   storage at workgroup-uniform addresses. Wins on CPU adapters (llvmpipe),
 *   where barriers and workgroup memory are expensive.
 * - `tiled`: the workgroup stages `tile` rows of the other side in workgroup
 *   memory between two barriers, then every invocation reads them from there.
 *   What pays on real GPUs.
 */
export interface AttentionVariant {
  kind: "rows" | "tiled";
  /** Invocations per workgroup. */
  wg: number;
  /** Rows each invocation owns (queries for forward and dQ, keys for dK/dV). */
  rows: number;
  /** Rows of the other side per online-softmax step (their scores stay in registers). */
  block: number;
  /** `tiled` only: rows per workgroup-memory tile (a multiple of `block`). */
  tile?: number;
  /** Dot products into a vec4 accumulator ("vec") or a scalar fma chain ("scalar"). */
  dot?: "vec" | "scalar";
  /**
   * Forward of the `rows` family only: read qkv from an rgba32float texture the dispatch copies
   * it into (a texel is 4 elements of a row), where a storage load is a per-lane loop on
   * llvmpipe and a texel fetch a branch-free gather (see textures.ts). Elsewhere ignored.
   */
  tex?: boolean;
}

/** The variant of each of the three kernels. */
export interface AttentionPlan {
  forward: AttentionVariant;
  dq: AttentionVariant;
  dkv: AttentionVariant;
}

/**
 * A portable plan: register-blocked kernels that are correct on every adapter and compile in a
 * few seconds even on llvmpipe. What runs untuned is the adapter class's shipped plan
 * (`defaults.ts`, `defaultAttentionPlan`).
 */
export const DEFAULT_ATTENTION_PLAN: AttentionPlan = {
  forward: { kind: "rows", wg: 8, rows: 4, block: 1, dot: "vec" },
  dq: { kind: "rows", wg: 8, rows: 4, block: 1, dot: "vec" },
  dkv: { kind: "rows", wg: 8, rows: 4, block: 1, dot: "vec" },
};

/**
 * Every variant some adapter class may tune (`defaults.ts` picks each class's), with the
 * kernels it applies to. Cold compile CPU time on llvmpipe at head dim 64, forward / dQ +
 * dK/dV: rows 4 1 s / 5 s, rows 16 8 s / 58 s, rows 32 23 s / 312 s. Rows 32 buys ~10 %
 * over rows 16, which for the backward is not worth five minutes of a first run, so it is a
 * forward-only candidate. The texture-reading forwards (`tex`) run 20–30 % faster than the
 * same rows from storage on llvmpipe (rows 12: ~0.36 of the FMA peak against ~0.25).
 */
const CANDIDATES: readonly { v: AttentionVariant; ops: readonly Op[] }[] = [
  // CPU adapters: rows per invocation amortise storage loads.
  { v: DEFAULT_ATTENTION_PLAN.forward, ops: ["fwd", "dq", "dkv"] },
  { v: { kind: "rows", wg: 8, rows: 8, block: 2, dot: "scalar" }, ops: ["fwd", "dq", "dkv"] },
  { v: { kind: "rows", wg: 8, rows: 16, block: 2, dot: "scalar" }, ops: ["fwd", "dq", "dkv"] },
  { v: { kind: "rows", wg: 8, rows: 32, block: 2, dot: "scalar" }, ops: ["fwd"] },
  { v: { kind: "rows", wg: 8, rows: 8, block: 2, dot: "scalar", tex: true }, ops: ["fwd"] },
  { v: { kind: "rows", wg: 8, rows: 12, block: 2, dot: "scalar", tex: true }, ops: ["fwd"] },
  { v: { kind: "rows", wg: 8, rows: 16, block: 2, dot: "scalar", tex: true }, ops: ["fwd"] },
  // GPUs: cached broadcast loads, or key/value tiles in workgroup memory.
  { v: { kind: "rows", wg: 64, rows: 1, block: 4, dot: "vec" }, ops: ["fwd", "dq", "dkv"] },
  {
    v: { kind: "tiled", wg: 64, rows: 1, block: 4, tile: 32, dot: "vec" },
    ops: ["fwd", "dq", "dkv"],
  },
  {
    v: { kind: "tiled", wg: 128, rows: 1, block: 4, tile: 64, dot: "vec" },
    ops: ["fwd", "dq", "dkv"],
  },
];

/** Options of `attention` and `attentionBackward`. */
export interface AttentionOptions {
  /** Number of heads H; qkv's last dimension must be 3·H·Dh. */
  heads: number;
  /** Score scale; defaults to 1/sqrt(Dh). */
  scale?: number;
  /** Force one variant for every kernel (tests, benchmarks); else the tuned or default plan. */
  variant?: AttentionVariant;
  /**
   * Largest binding in bytes; defaults to (and is capped at) the adapter's
   * `maxStorageBufferBindingSize`. Tests lower it to exercise the batch split.
   */
  maxBindingBytes?: number;
  /** Look tuned choices up in this cache instead of the process-wide one (tests). */
  tuneCache?: AutotuneCache;
}

// -------------------------------------------------------------- WGSL builder

const NEG = "-3.0e38";
/** How far (in log units) a score may exceed the reference max before o is rescaled. */
const RESCALE_SLACK = "8.0";

/** Which kernel a source is for. */
export type AttentionOp = "fwd" | "dq" | "dkv";
type Op = AttentionOp;

/** A per-row stream of the "other side" (keys for fwd/dq, queries for dkv). */
interface Stream {
  name: string;
  /** Storage array it is read from. */
  arr: string;
  /** Elements per row: DV for vectors, 1 for scalars (lse, D). */
  width: number;
  /** WGSL type of one element. */
  type: string;
  /** Address of the first element of row `r` (an expression in `r`); a texture's row index. */
  at: (r: string) => string;
  /** For a texture stream: the texel column of the row's first element. */
  texCol?: string;
}

/** What the body of the block loop may ask: element `c` of stream row `i`, and its row index. */
interface BlockAccess {
  get: (name: string, i: number, c?: number) => string;
  idx: (i: number) => string;
}

class Src {
  readonly lines: string[] = [];
  push(indent: number, ...ls: string[]): void {
    for (const l of ls) this.lines.push("  ".repeat(indent) + l);
  }
  toString(): string {
    return this.lines.join("\n");
  }
}

/** Shapes and choices every generator needs. */
interface Gen {
  op: Op;
  v: Required<Omit<AttentionVariant, "tile">> & { tile: number };
  dh: number;
  /** Vector width of storage accesses: 4 (vec4f) or 1 (f32). */
  w: 1 | 4;
}

const vt = (g: Gen) => (g.w === 4 ? "vec4f" : "f32");
const splat = (g: Gen, x: string) => (g.w === 4 ? `vec4f(${x})` : x);
const zero = (g: Gen) => (g.w === 4 ? "vec4f(0.0)" : "0.0");

/** Declares a dot-product accumulator. */
function accDecl(g: Gen, name: string): string {
  return g.v.dot === "vec" || g.w === 1 ? `var ${name} = ${zero(g)};` : `var ${name} = 0.0;`;
}

/** Adds a·b (one chunk) into the accumulator. */
function accAdd(g: Gen, acc: string, a: string, b: string): string {
  if (g.w === 1 || g.v.dot === "vec") return `${acc} = fma(${a}, ${b}, ${acc});`;
  return ["x", "y", "z", "w"].map((e) => `${acc} = fma(${a}.${e}, ${b}.${e}, ${acc});`).join(" ");
}

/** The scalar value of an accumulator. */
function accSum(g: Gen, acc: string): string {
  if (g.w === 4 && g.v.dot === "vec") return `((${acc}.x + ${acc}.y) + (${acc}.z + ${acc}.w))`;
  return acc;
}

/** Whether a kernel reads qkv from a texture: `tex` forward variants with vec4 rows. */
function texRead(g: Gen): boolean {
  return g.v.tex && g.op === "fwd" && g.w === 4;
}

/** Header: uniform block, bindings and the workgroup prologue shared by all three kernels. */
function header(bindings: [string, "read" | "read_write", string][], texQkv = false): Src {
  const s = new Src();
  s.push(
    0,
    "struct P {",
    "  T: u32, heads: u32, nblk: u32, nwg: u32,",
    "  qkvB: u32, outB: u32, doutB: u32, lseB: u32, dB: u32, dqkvB: u32,",
    "  scale: f32, row0: u32,",
    "}",
  );
  const decls = bindings.map(([name, access, type]) => [name, access, `array<${type}>`] as const);
  const lines = bindingsWgsl(decls, ["prm", "P"]).split("\n");
  // qkv is binding 0 of every kernel: as a texture, only its declaration changes.
  if (texQkv) lines[0] = "@group(0) @binding(0) var qkvT: texture_2d<f32>;";
  s.push(0, ...lines);
  return s;
}

function prologue(s: Src, g: Gen): void {
  const dv = g.dh / g.w;
  s.push(
    0,
    `@compute @workgroup_size(${g.v.wg})`,
    `fn main(${GRID_BUILTINS}) {`,
  );
  s.push(
    1,
    "let flat = wid.x + wid.y * nwg.x;",
    "if (flat >= prm.nwg) { return; }",
    "let T = prm.T;",
    "let H = prm.heads;",
    "let blk = flat % prm.nblk;",
    "let bh = flat / prm.nblk;",
    "let h = bh % H;",
    "let b = bh / H;",
    "// qkv row stride and merged-heads row stride, in storage elements",
    `let rs = H * ${3 * dv}u;`,
    `let ms = H * ${dv}u;`,
    "let tok = prm.qkvB + b * T * rs;",
    `let qOff = h * ${dv}u;`,
    `let kOff = (H + h) * ${dv}u;`,
    `let vOff = (2u * H + h) * ${dv}u;`,
    "let sbase = (b * H + h) * T; // row 0 of this (b, h) in lse and D",
    "let tb = b * T; // row 0 of image b in a qkv texture of this dispatch's images",
  );
}

/**
 * The loop over the other side's rows in steps of `block`, reading them from
 * storage (`rows`) or from workgroup-memory tiles (`tiled`). `body` emits one
 * step given accessors for the step's rows.
 */
function blockLoop(s: Src, g: Gen, streams: Stream[], body: (a: BlockAccess) => void): void {
  const kb = g.v.block;
  if (g.v.kind === "rows") {
    s.push(1, `for (var j0 = 0u; j0 < T; j0 += ${kb}u) {`);
    for (let i = 0; i < kb; i++) {
      s.push(2, `let j${i} = min(j0 + ${i}u, T - 1u);`);
      for (const st of streams) s.push(2, `let a${st.name}${i} = ${st.at(`j${i}`)};`);
    }
    body({
      get: (name, i, c = 0) => {
        const st = streams.find((x) => x.name === name)!;
        return st.texCol
          ? `textureLoad(${st.arr}, vec2u(${st.texCol} + ${c}u, a${name}${i}), 0)`
          : `${st.arr}[a${name}${i}${c ? ` + ${c}u` : ""}]`;
      },
      idx: (i) => (i === 0 ? "j0" : `j0 + ${i}u`),
    });
    s.push(1, "}");
    return;
  }
  const kt = g.v.tile;
  s.push(1, `for (var t0 = 0u; t0 < T; t0 += ${kt}u) {`);
  s.push(2, "workgroupBarrier(); // the previous tile is no longer read");
  for (const st of streams) {
    const n = kt * st.width;
    s.push(2, `for (var e = lid; e < ${n}u; e += ${g.v.wg}u) {`);
    if (st.width === 1) {
      s.push(3, `ts_${st.name}[e] = ${st.arr}[${st.at("min(t0 + e, T - 1u)")}];`);
    } else {
      s.push(
        3,
        `let r = min(t0 + e / ${st.width}u, T - 1u);`,
        `ts_${st.name}[e] = ${st.arr}[${st.at("r")} + e % ${st.width}u];`,
      );
    }
    s.push(2, "}");
  }
  s.push(2, "workgroupBarrier(); // the tile is complete");
  s.push(2, `let tn = min(${kt}u, T - t0);`);
  s.push(2, `for (var jj = 0u; jj < tn; jj += ${kb}u) {`);
  body({
    get: (name, i, c = 0) => {
      const st = streams.find((x) => x.name === name)!;
      const row = i === 0 ? "jj" : `(jj + ${i}u)`;
      const at = st.width === 1 ? row : `${row} * ${st.width}u${c ? ` + ${c}u` : ""}`;
      return `ts_${name}[${at}]`;
    },
    idx: (i) => (i === 0 ? "t0 + jj" : `t0 + jj + ${i}u`),
  });
  s.push(2, "}");
  s.push(1, "}");
}

/** Workgroup-memory declarations of the tiled family. */
function tileDecls(g: Gen, streams: Stream[]): string[] {
  if (g.v.kind !== "tiled") return [];
  return streams.map((st) =>
    `var<workgroup> ts_${st.name}: array<${st.type}, ${g.v.tile * st.width}>;`
  );
}

/**
 * Emits one WGSL loop over the invocation's rows r = 0…rows−1 with `row` and
 * `ld` (row clamped to T−1) defined: `before` lines, then `switch r` running
 * `perRow(r)` (moving values between shared temporaries and row r's named
 * registers), then `after` lines. The source thus holds one copy of a row's
 * loads and stores instead of `rows` copies: llvmpipe expands every storage
 * access into a loop over the SIMD lanes, and compile time grows with their
 * count.
 */
function rowLoop(
  s: Src,
  g: Gen,
  before: string[],
  perRow: (r: number) => string[],
  after: string[] = [],
): void {
  const per = g.v.wg * g.v.rows;
  s.push(1, `for (var r = 0u; r < ${g.v.rows}u; r++) {`);
  s.push(
    2,
    `let row = prm.row0 + blk * ${per}u + r * ${g.v.wg}u + lid;`,
    "let ld = min(row, T - 1u);",
    ...before,
    "switch r {",
  );
  for (let r = 0; r < g.v.rows; r++) {
    s.push(3, `${r === g.v.rows - 1 ? `case ${r}u, default` : `case ${r}u`}: {`);
    s.push(4, ...perRow(r));
    s.push(3, "}");
  }
  s.push(2, "}", ...after);
  s.push(1, "}");
}

/** `let` temporaries t0…t(DV−1) = arr[at + c] (times `suffix`). */
function loadChunks(g: Gen, name: string, arr: string, at: string, suffix = ""): string[] {
  return Array.from(
    { length: g.dh / g.w },
    (_, c) => `let ${name}${c} = ${arr}[${at} + ${c}u]${suffix};`,
  );
}

/** `name{r}_{c} = tmp{c};` for every chunk c. */
function assignRow(g: Gen, name: string, r: number, tmp: string): string[] {
  return Array.from({ length: g.dh / g.w }, (_, c) => `${name}${r}_${c} = ${tmp}${c};`);
}

/** Declares `name{r}_{c}` for every row and chunk. */
function declareRows(s: Src, g: Gen, ...names: string[]): void {
  for (let r = 0; r < g.v.rows; r++) {
    for (const n of names) {
      for (let c = 0; c < g.dh / g.w; c++) s.push(1, `var ${n}${r}_${c}: ${vt(g)};`);
    }
  }
}

/** A tensor the kernels bind (its name is also its uniform base field's stem). */
type TensorName = "qkv" | "out" | "dout" | "lse" | "dd" | "dqkv";

/** The tensors each kernel binds, in binding order, with their access. */
const TENSORS: Record<Op, [TensorName, "read" | "read_write"][]> = {
  fwd: [["qkv", "read"], ["out", "read_write"], ["lse", "read_write"]],
  dq: [
    ["qkv", "read"],
    ["out", "read"],
    ["dout", "read"],
    ["lse", "read"],
    ["dd", "read_write"],
    ["dqkv", "read_write"],
  ],
  dkv: [["qkv", "read"], ["dout", "read"], ["lse", "read"], ["dd", "read"], ["dqkv", "read_write"]],
};

/** Whether a tensor holds head rows (read as vectors); lse and dd hold one f32 per (head, row). */
function holdsRows(name: TensorName): boolean {
  return name !== "lse" && name !== "dd";
}

/** Register chunks per row (dv), rows per invocation (R), keys per step (KB), chunk type (T). */
function dims(g: Gen): { dv: number; R: number; KB: number; T: string } {
  return { dv: g.dh / g.w, R: g.v.rows, KB: g.v.block, T: vt(g) };
}

/**
 * What every kernel starts with: the uniforms and its storage bindings
 * (`TENSORS`), the tiles of `streams` (tiled variants), `main`'s prologue and
 * the per-row registers named `rows`.
 */
function begin(g: Gen, streams: Stream[], rows: string[]): Src {
  const s = header(
    TENSORS[g.op].map(([name, access]) => [name, access, holdsRows(name) ? vt(g) : "f32"]),
    texRead(g),
  );
  s.push(0, ...tileDecls(g, streams));
  prologue(s, g);
  declareRows(s, g, ...rows);
  return s;
}

/** The key and value streams of the other side's rows (forward and dQ). */
function kvStreams(g: Gen): Stream[] {
  const { dv, T } = dims(g);
  if (texRead(g)) {
    // `at` is the texture row; `texCol` the texel column of the row's first chunk.
    return [
      { name: "k", arr: "qkvT", width: dv, type: T, at: (r) => `tb + ${r}`, texCol: "kOff" },
      { name: "v", arr: "qkvT", width: dv, type: T, at: (r) => `tb + ${r}`, texCol: "vOff" },
    ];
  }
  return [
    { name: "k", arr: "qkv", width: dv, type: T, at: (r) => `tok + ${r} * rs + kOff` },
    { name: "v", arr: "qkv", width: dv, type: T, at: (r) => `tok + ${r} * rs + vOff` },
  ];
}

/**
 * The two dot products of the backward, for every row r and step key i:
 * s{r}_{i} = Σ_c S{r}_c · s'{i}_c and e{r}_{i} = Σ_c E{r}_c · e'{i}_c, where
 * `sPair`/`ePair` are [row register S or E, stream, local name of its step
 * values]; each stream value is loaded once.
 */
function pairDots(
  s: Src,
  g: Gen,
  a: BlockAccess,
  ind: number,
  sPair: [string, string, string],
  ePair: [string, string, string],
): void {
  const { dv, R, KB } = dims(g);
  const [sr, ss, sl] = sPair;
  const [er, es, el] = ePair;
  for (let i = 0; i < KB; i++) {
    for (let r = 0; r < R; r++) s.push(ind, accDecl(g, `s${r}_${i}`), accDecl(g, `e${r}_${i}`));
    for (let c = 0; c < dv; c++) {
      s.push(
        ind,
        `let ${sl}${i}_${c} = ${a.get(ss, i, c)};`,
        `let ${el}${i}_${c} = ${a.get(es, i, c)};`,
      );
      for (let r = 0; r < R; r++) {
        s.push(
          ind,
          accAdd(g, `s${r}_${i}`, `${sr}${r}_${c}`, `${sl}${i}_${c}`),
          accAdd(g, `e${r}_${i}`, `${er}${r}_${c}`, `${el}${i}_${c}`),
        );
      }
    }
  }
}

/**
 * The backward's probabilities and score gradients of a step, from `pairDots`:
 * p{r}_{i} = exp(s{r}_{i} − lse(r, i)) (0 for keys past T) and
 * ds{r}_{i} = p{r}_{i} · (e{r}_{i} − D(r, i)).
 */
function probs(
  s: Src,
  g: Gen,
  a: BlockAccess,
  ind: number,
  lse: (r: number, i: number) => string,
  D: (r: number, i: number) => string,
): void {
  for (let r = 0; r < g.v.rows; r++) {
    for (let i = 0; i < g.v.block; i++) {
      const p = `exp(${accSum(g, `s${r}_${i}`)} - ${lse(r, i)})`;
      s.push(
        ind,
        i === 0
          ? `let p${r}_${i} = ${p};`
          : `let p${r}_${i} = select(${p}, 0.0, ${a.idx(i)} >= T);`,
        `let ds${r}_${i} = p${r}_${i} * (${accSum(g, `e${r}_${i}`)} - ${D(r, i)});`,
      );
    }
  }
}

/** `acc + Σ_i scal{r}_{i} · vec{i}_{c}` as one expression (one write per step). */
function fmaChain(g: Gen, acc: string, scal: string, vec: string, r: number, c: number): string {
  let e = acc;
  for (let i = 0; i < g.v.block; i++) {
    e = `fma(${splat(g, `${scal}${r}_${i}`)}, ${vec}${i}_${c}, ${e})`;
  }
  return e;
}

/** Forward: out = softmax(q kᵀ·scale) v per head, and lse. */
function forwardSource(g: Gen): string {
  const { dv, R, KB, T } = dims(g);
  const streams = kvStreams(g);
  const s = begin(g, streams, ["q", "o"]);
  for (let r = 0; r < R; r++) s.push(1, `var m${r} = ${NEG};`, `var l${r} = 0.0;`);
  rowLoop(
    s,
    g,
    texRead(g)
      ? Array.from(
        { length: dv },
        (_, c) => `let t${c} = textureLoad(qkvT, vec2u(qOff + ${c}u, tb + ld), 0) * prm.scale;`,
      )
      : loadChunks(g, "t", "qkv", "tok + ld * rs + qOff", " * prm.scale"),
    (r) => assignRow(g, "q", r, "t"),
  );
  const ind = g.v.kind === "rows" ? 2 : 3;
  blockLoop(s, g, streams, (a) => {
    // Scores key by key, so only `rows` accumulators are live at a time.
    for (let i = 0; i < KB; i++) {
      for (let r = 0; r < R; r++) s.push(ind, accDecl(g, `s${r}_${i}`));
      for (let c = 0; c < dv; c++) {
        s.push(ind, `let k${i}_${c} = ${a.get("k", i, c)};`);
        for (let r = 0; r < R; r++) {
          s.push(ind, accAdd(g, `s${r}_${i}`, `q${r}_${c}`, `k${i}_${c}`));
        }
      }
    }
    for (let r = 0; r < R; r++) {
      for (let i = 0; i < KB; i++) {
        // The first row of a step is always < T (steps start below T).
        const sum = accSum(g, `s${r}_${i}`);
        s.push(
          ind,
          i === 0
            ? `let t${r}_${i} = ${sum};`
            : `let t${r}_${i} = select(${sum}, ${NEG}, ${a.idx(i)} >= T);`,
        );
      }
      const mx = Array.from({ length: KB }, (_, i) => `t${r}_${i}`).reduce((x, y) =>
        `max(${x}, ${y})`
      );
      // Lazy rescaling: the reference max m moves only when a score exceeds it by more than
      // RESCALE_SLACK, so p = exp(s − m) ≤ e^8 (no overflow) and the O(Dh) rescale of o
      // runs a few times per row instead of once per step.
      s.push(ind, `let mx${r} = ${mx};`, `if (mx${r} > m${r} + ${RESCALE_SLACK}) {`);
      s.push(ind + 1, `let cr = exp(m${r} - mx${r});`, `l${r} = l${r} * cr;`);
      for (let c = 0; c < dv; c++) s.push(ind + 1, `o${r}_${c} = o${r}_${c} * cr;`);
      s.push(ind + 1, `m${r} = mx${r};`);
      s.push(ind, "}");
      for (let i = 0; i < KB; i++) s.push(ind, `let p${r}_${i} = exp(t${r}_${i} - m${r});`);
      const ps = Array.from({ length: KB }, (_, i) => `p${r}_${i}`).join(" + ");
      s.push(ind, `l${r} = l${r} + ${ps};`);
    }
    // One write of each o per step: llvmpipe masks every write to a loop-carried variable.
    for (let c = 0; c < dv; c++) {
      for (let i = 0; i < KB; i++) s.push(ind, `let v${i}_${c} = ${a.get("v", i, c)};`);
      for (let r = 0; r < R; r++) {
        s.push(ind, `o${r}_${c} = ${fmaChain(g, `o${r}_${c}`, "p", "v", r, c)};`);
      }
    }
  });
  s.push(1, "var inv: f32;", "var lr: f32;");
  for (let c = 0; c < dv; c++) s.push(1, `var w${c}: ${T};`);
  rowLoop(s, g, [], (r) => [
    `inv = 1.0 / l${r};`,
    `lr = m${r} + log(l${r});`,
    ...Array.from({ length: dv }, (_, c) => `w${c} = o${r}_${c};`),
  ], [
    "if (row < T) {",
    "  let oa = prm.outB + (b * T + row) * ms + qOff;",
    ...Array.from({ length: dv }, (_, c) => `  out[oa + ${c}u] = w${c} * inv;`),
    "  lse[prm.lseB + sbase + row] = lr;",
    "}",
  ]);
  s.push(0, "}");
  return s.toString();
}

/** Backward, query side: D = rowsum(dout∘out) and dQ = scale · Σ_j p(dp − D) k_j. */
function dqSource(g: Gen): string {
  const { dv, R, T } = dims(g);
  const streams = kvStreams(g);
  const s = begin(g, streams, ["q", "do", "g"]);
  for (let r = 0; r < R; r++) s.push(1, `var D${r}: f32;`, `var ls${r}: f32;`);
  const dsum: string[] = [accDecl(g, "dsum")];
  for (let c = 0; c < dv; c++) dsum.push(accAdd(g, "dsum", `u${c}`, `out[prm.outB + ra + ${c}u]`));
  rowLoop(
    s,
    g,
    [
      "let ra = (b * T + ld) * ms + qOff;",
      ...loadChunks(g, "t", "qkv", "tok + ld * rs + qOff", " * prm.scale"),
      ...loadChunks(g, "u", "dout", "prm.doutB + ra"),
      ...dsum,
      `let Dv = ${accSum(g, "dsum")};`,
      "if (row < T) { dd[prm.dB + sbase + row] = Dv; }",
      "let lv = lse[prm.lseB + sbase + ld];",
    ],
    (
      r,
    ) => [
      ...assignRow(g, "q", r, "t"),
      ...assignRow(g, "do", r, "u"),
      `D${r} = Dv;`,
      `ls${r} = lv;`,
    ],
  );
  const ind = g.v.kind === "rows" ? 2 : 3;
  blockLoop(s, g, streams, (a) => {
    pairDots(s, g, a, ind, ["q", "k", "k"], ["do", "v", "v"]);
    probs(s, g, a, ind, (r) => `ls${r}`, (r) => `D${r}`);
    for (let c = 0; c < dv; c++) {
      for (let r = 0; r < R; r++) {
        s.push(ind, `g${r}_${c} = ${fmaChain(g, `g${r}_${c}`, "ds", "k", r, c)};`);
      }
    }
  });
  for (let c = 0; c < dv; c++) s.push(1, `var w${c}: ${T};`);
  rowLoop(s, g, [], (r) => Array.from({ length: dv }, (_, c) => `w${c} = g${r}_${c};`), [
    "if (row < T) {",
    "  let ga = prm.dqkvB + (b * T + row) * rs + qOff;",
    ...Array.from({ length: dv }, (_, c) => `  dqkv[ga + ${c}u] = w${c} * prm.scale;`),
    "}",
  ]);
  s.push(0, "}");
  return s.toString();
}

/** Backward, key side: dV = Σ_i p dout_i and dK = scale · Σ_i p(dp − D_i) q_i. */
function dkvSource(g: Gen): string {
  const { dv, R, KB, T } = dims(g);
  const streams: Stream[] = [
    { name: "q", arr: "qkv", width: dv, type: T, at: (r) => `tok + ${r} * rs + qOff` },
    {
      name: "o",
      arr: "dout",
      width: dv,
      type: T,
      at: (r) => `prm.doutB + (b * T + ${r}) * ms + qOff`,
    },
    { name: "l", arr: "lse", width: 1, type: "f32", at: (r) => `prm.lseB + sbase + ${r}` },
    { name: "d", arr: "dd", width: 1, type: "f32", at: (r) => `prm.dB + sbase + ${r}` },
  ];
  const s = begin(g, streams, ["k", "v", "gk", "gv"]);
  // k is pre-scaled so q·k' is the scaled score; dK gets the scale at the end.
  rowLoop(s, g, [
    "let ka = tok + ld * rs;",
    ...loadChunks(g, "t", "qkv", "ka + kOff", " * prm.scale"),
    ...loadChunks(g, "u", "qkv", "ka + vOff"),
  ], (r) => [...assignRow(g, "k", r, "t"), ...assignRow(g, "v", r, "u")]);
  const ind = g.v.kind === "rows" ? 2 : 3;
  blockLoop(s, g, streams, (a) => {
    pairDots(s, g, a, ind, ["k", "q", "qq"], ["v", "o", "oo"]);
    for (let i = 0; i < KB; i++) {
      s.push(ind, `let li${i} = ${a.get("l", i)};`, `let di${i} = ${a.get("d", i)};`);
    }
    probs(s, g, a, ind, (_, i) => `li${i}`, (_, i) => `di${i}`);
    for (let c = 0; c < dv; c++) {
      for (let r = 0; r < R; r++) {
        s.push(
          ind,
          `gv${r}_${c} = ${fmaChain(g, `gv${r}_${c}`, "p", "oo", r, c)};`,
          `gk${r}_${c} = ${fmaChain(g, `gk${r}_${c}`, "ds", "qq", r, c)};`,
        );
      }
    }
  });
  for (let c = 0; c < dv; c++) s.push(1, `var wk${c}: ${T};`, `var wv${c}: ${T};`);
  rowLoop(s, g, [], (r) => [
    ...Array.from({ length: dv }, (_, c) => `wk${c} = gk${r}_${c};`),
    ...Array.from({ length: dv }, (_, c) => `wv${c} = gv${r}_${c};`),
  ], [
    "if (row < T) {",
    "  let ga = prm.dqkvB + (b * T + row) * rs;",
    ...Array.from({ length: dv }, (_, c) => `  dqkv[ga + kOff + ${c}u] = wk${c} * prm.scale;`),
    ...Array.from({ length: dv }, (_, c) => `  dqkv[ga + vOff + ${c}u] = wv${c};`),
    "}",
  ]);
  s.push(0, "}");
  return s.toString();
}

const SOURCES: Record<Op, (g: Gen) => string> = {
  fwd: forwardSource,
  dq: dqSource,
  dkv: dkvSource,
};
const NAMES: Record<Op, string> = {
  fwd: "attention_fwd",
  dq: "attention_bwd_dq",
  dkv: "attention_bwd_dkv",
};

/** Bytes of the uniform block (12 scalar fields). */
const UNIFORM_BYTES = 48;

const kernelCache = new Map<string, Kernel>();

/** Tile rows of a tiled variant that names none: about one row per invocation. */
function defaultTile(v: AttentionVariant): number {
  return v.block * Math.max(1, Math.floor(v.wg / v.block));
}

/** Workgroup-memory bytes a tiled kernel of `op` needs per tile row. */
function tileRowBytes(op: Op, dh: number): number {
  return op === "dkv" ? (2 * dh + 2) * 4 : 2 * dh * 4;
}

/** Fills in defaults and checks a variant against the adapter's limits. */
function resolveVariant(gpu: Gpu, op: Op, v: AttentionVariant, dh: number): Gen["v"] {
  const where = `attention variant ${JSON.stringify(v)}`;
  for (const k of ["wg", "rows", "block"] as const) {
    if (!Number.isInteger(v[k]) || v[k] < 1) {
      throw new RangeError(`${where}: '${k}' must be a positive integer`);
    }
  }
  if (
    v.wg > gpu.limits.maxComputeInvocationsPerWorkgroup ||
    v.wg > gpu.limits.maxComputeWorkgroupSizeX
  ) {
    throw new GpuLimitError(
      `${where}: workgroup of ${v.wg} exceeds this adapter's ${gpu.limits.maxComputeWorkgroupSizeX}`,
    );
  }
  let tile = 0;
  if (v.kind === "tiled") {
    tile = v.tile ?? defaultTile(v);
    if (tile % v.block !== 0) {
      throw new RangeError(`${where}: 'tile' must be a multiple of 'block'`);
    }
    const bytes = tile * tileRowBytes(op, dh);
    if (bytes > gpu.limits.maxComputeWorkgroupStorageSize) {
      throw new GpuLimitError(
        `${where}: a tile of ${tile} rows at head dim ${dh} needs ${bytes} B of workgroup ` +
          `memory, over this adapter's ${gpu.limits.maxComputeWorkgroupStorageSize} B; use a smaller tile`,
      );
    }
  } else if (v.kind !== "rows") {
    throw new RangeError(`${where}: 'kind' must be "rows" or "tiled"`);
  }
  return {
    kind: v.kind,
    wg: v.wg,
    rows: v.rows,
    block: v.block,
    tile,
    dot: v.dot ?? "vec",
    tex: (v.tex ?? false) && v.kind === "rows" && op === "fwd",
  };
}

function getKernel(op: Op, g: Gen): Kernel {
  const v = g.v;
  const tex = texRead(g);
  const key = `${v.kind}:wg${v.wg}:r${v.rows}:b${v.block}:t${v.tile}:${v.dot}:dh${g.dh}:w${g.w}` +
    (tex ? ":tex" : "");
  let k = kernelCache.get(op + key);
  if (!k) {
    k = kernel({
      name: NAMES[op],
      key,
      bindings: TENSORS[op].map(([name, access]) => tex && name === "qkv" ? "texture_f32" : access),
      uniformBytes: UNIFORM_BYTES,
      source: () => SOURCES[op](g),
    });
    kernelCache.set(op + key, k);
  }
  return k;
}

// ------------------------------------------------------------------ planning

/** Shape of one attention call. */
interface Dims {
  B: number;
  T: number;
  H: number;
  dh: number;
  scale: number;
}

function checkDims(op: string, qkv: GpuTensor, opts: AttentionOptions): Dims {
  const H = opts.heads;
  if (!Number.isInteger(H) || H < 1) {
    throw new RangeError(`${op}: opts.heads must be a positive integer, got ${H}`);
  }
  if (qkv.dtype !== "f32") throw new TypeError(`${op}: qkv must be f32, got ${qkv.dtype}`);
  if (qkv.shape.length !== 3) {
    throw new RangeError(`${op}: qkv must be [B, T, 3·H·Dh], got [${qkv.shape}]`);
  }
  const [B, T, C3] = qkv.shape;
  if (C3 === 0 || C3 % (3 * H) !== 0) {
    throw new RangeError(
      `${op}: qkv [${qkv.shape}] has last dimension ${C3}, not a positive multiple of ` +
        `3·heads = ${3 * H}; check opts.heads or the qkv Linear's output size`,
    );
  }
  const dh = C3 / (3 * H);
  const scale = opts.scale ?? 1 / Math.sqrt(dh);
  if (!Number.isFinite(scale)) {
    throw new RangeError(`${op}: opts.scale must be finite, got ${scale}`);
  }
  return { B, T, H, dh, scale };
}

function checkShape(op: string, name: string, t: GpuTensor, shape: number[]): void {
  const ok = t.dtype === "f32" && sameShape(t.shape, shape);
  if (!ok) {
    throw new RangeError(
      `${op}: ${name} must be f32 [${shape}] to match qkv, got ${t.dtype} [${t.shape}]`,
    );
  }
}

function bindingLimit(gpu: Gpu, opts: AttentionOptions): number {
  const max = gpu.limits.maxStorageBufferBindingSize;
  const o = opts.maxBindingBytes;
  if (o === undefined) return max;
  if (!(o > 0)) throw new RangeError(`attention: opts.maxBindingBytes must be positive, got ${o}`);
  return Math.min(o, max);
}

/** Uniform block of one chunk. */
function params(
  d: Dims,
  nblk: number,
  nwg: number,
  row0: number,
  bases: Partial<Record<string, number>>,
): Uint8Array {
  return new Uniforms(UNIFORM_BYTES)
    .u32(d.T).u32(d.H).u32(nblk).u32(nwg)
    .u32(bases.qkv ?? 0).u32(bases.out ?? 0).u32(bases.dout ?? 0)
    .u32(bases.lse ?? 0).u32(bases.dd ?? 0).u32(bases.dqkv ?? 0)
    .f32(d.scale).u32(row0).bytes;
}

/**
 * Dispatches kernel `op` over the batch in chunks, binding `tensors` (every
 * one `TENSORS[op]` names). Indices inside the kernel are relative to a
 * binding, so they stay far below 2³² whatever the batch.
 */
function dispatchChunked(
  gpu: Gpu,
  op: Op,
  d: Dims,
  opts: AttentionOptions,
  given: Partial<Record<TensorName, GpuTensor>>,
): void {
  const heads = d.T * d.H * d.dh;
  const per: Record<TensorName, number> = {
    qkv: 3 * heads,
    dqkv: 3 * heads,
    out: heads,
    dout: heads,
    lse: d.H * d.T,
    dd: d.H * d.T,
  };
  // [name, tensor, elements per batch element, read as vectors (its base in vector units)]
  const tensors = TENSORS[op].map(([name]) =>
    [name, given[name]!, per[name], holdsRows(name)] as const
  );
  const v = resolveVariant(gpu, op, variantFor(gpu, op, d, opts), d.dh);
  // Batch elements bind through windows: spans may start anywhere.
  const chunks = splitSpans(gpu.limits, {
    op: NAMES[op],
    item: "batch element",
    count: d.B,
    itemBytes: tensors.map((t) => t[2] * 4),
    maxBytes: bindingLimit(gpu, opts),
    starts: "window",
    fix: "use fewer tokens or heads per call",
  });
  const passes = rowPasses(d.T, v);
  // A texture-reading forward copies each chunk's qkv rows into a texture: the row pitch must
  // be one WebGPU copies (a multiple of 256 bytes) and the chunk's rows fit a texture.
  const maxTex = gpu.limits.maxTextureDimension2D;
  const pitch = 3 * d.H * d.dh * 4;
  const texOk = v.tex && d.dh % 4 === 0 && pitch % 256 === 0 && pitch / 16 <= maxTex &&
    d.T <= maxTex;
  const spans = texOk
    ? chunks.flatMap((c) =>
      Array.from({ length: Math.ceil(c.count / Math.floor(maxTex / d.T)) }, (_, i) => {
        const per = Math.floor(maxTex / d.T);
        return { start: c.start + i * per, count: Math.min(per, c.count - i * per) };
      })
    )
    : chunks;
  for (const { start: b0, count: nb } of spans) {
    const bound = tensors.map(([name, t, per, vec]) => {
      const w = bindWindow(gpu, t, b0 * per, (b0 + nb) * per);
      return { name, vec, view: w.view, base: w.shift };
    });
    // vec4 access needs Dh and every vector base to be multiples of 4 elements.
    const w: 1 | 4 = d.dh % 4 === 0 && bound.every((x) => !x.vec || x.base % 4 === 0) ? 4 : 1;
    const bases: Record<string, number> = {};
    for (const x of bound) bases[x.name] = x.vec ? x.base / w : x.base;
    const qkv = given.qkv!;
    const start = qkv.offset + b0 * per.qkv * 4;
    const tex = texOk && w === 4 && start % 16 === 0
      ? gpu.texture(pitch / 16, nb * d.T, "rgba32float", "attention qkv")
      : null;
    if (tex) {
      gpu.copyToTexture(
        { buffer: qkv.buffer, offset: start, size: nb * per.qkv * 4 },
        pitch,
        tex,
        pitch / 16,
        nb * d.T,
      );
    }
    for (const pass of passes) {
      const nwg = nb * d.H * pass.nblk;
      const pv = tex ? pass.v : { ...pass.v, tex: false };
      gpu.dispatch(
        getKernel(op, { op, v: pv, dh: d.dh, w }),
        bound.map((x, i) => (tex && i === 0 ? tex : x.view)),
        grid(nwg, gpu.limits.maxComputeWorkgroupsPerDimension),
        params(d, pass.nblk, nwg, pass.row0, bases),
      );
    }
    gpu.releaseTexture(tex);
  }
}

/**
 * Splits the T rows of each (batch, head) into full blocks of wg·rows rows and
 * a tail. A tail that fits one workgroup at one row per invocation runs with
 * rows = 1, so a large `rows` does not pay for a mostly empty last block
 * (T = 257 = 2·128 + 1); a larger tail runs as one more block of the main
 * variant. At most two kernels per op, which bounds compile time.
 */
function rowPasses(T: number, v: Gen["v"]): { v: Gen["v"]; row0: number; nblk: number }[] {
  const per = v.wg * v.rows;
  const full = Math.floor(T / per);
  const rem = T - full * per;
  if (rem === 0) return [{ v, row0: 0, nblk: full }];
  if (rem > v.wg || v.rows === 1) return [{ v, row0: 0, nblk: full + 1 }];
  const tail = { v: { ...v, rows: 1 }, row0: full * per, nblk: 1 };
  return full > 0 ? [{ v, row0: 0, nblk: full }, tail] : [tail];
}

// ------------------------------------------------------------------ dispatch

/**
 * Multi-head softmax attention on DINOv2's packed qkv [B, T, 3·H·Dh]:
 * per head, softmax(q kᵀ · scale) v, no mask, no dropout. Returns the heads
 * merged, out [B, T, H·Dh] (`out[b,t,h·Dh+d]`), and lse [B, H, T], the
 * log-sum-exp of each query's scaled scores (kept for `attentionBackward`).
 * The caller owns both.
 */
export function attention(
  gpu: Gpu,
  qkv: GpuTensor,
  opts: AttentionOptions,
): { out: GpuTensor; lse: GpuTensor } {
  const d = checkDims("attention", qkv, opts);
  const out = gpu.empty([d.B, d.T, d.H * d.dh], "f32", "attention.out");
  const lse = gpu.empty([d.B, d.H, d.T], "f32", "attention.lse");
  if (d.B * d.T === 0) return { out, lse };
  dispatchChunked(gpu, "fwd", d, opts, { qkv, out, lse });
  return { out, lse };
}

/**
 * Gradient of `attention` with respect to qkv, given the output gradient
 * dout [B, T, H·Dh] and the forward's qkv, out and lse. Returns a fresh
 * dqkv [B, T, 3·H·Dh] the caller owns. Deterministic (no atomics).
 */
export function attentionBackward(
  gpu: Gpu,
  dout: GpuTensor,
  qkv: GpuTensor,
  out: GpuTensor,
  lse: GpuTensor,
  opts: AttentionOptions,
): GpuTensor {
  const op = "attentionBackward";
  const d = checkDims(op, qkv, opts);
  const row = d.H * d.dh;
  checkShape(op, "dout", dout, [d.B, d.T, row]);
  checkShape(op, "out", out, [d.B, d.T, row]);
  checkShape(op, "lse", lse, [d.B, d.H, d.T]);
  const dqkv = gpu.empty([d.B, d.T, 3 * row], "f32", "attention.dqkv");
  if (d.B * d.T === 0) return dqkv;
  const dd = gpu.empty([d.B, d.H, d.T], "f32", "attention.D");
  // dQ first: it also writes D, which the dK/dV kernel reads.
  dispatchChunked(gpu, "dq", d, opts, { qkv, out, dout, lse, dd, dqkv });
  dispatchChunked(gpu, "dkv", d, opts, { qkv, dout, lse, dd, dqkv });
  gpu.release(dd);
  return dqkv;
}

// ------------------------------------------------------------------- tuning

const TUNE_OPS: Record<Op, string> = {
  fwd: "attention_fwd",
  dq: "attention_dq",
  dkv: "attention_dkv",
};

/** Cache id of a variant: "rows.wg8.r16.b2.scalar", "tiled.wg64.r1.b4.t32.vec". */
export function attentionVariantId(v: AttentionVariant): string {
  const tile = v.kind === "tiled" ? `.t${v.tile ?? defaultTile(v)}` : "";
  return `${v.kind}.wg${v.wg}.r${v.rows}.b${v.block}${tile}.${v.dot ?? "vec"}` +
    (v.tex ? ".tex" : "");
}

/** Inverse of `attentionVariantId`; null for ids this version does not know. */
export function parseAttentionVariant(id: string): AttentionVariant | null {
  const m = /^(rows|tiled)\.wg(\d+)\.r(\d+)\.b(\d+)(?:\.t(\d+))?\.(vec|scalar)(\.tex)?$/.exec(id);
  if (!m || (m[1] === "tiled") !== (m[5] !== undefined)) return null;
  const v: AttentionVariant = {
    kind: m[1] as AttentionVariant["kind"],
    wg: Number(m[2]),
    rows: Number(m[3]),
    block: Number(m[4]),
    dot: m[6] as "vec" | "scalar",
  };
  if (m[5] !== undefined) v.tile = Number(m[5]);
  if (m[7] !== undefined) v.tex = true;
  return v;
}

const codec: CandidateCodec<AttentionVariant> = {
  id: attentionVariantId,
  parse: parseAttentionVariant,
};

const tunersByCache = new WeakMap<AutotuneCache, Record<Op, Autotuner<AttentionVariant>>>();
let sharedTuners: Record<Op, Autotuner<AttentionVariant>> | null = null;

/** The three kernels' tuners on `cache` (default: the process-wide cache file). */
function tuners(cache?: AutotuneCache): Record<Op, Autotuner<AttentionVariant>> {
  const make = (c?: AutotuneCache) => ({
    fwd: newAutotuner(TUNE_OPS.fwd, codec, c),
    dq: newAutotuner(TUNE_OPS.dq, codec, c),
    dkv: newAutotuner(TUNE_OPS.dkv, codec, c),
  });
  if (!cache) return sharedTuners ??= make();
  let t = tunersByCache.get(cache);
  if (!t) tunersByCache.set(cache, t = make(cache));
  return t;
}

/** Shape class of a tuned choice: head dim and tokens rounded up to a power of two. */
function shapeKey(dh: number, T: number): string {
  return `dh${dh}.t${2 ** Math.ceil(Math.log2(Math.max(16, Math.min(T, 8192))))}`;
}

/**
 * The variant a kernel runs: the forced one, else the tuned choice for the
 * shape class, else the latest tuning at this head dim, else the default.
 * Never measures.
 */
function variantFor(gpu: Gpu, op: Op, d: Dims, opts: AttentionOptions): AttentionVariant {
  if (opts.variant) return opts.variant;
  const t = tuners(opts.tuneCache)[op];
  const name = gpu.adapter.name;
  const tag = attentionTag(gpu);
  return t.lookup(name, shapeKey(d.dh, d.T), tag) ?? t.lookup(name, `dh${d.dh}`, tag) ??
    defaultAttentionPlan(gpu)[op === "fwd" ? "forward" : op];
}

/** The plan that runs where nothing is tuned: the adapter class's shipped one (`defaults.ts`). */
export function defaultAttentionPlan(gpu: Pick<Gpu, "adapter">): AttentionPlan {
  return classDefaults(gpu).attention.plan;
}

/** Tag of tuning records made from the class's candidates (older records do not count). */
function attentionTag(gpu: Pick<Gpu, "adapter">): string {
  const a = classDefaults(gpu).attention;
  const p = a.plan;
  return candidateSetTag(gpu, [p.forward, p.dq, p.dkv, ...a.candidates].map(attentionVariantId));
}

/** Cold compile time of a variant of one kernel on this class (ms, `defaults.ts`). */
export function attentionCompileMs(
  gpu: Pick<Gpu, "adapter">,
  op: AttentionOp,
  v: AttentionVariant,
): number {
  const c = classDefaults(gpu).attention.compile;
  return op === "fwd" ? c.fwdPerRow * v.rows : c.bwdPerRow2 * v.rows * v.rows;
}

/** The plan `attention` runs for a head dim and token count on this adapter. */
export function attentionPlan(
  gpu: Gpu,
  headDim: number,
  tokens = 257,
  opts: { tuneCache?: AutotuneCache } = {},
): AttentionPlan {
  const d: Dims = { B: 1, T: tokens, H: 1, dh: headDim, scale: 1 };
  const o: AttentionOptions = { heads: 1, tuneCache: opts.tuneCache };
  return {
    forward: variantFor(gpu, "fwd", d, o),
    dq: variantFor(gpu, "dq", d, o),
    dkv: variantFor(gpu, "dkv", d, o),
  };
}

/**
 * Candidate variants of one kernel that fit this adapter's limits. The
 * register-blocked ones span rows per invocation (on llvmpipe each storage
 * load is a loop over the SIMD lanes, so rows amortise loads; see the
 * benchmark notes); the tiled ones are the shapes that pay on real GPUs.
 */
export function attentionCandidates(
  gpu: Gpu,
  op: AttentionOp,
  headDim: number,
): AttentionVariant[] {
  const ids = new Set(classDefaults(gpu).attention.candidates.map(attentionVariantId));
  // A forward whose texture twin is a candidate cannot win against it: not measured.
  const twin = (v: AttentionVariant) =>
    op === "fwd" && !v.tex && ids.has(attentionVariantId({ ...v, tex: true }));
  return CANDIDATES.filter((c) =>
    c.ops.includes(op) && ids.has(attentionVariantId(c.v)) && !twin(c.v)
  ).map((c) => c.v).filter((v) => {
    try {
      resolveVariant(gpu, op, v, headDim);
      return true;
    } catch {
      return false;
    }
  });
}

/** What `tuneAttention` decided for one kernel. */
export interface AttentionTuning {
  op: AttentionOp;
  key: string;
  choice: AttentionVariant;
  record: TuneRecord;
  cached: boolean;
}

/**
 * Measures the candidates of each kernel (forward, dQ, dK/dV: each timed
 * alone) on a sample shape with the shared autotuner, which records the
 * fastest per adapter and shape class (and, as the fallback for other token
 * counts, per head dim) in its cache file. Classes already tuned are not
 * measured again unless `force`. Note that on llvmpipe the first compile of
 * a large register-blocked candidate takes tens of seconds (Mesa caches it
 * on disk afterwards).
 */
export async function tuneAttention(
  gpu: Gpu,
  shape: { batch?: number; tokens: number; heads: number; headDim: number },
  opts: {
    candidates?: AttentionVariant[];
    iters?: number;
    force?: boolean;
    tuneCache?: AutotuneCache;
    /** Kernels to tune (default all three; inference needs only "fwd"). */
    ops?: readonly AttentionOp[];
    /** Skip kernels (and candidates) whose predicted compile + measuring overruns it. */
    budget?: TuneBudget;
    /** Progress lines: what is tuned, how many candidates, the ETA. */
    log?: (line: string) => void;
    step?: { done: number; total: number };
  } = {},
): Promise<{ plan: AttentionPlan; tunings: AttentionTuning[] }> {
  // Batch 4 by default: enough workgroups that a CPU adapter's threads share large-`rows`
  // variants evenly, as they do at training batch sizes.
  const B = shape.batch ?? 4;
  const { tokens: T, heads: H, headDim: dh } = shape;
  const ops = opts.ops ?? ["fwd", "dq", "dkv"];
  const budget = opts.budget ?? new TuneBudget(Infinity);
  const iters = opts.iters ?? 5;
  const all = tuners(opts.tuneCache);
  const key = shapeKey(dh, T);
  const tag = attentionTag(gpu);
  const tunings: AttentionTuning[] = [];
  const step = opts.step ?? { done: 0, total: ops.length };
  // Predicted run time of one call: the FLOPs (QKᵀ and PV; the backward ~2.5× that) at a
  // third of the class's rough peak. Only for ETAs; the budget's calibration rescales it.
  const fwdFlops = 4 * B * H * T * T * dh;
  const rawMs = (op: AttentionOp) =>
    (op === "fwd" ? 1 : 1.25) * fwdFlops / (classDefaults(gpu).peakGflops * 1e6 / 3);
  const runMs = (op: AttentionOp) => budget.calibrated(rawMs(op));
  let tensors:
    | { qkv: GpuTensor; out: GpuTensor; lse: GpuTensor; dd: GpuTensor; dqkv: GpuTensor }
    | null = null;
  try {
    for (const op of ops) {
      step.done++;
      let candidates = opts.candidates ?? attentionCandidates(gpu, op, dh);
      const r0 = all[op].cache.get(gpu.adapter.name, all[op].op, key);
      const cached = !opts.force && !!r0 && r0.tag === tag &&
        candidates.every((c) => attentionVariantId(c) in r0.timings);
      if (!cached && !opts.candidates) {
        // A candidate whose compile alone overruns the budget cannot be measured in it.
        const fits = candidates.filter((v) => budget.fits(attentionCompileMs(gpu, op, v)));
        if (fits.length < candidates.length) {
          opts.log?.(
            `autotune attention_${op}: ${candidates.length - fits.length} candidate(s) left out ` +
              `(their compile alone overruns the ${fmtSeconds(budget.remainingMs())} left)`,
          );
        }
        candidates = fits;
      }
      if (candidates.length < 2) continue;
      const eta = candidates.reduce(
        (t, v) => t + attentionCompileMs(gpu, op, v) + (iters + 1) * runMs(op),
        0,
      );
      if (!cached && !budget.fits(eta)) {
        opts.log?.(
          `autotune [${step.done}/${step.total}] attention_${op} ${key}: left for a later run ` +
            `(ETA ${fmtSeconds(eta)}, ${fmtSeconds(budget.remainingMs())} of the budget left)`,
        );
        continue;
      }
      if (!cached) {
        opts.log?.(
          `autotune [${step.done}/${step.total}] attention_${op} ${key}: ${candidates.length} ` +
            `candidates, ETA ${fmtSeconds(eta)}`,
        );
      }
      if (!tensors) {
        const n = B * T * 3 * H * dh;
        const data = new Float32Array(n);
        for (let i = 0; i < n; i++) data[i] = Math.sin(i * 0.7548776662) * 0.5; // deterministic
        const qkv = gpu.tensor(data, [B, T, 3 * H * dh]);
        const r = attention(gpu, qkv, { heads: H, tuneCache: opts.tuneCache });
        tensors = {
          qkv,
          out: r.out,
          lse: r.lse,
          dd: gpu.empty([B, H, T]),
          dqkv: gpu.empty([B, T, 3 * H * dh]),
        };
      }
      const t = tensors;
      const d = checkDims("tuneAttention", t.qkv, { heads: H });
      const r = await all[op].tune(
        gpu,
        key,
        candidates,
        (variant) => {
          const o: AttentionOptions = { heads: H, variant };
          // dout is any [B, T, H·Dh] tensor here: out stands in for it.
          return () => dispatchChunked(gpu, op, d, o, { ...t, dout: t.out });
        },
        { iters, force: opts.force, tag },
      );
      if (!r.cached) {
        for (const ms of Object.values(r.record.timings)) if (ms) budget.observe(rawMs(op), ms);
      }
      all[op].record(gpu.adapter.name, `dh${dh}`, r.record);
      tunings.push({ op, key, choice: r.choice, record: r.record, cached: r.cached });
    }
  } finally {
    if (tensors) gpu.release(tensors.qkv, tensors.out, tensors.lse, tensors.dd, tensors.dqkv);
  }
  return { plan: attentionPlan(gpu, dh, T, { tuneCache: opts.tuneCache }), tunings };
}

// --------------------------------------------------------------- references

function refDims(op: string, n: number, B: number, T: number, heads: number, dh: number) {
  if (n !== B * T * 3 * heads * dh) {
    throw new RangeError(
      `${op}: qkv has ${n} elements, expected B·T·3·heads·dh = ${B}·${T}·3·${heads}·${dh}`,
    );
  }
}

/**
 * Row i of head h of image b (float64): p[j] = exp(s_j − m) for the scaled
 * scores s_j = scale · q_i·k_j, with m = max_j s_j and l = Σ_j p[j].
 */
function scoreRow(
  qkv: ArrayLike<number>,
  T: number,
  H: number,
  dh: number,
  scale: number,
  b: number,
  h: number,
  i: number,
  p: Float64Array,
): { m: number; l: number } {
  const rs = 3 * H * dh;
  const qa = (b * T + i) * rs + h * dh;
  let m = -Infinity;
  for (let j = 0; j < T; j++) {
    const ka = (b * T + j) * rs + (H + h) * dh;
    let acc = 0;
    for (let c = 0; c < dh; c++) acc += qkv[qa + c] * qkv[ka + c];
    p[j] = acc * scale;
    if (p[j] > m) m = p[j];
  }
  let l = 0;
  for (let j = 0; j < T; j++) l += p[j] = Math.exp(p[j] - m);
  return { m, l };
}

/**
 * Float64 forward: out [B, T, H·Dh] and lse [B, H, T] as Float64Arrays, on
 * any numeric input (finite-difference checks perturb float64 inputs).
 */
export function attentionRef64(
  qkv: ArrayLike<number>,
  B: number,
  T: number,
  heads: number,
  dh: number,
  scale = 1 / Math.sqrt(dh),
): { out: Float64Array; lse: Float64Array } {
  refDims("attentionRef", qkv.length, B, T, heads, dh);
  const H = heads;
  const rs = 3 * H * dh;
  const out = new Float64Array(B * T * H * dh);
  const lse = new Float64Array(B * H * T);
  const s = new Float64Array(T);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < T; i++) {
        const { m, l } = scoreRow(qkv, T, H, dh, scale, b, h, i, s);
        const oa = (b * T + i) * H * dh + h * dh;
        for (let j = 0; j < T; j++) {
          const va = (b * T + j) * rs + (2 * H + h) * dh;
          const p = s[j] / l;
          for (let c = 0; c < dh; c++) out[oa + c] += p * qkv[va + c];
        }
        lse[(b * H + h) * T + i] = m + Math.log(l);
      }
    }
  }
  return { out, lse };
}

/** CPU forward reference (float64 accumulation): out [B, T, H·Dh] and lse [B, H, T]. */
export function attentionRef(
  qkv: Float32Array,
  B: number,
  T: number,
  heads: number,
  dh: number,
  scale = 1 / Math.sqrt(dh),
): { out: Float32Array; lse: Float32Array } {
  const r = attentionRef64(qkv, B, T, heads, dh, scale);
  return { out: Float32Array.from(r.out), lse: Float32Array.from(r.lse) };
}

/**
 * CPU backward reference (float64 accumulation): dqkv [B, T, 3·H·Dh] of
 * Σ dout ∘ attention(qkv), by the same equations as the kernels:
 * P = softmax(S), dV = Pᵀ dO, dP = dO Vᵀ, dS = P ∘ (dP − rowsum(dO ∘ O)),
 * dQ = scale · dS K, dK = scale · dSᵀ Q.
 */
export function attentionBackwardRef(
  dout: ArrayLike<number>,
  qkv: ArrayLike<number>,
  B: number,
  T: number,
  heads: number,
  dh: number,
  scale = 1 / Math.sqrt(dh),
): Float32Array {
  refDims("attentionBackwardRef", qkv.length, B, T, heads, dh);
  const H = heads;
  if (dout.length !== B * T * H * dh) {
    throw new RangeError(
      `attentionBackwardRef: dout has ${dout.length} elements, expected B·T·heads·dh = ${
        B * T * H * dh
      }`,
    );
  }
  const rs = 3 * H * dh;
  const { out } = attentionRef64(qkv, B, T, heads, dh, scale);
  const g = new Float64Array(qkv.length);
  const p = new Float64Array(T);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < T; i++) {
        const qa = (b * T + i) * rs + h * dh;
        const oa = (b * T + i) * H * dh + h * dh;
        const { l } = scoreRow(qkv, T, H, dh, scale, b, h, i, p);
        let D = 0;
        for (let c = 0; c < dh; c++) D += dout[oa + c] * out[oa + c];
        for (let j = 0; j < T; j++) {
          const ka = (b * T + j) * rs + (H + h) * dh;
          const va = ka + H * dh;
          const pj = p[j] / l;
          let dp = 0;
          for (let c = 0; c < dh; c++) dp += dout[oa + c] * qkv[va + c];
          const ds = pj * (dp - D) * scale;
          for (let c = 0; c < dh; c++) {
            g[va + c] += pj * dout[oa + c];
            g[qa + c] += ds * qkv[ka + c];
            g[ka + c] += ds * qkv[qa + c];
          }
        }
      }
    }
  }
  return Float32Array.from(g);
}

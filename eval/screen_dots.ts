/**
 * The screen of the exact kNN search (eval/knn_screened.ts): keys of every
 * (query, reference row) pair from integer codes in WebAssembly SIMD, with a
 * proven bound on each key's distance from the float64 search's, keeping
 * only the pairs whose key passes the query's threshold. Every decision the
 * bounds leave open is taken again in float64 by the caller.
 *
 * Codes. Rows and queries are first centred on the reference's column
 * means μ (ỹ = y − μ, x̃ = x − μ): distances do not change, and the keys
 * ‖ỹ‖² − 2x̃·ỹ differ from the float64 search's ‖y‖² − 2x·y by a constant
 * per query (‖x‖² − ‖x̃‖², which no comparison between rows sees) and by
 * roundings, while codes of centred values are finer where the embeddings
 * share a large common offset. Reference column j gets a scale
 * c_j = max_t |ỹ_tj| / M_y and codes ŷ_tj = round(ỹ_tj / c_j); a query
 * becomes x'_j = x̃_j·c_j (the column scales move into the query), scale
 * s = max_j |x'_j| / M_x and codes x̂_j = round(x'_j / s). Then
 * x̃·ỹ ≈ s·(x̂·ŷ), where x̂·ŷ is an exact integer. Per-column scales keep a
 * few wide columns (large activations in some embedding dimensions) from
 * coarsening all the others.
 *
 * Bound (real arithmetic on the float64 values): with h = ½ + 10⁻⁹ (rounding
 * to the nearest code, plus the scaling's roundings, ≤ 2u·M),
 *   |x̃·ỹ − s·(x̂·ŷ)| ≤ s·h·‖ŷ‖₁ + (h + 1.01·u·M_x)·Σ_j |x̃_j|·c_j,
 * from x̃·ỹ − s·x̂·ŷ = Σ e'_j ŷ_j − Σ δ_j x'_j ŷ_j + Σ x̃_j e_j (e' and e the
 * codes' rounding errors, |e'_j| ≤ s·h and |e_j| ≤ c_j·h; δ the rounding of
 * x̃_j·c_j, ≤ u = 2⁻⁵³ relative). `loadQueries` gives it per query with
 * max_t ‖ŷ_t‖₁ for ‖ŷ‖₁ (one bound for all rows); the caller adds the
 * roundings of centring and of both keys (eval/knn_screened.ts).
 *
 * Two levels, as a tile of 4 queries × 2 rows walks the reference:
 * 1. 8-bit codes (M_x = 127, M_y = 63, stored as ŷ + 64 ∈ [1, 127]) with
 *    `i32x4.relaxed_dot_i8x16_i7x16_add_s`: 16 multiply-adds per
 *    instruction (one VNNI `vpdpbusd` where the CPU has it). Its operand b
 *    has no top bit set and |a·b + a'·b'| ≤ 2·127·127 < 2¹⁵, so every
 *    lowering gives the same exact integer. Keys k₈ = ‖ỹ‖² + off − coef₈·raw
 *    (off = coef₈·64·Σx̂ removes the +64). Coarse: only pairs with
 *    k₈ ≤ thr₈ go on, collected without branches.
 * 2. 16-bit codes (M = ⌊√((2³¹ − 1)/d)⌋ ≤ 32767, so every sum fits int32)
 *    with `i32x4.dot_i16x8_s` (8 multiply-adds per instruction) for those
 *    pairs, two at a time: k₁₆ = ‖ỹ‖² − coef₁₆·x̂·ŷ; pairs with k₁₆ ≤ thr₁₆
 *    are reported.
 * Level 1 does the bulk with half the instructions of level 2 and lets
 * through a few percent of the pairs (~5 % at 384-d). On the development
 * machine's EPYC (Zen 5, where 128-bit `pmaddwd` issues about as fast per
 * multiply-add as VNNI) either tile takes ~4–6 ns per pair of 384-d rows and
 * core, against ~20 for float32 f32x4, and the whole search is 10–25 %
 * shorter with both levels than with `levels: 1`. Where relaxed SIMD is
 * missing, level 2 runs on every pair (`levels: 1`). Without AVX-VNNI, V8
 * lowers the relaxed dot to three instructions: the search then took ~25 %
 * longer with both levels than with one (measured here with VNNI disabled).
 *
 * Kernel: 8 int32x4 accumulators (4 queries × 2 rows) plus 6 loaded vectors
 * fit the 16 SSE registers V8 allocates from (wider tiles spill); each row's
 * stride is baked into the module as load offsets (one module per width,
 * compiled once per thread). Rows are padded with zero codes to a multiple
 * of 16 (level 1) or 8 (level 2) codes, queries to a multiple of 4 rows and
 * the reference to a multiple of 2 (plus at least one padding row, whose
 * norm is NaN: it never passes). The module is assembled here from its
 * instructions (no toolchain; the opcodes are those of the WebAssembly core,
 * SIMD and relaxed-SIMD specifications).
 */

/** Unsigned LEB128. */
function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n) b |= 0x80;
    out.push(b);
  } while (n);
  return out;
}

/** Signed LEB128. */
function sleb(n: number): number[] {
  const out: number[] = [];
  for (;;) {
    const b = n & 0x7f;
    n >>= 7;
    if ((n === 0 && !(b & 0x40)) || (n === -1 && (b & 0x40))) {
      out.push(b);
      return out;
    }
    out.push(b | 0x80);
  }
}

const name = (s: string) => [...uleb(s.length), ...new TextEncoder().encode(s)];
const section = (id: number, body: number[]) => [id, ...uleb(body.length), ...body];
const vector = (items: number[][]) => [...uleb(items.length), ...items.flat()];

// Opcodes (WebAssembly core 1.0, the fixed-width SIMD and the relaxed-SIMD extensions).
const I32 = 0x7f, F64 = 0x7c, V128 = 0x7b;
const get = (i: number) => [0x20, ...uleb(i)];
const set = (i: number) => [0x21, ...uleb(i)];
const i32 = (v: number) => [0x41, ...sleb(v)];
const ADD = [0x6a], SUB = [0x6b], MUL = [0x6c], AND = [0x71], SHL = [0x74], SHR_U = [0x76];
const GE_U = [0x4f];
const F64_LE = [0x65], F64_SUB = [0xa1], F64_MUL = [0xa2], F64_CONVERT_I32_S = [0xb7];
const IF = [0x04, 0x40], END = [0x0b];
const F64_LOAD = (off: number) => [0x2b, 0x03, ...uleb(off)];
const F64_STORE = (off: number) => [0x39, 0x03, ...uleb(off)];
const I32_STORE = (off: number) => [0x36, 0x02, ...uleb(off)];
const I32_LOAD = (off: number) => [0x28, 0x02, ...uleb(off)];
const simd = (op: number) => [0xfd, ...uleb(op)];
/** v128.load, align 2^4, constant byte offset `off`. */
const V128_LOAD = (off: number) => [...simd(0x00), 0x04, ...uleb(off)];
const V128_ZERO = [...simd(0x0c), ...new Array(16).fill(0)]; // v128.const 0
/** i8x16.shuffle picking the int32 lanes `l` (0–3 first operand, 4–7 second). */
const SHUFFLE32 = (l: number[]) => [
  ...simd(0x0d),
  ...l.flatMap((k) => [0, 1, 2, 3].map((b) => 4 * k + b)),
];
const I32X4_ADD = simd(0xae), I32X4_DOT_I16X8_S = simd(0xba);
const I32X4_RELAXED_DOT_I8X16_I7X16_ADD_S = simd(0x113);
const I32X4_LANE = (l: number) => [...simd(0x1b), l]; // i32x4.extract_lane
const F64X2_SPLAT = simd(0x14), F64X2_CONVERT_LOW_I32X4_S = simd(0xfe);
const F64X2_ADD = simd(0xf0), F64X2_SUB = simd(0xf1), F64X2_MUL = simd(0xf2);
const F64X2_LE = simd(0x4b), V128_OR = simd(0x50), V128_ANY_TRUE = simd(0x53);
const F64X2_LANE = (l: number) => [...simd(0x21), l]; // f64x2.extract_lane
/** `for (; local < limit; ) { body }` as block/loop with the exit test first. */
const loop = (local: number, limit: number, body: number[]) => [
  0x02,
  0x40,
  0x03,
  0x40,
  ...get(local),
  ...get(limit),
  ...GE_U,
  0x0d,
  1, // br_if to the block's end
  ...body,
  0x0c,
  0, // br to the loop's start
  0x0b,
  0x0b,
];

const QI = 4, RJ = 2;

/** Steps of 16 bytes per pass of a row loop: the whole row when short, else a divisor ≤ 16. */
function unrollOf(steps: number): number {
  if (steps <= 64) return steps;
  for (let u = 16; u > 1; u--) if (steps % u === 0) return u;
  return 1;
}

/**
 * `scan(x8, y8, x16, y16, yn, coef16, thr16, coef8, off8, thr8, list, pending,
 * nq, ny, pad) → count`, all byte offsets but the counts: level-1 codes X₈
 * [nq, rb8] and Y₈ [ny, rb8], level-2 codes X₁₆ [nq, rb16] and Y₁₆
 * [ny, rb16], row norms yn [ny] (f64), per-query f64 arrays [nq] and room
 * for nq·ny pairs of (i32, i32) at `pending`; nq a multiple of 4, ny of 2;
 * `pad` a row (relative to y) whose norm is NaN. Every pair (q, t) whose
 * keys pass both levels (module comment; with `levels` 1 only level 2, on
 * every pair) is appended to `list` as 16 bytes (i32 q, i32 t, f64 k₁₆), by
 * tiles of 4 queries, then rows, then queries (so each query's rows come in
 * order). With 2 levels, the pairs passing level 1 are collected first
 * (branch-free) and their 16-bit dots then taken two at a time.
 */
function assemble(rb16: number, rb8: number, levels: 1 | 2): Uint8Array {
  const nParams = 15;
  const [X8, Y8, X16, Y16, YN, COEF16, THR16, COEF8, OFF8, THR8, LIST, PENDING, NQ, NY, PAD] = [
    ...Array(nParams).keys(),
  ];
  // Locals, numbered after the params: i32s, then v128s, then f64s.
  let next = nParams;
  const take = (n: number) => Array.from({ length: n }, () => next++);
  const [Q, J, PX, PY, PEND, LP, QO, PP, E] = take(9);
  const [QA, TA, QB, TB, XA, YA, XB, YB] = take(8);
  const nI32 = next - nParams;
  const ACC = take(QI * RJ), YV = take(RJ), XV = take(QI);
  const [SUMS, NORM, K01, K23, H0, H1, ACCA, ACCB] = take(8);
  const nV128 = next - nParams - nI32;
  const [KEY] = take(1);
  const acc = (i: number, j: number) => ACC[RJ * i + j];
  const [rb, xBase, yBase] = levels === 2 ? [rb8, X8, Y8] : [rb16, X16, Y16];
  const step = (k: number) => {
    const s: number[] = [];
    for (let j = 0; j < RJ; j++) s.push(...get(PY), ...V128_LOAD(j * rb + k), ...set(YV[j]));
    for (let i = 0; i < QI; i++) s.push(...get(PX), ...V128_LOAD(i * rb + k), ...set(XV[i]));
    for (let i = 0; i < QI; i++) {
      for (let j = 0; j < RJ; j++) {
        if (levels === 2) {
          s.push(...get(XV[i]), ...get(YV[j]), ...get(acc(i, j)));
          s.push(...I32X4_RELAXED_DOT_I8X16_I7X16_ADD_S, ...set(acc(i, j)));
        } else {
          s.push(...get(acc(i, j)), ...get(XV[i]), ...get(YV[j]), ...I32X4_DOT_I16X8_S);
          s.push(...I32X4_ADD, ...set(acc(i, j)));
        }
      }
    }
    return s;
  };
  /** A row walk of `rbytes` bytes: `body(k)` per 16-byte step at offset k, advancing `ptrs`. */
  const walk = (rbytes: number, ptrs: number[], body: (k: number) => number[]) => {
    const steps = rbytes / 16, unroll = unrollOf(steps);
    const out: number[] = [];
    if (unroll === steps) {
      for (let k = 0; k < steps; k++) out.push(...body(16 * k));
      return out;
    }
    const inner: number[] = [];
    for (let k = 0; k < unroll; k++) inner.push(...body(16 * k));
    for (const p of ptrs) inner.push(...get(p), ...i32(16 * unroll), ...ADD, ...set(p));
    out.push(...get(ptrs[0]), ...i32(rbytes), ...ADD, ...set(PEND));
    out.push(...loop(ptrs[0], PEND, inner));
    return out;
  };
  const hsum = (v: number) => [
    ...get(v),
    ...I32X4_LANE(0),
    ...get(v),
    ...I32X4_LANE(1),
    ...ADD,
    ...get(v),
    ...I32X4_LANE(2),
    ...ADD,
    ...get(v),
    ...I32X4_LANE(3),
    ...ADD,
  ];
  const tile: number[] = [];
  for (const a of ACC) tile.push(...V128_ZERO, ...set(a));
  // Row pointers: x + q·rb, y + j·rb.
  tile.push(...get(xBase), ...get(Q), ...i32(rb), ...MUL, ...ADD, ...set(PX));
  tile.push(...get(yBase), ...get(J), ...i32(rb), ...MUL, ...ADD, ...set(PY));
  tile.push(...walk(rb, [PX, PY], step));
  // The level the tile computed: its coef, threshold and (level 1) offset arrays.
  const [coef, thr] = levels === 2 ? [COEF8, THR8] : [COEF16, THR16];
  const perQuery = (arr: number, off: number) => [
    ...get(arr),
    ...get(QO),
    ...ADD,
    ...V128_LOAD(off),
  ];
  for (let j = 0; j < RJ; j++) {
    // The 4 queries' sums for row j: lanes added pairwise by shuffles (exact in int32).
    const half = (a: number, b: number, into: number) => [
      ...get(acc(a, j)),
      ...get(acc(b, j)),
      ...SHUFFLE32([0, 1, 4, 5]),
      ...get(acc(a, j)),
      ...get(acc(b, j)),
      ...SHUFFLE32([2, 3, 6, 7]),
      ...I32X4_ADD,
      ...set(into),
    ];
    tile.push(...half(0, 1, H0), ...half(2, 3, H1));
    tile.push(...get(H0), ...get(H1), ...SHUFFLE32([0, 2, 4, 6]));
    tile.push(...get(H0), ...get(H1), ...SHUFFLE32([1, 3, 5, 7]), ...I32X4_ADD, ...set(SUMS));
    // Keys of queries 0, 1 (K01) and 2, 3 (K23): yn[j] (+ off) − coef·sum.
    tile.push(...get(YN), ...get(J), ...i32(3), ...SHL, ...ADD, ...F64_LOAD(8 * j));
    tile.push(...F64X2_SPLAT, ...set(NORM));
    for (const [h, into] of [[0, K01], [1, K23]]) {
      tile.push(...get(NORM));
      if (levels === 2) tile.push(...perQuery(OFF8, 16 * h), ...F64X2_ADD);
      tile.push(...perQuery(coef, 16 * h), ...get(SUMS));
      if (h === 1) tile.push(...get(SUMS), ...SHUFFLE32([2, 3, 2, 3]));
      tile.push(...F64X2_CONVERT_LOW_I32X4_S, ...F64X2_MUL, ...F64X2_SUB, ...set(into));
    }
    tile.push(...get(K01), ...perQuery(thr, 0), ...F64X2_LE);
    tile.push(...get(K23), ...perQuery(thr, 16), ...F64X2_LE, ...V128_OR, ...V128_ANY_TRUE);
    // Rare: some key passes. Each query in order, branch-free: write the entry, advance the
    // pointer only where the key passed.
    const append: number[] = [];
    for (let i = 0; i < QI; i++) {
      append.push(...get(i < 2 ? K01 : K23), ...F64X2_LANE(i % 2), ...set(KEY));
      const [ptr, size] = levels === 2 ? [PP, 3] : [LP, 4];
      append.push(...get(ptr), ...get(Q), ...i32(i), ...ADD, ...I32_STORE(0));
      append.push(...get(ptr), ...get(J), ...i32(j), ...ADD, ...I32_STORE(4));
      if (levels === 1) append.push(...get(LP), ...get(KEY), ...F64_STORE(8));
      append.push(...get(ptr), ...get(KEY), ...get(QO), ...get(thr), ...ADD, ...F64_LOAD(8 * i));
      append.push(...F64_LE, ...i32(size), ...SHL, ...ADD, ...set(ptr));
    }
    tile.push(...IF, ...append, ...END);
  }
  tile.push(...get(J), ...i32(RJ), ...ADD, ...set(J));
  const rows = [
    ...get(Q),
    ...i32(3),
    ...SHL,
    ...set(QO),
    ...i32(0),
    ...set(J),
    ...loop(J, NY, tile),
    ...get(Q),
    ...i32(QI),
    ...ADD,
    ...set(Q),
  ];
  const code = [
    ...get(LIST),
    ...set(LP),
    ...get(PENDING),
    ...set(PP),
    ...i32(0),
    ...set(Q),
    ...loop(Q, NQ, rows),
  ];
  if (levels === 2) {
    // Level 2 on the collected pairs, two at a time (independent sums). An odd count gets a
    // pair with the padding row, whose NaN key never passes.
    code.push(...get(PP), ...get(PENDING), ...SUB, ...i32(8), ...AND, ...IF);
    code.push(...get(PP), ...i32(0), ...I32_STORE(0), ...get(PP), ...get(PAD), ...I32_STORE(4));
    code.push(...get(PP), ...i32(8), ...ADD, ...set(PP), ...END);
    const pair: number[] = [];
    const rowPtr = (base: number, idx: number, into: number) => [
      ...get(base),
      ...get(idx),
      ...i32(rb16),
      ...MUL,
      ...ADD,
      ...set(into),
    ];
    pair.push(...get(E), ...I32_LOAD(0), ...set(QA), ...get(E), ...I32_LOAD(4), ...set(TA));
    pair.push(...get(E), ...I32_LOAD(8), ...set(QB), ...get(E), ...I32_LOAD(12), ...set(TB));
    pair.push(...rowPtr(X16, QA, XA), ...rowPtr(Y16, TA, YA));
    pair.push(...rowPtr(X16, QB, XB), ...rowPtr(Y16, TB, YB));
    pair.push(...V128_ZERO, ...set(ACCA), ...V128_ZERO, ...set(ACCB));
    const dotStep = (acc: number, xp: number, yp: number, k: number) => [
      ...get(acc),
      ...get(xp),
      ...V128_LOAD(k),
      ...get(yp),
      ...V128_LOAD(k),
      ...I32X4_DOT_I16X8_S,
      ...I32X4_ADD,
      ...set(acc),
    ];
    pair.push(...walk(rb16, [XA, YA, XB, YB], (k) => [
      ...dotStep(ACCA, XA, YA, k),
      ...dotStep(ACCB, XB, YB, k),
    ]));
    for (const [qq, tt, a] of [[QA, TA, ACCA], [QB, TB, ACCB]]) {
      // k₁₆ = yn[t] − coef16[q]·dot, appended where ≤ thr16[q] (branch-free).
      pair.push(...get(YN), ...get(tt), ...i32(3), ...SHL, ...ADD, ...F64_LOAD(0));
      pair.push(...get(COEF16), ...get(qq), ...i32(3), ...SHL, ...ADD, ...F64_LOAD(0));
      pair.push(...hsum(a), ...F64_CONVERT_I32_S, ...F64_MUL, ...F64_SUB, ...set(KEY));
      pair.push(...get(LP), ...get(qq), ...I32_STORE(0), ...get(LP), ...get(tt), ...I32_STORE(4));
      pair.push(...get(LP), ...get(KEY), ...F64_STORE(8));
      pair.push(...get(LP), ...get(KEY), ...get(THR16), ...get(qq), ...i32(3), ...SHL, ...ADD);
      pair.push(...F64_LOAD(0), ...F64_LE, ...i32(4), ...SHL, ...ADD, ...set(LP));
    }
    pair.push(...get(E), ...i32(16), ...ADD, ...set(E));
    code.push(...get(PENDING), ...set(E), ...loop(E, PP, pair));
  }
  code.push(...get(LP), ...get(LIST), ...SUB, ...i32(4), ...SHR_U, ...END);
  const scan = [...uleb(3), ...uleb(nI32), I32, ...uleb(nV128), V128, ...uleb(1), F64, ...code];
  return new Uint8Array([
    0x00,
    0x61,
    0x73,
    0x6d,
    1,
    0,
    0,
    0,
    ...section(1, vector([[0x60, ...uleb(nParams), ...new Array(nParams).fill(I32), 1, I32]])),
    ...section(2, vector([[...name("env"), ...name("mem"), 0x02, 0x00, 0x01]])),
    ...section(3, vector([[0]])),
    ...section(7, vector([[...name("scan"), 0x00, 0x00]])),
    ...section(10, vector([[...uleb(scan.length), ...scan]])),
  ]);
}

/** Compiled modules by row widths and levels (this thread's). */
const compiled = new Map<string, WebAssembly.Module>();

function moduleFor(rb16: number, rb8: number, levels: 1 | 2): WebAssembly.Module {
  const key = `${rb16}/${rb8}/${levels}`;
  let m = compiled.get(key);
  if (!m) {
    m = new WebAssembly.Module(assemble(rb16, rb8, levels) as BufferSource);
    compiled.set(key, m);
  }
  return m;
}

/** Whether this runtime compiles the kernel with `levels` (cached per thread). */
const compiles = new Map<1 | 2, boolean>();

function kernelCompiles(levels: 1 | 2): boolean {
  let ok = compiles.get(levels);
  if (ok === undefined) {
    try {
      moduleFor(16, 16, levels);
      ok = true;
    } catch {
      ok = false;
    }
    compiles.set(levels, ok);
  }
  return ok;
}

/** Whether this runtime compiles WebAssembly SIMD (else callers use the float64 path). */
export function simdAvailable(): boolean {
  return kernelCompiles(1);
}

/** Whether this runtime also compiles relaxed SIMD (the screen's level 1). */
export function relaxedSimdAvailable(): boolean {
  return kernelCompiles(2);
}

/** The largest 16-bit code for width `d`: every sum of d products of codes fits int32. */
export function codeLimit(d: number): number {
  return Math.min(32767, Math.floor(Math.sqrt((2 ** 31 - 1) / d)));
}

/** Level 1's largest codes: queries (signed 8-bit), reference (7-bit once offset). */
const M8X = 127, M8Y = 63, Y8_OFFSET = 64;
/** Rounding slack of a code: half a step, plus the scaling's roundings. */
const H = 0.5 + 1e-9;
const U64 = 2 ** -53;
/** Magnitudes handled (beyond them: RangeError, or an infinite bound for a query). */
const TINY = 2 ** -900, HUGE = 2 ** 400;
/** Adding and subtracting it rounds |v| < 2⁵¹ to the nearest integer (much faster than Math.round). */
const ROUND = 2 ** 52 + 2 ** 51;
const PAGE = 65536;

/** The module's export (the comment of `assemble`). */
type ScanFn = (...args: number[]) => number;

/** Per query of a loaded block: its centred norm, scales and error bounds, level by level. */
export interface LoadedQueries {
  /** ‖x̃‖ = ‖x − mean‖ per query. */
  norm: Float64Array;
  /** s per query (level 2): x̃·ỹ ≈ s·(x̂·ŷ). */
  scale: Float64Array;
  /** Per query, a bound on |x̃·ỹ − s·(x̂·ŷ)| over every reference row (module comment). */
  bound: Float64Array;
  /** The same for level 1's codes (absent with `levels` 1). */
  scale8?: Float64Array;
  bound8?: Float64Array;
  /** Level 1's offset term per query: 64·Σx̂₈ (the key adds coef8·this). */
  sum8?: Float64Array;
}

/** What `ScreenDots.scan` found: `count` entries (query, row, key), each query's in row order. */
export interface ScanHits {
  count: number;
  /** Entry e: query `ints[4e]` (of the loaded block), row `ints[4e + 1]` (absolute). */
  ints: Int32Array;
  /** Entry e: its 16-bit key `keys[2e + 1]`. */
  keys: Float64Array;
}

/** Options of `ScreenDots`. */
export interface ScreenOptions {
  /** Queries per block at most (default 128). */
  maxQueries?: number;
  /** Rows per `scan` at most (default 512). */
  maxRows?: number;
  /** 2: both levels (default where relaxed SIMD compiles); 1: 16-bit codes only. */
  levels?: 1 | 2;
  /** Centre the codes on the reference's column means (default true; see the module comment). */
  center?: boolean;
}

/**
 * Codes of the centred rows ỹ = y − mean by column scales (reciprocals `inv16`, `inv8`):
 * 16-bit codes into `c16` and, when `c8` is given, 8-bit ones plus their offset into `c8`
 * (rows of `stride8`), and ‖ỹ‖² into `norms`, in one pass over `y`. Returns max_t ‖ŷ_t‖₁ of
 * each (0 for 8 bits when absent).
 */
function quantise(
  y: ArrayLike<number>,
  mean: Float64Array,
  norms: Float64Array,
  rows: number,
  dim: number,
  inv16: Float64Array,
  c16: Int16Array,
  stride16: number,
  inv8: Float64Array,
  c8: Int8Array | null,
  stride8: number,
): [number, number] {
  let max16 = 0, max8 = 0;
  for (let r = 0; r < rows; r++) {
    const o = r * dim, p = r * stride16, p8 = r * stride8;
    let l16 = 0, l8 = 0, sq = 0;
    for (let j = 0; j < dim; j++) {
      // |ỹ/c − ỹ·inv| ≤ 2u·M; ROUND rounds to the nearest integer. |ỹ| ≤ max|ỹ| = c·M, so
      // |ỹ·inv| ≤ M·(1 + 3u) rounds to at most M: no clamp needed.
      const v = y[o + j] - mean[j];
      sq += v * v;
      const k = ((v * inv16[j] + ROUND) - ROUND) | 0;
      c16[p + j] = k;
      l16 += Math.abs(k); // not a branch: signs are random
      if (c8) {
        const k8 = ((v * inv8[j] + ROUND) - ROUND) | 0;
        c8[p8 + j] = k8 + Y8_OFFSET;
        l8 += Math.abs(k8);
      }
    }
    norms[r] = sq;
    if (l16 > max16) max16 = l16;
    if (l8 > max8) max8 = l8;
  }
  return [max16, max8];
}

/**
 * A reference set Y as codes in a module's memory, screened against blocks
 * of up to `maxQueries` queries and `maxRows` rows. One per thread (the
 * memory is not shared).
 */
export class ScreenDots {
  readonly rows: number;
  readonly dim: number;
  /** 1: 16-bit codes only; 2: 8-bit codes first (module comment). */
  readonly levels: 1 | 2;
  /** Largest 16-bit code (module comment). */
  readonly limit: number;
  /** c_j of the 16-bit codes: reference column j is c_j × its codes. */
  readonly colScale: Float64Array;
  /** c_j of the 8-bit codes. */
  readonly colScale8: Float64Array;
  /** The column means the codes are centred on (zeros with `center: false`). */
  readonly mean: Float64Array;
  /** max_t ‖ỹ_t‖, the largest centred row norm. */
  readonly maxNorm: number;
  /** max_t ‖ŷ_t‖₁ over the reference rows' 16-bit codes. */
  readonly maxCodeL1: number;
  /** The same over the 8-bit codes (before their offset). */
  readonly maxCode8L1: number;
  /** Per loaded query, set by the caller: key = ‖y‖² − coef·x̂·ŷ (2s for the kNN key). */
  readonly coef: Float64Array;
  /** Per loaded query, set by the caller: the keys at most this are reported. */
  readonly thr: Float64Array;
  /** Level 1's coef, offset term (coef8·64·Σx̂₈) and threshold, per loaded query. */
  readonly coef8: Float64Array;
  readonly off8: Float64Array;
  readonly thr8: Float64Array;
  readonly #scan: ScanFn;
  readonly #buf: ArrayBufferLike;
  readonly #maxQ: number;
  readonly #maxRows: number;
  readonly #rb16: number;
  readonly #rb8: number;
  readonly #at: Record<
    | "y8"
    | "y16"
    | "yn"
    | "x8"
    | "x16"
    | "coef"
    | "thr"
    | "coef8"
    | "off8"
    | "thr8"
    | "list"
    | "pending",
    number
  >;
  #nq = 0;
  #nqp = 0;

  /**
   * Codes of `y` ([rows, dim], any finite float array), centred on its
   * column means, in the module's memory, with the centred rows' ‖ỹ‖² (the
   * keys' first term). A column whose largest centred |value| is beyond
   * 2^±(900, 400) is refused (RangeError): the caller decides such sets in
   * float64.
   */
  constructor(y: ArrayLike<number>, rows: number, dim: number, opts: ScreenOptions = {}) {
    this.rows = rows;
    this.dim = dim;
    this.levels = opts.levels ?? (relaxedSimdAvailable() ? 2 : 1);
    const d8 = Math.ceil(dim / 8) * 8, d16 = Math.ceil(dim / 16) * 16;
    this.#rb16 = d8 * 2;
    this.#rb8 = this.levels === 2 ? d16 : 16;
    this.limit = codeLimit(dim);
    // One pass: column sums, minima and maxima; then the means and the centred columns' largest
    // |value| (rounding is monotone: no centred value of the column exceeds it).
    const mean = new Float64Array(dim);
    const lo = new Float64Array(dim).fill(Infinity), hi = new Float64Array(dim).fill(-Infinity);
    for (let r = 0; r < rows; r++) {
      const o = r * dim;
      for (let j = 0; j < dim; j++) {
        const v = y[o + j];
        mean[j] += v;
        if (v < lo[j]) lo[j] = v;
        if (v > hi[j]) hi[j] = v;
      }
    }
    const center = opts.center ?? true;
    for (let j = 0; j < dim; j++) mean[j] = center ? mean[j] / Math.max(rows, 1) : 0;
    this.mean = mean;
    const colMax = mean.map((m, j) => (rows ? Math.max(hi[j] - m, m - lo[j]) : 0));
    for (let j = 0; j < dim; j++) {
      // Far from float64's ends, so that scales and scaled queries stay normal numbers.
      if (colMax[j] !== 0 && !(colMax[j] > TINY && colMax[j] < HUGE)) {
        throw new RangeError(`ScreenDots: column ${j} (max |y| ${colMax[j]}) cannot be scaled`);
      }
    }
    const scales = (M: number) => {
      const c = colMax.map((v) => v / M);
      return { c, inv: c.map((v) => (v === 0 ? 0 : 1 / v)) };
    };
    const s16 = scales(this.limit), s8 = scales(M8Y);
    this.colScale = s16.c;
    this.colScale8 = s8.c;
    this.#maxQ = Math.ceil((opts.maxQueries ?? 128) / QI) * QI;
    const maxRows = opts.maxRows ?? 512;
    this.#maxRows = maxRows + (maxRows % RJ);
    // At least one padding row after the last.
    const yRows = rows + (rows % RJ === 0 ? RJ : 1);
    const at = { y8: 0, y16: 0, yn: 0, x8: 0, x16: 0, coef: 0, thr: 0, coef8: 0, off8: 0 };
    let end = 0;
    const take = (bytes: number) => (end += bytes) - bytes;
    at.y16 = take(yRows * this.#rb16);
    at.y8 = take(this.levels === 2 ? yRows * this.#rb8 : 0);
    at.yn = take(yRows * 8);
    at.x16 = take(this.#maxQ * this.#rb16);
    at.x8 = take(this.levels === 2 ? this.#maxQ * this.#rb8 : 0);
    at.coef = take(this.#maxQ * 8);
    at.thr = take(this.#maxQ * 8);
    at.coef8 = take(this.#maxQ * 8);
    at.off8 = take(this.#maxQ * 8);
    const thr8 = take(this.#maxQ * 8);
    const list = take(this.#maxQ * this.#maxRows * 16);
    const pending = take(this.levels === 2 ? (this.#maxQ * this.#maxRows + 2) * 8 : 0);
    this.#at = { ...at, thr8, list, pending };
    const mem = new WebAssembly.Memory({ initial: Math.max(1, Math.ceil(end / PAGE)) });
    this.#scan = new WebAssembly.Instance(moduleFor(this.#rb16, this.#rb8, this.levels), {
      env: { mem },
    }).exports.scan as ScanFn;
    this.#buf = mem.buffer;
    const yn = new Float64Array(this.#buf, at.yn, yRows);
    [this.maxCodeL1, this.maxCode8L1] = quantise(
      y,
      mean,
      yn,
      rows,
      dim,
      s16.inv,
      new Int16Array(this.#buf, at.y16, yRows * d8),
      d8,
      s8.inv,
      this.levels === 2 ? new Int8Array(this.#buf, at.y8, yRows * this.#rb8) : null,
      this.#rb8,
    );
    let maxNorm = 0;
    for (let r = 0; r < rows; r++) maxNorm = Math.max(maxNorm, yn[r]);
    this.maxNorm = Math.sqrt(maxNorm);
    for (let r = rows; r < yRows; r++) yn[r] = NaN;
    const f64 = (off: number) => new Float64Array(this.#buf, off, this.#maxQ);
    this.coef = f64(at.coef);
    this.thr = f64(at.thr);
    this.coef8 = f64(at.coef8);
    this.off8 = f64(at.off8);
    this.thr8 = f64(thr8);
  }

  /**
   * Codes of queries `x` rows [q0, q1) (row-major [*, dim], any finite float
   * array; at most `maxQueries`) for the following `scan` calls; returns
   * their scales and bounds; the caller then sets `coef`, `coef8` and
   * `off8` = coef8·sum8 for them.
   */
  loadQueries(x: ArrayLike<number>, q0: number, q1: number): LoadedQueries {
    const nq = q1 - q0;
    if (nq < 0 || nq > this.#maxQ) {
      throw new RangeError(`ScreenDots: ${nq} queries (at most ${this.#maxQ} per block)`);
    }
    const nqp = nq + ((QI - (nq % QI)) % QI);
    this.#nq = nq;
    this.#nqp = nqp;
    // The centred queries x̃ = x − mean, and ‖x̃‖.
    const d = this.dim, mean = this.mean;
    const xc = new Float64Array(nq * d);
    const norm = new Float64Array(nq);
    for (let q = 0; q < nq; q++) {
      const o = (q0 + q) * d, p = q * d;
      let sq = 0;
      for (let j = 0; j < d; j++) {
        const v = x[o + j] - mean[j];
        xc[p + j] = v;
        sq += v * v;
      }
      norm[q] = Math.sqrt(sq);
    }
    const out: LoadedQueries = { norm, scale: new Float64Array(nq), bound: new Float64Array(nq) };
    this.#codes(xc, nq, nqp, this.colScale, this.limit, this.maxCodeL1, 2, out.scale, out.bound);
    if (this.levels === 2) {
      out.scale8 = new Float64Array(nq);
      out.bound8 = new Float64Array(nq);
      out.sum8 = this.#codes(
        xc,
        nq,
        nqp,
        this.colScale8,
        M8X,
        this.maxCode8L1,
        1,
        out.scale8,
        out.bound8,
      );
    }
    return out;
  }

  /**
   * One level's codes of the centred queries `xc` ([nq, dim]; `bytes` per code); returns
   * 64·Σx̂ per query for level 1.
   */
  #codes(
    xc: Float64Array,
    nq: number,
    nqp: number,
    c: Float64Array,
    M: number,
    maxL1: number,
    bytes: 1 | 2,
    scale: Float64Array,
    bound: Float64Array,
  ): Float64Array {
    const d = this.dim;
    const stride = bytes === 2 ? this.#rb16 / 2 : this.#rb8;
    const codes = bytes === 2
      ? new Int16Array(this.#buf, this.#at.x16, nqp * stride)
      : new Int8Array(this.#buf, this.#at.x8, nqp * stride);
    codes.fill(0);
    const sums = new Float64Array(nq);
    const xs = new Float64Array(d);
    for (let q = 0; q < nq; q++) {
      const o = q * d;
      let top = 0, weighted = 0;
      for (let j = 0; j < d; j++) {
        const v = xc[o + j] * c[j];
        xs[j] = v;
        const a = Math.abs(v);
        top = Math.max(top, a);
        weighted += a;
      }
      if ((top !== 0 && !(top > TINY && top < HUGE)) || !Number.isFinite(weighted)) {
        // No useful codes for this query: an infinite bound sends every row to float64.
        scale[q] = 1;
        bound[q] = Infinity;
        continue;
      }
      const s = top > 0 ? top / M : 1;
      const inv = 1 / s;
      const p = q * stride;
      let sum = 0;
      for (let j = 0; j < d; j++) {
        // |x'_j·inv| ≤ M·(1 + 2u): rounds to at most M (as for the reference's codes).
        const k = ((xs[j] * inv + ROUND) - ROUND) | 0;
        codes[p + j] = k;
        sum += k;
      }
      sums[q] = Y8_OFFSET * sum;
      scale[q] = s;
      // Σ|x_j|·c_j is `weighted` up to the products' rounding, which the 1.01·u·M term and
      // the caller's relative slack cover.
      bound[q] = s * H * maxL1 + (H + 1.01 * U64 * M) * weighted;
    }
    return sums;
  }

  /**
   * CPU reference of the kernel's keys for loaded query `q` and row `t`, from
   * the codes in memory with the same float64 operations: the 16-bit key and
   * (with 2 levels) the 8-bit one.
   */
  keysRef(q: number, t: number): { key16: number; key8: number } {
    const yn = new Float64Array(this.#buf, this.#at.yn, this.rows)[t];
    const n16 = this.#rb16 / 2;
    const x16 = new Int16Array(this.#buf, this.#at.x16 + q * this.#rb16, n16);
    const y16 = new Int16Array(this.#buf, this.#at.y16 + t * this.#rb16, n16);
    let dot = 0;
    for (let j = 0; j < n16; j++) dot += x16[j] * y16[j];
    const key16 = yn - this.coef[q] * dot;
    if (this.levels === 1) return { key16, key8: NaN };
    const x8 = new Int8Array(this.#buf, this.#at.x8 + q * this.#rb8, this.#rb8);
    const y8 = new Int8Array(this.#buf, this.#at.y8 + t * this.#rb8, this.#rb8);
    let raw = 0;
    for (let j = 0; j < this.#rb8; j++) raw += x8[j] * y8[j];
    return { key16, key8: (yn + this.off8[q]) - this.coef8[q] * raw };
  }

  /**
   * Screens the loaded queries against rows [t0, t1) (at most `maxRows`):
   * every pair whose level-1 key is at most thr8[q] (with 2 levels) and
   * whose 16-bit key ‖y_t‖² − coef[q]·x̂_q·ŷ_t is at most thr[q], with that
   * key. The views are valid until the next call.
   */
  scan(t0: number, t1: number): ScanHits {
    const ny = t1 - t0;
    if (t0 < 0 || t1 > this.rows || ny < 0 || ny > this.#maxRows) {
      throw new RangeError(`ScreenDots: rows [${t0}, ${t1}) out of range`);
    }
    for (let q = this.#nq; q < this.#nqp; q++) this.thr[q] = this.thr8[q] = -Infinity;
    const a = this.#at;
    const count = this.#scan(
      a.x8,
      a.y8 + t0 * this.#rb8,
      a.x16,
      a.y16 + t0 * this.#rb16,
      a.yn + t0 * 8,
      a.coef,
      a.thr,
      a.coef8,
      a.off8,
      a.thr8,
      a.list,
      a.pending,
      this.#nqp,
      ny + (ny % RJ),
      this.rows - t0,
    );
    const ints = new Int32Array(this.#buf, a.list, count * 4);
    const keys = new Float64Array(this.#buf, a.list, count * 2);
    let n = 0;
    for (let e = 0; e < count; e++) {
      // An odd block ran one row further: drop that row's entries.
      if (ints[4 * e + 1] === ny) continue;
      ints[4 * n] = ints[4 * e], ints[4 * n + 1] = ints[4 * e + 1] + t0;
      keys[2 * n + 1] = keys[2 * e + 1];
      n++;
    }
    return { count: n, ints, keys };
  }
}

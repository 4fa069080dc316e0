/**
 * Row·row dot products in float32 with WebAssembly SIMD: for a block of
 * queries X [nq, d] and a block of rows Y [ny, d], out[q, j] = x_q · y_j.
 * The fast half of the screened kNN search (eval/knn_screened.ts), which
 * re-checks every decision that could depend on float32 rounding in float64.
 *
 * The kernel keeps a 4 × 2 tile of f32x4 accumulators (4 queries × 2 rows,
 * 4 lanes of the feature axis each: 8 accumulators + 6 loaded vectors, which
 * fit the 16 SSE registers V8 allocates from; a 4 × 3 tile spills and runs
 * at half the speed), walks the feature axis 4 values at a time and sums
 * the lanes at the end. 3–5× the float64 JavaScript kernel (eval/blas.ts)
 * per thread on x86-64.
 *
 * Layout in the module's memory: rows padded to d4 = ⌈d/4⌉·4 floats (zero
 * padding adds nothing to a dot product), queries padded to a multiple of 4
 * rows and Y to a multiple of 2 rows. The module is assembled here from its
 * instructions (no toolchain; the opcodes are those of the WebAssembly core
 * and SIMD specifications) and compiled once per thread.
 *
 * Error bound (used by the screened search): each lane sums ⌈d/4⌉ products
 * in order and the 4 lanes are then added, so |dot₃₂ − dot| ≤ γ_(d+2)·Σ|x_i y_i|
 * with γ_n = n·u / (1 − n·u), u = 2⁻²⁴, for float32 inputs (and 3u more for
 * inputs rounded to float32 first).
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

// Opcodes (WebAssembly core 1.0 and the fixed-width SIMD proposal, now standard).
const I32 = 0x7f, V128 = 0x7b;
const get = (i: number) => [0x20, ...uleb(i)];
const set = (i: number) => [0x21, ...uleb(i)];
const i32 = (v: number) => [0x41, ...sleb(v)];
const ADD = [0x6a], MUL = [0x6c], GE_U = [0x4f], F32_ADD = [0x92];
const simd = (op: number) => [0xfd, ...uleb(op)];
const V128_LOAD = [...simd(0x00), 0x04, 0x00]; // align 2^4, offset 0
const F32X4_ADD = simd(0xe4), F32X4_MUL = simd(0xe6);
const lane = (l: number) => [...simd(0x1f), l]; // f32x4.extract_lane
const V128_ZERO = [...simd(0x0c), ...new Array(16).fill(0)]; // v128.const 0
const F32_STORE = [0x38, 0x02, 0x00];
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

/**
 * `dots(x, y, out, nq, ny, d4)`: byte offsets of X [nq, d4], Y [ny, d4] and
 * out [nq, ny] (f32), nq a multiple of 4, ny of 2, d4 of 4.
 */
function assemble(): Uint8Array {
  // Params 0 x, 1 y, 2 out, 3 nq, 4 ny, 5 d4; i32 locals 6 q, 7 j, 8 row bytes, 9 end of the
  // x row, 10..13 the 4 query rows' pointers, 14..15 the 2 reference rows' pointers;
  // v128 locals 16..23 accumulators (query i, row j at 16 + 2i + j), 24..25 y, 26..29 x.
  const X = 0, Y = 1, OUT = 2, NQ = 3, NY = 4, D = 5, Q = 6, J = 7, RB = 8, END = 9;
  const XP = (i: number) => 10 + i, YP = (j: number) => 14 + j;
  const acc = (i: number, j: number) => 16 + 2 * i + j;
  const inner: number[] = [];
  for (let j = 0; j < 2; j++) inner.push(...get(YP(j)), ...V128_LOAD, ...set(24 + j));
  for (let i = 0; i < 4; i++) inner.push(...get(XP(i)), ...V128_LOAD, ...set(26 + i));
  for (let i = 0; i < 4; i++) {
    for (let j = 0; j < 2; j++) {
      inner.push(...get(acc(i, j)), ...get(26 + i), ...get(24 + j), ...F32X4_MUL, ...F32X4_ADD);
      inner.push(...set(acc(i, j)));
    }
  }
  for (const p of [XP(0), XP(1), XP(2), XP(3), YP(0), YP(1)]) {
    inner.push(...get(p), ...i32(16), ...ADD, ...set(p));
  }
  const tile: number[] = [];
  for (let a = 0; a < 8; a++) tile.push(...V128_ZERO, ...set(16 + a));
  // Row pointers: x + (q + i)·rowBytes, y + (j + jj)·rowBytes.
  tile.push(...get(X), ...get(Q), ...get(RB), ...MUL, ...ADD, ...set(XP(0)));
  for (let i = 1; i < 4; i++) tile.push(...get(XP(i - 1)), ...get(RB), ...ADD, ...set(XP(i)));
  tile.push(...get(Y), ...get(J), ...get(RB), ...MUL, ...ADD, ...set(YP(0)));
  tile.push(...get(YP(0)), ...get(RB), ...ADD, ...set(YP(1)));
  tile.push(...get(XP(0)), ...get(RB), ...ADD, ...set(END));
  tile.push(...loop(XP(0), END, inner));
  for (let i = 0; i < 4; i++) {
    for (let j = 0; j < 2; j++) {
      // out + ((q + i)·ny + j + jj)·4 ← lane0 + lane1 + lane2 + lane3
      tile.push(...get(OUT), ...get(Q), ...i32(i), ...ADD, ...get(NY), ...MUL, ...get(J), ...ADD);
      tile.push(...i32(j), ...ADD, ...i32(4), ...MUL, ...ADD);
      const a = acc(i, j);
      tile.push(...get(a), ...lane(0), ...get(a), ...lane(1), ...F32_ADD);
      tile.push(...get(a), ...lane(2), ...F32_ADD, ...get(a), ...lane(3), ...F32_ADD, ...F32_STORE);
    }
  }
  tile.push(...get(J), ...i32(2), ...ADD, ...set(J));
  const rows = [
    ...i32(0),
    ...set(J),
    ...loop(J, NY, tile),
    ...get(Q),
    ...i32(4),
    ...ADD,
    ...set(Q),
  ];
  const code = [
    ...get(D),
    ...i32(4),
    ...MUL,
    ...set(RB),
    ...i32(0),
    ...set(Q),
    ...loop(Q, NQ, rows),
    0x0b,
  ];
  const body = [...uleb(2), ...uleb(10), I32, ...uleb(14), V128, ...code];
  return new Uint8Array([
    0x00,
    0x61,
    0x73,
    0x6d,
    1,
    0,
    0,
    0,
    ...section(1, vector([[0x60, ...uleb(6), ...new Array(6).fill(I32), 0]])),
    ...section(2, vector([[...name("env"), ...name("mem"), 0x02, 0x00, 0x01]])),
    ...section(3, vector([[0]])),
    ...section(7, vector([[...name("dots"), 0x00, 0x00]])),
    ...section(10, vector([[...uleb(body.length), ...body]])),
  ]);
}

let compiled: WebAssembly.Module | null = null;

/** Whether this runtime compiles WebAssembly SIMD (else callers use the float64 path). */
export function simdAvailable(): boolean {
  try {
    compiled ??= new WebAssembly.Module(assemble() as BufferSource);
    return true;
  } catch {
    return false;
  }
}

const PAGE = 65536;

/** The module's export: byte offsets of X, Y and out, then nq, ny, d4. */
type DotsFn = (x: number, y: number, out: number, nq: number, ny: number, d4: number) => void;

/**
 * A reference set Y held in a module's memory, multiplied by blocks of
 * queries. One per thread (the memory is not shared).
 */
export class F32Dots {
  readonly rows: number;
  readonly dim: number;
  /** Padded row width. */
  readonly d4: number;
  readonly #mem: WebAssembly.Memory;
  readonly #dots: DotsFn;
  readonly #yOff = 0;
  #xOff = 0;
  #outOff = 0;
  #capacity = 0;

  /** Copies `y` ([rows, dim], any float array) into the module's memory as padded float32. */
  constructor(y: ArrayLike<number>, rows: number, dim: number) {
    compiled ??= new WebAssembly.Module(assemble() as BufferSource);
    this.rows = rows;
    this.dim = dim;
    this.d4 = Math.ceil(dim / 4) * 4;
    const yRows = rows + (rows % 2);
    const yBytes = yRows * this.d4 * 4;
    this.#mem = new WebAssembly.Memory({ initial: Math.max(1, Math.ceil(yBytes / PAGE)) });
    const inst = new WebAssembly.Instance(compiled, { env: { mem: this.#mem } });
    this.#dots = inst.exports.dots as DotsFn;
    const f = new Float32Array(this.#mem.buffer, 0, yRows * this.d4);
    for (let r = 0; r < rows; r++) {
      for (let t = 0; t < dim; t++) f[r * this.d4 + t] = y[r * dim + t];
    }
    this.#xOff = yBytes;
  }

  /** Room for `nq` queries against `ny` rows (grows the memory when needed). */
  #reserve(nq: number, ny: number): void {
    const need = nq * this.d4 * 4 + nq * ny * 4;
    if (need <= this.#capacity) return;
    const total = this.#xOff + need;
    const have = this.#mem.buffer.byteLength;
    if (total > have) this.#mem.grow(Math.ceil((total - have) / PAGE));
    this.#capacity = need;
  }

  /**
   * Dot products of queries `x` rows [q0, q1) (row-major [*, dim], any float
   * array) with reference rows [t0, t1): returns a view [q1 − q0, ldo]
   * (ldo = t1 − t0 rounded up to even) valid until the next call.
   */
  dots(
    x: ArrayLike<number>,
    q0: number,
    q1: number,
    t0: number,
    t1: number,
  ): { out: Float32Array; ldo: number } {
    const nq = q1 - q0, nqp = nq + ((4 - (nq % 4)) % 4);
    const ny = t1 - t0, nyp = ny + (ny % 2);
    if (t0 < 0 || t1 > this.rows || nq < 0) throw new RangeError("F32Dots: rows out of range");
    this.#reserve(nqp, nyp);
    this.#outOff = this.#xOff + nqp * this.d4 * 4;
    const d = this.dim, d4 = this.d4;
    const xs = new Float32Array(this.#mem.buffer, this.#xOff, nqp * d4);
    xs.fill(0);
    for (let q = 0; q < nq; q++) {
      for (let t = 0; t < d; t++) xs[q * d4 + t] = x[(q0 + q) * d + t];
    }
    this.#dots(this.#xOff, this.#yOff + t0 * d4 * 4, this.#outOff, nqp, nyp, d4);
    return { out: new Float32Array(this.#mem.buffer, this.#outOff, nqp * nyp), ldo: nyp };
  }

  /** The relative error bound γ_(d+2) of one dot product (module comment). */
  get gamma(): number {
    const n = this.dim + 2;
    const u = 2 ** -24;
    return (n * u) / (1 - n * u);
  }
}

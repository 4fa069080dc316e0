/**
 * The exact kNN search, fast: a `NeighborSearch` whose answer is the float64
 * brute-force search's (eval/knn.ts) bit for bit — same neighbours, same
 * tie-breaks, same distances — at a fraction of its cost.
 *
 * Two passes per block of queries:
 * 1. **Screen** (integer codes, WebAssembly SIMD, eval/screen_dots.ts): keys
 *    k_s = ‖ỹ‖² − 2·s·(x̂·ŷ) for every training row, in training order, from
 *    codes of the rows centred on the training set's mean (ỹ = y − μ); k_s
 *    is within e of k₆₄ + c (k₆₄: the float64 search's key; c = ‖x‖² − ‖x̃‖²,
 *    the same for every row of a query, so it drops out of every comparison
 *    below): e is twice the codes' bound on |x̃·ỹ − s·x̂·ŷ| plus the roundings
 *    of centring, of the float64 sums and of both keys. A max-heap keeps the
 *    K smallest k_s (K = the largest k asked for), and every row whose k_s is
 *    within 2e of the heap's worst is recorded as a candidate. The worst is
 *    taken at the start of each block of rows (it only falls within a block,
 *    so more rows pass, never fewer), and a coarser 8-bit level first drops
 *    the rows whose key, less its own bound e₈, exceeds worst + e (an upper
 *    bound on the K-th smallest k₆₄ + c so far): such a row can neither be
 *    among the K nearest nor change a float64 heap.
 * 2. **Decide** (float64): the candidates that can be among the final K
 *    (k_s within 2e of the final K-th smallest) get their keys recomputed
 *    exactly as the float64 search computes them (same dot-product order,
 *    same norms) and are pushed, in training order, into `NeighborHeaps`
 *    (scikit-learn's heap). Where two of them have equal exact keys at a
 *    k-th place, every candidate is replayed instead (below).
 *
 * Why it is exact (k₆₄ below stands for k₆₄ + c): the heap's K rows have
 * k₆₄ ≤ worst + e, so W = worst + e bounds the K-th smallest k₆₄ of the rows
 * so far from above, and the K-th smallest of all rows, K₆₄, too. A row t
 * among the true K nearest has k₆₄(t) ≤ K₆₄ ≤ W at its time, so
 * k₈(t) − e₈ ≤ W and k_s(t) − e ≤ W: both levels let it through, and
 * k_s(t) ≤ W_final + e makes it a final candidate; any other row has
 * k₆₄ > K₆₄. Without an exact tie at the k-th place the k nearest form one
 * set, whatever order a heap saw them in, and the output is sorted by (key,
 * index). With a tie, scikit-learn's heap keeps the one its history favours,
 * so the history is replayed: the float64 search changes a heap at row t
 * only when k₆₄(t) is below the heap's worst, the k-th (≤ K-th) smallest k₆₄
 * of the rows before t, which is ≤ W then; so row t passed both levels and
 * was recorded. Rows not recorded would leave every heap as it is, and
 * pushing a row that does not beat the worst is a no-op too, so the replay
 * makes the same changes in the same order: the same heaps. A query whose
 * codes are useless (magnitudes near float64's ends) gets e = ∞: every row
 * is decided in float64, in order, which is the float64 search itself.
 */
import { ScreenDots, simdAvailable } from "./screen_dots.ts";
import { bruteForceNeighbors, NeighborHeaps, type Neighbors, scanQueries } from "./knn.ts";
import type { Matrix } from "./matrix.ts";

const QUERY_BLOCK = 128;
const TRAIN_BLOCK = 512;
/**
 * Training blocks start short and double up to TRAIN_BLOCK: a block's rows pass when under
 * the K-th smallest key of the rows before it (plus the margin), so a block as long as the
 * rows already seen lets through about K rows per query (every row of the first one).
 */
const FIRST_BLOCK = 64;
const U = 2 ** -53;

/** Rows of floats, either width: the decisions read them as float64 either way (exactly). */
export type FloatRows = Float32Array | Float64Array;

/**
 * Feeds queries [q0, q1) of `x` against all `nTrain` rows of `y` into `heaps`
 * (query q at q − q0), screening with `dots` (the codes of `y`).
 * Same contract and same result as `scanQueries` on the float64 values of
 * `x` and `y`; `yNorm` must be `rowNormsSq` of them.
 */
export function screenedScan(
  x: FloatRows,
  q0: number,
  q1: number,
  y: FloatRows,
  nTrain: number,
  yNorm: Float64Array,
  d: number,
  heaps: readonly NeighborHeaps[],
  dots: ScreenDots,
): void {
  const K = Math.max(...heaps.map((h) => h.k));
  let maxYN = 0;
  for (let t = 0; t < nTrain; t++) maxYN = Math.max(maxYN, yNorm[t]);
  const maxY = Math.sqrt(maxYN), maxYc = dots.maxNorm;
  // γ_(d+2) of the float64 sums (dots and norms), plus two roundings.
  const gamma = ((d + 2) * U) / (1 - (d + 2) * U) + 2 * U;
  const ksAsked = heaps.map((h) => h.k);
  const { coef, thr, coef8, off8, thr8 } = dots;
  const two = dots.levels === 2;
  for (let b0 = q0; b0 < q1; b0 += QUERY_BLOCK) {
    const b1 = Math.min(b0 + QUERY_BLOCK, q1);
    const nb = b1 - b0;
    const screen = new NeighborHeaps(nb, K);
    const loaded = dots.loadQueries(x, b0, b1);
    // e ≥ |screen key − float64 key − a constant of the query| per query and level (the
    // module comment of eval/screen_dots.ts); the 16-bit key's margin is 2e.
    const margin = new Float64Array(nb), e8 = new Float64Array(nb);
    for (let i = 0; i < nb; i++) {
      let s = 0;
      const o = (b0 + i) * d;
      for (let t = 0; t < d; t++) s += x[o + t] * x[o + t];
      const xn = Math.sqrt(s), xc = loaded.norm[i];
      // Roundings: centring (≤ 2.1u·(‖x̃‖ + ‖ỹ‖)²), the centred norms and key, the float64
      // search's own norms, dot and key.
      const float = 4 * gamma * ((xc + maxYc) ** 2 + maxYN + 2 * xn * maxY);
      // The codes' bound counts twice (the key has −2x̃·ỹ), its roundings 4u more.
      const keyError = (q: number) => (2 * q * (1 + 4 * U) + float) * (1 + 1e-6);
      const e = keyError(loaded.bound[i]);
      // NaN (from magnitudes beyond float64) counts as unbounded.
      margin[i] = e >= 0 ? 2 * e + 1e-300 : Infinity;
      coef[i] = 2 * loaded.scale[i];
      if (two) {
        coef8[i] = 2 * loaded.scale8![i];
        off8[i] = coef8[i] * loaded.sum8![i];
        // Level 1 adds the offset term before subtracting: its roundings too.
        const raw = coef8[i] * 127 * 127 * d;
        const e1 = keyError(loaded.bound8![i]) + 4 * U * (maxYc ** 2 + Math.abs(off8[i]) + raw);
        e8[i] = e1 >= 0 ? e1 : Infinity;
      }
    }
    const cand = new Candidates(nb);
    const keys = screen.keys;
    for (let t0 = 0; t0 < nTrain;) {
      const t1 = Math.min(t0 + Math.min(TRAIN_BLOCK, Math.max(FIRST_BLOCK, t0)), nTrain);
      // A block's threshold is its first row's: the worst only falls within the block, so
      // the rows passing it include every row the sequential rule would record.
      for (let i = 0; i < nb; i++) {
        thr[i] = keys[i * K] + margin[i];
        // A row can matter only if its level-1 key, less e₈, is under the K-th smallest
        // 16-bit key plus e₁₆ (an upper bound on the K-th smallest float64 key so far).
        if (two) thr8[i] = keys[i * K] + margin[i] / 2 + e8[i];
      }
      const hits = dots.scan(t0, t1);
      const { ints } = hits, hitKeys = hits.keys;
      for (let e = 0; e < hits.count; e++) {
        const i = ints[4 * e], t = ints[4 * e + 1], key = hitKeys[2 * e + 1];
        cand.add(i, t, key);
        if (key < keys[i * K]) screen.push(i, key, t);
      }
      t0 = t1;
    }
    const { start, rows, rowKeys } = cand.byQuery();
    let finals = new Int32Array(64), exact = new Float64Array(64);
    for (let i = 0; i < nb; i++) {
      const c0 = start[i], c1 = start[i + 1];
      const xo = (b0 + i) * d;
      if (c1 - c0 > finals.length) {
        finals = new Int32Array(c1 - c0);
        exact = new Float64Array(c1 - c0);
      }
      // The rows that can be among the final K: their exact keys decide the sets.
      const limit = keys[i * K] + margin[i];
      let nf = 0;
      for (let c = c0; c < c1; c++) if (rowKeys[c] <= limit) finals[nf++] = rows[c];
      exactKeys(x, xo, y, finals, nf, d, yNorm, exact);
      const sorted = exact.slice(0, nf).sort();
      const unique = ksAsked.every((k) => nf <= k || sorted[k - 1] !== sorted[k]);
      const q = b0 - q0 + i;
      if (unique) {
        for (let c = 0; c < nf; c++) {
          for (const h of heaps) h.push(q, exact[c], finals[c]);
        }
      } else {
        // An exact tie at a boundary: which row wins depends on the heap's history. Replay it.
        const all = rows.subarray(c0, c1), allKeys = new Float64Array(c1 - c0);
        exactKeys(x, xo, y, all, c1 - c0, d, yNorm, allKeys);
        for (let c = 0; c < all.length; c++) {
          for (const h of heaps) h.push(q, allKeys[c], all[c]);
        }
      }
    }
  }
}

/** Screen candidates of a block of queries, recorded in scan order, then grouped by query. */
class Candidates {
  readonly #queries: number;
  #q = new Int32Array(1024);
  #t = new Int32Array(1024);
  #key = new Float64Array(1024);
  #n = 0;

  constructor(queries: number) {
    this.#queries = queries;
  }

  add(q: number, t: number, key: number): void {
    if (this.#n === this.#q.length) {
      const grow = <T extends Int32Array | Float64Array>(a: T, b: T) => (b.set(a), b);
      this.#q = grow(this.#q, new Int32Array(2 * this.#n));
      this.#t = grow(this.#t, new Int32Array(2 * this.#n));
      this.#key = grow(this.#key, new Float64Array(2 * this.#n));
    }
    this.#q[this.#n] = q, this.#t[this.#n] = t, this.#key[this.#n] = key;
    this.#n++;
  }

  /** Query i's candidates at [start[i], start[i + 1]), in the order recorded (a stable sort). */
  byQuery(): { start: Int32Array; rows: Int32Array; rowKeys: Float64Array } {
    const n = this.#n, nq = this.#queries;
    const start = new Int32Array(nq + 1);
    for (let e = 0; e < n; e++) start[this.#q[e] + 1]++;
    for (let i = 0; i < nq; i++) start[i + 1] += start[i];
    const at = start.slice(0, nq);
    const rows = new Int32Array(n), rowKeys = new Float64Array(n);
    for (let e = 0; e < n; e++) {
      const c = at[this.#q[e]]++;
      rows[c] = this.#t[e], rowKeys[c] = this.#key[e];
    }
    return { start, rows, rowKeys };
  }
}

/**
 * The float64 search's keys ‖y_t‖² − 2·x·y_t of query row `x[xo…]` with the
 * first `n` rows of `rows`, into `keys`: each dot summed in feature order
 * from 0, as the float64 search sums it (bit for bit), four rows at a time
 * (independent sums, for the pipeline).
 */
function exactKeys(
  x: FloatRows,
  xo: number,
  y: FloatRows,
  rows: Int32Array,
  n: number,
  d: number,
  yNorm: Float64Array,
  keys: Float64Array,
): void {
  let c = 0;
  for (; c + 4 <= n; c += 4) {
    const r0 = rows[c], r1 = rows[c + 1], r2 = rows[c + 2], r3 = rows[c + 3];
    const p0 = r0 * d, p1 = r1 * d, p2 = r2 * d, p3 = r3 * d;
    let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (let j = 0; j < d; j++) {
      const v = x[xo + j];
      s0 += v * y[p0 + j], s1 += v * y[p1 + j], s2 += v * y[p2 + j], s3 += v * y[p3 + j];
    }
    keys[c] = yNorm[r0] - 2 * s0, keys[c + 1] = yNorm[r1] - 2 * s1;
    keys[c + 2] = yNorm[r2] - 2 * s2, keys[c + 3] = yNorm[r3] - 2 * s3;
  }
  for (; c < n; c++) {
    const r = rows[c], p = r * d;
    let s = 0;
    for (let j = 0; j < d; j++) s += x[xo + j] * y[p + j];
    keys[c] = yNorm[r] - 2 * s;
  }
}

/**
 * The quantised reference for `screenedScan`, or null where the screen does
 * not apply (no WebAssembly SIMD; magnitudes beyond what it handles): then
 * the caller scans in float64.
 */
export function screenFor(
  y: FloatRows,
  nTrain: number,
  d: number,
  levels?: 1 | 2,
): ScreenDots | null {
  if (!simdAvailable()) return null;
  try {
    return new ScreenDots(y, nTrain, d, {
      maxQueries: QUERY_BLOCK,
      maxRows: TRAIN_BLOCK,
      levels,
    });
  } catch (e) {
    if (e instanceof RangeError) return null;
    throw e;
  }
}

/**
 * The screened search on this thread (module comment): the float64
 * brute-force search's result, faster. Falls back to that search where
 * WebAssembly SIMD is missing. `levels` forces the screen's levels (1:
 * 16-bit codes only; default: both where relaxed SIMD compiles).
 */
export function screenedNeighborSearch(
  train: Matrix,
  queries: Matrix,
  ks: readonly number[],
  levels?: 1 | 2,
): Neighbors[] {
  return bruteForceNeighbors(train, queries, ks, (x, q0, q1, y, n, yNorm, d, heaps) => {
    const dots = screenFor(y, n, d, levels);
    if (dots) screenedScan(x, q0, q1, y, n, yNorm, d, heaps, dots);
    else scanQueries(x, q0, q1, y, n, yNorm, d, heaps);
  });
}

/**
 * The exact kNN search, fast: a `NeighborSearch` whose answer is the float64
 * brute-force search's (eval/knn.ts) bit for bit — same neighbours, same
 * tie-breaks, same distances — at a third to a fifth of its cost.
 *
 * Two passes per block of queries:
 * 1. **Screen** (float32, WebAssembly SIMD, eval/f32_dots.ts): keys
 *    k₃₂ = ‖y‖² − 2·x·y₃₂ for every training row, in training order; a
 *    max-heap keeps the K smallest (K = the largest k asked for), and every
 *    row whose k₃₂ is within 2e of the heap's current worst is recorded as a
 *    candidate, where e = 2·(γ_(d+2) + 3u)·‖x‖·max‖y‖ bounds |k₃₂ − k₆₄|
 *    (γ from the float32 dot's rounding, 3u from rounding inputs to float32).
 * 2. **Decide** (float64): the candidates that can be among the final K
 *    (k₃₂ within 2e of the final K-th smallest) get their keys recomputed
 *    exactly as the float64 search computes them (same dot-product order,
 *    same norms) and are pushed, in training order, into `NeighborHeaps`
 *    (scikit-learn's heap). Where two of them have equal exact keys at a
 *    k-th place, every candidate is replayed instead (below).
 *
 * Why it is exact: a row t among the true K nearest has k₃₂(t) ≤ k₆₄(t) + e
 * ≤ K₆₄ + e ≤ K₃₂ + 2e (the K rows with the smallest k₃₂ have k₆₄ ≤ K₃₂ + e),
 * so it is a final candidate, and any other row has k₆₄ > K₆₄. Without an
 * exact tie at the k-th place the k nearest form one set, whatever order a
 * heap saw them in, and the output is sorted by (key, index). With a tie,
 * scikit-learn's heap keeps the one its history favours, so the history is
 * replayed: the float64 search changes a heap at row t only when k₆₄(t) is
 * below the heap's worst, the k-th (≤ K-th) smallest k₆₄ of the rows before
 * t, at most e above the screen's worst then; so k₃₂(t) < worst₃₂ + 2e and
 * row t was recorded. Rows not recorded would leave every heap as it is, and
 * pushing a row that does not beat the worst is a no-op too, so the replay
 * makes the same changes in the same order: the same heaps.
 */
import { F32Dots, simdAvailable } from "./f32_dots.ts";
import { bruteForceNeighbors, NeighborHeaps, type Neighbors, scanQueries } from "./knn.ts";
import type { Matrix } from "./matrix.ts";

const QUERY_BLOCK = 128;
const TRAIN_BLOCK = 512;

/**
 * Feeds queries [q0, q1) of `x` against all `nTrain` rows of `y` into `heaps`
 * (query q at q − q0), screening in float32 with `dots` (which holds `y`).
 * Same contract and same result as `scanQueries`.
 */
export function screenedScan(
  x: Float64Array,
  q0: number,
  q1: number,
  y: Float64Array,
  nTrain: number,
  yNorm: Float64Array,
  d: number,
  heaps: readonly NeighborHeaps[],
  dots: F32Dots,
): void {
  const K = Math.max(...heaps.map((h) => h.k));
  let maxY = 0;
  for (let t = 0; t < nTrain; t++) maxY = Math.max(maxY, yNorm[t]);
  maxY = Math.sqrt(maxY);
  const u = 2 ** -24;
  const slack = 2 * (dots.gamma + 3 * u);
  // Beyond float32's range the screen would overflow: decide everything in float64.
  if (!(maxY < 1e18)) {
    scanQueries(x, q0, q1, y, nTrain, yNorm, d, heaps);
    return;
  }
  const ksAsked = heaps.map((h) => h.k);
  for (let b0 = q0; b0 < q1; b0 += QUERY_BLOCK) {
    const b1 = Math.min(b0 + QUERY_BLOCK, q1);
    const nb = b1 - b0;
    const screen = new NeighborHeaps(nb, K);
    const margin = new Float64Array(nb);
    for (let i = 0; i < nb; i++) {
      let s = 0;
      const o = (b0 + i) * d;
      for (let t = 0; t < d; t++) s += x[o + t] * x[o + t];
      // 2e, plus a little for the float64 key's own rounding.
      margin[i] = 2 * slack * Math.sqrt(s) * maxY * (1 + 1e-9) + 1e-300;
    }
    const candRows: number[][] = Array.from({ length: nb }, () => []);
    const candKeys: number[][] = Array.from({ length: nb }, () => []);
    const keys = screen.keys;
    for (let t0 = 0; t0 < nTrain; t0 += TRAIN_BLOCK) {
      const t1 = Math.min(t0 + TRAIN_BLOCK, nTrain);
      const { out, ldo } = dots.dots(x, b0, b1, t0, t1);
      for (let i = 0; i < nb; i++) {
        const rows = candRows[i], ck = candKeys[i];
        const o = i * ldo - t0;
        const m = margin[i];
        for (let t = t0; t < t1; t++) {
          const key = yNorm[t] - 2 * out[o + t];
          const worst = keys[i * K];
          if (key <= worst + m) {
            rows.push(t);
            ck.push(key);
            if (key < worst) screen.push(i, key, t);
          }
        }
      }
    }
    for (let i = 0; i < nb; i++) {
      const rows = candRows[i], ck = candKeys[i];
      const exact = (t: number) => {
        const xo = (b0 + i) * d, yo = t * d;
        let s = 0;
        for (let j = 0; j < d; j++) s += x[xo + j] * y[yo + j];
        return yNorm[t] - 2 * s;
      };
      // The rows that can be among the final K: their exact keys decide the sets.
      const limit = keys[i * K] + margin[i];
      const finals: number[] = [], finalKeys: number[] = [];
      for (let c = 0; c < rows.length; c++) {
        if (ck[c] <= limit) finals.push(rows[c]), finalKeys.push(exact(rows[c]));
      }
      const sorted = Float64Array.from(finalKeys).sort();
      const unique = ksAsked.every((k) => sorted.length <= k || sorted[k - 1] !== sorted[k]);
      const q = b0 - q0 + i;
      if (unique) {
        finals.forEach((t, c) => {
          for (const h of heaps) h.push(q, finalKeys[c], t);
        });
      } else {
        // An exact tie at a boundary: which row wins depends on the heap's history. Replay it.
        for (let c = 0; c < rows.length; c++) {
          const key = exact(rows[c]);
          for (const h of heaps) h.push(q, key, rows[c]);
        }
      }
    }
  }
}

/**
 * The screened search on this thread (module comment): the float64
 * brute-force search's result, faster. Falls back to that search where
 * WebAssembly SIMD is missing.
 */
export function screenedNeighborSearch(
  train: Matrix,
  queries: Matrix,
  ks: readonly number[],
): Neighbors[] {
  if (!simdAvailable()) return bruteForceNeighbors(train, queries, ks);
  return bruteForceNeighbors(
    train,
    queries,
    ks,
    (x, q0, q1, y, n, yNorm, d, heaps) =>
      screenedScan(x, q0, q1, y, n, yNorm, d, heaps, new F32Dots(y, n, d)),
  );
}

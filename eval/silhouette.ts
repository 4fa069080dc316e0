/**
 * Silhouette coefficients with scikit-learn 1.2's definitions
 * (`sklearn.metrics.silhouette_samples` / `silhouette_score`, Euclidean):
 * for cell i in cluster A,
 *   a(i) = mean distance to the other cells of A (sum / (|A| − 1)),
 *   b(i) = min over clusters B ≠ A of the mean distance to the cells of B,
 *   s(i) = (b − a) / max(a, b), and 0 for a cluster of one cell.
 * `silhouette_score` is the mean of s over cells (over a seeded sample of
 * `sampleSize` cells when given: `RandomState(seed).permutation(n)[:size]`,
 * as scikit-learn draws it).
 *
 * Distances are scikit-learn's: √max(‖x‖² − 2x·y + ‖y‖², 0) in float64 with
 * the diagonal set to 0, accumulated per cluster in row blocks (memory
 * n × clusters, never n × n). Several labelings share one distance pass
 * (`silhouetteSamplesMany`). Cost: n² · dim multiply-adds.
 */
import { dotBlock, rowNormsSq } from "./blas.ts";
import { encodeLabels, type Label } from "./labels.ts";
import { type Matrix, takeRows, toFloat64 } from "./matrix.ts";
import { NumpyRandomState } from "./numpy_random.ts";

const ROW_BLOCK = 64;

/** Throws unless 2 ≤ clusters ≤ n − 1 (scikit-learn's `check_number_of_labels`). */
function checkClusters(nLabels: number, n: number, what: string): void {
  if (nLabels < 2 || nLabels > n - 1) {
    throw new RangeError(
      `silhouette (${what}): ${nLabels} distinct labels for ${n} cells; the silhouette needs ` +
        `between 2 and n − 1 = ${n - 1} groups`,
    );
  }
}

/**
 * Silhouette coefficient of every row of `x` under each labeling in
 * `labelings` (each one label per row), from one pass over the distances.
 */
export function silhouetteSamplesMany(
  x: Matrix,
  labelings: readonly (readonly Label[])[],
  names: readonly string[] = labelings.map((_, i) => `labeling ${i}`),
): Float64Array[] {
  const n = x.rows;
  const d = x.cols;
  const enc = labelings.map((l, i) => {
    if (l.length !== n) {
      throw new RangeError(`silhouette (${names[i]}): ${l.length} labels for ${n} cells`);
    }
    const e = encodeLabels(l, undefined, `silhouette (${names[i]})`);
    checkClusters(e.classes.length, n, names[i]);
    const freq = new Float64Array(e.classes.length);
    for (const c of e.codes) freq[c]++;
    return {
      codes: e.codes,
      L: e.classes.length,
      freq,
      sums: new Float64Array(n * e.classes.length),
    };
  });
  const xs = toFloat64(x);
  const norms = rowNormsSq(xs, n, d);
  const block = new Float64Array(ROW_BLOCK * n);
  for (let i0 = 0; i0 < n; i0 += ROW_BLOCK) {
    const i1 = Math.min(i0 + ROW_BLOCK, n);
    dotBlock(xs, i0, i1, xs, 0, n, d, block, n);
    for (let i = i0; i < i1; i++) {
      const r = (i - i0) * n;
      for (let j = 0; j < n; j++) {
        const sq = -2 * block[r + j] + norms[i] + norms[j];
        block[r + j] = i === j ? 0 : Math.sqrt(Math.max(sq, 0));
      }
      for (const e of enc) {
        const o = i * e.L;
        for (let j = 0; j < n; j++) e.sums[o + e.codes[j]] += block[r + j];
      }
    }
  }
  return enc.map((e) => {
    const out = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      const own = e.codes[i];
      const o = i * e.L;
      const a = e.sums[o + own] / (e.freq[own] - 1);
      let b = Infinity;
      for (let c = 0; c < e.L; c++) if (c !== own) b = Math.min(b, e.sums[o + c] / e.freq[c]);
      const s = (b - a) / Math.max(a, b);
      // A cluster of one cell (0/0) and coincident points give NaN: scikit-learn's nan_to_num → 0.
      out[i] = Number.isFinite(s) ? s : 0;
    }
    return out;
  });
}

/** `silhouette_samples(X, labels)`. */
export function silhouetteSamples(x: Matrix, labels: readonly Label[]): Float64Array {
  return silhouetteSamplesMany(x, [labels], ["labels"])[0];
}

/**
 * The rows `silhouette_score(..., sample_size, random_state=seed)` scores:
 * all of them, or the first `sampleSize` of numpy's permutation.
 */
export function silhouetteSample(n: number, sampleSize?: number, seed = 0): number[] {
  if (sampleSize === undefined || sampleSize >= n) return Array.from({ length: n }, (_, i) => i);
  if (!Number.isInteger(sampleSize) || sampleSize < 2) {
    throw new RangeError(`silhouette: sampleSize ${sampleSize} must be an integer ≥ 2`);
  }
  return [...new NumpyRandomState(seed).permutation(n).slice(0, sampleSize)];
}

/** `silhouette_score(X, labels, sample_size=sampleSize, random_state=seed)`. */
export function silhouetteScore(
  x: Matrix,
  labels: readonly Label[],
  opts: { sampleSize?: number; seed?: number } = {},
): number {
  const idx = silhouetteSample(x.rows, opts.sampleSize, opts.seed);
  const s = idx.length === x.rows
    ? silhouetteSamples(x, labels)
    : silhouetteSamples(takeRows(x, idx), idx.map((i) => labels[i]));
  let sum = 0;
  for (const v of s) sum += v;
  return sum / s.length;
}

/**
 * k-nearest-neighbour classification with scikit-learn's
 * `KNeighborsClassifier(n_neighbors=k)` semantics (Euclidean, uniform votes,
 * brute force, as scikit-learn picks for more than 15 features).
 *
 * Neighbour choice on equal distances: scikit-learn scans training rows in
 * index order and keeps a fixed-size max-heap per query, replacing the root
 * only on a strictly smaller distance (`sklearn.utils._heap.heap_push`).
 * `NeighborHeaps` reproduces that heap exactly, so the neighbour *set* is
 * scikit-learn's even on exact ties (for k = 1: the lowest training index
 * among the nearest). Returned neighbours are ordered by (distance, index);
 * scikit-learn's final sort is not stable, so its order among equal
 * distances may differ, which uniform votes do not see. Distances are
 * compared as ‖y‖² − 2x·y in float64, scikit-learn's key; values that tie
 * in exact arithmetic but not after rounding can still go either way.
 *
 * Vote ties go to the smallest class index (`scipy.stats.mode`), i.e. the
 * first class in sorted label order.
 *
 * The search is one replaceable function (`NeighborSearch`): the CPU one
 * here, a GPU one later, both feeding their distance blocks to `NeighborHeaps`.
 */
import { encodeLabels, type Label } from "./labels.ts";
import { dotBlock, rowNormsSq } from "./blas.ts";
import { type Matrix, sameCols, toFloat64 } from "./matrix.ts";
import { heapPush } from "../kernels/knn_select.ts";

/** The k nearest training rows of each query, nearest first. */
export interface Neighbors {
  k: number;
  /** [queries, k] training row indices. */
  indices: Int32Array;
  /** [queries, k] Euclidean distances. */
  distances: Float64Array;
}

/**
 * Finds, for every query row, the k nearest training rows for each k in
 * `ks` (one scan serves several k, each with its own heap).
 */
export type NeighborSearch = (
  train: Matrix,
  queries: Matrix,
  ks: readonly number[],
) => Neighbors[] | Promise<Neighbors[]>;

/**
 * Fixed-size max-heaps, one per query, fed candidate (key, index) pairs in
 * increasing index order. Keys are squared-distance keys (smaller is nearer).
 */
export class NeighborHeaps {
  readonly k: number;
  readonly keys: Float64Array;
  readonly indices: Int32Array;

  /**
   * Empty heaps for `queries` queries. `keys`/`indices` ([queries·k]) may be
   * given to place the heaps in caller-owned (e.g. shared) memory; they are reset.
   */
  constructor(queries: number, k: number, keys?: Float64Array, indices?: Int32Array) {
    this.k = k;
    this.keys = keys ?? new Float64Array(queries * k);
    this.indices = indices ?? new Int32Array(queries * k);
    if (this.keys.length !== queries * k || this.indices.length !== queries * k) {
      throw new RangeError(`NeighborHeaps: storage for ${queries}×${k} has the wrong length`);
    }
    this.keys.fill(Infinity);
    this.indices.fill(-1);
  }

  /**
   * Offers candidate `index` with `key` to query `q`'s heap: kept only when
   * strictly below the current worst (so earlier rows win exact ties), then
   * sifted down exactly as scikit-learn's `heap_push`.
   */
  push(q: number, key: number, index: number): void {
    heapPush(this.keys, this.indices, q * this.k, this.k, key, index);
  }

  /**
   * The heaps as sorted neighbour lists. `queryNormSq[q]` (‖x‖²) turns keys
   * into distances: sqrt(max(key + ‖x‖², 0)), as scikit-learn does.
   */
  finish(queryNormSq: Float64Array): Neighbors {
    return sortHeaps(this.k, this.keys, this.indices, queryNormSq);
  }
}

/**
 * Sorts filled heap storage ([queries·k] keys and indices, as `NeighborHeaps`
 * leaves it) into neighbour lists ordered by (distance, index).
 */
export function sortHeaps(
  k: number,
  keys: Float64Array,
  heapIndices: Int32Array,
  queryNormSq: Float64Array,
): Neighbors {
  const n = queryNormSq.length;
  const indices = new Int32Array(n * k);
  const distances = new Float64Array(n * k);
  const order = Array.from({ length: k }, (_, i) => i);
  for (let q = 0; q < n; q++) {
    const o = q * k;
    order.sort((a, b) => keys[o + a] - keys[o + b] || heapIndices[o + a] - heapIndices[o + b]);
    for (let r = 0; r < k; r++) {
      indices[o + r] = heapIndices[o + order[r]];
      distances[o + r] = Math.sqrt(Math.max(keys[o + order[r]] + queryNormSq[q], 0));
    }
  }
  return { k, indices, distances };
}

/** Block sizes of the CPU search (rows of queries × rows of training data per step). */
const QUERY_BLOCK = 64;
const TRAIN_BLOCK = 128;

/**
 * Brute-force CPU search in float64: blocks of ‖y‖² − 2x·y fed, in training
 * index order, to one `NeighborHeaps` per k. Cost: queries × train × dim
 * multiply-adds (10k × 10k × 1024 is ~10^11, about a minute on one core).
 * `scan` replaces the scan with one of the same contract and result (the
 * screened scan, eval/knn_screened.ts).
 */
export function bruteForceNeighbors(
  train: Matrix,
  queries: Matrix,
  ks: readonly number[],
  scan: typeof scanQueries = scanQueries,
): Neighbors[] {
  sameCols(train, queries, "kNeighbors");
  checkKs(ks, train.rows, "kNeighbors");
  const d = train.cols;
  const x = toFloat64(queries);
  const y = toFloat64(train);
  const yNorm = rowNormsSq(y, train.rows, d);
  const heaps = ks.map((k) => new NeighborHeaps(queries.rows, k));
  scan(x, 0, queries.rows, y, train.rows, yNorm, d, heaps);
  const xNorm = rowNormsSq(x, queries.rows, d);
  return heaps.map((h) => h.finish(xNorm));
}

/**
 * Feeds queries [q0, q1) of `x` against all `nTrain` rows of `y`, in training
 * order, into `heaps` (whose query q is `q − q0`). The one scan both the
 * single-threaded and the worker search run, so they agree exactly.
 */
export function scanQueries(
  x: Float64Array,
  q0: number,
  q1: number,
  y: Float64Array,
  nTrain: number,
  yNorm: Float64Array,
  d: number,
  heaps: readonly NeighborHeaps[],
): void {
  const block = new Float64Array(QUERY_BLOCK * TRAIN_BLOCK);
  for (let b0 = q0; b0 < q1; b0 += QUERY_BLOCK) {
    const b1 = Math.min(b0 + QUERY_BLOCK, q1);
    for (let t0 = 0; t0 < nTrain; t0 += TRAIN_BLOCK) {
      const t1 = Math.min(t0 + TRAIN_BLOCK, nTrain);
      dotBlock(x, b0, b1, y, t0, t1, d, block, TRAIN_BLOCK);
      for (let q = b0; q < b1; q++) {
        const r = (q - b0) * TRAIN_BLOCK;
        for (let t = t0; t < t1; t++) {
          const key = yNorm[t] - 2 * block[r + t - t0];
          for (const h of heaps) h.push(q - q0, key, t);
        }
      }
    }
  }
}

/** The default `NeighborSearch`: `bruteForceNeighbors` on the CPU. */
export const cpuNeighborSearch: NeighborSearch = bruteForceNeighbors;

/** Throws unless every k is an integer in [1, nTrain]. */
export function checkKs(ks: readonly number[], nTrain: number, op: string): void {
  if (ks.length === 0) throw new RangeError(`${op}: no k given`);
  for (const k of ks) {
    if (!Number.isInteger(k) || k < 1) throw new RangeError(`${op}: k=${k} must be an integer ≥ 1`);
    if (k > nTrain) {
      throw new RangeError(
        `${op}: k=${k} exceeds the ${nTrain} training samples; use k ≤ ${nTrain}`,
      );
    }
  }
}

/** Options of `KNeighborsClassifier`. */
export interface KnnOptions {
  /** The neighbour search; the CPU float64 search by default. */
  search?: NeighborSearch;
}

/**
 * A fitted kNN classifier: the training matrix and its encoded labels. One
 * search serves several k (`predictMany`), as the protocol's k ∈ {1, 20}.
 */
export class KNeighborsClassifier {
  readonly classes: Label[];
  readonly #codes: Int32Array;
  readonly #train: Matrix;
  readonly #search: NeighborSearch;

  /** Fits (stores) `train` with one label per row. */
  constructor(train: Matrix, labels: readonly Label[], opts: KnnOptions = {}) {
    if (labels.length !== train.rows) {
      throw new RangeError(
        `KNeighborsClassifier: ${labels.length} labels for ${train.rows} training rows`,
      );
    }
    const enc = encodeLabels(labels, undefined, "KNeighborsClassifier: labels");
    this.classes = enc.classes;
    this.#codes = enc.codes;
    this.#train = train;
    this.#search = opts.search ?? cpuNeighborSearch;
  }

  /** The k nearest training rows of each query, for each k in `ks`. */
  async kneighbors(queries: Matrix, ks: readonly number[]): Promise<Neighbors[]> {
    sameCols(this.#train, queries, "KNeighborsClassifier");
    checkKs(ks, this.#train.rows, "KNeighborsClassifier");
    return await this.#search(this.#train, queries, ks);
  }

  /**
   * Uniform-vote class probabilities [queries, classes] from neighbours
   * (`predict_proba`): the share of the k neighbours in each class.
   */
  voteProba(nb: Neighbors): Float64Array {
    const c = this.classes.length;
    const n = nb.indices.length / nb.k;
    const out = new Float64Array(n * c);
    for (let q = 0; q < n; q++) {
      for (let r = 0; r < nb.k; r++) out[q * c + this.#codes[nb.indices[q * nb.k + r]]] += 1;
      for (let j = 0; j < c; j++) out[q * c + j] /= nb.k;
    }
    return out;
  }

  /** Majority vote per query; ties go to the smallest class index. Returns class indices. */
  vote(nb: Neighbors): Int32Array {
    const c = this.classes.length;
    const n = nb.indices.length / nb.k;
    const out = new Int32Array(n);
    const counts = new Int32Array(c);
    for (let q = 0; q < n; q++) {
      counts.fill(0);
      for (let r = 0; r < nb.k; r++) counts[this.#codes[nb.indices[q * nb.k + r]]]++;
      let best = 0;
      for (let j = 1; j < c; j++) if (counts[j] > counts[best]) best = j;
      out[q] = best;
    }
    return out;
  }

  /** Predicted labels for each k in `ks`, from one search. */
  async predictMany(queries: Matrix, ks: readonly number[]): Promise<Label[][]> {
    const nbs = await this.kneighbors(queries, ks);
    return nbs.map((nb) => Array.from(this.vote(nb), (i) => this.classes[i]));
  }

  /** Predicted labels with k neighbours. */
  async predict(queries: Matrix, k: number): Promise<Label[]> {
    return (await this.predictMany(queries, [k]))[0];
  }
}

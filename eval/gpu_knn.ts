/**
 * kNN neighbour search on the GPU: a `NeighborSearch` (eval/knn.ts) for
 * large sets. Per block of queries X and block of training rows Y, the dot
 * products G = Y·Xᵀ come from the matmul kernel; the selection kernel
 * (kernels/knn_select.ts, one thread per query) turns each column into keys
 * ‖y‖² − 2x·y and pushes them, in training-index order, into a per-query
 * max-heap of size k that stays on the GPU between training blocks. The heap
 * push is scikit-learn's `heap_push` step for step (as `NeighborHeaps.push`):
 * a row enters only when strictly nearer than the current worst, so exact ties
 * resolve as scikit-learn's do: for k = 1 to the lowest training index among
 * the nearest, and for any k to the same neighbour set as its heap.
 *
 * Precision: keys are computed in f32 (the CPU search uses float64). Keys
 * that differ by less than f32 rounding (~1e-7·‖y‖²) can order differently
 * from float64, so near ties may pick a different neighbour than the CPU
 * search; exact ties (duplicate rows) still go to the lower index. Returned
 * distances are sqrt(key + ‖x‖²) with the f32 key and a float64 ‖x‖².
 *
 * Memory: training rows are uploaded once per search, in blocks that each
 * fit one binding; query blocks are sized so a dot block [train block,
 * query block] fits one binding. Cost: queries × train × dim multiply-adds
 * on the GPU, plus queries × train heap tests.
 */
import { knnSelect, MAX_SELECT_K } from "../kernels/knn_select.ts";
import { matmul } from "../kernels/matmul/mod.ts";
import type { Gpu } from "../kernels/runtime.ts";
import type { GpuTensor } from "../kernels/tensor.ts";
import { rowNormsSq } from "./blas.ts";
import { checkKs, type Neighbors, type NeighborSearch, sortHeaps } from "./knn.ts";
import { type Matrix, sameCols, toFloat64 } from "./matrix.ts";

/** The largest k the GPU search supports (what the selection kernel keeps in registers). */
export const MAX_GPU_K = MAX_SELECT_K;

/**
 * Above this many multiply-adds (queries × reference rows × dim) `device:
 * auto` (eval, predict) runs kNN on a hardware GPU.
 */
export const GPU_KNN_WORK = 2e9;

/** Options of `gpuNeighborSearch` (block sizes; the defaults fit the binding limit). */
export interface GpuKnnOptions {
  /** Queries per block (default: up to 2048, fewer when a dot block would not fit a binding). */
  queryBlock?: number;
  /** Training rows per block (default: as many as fit a binding). */
  trainBlock?: number;
}

/**
 * A `NeighborSearch` running on `gpu` (see the module comment). k ≤ 20;
 * larger k are refused with a pointer to the CPU search.
 */
export function gpuNeighborSearch(gpu: Gpu, opts: GpuKnnOptions = {}): NeighborSearch {
  return async (train: Matrix, queries: Matrix, ks: readonly number[]): Promise<Neighbors[]> => {
    sameCols(train, queries, "kNeighbors (GPU)");
    checkKs(ks, train.rows, "kNeighbors (GPU)");
    for (const k of ks) {
      if (k > MAX_GPU_K) {
        throw new RangeError(
          `kNeighbors (GPU): k=${k} exceeds the GPU search's ${MAX_GPU_K}; use the CPU search ` +
            `(--device cpu) for larger k`,
        );
      }
    }
    const d = train.cols;
    const nTrain = train.rows;
    const nq = queries.rows;
    const limit = Math.floor(gpu.limits.maxStorageBufferBindingSize / 4);
    if (nTrain > limit) {
      throw new RangeError(
        `kNeighbors (GPU): ${nTrain} training rows exceed one binding of norms (${limit})`,
      );
    }
    if (d > limit) {
      throw new RangeError(`kNeighbors (GPU): ${d} features per row exceed one binding`);
    }
    // A query block [qb, d] and a dot block [tb, qb] must each fit one binding.
    const qb = Math.max(1, Math.min(nq, opts.queryBlock ?? 2048, Math.floor(limit / d)));
    const tb = Math.max(
      1,
      Math.min(nTrain, opts.trainBlock ?? Infinity, Math.floor(limit / Math.max(d, qb))),
    );
    const yf = train.data instanceof Float32Array ? train.data : Float32Array.from(train.data);
    const xf = queries.data instanceof Float32Array
      ? queries.data
      : Float32Array.from(queries.data);
    // ‖y‖² of the f32 rows the GPU multiplies, accumulated in float64.
    const yNorm = Float32Array.from(rowNormsSq(Float64Array.from(yf), nTrain, d));
    const xNorm = rowNormsSq(toFloat64(queries), nq, d);
    const owned: GpuTensor[] = [];
    const keysAll = ks.map((k) => new Float64Array(nq * k));
    const idxAll = ks.map((k) => new Int32Array(nq * k));
    try {
      const yBlocks: { t0: number; rows: number; y: GpuTensor }[] = [];
      for (let t0 = 0; t0 < nTrain; t0 += tb) {
        const rows = Math.min(tb, nTrain - t0);
        const y = gpu.tensor(yf.subarray(t0 * d, (t0 + rows) * d), [rows, d], "knn-train");
        owned.push(y);
        yBlocks.push({ t0, rows, y });
      }
      const ynorm = gpu.tensor(yNorm, [nTrain], "knn-norms");
      owned.push(ynorm);
      for (let q0 = 0; q0 < nq; q0 += qb) {
        const rows = Math.min(qb, nq - q0);
        const x = gpu.tensor(xf.subarray(q0 * d, (q0 + rows) * d), [rows, d], "knn-queries");
        const heaps = ks.map((k) => ({
          keys: gpu.empty([rows, k], "f32", "knn-heap-keys"),
          idx: gpu.empty([rows, k], "i32", "knn-heap-rows"),
        }));
        try {
          for (const [b, blk] of yBlocks.entries()) {
            const dots = matmul(gpu, blk.y, x, { transB: true }); // [rows of y, queries]
            const block = { queries: rows, rows: blk.rows, first: blk.t0, fresh: b === 0 };
            for (const h of heaps) knnSelect(gpu, dots, ynorm, h, block);
            gpu.release(dots);
          }
          const got = await gpu.readMany(heaps.flatMap((h) => [h.keys, h.idx]));
          ks.forEach((k, j) => {
            keysAll[j].set(got[2 * j] as Float32Array, q0 * k);
            idxAll[j].set(got[2 * j + 1] as Int32Array, q0 * k);
          });
        } finally {
          gpu.release(x, ...heaps.flatMap((h) => [h.keys, h.idx]));
        }
      }
    } finally {
      gpu.release(...owned);
    }
    return ks.map((k, j) => sortHeaps(k, keysAll[j], idxAll[j], xNorm));
  };
}

/**
 * Worker threads for the CPU-heavy evaluation maths: the kNN scan (queries
 * split across threads) and the linear probe's objective (rows split across
 * threads). Data goes to the workers once, in SharedArrayBuffers; each job
 * is one message per worker and one reply.
 *
 * Exactness: a kNN query's heap is built by one thread scanning the training
 * rows in order, so threaded neighbours equal single-threaded ones exactly.
 * The probe's loss and gradient are sums of per-thread partial sums, added
 * in thread order: deterministic for a given thread count, and equal to the
 * single-threaded sums up to rounding (~1e-16 relative).
 */
import { checkKs, type Neighbors, type NeighborSearch, sortHeaps } from "./knn.ts";
import { rowNormsSq } from "./blas.ts";
import { type Matrix, sameCols, toFloat64 } from "./matrix.ts";

/** A message to a worker. */
export type WorkerRequest =
  & { id: number }
  & (
    | { op: "share"; buf: number; kind: "f64" | "i32"; sab: SharedArrayBuffer }
    | { op: "free"; bufs: number[] }
    | {
      op: "knn";
      train: number;
      trainNormSq: number;
      nTrain: number;
      queries: number;
      q0: number;
      q1: number;
      d: number;
      ks: number[];
      keys: number[];
      indices: number[];
      /** Screen in float32 SIMD first (eval/knn_screened.ts); same result. */
      screened?: boolean;
    }
    | {
      op: "lossgrad";
      x: number;
      codes: number;
      params: number;
      grad: number;
      slot: number;
      r0: number;
      r1: number;
      m: number;
      c: number;
    }
  );

/** A worker's answer: the job's number, or the error it threw. */
export type WorkerReply = { id: number; result: number } | { id: number; error: string };

/** A buffer visible to every worker: `id` names it in jobs, `array` is the main thread's view. */
export interface Shared<T extends Float64Array | Int32Array> {
  id: number;
  array: T;
}

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

/** A pool of evaluation workers. Close it when done (workers keep the process alive). */
export class EvalThreads {
  readonly #workers: Worker[];
  readonly #pending = new Map<
    number,
    { resolve: (v: number) => void; reject: (e: Error) => void }
  >();
  #nextId = 1;
  #nextBuf = 1;
  #closed = false;

  private constructor(n: number) {
    this.#workers = Array.from({ length: n }, () => {
      const w = new Worker(new URL("./thread_worker.ts", import.meta.url).href, {
        type: "module",
      });
      w.onmessage = (e: MessageEvent<WorkerReply>) => {
        const p = this.#pending.get(e.data.id);
        if (!p) return;
        this.#pending.delete(e.data.id);
        if ("error" in e.data) p.reject(new Error(`evaluation worker: ${e.data.error}`));
        else p.resolve(e.data.result);
      };
      w.onerror = (e: ErrorEvent) => {
        e.preventDefault();
        const err = new Error(`evaluation worker crashed: ${e.message}`);
        for (const p of this.#pending.values()) p.reject(err);
        this.#pending.clear();
      };
      return w;
    });
  }

  /**
   * Starts `threads` workers (default: the machine's logical cores). Use 1
   * on machines shared with others; more threads than cores only adds overhead.
   */
  static open(threads = navigator.hardwareConcurrency || 1): EvalThreads {
    if (!Number.isInteger(threads) || threads < 1) {
      throw new RangeError(`EvalThreads: threads=${threads} must be an integer ≥ 1`);
    }
    return new EvalThreads(threads);
  }

  /** Number of workers. */
  get size(): number {
    return this.#workers.length;
  }

  /** Sends `req` to worker `w`; resolves with its result. */
  call(w: number, req: DistributiveOmit<WorkerRequest, "id">): Promise<number> {
    if (this.#closed) return Promise.reject(new Error("EvalThreads: the pool is closed"));
    const id = this.#nextId++;
    return new Promise<number>((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#workers[w].postMessage({ ...req, id });
    });
  }

  /** Copies `data` into shared memory and registers it with every worker. */
  async share<T extends Float64Array | Int32Array>(data: T): Promise<Shared<T>> {
    const sab = new SharedArrayBuffer(data.byteLength);
    const array = (data instanceof Float64Array ? new Float64Array(sab) : new Int32Array(sab)) as T;
    array.set(data);
    const id = this.#nextBuf++;
    const kind = data instanceof Float64Array ? "f64" : "i32";
    await Promise.all(
      this.#workers.map((_, w) => this.call(w, { op: "share", buf: id, kind, sab })),
    );
    return { id, array };
  }

  /** Forgets shared buffers in every worker (the memory goes once the main views go too). */
  async free(...bufs: Shared<Float64Array | Int32Array>[]): Promise<void> {
    const ids = bufs.map((b) => b.id);
    await Promise.all(this.#workers.map((_, w) => this.call(w, { op: "free", bufs: ids })));
  }

  /** Terminates the workers; pending jobs fail. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const w of this.#workers) w.terminate();
    const err = new Error("EvalThreads: closed while a job was running");
    for (const p of this.#pending.values()) p.reject(err);
    this.#pending.clear();
  }
}

/** Splits [0, n) into at most `parts` contiguous non-empty ranges. */
export function splitRange(n: number, parts: number): [number, number][] {
  const out: [number, number][] = [];
  const step = Math.ceil(n / Math.max(1, parts));
  for (let a = 0; a < n; a += step) out.push([a, Math.min(n, a + step)]);
  return out;
}

/**
 * A `NeighborSearch` that spreads the queries over the pool's workers.
 * Results are identical to `bruteForceNeighbors` (each query is scanned by
 * one thread in training order); `screened` screens in float32 SIMD first
 * (eval/knn_screened.ts: same result, 3–5× faster).
 */
export function threadedNeighborSearch(
  threads: EvalThreads,
  opts: { screened?: boolean } = {},
): NeighborSearch {
  return async (train: Matrix, queries: Matrix, ks: readonly number[]): Promise<Neighbors[]> => {
    sameCols(train, queries, "kNeighbors");
    checkKs(ks, train.rows, "kNeighbors");
    const d = train.cols;
    const y = toFloat64(train);
    const x = toFloat64(queries);
    const sy = await threads.share(y);
    const sx = await threads.share(x);
    const sn = await threads.share(rowNormsSq(y, train.rows, d));
    const keys = await Promise.all(
      ks.map((k) => threads.share(new Float64Array(queries.rows * k))),
    );
    const idx = await Promise.all(ks.map((k) => threads.share(new Int32Array(queries.rows * k))));
    try {
      await Promise.all(
        splitRange(queries.rows, threads.size).map(([q0, q1], w) =>
          threads.call(w, {
            op: "knn",
            train: sy.id,
            trainNormSq: sn.id,
            nTrain: train.rows,
            queries: sx.id,
            q0,
            q1,
            d,
            ks: [...ks],
            keys: keys.map((b) => b.id),
            indices: idx.map((b) => b.id),
            screened: opts.screened,
          })
        ),
      );
      const xNorm = rowNormsSq(x, queries.rows, d);
      return ks.map((k, j) => sortHeaps(k, keys[j].array, idx[j].array, xNorm));
    } finally {
      await threads.free(sy, sx, sn, ...keys, ...idx);
    }
  };
}

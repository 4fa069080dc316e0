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
import { checkKs, type Neighbors, type NeighborSearch } from "./knn.ts";
import { simdAvailable } from "./screen_dots.ts";
import { type Matrix, sameCols, toFloat64 } from "./matrix.ts";

/** The element types a shared buffer can have. */
export type SharedKind = "f64" | "f32" | "i32";
/** The arrays a shared buffer can be viewed as. */
export type SharedArray = Float64Array | Float32Array | Int32Array;

/** A message to a worker. */
export type WorkerRequest =
  & { id: number }
  & (
    | { op: "share"; buf: number; kind: SharedKind; sab: SharedArrayBuffer }
    | { op: "free"; bufs: number[] }
    | {
      op: "knn";
      /** Training rows, float64 (or float32 when screened). */
      train: number;
      nTrain: number;
      /** Query rows, float64 (or float32 when screened). */
      queries: number;
      q0: number;
      q1: number;
      d: number;
      ks: number[];
      /** Per k: the sorted neighbours' distances [queries·k] (f64) and rows (i32). */
      distances: number[];
      indices: number[];
      /** Screen with 16-bit codes in SIMD first (eval/knn_screened.ts); same result. */
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
export interface Shared<T extends SharedArray> {
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
  async share<T extends SharedArray>(data: T): Promise<Shared<T>> {
    const { id, array, ready } = this.shareNow(data);
    await ready;
    return { id, array };
  }

  /**
   * `share` without waiting: the buffer is registered by messages already
   * posted, so jobs posted after this call may use it at once (a worker takes
   * its messages in order); `ready` settles when every worker has it.
   */
  shareNow<T extends SharedArray>(data: T): Shared<T> & { ready: Promise<unknown> } {
    const sab = new SharedArrayBuffer(data.byteLength);
    const kind: SharedKind = data instanceof Float64Array
      ? "f64"
      : data instanceof Float32Array
      ? "f32"
      : "i32";
    const array = sharedView(kind, sab) as T;
    array.set(data);
    const id = this.#nextBuf++;
    const ready = Promise.all(
      this.#workers.map((_, w) => this.call(w, { op: "share", buf: id, kind, sab })),
    );
    return { id, array, ready };
  }

  /** Forgets shared buffers in every worker (the memory goes once the main views go too). */
  async free(...bufs: Shared<SharedArray>[]): Promise<void> {
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

/** A view of `sab` as `kind`'s array. */
export function sharedView(kind: SharedKind, sab: SharedArrayBuffer): SharedArray {
  return kind === "f64"
    ? new Float64Array(sab)
    : kind === "f32"
    ? new Float32Array(sab)
    : new Int32Array(sab);
}

/** Splits [0, n) into at most `parts` contiguous non-empty ranges. */
export function splitRange(n: number, parts: number): [number, number][] {
  const out: [number, number][] = [];
  const step = Math.ceil(n / Math.max(1, parts));
  for (let a = 0; a < n; a += step) out.push([a, Math.min(n, a + step)]);
  return out;
}

/**
 * The reference set a pool's workers keep between screened searches: the
 * shared copy of the last training matrix searched, and the array it was
 * copied from. Workers keep its norms and codes under the same id, so the
 * next search on the same reference (`predict` in blocks, eval's queries
 * after the OOD sample) skips copying, norms and codes. One per pool: a new
 * reference frees the last.
 */
const references = new WeakMap<EvalThreads, { source: SharedArray; shared: Shared<SharedArray> }>();

/** Whether `a` and `b` hold the same values (the cached copy still matches its source). */
function sameValues(a: SharedArray, b: SharedArray): boolean {
  if (a.length !== b.length || a.constructor !== b.constructor) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** The shared training rows for a screened search: the pool's kept copy while unchanged. */
function sharedReference(
  threads: EvalThreads,
  data: SharedArray,
): Shared<SharedArray> & { ready: Promise<unknown> } {
  const last = references.get(threads);
  if (last && last.source === data && sameValues(last.shared.array, data)) {
    return { ...last.shared, ready: Promise.resolve() };
  }
  if (last) {
    references.delete(threads);
    threads.free(last.shared).catch(() => {}); // posted before this search's messages
  }
  const shared = threads.shareNow(data);
  references.set(threads, { source: data, shared });
  return shared;
}

/**
 * A `NeighborSearch` that spreads the queries over the pool's workers.
 * Results are identical to `bruteForceNeighbors` (each query is scanned by
 * one thread in training order); `screened` screens with integer codes in
 * SIMD first (eval/knn_screened.ts: the same result, several times faster).
 * Each worker sorts its own queries' neighbours; float32 features go to the
 * screened workers as they are (their float64 values are exact), and the
 * last reference stays with the pool for the next screened search.
 */
export function threadedNeighborSearch(
  threads: EvalThreads,
  opts: { screened?: boolean } = {},
): NeighborSearch {
  return async (train: Matrix, queries: Matrix, ks: readonly number[]): Promise<Neighbors[]> => {
    sameCols(train, queries, "kNeighbors");
    checkKs(ks, train.rows, "kNeighbors");
    const d = train.cols;
    const screened = Boolean(opts.screened) && simdAvailable();
    // Shares and jobs are posted together (one round trip, and the work starts before this
    // returns its promise, so the caller's own work overlaps it). The float64 scan reads
    // float64 arrays; the screened one reads either width.
    const sy = screened ? sharedReference(threads, train.data) : threads.shareNow(toFloat64(train));
    const sx = threads.shareNow(screened ? queries.data : toFloat64(queries));
    const n = queries.rows;
    const dist = ks.map((k) => threads.shareNow(new Float64Array(n * k)));
    const idx = ks.map((k) => threads.shareNow(new Int32Array(n * k)));
    const shared = [sx, ...dist, ...idx];
    try {
      const jobs = splitRange(n, threads.size).map(([q0, q1], w) =>
        threads.call(w, {
          op: "knn",
          train: sy.id,
          nTrain: train.rows,
          queries: sx.id,
          q0,
          q1,
          d,
          ks: [...ks],
          distances: dist.map((b) => b.id),
          indices: idx.map((b) => b.id),
          screened,
        })
      );
      await Promise.all([sy.ready, ...shared.map((b) => b.ready), ...jobs]);
      // Copies: callers get ordinary (unshared) arrays.
      return ks.map((k, j) => ({
        k,
        indices: idx[j].array.slice(),
        distances: dist[j].array.slice(),
      }));
    } finally {
      // The pool keeps a screened search's reference (`references`).
      await threads.free(...shared, ...(screened ? [] : [sy]));
    }
  };
}

/**
 * Summing the student's gradients across ranks, in buckets, overlapped with
 * backward where the adapter allows.
 *
 * The gradient arena is cut into buckets: runs of whole parameters, contiguous
 * in one chunk, of about `bucketBytes`, numbered in backward order (the
 * arena's layout is forward order, so the heads' and last blocks' gradients
 * come first). While the last micro-batch's backward is being recorded,
 * `Graph.backward` reports each parameter whose gradient is final; once a
 * bucket's parameters all are, its read-back is submitted right there, in the
 * middle of backward's commands, and resolves as soon as the GPU has run that
 * far, while the GPU goes on with the earlier layers. Each bucket is then
 * allreduced on the host (MPI on a helper thread, so the event loop keeps
 * collecting read-backs) and written back.
 *
 * Buckets are reduced strictly in their index order, whatever order they
 * became ready in: MPI matches collectives by order, and a bucket that is
 * ready early on one rank and late on another must not pair with a different
 * bucket. Clipping and AdamW are recorded only after every bucket is back.
 */
import type { Param, ParamArena } from "../../graph/arena.ts";
import type { Gpu } from "../../kernels/runtime.ts";
import type { Comm } from "./comm.ts";

/** One bucket: `length` gradient elements at `offset` of chunk `chunk`. */
export interface Bucket {
  chunk: number;
  offset: number;
  length: number;
  params: readonly Param[];
}

/** DDP's default is 25 MB; 16 MiB keeps the read-back staging buffers a power of two. */
export const DEFAULT_BUCKET_BYTES = 16 * 2 ** 20;

/**
 * Buckets of `arena` in backward order: parameters taken from the end of each
 * chunk's layout backwards (last chunk first), a bucket closing when the next
 * parameter would take it past `bucketBytes` (a larger parameter gets its own).
 */
export function planBuckets(arena: ParamArena, bucketBytes = DEFAULT_BUCKET_BYTES): Bucket[] {
  if (!(bucketBytes >= 4)) throw new RangeError(`bucketBytes must be ≥ 4, got ${bucketBytes}`);
  const out: Bucket[] = [];
  for (let c = arena.chunks.length - 1; c >= 0; c--) {
    const params = arena.order.filter((p) => p.chunk === c).sort((a, b) => b.offset - a.offset);
    let cur: Param[] = [];
    let end = 0;
    const close = () => {
      if (!cur.length) return;
      const offset = cur[cur.length - 1].offset;
      out.push({ chunk: c, offset, length: end - offset, params: cur });
      cur = [];
    };
    for (const p of params) {
      if (cur.length && (end - p.offset) * 4 > bucketBytes) close();
      if (!cur.length) end = p.offset + p.numel;
      cur.push(p);
    }
    close();
  }
  return out;
}

/** What one gradient reduction did, for logs and the benchmark. */
export interface GradientSyncStats {
  buckets: number;
  /** Gradient bytes each rank sent into the allreduce. */
  bytes: number;
  /** Buckets whose read-back was submitted while backward was still being recorded. */
  early: number;
  /** Time spent inside MPI allreduce calls, summed over buckets. */
  commMs: number;
  /** Wall time from "the GPU finished backward" to "every bucket is summed and written back". */
  exposedMs: number;
}

/**
 * One step's gradient reduction. Pass `onParamReady` to the last
 * micro-batch's `Graph.backward`, then await `finish()` before clipping.
 */
export class GradientSync {
  readonly #gpu: Gpu;
  readonly #arena: ParamArena;
  readonly #buckets: readonly Bucket[];
  readonly #left: number[];
  /** Bucket of each parameter, by name (a plan fits any arena of the same layout). */
  readonly #bucketOf = new Map<string, number>();
  readonly #start: ((host: Promise<Float32Array>) => void)[] = [];
  readonly #started: boolean[];
  readonly #done: Promise<void>;
  #early = 0;
  #recording = true;
  #commMs = 0;

  constructor(gpu: Gpu, comm: Comm, arena: ParamArena, buckets: readonly Bucket[]) {
    if (!arena.hasGrads) throw new Error("GradientSync: the arena has no gradients");
    this.#gpu = gpu;
    this.#arena = arena;
    this.#buckets = buckets;
    this.#left = buckets.map((b) => b.params.length);
    this.#started = buckets.map(() => false);
    buckets.forEach((b, i) => b.params.forEach((p) => this.#bucketOf.set(p.name, i)));
    const reads = buckets.map((_, i) =>
      new Promise<Float32Array>((resolve) => (this.#start[i] = resolve))
    );
    // The chain reduces bucket i only after bucket i − 1, whatever order the reads finish in.
    let chain = Promise.resolve();
    buckets.forEach((b, i) => {
      chain = chain.then(async () => {
        const host = await reads[i];
        const t0 = performance.now();
        await comm.allreduce(host, "sum");
        this.#commMs += performance.now() - t0;
        gpu.write(this.#view(b), host);
      });
    });
    this.#done = chain;
    // Until finish() awaits it, a failure is reported there.
    this.#done.catch(() => {});
  }

  #view(b: Bucket) {
    return this.#arena.chunks[b.chunk].grad!.view(b.offset, [b.length]);
  }

  /** Graph.backward's hook: `p`'s gradient is final; a bucket whose parameters all are starts. */
  readonly onParamReady = (p: Param): void => {
    const i = this.#bucketOf.get(p.name);
    if (i === undefined || this.#started[i]) return;
    if (--this.#left[i] === 0) this.#begin(i);
  };

  #begin(i: number): void {
    this.#started[i] = true;
    if (this.#recording) this.#early++;
    // readF32 records the copy and submits now, in the middle of backward's commands.
    this.#start[i](this.#gpu.readF32(this.#view(this.#buckets[i])));
  }

  /** Starts the buckets not started yet, waits until every bucket is summed and written back. */
  async finish(): Promise<GradientSyncStats> {
    this.#recording = false;
    for (let i = 0; i < this.#buckets.length; i++) if (!this.#started[i]) this.#begin(i);
    this.#gpu.flush();
    const backwardDone = this.#gpu.device.queue.onSubmittedWorkDone().then(() => performance.now());
    await this.#done;
    const end = performance.now();
    return {
      buckets: this.#buckets.length,
      bytes: this.#buckets.reduce((n, b) => n + 4 * b.length, 0),
      early: this.#early,
      commMs: this.#commMs,
      exposedMs: Math.max(0, end - (await backwardDone)),
    };
  }
}

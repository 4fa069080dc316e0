/**
 * Resizing on worker threads: `ResizePool` runs `resizeRgb` (Pillow's
 * resampling, resample.ts: plain JavaScript, ~3 ms for a 360×363 cell to
 * 224²) on Web Workers, so the thread that drives the GPU and the loader
 * does not spend it. Same code, so the same bytes as on the calling thread.
 * Decoding itself already runs off that thread (libvips' own threads).
 */
import type { ResampleFilter } from "./resample.ts";

/** A job for a worker. */
export interface ResizeRequest {
  id: number;
  src: Uint8Array;
  w: number;
  h: number;
  ow: number;
  oh: number;
  filter: ResampleFilter;
}

/** A worker's answer. */
export type ResizeReply = { id: number; pixels: Uint8Array } | { id: number; error: string };

/** Web Workers that resize. Close it when done: workers keep the process alive. */
export class ResizePool {
  readonly #workers: Worker[];
  readonly #pending = new Map<
    number,
    { resolve: (p: Uint8Array) => void; reject: (e: Error) => void }
  >();
  #busy: number[];
  #nextId = 1;
  #closed = false;

  /** Starts `threads` workers (≥ 1). */
  constructor(threads: number) {
    if (!Number.isInteger(threads) || threads < 1) {
      throw new RangeError(`ResizePool: threads=${threads} must be an integer ≥ 1`);
    }
    this.#busy = new Array(threads).fill(0);
    this.#workers = Array.from({ length: threads }, (_, i) => {
      const w = new Worker(new URL("./resize_worker.ts", import.meta.url).href, {
        type: "module",
      });
      w.onmessage = (e: MessageEvent<ResizeReply>) => {
        this.#busy[i]--;
        const p = this.#pending.get(e.data.id);
        if (!p) return;
        this.#pending.delete(e.data.id);
        if ("error" in e.data) p.reject(new RangeError(e.data.error));
        else p.resolve(e.data.pixels);
      };
      w.onerror = (e: ErrorEvent) => {
        e.preventDefault();
        this.#fail(new Error(`resize worker crashed: ${e.message}`));
      };
      return w;
    });
  }

  /** Number of workers. */
  get size(): number {
    return this.#workers.length;
  }

  /** `resizeRgb(src, w, h, ow, oh, filter)` on the least busy worker (`src` is copied). */
  resize(
    src: Uint8Array,
    w: number,
    h: number,
    ow: number,
    oh: number,
    filter: ResampleFilter,
  ): Promise<Uint8Array> {
    if (this.#closed) return Promise.reject(new Error("ResizePool: the pool is closed"));
    const id = this.#nextId++;
    const i = this.#busy.indexOf(Math.min(...this.#busy));
    this.#busy[i]++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      const req: ResizeRequest = { id, src, w, h, ow, oh, filter };
      this.#workers[i].postMessage(req);
    });
  }

  /** Terminates the workers; resizes still running fail. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const w of this.#workers) w.terminate();
    this.#fail(new Error("ResizePool: closed while a resize was running"));
  }

  #fail(err: Error): void {
    for (const p of this.#pending.values()) p.reject(err);
    this.#pending.clear();
  }
}

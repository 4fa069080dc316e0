/**
 * The page's handle on its engine worker (app/worker.ts): starts it, turns
 * its messages into promises and callbacks, and replaces it when it dies
 * (a lost device takes the worker's GPU state with it; the page's results
 * live here, on the page side, and survive).
 */
import type {
  AdapterInfo,
  CellJob,
  FailureKind,
  FromEngine,
  ModelInfo,
  ToEngine,
} from "./protocol.ts";

/** What an embedding job reports as it goes. */
export interface JobEvents {
  rows(ids: number[], features: Float32Array, dim: number): void;
  bad(id: number, path: string, reason: string): void;
  failed(ids: number[], reason: string, kind: FailureKind): void;
}

type Waiter = (m: FromEngine) => boolean;

/** One engine worker. */
export class Engine {
  readonly #worker: Worker;
  #waiters: Waiter[] = [];
  #jobs = new Map<number, { events: JobEvents; done: (cancelled: boolean) => void }>();
  #nextJob = 1;
  #dead: string | null = null;

  constructor(url: URL) {
    this.#worker = new Worker(url, { type: "module", name: "bloom-engine" });
    this.#worker.onmessage = (ev: MessageEvent<FromEngine>) => this.#receive(ev.data);
    this.#worker.onerror = (ev) => {
      ev.preventDefault();
      this.#die(`the engine stopped: ${ev.message || "a worker error"}`);
    };
  }

  #send(m: ToEngine, transfer: Transferable[] = []): void {
    this.#worker.postMessage(m, transfer);
  }

  #receive(m: FromEngine): void {
    if (m.type === "rows" || m.type === "bad" || m.type === "batch-failed" || m.type === "done") {
      const job = this.#jobs.get(m.job);
      if (!job) return;
      if (m.type === "rows") job.events.rows(m.ids, m.features, m.dim);
      else if (m.type === "bad") job.events.bad(m.id, m.path, m.reason);
      else if (m.type === "batch-failed") job.events.failed(m.ids, m.reason, m.kind);
      else {
        this.#jobs.delete(m.job);
        job.done(m.cancelled);
      }
      return;
    }
    const i = this.#waiters.findIndex((w) => w(m));
    if (i >= 0) this.#waiters.splice(i, 1);
  }

  /** Ends every pending request and job with `reason` (the worker died or was stopped). */
  #die(reason: string): void {
    if (this.#dead) return;
    this.#dead = reason;
    for (const [, job] of this.#jobs) {
      job.events.failed([], reason, "lost");
      job.done(false);
    }
    this.#jobs.clear();
    const waiters = this.#waiters.splice(0);
    for (const w of waiters) w({ type: "no-gpu", reason });
  }

  #wait<T>(pick: (m: FromEngine) => T | undefined): Promise<T> {
    if (this.#dead) return Promise.reject(new Error(this.#dead));
    return new Promise((resolve) => {
      this.#waiters.push((m) => {
        const v = pick(m);
        if (v === undefined) return false;
        resolve(v);
        return true;
      });
    });
  }

  /** Opens the WebGPU device; the adapter, or why there is none. */
  init(): Promise<{ adapter: AdapterInfo } | { error: string }> {
    const p = this.#wait((m) =>
      m.type === "ready"
        ? { adapter: m.adapter }
        : m.type === "no-gpu"
        ? { error: m.reason }
        : undefined
    );
    this.#send({ type: "init" });
    return p;
  }

  /** Loads weights; the model found, or why not (naming the file). */
  load(
    file: Blob,
    name: string,
    inputSize: number,
    heads?: number,
  ): Promise<{ model: ModelInfo } | { error: string; kind: FailureKind }> {
    const p = this.#wait((m) =>
      m.type === "loaded"
        ? { model: m.model }
        : m.type === "load-failed"
        ? { error: m.reason.startsWith(m.file) ? m.reason : `${m.file}: ${m.reason}`, kind: m.kind }
        : m.type === "no-gpu"
        ? { error: m.reason, kind: "lost" as const }
        : undefined
    );
    this.#send({ type: "load", file, name, heads, inputSize });
    return p;
  }

  /** Starts embedding `cells`; resolves when the job ends (true when cancelled). */
  embed(cells: CellJob[], batch: number, inputSize: number, events: JobEvents): {
    job: number;
    done: Promise<boolean>;
  } {
    const job = this.#nextJob++;
    const done = new Promise<boolean>((resolve) => {
      if (this.#dead) {
        events.failed([], this.#dead, "lost");
        resolve(false);
        return;
      }
      this.#jobs.set(job, { events, done: resolve });
    });
    if (!this.#dead) this.#send({ type: "embed", job, cells, batch, inputSize });
    return { job, done };
  }

  /** Asks the engine to stop job `job` after its current batch. */
  cancel(job: number): void {
    this.#send({ type: "cancel", job });
  }

  /** The patch tokens of one cell, and the cell as the model saw it. */
  patchTokens(id: number, file: Blob, path: string, inputSize: number): Promise<
    | { tokens: Float32Array; patches: number; dim: number; pixels: Uint8Array; size: number }
    | { error: string }
  > {
    const p = this.#wait((m) =>
      m.type === "patch" && m.id === id
        ? { tokens: m.tokens, patches: m.patches, dim: m.dim, pixels: m.pixels, size: m.size }
        : m.type === "patch-failed" && m.id === id
        ? { error: `${m.path}: ${m.reason}` }
        : m.type === "no-gpu"
        ? { error: m.reason }
        : undefined
    );
    this.#send({ type: "patch", id, file, path, inputSize });
    return p;
  }

  /** Test hook: the engine destroys its device (as a driver reset would). */
  loseDevice(): void {
    this.#send({ type: "lose-device" });
  }

  /** Test hook: more than `cells` cells at once run out of memory (null: off). */
  simulateMemory(cells: number | null): void {
    this.#send({ type: "simulate-memory", cells });
  }

  /** Stops the worker; pending requests end. */
  terminate(reason = "the engine was stopped"): void {
    this.#worker.terminate();
    this.#die(reason);
  }
}

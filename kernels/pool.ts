/**
 * A pool of storage buffers keyed by size class.
 *
 * Invariant (the reason this file exists): `queue.writeBuffer` runs on the
 * queue timeline *at once*, while dispatches recorded in the open command
 * encoder run only when it is submitted. A buffer released while the open
 * encoder still reads it must therefore never be handed to a host upload
 * before that encoder is submitted, or the upload would overwrite data the
 * pending dispatches have yet to read. Released buffers go to a pending list;
 * `onSubmit()` moves them to the free lists.
 *
 * GPU-side writes are different: dispatches and copies in one queue run in
 * recording order, with WebGPU inserting the barriers between them, so a kernel
 * *output* may reuse a buffer released earlier in the same encoder
 * (`acquire(bytes, "gpu-write")`). That keeps a whole training step in one
 * submit without holding every intermediate alive until the end of the step.
 */

/** Usage every pooled buffer has: bound as storage, copied from and to. */
export const POOL_USAGE = 0x80 /* STORAGE */ | 0x04 /* COPY_SRC */ | 0x08; /* COPY_DST */

/** Who writes the buffer first after it is acquired. */
export type FirstWriter = "host" | "gpu-write";

/** Smallest size class, in bytes. */
const MIN_CLASS = 256;

/**
 * Rounds a byte count up to its size class: a multiple of 256 with at most
 * three significant binary digits, so waste stays under 12.5 % above 2 KiB.
 */
export function sizeClass(bytes: number): number {
  if (!(bytes >= 0) || !Number.isFinite(bytes)) {
    throw new RangeError(`buffer size must be a non-negative number, got ${bytes}`);
  }
  if (bytes <= MIN_CLASS) return MIN_CLASS;
  const e = Math.floor(Math.log2(bytes)) - 3;
  if (e <= 0) return Math.ceil(bytes / MIN_CLASS) * MIN_CLASS;
  const step = 2 ** e;
  const rounded = Math.ceil(bytes / step) * step;
  return Math.ceil(rounded / MIN_CLASS) * MIN_CLASS;
}

/** Counters the pool keeps, for tests and for the memory report. */
export interface PoolStats {
  /** Buffers created by the device over the pool's life. */
  created: number;
  /** Acquisitions served from a free or pending list. */
  reused: number;
  /** Bytes in buffers currently handed out. */
  liveBytes: number;
  /** Bytes waiting in free lists. */
  freeBytes: number;
  /** Bytes released during the open submit, not yet free for host writes. */
  pendingBytes: number;
  /** Highest `liveBytes` seen. */
  peakLiveBytes: number;
}

/** Storage buffers reused by size class; see the invariant at the top of this file. */
export class BufferPool {
  readonly #device: GPUDevice;
  readonly #maxBufferSize: number;
  readonly #free = new Map<number, GPUBuffer[]>();
  readonly #pending = new Map<number, GPUBuffer[]>();
  readonly #live = new Set<GPUBuffer>();
  #stats: PoolStats = {
    created: 0,
    reused: 0,
    liveBytes: 0,
    freeBytes: 0,
    pendingBytes: 0,
    peakLiveBytes: 0,
  };
  /** Free bytes kept after a submit; above this, free buffers are destroyed. */
  maxFreeBytes: number;

  constructor(device: GPUDevice, maxBufferSize: number, maxFreeBytes = 2 ** 30) {
    this.#device = device;
    this.#maxBufferSize = maxBufferSize;
    this.maxFreeBytes = maxFreeBytes;
  }

  /**
   * Hands out a buffer of at least `bytes` bytes (its size is the size class).
   * `firstWriter` says who writes it first: only "gpu-write" may take a buffer
   * released during the open submit.
   */
  acquire(bytes: number, firstWriter: FirstWriter = "host", label = ""): GPUBuffer {
    const size = sizeClass(Math.max(4, bytes));
    if (size > this.#maxBufferSize) {
      throw new RangeError(
        `a buffer of ${fmtBytes(bytes)} exceeds the adapter's maxBufferSize ` +
          `(${fmtBytes(this.#maxBufferSize)})${label ? ` for '${label}'` : ""}; ` +
          "use a smaller batch or split the tensor",
      );
    }
    let buf = this.#free.get(size)?.pop();
    if (buf) {
      this.#stats.freeBytes -= size;
    } else if (firstWriter === "gpu-write") {
      buf = this.#pending.get(size)?.pop();
      if (buf) this.#stats.pendingBytes -= size;
    }
    if (buf) {
      this.#stats.reused++;
    } else {
      buf = this.#device.createBuffer({ size, usage: POOL_USAGE, label });
      this.#stats.created++;
    }
    this.#live.add(buf);
    this.#stats.liveBytes += size;
    this.#stats.peakLiveBytes = Math.max(this.#stats.peakLiveBytes, this.#stats.liveBytes);
    return buf;
  }

  /** Returns a buffer; it becomes free for host writes after the next submit. */
  release(buf: GPUBuffer): void {
    if (!this.#live.delete(buf)) {
      throw new Error(
        `buffer '${buf.label}' (${buf.size} B) released twice or not from this pool`,
      );
    }
    this.#stats.liveBytes -= buf.size;
    this.#stats.pendingBytes += buf.size;
    push(this.#pending, buf.size, buf);
  }

  /** Whether the pool handed out this buffer and it has not been released. */
  owns(buf: GPUBuffer): boolean {
    return this.#live.has(buf);
  }

  /** Called by the runtime right after each `queue.submit`. */
  onSubmit(): void {
    for (const [size, list] of this.#pending) {
      for (const b of list) push(this.#free, size, b);
      this.#stats.freeBytes += size * list.length;
    }
    this.#pending.clear();
    this.#stats.pendingBytes = 0;
    this.trim(this.maxFreeBytes);
  }

  /** Destroys free buffers, largest first, until at most `keepBytes` stay free. */
  trim(keepBytes = 0): void {
    this.#stats.freeBytes = trimFree(this.#free, this.#stats.freeBytes, keepBytes, (size) => size);
  }

  /** A snapshot of the counters. */
  stats(): PoolStats {
    return { ...this.#stats };
  }

  /** Destroys every buffer the pool knows of (the runtime's shutdown). */
  destroy(): void {
    for (const m of [this.#free, this.#pending]) {
      for (const list of m.values()) for (const b of list) b.destroy();
      m.clear();
    }
    for (const b of this.#live) b.destroy();
    this.#live.clear();
  }
}

/**
 * Destroys objects of the free lists `free` (by key; `bytesOf(key)` bytes
 * each), largest first, until at most `keepBytes` of `freeBytes` stay free.
 * Returns the free bytes left. The buffer and the texture pool both trim so.
 */
export function trimFree<K, T extends { destroy(): void }>(
  free: Map<K, T[]>,
  freeBytes: number,
  keepBytes: number,
  bytesOf: (key: K) => number,
): number {
  if (freeBytes <= keepBytes) return freeBytes;
  const keys = [...free.keys()].sort((a, b) => bytesOf(b) - bytesOf(a));
  for (const key of keys) {
    const list = free.get(key)!;
    while (list.length && freeBytes > keepBytes) {
      list.pop()!.destroy();
      freeBytes -= bytesOf(key);
    }
  }
  return freeBytes;
}

function push(m: Map<number, GPUBuffer[]>, size: number, b: GPUBuffer) {
  const list = m.get(size);
  if (list) list.push(b);
  else m.set(size, [b]);
}

/** Formats a byte count for messages ("128 MiB"). */
export function fmtBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${Number.isInteger(n) ? n : n.toFixed(1)} ${units[i]}`;
}

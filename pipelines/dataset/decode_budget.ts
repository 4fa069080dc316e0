/**
 * The memory caps of image decoding, and the byte budget that holds them
 * when many images decode at once (ingest and loader decode `workers` images
 * in parallel and keep `2 × workers + 2` in their reorder window).
 *
 * - One image: at most `MAX_IMAGE_PIXELS` source pixels (header checked
 *   before any pixel buffer exists) and, read from disk, `MAX_IMAGE_FILE_BYTES`.
 * - All images at once: a decode leases its pixel memory from
 *   `PIXEL_BUDGET` before it allocates, and a file read leases the file's
 *   bytes from `FILE_BUDGET` before it reads; a lease waits (first come,
 *   first served) until the memory is free. So decode memory stays under the
 *   two budgets whatever `--workers` is; an image that alone needs more than a
 *   budget runs alone. Files are leased before pixels, never the other way, so
 *   leases cannot deadlock.
 */

/** Largest source image, in pixels, that any decoder accepts: 2^26, e.g. 8192 × 8192. */
export const MAX_IMAGE_PIXELS = 1 << 26;

/** Largest image file read from disk: 256 MiB (a 24-bit BMP at the pixel cap is 192 MiB). */
export const MAX_IMAGE_FILE_BYTES = 256 << 20;

/**
 * Bytes leased per source pixel: the decoded RGB(A) buffer, a colour-converted
 * copy and libvips' working rows, rounded up (8 B/px; measured peaks stay under it).
 */
export const BYTES_PER_PIXEL = 8;

/** A counting semaphore over bytes, first come first served. */
export class ByteBudget {
  readonly total: number;
  #free: number;
  #queue: { need: number; wake: () => void }[] = [];

  constructor(total: number) {
    this.total = total;
    this.#free = total;
  }

  /** Bytes not leased now. */
  get free(): number {
    return this.#free;
  }

  /**
   * Leases `bytes` (clamped to the total, so one oversized item runs alone)
   * and returns the function that gives them back (idempotent).
   */
  async lease(bytes: number): Promise<() => void> {
    const need = Math.min(this.total, Math.max(0, Math.ceil(bytes)));
    if (this.#queue.length > 0 || this.#free < need) {
      await new Promise<void>((wake) => this.#queue.push({ need, wake }));
    } else this.#free -= need;
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      this.#free += need;
      this.#grant();
    };
  }

  /** Wakes waiters in order while the head fits. */
  #grant(): void {
    while (this.#queue.length > 0 && this.#queue[0].need <= this.#free) {
      const w = this.#queue.shift()!;
      this.#free -= w.need;
      w.wake();
    }
  }
}

/** Decoded pixels of all images decoding at once: 1 GiB. */
export const PIXEL_BUDGET = new ByteBudget(1 << 30);

/** Bytes of image files read and not yet decoded: 256 MiB. */
export const FILE_BUDGET = new ByteBudget(256 << 20);

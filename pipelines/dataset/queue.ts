/**
 * A bounded async queue between one producer and one consumer: `push` waits
 * while the queue is full (backpressure), `pop` waits while it is empty.
 * Closing it ends the consumer's loop; failing it hands the producer's error
 * to the consumer; the consumer cancelling makes further pushes return false.
 */
export class BoundedQueue<T> {
  readonly capacity: number;
  #items: T[] = [];
  #closed = false;
  #cancelled = false;
  #error: unknown = null;
  #waitPush: (() => void) | null = null;
  #waitPop: (() => void) | null = null;
  /** Most items ever held at once (tests check the bound). */
  maxHeld = 0;

  constructor(capacity: number) {
    if (!(capacity >= 1)) throw new RangeError(`queue capacity must be ≥ 1, got ${capacity}`);
    this.capacity = capacity;
  }

  /** Items held now. */
  get size(): number {
    return this.#items.length;
  }

  /** Adds an item, waiting for room; false once the consumer has cancelled. */
  async push(item: T): Promise<boolean> {
    while (this.#items.length >= this.capacity && !this.#cancelled) {
      await new Promise<void>((res) => (this.#waitPush = res));
    }
    if (this.#cancelled) return false;
    this.#items.push(item);
    this.maxHeld = Math.max(this.maxHeld, this.#items.length);
    this.#waitPop?.();
    return true;
  }

  /** Ends the stream after the items already queued. */
  close(): void {
    this.#closed = true;
    this.#waitPop?.();
  }

  /** Ends the stream with an error the consumer will see. */
  fail(error: unknown): void {
    this.#error = error ?? new Error("producer failed");
    this.close();
  }

  /** The consumer gives up: the producer's pushes return false from now on. */
  cancel(): void {
    this.#cancelled = true;
    this.#items = [];
    this.#waitPush?.();
  }

  /** Next item, or undefined at the end; throws the producer's error. */
  async pop(): Promise<T | undefined> {
    while (this.#items.length === 0) {
      if (this.#error !== null) throw this.#error;
      if (this.#closed) return undefined;
      await new Promise<void>((res) => (this.#waitPop = res));
    }
    const item = this.#items.shift()!;
    this.#waitPush?.();
    return item;
  }
}

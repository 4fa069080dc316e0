/**
 * A bounded, order-keeping parallel map: the heart of both the ingest
 * (decoders → shard writer) and the loader (decoders → batches).
 *
 * Invariants:
 * - At most `concurrency` calls of `fn` run at once.
 * - At most `window` items are started but not yet taken by the consumer
 *   (running plus finished-and-waiting): this is the reorder buffer and the
 *   backpressure; memory does not grow with the input.
 * - Results come out in input order whatever order the calls finish in.
 * - New work starts only when the consumer pulls (or while it is busy with a
 *   result already handed over), never unboundedly ahead.
 */

/** Options of `orderedMap`. */
export interface OrderedMapOptions {
  /** Calls of `fn` in flight at once (≥ 1). */
  concurrency: number;
  /** Started-but-not-consumed items (≥ concurrency; default 2 × concurrency). */
  window?: number;
  /** Called with the number of items held whenever it changes (tests watch the bound). */
  onHeld?: (held: number) => void;
}

type Settled<R> = { ok: true; value: R } | { ok: false; error: unknown };

/**
 * Maps `fn` over `items` with bounded parallelism, yielding results in input
 * order. A rejected call rethrows when its turn to be yielded comes; callers
 * that must not stop catch inside `fn`.
 */
export async function* orderedMap<T, R>(
  items: Iterable<T> | AsyncIterable<T>,
  fn: (item: T, index: number) => Promise<R>,
  opts: OrderedMapOptions,
): AsyncGenerator<R> {
  const concurrency = Math.max(1, Math.floor(opts.concurrency));
  const window = Math.max(concurrency, Math.floor(opts.window ?? 2 * concurrency));
  const it = Symbol.asyncIterator in items
    ? (items as AsyncIterable<T>)[Symbol.asyncIterator]()
    : (items as Iterable<T>)[Symbol.iterator]();
  const pending = new Map<number, Promise<Settled<R>>>();
  let running = 0;
  let next = 0; // index of the next item to start
  let out = 0; // index of the next result to yield
  let exhausted = false;
  // Wakes the consumer when a call finishes, so it can start the next one.
  let wake: (() => void) | null = null;

  const fill = async () => {
    while (!exhausted && running < concurrency && next - out < window) {
      const r = await it.next();
      if (r.done) {
        exhausted = true;
        break;
      }
      const index = next++;
      running++;
      const p = fn(r.value, index).then(
        (value): Settled<R> => ({ ok: true, value }),
        (error): Settled<R> => ({ ok: false, error }),
      ).finally(() => {
        running--;
        wake?.();
      });
      pending.set(index, p);
      opts.onHeld?.(next - out);
    }
  };

  try {
    while (true) {
      await fill();
      const head = pending.get(out);
      if (!head) return; // nothing started and nothing left
      // Wait for the head, but keep starting work as other calls finish.
      let settled: Settled<R> | undefined;
      const done = head.then((s) => (settled = s));
      while (settled === undefined) {
        const woke = new Promise<void>((res) => (wake = res));
        await Promise.race([done, woke]);
        wake = null;
        if (settled === undefined) await fill();
      }
      pending.delete(out);
      out++;
      opts.onHeld?.(next - out);
      if (!settled.ok) throw settled.error;
      yield settled.value;
    }
  } finally {
    // Let calls still running finish quietly; their results are dropped.
    await Promise.allSettled(pending.values());
    await (it as AsyncIterator<T> | Iterator<T>).return?.();
  }
}

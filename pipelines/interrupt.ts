/**
 * How a long run (embed, ingest, train) stops when asked to (Ctrl-C, SIGTERM,
 * through an AbortSignal): it keeps what is finished, drops what is not,
 * and throws `Interrupted` saying what was kept, so the command can add how
 * to resume.
 */

/** The signals that stop a long run, with their numbers (the exit code is 128 + the number). */
export const STOP_SIGNALS = { SIGINT: 2, SIGTERM: 15 } as const;
/** One of `STOP_SIGNALS`. */
export type StopSignal = keyof typeof STOP_SIGNALS;

/** A run stopped on request after keeping its finished work. */
export class Interrupted extends Error {
  override name = "Interrupted";
  /** What was kept and where, in words: "kept 352 of 960 rows in feats.safetensors.partial/". */
  readonly kept: string;
  constructor(kept: string) {
    super(`interrupted: ${kept}`);
    this.kept = kept;
  }
}

/** What `whenAborted` resolves to. */
export const ABORTED: unique symbol = Symbol("aborted");

/**
 * A promise that resolves to `ABORTED` once `signal` aborts (never without
 * a signal), for racing against work that should not be waited for then;
 * `dispose` removes its listener.
 */
export function whenAborted(
  signal: AbortSignal | undefined,
): { promise: Promise<typeof ABORTED>; dispose(): void } {
  if (!signal) return { promise: new Promise(() => {}), dispose: () => {} };
  let onAbort = () => {};
  const promise = new Promise<typeof ABORTED>((resolve) => {
    onAbort = () => resolve(ABORTED);
    if (signal.aborted) resolve(ABORTED);
    else signal.addEventListener("abort", onAbort, { once: true });
  });
  return { promise, dispose: () => signal.removeEventListener("abort", onAbort) };
}

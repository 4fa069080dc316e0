/**
 * One writer per output. ingest, embed, train and predict hold an exclusive
 * lock (data/lock.ts) on what they write for as long as they run: an output
 * directory's lock is `DIR/.lock`, an output file's is `FILE.lock` beside
 * it. A second run into the same output stops at once, naming the process
 * that writes it and since when, or with `wait` (`--wait`) waits its turn
 * and then continues from what the first left (every command resumes).
 * A lock whose holder died is taken over (data/lock.ts says how).
 */
import { join } from "node:path";
import {
  acquireLock,
  currentHolder,
  describeHolder,
  type Lock,
  LockHeldError,
} from "../data/lock.ts";

/** What is locked: a run's output directory or one output file. */
export type OutputKind = "directory" | "file";

/** Options of `lockOutput`. */
export interface OutputLockOptions {
  /** Wait for the current writer to finish instead of stopping (`--wait`). */
  wait?: boolean;
  /** Where the "waiting for …" line goes (default stderr). */
  log?: (line: string) => void;
}

/** The lock file of an output: `DIR/.lock`, or `FILE.lock` beside a file. */
export function outputLockPath(out: string, kind: OutputKind): string {
  return kind === "directory" ? join(out, ".lock") : `${out}.lock`;
}

/** Another run is writing the output (and the caller did not wait). */
export class OutputLockedError extends LockHeldError {
  override name = "OutputLockedError";
  constructor(e: LockHeldError) {
    super(e.path, e.holder);
    this.message = `${e.message}; or rerun with --wait to start when it is done`;
  }
}

/**
 * Takes the lock of output `out` (creating its folder: call it once the
 * inputs are checked). Hold it until the output is complete; `await using`
 * releases it on every way out.
 */
export async function lockOutput(
  out: string,
  kind: OutputKind,
  opts: OutputLockOptions = {},
): Promise<Lock> {
  const log = opts.log ?? ((s: string) => console.error(s));
  try {
    return await acquireLock(outputLockPath(out, kind), {
      what: `output ${kind} ${out}`,
      wait: opts.wait ?? false,
      onWait: (h) => log(`waiting: output ${kind} ${out} is being written by ${describeHolder(h)}`),
    });
  } catch (e) {
    if (e instanceof LockHeldError) throw new OutputLockedError(e);
    throw e;
  }
}

/**
 * Throws OutputLockedError when another run writes output `out` now (unless
 * `wait`): commands call it with their other checks, before weights load or
 * the GPU starts, so a second run stops at once. The run still takes the
 * lock (`lockOutput`) when it starts writing.
 */
export async function checkOutputFree(
  out: string,
  kind: OutputKind,
  opts: Pick<OutputLockOptions, "wait"> = {},
): Promise<void> {
  if (opts.wait) return;
  const path = outputLockPath(out, kind);
  const holder = await currentHolder(path);
  if (holder) throw new OutputLockedError(new LockHeldError(path, holder));
}

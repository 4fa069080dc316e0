/**
 * How a data-parallel run stops when something goes wrong on one rank: no
 * rank may be left waiting in a collective, no file half-written, and the
 * last good checkpoint must survive.
 *
 * - SIGINT or SIGTERM on any rank (Ctrl-C through the launcher, Slurm's time
 *   limit, `kill`) stops every rank at once with MPI_Abort. A single process
 *   instead finishes its step and writes a checkpoint (the CLI's handler);
 *   under a launcher that grace is not there to take, since the launcher
 *   follows its SIGTERM with SIGKILL within seconds.
 * - Before aborting, the rank removes the `.tmp` twin of any file it is
 *   writing (checkpoints are written to `PATH.tmp` and renamed when whole, so
 *   the previous checkpoint is untouched) and says which checkpoint is the last
 *   good one. Then its main thread runs no more JavaScript: a write that had
 *   not created its `.tmp` yet (still reading the GPU) would otherwise finish
 *   while MPI_Abort takes effect and make that message stale.
 * - `BLOOM_INJECT_FAULT=KIND@RANK:STEP` makes rank RANK fail at step STEP, for
 *   the fault tests: `nonfinite` poisons its crops (a non-finite loss on that
 *   rank only), `crash` throws as a bug would.
 */
import { STOP_SIGNALS } from "../interrupt.ts";
import type { Comm } from "./comm.ts";
import { JobStopping } from "./world.ts";

/** Files being written and the last good checkpoint of a run. */
export class RunGuard {
  /** Files being written: when each write began, and what to record once it is whole. */
  #writing = new Map<string, { started: number; done?: () => void }>();
  /** The newest checkpoint written whole, and its step. */
  lastCheckpoint: { path: string; step: number } | null = null;
  /** The step of the newest resume file written whole. */
  resumeStep: number | null = null;
  /** Set once the run is being stopped: nothing more is written. */
  stopping = false;

  /**
   * Runs `fn`, which writes `paths` atomically (via `PATH.tmp`), tracking them meanwhile;
   * `done` records the finished write (the last checkpoint, the resume step).
   */
  async writing<T>(paths: string[], fn: () => Promise<T>, done?: () => void): Promise<T> {
    if (this.stopping) {
      throw new JobStopping(`the run is stopping: ${paths.join(", ")} not written`);
    }
    const started = Date.now();
    for (const p of paths) this.#writing.set(p, { started, done });
    try {
      const r = await fn();
      done?.();
      return r;
    } finally {
      for (const p of paths) this.#writing.delete(p);
    }
  }

  /**
   * Removes the `.tmp` twins of files being written; returns the ones removed. A write whose
   * `.tmp` is already gone and whose file is newer than the write's start was renamed whole a
   * moment ago (its `await` has not returned yet): it counts as done, so `describe` names it.
   */
  removePartial(): string[] {
    const removed: string[] = [];
    for (const [p, w] of this.#writing) {
      try {
        Deno.removeSync(`${p}.tmp`);
        removed.push(`${p}.tmp`);
      } catch {
        try {
          // 50 ms of slack: file times come from a coarser clock than Date.now().
          if ((Deno.statSync(p).mtime?.getTime() ?? 0) >= w.started - 50) w.done?.();
        } catch { /* not started yet */ }
      }
    }
    return removed;
  }

  /** What a user can resume from, in words. */
  describe(): string {
    const c = this.lastCheckpoint;
    const r = this.resumeStep;
    if (!c) return "no checkpoint was written in this run";
    return `the last good checkpoint is ${c.path} (step ${c.step}); ` +
      (r === null ? "no resume file yet" : `--resume continues from step ${r}`);
  }
}

/**
 * Under MPI, makes SIGINT and SIGTERM on this rank stop every rank: the
 * partial files are removed, a line names the rank, the signal and the last
 * checkpoint, then MPI_Abort. Returns a function that removes the handlers.
 */
export function abortOnSignals(
  comm: Comm,
  guard: RunGuard,
  print: (line: string) => void = (l) => console.error(l),
): () => void {
  const handlers = Object.entries(STOP_SIGNALS).map(([name, number]) => {
    const handler = () => {
      // Once is enough (the launcher may signal again while the job goes down).
      if (guard.stopping) return;
      // MPI_Abort runs on a helper thread; meanwhile this rank must not write anything new.
      guard.stopping = true;
      const removed = guard.removePartial();
      print(
        `${comm.where}: ${name} received; stopping every rank (MPI_Abort)` +
          (comm.rank === 0 ? `; ${guard.describe()}` : "") +
          (removed.length ? `; removed the partial ${removed.join(", ")}` : ""),
      );
      comm.abort(128 + number);
      // MPI_Abort runs on a helper thread and ends this process too; until then nothing else runs
      // here. If it has not within 10 s (the runtime is gone), leave anyway.
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10_000);
      Deno.exit(128 + number);
    };
    Deno.addSignalListener(name as Deno.Signal, handler);
    return [name as Deno.Signal, handler] as const;
  });
  return () => {
    for (const [name, h] of handlers) Deno.removeSignalListener(name, h);
  };
}

/** A fault to inject for the tests. */
export interface InjectedFault {
  kind: "nonfinite" | "crash";
  rank: number;
  step: number;
}

/** BLOOM_INJECT_FAULT parsed ("nonfinite@1:3"), or null when unset. */
export function injectedFault(raw = Deno.env.get("BLOOM_INJECT_FAULT")): InjectedFault | null {
  if (!raw) return null;
  const m = /^(nonfinite|crash)@(\d+):(\d+)$/.exec(raw.trim());
  if (!m) {
    throw new Error(
      `BLOOM_INJECT_FAULT=${raw} is not KIND@RANK:STEP with KIND nonfinite or crash`,
    );
  }
  return { kind: m[1] as InjectedFault["kind"], rank: Number(m[2]), step: Number(m[3]) };
}

/**
 * Removes `*.tmp` files a killed run left in `dir` and `dir/checkpoints`
 * (SIGKILL leaves no chance to clean up; the files they were to replace are
 * whole). Returns what it removed.
 */
export async function removeStalePartials(dir: string): Promise<string[]> {
  const removed: string[] = [];
  for (const d of [dir, `${dir}/checkpoints`]) {
    let entries: Deno.DirEntry[];
    try {
      entries = await Array.fromAsync(Deno.readDir(d));
    } catch {
      continue;
    }
    for (const e of entries) {
      if (!e.isFile || !e.name.endsWith(".tmp")) continue;
      await Deno.remove(`${d}/${e.name}`);
      removed.push(`${d}/${e.name}`);
    }
  }
  return removed;
}

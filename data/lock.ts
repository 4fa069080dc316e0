/**
 * Exclusive locks between processes, as a lock file: whoever creates PATH
 * (O_EXCL, atomic on local disks and on NFS) holds it; the file says who
 * (pid, host, start time) so the others can wait, report the holder, or take
 * over a lock its holder left behind. Used for the weights cache (one
 * download per file however many ranks or pods ask) and for output
 * directories (one writer per run).
 *
 * A lock is stale, and is taken over, when its holder is on this host and
 * its process is gone (or the pid now belongs to a newer process), or when it
 * is on another host and has not been refreshed for `staleMs` (holders touch
 * the file every `heartbeatMs`). Taking over happens under a short second
 * lock (PATH.break) so two waiters never both remove a lock.
 */
import { hostname } from "node:os";

/** Who holds a lock, as written in the lock file. */
export interface LockHolder {
  pid: number;
  host: string;
  /** When the lock was taken (ISO 8601). */
  started: string;
  /** What is locked, for messages ("weights dinobloom-s", "output directory runs/a"). */
  what: string;
  /** Random per acquisition: tells this holder's file from a successor's. */
  token: string;
  /** Linux: the process's start time (clock ticks since boot), to catch reused pids. */
  procStart?: number;
}

/** Options of acquireLock. */
export interface LockOptions {
  /** What is locked, for messages. Default: the lock file's path. */
  what?: string;
  /**
   * When another process holds the lock: false (default) throws LockHeldError
   * at once; true waits until it is free; a number waits at most that many
   * milliseconds, then throws.
   */
  wait?: boolean | number;
  /** How often a waiter looks again (default 250 ms). */
  pollMs?: number;
  /** A lock from another host is stale when not refreshed for this long (default 120 s). */
  staleMs?: number;
  /** How often the holder refreshes its lock file (default 15 s). */
  heartbeatMs?: number;
  /** Called once when this process starts waiting, with the holder. */
  onWait?: (holder: LockHolder) => void;
  /** Stops waiting (throws the signal's reason). */
  signal?: AbortSignal;
}

/** "process 4242 on node-7 since 2026-03-01T10:00:00.000Z" */
export function describeHolder(h: LockHolder): string {
  return `process ${h.pid} on ${h.host} since ${h.started}`;
}

/** The lock is held by another process (and the caller did not wait, or waited too long). */
export class LockHeldError extends Error {
  override name = "LockHeldError";
  readonly path: string;
  readonly holder: LockHolder;
  constructor(path: string, holder: LockHolder, waitedMs?: number) {
    const waited = waitedMs !== undefined ? ` (waited ${Math.round(waitedMs / 1000)} s)` : "";
    super(
      `${holder.what} is being written by ${describeHolder(holder)}${waited}. ` +
        `Wait for it to finish; if that process is gone (another machine, a killed job), ` +
        `delete ${path}`,
    );
    this.path = path;
    this.holder = holder;
  }
}

/** A held lock. Release it (or `await using`) when done. */
export class Lock implements AsyncDisposable {
  readonly path: string;
  readonly holder: LockHolder;
  #timer: ReturnType<typeof setInterval>;
  #lost = false;
  #released = false;

  constructor(path: string, holder: LockHolder, heartbeatMs: number) {
    this.path = path;
    this.holder = holder;
    this.#timer = setInterval(() => this.#beat(), heartbeatMs);
    Deno.unrefTimer(this.#timer);
  }

  /**
   * True when the lock file no longer carries this holder's token: someone
   * judged this lock stale (a heartbeat missed for `staleMs`) and took over.
   * Long jobs check it before they publish their result.
   */
  get lost(): boolean {
    return this.#lost;
  }

  async #beat(): Promise<void> {
    if (this.#released) return;
    const now = await readLock(this.path).catch(() => null);
    if (now?.token !== this.holder.token) {
      this.#lost = true;
      return;
    }
    const t = new Date();
    await Deno.utime(this.path, t, t).catch(() => {});
  }

  /** Removes the lock file, if it is still this holder's. Safe to call twice. */
  async release(): Promise<void> {
    if (this.#released) return;
    this.#released = true;
    clearInterval(this.#timer);
    const now = await readLock(this.path).catch(() => null);
    if (now?.token === this.holder.token) await Deno.remove(this.path).catch(() => {});
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.release();
  }
}

/** Reads a lock file; null when there is none. Throws SyntaxError on a half-written one. */
export async function readLock(path: string): Promise<LockHolder | null> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
  const h = JSON.parse(text) as LockHolder;
  if (typeof h.pid !== "number" || typeof h.host !== "string" || typeof h.token !== "string") {
    throw new SyntaxError(`${path}: not a bloom lock file`);
  }
  return h;
}

/**
 * Takes the lock at `path` (creating its folder), waiting for the holder as
 * `opts.wait` says, and taking over stale locks.
 */
export async function acquireLock(path: string, opts: LockOptions = {}): Promise<Lock> {
  const what = opts.what ?? path;
  const pollMs = opts.pollMs ?? 250;
  const staleMs = opts.staleMs ?? 120_000;
  const heartbeatMs = opts.heartbeatMs ?? 15_000;
  const deadline = typeof opts.wait === "number" ? Date.now() + opts.wait : undefined;
  const t0 = Date.now();
  let waiting = false;
  const dir = path.replace(/[\\/][^\\/]*$/, "");
  if (dir && dir !== path) await Deno.mkdir(dir, { recursive: true });
  for (;;) {
    opts.signal?.throwIfAborted();
    const holder = await thisProcess(what);
    if (await tryCreate(path, holder)) return new Lock(path, holder, heartbeatMs);
    const current = await holderOf(path, what);
    if (current === null) continue; // released between our attempt and the read
    if (await isStale(path, current, staleMs, pollMs)) {
      await breakLock(path, current.token);
      continue;
    }
    if (!opts.wait || (deadline !== undefined && Date.now() >= deadline)) {
      throw new LockHeldError(path, current, opts.wait ? Date.now() - t0 : undefined);
    }
    if (!waiting) {
      waiting = true;
      opts.onWait?.(current);
    }
    await sleep(pollMs, opts.signal);
  }
}

/**
 * Who holds the lock at `path` now, without taking it: the holder, or null
 * when it is free or stale (acquireLock would take it over). For commands
 * that check their output is free before long preparations, then take the
 * lock; the answer may change in between.
 */
export async function currentHolder(
  path: string,
  opts: Pick<LockOptions, "staleMs" | "pollMs"> = {},
): Promise<LockHolder | null> {
  const h = await holderOf(path, path);
  if (h === null) return null;
  return (await isStale(path, h, opts.staleMs ?? 120_000, opts.pollMs ?? 250)) ? null : h;
}

async function thisProcess(what: string): Promise<LockHolder> {
  const procStart = await processStart(Deno.pid);
  return {
    pid: Deno.pid,
    host: hostname(),
    started: new Date().toISOString(),
    what,
    token: crypto.randomUUID(),
    ...(procStart !== undefined ? { procStart } : {}),
  };
}

/** Creates the lock file with O_EXCL; false when it exists. */
async function tryCreate(path: string, holder: LockHolder): Promise<boolean> {
  let f: Deno.FsFile;
  try {
    f = await Deno.open(path, { write: true, createNew: true });
  } catch (e) {
    if (e instanceof Deno.errors.AlreadyExists) return false;
    throw e;
  }
  let written = false;
  try {
    const bytes = new TextEncoder().encode(JSON.stringify(holder) + "\n");
    let at = 0;
    while (at < bytes.length) at += await f.write(bytes.subarray(at));
    written = true;
  } finally {
    f.close();
    if (!written) await Deno.remove(path).catch(() => {});
  }
  return true;
}

/**
 * The holder of an existing lock file. A file that does not parse (its
 * creator died between create and write, or it is not ours) is reported as
 * an unknown holder, which isStale judges by age.
 */
async function holderOf(path: string, what: string): Promise<LockHolder | null> {
  try {
    return await readLock(path);
  } catch (e) {
    if (!(e instanceof SyntaxError)) throw e;
    return { pid: 0, host: "?", started: "?", what, token: "" };
  }
}

async function isStale(
  path: string,
  h: LockHolder,
  staleMs: number,
  pollMs: number,
): Promise<boolean> {
  const age = await ageMs(path);
  if (age === null) return false; // gone: the next attempt takes it
  if (h.token === "") return age > Math.max(5_000, 4 * pollMs);
  if (h.host === hostname()) {
    if (!(await isAlive(h.pid))) return true;
    if (h.procStart !== undefined) {
      const now = await processStart(h.pid);
      if (now !== undefined && now !== h.procStart) return true;
    }
    return false;
  }
  return age > staleMs;
}

/**
 * Removes a stale lock whose token is `token`, under PATH.break so that two
 * waiters judging the same lock stale cannot remove each other's fresh locks.
 */
async function breakLock(path: string, token: string): Promise<void> {
  const guard = `${path}.break`;
  const me = await thisProcess(`breaking ${path}`);
  if (!(await tryCreate(guard, me))) {
    // Someone else is breaking it; clear a guard left by a crash mid-break.
    const age = await ageMs(guard);
    if (age !== null && age > 10_000) await Deno.remove(guard).catch(() => {});
    return;
  }
  try {
    const current = await holderOf(path, path);
    if (current && current.token === token) await Deno.remove(path).catch(() => {});
  } finally {
    await Deno.remove(guard).catch(() => {});
  }
}

async function ageMs(path: string): Promise<number | null> {
  try {
    const st = await Deno.stat(path);
    return Date.now() - (st.mtime?.getTime() ?? Date.now());
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
}

/** Whether a process with this pid exists on this host. */
async function isAlive(pid: number): Promise<boolean> {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  if (pid === Deno.pid) return true;
  if (Deno.build.os === "linux") {
    try {
      await Deno.stat(`/proc/${pid}`);
      return true;
    } catch {
      return false;
    }
  }
  if (Deno.build.os === "windows") return true; // no cheap check: rely on the holder releasing
  try {
    const { code } = await new Deno.Command("kill", { args: ["-0", String(pid)] }).output();
    return code === 0;
  } catch {
    return true;
  }
}

/** Linux: field 22 of /proc/PID/stat (start time in clock ticks); elsewhere undefined. */
async function processStart(pid: number): Promise<number | undefined> {
  if (Deno.build.os !== "linux") return undefined;
  try {
    const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
    // Fields after the command name, which is in parentheses and may hold spaces.
    const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const v = Number(rest[19]);
    return Number.isFinite(v) ? v : undefined;
  } catch {
    return undefined;
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const id = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(id);
      reject(signal!.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * The load other processes put on the machine while a benchmark round runs. On a shared host a
 * round that another process's burst overlaps measures that burst, not bloom, and a burst hits
 * two sides of a comparison unequally (an OpenMP peer stalls when one of its threads loses its
 * core; llvmpipe's task queue rebalances). Each round therefore records the cores the rest of
 * the machine used meanwhile: the CPU time of the whole machine (/proc/stat, steal included)
 * less that of this process and everything it started (every thread: llvmpipe's, the
 * workers'; the peers and their worker processes; the first-run child), reaped children's too.
 * Rows take their ratio from the quiet rounds (`QUIET_CORES`) and say how many there were.
 *
 * Linux only; elsewhere `cpuSample` gives null and every round counts.
 */

/** Cores other processes may use on average during a round for it to count as quiet. */
export const QUIET_CORES = 0.25;

/** Clock ticks per second of /proc's CPU times (USER_HZ: 100 on every Linux ABI). */
const TICKS = 100;

/** CPU seconds used so far by the machine and by the processes a benchmark owns. */
export interface CpuSample {
  /** performance.now() when read. */
  atMs: number;
  /** Busy CPU seconds of the whole machine (all CPUs; user, system, interrupts, steal). */
  machine: number;
  /** CPU seconds of this process and the given ones. */
  ours: number;
}

/** Busy seconds of the machine from /proc/stat's first line. */
function machineSeconds(text: string): number {
  const f = text.slice(0, text.indexOf("\n")).trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal (guest time is inside user)
  const [user, nice, system, , , irq, softirq, steal] = f;
  return (user + nice + system + (irq ?? 0) + (softirq ?? 0) + (steal ?? 0)) / TICKS;
}

/** Every process's parent and CPU seconds (utime + stime + cutime + cstime), from /proc. */
function processTable(): Map<number, { ppid: number; seconds: number }> {
  const table = new Map<number, { ppid: number; seconds: number }>();
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^[0-9]+$/.test(e.name)) continue;
    try {
      const s = Deno.readTextFileSync(`/proc/${e.name}/stat`);
      // Fields after the command name (which may hold spaces): state is field 3, ppid 4,
      // utime 14 and stime 15 (all its threads), cutime 16 and cstime 17 (reaped children).
      const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
      table.set(Number(e.name), {
        ppid: Number(f[1]),
        seconds: (+f[11] + +f[12] + +f[13] + +f[14]) / TICKS,
      });
    } catch { /* exited meanwhile */ }
  }
  return table;
}

/** CPU seconds of the processes in `roots` and of everything below them. */
export function treeSeconds(
  table: Map<number, { ppid: number; seconds: number }>,
  roots: readonly number[],
): number {
  const inTree = (pid: number): boolean => {
    for (let p = pid, i = 0; p > 0 && i < 256; p = table.get(p)?.ppid ?? 0, i++) {
      if (roots.includes(p)) return true;
    }
    return false;
  };
  let total = 0;
  for (const [pid, { seconds }] of table) if (inTree(pid)) total += seconds;
  return total;
}

/**
 * Reads the counters: ours is this process's tree and that of each of `pids` (peers started
 * elsewhere); null where /proc is not readable (not Linux, no permission).
 */
export function cpuSample(pids: readonly number[] = []): CpuSample | null {
  try {
    const machine = machineSeconds(Deno.readTextFileSync("/proc/stat"));
    const ours = treeSeconds(processTable(), [Deno.pid, ...pids]);
    if (!Number.isFinite(machine) || !Number.isFinite(ours)) return null;
    return { atMs: performance.now(), machine, ours };
  } catch {
    return null;
  }
}

/**
 * Cores other processes used on average between two samples (never below 0: the counters tick
 * at different moments). Null when either sample is missing or no time passed.
 */
export function othersCores(a: CpuSample | null, b: CpuSample | null): number | null {
  if (!a || !b || b.atMs <= a.atMs) return null;
  const others = (b.machine - a.machine) - (b.ours - a.ours);
  return Math.max(0, others / ((b.atMs - a.atMs) / 1000));
}

/** How long a full benchmark's round may wait for a quiet machine (`awaitQuiet`). */
export const QUIET_WAIT_MS = 30_000;

/**
 * Waits (up to `maxMs`, default `QUIET_WAIT_MS`; 0: not at all) until other processes used at
 * most `QUIET_CORES` over the last `windowMs`, so that a round starts on a quiet machine where
 * one can be had. Gives how long it waited and the load last seen (null: not measured).
 */
export async function awaitQuiet(
  opts: { maxMs?: number; windowMs?: number; pids?: readonly number[] } = {},
): Promise<{ waitedMs: number; cores: number | null }> {
  const maxMs = opts.maxMs ?? QUIET_WAIT_MS;
  const windowMs = opts.windowMs ?? 500;
  const t0 = performance.now();
  if (maxMs <= 0) return { waitedMs: 0, cores: null };
  for (;;) {
    const a = cpuSample(opts.pids);
    if (!a) return { waitedMs: 0, cores: null };
    await new Promise((r) => setTimeout(r, windowMs));
    const cores = othersCores(a, cpuSample(opts.pids));
    const waitedMs = performance.now() - t0;
    if (cores === null || cores <= QUIET_CORES || waitedMs >= maxMs) return { waitedMs, cores };
  }
}

/**
 * Indices of the rounds to take a ratio from: those at most `QUIET_CORES`, when they are at
 * least `min` (and at least half the rounds); otherwise the quietest half (at least `min`), so
 * that a busy machine still gives a figure, from its least disturbed rounds. Rounds without a
 * load figure count as quiet.
 */
export function quietRounds(load: readonly (number | null)[], min = 3): number[] {
  const idx = load.map((_, i) => i);
  const quiet = idx.filter((i) => (load[i] ?? 0) <= QUIET_CORES);
  const need = Math.min(load.length, Math.max(min, Math.ceil(load.length / 2)));
  if (quiet.length >= need) return quiet;
  return idx.sort((i, j) => (load[i] ?? 0) - (load[j] ?? 0)).slice(0, need).sort((i, j) => i - j);
}

/**
 * Per-case time and memory of a reader run: wall time, and the peak resident
 * memory above the start. On Linux the kernel's peak (VmHWM) is reset before
 * the case (`/proc/self/clear_refs`, 5) and read after it, so a buffer filled
 * and dropped inside the case still counts; elsewhere, the growth of
 * `Deno.memoryUsage()` (rss and external) after the case stands in for it.
 */

/** What one case cost. */
export interface Cost {
  /** Wall time, milliseconds. */
  ms: number;
  /** Peak resident bytes above the start. */
  peakBytes: number;
  /** "vmhwm" (the kernel's peak) or "usage" (growth by the end only). */
  how: "vmhwm" | "usage";
}

let procWorks: boolean | undefined;

function procStatus(key: "VmRSS" | "VmHWM"): number {
  const text = Deno.readTextFileSync("/proc/self/status");
  const m = new RegExp(`${key}:\\s+(\\d+) kB`).exec(text);
  if (!m) throw new Error(`no ${key} in /proc/self/status`);
  return Number(m[1]) * 1024;
}

function canUseProc(): boolean {
  if (procWorks === undefined) {
    try {
      Deno.writeTextFileSync("/proc/self/clear_refs", "5");
      procStatus("VmHWM");
      procWorks = true;
    } catch {
      procWorks = false;
    }
  }
  return procWorks;
}

function usage(): number {
  const u = Deno.memoryUsage();
  return u.rss + u.external;
}

/** Runs `fn`, returning its outcome (value or thrown error) and what it cost. */
export async function measure<T>(
  fn: () => Promise<T> | T,
): Promise<{ cost: Cost; value?: T; error?: unknown; threw: boolean }> {
  const proc = canUseProc();
  let base: number;
  if (proc) {
    Deno.writeTextFileSync("/proc/self/clear_refs", "5");
    base = procStatus("VmRSS");
  } else base = usage();
  const t0 = performance.now();
  let value: T | undefined;
  let error: unknown;
  let threw = false;
  try {
    value = await fn();
  } catch (e) {
    error = e;
    threw = true;
  }
  const ms = performance.now() - t0;
  const peak = proc ? procStatus("VmHWM") : usage();
  return {
    cost: { ms, peakBytes: Math.max(0, peak - base), how: proc ? "vmhwm" : "usage" },
    value,
    error,
    threw,
  };
}

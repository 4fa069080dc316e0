/**
 * Running fuzz cases: one case (generate from its seed, read, classify the
 * outcome against the target's typed errors and the time and memory budget),
 * a batch of cases with a tally, signatures that tell findings apart, a
 * delta-debugging minimizer, and saving a finding with its reproducer.
 */
import { join } from "node:path";
import { measure } from "./measure.ts";
import { caseSeed, FuzzRng } from "./mutate.ts";
import type { FuzzTarget } from "./targets.ts";

/** Per-case limits: time and peak memory, each a fixed part plus a part per input byte. */
export interface Budget {
  /** Milliseconds for any case... */
  ms: number;
  /** ...plus this many per MiB of input. */
  msPerMiB: number;
  /** Peak memory above the start for any case... */
  bytes: number;
  /** ...plus this many per input byte. */
  bytesPerInputByte: number;
}

/**
 * Generous for a 2-core machine shared with other work, yet tiny next to what
 * the attacks took; above the readers' own allocation budget (LIMITS: 64 MiB
 * + 48 × the bytes parsed, at sizes that overstate V8's), so a reader
 * stopped by that budget stays inside this one.
 */
export const DEFAULT_BUDGET: Budget = {
  ms: 3000,
  msPerMiB: 2000,
  bytes: 128 << 20,
  bytesPerInputByte: 64,
};

/** How a case went wrong. */
export type FailureKind =
  | "untyped" // an error the reader must not throw (RangeError, TypeError, …)
  | "unnamed" // a typed error that does not name the file
  | "property" // a read that succeeded with something impossible
  | "slow" // over the time budget
  | "memory" // over the memory budget
  | "hang" // no answer at all (the long runner's watchdog)
  | "crash"; // the process died (out of memory, say)

/** The outcome of one case. */
export interface CaseResult {
  target: string;
  seed: number;
  index: number;
  inputBytes: number;
  ms: number;
  peakBytes: number;
  /** "ok", or the typed error's class name. */
  outcome: string;
  failure?: { kind: FailureKind; detail: string };
}

/** The input of case `index` of `target` in a run seeded `seed`. */
export function caseInput(target: FuzzTarget, seed: number, index: number): Uint8Array {
  return target.generate(new FuzzRng(caseSeed(seed, target.name, index)));
}

/** Reads `input` with `target` and judges the outcome (no seed needed: for replay and minimizing). */
export async function judge(
  target: FuzzTarget,
  input: Uint8Array,
  tmp: string,
  budget: Budget = DEFAULT_BUDGET,
): Promise<Omit<CaseResult, "target" | "seed" | "index">> {
  const file = `fuzz-case.${target.ext}`;
  const r = await measure(() => target.run(input, file, tmp));
  const res: Omit<CaseResult, "target" | "seed" | "index"> = {
    inputBytes: input.length,
    ms: Math.round(r.cost.ms * 10) / 10,
    peakBytes: r.cost.peakBytes,
    outcome: "ok",
  };
  if (r.threw) {
    const e = r.error;
    res.outcome = e instanceof Error ? e.name : typeof e;
    const text = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
    if (e instanceof Error && e.name === "FuzzPropertyError") {
      res.failure = { kind: "property", detail: e.message };
    } else if (!target.typed(e)) {
      const where = e instanceof Error ? (e.stack ?? "").split("\n").slice(1, 4).join(" | ") : "";
      res.failure = { kind: "untyped", detail: `${text.slice(0, 300)} ${where}`.trim() };
    } else if (target.namesFile && !(e as Error).message.includes(file)) {
      res.failure = { kind: "unnamed", detail: text.slice(0, 300) };
    }
  }
  const mib = input.length / 2 ** 20;
  const msLimit = budget.ms + budget.msPerMiB * mib;
  const byteLimit = budget.bytes + budget.bytesPerInputByte * input.length;
  if (!res.failure && r.cost.ms > msLimit) {
    res.failure = {
      kind: "slow",
      detail: `${r.cost.ms.toFixed(0)} ms > ${msLimit.toFixed(0)} ms for ${input.length} bytes`,
    };
  }
  if (!res.failure && r.cost.peakBytes > byteLimit) {
    res.failure = {
      kind: "memory",
      detail: `peak ${(r.cost.peakBytes / 2 ** 20).toFixed(1)} MiB > ${
        (byteLimit / 2 ** 20).toFixed(1)
      } MiB for ${input.length} bytes (${r.cost.how})`,
    };
  }
  return res;
}

/** Runs case `index` of `target`. */
export async function runCase(
  target: FuzzTarget,
  seed: number,
  index: number,
  tmp: string,
  budget: Budget = DEFAULT_BUDGET,
): Promise<CaseResult> {
  const input = caseInput(target, seed, index);
  return { target: target.name, seed, index, ...(await judge(target, input, tmp, budget)) };
}

/** What tells two findings apart: target, kind, and the error's class and message shape. */
export function signature(target: string, failure: { kind: FailureKind; detail: string }): string {
  if (failure.kind !== "untyped" && failure.kind !== "property") return `${target}|${failure.kind}`;
  const shape = failure.detail
    .split(" | ")[0]
    .replace(/fuzz-case\.\w+/g, "FILE")
    .replace(/\d+/g, "N")
    .replace(/"[^"]*"|'[^']*'/g, "S")
    .slice(0, 120);
  return `${target}|${failure.kind}|${shape}`;
}

/**
 * Shrinks `input` while `judge` keeps giving the same signature: removes
 * halves, quarters, … down to single bytes (delta debugging), within
 * `maxAttempts` reads and `maxMs`.
 */
export async function minimize(
  target: FuzzTarget,
  input: Uint8Array,
  sig: string,
  tmp: string,
  opts: { maxAttempts?: number; maxMs?: number; budget?: Budget } = {},
): Promise<{ bytes: Uint8Array; attempts: number }> {
  const maxAttempts = opts.maxAttempts ?? 3000;
  const deadline = performance.now() + (opts.maxMs ?? 60_000);
  let attempts = 0;
  const same = async (b: Uint8Array) => {
    attempts++;
    const r = await judge(target, b, tmp, opts.budget);
    return r.failure !== undefined && signature(target.name, r.failure) === sig;
  };
  let cur = input;
  let chunk = Math.max(1, cur.length >> 1);
  while (chunk >= 1 && attempts < maxAttempts && performance.now() < deadline) {
    let progressed = false;
    for (let i = 0; i < cur.length && attempts < maxAttempts && performance.now() < deadline;) {
      const cand = new Uint8Array(cur.length - Math.min(chunk, cur.length - i));
      cand.set(cur.subarray(0, i));
      cand.set(cur.subarray(i + chunk), i);
      if (await same(cand)) {
        cur = cand;
        progressed = true;
      } else i += chunk;
    }
    if (!progressed) chunk >>= 1;
  }
  return { bytes: cur, attempts };
}

/** Tally of a batch of cases. */
export interface Tally {
  cases: number;
  /** Per target: cases, successes, typed errors by class, slowest case, largest peak. */
  targets: Map<
    string,
    { cases: number; ok: number; errors: Map<string, number>; maxMs: number; maxPeak: number }
  >;
  failures: CaseResult[];
}

/** An empty tally. */
export function newTally(): Tally {
  return { cases: 0, targets: new Map(), failures: [] };
}

/** Adds a result to the tally. */
export function count(t: Tally, r: CaseResult): void {
  t.cases++;
  let s = t.targets.get(r.target);
  if (!s) t.targets.set(r.target, s = { cases: 0, ok: 0, errors: new Map(), maxMs: 0, maxPeak: 0 });
  s.cases++;
  if (r.outcome === "ok") s.ok++;
  else s.errors.set(r.outcome, (s.errors.get(r.outcome) ?? 0) + 1);
  s.maxMs = Math.max(s.maxMs, r.ms);
  s.maxPeak = Math.max(s.maxPeak, r.peakBytes);
  if (r.failure) t.failures.push(r);
}

/** The tally as a table, one line per target. */
export function formatTally(t: Tally): string {
  const lines = [...t.targets].map(([name, s]) => {
    const errs = [...s.errors].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v}`).join(", ");
    return `${name.padEnd(12)} ${String(s.cases).padStart(7)} cases  ${
      String(s.ok).padStart(6)
    } ok  ` +
      `max ${s.maxMs.toFixed(0).padStart(5)} ms ${
        (s.maxPeak / 2 ** 20).toFixed(0).padStart(4)
      } MiB  ${errs}`;
  });
  return lines.join("\n");
}

/** Where a finding is saved: the reproducer and a JSON record beside it. */
export async function saveFinding(
  dir: string,
  target: FuzzTarget,
  r: CaseResult,
  input: Uint8Array,
  minimized: Uint8Array | null,
): Promise<string> {
  await Deno.mkdir(dir, { recursive: true });
  const sig = signature(target.name, r.failure!);
  const hash = [
    ...new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(sig))),
  ]
    .slice(0, 4).map((b) => b.toString(16).padStart(2, "0")).join("");
  const base = join(dir, `${target.name}-${r.failure!.kind}-${hash}`);
  const repro = `${base}.${target.ext}`;
  await Deno.writeFile(repro, minimized ?? input);
  await Deno.writeTextFile(
    `${base}.json`,
    JSON.stringify(
      {
        signature: sig,
        target: target.name,
        kind: r.failure!.kind,
        detail: r.failure!.detail,
        seed: r.seed,
        case: r.index,
        ms: r.ms,
        peakBytes: r.peakBytes,
        inputBytes: input.length,
        reproducerBytes: (minimized ?? input).length,
        minimized: minimized !== null,
        replay: `deno task fuzz --replay ${repro} --target ${target.name}`,
        regenerate: `deno task fuzz --target ${target.name} --seed ${r.seed} --case ${r.index}`,
      },
      null,
      2,
    ) + "\n",
  );
  return repro;
}

/** Signatures of the findings already in `dir` (so a run reports only new ones). */
export async function knownSignatures(dir: string): Promise<Set<string>> {
  const out = new Set<string>();
  try {
    for await (const e of Deno.readDir(dir)) {
      if (!e.name.endsWith(".json")) continue;
      try {
        out.add(JSON.parse(await Deno.readTextFile(join(dir, e.name))).signature);
      } catch { /* not one of ours */ }
    }
  } catch { /* no folder yet */ }
  return out;
}

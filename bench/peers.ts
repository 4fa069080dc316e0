/**
 * Python peers of the benchmarks: a peer is a script under scripts/bench/ that runs the same
 * work in PyTorch or Pillow (Debian's /usr/bin/python3), times it itself after its own warm-up
 * (so interpreter start-up, imports and model construction never count), and speaks the
 * protocol of scripts/bench/serve.py: either one JSON line after `--iters` iterations,
 *
 *   {"peer": "torch_vit", "ms": [per-iteration ms…], "items": 32, "torch": "1.13.1",
 *    "threads": 2, "max_rss_mib": 900}
 *
 * or, with `--serve` (`PeerSession`), one timed iteration per request, so that bloom's runs and
 * the peer's alternate A B A B (`interleave`) with the same thread count, and the row carries
 * both sides' medians and spread (`comparisonRow`). Where a peer cannot run (no torch) it says
 * `{"peer": …, "unavailable": "why"}`. A peer that is missing, fails or times out never throws
 * here: the outcome says why, and the row built from it carries a NaN ratio and the reason.
 */
import { type BenchRow, type Comparison, median } from "./harness.ts";
import {
  awaitQuiet,
  type CpuSample,
  cpuSample,
  othersCores,
  QUIET_CORES,
  quietRounds,
} from "./load.ts";

/** Debian's interpreter, the one with torch 1.13 on these machines. */
export const PYTHON = "/usr/bin/python3";

/** Absolute path of a peer script in scripts/bench/. */
export function peerScript(name: string): string {
  return new URL(`../scripts/bench/${name}`, import.meta.url).pathname;
}

/** A peer that ran: its per-iteration times and what it processed per iteration. */
export interface PeerTiming {
  ok: true;
  peer: string;
  /** Milliseconds of each timed iteration (after the peer's warm-up). */
  ms: number[];
  /** Median of `ms`. */
  medianMs: number;
  /** Items (images) per iteration. */
  items: number;
  /** items / median seconds. */
  rate: number;
  /** Free-form facts the peer reported (torch version, threads). */
  info: Record<string, string | number>;
}

/** A peer that did not produce a timing, and why. */
export interface PeerSkipped {
  ok: false;
  reason: string;
}

/** What running a peer gives. */
export type PeerOutcome = PeerTiming | PeerSkipped;

/**
 * Parses a peer's stdout: the last non-empty line must be the JSON object described at the top
 * of this file. Throws an Error naming `source` and the offending field otherwise (a peer that
 * prints something else is a bug in the peer, not an environment condition).
 */
export function parsePeerOutput(stdout: string, source: string): PeerOutcome {
  const lines = stdout.split("\n").map((l) => l.trim()).filter((l) => l.length > 0);
  if (lines.length === 0) throw new Error(`${source}: printed nothing; expected one JSON line`);
  let doc: unknown;
  try {
    doc = JSON.parse(lines[lines.length - 1]);
  } catch {
    throw new Error(
      `${source}: last line is not JSON: ${JSON.stringify(lines[lines.length - 1].slice(0, 200))}`,
    );
  }
  if (typeof doc !== "object" || doc === null || Array.isArray(doc)) {
    throw new Error(`${source}: last line must be a JSON object`);
  }
  const o = doc as Record<string, unknown>;
  if (typeof o.unavailable === "string") {
    return { ok: false, reason: o.unavailable };
  }
  const ms = o.ms;
  if (!Array.isArray(ms) || ms.length === 0 || !ms.every((x) => typeof x === "number" && x > 0)) {
    throw new Error(`${source}: field 'ms' must be a non-empty array of positive numbers`);
  }
  const items = o.items;
  if (typeof items !== "number" || !Number.isInteger(items) || items < 1) {
    throw new Error(`${source}: field 'items' must be a positive integer, got ${items}`);
  }
  const info: Record<string, string | number> = {};
  for (const [k, v] of Object.entries(o)) {
    if (k !== "ms" && k !== "items" && (typeof v === "string" || typeof v === "number")) {
      info[k] = v;
    }
  }
  const medianMs = median(ms as number[]);
  return {
    ok: true,
    peer: typeof o.peer === "string" ? o.peer : source,
    ms: ms as number[],
    medianMs,
    items,
    rate: items / (medianMs / 1000),
    info,
  };
}

/** Options of `runPeer`. */
export interface RunPeerOptions {
  /** Interpreter (default `PYTHON`); tests point it elsewhere. */
  python?: string;
  /** Kill the peer after this long (default 1 h; a ViT-S b32 step on 2 loaded cores is ~20 min). */
  timeoutMs?: number;
  /** Extra environment variables (e.g. the thread count of a BLAS peer). */
  env?: Record<string, string>;
}

/**
 * Runs `python script args…` and parses its timing. Never throws for environment conditions:
 * a missing interpreter, a non-zero exit (with the tail of stderr), a timeout or a peer that
 * reports itself unavailable all give `{ok: false, reason}`.
 */
export async function runPeer(
  script: string,
  args: readonly string[],
  opts: RunPeerOptions = {},
): Promise<PeerOutcome> {
  const python = opts.python ?? PYTHON;
  const name = script.split("/").pop() ?? script;
  const timeoutMs = opts.timeoutMs ?? 60 * 60_000;
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(python, {
      args: [script, ...args],
      env: opts.env,
      stdout: "piped",
      stderr: "piped",
      stdin: "null",
    }).spawn();
  } catch (e) {
    return { ok: false, reason: `${python} cannot be started (${(e as Error).message})` };
  }
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      child.kill("SIGKILL");
    } catch { /* already exited */ }
  }, timeoutMs);
  const out = await child.output();
  clearTimeout(timer);
  const dec = new TextDecoder();
  if (timedOut) return { ok: false, reason: `${name} timed out after ${timeoutMs / 1000} s` };
  if (!out.success) {
    const err = dec.decode(out.stderr).trim().split("\n").slice(-3).join(" | ");
    return { ok: false, reason: `${name} exited with ${out.code}: ${err.slice(-300)}` };
  }
  try {
    return parsePeerOutput(dec.decode(out.stdout), name);
  } catch (e) {
    return { ok: false, reason: (e as Error).message };
  }
}

/**
 * A throughput row: ours (`ms` per call of `items` items) next to a peer's images/s. Where the
 * peer was skipped, `peak` and `ratio` are NaN and the note says why.
 */
export function peerRow(
  name: string,
  ms: number,
  items: number,
  peer: PeerOutcome,
  peerName: string,
  note: string,
): BenchRow {
  const rate = items / (ms / 1000);
  const peak = peer.ok ? peer.rate : NaN;
  const rss = peer.ok && typeof peer.info.max_rss_mib === "number"
    ? `, max RSS ${peer.info.max_rss_mib} MiB`
    : "";
  const theirs = peer.ok
    ? `; ${peerName} ${peer.medianMs.toFixed(0)} ms median of ${peer.ms.length}${rss}`
    : `; ${peerName} skipped: ${peer.reason}`;
  return { name, ms, rate, peak, peakName: peerName, ratio: rate / peak, note: note + theirs };
}

// ------------------------------------------------------------------ interleaved peers

/** The threads bloom's side uses here: llvmpipe's (LP_NUM_THREADS) or one per CPU. */
export function ourThreads(): number {
  try {
    const lp = Number(Deno.env.get("LP_NUM_THREADS"));
    if (Number.isInteger(lp) && lp > 0) return lp;
  } catch { /* no env permission */ }
  return navigator.hardwareConcurrency || 1;
}

/** Reads a child's stdout as lines. */
class LineReader {
  readonly #reader: ReadableStreamDefaultReader<Uint8Array>;
  readonly #dec = new TextDecoder();
  #buf = "";
  constructor(stream: ReadableStream<Uint8Array>) {
    this.#reader = stream.getReader();
  }
  /** The next non-empty line, or null at the end of the stream. */
  async next(): Promise<string | null> {
    for (;;) {
      const nl = this.#buf.indexOf("\n");
      if (nl >= 0) {
        const line = this.#buf.slice(0, nl).trim();
        this.#buf = this.#buf.slice(nl + 1);
        if (line) return line;
        continue;
      }
      const { value, done } = await this.#reader.read();
      if (done) {
        const rest = this.#buf.trim();
        this.#buf = "";
        return rest || null;
      }
      this.#buf += this.#dec.decode(value, { stream: true });
    }
  }
}

/**
 * The other side of an interleaved comparison: a served peer (`PeerSession`), or a side
 * measured in this process (the forward alone against the embed path, the FMA peak against a
 * forward). `run` gives one round's milliseconds; `pid` names a process whose CPU time is the
 * benchmark's own, not other load (bench/load.ts).
 */
export interface PeerSide {
  readonly name: string;
  run(): Promise<number>;
  readonly pid?: number;
}

/** Whether a peer could not be started. */
export function peerSkipped(p: PeerSide | PeerSkipped): p is PeerSkipped {
  return (p as PeerSkipped).ok === false;
}

/**
 * A peer kept alive across rounds (`--serve`): started once — imports, model, inputs and its
 * warm-up never count — then asked for one timed iteration at a time.
 */
export class PeerSession implements PeerSide {
  readonly name: string;
  /** Items per iteration. */
  readonly items: number;
  /** Facts the peer reported (torch version, threads, …). */
  readonly info: Record<string, string | number>;
  readonly #child: Deno.ChildProcess;
  readonly #lines: LineReader;
  readonly #stdin: WritableStreamDefaultWriter<Uint8Array>;
  readonly #stderr: Promise<string>;
  readonly #timeoutMs: number;

  private constructor(
    name: string,
    items: number,
    info: Record<string, string | number>,
    child: Deno.ChildProcess,
    lines: LineReader,
    stderr: Promise<string>,
    timeoutMs: number,
  ) {
    this.name = name;
    this.items = items;
    this.info = info;
    this.#child = child;
    this.#lines = lines;
    this.#stdin = child.stdin.getWriter();
    this.#stderr = stderr;
    this.#timeoutMs = timeoutMs;
  }

  /**
   * Starts `python script --serve args…` and waits until it is ready. Never throws for
   * environment conditions: a missing interpreter, a peer that exits, reports itself
   * unavailable or is not ready in time gives `{ok: false, reason}`.
   */
  static async open(
    script: string,
    args: readonly string[],
    opts: RunPeerOptions = {},
  ): Promise<PeerSession | PeerSkipped> {
    const python = opts.python ?? PYTHON;
    const name = script.split("/").pop() ?? script;
    const timeoutMs = opts.timeoutMs ?? 60 * 60_000;
    let child: Deno.ChildProcess;
    try {
      child = new Deno.Command(python, {
        args: [script, "--serve", ...args],
        env: opts.env,
        stdin: "piped",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
    } catch (e) {
      return { ok: false, reason: `${python} cannot be started (${(e as Error).message})` };
    }
    const stderr = new Response(child.stderr).text().catch(() => "");
    const lines = new LineReader(child.stdout);
    const fail = async (why: string): Promise<PeerSkipped> => {
      try {
        child.kill("SIGKILL");
      } catch { /* already gone */ }
      await child.status;
      const err = (await stderr).trim().split("\n").slice(-3).join(" | ");
      return { ok: false, reason: `${name} ${why}${err ? `: ${err.slice(-300)}` : ""}` };
    };
    const first = await withTimeout(lines.next(), timeoutMs);
    if (first === undefined) return await fail(`was not ready after ${timeoutMs / 1000} s`);
    if (first === null) return await fail("exited before it was ready");
    let doc: Record<string, unknown>;
    try {
      doc = JSON.parse(first);
    } catch {
      return await fail(`printed ${JSON.stringify(first.slice(0, 200))}, not JSON`);
    }
    if (typeof doc.unavailable === "string") {
      await fail("unavailable");
      return { ok: false, reason: doc.unavailable };
    }
    const items = doc.items;
    if (doc.ready !== true || typeof items !== "number" || !(items >= 1)) {
      return await fail(`answered ${first.slice(0, 200)} instead of a ready line with items`);
    }
    const info: Record<string, string | number> = {};
    for (const [k, v] of Object.entries(doc)) {
      if (k !== "items" && k !== "ready" && (typeof v === "string" || typeof v === "number")) {
        info[k] = v;
      }
    }
    const peer = typeof doc.peer === "string" ? doc.peer : name;
    return new PeerSession(peer, items, info, child, lines, stderr, timeoutMs);
  }

  /** The peer's process id (its CPU time is the benchmark's own, bench/load.ts). */
  get pid(): number {
    return this.#child.pid;
  }

  /** Runs one iteration; its milliseconds as the peer timed them. Throws if the peer fails. */
  async run(): Promise<number> {
    await this.#stdin.write(new TextEncoder().encode("run\n"));
    const line = await withTimeout(this.#lines.next(), this.#timeoutMs);
    if (line === undefined) {
      throw new Error(`${this.name} did not answer in ${this.#timeoutMs / 1000} s`);
    }
    if (line === null) {
      const err = (await this.#stderr).trim().split("\n").slice(-3).join(" | ");
      throw new Error(`${this.name} exited mid-run: ${err.slice(-300)}`);
    }
    const doc = JSON.parse(line) as { ms?: unknown };
    if (typeof doc.ms !== "number" || !(doc.ms > 0)) {
      throw new Error(`${this.name} answered ${line.slice(0, 200)} instead of {"ms": …}`);
    }
    return doc.ms;
  }

  /** Ends the peer; its last report (max RSS) joins `info`. */
  async close(): Promise<void> {
    try {
      await this.#stdin.write(new TextEncoder().encode("quit\n"));
      await this.#stdin.close();
      const last = await withTimeout(this.#lines.next(), 30_000);
      if (last) {
        const doc = JSON.parse(last) as Record<string, unknown>;
        if (typeof doc.max_rss_mib === "number") this.info.max_rss_mib = doc.max_rss_mib;
      }
    } catch { /* a peer that already died has nothing more to say */ }
    try {
      this.#child.kill("SIGKILL");
    } catch { /* exited */ }
    await this.#child.status;
  }
}

async function withTimeout<T>(p: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<undefined>((r) => (timer = setTimeout(() => r(undefined), ms)));
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** The per-round milliseconds of both sides of an interleaved comparison. */
export interface Rounds {
  ours: number[];
  theirs: number[];
  /**
   * Cores other processes used during each round: the larger of the two sides' averages (a
   * burst during one side skews the round's ratio), null where not measurable (bench/load.ts);
   * absent when not recorded.
   */
  load?: (number | null)[];
  /** Why the peer's side is empty or short (it failed, or was skipped). */
  peerError?: string;
}

/** Options of `interleave`. */
export interface InterleaveOptions {
  /**
   * Rounds at most: after `rounds`, more are run (up to this many in all) while fewer than 3
   * of them, or fewer than half, were quiet. Default: `rounds` (no extra rounds).
   */
  maxRounds?: number;
  /**
   * Wait up to this long before each round for other processes to quieten (default 0; full
   * benchmark runs pass bench/load.ts `QUIET_WAIT_MS`).
   */
  quietWaitMs?: number;
  /** Test hook: reads the CPU counters (default bench/load.ts `cpuSample`). */
  cpu?: (pids: readonly number[]) => CpuSample | null;
}

/**
 * Alternates `rounds` runs of ours and the peer's — A B A B … — so that drift on a shared
 * machine (other processes, thermal state) hits both alike. Before each round it waits (a
 * little) for a quiet machine, and it records the cores other processes used during the
 * round (bench/load.ts), so the row can keep to the quiet rounds; where too few were quiet it
 * runs extra rounds up to `maxRounds`. Each side's own milliseconds per run; a peer that fails
 * mid-way leaves its side short and says why.
 */
export async function interleave(
  rounds: number,
  ours: () => Promise<number>,
  peer: PeerSide | PeerSkipped,
  opts: InterleaveOptions = {},
): Promise<Rounds> {
  const r: Rounds = { ours: [], theirs: [], load: [] };
  const load = r.load!;
  const side = peerSkipped(peer) ? null : peer;
  if (peerSkipped(peer)) r.peerError = peer.reason;
  const pids = side?.pid !== undefined ? [side.pid] : [];
  const maxRounds = Math.max(rounds, opts.maxRounds ?? rounds);
  const cpu = opts.cpu ?? cpuSample;
  const enough = () => {
    const quiet = load.filter((c) => (c ?? 0) <= QUIET_CORES).length;
    return quiet >= Math.min(3, load.length) && 2 * quiet >= load.length;
  };
  for (let i = 0; i < maxRounds && (i < rounds || !enough()); i++) {
    await awaitQuiet({ maxMs: opts.quietWaitMs ?? 0, pids });
    const a = cpu(pids);
    r.ours.push(await ours());
    const m = cpu(pids);
    // Each side's own share: a burst during one side only is what skews a round's ratio.
    const halves = [othersCores(a, m)];
    if (side && r.peerError === undefined) {
      try {
        r.theirs.push(await side.run());
        halves.push(othersCores(m, cpu(pids)));
      } catch (e) {
        r.peerError = (e as Error).message;
      }
    }
    const known = halves.filter((c): c is number => c !== null);
    load.push(known.length ? Math.max(...known) : null);
  }
  return r;
}

/** min, median, max of a list (NaN for an empty one). */
function spread(xs: number[]): [number, number, number] {
  return xs.length ? [Math.min(...xs), median(xs), Math.max(...xs)] : [NaN, NaN, NaN];
}

/**
 * A row comparing ours with a peer from interleaved rounds: the ratio ours/peer is the median
 * of the rounds' own ratios — each compares two runs made side by side, so load that comes and
 * goes between rounds cancels (a ratio of the two medians moved by 19 % between runs on a
 * loaded machine where this moved by 6 %) — taken over the quiet rounds where the load was
 * recorded (bench/load.ts `quietRounds`: a burst of other work skews even a round's ratio, as
 * it slows the two sides unequally). Each side's rate is from its median time over the same
 * rounds. Both sides' spread, the per-round ratios and the load travel in `compare`. Where the
 * peer did not run, the ratio is NaN and the note says why.
 */
export function comparisonRow(
  name: string,
  items: { ours: number; peer: number },
  rounds: Rounds,
  peerName: string,
  threads: { ours: number; peer: number },
  note: string,
): BenchRow {
  const n = Math.min(rounds.ours.length, rounds.theirs.length);
  const perRound = Array.from(
    { length: n },
    (_, i) => (items.ours / rounds.ours[i]) / (items.peer / rounds.theirs[i]),
  );
  const load = rounds.load?.slice(0, n);
  const used = load && load.length === n ? quietRounds(load) : perRound.map((_, i) => i);
  const pick = (xs: number[]) => (n ? used.map((i) => xs[i]) : xs);
  const [oMin, oMed, oMax] = spread(rounds.ours);
  const [pMin, pMed, pMax] = spread(rounds.theirs);
  const rate = items.ours / (median0(pick(rounds.ours)) / 1000);
  const peak = items.peer / (median0(pick(rounds.theirs)) / 1000);
  const ratio = n ? median(used.map((i) => perRound[i])) : NaN;
  const compare: Comparison = {
    rounds: rounds.ours.length,
    threads,
    ours: { rate, msMedian: oMed, msMin: oMin, msMax: oMax },
    peer: { name: peerName, rate: peak, msMedian: pMed, msMin: pMin, msMax: pMax },
    ratioPerRound: spread(perRound),
  };
  if (load && load.length === n && n > 0) {
    compare.quiet = { used: used.length, othersCores: load, ratioAllRounds: median(perRound) };
  }
  const fmt = (a: number, b: number) => `${a.toFixed(0)}–${b.toFixed(0)} ms`;
  const theirs = rounds.theirs.length
    ? `; ${rounds.ours.length} rounds A B interleaved, ${threads.ours} vs ${threads.peer} ` +
      `threads: ours ${fmt(oMin, oMax)}, ${peerName} ${fmt(pMin, pMax)}, per-round ratio ` +
      `${compare.ratioPerRound[0].toFixed(2)}–${compare.ratioPerRound[2].toFixed(2)} (ratio: ` +
      `their median${quietNote(compare)})`
    : `; ${peerName} skipped: ${rounds.peerError ?? "no rounds"}`;
  return {
    name,
    ms: median0(pick(rounds.ours)),
    rate,
    peak,
    peakName: peerName,
    ratio,
    note: note + theirs,
    compare,
  };
}

/** Median, NaN for an empty list. */
function median0(xs: number[]): number {
  return xs.length ? median(xs) : NaN;
}

/** How the rounds were chosen, for the note: "over 5 quiet rounds; all 7: 0.61". */
function quietNote(c: Comparison): string {
  const q = c.quiet;
  if (!q) return "";
  const known = q.othersCores.filter((x): x is number => x !== null);
  if (!known.length) return "; load not measurable";
  const max = Math.max(...known);
  const quiet = known.filter((x) => x <= QUIET_CORES).length;
  const all = `all ${q.othersCores.length}: ${q.ratioAllRounds.toFixed(2)}`;
  if (quiet === q.used) {
    return quiet === q.othersCores.length
      ? `; all rounds quiet, others ≤ ${max.toFixed(2)} cores`
      : `, over the ${quiet} quiet rounds (others ≤ ${QUIET_CORES} cores; ${all})`;
  }
  return `, over the ${q.used} least loaded rounds: machine busy, others ` +
    `${Math.min(...known).toFixed(2)}–${max.toFixed(2)} cores; ${all}`;
}

/**
 * A compute row from interleaved rounds against the FMA peak: `rounds.ours` the milliseconds of
 * one call doing `flops`, `peaks` the FMA peak (GFLOP/s) measured in the same round, so that
 * each round's fraction of the peak compares two figures taken side by side. The row's ratio is
 * the median of the rounds' fractions over the quiet rounds (`comparisonRow`), its GFLOP/s and
 * peak the medians over the same rounds.
 */
export function peakComparisonRow(
  name: string,
  flops: number,
  rounds: { ours: number[]; peaks: number[]; load?: (number | null)[] },
  threads: number,
  note: string,
): BenchRow {
  // The peak as the time it would take for the same work: the per-round ratio of rates is then
  // achieved / peak.
  const theirs = rounds.peaks.map((g) => flops / (g * 1e6));
  const c = comparisonRow(
    name,
    { ours: 1, peer: 1 },
    { ours: rounds.ours, theirs, load: rounds.load },
    "fma peak",
    { ours: threads, peer: threads },
    note,
  );
  const { rate, ...row } = c;
  return {
    ...row,
    gflops: (rate! * flops) / 1e9,
    peak: (c.peak * flops) / 1e9,
    note: c.note!.replace(/fma peak [0-9]+–[0-9]+ ms/, () => {
      const g = rounds.peaks;
      return `fma peak ${Math.min(...g).toFixed(1)}–${Math.max(...g).toFixed(1)} GFLOP/s`;
    }),
  };
}

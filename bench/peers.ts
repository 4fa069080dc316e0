/**
 * Python peers of the model benchmarks: a peer is a script under scripts/bench/ that runs the
 * same work in PyTorch (Debian's /usr/bin/python3), times it itself after its own warm-up (so
 * interpreter start-up, imports and model construction never count), and prints one JSON line:
 *
 *   {"peer": "torch_vit", "ms": [per-iteration ms…], "items": 32, "torch": "1.13.1",
 *    "threads": 2, "max_rss_mib": 900}
 *
 * or, where it cannot run (no torch), `{"peer": …, "unavailable": "why"}`. A peer that is
 * missing, fails or times out never throws here: the outcome says why, and the row built from it
 * carries a NaN ratio and that reason in its note.
 */
import { type BenchRow, median } from "./harness.ts";

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

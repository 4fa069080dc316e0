/**
 * A progress display for long pipelines (ingest, embed, train): count/total,
 * rate and ETA. On a terminal it redraws one line in place; elsewhere (CI
 * logs, pipes) it prints a plain line every `intervalMs`, so logs stay
 * readable.
 */

/** Where the display writes, and whether that is a terminal. */
export interface ProgressSink {
  write(text: string): void;
  isTerminal: boolean;
}

/** Options of a `Progress`. */
export interface ProgressOptions {
  /** What is counted: "images", "batches". */
  unit?: string;
  /** A short label in front of the line: "ingest". */
  label?: string;
  /** Default: stderr, a terminal when stderr is one. */
  sink?: ProgressSink;
  /** Minimum time between printed lines when not a terminal (default 10 s). */
  intervalMs?: number;
  /** Minimum time between redraws on a terminal (default 100 ms). */
  redrawMs?: number;
  /** Clock in milliseconds (tests pass a fake one). */
  now?: () => number;
  /** Print nothing (tests, --quiet). */
  silent?: boolean;
  /** Formats counts and rates ("84.2 MiB"); default: the number and `unit`. */
  format?: (n: number) => string;
}

/** stderr as a sink; writes synchronously so lines never interleave. */
export function stderrSink(): ProgressSink {
  const enc = new TextEncoder();
  return {
    write: (text) => {
      const b = enc.encode(text);
      let at = 0;
      while (at < b.length) at += Deno.stderr.writeSync(b.subarray(at));
    },
    isTerminal: Deno.stderr.isTerminal(),
  };
}

/** Formats seconds as "42s", "3m05s" or "2h07m". */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "?";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

/**
 * Counts work done against a known (or unknown, `total` 0) amount. The rate
 * is taken over the whole run so far (steady and honest for pipelines whose
 * items cost about the same); the ETA is what is left at that rate.
 */
export class Progress {
  readonly total: number;
  #count = 0;
  /** Of `#count`, the items an earlier run did (resumed): not part of this run's rate. */
  #resumed = 0;
  #extra = "";
  #opts: Required<Omit<ProgressOptions, "sink" | "format">> & {
    sink: ProgressSink | null;
    format?: (n: number) => string;
  };
  #start: number;
  #lastDraw = -Infinity;
  /** Count and note of the last line drawn, so `done` does not print the same line twice. */
  #lastDrawn: [number, string] | null = null;
  #drawnOnTty = false;

  constructor(total: number, opts: ProgressOptions = {}) {
    this.total = total;
    const silent = opts.silent ?? false;
    this.#opts = {
      unit: opts.unit ?? "items",
      label: opts.label ?? "",
      sink: silent ? null : opts.sink ?? stderrSink(),
      intervalMs: opts.intervalMs ?? 10_000,
      redrawMs: opts.redrawMs ?? 100,
      now: opts.now ?? (() => performance.now()),
      silent,
      format: opts.format,
    };
    this.#start = this.#opts.now();
  }

  /** Items done so far. */
  get count(): number {
    return this.#count;
  }

  /** Items per second since the start (items resumed from an earlier run left out). */
  rate(): number {
    const s = (this.#opts.now() - this.#start) / 1000;
    return s > 0 ? (this.#count - this.#resumed) / s : 0;
  }

  /** Seconds left at the current rate, or NaN when unknown. */
  eta(): number {
    const r = this.rate();
    if (this.total <= 0 || r <= 0) return NaN;
    return Math.max(0, this.total - this.#count) / r;
  }

  /** The status line as printed (without terminal control codes). */
  line(): string {
    const { unit, label, format } = this.#opts;
    const n = format ?? ((x: number) => `${x} ${unit}`);
    const parts: string[] = [];
    if (label) parts.push(`${label}:`);
    if (this.total > 0) {
      const pct = ((100 * this.#count) / this.total).toFixed(1);
      const of = format
        ? `${format(this.#count)}/${format(this.total)}`
        : `${this.#count}/${this.total} ${unit}`;
      parts.push(`${of} (${pct}%)`);
    } else {
      parts.push(n(this.#count));
    }
    // Nothing done by this run yet (only resumed items): no rate or ETA to speak of.
    if (this.#count > this.#resumed || this.#resumed === 0) {
      parts.push(format ? `${format(this.rate())}/s` : `${this.rate().toFixed(1)} ${unit}/s`);
      if (this.total > 0) parts.push(`ETA ${formatDuration(this.eta())}`);
    }
    if (this.#extra) parts.push(this.#extra);
    return parts.join("  ");
  }

  /** Adds `n` finished items; `extra` is a short note shown at the end of the line. */
  tick(n = 1, extra?: string): void {
    this.#count += n;
    if (extra !== undefined) this.#extra = extra;
    this.#maybeDraw(false);
  }

  /**
   * Adds `n` items an earlier run finished (a resumed run's): they count
   * towards the total but not towards this run's rate.
   */
  resumed(n: number, extra?: string): void {
    this.#resumed += n;
    this.tick(n, extra);
  }

  /** Prints the final line (and ends the terminal line). */
  done(extra?: string): void {
    if (extra !== undefined) this.#extra = extra;
    this.#maybeDraw(true);
    if (this.#opts.sink?.isTerminal && this.#drawnOnTty) this.#opts.sink.write("\n");
    this.#drawnOnTty = false;
  }

  #maybeDraw(force: boolean): void {
    const sink = this.#opts.sink;
    if (!sink) return;
    const t = this.#opts.now();
    const gap = sink.isTerminal ? this.#opts.redrawMs : this.#opts.intervalMs;
    if (!force && t - this.#lastDraw < gap) return;
    const [n, extra] = this.#lastDrawn ?? [NaN, ""];
    if (force && !sink.isTerminal && n === this.#count && extra === this.#extra) return;
    this.#lastDraw = t;
    this.#lastDrawn = [this.#count, this.#extra];
    if (sink.isTerminal) {
      sink.write(`\r${this.line()}\x1b[K`);
      this.#drawnOnTty = true;
    } else {
      sink.write(`${this.line()}\n`);
    }
  }
}

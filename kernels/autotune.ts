/**
 * Autotuning: kernel variants are chosen by measuring candidates on the running adapter, never
 * by its name. Choices are cached per adapter, op and shape class — in memory, and persisted
 * to a JSON file so the next process starts tuned.
 *
 * Invariants:
 * - Lookups are synchronous and never measure (dispatch functions call them on every call);
 *   measuring happens only in `Autotuner.tune`, ahead of time.
 * - The cache file is best effort: a missing file is an empty cache; a corrupt one is ignored
 *   with a warning (and replaced on the next save); an unreadable or unwritable location
 *   leaves the cache in memory only. None of these throws.
 * - Saves merge into what is on disk (another process may have tuned other shapes) and
 *   replace the file atomically (write a sibling, then rename).
 */
import type { Gpu } from "./runtime.ts";

/** One tuned decision. */
export interface TuneRecord {
  /** Id of the chosen candidate. */
  choice: string;
  /** Its best time, in milliseconds (for the adapter-wide "default" record: a score). */
  ms: number;
  /** Best time of every candidate measured; null where it failed. */
  timings: Record<string, number | null>;
  /** When it was measured (ISO 8601). */
  at: string;
  /**
   * The candidate set it chose from (`TuneOptions.tag`): a record made from another set (an
   * older bloom, other candidates) is stale, and lookups with a tag ignore it.
   */
  tag?: string;
}

/** adapter name → op → shape class → record. */
type CacheData = Record<string, Record<string, Record<string, TuneRecord>>>;

const FILE_VERSION = 1;

/** Where the cache lives by default: `$BLOOM_CACHE_DIR/autotune.json` or `~/.cache/bloom/…`. */
export function defaultCachePath(): string | null {
  try {
    const dir = Deno.env.get("BLOOM_CACHE_DIR");
    if (dir) return `${dir.replace(/\/+$/, "")}/autotune.json`;
    const home = Deno.env.get("HOME");
    return home ? `${home}/.cache/bloom/autotune.json` : null;
  } catch {
    return null; // no --allow-env: memory only
  }
}

/** Options of `AutotuneCache`. */
export interface AutotuneCacheOptions {
  /** File to persist to; undefined means `defaultCachePath()`, null means memory only. */
  path?: string | null;
  /** Where warnings go (default console.warn). */
  warn?: (message: string) => void;
}

/** Tuned choices of every op, keyed by adapter name, op and shape class. */
export class AutotuneCache {
  readonly path: string | null;
  readonly #warn: (message: string) => void;
  #data: CacheData = {};
  #loaded = false;
  #writable = true;
  readonly #warned = new Set<string>();

  constructor(opts: AutotuneCacheOptions = {}) {
    this.path = opts.path === undefined ? defaultCachePath() : opts.path;
    this.#warn = opts.warn ?? ((m) => console.warn(m));
  }

  /** The record for (adapter, op, key), loading the file on first use. */
  get(adapter: string, op: string, key: string): TuneRecord | undefined {
    this.#ensureLoaded();
    return this.#data[adapter]?.[op]?.[key];
  }

  /** Every record of one op on one adapter. */
  entries(adapter: string, op: string): Record<string, TuneRecord> {
    this.#ensureLoaded();
    return { ...(this.#data[adapter]?.[op] ?? {}) };
  }

  /** Stores a record in memory and persists it (when the location is writable). */
  set(adapter: string, op: string, key: string, record: TuneRecord): void {
    this.#ensureLoaded();
    put(this.#data, adapter, op, key, record);
    this.#save(adapter, op, key, record);
  }

  /** Forgets everything in memory (the file is left alone); the next lookup reloads it. */
  reset(): void {
    this.#data = {};
    this.#loaded = false;
  }

  #ensureLoaded(): void {
    if (this.#loaded) return;
    this.#loaded = true;
    const disk = this.#read();
    if (disk) this.#data = disk;
  }

  /** The file's contents, or null when absent, unreadable or corrupt (warning for corrupt). */
  #read(): CacheData | null {
    if (!this.path) return null;
    let text: string;
    try {
      text = Deno.readTextFileSync(this.path);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) {
        // A location we cannot read we will not be able to write either: memory only.
        this.#writable = false;
        this.#warnOnce(
          "read",
          `bloom autotune: cannot read ${this.path} (${errText(e)}); tuning stays in memory`,
        );
      }
      return null;
    }
    try {
      return parseCache(text);
    } catch (e) {
      this.#warnOnce(
        "corrupt",
        `bloom autotune: ignoring corrupt cache file ${this.path} (${errText(e)}); ` +
          `it will be replaced when new results are saved`,
      );
      return null;
    }
  }

  #warnOnce(kind: string, message: string): void {
    if (this.#warned.has(kind)) return;
    this.#warned.add(kind);
    this.#warn(message);
  }

  #save(adapter: string, op: string, key: string, record: TuneRecord): void {
    if (!this.path || !this.#writable) return;
    // Merge into the latest file so concurrent processes do not erase each other's results.
    const merged = this.#read() ?? {};
    put(merged, adapter, op, key, record);
    const doc = { version: FILE_VERSION, adapters: merged };
    const tmp = `${this.path}.${Deno.pid}.tmp`;
    try {
      const dir = this.path.slice(0, this.path.lastIndexOf("/"));
      if (dir) Deno.mkdirSync(dir, { recursive: true });
      Deno.writeTextFileSync(tmp, JSON.stringify(doc, null, 1) + "\n");
      Deno.renameSync(tmp, this.path);
    } catch (e) {
      this.#writable = false;
      try {
        Deno.removeSync(tmp);
      } catch { /* nothing was written */ }
      this.#warnOnce(
        "write",
        `bloom autotune: cannot write ${this.path} (${errText(e)}); tuning stays in memory ` +
          `(set BLOOM_CACHE_DIR to a writable directory to keep it)`,
      );
    }
  }
}

function put(d: CacheData, adapter: string, op: string, key: string, r: TuneRecord): void {
  ((d[adapter] ??= {})[op] ??= {})[key] = r;
}

function errText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Parses and validates a cache file; throws with the reason when it is malformed. */
function parseCache(text: string): CacheData {
  const doc = JSON.parse(text) as unknown;
  if (!isObject(doc)) throw new Error("not a JSON object");
  if (doc.version !== FILE_VERSION) throw new Error(`unknown version ${String(doc.version)}`);
  const adapters = doc.adapters;
  if (!isObject(adapters)) throw new Error("'adapters' is not an object");
  const out: CacheData = {};
  for (const [adapter, ops] of Object.entries(adapters)) {
    if (!isObject(ops)) throw new Error(`adapters['${adapter}'] is not an object`);
    for (const [op, keys] of Object.entries(ops)) {
      if (!isObject(keys)) throw new Error(`adapters['${adapter}'].${op} is not an object`);
      for (const [key, r] of Object.entries(keys)) {
        if (
          !isObject(r) || typeof r.choice !== "string" || typeof r.ms !== "number" ||
          !isObject(r.timings) || typeof r.at !== "string" ||
          (r.tag !== undefined && typeof r.tag !== "string")
        ) {
          throw new Error(`record ${adapter} / ${op} / ${key} is malformed`);
        }
        put(out, adapter, op, key, r as unknown as TuneRecord);
      }
    }
  }
  return out;
}

function isObject(x: unknown): x is Record<string, unknown> {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}

/** How an op names its candidates in the cache. */
export interface CandidateCodec<C> {
  id(c: C): string;
  /** Inverse of `id`; null for ids this version does not know (they are ignored). */
  parse(id: string): C | null;
}

/** Outcome of one tuning. */
export interface TuneResult<C> {
  choice: C;
  record: TuneRecord;
  /** True when the record came from the cache and nothing was measured. */
  cached: boolean;
}

/** Options of `Autotuner.tune`. */
export interface TuneOptions {
  /** Timed calls per candidate (interleaved across candidates; the fastest counts). */
  iters?: number;
  /** Measure again even when a record exists. */
  force?: boolean;
  /** Stored with the record; a cached record with another tag is measured again. */
  tag?: string;
  /**
   * After the first round, stop re-measuring candidates this many times slower than the best
   * so far (default 4): a hopeless candidate on a big shape (a workgroup-memory kernel on a
   * CPU adapter) would otherwise dominate the tuning time. Its first time is still recorded.
   */
  dropSlowerThan?: number;
}

/** Chooses among candidates of one op by measurement, per shape class, with a cache. */
export class Autotuner<C> {
  readonly op: string;
  readonly codec: CandidateCodec<C>;
  readonly cache: AutotuneCache;

  constructor(op: string, codec: CandidateCodec<C>, cache: AutotuneCache) {
    this.op = op;
    this.codec = codec;
    this.cache = cache;
  }

  /**
   * The cached choice for `key` on `adapter`, or undefined (also when `tag` is given and the
   * record was made with another). Never measures.
   */
  lookup(adapter: string, key: string, tag?: string): C | undefined {
    const r = this.cache.get(adapter, this.op, key);
    if (!r || (tag !== undefined && r.tag !== tag)) return undefined;
    return this.codec.parse(r.choice) ?? undefined;
  }

  /** Stores a choice made elsewhere (e.g. an adapter-wide default from several tunings). */
  record(adapter: string, key: string, record: TuneRecord): void {
    this.cache.set(adapter, this.op, key, record);
  }

  /**
   * Measures every candidate with `measure` (milliseconds; null or a throw marks it failed)
   * and records the fastest. Rounds are interleaved — each round times every candidate once —
   * so drift on a shared machine hits all candidates alike. The fastest call of each counts:
   * on a shared machine noise only ever adds time, so the minimum is the least biased.
   */
  async tuneWith(
    adapter: string,
    key: string,
    candidates: readonly C[],
    measure: (c: C) => Promise<number | null>,
    opts: TuneOptions = {},
  ): Promise<TuneResult<C>> {
    if (!opts.force) {
      const r = this.cache.get(adapter, this.op, key);
      const c = r && this.codec.parse(r.choice);
      // A record made before a candidate was added has no timing for it: measure again.
      const complete = r && candidates.every((x) => this.codec.id(x) in r.timings);
      const current = opts.tag === undefined || r?.tag === opts.tag;
      if (r && c && complete && current) return { choice: c, record: r, cached: true };
    }
    if (candidates.length === 0) throw new RangeError(`autotune ${this.op}: no candidates`);
    const iters = Math.max(1, opts.iters ?? 3);
    const times = new Map<number, number[]>();
    const failed = new Set<number>();
    const drop = opts.dropSlowerThan ?? 4;
    const dropped = new Set<number>();
    for (let round = 0; round < iters; round++) {
      if (round === 1) {
        const fastest = Math.min(...[...times.values()].map((t) => t[0]));
        for (const [i, t] of times) if (t[0] > drop * fastest) dropped.add(i);
      }
      for (const [i, c] of candidates.entries()) {
        if (failed.has(i) || dropped.has(i)) continue;
        let ms: number | null;
        try {
          ms = await measure(c);
        } catch {
          ms = null;
        }
        if (ms === null || !Number.isFinite(ms)) failed.add(i);
        else times.set(i, [...(times.get(i) ?? []), ms]);
      }
    }
    const timings: Record<string, number | null> = {};
    let best = -1;
    let bestMs = Infinity;
    for (const [i, c] of candidates.entries()) {
      const ts = times.get(i);
      const med = !failed.has(i) && ts ? Math.min(...ts) : null;
      timings[this.codec.id(c)] = med;
      if (med !== null && med < bestMs) {
        best = i;
        bestMs = med;
      }
    }
    if (best < 0) {
      throw new Error(`autotune ${this.op} '${key}': every candidate failed on '${adapter}'`);
    }
    const record: TuneRecord = {
      choice: this.codec.id(candidates[best]),
      ms: bestMs,
      timings,
      at: new Date().toISOString(),
    };
    if (opts.tag !== undefined) record.tag = opts.tag;
    this.cache.set(adapter, this.op, key, record);
    return { choice: candidates[best], record, cached: false };
  }

  /**
   * Measures candidates on the GPU: `prepare(c)` returns a function that records the work
   * (dispatches) for candidate c; it is run once untimed (compilation), then timed with
   * timestamp queries where the adapter has them, else wall time.
   */
  tune(
    gpu: Gpu,
    key: string,
    candidates: readonly C[],
    prepare: (c: C) => () => void,
    opts: TuneOptions = {},
  ): Promise<TuneResult<C>> {
    const runs = new Map<C, () => void>();
    return this.tuneWith(gpu.adapter.name, key, candidates, async (c) => {
      let run = runs.get(c);
      if (!run) {
        run = prepare(c);
        runs.set(c, run);
        run(); // compile and warm up
        await gpu.sync();
      }
      const t = await gpu.time(run);
      return t.gpuMs ?? t.wallMs;
    }, opts);
  }
}

let sharedCache: AutotuneCache | null = null;

/** The process-wide cache at the default location (created on first use). */
export function defaultCache(): AutotuneCache {
  sharedCache ??= new AutotuneCache();
  return sharedCache;
}

/** An autotuner for `op` on the process-wide cache (or on `cache`). */
export function newAutotuner<C>(
  op: string,
  codec: CandidateCodec<C>,
  cache: AutotuneCache = defaultCache(),
): Autotuner<C> {
  return new Autotuner(op, codec, cache);
}

/**
 * A time budget for tuning, with the running calibration of predicted against measured times
 * (cost models rank candidates well but are off by a constant factor on any one machine): a
 * tuning step predicted to overrun what is left is not started, and ETAs use the calibration.
 */
export class TuneBudget {
  /** The budget in milliseconds (Infinity: unbounded). */
  readonly totalMs: number;
  readonly #t0 = performance.now();
  readonly #ratios: number[] = [];

  constructor(totalMs: number) {
    this.totalMs = totalMs;
  }

  /** Milliseconds spent since the budget was opened. */
  elapsedMs(): number {
    return performance.now() - this.#t0;
  }

  /** Milliseconds left (0 once spent). */
  remainingMs(): number {
    return Math.max(0, this.totalMs - this.elapsedMs());
  }

  /** A prediction scaled by the median measured/predicted ratio seen so far. */
  calibrated(predictedMs: number): number {
    if (!this.#ratios.length) return predictedMs;
    const s = [...this.#ratios].sort((a, b) => a - b);
    return predictedMs * s[s.length >> 1];
  }

  /** Records a measurement against its prediction. */
  observe(predictedMs: number, measuredMs: number): void {
    if (predictedMs > 0 && measuredMs > 0 && Number.isFinite(measuredMs)) {
      this.#ratios.push(measuredMs / predictedMs);
    }
  }

  /** Whether a step with this (calibrated) ETA fits in what is left. */
  fits(etaMs: number): boolean {
    return etaMs <= this.remainingMs();
  }
}

/** Seconds for progress lines: "0.4 s", "12 s". */
export function fmtSeconds(ms: number): string {
  const s = ms / 1000;
  return s < 10 ? `${s.toFixed(1)} s` : `${s.toFixed(0)} s`;
}

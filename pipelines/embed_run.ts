/**
 * An embedding run: images (shards, a folder or a list) → features file, in
 * input order, with bounded memory, progress, resume and parts.
 *
 * Overlap (double buffering): while batch k runs on the GPU, batch k+1 is
 * decoded and resized (the loader, on worker threads) and its upload,
 * transform, forward and read-back copies are recorded; batch k+1 is
 * submitted the moment batch k is read back, and batch k's rows are written
 * while batch k+1 runs (`prepareEmbedBatch`). The GPU waits only for a
 * submit between batches.
 *
 * Tuning never holds the first results back: the first batch runs on what is
 * tuned so far (else the adapter class's shipped defaults), its rows are
 * written, and only then are the kernels tuned (`tuneForVit`, cached for
 * later runs) for the batches after it — skipped when there are none. Its
 * budget grows with the work left (`tuneBudgetMs`), so a long run tunes what
 * a short one leaves for later.
 *
 * Resume: each batch's rows stream into the journal `OUT.partial/` as they
 * come back, committed after the first batch and then at most every
 * `checkpointSeconds` (every batch when batches are slower), and when the run
 * is stopped (`signal`: Ctrl-C); a rerun with the same inputs and options
 * goes on after the last committed batch, and gives the same bytes as a run
 * never stopped (embed_journal.ts). The final file is written from the
 * journal and renamed into place, so a file at OUT is always complete.
 *
 * Parts: `part = {index, count}` embeds the deterministic slice
 * [⌊i·N/n⌋, ⌊(i+1)·N/n⌋) of the N inputs into `OUT` with `.part-i-of-n`
 * before the extension; `mergeParts` joins them in order.
 */
import { basename, dirname, extname, join } from "node:path";
import { InputError } from "../data/errors.ts";
import { writeTextAtomic } from "../data/file.ts";
import { sha256File } from "../data/hash.ts";
import {
  createEmbeddingsWriter,
  embeddingsBlock,
  type EmbeddingsFormat,
  type EmbeddingsMeta,
  type Pooling,
  readEmbeddings,
} from "../data/embeddings_file.ts";
import { DEFAULT_TUNE_BUDGET_MS, tuneForVit, type TuneReport } from "../graph/tune.ts";
import type { Gpu } from "../kernels/runtime.ts";
import {
  checkInputSide,
  type Embeddings,
  type EmbedJob,
  type EmbedModel,
  prepareEmbedBatch,
} from "./embed.ts";
import { EmbedJournal, type RowMeta } from "./embed_journal.ts";
import { ABORTED, Interrupted, whenAborted } from "./interrupt.ts";
import { type Batch, checkSource, openLoader } from "./loader.ts";
import { splitOriginOf } from "./dataset/split_origin.ts";
import { Progress } from "./progress.ts";
import { lockOutput } from "./output_lock.ts";

/** Options of an embedding run. */
export interface EmbedRunOptions {
  model: EmbedModel;
  /** Recorded in the file's metadata. */
  weights: string;
  input: string | string[];
  out: string;
  format?: EmbeddingsFormat;
  batch?: number;
  pool?: Pooling;
  patchTokens?: boolean;
  /** Side the images are resized to (bilinear, as the evaluation protocol) and the model sees. */
  size?: number;
  part?: { index: number; count: number };
  /**
   * Rows are committed to `OUT.partial/` after the first batch, then at most
   * this often (default 2 s; every batch when batches take longer), and when
   * the run stops.
   */
  checkpointSeconds?: number;
  /**
   * Stops the run (Ctrl-C): the batches read back are committed, the ones in
   * flight dropped, and `Interrupted` is thrown saying what was kept.
   */
  signal?: AbortSignal;
  /** Images decoded (and resized) in parallel (default: the number of cores). */
  workers?: number;
  quiet?: boolean;
  log?: (line: string) => void;
  /**
   * Measure the kernel variants for this model after the first batch, when more follow (once
   * per adapter; cached). Default true.
   */
  autotune?: boolean;
  /** Test hook: runs instead of `tuneForVit` (given the run's log and the budget in ms). */
  tuner?: (log: (line: string) => void, budgetMs: number) => Promise<TuneReport>;
  /** Called after each batch's rows are written (the first batch's also committed). */
  onRows?: (rows: number) => void;
  /** Test hook: fail after committing this many batches (a crash mid-run). */
  crashAfterBatches?: number;
  /**
   * SHA-256 of the weights, recorded as `bloom.weights_sha256` (saved heads check it). Default:
   * hashed from `weights` when that names a file.
   */
  weightsSha256?: string;
  /** Called for every image that cannot be used (after the log line). */
  onError?: (where: string, reason: string) => void;
  /** Further metadata strings for the file (e.g. what `predict` embedded). */
  extraMeta?: Record<string, string>;
  /** Folder sources: follow symbolic links out of the folder (default: refused, reported). */
  followLinks?: boolean;
  /** Another run writes `out`: wait for it (default: stop, naming it; pipelines/output_lock.ts). */
  wait?: boolean;
}

/** What a run produced. */
export interface EmbedRunSummary {
  out: string;
  rows: number;
  dim: number;
  /** Images embedded per second of the run, tuning left out. */
  imagesPerSecond: number;
  resumedRows: number;
  failed: number;
  /** What tuning did (after the first batch), when it ran. */
  tuning?: TuneReport;
}

/** The output path of part i of n: `feat.safetensors` → `feat.part-2-of-8.safetensors`. */
export function partPath(out: string, index: number, count: number): string {
  const ext = extname(out);
  return `${out.slice(0, out.length - ext.length)}.part-${index}-of-${count}${ext}`;
}

/** Parses `--part i/n` (`i` may be empty: then JOB_COMPLETION_INDEX, as in a Kubernetes Indexed Job). */
export function parsePart(
  spec: string,
  env: (k: string) => string | undefined,
): { index: number; count: number } {
  const m = /^(\d*)\/(\d+)$/.exec(spec.trim());
  if (!m) {
    throw new InputError(
      `--part must be i/n (e.g. 0/8) or /n with JOB_COMPLETION_INDEX set, got '${spec}'`,
    );
  }
  const count = Number(m[2]);
  let raw = m[1];
  if (raw === "") {
    raw = env("JOB_COMPLETION_INDEX") ?? "";
    if (!/^\d+$/.test(raw)) {
      throw new InputError(
        `--part ${spec} takes i from JOB_COMPLETION_INDEX, which is not set to an integer`,
      );
    }
  }
  const index = Number(raw);
  if (count < 1 || index >= count) {
    throw new InputError(
      `--part ${spec}: the part index must be in 0..${count - 1} for ${count} parts`,
    );
  }
  return { index, count };
}

/** What names a run: a journal of another run is never continued. */
interface State {
  weights: string;
  input: string | string[];
  size: number;
  pool: Pooling;
  patchTokens: boolean;
  range: [number, number];
  batch: number;
}

/** A batch recorded for the GPU (and maybe submitted), its rows not yet read. */
interface InFlight {
  batch: Batch;
  job: EmbedJob;
}

/** Embeds `opts.input` into `opts.out` (or its part file). */
export async function runEmbed(gpu: Gpu, opts: EmbedRunOptions): Promise<EmbedRunSummary> {
  const log = opts.log ?? ((s: string) => console.error(s));
  const size = opts.size ?? 224;
  checkInputSide(opts.model.config, size, "--size (the side the model sees)");
  const pool = opts.pool ?? "cls";
  const batchSize = opts.batch ?? 32;
  const checkpointMs = 1000 * (opts.checkpointSeconds ?? 2);
  const out = opts.part ? partPath(opts.out, opts.part.index, opts.part.count) : opts.out;
  await checkSource(opts.input, "--input", { path: out, flag: "--out" });
  // Count the inputs once (cheap: paths or a manifest) to fix the part's range.
  // Quiet: the loader that embeds reports what enumeration refused, once.
  const probe = await openLoader(opts.input, {
    batchSize,
    size,
    resample: "bilinear",
    onError: () => {},
    followLinks: opts.followLinks,
  });
  const total = probe.length;
  const classes = probe.classes;
  if (total === null && opts.part) {
    throw new InputError(
      `--part needs the number of inputs up front; ${opts.input} are tar files without a ` +
        "manifest.json: embed the ingest's output directory instead",
    );
  }
  let range: [number, number] = [0, total ?? Infinity];
  if (opts.part && total !== null) {
    const { index, count } = opts.part;
    range = [Math.floor((index * total) / count), Math.floor(((index + 1) * total) / count)];
  }
  const partial = `${out}.partial`;
  const state: State = {
    weights: opts.weights,
    input: opts.input,
    size,
    pool,
    patchTokens: Boolean(opts.patchTokens),
    range,
    batch: batchSize,
  };
  // One run per output file, from here (inputs checked) until the file is complete.
  await using _lock = await lockOutput(out, "file", { wait: opts.wait, log });
  const journal = await EmbedJournal.open(partial, { ...state }, range[0], log);
  const { rows: resumedRows, next: start } = journal.resumed;
  if (resumedRows > 0) log(`resuming ${out}: ${resumedRows} rows already embedded`);
  // Hashed while the images are embedded (a large checkpoint takes seconds).
  const sha = opts.weightsSha256 !== undefined
    ? Promise.resolve(opts.weightsSha256)
    : sha256File(opts.weights).catch(() => undefined);
  const t0 = performance.now();
  let embedded = 0;
  let failed = 0;
  let next = start;
  let tuning: TuneReport | undefined;
  let tuneMs = 0; // left out of the rate: it is the embedding's, not the tuning's
  let tunePending = opts.autotune ?? true;
  /**
   * Tunes for the batches after the first (cached: later runs measure nothing again), given
   * what the first batch took and how many images are left.
   */
  const tune = async (batchMs: number, imagesLeft: number) => {
    tunePending = false;
    const t = performance.now();
    const budgetMs = tuneBudgetMs((batchMs / batchSize) * imagesLeft);
    tuning = await (opts.tuner?.(log, budgetMs) ??
      tuneForVit(gpu, opts.model.config, {
        images: batchSize,
        image: size,
        training: false,
        log,
        budgetMs,
      }));
    tuneMs += performance.now() - t;
  };
  try {
    if (start < range[1]) {
      const loader = await openLoader(opts.input, {
        batchSize,
        size,
        resample: "bilinear",
        range: [start, range[1]],
        workers: opts.workers,
        followLinks: opts.followLinks,
        onError: (where, reason) => {
          failed++;
          log(`skipped ${where}: ${reason}`);
          journal.fail(where, reason); // committed with the next batch
          opts.onError?.(where, reason);
        },
      });
      const progress = new Progress(Math.max(total === null ? 0 : range[1] - start, 0), {
        unit: "images",
        label: "embed",
        silent: opts.quiet,
      });
      const stop = whenAborted(opts.signal);
      let lastCommit = -Infinity;
      let batches = 0;
      /** Appends a batch's rows; commits when due. */
      const keep = async ({ batch: b }: InFlight, e: Embeddings) => {
        const rows = rowMetas(b, classes);
        const want = journal.columns.labelled ?? rows[0].label !== undefined;
        if (rows.some((r) => (r.label !== undefined) !== want)) {
          throw new InputError(
            `${opts.input}: some images have labels and some do not; embed them separately`,
          );
        }
        const tokens = e.patchTokens
          ? { data: e.patchTokens, patches: e.patches, width: opts.model.config.dim }
          : undefined;
        await journal.append(rows, e.features, e.dim, tokens);
        next = b.indices[b.count - 1] + 1;
        embedded += b.count;
        batches++;
        progress.tick(b.count);
        const crash = opts.crashAfterBatches !== undefined && batches >= opts.crashAfterBatches;
        if (crash || performance.now() - lastCommit >= checkpointMs) {
          await journal.commit(next);
          lastCommit = performance.now();
        }
        opts.onRows?.(embedded);
        if (crash) throw new Error(`simulated crash after ${batches} batches`);
      };
      // Batches recorded or submitted, not yet read back (at most two: double buffering).
      const pending: InFlight[] = [];
      /** Reads a batch back; null when the run was stopped first. */
      const readBack = async (f: InFlight): Promise<Embeddings | null> => {
        pending.splice(pending.indexOf(f), 1);
        const rows = f.job.collect();
        rows.catch(() => {}); // raced below; a failure after a stop is of no interest
        const e = await Promise.race([rows, stop.promise]);
        return e === ABORTED ? null : e;
      };
      let stopped = false;
      try {
        // Each batch is decoded and recorded while the one before it runs on the GPU, then
        // submitted as soon as that one is read back; its rows are written while it runs.
        for await (const b of loader.batches()) {
          if (opts.signal?.aborted) {
            stopped = true;
            break;
          }
          const cur: InFlight = {
            batch: b,
            job: prepareEmbedBatch(gpu, opts.model, b, {
              pool,
              patchTokens: opts.patchTokens,
              inputSize: size,
            }),
          };
          pending.push(cur);
          const prev = pending.length > 1 ? pending[0] : null;
          if (!prev) {
            const t = performance.now();
            cur.job.submit();
            if (tunePending) {
              // The first batch runs untuned and its rows are written at once; the kernels are
              // then tuned for the rest, if there is a rest (a later, longer run tunes anyway).
              const e = await readBack(cur);
              if (!e) {
                stopped = true;
                break;
              }
              await keep(cur, e);
              if (next < range[1]) await tune(performance.now() - t, range[1] - next);
              else tunePending = false;
            }
            continue;
          }
          const e = await readBack(prev);
          if (!e) {
            stopped = true;
            break;
          }
          cur.job.submit();
          await keep(prev, e);
        }
        while (!stopped && pending.length > 0) {
          const f = pending[0];
          const e = await readBack(f);
          if (e) await keep(f, e);
          else stopped = true;
        }
      } finally {
        stop.dispose();
        progress.done();
        for (const f of pending.splice(0)) f.job.discard(); // stopped, or failed: dropped
      }
      // Whatever came back is committed; batches still on the GPU are dropped.
      await journal.commit(next);
      if (stopped) {
        const of = Number.isFinite(range[1]) ? ` of ${range[1] - range[0]}` : "";
        throw new Interrupted(
          `kept ${journal.rows}${of} rows in ${partial}/` +
            (failed ? ` (${failed} image${failed === 1 ? "" : "s"} could not be embedded)` : ""),
        );
      }
    }
  } finally {
    journal.close();
  }
  const failedRows = await journal.failures();
  if (journal.rows === 0) {
    throw new InputError(
      `${opts.input}: no image could be embedded (${failedRows.length} failed); nothing written`,
    );
  }
  const meta: EmbeddingsMeta = {
    arch: opts.model.config.arch,
    weights: opts.weights,
    pool,
    extra: { ...opts.extraMeta, "bloom.size": String(size), ...await splitOriginOf(opts.input) },
  };
  const hash = await sha;
  if (hash) meta.extra!["bloom.weights_sha256"] = hash;
  // The errors file first (atomic): a complete output always has its failures beside it.
  const errorsOut = `${out}.errors.jsonl`;
  if (failedRows.length > 0) {
    await writeTextAtomic(errorsOut, failedRows.join(""));
    meta.extra!["bloom.failed"] = String(failedRows.length);
    log(`${failedRows.length} images could not be embedded (no row): see ${errorsOut}`);
  } else await Deno.remove(errorsOut).catch(() => {});
  const { dim, patches } = journal.shape;
  await Deno.mkdir(dirname(out) || ".", { recursive: true });
  const w = await createEmbeddingsWriter(out, {
    dim,
    format: opts.format,
    patchTokens: opts.patchTokens ? patches : undefined,
    meta,
  });
  try {
    for await (const block of journal.blocks()) await w.append(block);
    await w.finish();
  } catch (e) {
    await w.abort();
    throw e;
  }
  await Deno.remove(partial, { recursive: true });
  const seconds = (performance.now() - t0 - tuneMs) / 1000;
  return {
    out,
    rows: w.rows,
    dim,
    imagesPerSecond: embedded / Math.max(seconds, 1e-9),
    resumedRows,
    failed: failedRows.length,
    ...(tuning ? { tuning } : {}),
  };
}

/**
 * The tuning budget of a run with `workMs` of embedding left: a twentieth of it, at least the
 * default (`DEFAULT_TUNE_BUDGET_MS`: a short run's tuning stays short, and what does not fit is
 * left for later runs) and at most a minute. A run of thousands of images thus tunes every
 * kernel shape in one go, for a few per cent of its time; the work left is estimated from the
 * first batch, cold compiles included, so it errs long (unknown counts: the default).
 */
export function tuneBudgetMs(workMs: number): number {
  if (!Number.isFinite(workMs)) return DEFAULT_TUNE_BUDGET_MS;
  return Math.min(60_000, Math.max(DEFAULT_TUNE_BUDGET_MS, workMs / 20));
}

/** Each image's row metadata: its path, and its label, patient and ingest split where known. */
function rowMetas(b: Batch, classes: string[]): RowMeta[] {
  const rows: RowMeta[] = [];
  for (let i = 0; i < b.count; i++) {
    const m = b.meta[i] ?? {};
    const row: RowMeta = { path: String(m.source ?? m.path ?? b.keys[i]) };
    // Shards without their manifest (a single .tar) name the class in each sample's json.
    const name = classes[b.labels[i]] ?? (typeof m.label === "string" ? m.label : undefined);
    if (b.labels[i] >= 0) row.label = name ?? String(b.labels[i]);
    if (m.patient !== undefined) row.patient = String(m.patient);
    // Each row's ingest split (shards only), with its key: eval and train --eval use it.
    if (typeof m.split === "string" && m.split !== "") {
      row.split = m.split;
      row.key = b.keys[i];
    }
    rows.push(row);
  }
  return rows;
}

/**
 * Joins `OUT.part-i-of-n.EXT` (all n present, same width and options) in
 * order into OUT.
 */
export async function mergeParts(
  out: string,
  format?: EmbeddingsFormat,
): Promise<{ rows: number; parts: number }> {
  const dir = dirname(out) || ".";
  const ext = extname(out);
  const stem = basename(out).slice(0, basename(out).length - ext.length);
  const re = new RegExp(`^${escapeRe(stem)}\\.part-(\\d+)-of-(\\d+)${escapeRe(ext)}$`);
  const found = new Map<number, string>();
  let count = -1;
  for (const e of Deno.readDirSync(dir)) {
    const m = re.exec(e.name);
    if (!m) continue;
    const n = Number(m[2]);
    if (count >= 0 && n !== count) {
      throw new InputError(
        `${dir}: parts of ${count} and of ${n} are mixed; remove the stale ones`,
      );
    }
    count = n;
    found.set(Number(m[1]), join(dir, e.name));
  }
  if (count < 0) throw new InputError(`no part files ${stem}.part-*-of-*${ext} in ${dir}`);
  const missing = [...Array(count).keys()].filter((i) => !found.has(i));
  if (missing.length) {
    throw new InputError(
      `parts ${missing.join(", ")} of ${count} are missing (${
        partPath(out, missing[0], count)
      }); ` +
        "run them first",
    );
  }
  // The parts' failures beside the merged file, written first as runEmbed writes a part's.
  let failed = "";
  for (let i = 0; i < count; i++) {
    failed += await Deno.readTextFile(`${found.get(i)}.errors.jsonl`).catch((e) => {
      if (e instanceof Deno.errors.NotFound) return "";
      throw e;
    });
  }
  const failedRows = failed.split("\n").filter((l) => l.trim()).length;
  if (failedRows) await writeTextAtomic(`${out}.errors.jsonl`, failed);
  else await Deno.remove(`${out}.errors.jsonl`).catch(() => {});
  const first = await readEmbeddings(found.get(0)!);
  const w = await createEmbeddingsWriter(out, {
    dim: first.dim,
    format,
    meta: {
      arch: first.meta.arch,
      weights: first.meta.weights,
      pool: first.meta.pool as Pooling,
      extra: {
        "bloom.parts": String(count),
        ...(failedRows ? { "bloom.failed": String(failedRows) } : {}),
        // What saved heads check the embedding model by, kept from the parts.
        ...Object.fromEntries(
          ["bloom.size", "bloom.weights_sha256", "bloom.split", "bloom.split_sha256"].filter((k) =>
            first.meta[k]
          ).map((k) => [
            k,
            first.meta[k],
          ]),
        ),
      },
    },
  });
  try {
    for (let i = 0; i < count; i++) {
      const e = i === 0 ? first : await readEmbeddings(found.get(i)!);
      if (
        e.dim !== first.dim || e.meta.weights !== first.meta.weights ||
        e.meta.pool !== first.meta.pool
      ) {
        throw new InputError(
          `${
            found.get(i)
          }: width ${e.dim}, weights ${e.meta.weights}, pool ${e.meta.pool} differ from ` +
            `part 0 (${first.dim}, ${first.meta.weights}, ${first.meta.pool})`,
        );
      }
      await w.append(embeddingsBlock(e));
    }
    await w.finish();
    return { rows: w.rows, parts: count };
  } catch (e) {
    await w.abort();
    throw e;
  }
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/**
 * An embedding run: images (shards, a folder or a list) → features file, in
 * input order, with bounded memory, progress, resume and parts.
 *
 * Resume: rows are written in chunks to `OUT.partial/` (each chunk file
 * appears atomically, with the loader index to continue from); a rerun with
 * the same inputs and options skips the finished chunks. The final file is
 * assembled from the chunks and renamed into place, so a file at OUT is
 * always complete.
 *
 * Parts: `part = {index, count}` embeds the deterministic slice
 * [⌊i·N/n⌋, ⌊(i+1)·N/n⌋) of the N inputs into `OUT` with `.part-i-of-n`
 * before the extension; `mergeParts` joins them in order.
 */
import { basename, dirname, extname, join } from "node:path";
import {
  createEmbeddingsWriter,
  embeddingsBlock,
  type EmbeddingsFormat,
  type EmbeddingsMeta,
  readEmbeddings,
  writeEmbeddings,
} from "../data/embeddings_file.ts";
import { tuneForVit } from "../graph/tune.ts";
import type { Gpu } from "../kernels/runtime.ts";
import { embedBatch, type EmbedModel, type Pool } from "./embed.ts";
import { openLoader } from "./loader.ts";
import { Progress } from "./progress.ts";

/** Options of an embedding run. */
export interface EmbedRunOptions {
  model: EmbedModel;
  /** Recorded in the file's metadata. */
  weights: string;
  input: string | string[];
  out: string;
  format?: EmbeddingsFormat;
  batch?: number;
  pool?: Pool;
  patchTokens?: boolean;
  /** Side the images are resized to (bilinear, as the evaluation protocol) and the model sees. */
  size?: number;
  part?: { index: number; count: number };
  /** Images per resumable chunk (default 1024). */
  chunk?: number;
  workers?: number;
  quiet?: boolean;
  log?: (line: string) => void;
  /** Measure the kernel variants for this model first (once per adapter; cached). Default true. */
  autotune?: boolean;
  /** Test hook: fail after writing this many chunks (a crash mid-run). */
  crashAfterChunks?: number;
}

/** What a run produced. */
export interface EmbedRunSummary {
  out: string;
  rows: number;
  dim: number;
  imagesPerSecond: number;
  resumedRows: number;
  failed: number;
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
    throw new Error(
      `--part must be i/n (e.g. 0/8) or /n with JOB_COMPLETION_INDEX set, got '${spec}'`,
    );
  }
  const count = Number(m[2]);
  let raw = m[1];
  if (raw === "") {
    raw = env("JOB_COMPLETION_INDEX") ?? "";
    if (!/^\d+$/.test(raw)) {
      throw new Error(
        `--part ${spec} takes i from JOB_COMPLETION_INDEX, which is not set to an integer`,
      );
    }
  }
  const index = Number(raw);
  if (count < 1 || index >= count) {
    throw new Error(`--part ${spec}: the part index must be in 0..${count - 1} for ${count} parts`);
  }
  return { index, count };
}

interface State {
  weights: string;
  input: string | string[];
  size: number;
  pool: Pool;
  patchTokens: boolean;
  range: [number, number];
  chunk: number;
}

/** Embeds `opts.input` into `opts.out` (or its part file). */
export async function runEmbed(gpu: Gpu, opts: EmbedRunOptions): Promise<EmbedRunSummary> {
  const log = opts.log ?? ((s: string) => console.error(s));
  const size = opts.size ?? 224;
  const pool = opts.pool ?? "cls";
  const batchSize = opts.batch ?? 32;
  const chunk = Math.max(batchSize, Math.ceil((opts.chunk ?? 1024) / batchSize) * batchSize);
  const out = opts.part ? partPath(opts.out, opts.part.index, opts.part.count) : opts.out;
  // Count the inputs once (cheap: paths or a manifest) to fix the part's range.
  const probe = await openLoader(opts.input, { batchSize, size, resample: "bilinear" });
  const total = probe.length;
  const classes = probe.classes;
  if (total === null && opts.part) {
    throw new Error(
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
    chunk,
  };
  const done = await finishedChunks(partial, state, log);
  const next = done.length ? done[done.length - 1].next : range[0];
  const resumedRows = done.reduce((a, c) => a + c.rows, 0);
  if (done.length) {
    log(`resuming ${out}: ${resumedRows} rows already embedded in ${done.length} chunks`);
  }
  await Deno.mkdir(partial, { recursive: true });
  await Deno.writeTextFile(join(partial, "state.json"), JSON.stringify(state));
  if ((opts.autotune ?? true) && next < range[1]) {
    const g = size / opts.model.config.patch;
    await tuneForVit(gpu, opts.model.config, {
      tokens: g * g + 1 + opts.model.config.registers,
      batch: batchSize,
      training: false,
      log,
    });
  }
  const meta: EmbeddingsMeta = {
    arch: opts.model.config.arch,
    weights: opts.weights,
    pool,
    extra: { "bloom.size": String(size) },
  };
  const remaining = total === null ? 0 : range[1] - next;
  const progress = new Progress(Math.max(remaining, 0), {
    unit: "images",
    label: "embed",
    silent: opts.quiet,
  });
  const t0 = performance.now();
  let embedded = 0;
  let failed = 0;
  let chunkIndex = done.length;
  if (next < range[1]) {
    const loader = await openLoader(opts.input, {
      batchSize,
      size,
      resample: "bilinear",
      range: [next, range[1]],
      workers: opts.workers,
      onError: (where, reason) => {
        failed++;
        log(`skipped ${where}: ${reason}`);
      },
    });
    let rows = {
      feats: [] as Float32Array[],
      tokens: [] as Float32Array[],
      paths: [] as string[],
      labels: [] as string[],
      patients: [] as string[],
    };
    let dim = 0;
    let patches = 0;
    let lastIndex = next - 1;
    let inChunk = 0;
    const flush = async () => {
      if (inChunk === 0) return;
      const path = join(partial, `chunk_${String(chunkIndex).padStart(6, "0")}.safetensors`);
      await writeEmbeddings(path, {
        features: concatF32(rows.feats),
        dim,
        paths: rows.paths,
        labels: rows.labels.length ? rows.labels : null,
        patients: rows.patients.length ? rows.patients : null,
        patchTokens: opts.patchTokens ? { data: concatF32(rows.tokens), tokens: patches } : null,
        meta: { ...meta, extra: { ...meta.extra, "bloom.next": String(lastIndex + 1) } },
      }, "safetensors");
      chunkIndex++;
      inChunk = 0;
      if (opts.crashAfterChunks !== undefined && chunkIndex >= opts.crashAfterChunks) {
        throw new Error(`simulated crash after ${chunkIndex} chunks`);
      }
      rows = { feats: [], tokens: [], paths: [], labels: [], patients: [] };
    };
    for await (const b of loader.batches()) {
      const e = await embedBatch(gpu, opts.model, b, {
        pool,
        patchTokens: opts.patchTokens,
        inputSize: size,
      });
      dim = e.dim;
      patches = e.patches;
      rows.feats.push(e.features);
      if (e.patchTokens) rows.tokens.push(e.patchTokens);
      for (let i = 0; i < b.count; i++) {
        const m = b.meta[i] ?? {};
        rows.paths.push(String(m.source ?? m.path ?? b.keys[i]));
        if (b.labels[i] >= 0) rows.labels.push(classes[b.labels[i]] ?? String(b.labels[i]));
        if (m.patient !== undefined) rows.patients.push(String(m.patient));
      }
      if (rows.labels.length && rows.labels.length !== rows.paths.length) {
        throw new Error(
          `${opts.input}: some images have labels and some do not; embed them separately`,
        );
      }
      lastIndex = b.indices[b.count - 1];
      inChunk += b.count;
      embedded += b.count;
      progress.tick(b.count);
      if (inChunk >= chunk) await flush();
    }
    await flush();
    progress.done();
  }
  // Assemble the chunks in order into the final file (atomic), then drop the partial dir.
  const files = [...Deno.readDirSync(partial)]
    .map((e) => e.name)
    .filter((n) => /^chunk_\d+\.safetensors$/.test(n))
    .sort();
  if (files.length === 0) {
    throw new Error(
      `${opts.input}: no image could be embedded (${failed} failed); nothing written`,
    );
  }
  const rowsOut = await assemble(
    files.map((f) => join(partial, f)),
    out,
    opts.format,
    meta,
    Boolean(opts.patchTokens),
  );
  await Deno.remove(partial, { recursive: true });
  const seconds = (performance.now() - t0) / 1000;
  return {
    out,
    rows: rowsOut.rows,
    dim: rowsOut.dim,
    imagesPerSecond: embedded / Math.max(seconds, 1e-9),
    resumedRows,
    failed,
  };
}

/** Chunks already written by an earlier run with the same state (else the partial dir is reset). */
async function finishedChunks(
  partial: string,
  state: State,
  log: (s: string) => void,
): Promise<{ rows: number; next: number }[]> {
  let old: State | null = null;
  try {
    old = JSON.parse(await Deno.readTextFile(join(partial, "state.json")));
  } catch {
    return [];
  }
  if (JSON.stringify(old) !== JSON.stringify(state)) {
    log(`${partial} is from a run with other inputs or options; starting over`);
    await Deno.remove(partial, { recursive: true });
    return [];
  }
  const names = [...Deno.readDirSync(partial)].map((e) => e.name)
    .filter((n) => /^chunk_\d+\.safetensors$/.test(n)).sort();
  const out: { rows: number; next: number }[] = [];
  for (const [i, n] of names.entries()) {
    if (n !== `chunk_${String(i).padStart(6, "0")}.safetensors`) break;
    const e = await readEmbeddings(join(partial, n));
    out.push({ rows: e.rows, next: Number(e.meta["bloom.next"]) });
  }
  return out;
}

/** Concatenates chunk files (in order) into one embeddings file. */
async function assemble(
  chunks: string[],
  out: string,
  format: EmbeddingsFormat | undefined,
  meta: EmbeddingsMeta,
  patchTokens: boolean,
): Promise<{ rows: number; dim: number }> {
  const first = await readEmbeddings(chunks[0], { patchTokens });
  await Deno.mkdir(dirname(out) || ".", { recursive: true });
  const w = await createEmbeddingsWriter(out, {
    dim: first.dim,
    format,
    patchTokens: patchTokens ? first.patchTokens?.tokens : undefined,
    meta,
  });
  try {
    for (const c of chunks) {
      const e = c === chunks[0] ? first : await readEmbeddings(c, { patchTokens });
      await w.append(embeddingsBlock(e));
    }
    await w.finish();
    return { rows: w.rows, dim: first.dim };
  } catch (e) {
    await w.abort();
    throw e;
  }
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
      throw new Error(`${dir}: parts of ${count} and of ${n} are mixed; remove the stale ones`);
    }
    count = n;
    found.set(Number(m[1]), join(dir, e.name));
  }
  if (count < 0) throw new Error(`no part files ${stem}.part-*-of-*${ext} in ${dir}`);
  const missing = [...Array(count).keys()].filter((i) => !found.has(i));
  if (missing.length) {
    throw new Error(
      `parts ${missing.join(", ")} of ${count} are missing (${
        partPath(out, missing[0], count)
      }); ` +
        "run them first",
    );
  }
  const first = await readEmbeddings(found.get(0)!);
  const w = await createEmbeddingsWriter(out, {
    dim: first.dim,
    format,
    meta: {
      arch: first.meta.arch,
      weights: first.meta.weights,
      pool: first.meta.pool as Pool,
      extra: { "bloom.parts": String(count) },
    },
  });
  try {
    for (let i = 0; i < count; i++) {
      const e = i === 0 ? first : await readEmbeddings(found.get(i)!);
      if (
        e.dim !== first.dim || e.meta.weights !== first.meta.weights ||
        e.meta.pool !== first.meta.pool
      ) {
        throw new Error(
          `${
            found.get(i)
          }: width ${e.dim}, weights ${e.meta.weights}, pool ${e.meta.pool} differ from ` +
            `part 0 (${first.dim}, ${first.meta.weights}, ${first.meta.pool})`,
        );
      }
      await w.append({
        features: e.features,
        paths: e.paths,
        labels: e.labels,
        patients: e.patients,
      });
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

function concatF32(parts: Float32Array[]): Float32Array {
  const n = parts.reduce((a, p) => a + p.length, 0);
  const out = new Float32Array(n);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

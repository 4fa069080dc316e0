/**
 * A prediction run: saved heads (eval --save) applied to new cells — what
 * `bloom predict` runs (cli/predict.ts has the flags; docs/predict.md the
 * formats and thresholds).
 *
 * - Input: images (a folder, ingested shards, a list file; embedded with the
 *   weights into a features file, resumable as `embed` is) or an existing
 *   features file (safetensors, npy + sidecar, csv from `embed`).
 * - Heads: a linear probe and/or a kNN reference set classify each cell (the
 *   probe unless `classifier: "knn"`); a kNN reference set also gives each
 *   cell's distance to its nearest reference cell, the out-of-distribution
 *   signal; MIL heads give one row per patient with the subtype
 *   probabilities and the most-attended cells, drawn as a 4 × 4 grid. A head
 *   path may be a head file or the folder `eval --save` wrote.
 * - Every head must have been trained on embeddings of the model the input
 *   comes from (architecture, weights hash, pooling, input size): otherwise
 *   the run stops before any work, naming both models.
 * - Output: one csv row per cell (path, sample, predicted class, confidence,
 *   the probability of each class, nearest distance, the thresholds, the OOD
 *   flag and why); a summary with the differential count per sample (csv or
 *   Markdown); unusable images and samples go to `<out>.errors.jsonl`.
 * - Rows are written as they are predicted to `OUT.partial` and renamed to
 *   OUT when all are done; a rerun of the same command resumes after the
 *   rows already written. OUT itself is always complete.
 *
 * Bad input throws an InputError naming the file, head or option and the fix.
 */
import { basename, dirname, extname, isAbsolute, join } from "node:path";
import sharp from "npm:sharp@0.34.5";
import {
  csvField,
  CsvParser,
  type EmbeddingsFile,
  EmbeddingsFileError,
  formatFromPath,
  type Pooling,
  readEmbeddings,
} from "../data/embeddings_file.ts";
import { InputError } from "../data/errors.ts";
import { exists, writeAtomically } from "../data/file.ts";
import { sha256File } from "../data/hash.ts";
import { attentionGridSvg, type AttentionTile } from "../eval/attention_figure.ts";
import {
  differentialCount,
  differentialCsv,
  differentialMarkdown,
  type DifferentialTable,
} from "../eval/differential.ts";
import { GPU_KNN_WORK, gpuNeighborSearch, MAX_GPU_K } from "../eval/gpu_knn.ts";
import { makeGrouper, pathFolders } from "../eval/groups.ts";
import {
  checkSameEmbedding,
  describeEmbeddingModel,
  embeddingDifferences,
  type EmbeddingModel,
  embeddingModelFromMeta,
  type HeadKind,
  headKindOf,
} from "../eval/head_file.ts";
import { KnnIndex } from "../eval/knn_index.ts";
import { headFilesAt } from "../eval/saved_heads.ts";
import type { Label } from "../eval/labels.ts";
import { matrix } from "../eval/matrix.ts";
import { MilHead } from "../eval/mil_head.ts";
import { writeSvgAndPng } from "../eval/plot_png.ts";
import { Probe } from "../eval/probe.ts";
import type { Device } from "../eval/run.ts";
import { EvalThreads, threadedNeighborSearch } from "../eval/threads.ts";
import { loadCheckpoint, openCheckpoint } from "../graph/checkpoint.ts";
import { getGpu, type Gpu } from "../kernels/runtime.ts";
import { runEmbed } from "./embed_run.ts";
import { checkSource } from "./loader.ts";
import { lockOutput } from "./output_lock.ts";

/** What `runPredict` takes (the flags, typed). */
export interface PredictOptions {
  heads: string[];
  input: string;
  out: string;
  weights?: string;
  attentionHeads?: number;
  summary?: string;
  groupBy?: string;
  classifier?: "probe" | "knn";
  minConfidence?: number;
  maxDistance?: number;
  excludeFlagged?: boolean;
  features?: string;
  figures?: string;
  images?: string;
  batch?: number;
  workers?: number;
  device?: Device;
  threads?: number;
  quiet?: boolean;
  autotune?: boolean;
  /** Rows predicted per resumable block. Default 4096. */
  blockRows?: number;
  /** Test hook: stop (throw) after writing this many blocks, as a crash would. */
  crashAfterBlocks?: number;
  log?: (line: string) => void;
  /** Another run writes `out`: wait for it (default: stop, naming it; pipelines/output_lock.ts). */
  wait?: boolean;
  /**
   * Stops embedding the images (Ctrl-C): the rows read back are kept for the rerun, and
   * `Interrupted` says so (pipelines/interrupt.ts).
   */
  signal?: AbortSignal;
}

/** What a run produced. */
export interface PredictSummary {
  out: string;
  cells: number;
  samples: number;
  flagged: number;
  /** Rows found already written by an interrupted run. */
  resumedRows: number;
  errors: number;
  errorsFile: string | null;
  /** Patient-level csv (MIL heads), when written. */
  patients: string | null;
  figures: string[];
  summary: string | null;
}

/** The heads of a run. */
interface Heads {
  probe: { path: string; head: Probe } | null;
  knn: { path: string; head: KnnIndex } | null;
  mil: { path: string; head: MilHead }[];
  /** The embedding model all heads share, and the head that names it in messages. */
  embedding: EmbeddingModel;
  first: string;
}

/** `OUT` with its extension replaced by `suffix` (predictions.csv → predictions.errors.jsonl). */
function sibling(out: string, suffix: string): string {
  const ext = extname(out);
  return `${ext ? out.slice(0, -ext.length) : out}${suffix}`;
}

/** Loads the heads and checks that they share one embedding model. */
async function loadHeads(paths: readonly string[], log: (s: string) => void): Promise<Heads> {
  const files: string[] = [];
  for (const p of paths) files.push(...await headFilesAt(p, "--head"));
  const byKind = new Map<HeadKind, string[]>();
  for (const f of files) {
    const k = await headKindOf(f);
    byKind.set(k, [...(byKind.get(k) ?? []), f]);
  }
  for (const kind of ["probe", "knn"] as const) {
    const list = byKind.get(kind) ?? [];
    if (list.length > 1) {
      throw new InputError(
        `--head gives ${list.length} ${kind} heads (${list.map((p) => basename(p)).join(", ")}; ` +
          `one per fold of a cross-validation?); pass one of them as --head FILE`,
      );
    }
  }
  const probePath = byKind.get("probe")?.[0];
  const knnPath = byKind.get("knn")?.[0];
  const probe = probePath ? { path: probePath, head: await Probe.load(probePath) } : null;
  const knn = knnPath ? { path: knnPath, head: await KnnIndex.load(knnPath) } : null;
  const mil: Heads["mil"] = [];
  for (const p of byKind.get("mil") ?? []) mil.push({ path: p, head: await MilHead.load(p) });
  const all: { path: string; embedding: EmbeddingModel }[] = [
    ...(probe ? [{ path: probe.path, embedding: probe.head.embedding }] : []),
    ...(knn ? [{ path: knn.path, embedding: knn.head.embedding }] : []),
    ...mil.map((m) => ({ path: m.path, embedding: m.head.embedding })),
  ];
  const heads: Heads = { probe, knn, mil, embedding: all[0].embedding, first: all[0].path };
  for (const h of all.slice(1)) {
    const d = embeddingDifferences(heads.embedding, h.embedding).differences;
    if (d.length) {
      throw new InputError(
        `${h.path} and ${heads.first} were trained on embeddings of different models ` +
          `(${describeEmbeddingModel(h.embedding)} vs ${
            describeEmbeddingModel(heads.embedding)
          }); ` +
          `pass heads of one model`,
      );
    }
  }
  const milClasses = heads.mil.map((m) => JSON.stringify(m.head.classes));
  if (new Set(milClasses).size > 1) {
    throw new InputError(
      `the MIL heads ${heads.mil.map((m) => m.path).join(", ")} know different subtypes; ` +
        "pass heads of one training run",
    );
  }
  log(
    `heads: ${files.map((f) => basename(f)).join(", ")} (${
      describeEmbeddingModel(heads.embedding)
    })`,
  );
  return heads;
}

/** Whether `path` is an embeddings file (by name, and for csv by its header) rather than images. */
async function isFeaturesFile(path: string): Promise<boolean> {
  let st: Deno.FileInfo;
  try {
    st = await Deno.stat(path);
  } catch {
    return false;
  }
  if (!st.isFile) return false;
  const fmt = formatFromPath(path);
  if (fmt === "safetensors" || fmt === "npy") return true;
  if (fmt !== "csv") return false;
  using f = await Deno.open(path, { read: true });
  const head = new Uint8Array(64);
  const n = (await f.read(head)) ?? 0;
  return /^\uFEFF?path,label,patient,f0/.test(new TextDecoder().decode(head.subarray(0, n)));
}

/**
 * The sample of each cell: `--group-by` (eval/groups.ts), else the patient
 * where the data has one, else the cell's folder, else `fallback`.
 */
function sampleOf(
  spec: string | undefined,
  fallback: string,
): (p: string, patient: string | null) => string {
  if (spec === undefined) return (p, patient) => patient ?? pathFolders(p).pop() ?? fallback;
  return makeGrouper(spec, "--group-by");
}

/** One problem with one input, as errors.jsonl records it. */
interface InputProblem {
  path?: string;
  sample?: string;
  error: string;
}

/** The embedding model behind `--weights W` for these heads (header only, nothing loaded). */
async function weightsModel(
  weights: string,
  heads: Heads,
  attentionHeads: number | undefined,
): Promise<EmbeddingModel> {
  const ck = await openCheckpoint(weights, { heads: attentionHeads });
  ck.file.close();
  const pool = heads.embedding.pool ?? "cls";
  return {
    arch: ck.config.arch,
    weights: basename(weights),
    weightsSha256: await sha256File(weights),
    pool,
    inputSize: heads.embedding.inputSize ?? 224,
    dim: pool === "cls+mean" ? 2 * ck.config.dim : ck.config.dim,
  };
}

/**
 * The features to predict on: the input file, or the images embedded with
 * `--weights` into `--features` (reused when complete and from the same
 * model; resumed when interrupted).
 */
async function obtainFeatures(
  opts: PredictOptions,
  heads: Heads,
  problems: InputProblem[],
  log: (s: string) => void,
): Promise<{ emb: EmbeddingsFile; imageRoot: string | null }> {
  if (await isFeaturesFile(opts.input)) {
    const emb = await readEmbeddings(opts.input);
    if (emb.rows === 0) {
      throw new EmbeddingsFileError(opts.input, "features", "holds no cells (0 rows)");
    }
    const model = embeddingModelFromMeta(emb.meta, emb.dim);
    if (emb.dim !== heads.embedding.dim) {
      throw new EmbeddingsFileError(
        opts.input,
        "features",
        `${emb.dim} features per cell, but ${heads.first} was trained on ` +
          `${heads.embedding.dim}-d embeddings (${describeEmbeddingModel(heads.embedding)})`,
        "embed the cells with the head's model, or pass the features file that model wrote",
      );
    }
    const unchecked = checkSameEmbedding(heads.first, heads.embedding, opts.input, model);
    if (unchecked.length) {
      log(`warning: ${opts.input} does not record its ${unchecked.join(", ")}; not checked`);
    }
    if (opts.weights) {
      const w = await weightsModel(opts.weights, heads, opts.attentionHeads);
      checkSameEmbedding(heads.first, heads.embedding, `--weights ${opts.weights}`, w);
    }
    return { emb, imageRoot: opts.images ?? dirname(opts.input) };
  }
  if (!opts.weights) {
    throw new InputError(
      `--input ${opts.input} is images, and embedding them needs --weights: the checkpoint ` +
        `the heads were trained on (${describeEmbeddingModel(heads.embedding)})`,
    );
  }
  await checkSource(opts.input, "--input", { path: opts.out, flag: "--out" });
  const model = await weightsModel(opts.weights, heads, opts.attentionHeads);
  checkSameEmbedding(heads.first, heads.embedding, `--weights ${opts.weights}`, model);
  const featuresPath = opts.features ?? sibling(opts.out, ".features.safetensors");
  const reusable = await readEmbeddings(featuresPath).catch(() => null);
  const partialExists = await exists(`${featuresPath}.partial`);
  if (
    reusable && !partialExists &&
    embeddingDifferences(model, embeddingModelFromMeta(reusable.meta, reusable.dim))
        .differences.length === 0 &&
    reusable.meta["bloom.input"] === opts.input
  ) {
    log(`reusing the features in ${featuresPath} (delete it to embed again)`);
    return { emb: reusable, imageRoot: imageRootOf(opts.input) };
  }
  const gpu = await getGpu();
  const m = await loadCheckpoint(gpu, opts.weights, { heads: opts.attentionHeads });
  try {
    log(`embedding ${opts.input} with ${model.arch} ${model.weights} into ${featuresPath}`);
    await runEmbed(gpu, {
      model: { arena: m.arena, config: m.config },
      weights: opts.weights,
      weightsSha256: model.weightsSha256 ?? undefined,
      input: opts.input,
      out: featuresPath,
      pool: model.pool as Pooling,
      size: model.inputSize ?? 224,
      batch: opts.batch,
      workers: opts.workers,
      quiet: opts.quiet,
      autotune: opts.autotune,
      log,
      extraMeta: { "bloom.input": opts.input },
      wait: opts.wait,
      signal: opts.signal,
      onError: (where, reason) => problems.push({ path: where, error: reason }),
    });
  } finally {
    m.arena.destroy();
  }
  return { emb: await readEmbeddings(featuresPath), imageRoot: imageRootOf(opts.input) };
}

/** The folder relative cell paths of an image input are relative to. */
function imageRootOf(input: string): string {
  return input.toLowerCase().endsWith(".csv") || input.toLowerCase().endsWith(".txt")
    ? dirname(input)
    : input;
}

/** The kNN search for a reference of `ref` rows and `queries` rows (see --device). */
async function knnSearch(
  opts: PredictOptions,
  index: KnnIndex,
  queries: number,
  log: (s: string) => void,
): Promise<{ threads: EvalThreads | null }> {
  const work = queries * index.reference.rows * index.reference.cols;
  const device = opts.device ?? "auto";
  let gpu: Gpu | null = null;
  if (device === "gpu" || (device === "auto" && work >= GPU_KNN_WORK && index.k <= MAX_GPU_K)) {
    try {
      gpu = await getGpu();
      if (device === "auto" && gpu.adapter.isFallback) gpu = null;
    } catch (e) {
      if (device === "gpu") throw e;
    }
  }
  if (gpu) {
    log(`kNN search on the GPU (${gpu.describe()})`);
    index.withSearch(gpuNeighborSearch(gpu));
    return { threads: null };
  }
  const n = opts.threads ?? (navigator.hardwareConcurrency || 1);
  if (n > 1 && work > 1e8) {
    const threads = EvalThreads.open(n);
    index.withSearch(threadedNeighborSearch(threads, { screened: true }));
    return { threads };
  }
  return { threads: null }; // the index's own search: the screened one, on this thread
}

/** What the predictions file's state records, to resume only the same run. */
interface PartialState {
  key: string;
  rows: number;
  bytes: number;
}

/** (path, sample, predicted, ood) of the rows an interrupted run wrote (`text`: its csv). */
function parseWrittenRows(
  text: string,
  columns: string[],
): { sample: string; predicted: string; ood: boolean; path: string }[] {
  const out: { sample: string; predicted: string; ood: boolean; path: string }[] = [];
  const col = (n: string) => columns.indexOf(n);
  let header = true;
  const parser = new CsvParser((row) => {
    if (header) {
      header = false;
      return;
    }
    if (row.length === 1 && row[0] === "") return;
    out.push({
      path: row[col("path")],
      sample: row[col("sample")],
      predicted: row[col("predicted")],
      ood: row[col("ood")] === "1",
    });
  });
  parser.push(text);
  parser.end();
  return out;
}

/** Number formatting of the csv: shortest round-trip repr (the exact float64). */
function num(v: number): string {
  return Number.isFinite(v) ? String(v) : "";
}

/** Runs a prediction (see the module comment). */
export async function runPredict(opts: PredictOptions): Promise<PredictSummary> {
  const log = opts.log ?? ((s: string) => {
    if (!opts.quiet) console.error(`predict: ${s}`);
  });
  const summaryFormat = opts.summary === undefined
    ? null
    : extname(opts.summary).toLowerCase() === ".md"
    ? "md"
    : extname(opts.summary).toLowerCase() === ".csv"
    ? "csv"
    : null;
  if (opts.summary !== undefined && summaryFormat === null) {
    throw new InputError(`--summary ${opts.summary}: name a .csv or .md file`);
  }
  const heads = await loadHeads(opts.heads, log);
  const cellHead = opts.classifier === "knn" ? heads.knn : heads.probe ?? heads.knn;
  if (opts.classifier && !cellHead) {
    throw new InputError(`--classifier ${opts.classifier}: no ${opts.classifier} head given`);
  }
  if (opts.summary !== undefined && !cellHead) {
    throw new InputError(
      "--summary counts cells by class and needs a probe or kNN head; the heads given are MIL only",
    );
  }
  const grouper = sampleOf(opts.groupBy, basename(opts.input));
  // One run per predictions file, from here (heads and options checked) until it is complete.
  await using _lock = await lockOutput(opts.out, "file", { wait: opts.wait, log });
  const problems: InputProblem[] = [];
  const errorsFile = sibling(opts.out, ".errors.jsonl");
  const { emb, imageRoot } = await obtainFeatures(opts, heads, problems, log);
  const n = emb.rows;
  const d = emb.dim;
  log(`${n} cells × ${d} features from ${emb.path}`);

  // Samples, with a problem recorded for each cell the grouping cannot place.
  const samples = emb.paths.map((p, i) => {
    try {
      return grouper(p, emb.patients?.[i] ?? null);
    } catch (e) {
      problems.push({ path: p, error: (e as Error).message });
      return "(ungrouped)";
    }
  });
  // A sample folder (input/<sample>/<cell>) with no readable image.
  const flat = emb.paths.every((p) => pathFolders(p).length === 1);
  if (flat && opts.groupBy === undefined && !emb.patients && !(await isFeaturesFile(opts.input))) {
    const have = new Set(samples);
    try {
      for await (const e of Deno.readDir(opts.input)) {
        if (e.isDirectory && !have.has(e.name)) {
          problems.push({
            sample: e.name,
            error: `no readable image in ${
              join(opts.input, e.name)
            }; the sample has no predictions`,
          });
        }
      }
    } catch { /* not a folder: shards or a list */ }
  }

  const summary: PredictSummary = {
    out: opts.out,
    cells: n,
    samples: new Set(samples).size,
    flagged: 0,
    resumedRows: 0,
    errors: 0,
    errorsFile: null,
    patients: null,
    figures: [],
    summary: null,
  };
  const allPredicted: string[] = [];
  const allFlagged: boolean[] = [];
  let classes: Label[] = [];
  if (cellHead) {
    const r = await predictCells(opts, heads, cellHead, emb, samples, log);
    classes = r.classes;
    allPredicted.push(...r.predicted);
    allFlagged.push(...r.flagged);
    summary.resumedRows = r.resumed;
    summary.flagged = r.flagged.filter(Boolean).length;
    if (opts.summary) {
      const table = differentialCount(
        allPredicted,
        samples,
        classes.map(String),
        { flagged: allFlagged, excludeFlagged: opts.excludeFlagged },
      );
      await writeSummary(
        opts.summary,
        summaryFormat!,
        table,
        r.notes,
        emb.paths,
        allFlagged,
        samples,
      );
      summary.summary = opts.summary;
    }
  }
  if (heads.mil.length) {
    const milOut = cellHead ? sibling(opts.out, ".patients.csv") : opts.out;
    const figDir = opts.figures ?? sibling(opts.out, ".attention");
    const r = await predictPatients(heads, emb, samples, milOut, figDir, imageRoot, opts, log);
    summary.patients = milOut;
    summary.figures = r.figures;
  }
  if (problems.length) {
    const lines = problems.map((p) => JSON.stringify(p)).join("\n") + "\n";
    await writeAtomically(errorsFile, (o) => o.write(new TextEncoder().encode(lines)));
    summary.errors = problems.length;
    summary.errorsFile = errorsFile;
  } else {
    await Deno.remove(errorsFile).catch(() => {});
  }
  return summary;
}

/** Per-cell predictions, written block by block to OUT.partial, resumable. */
async function predictCells(
  opts: PredictOptions,
  heads: Heads,
  cellHead: { path: string; head: Probe | KnnIndex },
  emb: EmbeddingsFile,
  samples: string[],
  log: (s: string) => void,
): Promise<{
  classes: Label[];
  predicted: string[];
  flagged: boolean[];
  resumed: number;
  notes: string[];
}> {
  const n = emb.rows;
  const d = emb.dim;
  const isProbe = cellHead.head instanceof Probe;
  const classes = cellHead.head.classes;
  const knn = heads.knn?.head ?? null;
  const minConfidence = opts.minConfidence ??
    (heads.probe && isProbe ? heads.probe.head.minConfidence : 0.5);
  const maxDistance = knn ? opts.maxDistance ?? knn.ood.threshold : null;
  if (opts.maxDistance !== undefined && !knn) {
    log("warning: --max-distance needs a kNN head (the reference set); no distance flag");
  }
  const hasLabels = emb.labels !== null;
  const columns = [
    "path",
    "sample",
    ...(hasLabels ? ["label"] : []),
    "predicted",
    "confidence",
    ...classes.map((c) => `p_${c}`),
    "nearest_distance",
    "distance_threshold",
    "min_confidence",
    "ood",
    "ood_reason",
  ];
  const notes = [
    `classifier: ${basename(cellHead.path)} (${isProbe ? "linear probe" : `${knn!.k}-NN vote`})`,
    `out of distribution: top probability < ${minConfidence}` +
    (maxDistance !== null
      ? ` or distance to the nearest reference cell > ${maxDistance.toPrecision(6)}` +
        (opts.maxDistance === undefined
          ? ` (the ${knn!.ood.quantile} quantile of the reference cells' own nearest-neighbour ` +
            `distances, ${basename(heads.knn!.path)})`
          : " (--max-distance)")
      : " (no kNN reference set given, so no distance check)"),
    `embeddings: ${describeEmbeddingModel(heads.embedding)}`,
  ];
  // Resume: the same features, heads and options continue after the rows already written.
  const partial = `${opts.out}.partial`;
  const statePath = `${partial}.json`;
  const key = JSON.stringify({
    features: await sha256File(emb.path),
    heads: await Promise.all(
      [heads.probe?.path, heads.knn?.path].filter(Boolean).map((p) => sha256File(p!)),
    ),
    isProbe,
    minConfidence,
    maxDistance,
    samples: opts.groupBy ?? null,
    columns,
  });
  let state: PartialState = { key, rows: 0, bytes: 0 };
  try {
    const old = JSON.parse(await Deno.readTextFile(statePath)) as PartialState;
    if (old.key === key && (await Deno.stat(partial)).size >= old.bytes) state = old;
    else log(`${partial} is from another run; starting over`);
  } catch { /* no earlier run */ }
  const enc = new TextEncoder();
  const file = await Deno.open(partial, { write: true, create: true });
  const predicted: string[] = [];
  const flagged: boolean[] = [];
  try {
    if (state.rows > 0) {
      await file.truncate(state.bytes);
      await file.seek(state.bytes, Deno.SeekMode.Start);
      const written = (await Deno.readFile(partial)).subarray(0, state.bytes);
      for (const r of parseWrittenRows(new TextDecoder().decode(written), columns)) {
        predicted.push(r.predicted);
        flagged.push(r.ood);
      }
      log(`resuming ${opts.out}: ${state.rows} cells already predicted`);
    } else {
      await file.truncate(0);
      const head = columns.map(csvField).join(",") + "\n";
      await writeAll(file, enc.encode(head));
      state.bytes = enc.encode(head).length;
    }
    const resumed = state.rows;
    const search = knn ? await knnSearch(opts, knn, n - state.rows, log) : { threads: null };
    try {
      const block = opts.blockRows ?? 4096;
      let blocks = 0;
      const c = classes.length;
      for (let r0 = state.rows; r0 < n; r0 += block) {
        const r1 = Math.min(r0 + block, n);
        const x = matrix(emb.features.subarray(r0 * d, r1 * d), r1 - r0, d, emb.path);
        // The kNN search starts on its worker threads; the probe runs meanwhile.
        const searching = knn ? knn.query(x) : null;
        let probed: ReturnType<Probe["predict"]> | null;
        try {
          probed = isProbe ? (cellHead.head as Probe).predict(x) : null;
        } catch (e) {
          await searching?.catch(() => {});
          throw e;
        }
        const q = searching ? await searching : null;
        const p = probed ?? q!;
        const lines: string[] = [];
        for (let i = 0; i < r1 - r0; i++) {
          const row = r0 + i;
          const conf = p.confidence[i];
          const dist = q ? q.nearestDistance[i] : NaN;
          const farAway = maxDistance !== null && dist > maxDistance;
          const unsure = conf < minConfidence;
          const reason = [farAway ? "distance" : "", unsure ? "confidence" : ""].filter(Boolean);
          const label = String(p.labels[i]);
          predicted.push(label);
          flagged.push(reason.length > 0);
          const cells = [
            csvField(emb.paths[row]),
            csvField(samples[row]),
            ...(hasLabels ? [csvField(emb.labels![row])] : []),
            csvField(label),
            num(conf),
            ...Array.from({ length: c }, (_, k) => num(p.proba[i * c + k])),
            num(dist),
            maxDistance === null ? "" : num(maxDistance),
            num(minConfidence),
            reason.length ? "1" : "0",
            reason.join("+"),
          ];
          lines.push(cells.join(","));
        }
        const bytes = enc.encode(lines.join("\n") + "\n");
        await writeAll(file, bytes);
        await file.syncData();
        state = { key, rows: r1, bytes: state.bytes + bytes.length };
        await writeAtomically(statePath, (o) => o.write(enc.encode(JSON.stringify(state))));
        blocks++;
        if (opts.crashAfterBlocks !== undefined && blocks >= opts.crashAfterBlocks && r1 < n) {
          throw new Error(`simulated crash after ${blocks} blocks`);
        }
      }
    } finally {
      search.threads?.close();
    }
    file.close();
    await Deno.rename(partial, opts.out);
    await Deno.remove(statePath).catch(() => {});
    const nFlagged = flagged.filter(Boolean).length;
    log(
      `wrote ${opts.out}: ${n} cells${resumed ? ` (${resumed} resumed)` : ""}, ${nFlagged} ` +
        `flagged out of distribution`,
    );
    return { classes, predicted, flagged, resumed, notes };
  } catch (e) {
    try {
      file.close();
    } catch { /* closed */ }
    throw e;
  }
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let done = 0;
  while (done < bytes.length) done += await file.write(bytes.subarray(done));
}

/** Writes the differential count (csv or Markdown) atomically. */
async function writeSummary(
  path: string,
  format: "csv" | "md",
  table: DifferentialTable,
  notes: string[],
  paths: readonly string[],
  flagged: readonly boolean[],
  samples: readonly string[],
): Promise<void> {
  let text: string;
  if (format === "csv") text = differentialCsv(table);
  else {
    const byS = new Map<string, string[]>();
    flagged.forEach((f, i) => {
      if (f) byS.set(samples[i], [...(byS.get(samples[i]) ?? []), paths[i]]);
    });
    text = differentialMarkdown(table, { notes, flaggedPaths: byS });
  }
  await writeAtomically(path, (o) => o.write(new TextEncoder().encode(text)));
}

/** Patient-level rows of the MIL heads, and the attention grids. */
async function predictPatients(
  heads: Heads,
  emb: EmbeddingsFile,
  samples: string[],
  out: string,
  figDir: string,
  imageRoot: string | null,
  opts: PredictOptions,
  log: (s: string) => void,
): Promise<{ figures: string[] }> {
  const d = emb.dim;
  const bags = new Map<string, number[]>();
  samples.forEach((s, i) => bags.set(s, [...(bags.get(s) ?? []), i]));
  const ids = [...bags.keys()].sort();
  const classes = heads.mil[0].head.classes;
  const TOP = 16;
  const lines = [
    [
      "patient",
      "head",
      "cells",
      "predicted",
      ...classes.map((c) => `p_${c}`),
      "top_cells",
      "top_attention",
    ]
      .map((c) => csvField(String(c))).join(","),
  ];
  const figures: string[] = [];
  await Deno.mkdir(figDir, { recursive: true });
  for (const id of ids) {
    const rows = bags.get(id)!;
    const h = new Float32Array(rows.length * d);
    rows.forEach((r, i) => h.set(emb.features.subarray(r * d, (r + 1) * d), i * d));
    for (const m of heads.mil) {
      const p = m.head.predictBag(h, rows.length);
      const order = [...rows.keys()].sort((a, b) => p.attention[b] - p.attention[a] || a - b)
        .slice(0, TOP);
      const headName = basename(m.path, extname(m.path));
      lines.push([
        csvField(id),
        csvField(headName),
        String(rows.length),
        csvField(String(p.label)),
        ...Array.from(p.proba, num),
        csvField(order.map((i) => emb.paths[rows[i]]).join(";")),
        order.map((i) => num(p.attention[i])).join(";"),
      ].join(","));
      const tiles: AttentionTile[] = [];
      for (const i of order) {
        const path = emb.paths[rows[i]];
        tiles.push({
          png: await thumbnail(path, imageRoot, opts.images),
          path,
          attention: p.attention[i],
        });
      }
      const base = join(figDir, `${safeName(id)}.${safeName(headName)}`);
      const svg = attentionGridSvg(tiles, {
        title: `${id}: ${p.label} (p = ${p.proba[p.code].toFixed(3)})`,
        subtitle: `${headName} · the ${tiles.length} most-attended of ${rows.length} cells`,
      });
      const written = await writeSvgAndPng(base, svg);
      figures.push(written.png);
    }
  }
  await writeAtomically(out, (o) => o.write(new TextEncoder().encode(lines.join("\n") + "\n")));
  log(`wrote ${out}: ${ids.length} patients × ${heads.mil.length} MIL heads; grids in ${figDir}`);
  return { figures };
}

/** A file-system-safe version of an id. */
function safeName(s: string): string {
  return s.replace(/[^A-Za-z0-9._-]+/g, "_").slice(0, 80) || "_";
}

/** A 128 px PNG of the cell at `path` (tried as given, under the image root and --images), or null. */
async function thumbnail(
  path: string,
  imageRoot: string | null,
  images: string | undefined,
): Promise<Uint8Array | null> {
  const tries = isAbsolute(path)
    ? [path]
    : [images, imageRoot].filter((r): r is string => Boolean(r)).map((r) => join(r, path))
      .concat([path]);
  for (const p of tries) {
    try {
      const buf = await sharp(p).resize(128, 128, { fit: "cover" }).png().toBuffer();
      return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
    } catch { /* next */ }
  }
  return null;
}

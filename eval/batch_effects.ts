/**
 * Batch effects: do the embeddings group cells by where they came from
 * (dataset, scanner, site, folder: the *source*) more than by what they are
 * (the cell type)? Three measurements, each a scikit-learn definition:
 *
 * - **Silhouettes** (eval/silhouette.ts): `silhouette_samples` once with the
 *   sources as clusters and once with the cell types; per source, the mean
 *   over its cells of each; overall, `silhouette_score` of each. On more
 *   than `sampleSize` cells (default 5000) both are computed on the same
 *   seeded sample, `RandomState(seed).permutation(n)[:sampleSize]`.
 * - **Source classification**: out-of-fold predictions of
 *   `KNeighborsClassifier(n_neighbors=k)` for the source
 *   (`cross_val_predict` with `StratifiedKFold(folds, shuffle=True,
 *   random_state=seed)` stratified by source); accuracy overall and per
 *   source (recall: the share of its cells whose source is recovered),
 *   against chance (a source's share of the cells; overall, the majority share).
 *   High means the source is written into the embedding: a batch effect.
 * - **Cell-type classification**: the same with the cell-type labels
 *   (folds stratified by label); accuracy overall and within each source.
 *
 * Verdict per source: the embeddings separate that source's cells by source
 * more than by cell type when its mean source silhouette exceeds its mean
 * cell-type silhouette.
 */
import { type EmbeddingsFile, requireLabels } from "../data/embeddings_file.ts";
import { InputError } from "../data/errors.ts";
import { sourcesOf } from "./cell_groups.ts";
import { KNeighborsClassifier, type NeighborSearch } from "./knn.ts";
import { type Label, uniqueSorted } from "./labels.ts";
import { type Matrix, matrix, takeRows } from "./matrix.ts";
import { silhouetteSample, silhouetteSamplesMany } from "./silhouette.ts";
import { stratifiedKFold } from "./split.ts";

/** Options of `batchEffects`. */
export interface BatchEffectsOptions {
  /** Neighbours of the kNN classifiers. Default 20. */
  k?: number;
  /** Folds of the out-of-fold predictions. Default 5. */
  folds?: number;
  /** Seed of the folds and the silhouette sample. Default 42. */
  seed?: number;
  /** Cells the silhouettes are computed on at most. Default 5000. */
  sampleSize?: number;
  /** The neighbour search (CPU float64 by default). */
  search?: NeighborSearch;
}

/** One source's row. */
export interface SourceEffect {
  source: string;
  cells: number;
  /** Mean silhouette of its cells with sources as clusters (NaN if none was sampled). */
  sourceSilhouette: number;
  /** Mean silhouette of its cells with cell types as clusters. */
  labelSilhouette: number;
  /** Share of its cells whose source the kNN recovers (out of fold). */
  sourceRecall: number;
  /** Its share of all cells: the recall a classifier blind to the embedding gets by guessing in proportion. */
  chance: number;
  /** Out-of-fold cell-type accuracy on its cells. */
  labelAccuracy: number;
  /** Whether its cells separate by source more than by cell type. */
  separatesBySource: boolean;
  /** The one-line verdict. */
  verdict: string;
}

/** What `batchEffects` returns. */
export interface BatchEffectsReport {
  sources: SourceEffect[];
  /** `silhouette_score` with sources as clusters. */
  sourceSilhouette: number;
  /** `silhouette_score` with cell types as clusters. */
  labelSilhouette: number;
  /** Out-of-fold kNN accuracy predicting the source. */
  sourceAccuracy: number;
  /** The majority source's share of the cells. */
  sourceChance: number;
  /** Out-of-fold kNN accuracy predicting the cell type. */
  labelAccuracy: number;
  /** The majority cell type's share. */
  labelChance: number;
  k: number;
  folds: number;
  seed: number;
  /** Cells the silhouettes were computed on. */
  silhouetteCells: number;
  cells: number;
}

/**
 * Out-of-fold kNN predictions of `target` (scikit-learn's
 * `cross_val_predict(KNeighborsClassifier(k), X, target, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))`).
 */
export async function outOfFoldKnn(
  x: Matrix,
  target: readonly Label[],
  opts: { k: number; folds: number; seed: number; search?: NeighborSearch; what?: string },
): Promise<Label[]> {
  const what = opts.what ?? "target";
  const splits = stratifiedKFold(target, { folds: opts.folds, shuffle: true, seed: opts.seed });
  const out: Label[] = new Array(x.rows);
  for (const s of splits) {
    if (s.train.length < opts.k) {
      throw new RangeError(
        `batch effects: a fold trains on ${s.train.length} cells, fewer than k=${opts.k} ` +
          `neighbours (${what}); use a smaller k or more cells`,
      );
    }
    const clf = new KNeighborsClassifier(
      takeRows(x, s.train),
      s.train.map((i) => target[i]),
      { search: opts.search },
    );
    const pred = await clf.predict(takeRows(x, s.test), opts.k);
    s.test.forEach((i, j) => (out[i] = pred[j]));
  }
  return out;
}

function pct(v: number): string {
  return `${(100 * v).toFixed(1)}%`;
}

/**
 * The batch-effect report of embeddings `x` with one cell-type label and
 * one source per row (see the module comment).
 */
export async function batchEffects(
  x: Matrix,
  labels: readonly Label[],
  sources: readonly string[],
  opts: BatchEffectsOptions = {},
): Promise<BatchEffectsReport> {
  const n = x.rows;
  if (labels.length !== n || sources.length !== n) {
    throw new RangeError(
      `batchEffects: ${labels.length} labels and ${sources.length} sources for ${n} cells`,
    );
  }
  const sourceIds = uniqueSorted(sources, "batchEffects: sources") as string[];
  if (sourceIds.length < 2) {
    throw new RangeError(
      `batch effects need cells from at least 2 sources; every cell comes from ` +
        `${JSON.stringify(sourceIds[0])}`,
    );
  }
  if (uniqueSorted(labels, "batchEffects: labels").length < 2) {
    throw new RangeError("batch effects need at least 2 cell types to compare the sources with");
  }
  const k = opts.k ?? 20;
  const folds = opts.folds ?? 5;
  const seed = opts.seed ?? 42;
  const idx = silhouetteSample(n, opts.sampleSize ?? 5000, seed);
  const sub = idx.length === n ? x : takeRows(x, idx);
  const [silSource, silLabel] = silhouetteSamplesMany(
    sub,
    [idx.map((i) => sources[i]), idx.map((i) => labels[i])],
    ["sources", "cell types"],
  );
  const predSource = await outOfFoldKnn(x, sources, {
    k,
    folds,
    seed,
    search: opts.search,
    what: "sources",
  });
  const predLabel = await outOfFoldKnn(x, labels, {
    k,
    folds,
    seed,
    search: opts.search,
    what: "cell types",
  });
  const mean = (v: Float64Array) => v.reduce((a, b) => a + b, 0) / v.length;
  const majority = (ls: readonly Label[]) => {
    const c = new Map<Label, number>();
    for (const l of ls) c.set(l, (c.get(l) ?? 0) + 1);
    return Math.max(...c.values()) / ls.length;
  };
  let okSource = 0, okLabel = 0;
  for (let i = 0; i < n; i++) {
    if (predSource[i] === sources[i]) okSource++;
    if (predLabel[i] === labels[i]) okLabel++;
  }
  const rows: SourceEffect[] = sourceIds.map((src) => {
    let cells = 0, hit = 0, labelHit = 0;
    for (let i = 0; i < n; i++) {
      if (sources[i] !== src) continue;
      cells++;
      if (predSource[i] === src) hit++;
      if (predLabel[i] === labels[i]) labelHit++;
    }
    let ss = 0, sl = 0, m = 0;
    idx.forEach((r, j) => {
      if (sources[r] !== src) return;
      ss += silSource[j];
      sl += silLabel[j];
      m++;
    });
    const sourceSilhouette = m ? ss / m : NaN;
    const labelSilhouette = m ? sl / m : NaN;
    const row = {
      source: src,
      cells,
      sourceSilhouette,
      labelSilhouette,
      sourceRecall: hit / cells,
      chance: cells / n,
      labelAccuracy: labelHit / cells,
      separatesBySource: m > 0 && sourceSilhouette > labelSilhouette,
    };
    return { ...row, verdict: verdictLine(row, k) };
  });
  return {
    sources: rows,
    sourceSilhouette: mean(silSource),
    labelSilhouette: mean(silLabel),
    sourceAccuracy: okSource / n,
    sourceChance: majority(sources),
    labelAccuracy: okLabel / n,
    labelChance: majority(labels),
    k,
    folds,
    seed,
    silhouetteCells: idx.length,
    cells: n,
  };
}

function verdictLine(r: Omit<SourceEffect, "verdict">, k: number): string {
  const knn = `${k}-NN recovers the source of ${pct(r.sourceRecall)} of its cells ` +
    `(chance ${pct(r.chance)}), cell type ${pct(r.labelAccuracy)}`;
  if (Number.isNaN(r.sourceSilhouette)) {
    return `${r.source}: no cell in the silhouette sample, no verdict; ${knn}`;
  }
  const sil = `silhouette by source ${r.sourceSilhouette.toFixed(3)} ` +
    `${r.separatesBySource ? ">" : "≤"} by cell type ${r.labelSilhouette.toFixed(3)}`;
  return r.separatesBySource
    ? `${r.source}: embeddings separate by source more than by cell type — a batch effect ` +
      `(${sil}); ${knn}`
    : `${r.source}: embeddings separate by cell type more than by source (${sil}); ${knn}`;
}

/** The report as Markdown: the overall numbers, a per-source table and the verdict lines. */
export function batchEffectsMarkdown(r: BatchEffectsReport, title = "Batch effects"): string {
  const f = (v: number) => (Number.isNaN(v) ? "–" : v.toFixed(3));
  const out = [
    `# ${title}`,
    "",
    `${r.cells} cells from ${r.sources.length} sources; silhouettes on ` +
    `${r.silhouetteCells === r.cells ? "all cells" : `a seeded sample of ${r.silhouetteCells}`}; ` +
    `${r.k}-NN out-of-fold predictions over ${r.folds} stratified folds (seed ${r.seed}).`,
    "",
    "| | Silhouette (source) | Silhouette (cell type) | kNN source accuracy | chance | kNN cell-type accuracy |",
    "|---|---:|---:|---:|---:|---:|",
    `| all | ${f(r.sourceSilhouette)} | ${f(r.labelSilhouette)} | ${pct(r.sourceAccuracy)} | ` +
    `${pct(r.sourceChance)} | ${pct(r.labelAccuracy)} |`,
    ...r.sources.map((s) =>
      `| ${s.source.replace(/\|/g, "\\|")} | ${f(s.sourceSilhouette)} | ${
        f(s.labelSilhouette)
      } | ` +
      `${pct(s.sourceRecall)} | ${pct(s.chance)} | ${pct(s.labelAccuracy)} |`
    ),
    "",
    ...r.sources.map((s) => `- ${s.verdict}`),
    "",
  ];
  return out.join("\n");
}

/**
 * The report for embeddings files (rows concatenated in order), sources from
 * `sourceBy` (eval/cell_groups.ts: the file, or a rule on the cell paths).
 */
export async function batchEffectsOfFiles(
  files: readonly EmbeddingsFile[],
  sourceBy: string | undefined,
  opts: BatchEffectsOptions = {},
): Promise<BatchEffectsReport> {
  const d = files[0].dim;
  for (const f of files) {
    if (f.dim !== d) {
      throw new InputError(`${f.path}: ${f.dim} features per cell, but ${files[0].path} has ${d}`);
    }
  }
  const labels = files.flatMap((f) => requireLabels(f, "batch-effect"));
  const sources = sourcesOf(files, sourceBy);
  const rows = files.reduce((a, f) => a + f.rows, 0);
  const data = new Float32Array(rows * d);
  let at = 0;
  for (const f of files) {
    data.set(f.features, at);
    at += f.features.length;
  }
  return await batchEffects(
    matrix(data, rows, d, files.map((f) => f.path).join(" + ")),
    labels,
    sources,
    opts,
  );
}

/**
 * A saved kNN reference set: the labelled embeddings a kNN classifier votes
 * from (scikit-learn's `KNeighborsClassifier(n_neighbors=k)` semantics,
 * eval/knn.ts), with the out-of-distribution threshold `predict` uses, as a
 * head file (eval/head_file.ts).
 *
 * Out of distribution: a query cell is flagged when its nearest reference
 * cell is farther than the reference set's own `quantile` (default 0.99) of
 * nearest-neighbour distances, each reference cell measured to its nearest
 * *other* reference cell (leave one out; numpy's default linear quantile).
 * At most `oodSample` reference cells (default 2000, a seeded numpy
 * permutation) are measured, against the whole set, which bounds the cost
 * at sample × n × dim.
 *
 * File contents (kind `knn`): `label_codes` I32 [n] (indices into
 * `classes`); the reference features either copied (`reference` = `copy`,
 * tensor `features` F32 [n, dim]) or pointed to (`reference` = `pointer`:
 * `reference.file` — relative to the head file's folder unless absolute —
 * `reference.sha256`, `reference.rows_total`, and tensor `rows` I32 [n] of
 * the rows used, absent when all are). Metadata `k`, `ood.distance_threshold`,
 * `ood.quantile`, `ood.sample`.
 */
import { dirname, isAbsolute, join, relative } from "node:path";
import { readEmbeddings } from "../data/embeddings_file.ts";
import { sha256File } from "../data/hash.ts";
import {
  type EmbeddingModel,
  type HeadCommon,
  HeadFileError,
  metaNumber,
  openHeadFile,
  readF32,
  readI32,
  writeHeadFile,
} from "./head_file.ts";
import { KNeighborsClassifier, type Neighbors, type NeighborSearch } from "./knn.ts";
import { screenedNeighborSearch } from "./knn_screened.ts";
import { encodeLabels, type Label } from "./labels.ts";
import { type Matrix, matrix } from "./matrix.ts";
import { NumpyRandomState } from "./numpy_random.ts";

/** Options of `KnnIndex.build`. */
export interface KnnIndexOptions {
  /** Neighbours that vote. Default 20 (the paper's 20-NN). */
  k?: number;
  /**
   * The neighbour search. Default: the screened CPU search (eval/knn_screened.ts, the float64
   * search's exact result); threaded or GPU searches plug in.
   */
  search?: NeighborSearch;
  /** Quantile of the reference's own nearest-neighbour distances used as OOD threshold. Default 0.99. */
  oodQuantile?: number;
  /** Reference cells measured for the threshold. Default 2000. */
  oodSample?: number;
  /** Seed of that sample. Default 0. */
  seed?: number;
  trainedOn?: Record<string, unknown>;
}

/** The OOD threshold and how it was set. */
export interface KnnOod {
  /** Distance to the nearest reference cell above which a cell is flagged. */
  threshold: number;
  quantile: number;
  /** Reference cells it was measured on. */
  sample: number;
}

/** Where a pointer-form reference set lives. */
export interface KnnPointer {
  /** The embeddings file (as given when saving; resolved against the head file's folder). */
  file: string;
  sha256: string;
  /** Rows of the file in the reference set, or null for all. */
  rows: number[] | null;
}

/** What `KnnIndex.query` returns. */
export interface KnnQuery {
  classes: Label[];
  /** Majority vote per row (ties to the smallest class index, as scikit-learn). */
  labels: Label[];
  codes: Int32Array;
  /** [rows, classes] share of the k neighbours in each class (`predict_proba`). */
  proba: Float64Array;
  /** The vote's share per row. */
  confidence: Float64Array;
  /** Distance to the nearest reference cell. */
  nearestDistance: Float64Array;
  /** Row of the nearest reference cell. */
  nearestIndex: Int32Array;
}

/** numpy's default (linear) quantile of `values`. */
export function quantile(values: ArrayLike<number>, q: number): number {
  if (values.length === 0) throw new RangeError("quantile: no values");
  if (!(q >= 0 && q <= 1)) throw new RangeError(`quantile: q=${q} must be in [0, 1]`);
  const s = Float64Array.from(values).sort();
  const pos = q * (s.length - 1);
  const lo = Math.floor(pos);
  const hi = Math.min(lo + 1, s.length - 1);
  return s[lo] + (pos - lo) * (s[hi] - s[lo]);
}

/** A labelled reference set with a kNN vote and an OOD distance threshold. */
export class KnnIndex {
  readonly reference: Matrix;
  readonly labels: Label[];
  readonly classes: Label[];
  readonly k: number;
  readonly embedding: EmbeddingModel;
  readonly ood: KnnOod;
  readonly trainedOn: Record<string, unknown>;
  /** Set when the index was loaded from a pointer-form file. */
  readonly pointer: KnnPointer | null;
  #clf: KNeighborsClassifier;

  private constructor(init: {
    reference: Matrix;
    labels: Label[];
    k: number;
    embedding: EmbeddingModel;
    ood: KnnOod;
    trainedOn: Record<string, unknown>;
    pointer: KnnPointer | null;
    search?: NeighborSearch;
  }) {
    const { reference, labels, k } = init;
    if (labels.length !== reference.rows) {
      throw new RangeError(`KnnIndex: ${labels.length} labels for ${reference.rows} rows`);
    }
    if (!Number.isInteger(k) || k < 1 || k > reference.rows) {
      throw new RangeError(
        `KnnIndex: k=${k} must be an integer in [1, ${reference.rows}] (the reference cells)`,
      );
    }
    if (init.embedding.dim !== reference.cols) {
      throw new RangeError(
        `KnnIndex: the reference is ${reference.cols}-d but the embedding model ` +
          `${init.embedding.dim}-d`,
      );
    }
    this.reference = reference;
    this.labels = labels;
    this.#clf = new KNeighborsClassifier(reference, labels, {
      search: init.search ?? screenedNeighborSearch,
    });
    this.classes = this.#clf.classes;
    this.k = k;
    this.embedding = init.embedding;
    this.ood = init.ood;
    this.trainedOn = init.trainedOn;
    this.pointer = init.pointer;
  }

  /**
   * Builds the index on `reference` (one label per row) and measures its
   * OOD threshold (module comment).
   */
  static async build(
    reference: Matrix,
    labels: readonly Label[],
    embedding: EmbeddingModel,
    opts: KnnIndexOptions = {},
  ): Promise<KnnIndex> {
    const q = opts.oodQuantile ?? 0.99;
    if (!(q > 0 && q <= 1)) throw new RangeError(`KnnIndex: oodQuantile ${q} must be in (0, 1]`);
    if (reference.rows < 2) {
      throw new RangeError(`KnnIndex: ${reference.rows} reference cell; need at least 2`);
    }
    const n = reference.rows;
    const m = Math.min(n, opts.oodSample ?? 2000);
    const picks = m === n
      ? Array.from({ length: n }, (_, i) => i)
      : [...new NumpyRandomState(opts.seed ?? 0).permutation(n).slice(0, m)].sort((a, b) => a - b);
    const d = reference.cols;
    const sample = new Float32Array(m * d);
    picks.forEach((r, i) => {
      for (let j = 0; j < d; j++) sample[i * d + j] = reference.data[r * d + j];
    });
    const clf = new KNeighborsClassifier(reference, labels, {
      search: opts.search ?? screenedNeighborSearch,
    });
    const [nb] = await clf.kneighbors(matrix(sample, m, d, "reference sample"), [2]);
    const own = Float64Array.from(picks, (r, i) => nearestOther(nb, i, r));
    return new KnnIndex({
      reference,
      labels: [...labels],
      k: opts.k ?? 20,
      embedding,
      ood: { threshold: quantile(own, q), quantile: q, sample: m },
      trainedOn: opts.trainedOn ?? {},
      pointer: null,
      search: opts.search,
    });
  }

  /** Uses `search` for later queries (e.g. the GPU search). */
  withSearch(search: NeighborSearch | undefined): this {
    this.#clf = new KNeighborsClassifier(this.reference, this.labels, {
      search: search ?? screenedNeighborSearch,
    });
    return this;
  }

  /** Votes of the k nearest reference cells and the nearest distance, per row of `x`. */
  async query(x: Matrix): Promise<KnnQuery> {
    if (x.cols !== this.reference.cols) {
      throw new RangeError(
        `KnnIndex: the features have ${x.cols} columns but the reference set is ` +
          `${this.reference.cols}-d`,
      );
    }
    const clf = this.#clf;
    const [nb] = await clf.kneighbors(x, [this.k]);
    const proba = clf.voteProba(nb);
    const codes = clf.vote(nb);
    const c = this.classes.length;
    const k = this.k;
    return {
      classes: this.classes,
      labels: Array.from(codes, (i) => this.classes[i]),
      codes,
      proba,
      confidence: Float64Array.from(codes, (j, i) => proba[i * c + j]),
      nearestDistance: Float64Array.from({ length: x.rows }, (_, i) => nb.distances[i * k]),
      nearestIndex: Int32Array.from({ length: x.rows }, (_, i) => nb.indices[i * k]),
    };
  }

  /**
   * Writes the index as a head file. With `pointer`, the features are not
   * copied: the file names `pointer.file` (an embeddings file holding the
   * reference in rows `pointer.rows`, all rows when omitted) and its hash.
   */
  async save(path: string, opts: { pointer?: { file: string; rows?: number[] } } = {}): Promise<
    void
  > {
    const n = this.reference.rows;
    const { codes } = encodeLabels(this.labels, this.classes, "KnnIndex: labels");
    const tensors: Record<
      string,
      { dtype: "f32" | "i32"; shape: number[]; data: ArrayBufferView }
    > = { label_codes: { dtype: "i32", shape: [n], data: codes } };
    const meta: Record<string, string> = {
      k: String(this.k),
      "ood.distance_threshold": String(this.ood.threshold),
      "ood.quantile": String(this.ood.quantile),
      "ood.sample": String(this.ood.sample),
    };
    if (opts.pointer) {
      const p = opts.pointer;
      const emb = await readEmbeddings(p.file);
      const rows = p.rows ?? null;
      const count = rows ? rows.length : emb.rows;
      if (count !== n || emb.dim !== this.reference.cols) {
        throw new RangeError(
          `KnnIndex.save: ${p.file} gives ${count} rows × ${emb.dim}, the reference is ` +
            `${n} × ${this.reference.cols}`,
        );
      }
      meta.reference = "pointer";
      // Stored relative to the head file's folder, so the two can move together.
      meta["reference.file"] = relative(dirname(path), p.file);
      meta["reference.sha256"] = await sha256File(p.file);
      meta["reference.rows_total"] = String(emb.rows);
      if (rows) tensors.rows = { dtype: "i32", shape: [n], data: Int32Array.from(rows) };
    } else {
      meta.reference = "copy";
      const data = this.reference.data instanceof Float32Array
        ? this.reference.data
        : Float32Array.from(this.reference.data);
      tensors.features = { dtype: "f32", shape: [n, this.reference.cols], data };
    }
    const common: HeadCommon = {
      embedding: this.embedding,
      classes: this.classes,
      trainedOn: this.trainedOn,
    };
    await writeHeadFile(path, "knn", common, tensors, meta);
  }

  /** Reads a kNN head file (and, for the pointer form, the embeddings file it names). */
  static async load(path: string, opts: { search?: NeighborSearch } = {}): Promise<KnnIndex> {
    const h = await openHeadFile(path, "knn");
    try {
      const d = h.embedding.dim;
      const k = metaNumber(path, h.meta, "k", (v) => Number.isInteger(v) && v >= 1);
      const codesT = h.file.tensors.get("label_codes");
      const n = codesT?.shape[0] ?? 0;
      const codes = await readI32(h, "label_codes", [n]);
      const c = h.classes.length;
      const bad = codes.findIndex((v) => v < 0 || v >= c);
      if (bad >= 0) {
        throw new HeadFileError(path, "label_codes", `row ${bad} has class ${codes[bad]} of ${c}`);
      }
      const labels = Array.from(codes, (v) => h.classes[v]);
      let reference: Matrix;
      let pointer: KnnPointer | null = null;
      const form = h.meta.reference;
      if (form === "copy") {
        reference = matrix(await readF32(h, "features", [n, d]), n, d, `${path}: features`);
      } else if (form === "pointer") {
        const rel = h.meta["reference.file"];
        if (!rel) throw new HeadFileError(path, "reference.file", "missing");
        const file = isAbsolute(rel) ? rel : join(dirname(path), rel);
        const sha = h.meta["reference.sha256"];
        let actual: string;
        try {
          actual = await sha256File(file);
        } catch (e) {
          throw new HeadFileError(
            path,
            "reference.file",
            `the reference features ${file} cannot be read (${(e as Error).message})`,
            "keep the embeddings file next to the head, or save the head with its features copied",
          );
        }
        if (actual !== sha) {
          throw new HeadFileError(
            path,
            "reference.sha256",
            `${file} has changed since the head was saved (sha256 ${actual.slice(0, 12)}…, ` +
              `saved ${String(sha).slice(0, 12)}…)`,
            "save the head again from the current features",
          );
        }
        const emb = await readEmbeddings(file);
        const rowsT = h.file.tensors.get("rows");
        const rows = rowsT ? [...await readI32(h, "rows", [n])] : null;
        if (emb.dim !== d || (rows ? rows.some((r) => r < 0 || r >= emb.rows) : emb.rows !== n)) {
          throw new HeadFileError(
            path,
            "reference.file",
            `${file} does not hold the reference rows`,
          );
        }
        const data = new Float32Array(n * d);
        for (let i = 0; i < n; i++) {
          const r = rows ? rows[i] : i;
          data.set(emb.features.subarray(r * d, (r + 1) * d), i * d);
        }
        reference = matrix(data, n, d, `${file}: reference features`);
        pointer = { file, sha256: actual, rows };
      } else {
        throw new HeadFileError(path, "reference", `'${form}' is not copy|pointer`);
      }
      const threshold = metaNumber(path, h.meta, "ood.distance_threshold", (v) => v >= 0);
      const quantileQ = metaNumber(path, h.meta, "ood.quantile", (v) => v > 0 && v <= 1);
      const sample = metaNumber(path, h.meta, "ood.sample", (v) => Number.isInteger(v) && v >= 1);
      try {
        return new KnnIndex({
          reference,
          labels,
          k,
          embedding: h.embedding,
          ood: { threshold, quantile: quantileQ, sample },
          trainedOn: h.trainedOn ?? {},
          pointer,
          search: opts.search,
        });
      } catch (e) {
        throw new HeadFileError(path, "reference", (e as Error).message);
      }
    } finally {
      h.file.close();
    }
  }
}

/** Distance from sample query `i` (reference row `self`) to its nearest other reference row. */
function nearestOther(nb: Neighbors, i: number, self: number): number {
  for (let r = 0; r < nb.k; r++) {
    if (nb.indices[i * nb.k + r] !== self) return nb.distances[i * nb.k + r];
  }
  return nb.distances[i * nb.k + nb.k - 1];
}

/**
 * The heads an evaluation trains, kept (`eval --save DIR`) and used again on
 * new labelled data without retraining (`eval --load DIR`).
 *
 * `--save DIR` writes, per train/test split (one, or one per fold with
 * `.foldN` before the extension):
 * - `probe.safetensors`: the linear probe (eval/probe.ts);
 * - `knn.safetensors`: the kNN reference set, the split's training cells
 *   with their labels, k = 20 (eval/knn_index.ts);
 * - `mil_multicolumn.safetensors`, `mil_gated.safetensors`: the MIL heads
 *   (eval/mil_head.ts);
 * - `test_predictions.csv`: each test cell's path, label and every
 *   protocol's prediction (what `predict` with the saved heads reproduces);
 * - `heads.json`: the index (file, kind, protocol, fold, test metrics).
 * Every head records the embedding model of the training file.
 *
 * `--load DIR` applies every head in DIR to a labelled embeddings file and
 * reports the paper's metrics, with mean ± std over fold heads. A file that
 * carries a split (ingest's) is scored on its test rows only; every head
 * records the split it was trained on (origin and membership hash), and a
 * file whose split differs, or the very file the heads were trained on
 * without a split, is flagged: its rows may be cells the heads learnt.
 */
import { basename, join } from "node:path";
import { csvField, readEmbeddings, requireLabels } from "../data/embeddings_file.ts";
import { InputError } from "../data/errors.ts";
import { writeAtomically } from "../data/file.ts";
import type { ParamArena } from "../graph/arena.ts";
import {
  checkSameEmbedding,
  describeEmbeddingModel,
  embeddingJson,
  type EmbeddingModel,
  embeddingModelFromMeta,
  headKindOf,
} from "./head_file.ts";
import { KNeighborsClassifier, type NeighborSearch } from "./knn.ts";
import { KnnIndex } from "./knn_index.ts";
import type { Label } from "./labels.ts";
import type { LogisticRegression } from "./logreg.ts";
import { type Matrix, matrix } from "./matrix.ts";
import { type ClassificationMetrics, classificationMetrics } from "./metrics.ts";
import { MilHead } from "./mil_head.ts";
import { type MilHeadKind, type MilHeadShape, milProtocolName, patientBags } from "./mil.ts";
import { Probe } from "./probe.ts";
import { type EvalReport, type ReportRow, reportRow } from "./report.ts";
import { carriedSplit, describeSplit, rowIds, shortHash, splitRecord } from "./split_record.ts";

/** One written head, as heads.json lists it. */
export interface SavedHeadEntry {
  file: string;
  kind: "probe" | "knn" | "mil";
  protocol: string;
  fold: number | null;
}

/** Collects the heads of an evaluation and writes them under one folder. */
export class HeadSaver {
  readonly dir: string;
  readonly embedding: EmbeddingModel;
  readonly #trainedOn: Record<string, unknown>;
  readonly #folded: boolean;
  readonly #search: NeighborSearch | undefined;
  readonly #entries: SavedHeadEntry[] = [];
  readonly #predictions = new Map<
    string,
    { fold: number | null; path: string; label: string; byProtocol: Map<string, string> }
  >();
  readonly #protocols = new Set<string>();

  /**
   * `folded`: several splits (file names get `.foldN`); `search`: the
   * neighbour search for the kNN reference's OOD threshold.
   */
  constructor(
    dir: string,
    embedding: EmbeddingModel,
    trainedOn: Record<string, unknown>,
    opts: { folded?: boolean; search?: NeighborSearch } = {},
  ) {
    this.dir = dir;
    this.embedding = embedding;
    this.#trainedOn = trainedOn;
    this.#folded = Boolean(opts.folded);
    this.#search = opts.search;
  }

  /** Creates the folder (before any training, so a bad path fails first). */
  async open(): Promise<void> {
    await Deno.mkdir(this.dir, { recursive: true });
  }

  #file(stem: string, fold: number | null): string {
    return this.#folded && fold !== null
      ? `${stem}.fold${fold + 1}.safetensors`
      : `${stem}.safetensors`;
  }

  #provenance(fold: number | null): Record<string, unknown> {
    return fold === null ? this.#trainedOn : { ...this.#trainedOn, fold: fold + 1 };
  }

  /** Saves a fitted probe. */
  async probe(fold: number | null, model: LogisticRegression): Promise<void> {
    const file = this.#file("probe", fold);
    await Probe.fromModel(model, this.embedding, { trainedOn: this.#provenance(fold) })
      .save(join(this.dir, file));
    this.#entries.push({ file, kind: "probe", protocol: "linear probe", fold });
  }

  /** Saves the kNN reference set of a split (its training cells); `search` sets its OOD threshold. */
  async knn(
    fold: number | null,
    train: Matrix,
    labels: Label[],
    search?: NeighborSearch,
  ): Promise<void> {
    const file = this.#file("knn", fold);
    const index = await KnnIndex.build(train, labels, this.embedding, {
      k: Math.min(20, train.rows),
      search: search ?? this.#search,
      trainedOn: this.#provenance(fold),
    });
    await index.save(join(this.dir, file));
    this.#entries.push({ file, kind: "knn", protocol: `${index.k}-NN`, fold });
  }

  /** Saves a trained MIL head (reads its weights off the GPU). */
  async mil(
    fold: number | null,
    kind: MilHeadKind,
    arena: ParamArena,
    shape: MilHeadShape,
    classes: string[],
    training: Record<string, unknown>,
  ): Promise<void> {
    const file = this.#file(`mil_${kind}`, fold);
    const head = await MilHead.fromArena(arena, shape, classes, this.embedding, {
      trainedOn: this.#provenance(fold),
      training,
    });
    await head.save(join(this.dir, file));
    this.#entries.push({ file, kind: "mil", protocol: milProtocolName(kind), fold });
  }

  /** Records one protocol's predictions of a split's test cells. */
  testPredictions(
    fold: number | null,
    protocol: string,
    paths: readonly string[],
    truth: readonly string[],
    predicted: readonly Label[],
  ): void {
    this.#protocols.add(protocol);
    paths.forEach((p, i) => {
      const key = `${fold ?? ""}\u0000${p}\u0000${i}`;
      const row = this.#predictions.get(key) ??
        { fold, path: p, label: truth[i], byProtocol: new Map<string, string>() };
      row.byProtocol.set(protocol, String(predicted[i]));
      this.#predictions.set(key, row);
    });
  }

  /** Writes heads.json and test_predictions.csv; returns the heads written. */
  async finish(): Promise<SavedHeadEntry[]> {
    const protocols = [...this.#protocols];
    const lines = [
      ["fold", "path", "label", ...protocols].map(csvField).join(","),
      ...[...this.#predictions.values()].map((r) =>
        [
          r.fold === null ? "" : String(r.fold + 1),
          csvField(r.path),
          csvField(r.label),
          ...protocols.map((p) => csvField(r.byProtocol.get(p) ?? "")),
        ].join(",")
      ),
    ];
    const enc = new TextEncoder();
    if (this.#predictions.size) {
      await writeAtomically(
        join(this.dir, "test_predictions.csv"),
        (o) => o.write(enc.encode(lines.join("\n") + "\n")),
      );
    }
    const index = {
      embedding: embeddingJson(this.embedding),
      trained_on: this.#trainedOn,
      heads: this.#entries,
    };
    await writeAtomically(
      join(this.dir, "heads.json"),
      (o) => o.write(enc.encode(JSON.stringify(index, null, 2) + "\n")),
    );
    return this.#entries;
  }
}

/** Options of `evaluateSavedHeads`. */
export interface LoadEvalOptions {
  /** A folder of heads (eval --save) or one head file. */
  heads: string;
  /** Labelled embeddings to score them on. */
  test: string;
  method?: string;
  title?: string;
  search?: NeighborSearch;
  log?: (line: string) => void;
}

/**
 * The head files `flag` names by `path`: the file itself, or every
 * `*.safetensors` in the folder `eval --save` wrote, sorted.
 */
export async function headFilesAt(path: string, flag: string): Promise<string[]> {
  let st: Deno.FileInfo;
  try {
    st = await Deno.stat(path);
  } catch {
    throw new InputError(
      `${flag} ${path} does not exist; pass a head file or the folder eval --save wrote`,
    );
  }
  if (!st.isDirectory) return [path];
  const out: string[] = [];
  for await (const e of Deno.readDir(path)) {
    if (e.isFile && e.name.endsWith(".safetensors")) out.push(join(path, e.name));
  }
  if (!out.length) {
    throw new InputError(`${flag} ${path} holds no head files (*.safetensors from eval --save)`);
  }
  return out.sort();
}

/**
 * Scores every saved head on a labelled embeddings file (no training): the
 * probe, the kNN reference (1-NN and k-NN), the MIL heads on the file's
 * patients. Heads of other embeddings are refused (HeadMismatchError).
 */
export async function evaluateSavedHeads(opts: LoadEvalOptions): Promise<EvalReport> {
  const log = opts.log ?? (() => {});
  const emb = await readEmbeddings(opts.test);
  requireLabels(emb, "saved-head");
  // A file that carries a split is scored on its test rows: the others may be what heads learnt.
  const carried = emb.splits ? carriedSplit(emb.splits) : null;
  const split = carried
    ? await splitRecord(
      emb.meta["bloom.split"] ?? `the per-row split of ${opts.test}`,
      rowIds(emb),
      emb.splits!,
    )
    : await splitRecord(
      `every row of ${opts.test} (it carries no split)`,
      rowIds(emb),
      emb.paths.map(() => "test"),
    );
  const rowsUsed = carried ? carried.test : [...emb.paths.keys()];
  log(`scoring ${rowsUsed.length} cells; split: ${describeSplit(split)}`);
  const d0 = emb.dim;
  const feats = new Float32Array(rowsUsed.length * d0);
  rowsUsed.forEach((r, i) => feats.set(emb.features.subarray(r * d0, (r + 1) * d0), i * d0));
  const labels = rowsUsed.map((r) => emb.labels![r]);
  const patients = emb.patients ? rowsUsed.map((r) => emb.patients![r]) : null;
  const x = matrix(feats, rowsUsed.length, d0, opts.test);
  const warnings = new Set<string>();
  const checkSplit = (path: string, trainedOn: Record<string, unknown>) => {
    const sha = trainedOn.split_sha256;
    const file = trainedOn.train;
    if (typeof sha === "string" && carried && sha !== split.sha256) {
      warnings.add(
        `${basename(path)} was trained on another split (${trainedOn.split_origin}; sha256 ` +
          `${shortHash(sha)}) than ${opts.test} carries (sha256 ${shortHash(split.sha256)}): ` +
          "its test rows may include cells the heads were trained on",
      );
    } else if (!carried && typeof file === "string" && basename(file) === basename(opts.test)) {
      warnings.add(
        `${basename(path)} was trained on rows of ${file} (${
          trainedOn.split_origin ?? "a split"
        }), ` +
          `and ${opts.test} carries no split to leave them out: every row is scored`,
      );
    }
  };
  const model = embeddingModelFromMeta(emb.meta, emb.dim);
  const method = opts.method ??
    (emb.meta.weights ? basename(emb.meta.weights) : basename(opts.test));
  const runs = new Map<string, ClassificationMetrics[]>();
  const add = (protocol: string, m: ClassificationMetrics) =>
    runs.set(protocol, [...(runs.get(protocol) ?? []), m]);
  const files = await headFilesAt(opts.heads, "--load");
  for (const path of files) {
    const kind = await headKindOf(path);
    if (kind === "probe") {
      const p = await Probe.load(path);
      checkSameEmbedding(path, p.embedding, opts.test, model);
      checkSplit(path, p.trainedOn);
      log(`${basename(path)}: linear probe on ${x.rows} cells`);
      add("linear probe", classificationMetrics(labels, p.predict(x).labels.map(String)));
    } else if (kind === "knn") {
      const k = await KnnIndex.load(path);
      checkSameEmbedding(path, k.embedding, opts.test, model);
      checkSplit(path, k.trainedOn);
      log(`${basename(path)}: kNN (k = 1, ${k.k}) on ${x.rows} cells`);
      const clf = new KNeighborsClassifier(k.reference, k.labels, { search: opts.search });
      const ks = k.k === 1 ? [1] : [1, k.k];
      const preds = await clf.predictMany(x, ks);
      ks.forEach((kk, i) => add(`${kk}-NN`, classificationMetrics(labels, preds[i].map(String))));
    } else {
      const m = await MilHead.load(path);
      checkSameEmbedding(path, m.embedding, opts.test, model);
      checkSplit(path, m.trainedOn);
      if (!patients) {
        throw new InputError(
          `${opts.test} has no patients, and the MIL head ${path} classifies patients; ` +
            "embed a patient-level layout, or leave the MIL heads out of --load",
        );
      }
      const bags = patientBags(labels, patients, opts.test);
      log(`${basename(path)}: ${milProtocolName(m.shape.kind)} on ${bags.length} patients`);
      const d = emb.dim;
      const truth: string[] = [], pred: string[] = [];
      for (const bag of bags) {
        const h = new Float32Array(bag.rows.length * d);
        bag.rows.forEach((r, i) => h.set(feats.subarray(r * d, (r + 1) * d), i * d));
        truth.push(bag.label);
        pred.push(String(m.predictBag(h, bag.rows.length).label));
      }
      add(milProtocolName(m.shape.kind), classificationMetrics(truth, pred));
    }
  }
  const classes = [...new Set(emb.labels!)];
  const rows: ReportRow[] = [...runs].map(([protocol, list]) =>
    reportRow(method, protocol, list, 0, classes)
  );
  for (const w of warnings) log(`warning: ${w}`);
  const warning = [...warnings].join("; ");
  return {
    title: opts.title ?? `saved heads ${basename(opts.heads)} → ${basename(opts.test)}`,
    rows,
    meta: {
      heads: opts.heads,
      test: opts.test,
      "head.files": files.map((f) => basename(f)).join(", "),
      embedding: describeEmbeddingModel(model),
      ...(warning ? { "split.warning": warning } : {}),
    },
    split,
  };
}

/**
 * An evaluation run: embeddings files written by `embed` → the paper's
 * protocols (docs/evaluation.md) → a report of per-protocol metrics. What
 * `deno task eval` runs; usable from code as `runEval(options)`.
 *
 * Splits: `test` evaluates train → test; `folds` cross-validates the one file
 * (stratified k-fold, shuffled with `seed`); neither uses the split the file
 * carries (each row's ingest split, which `embed` writes: test rows are
 * ingest's test set), and only a file without one (or `resplit`) gets eval's
 * own 80/20 stratified split with `seed`. Whenever the file carries patients,
 * eval's own splits and folds keep each patient on one side (patient-level
 * data), for every protocol. The report records the split's origin and
 * membership hash (eval/split_record.ts).
 *
 * Protocols: `knn` (1-NN and 20-NN), `linear` (the probe), `mil` (both MIL
 * heads, patient-level; needs patients and a GPU). Default: knn and linear,
 * plus mil when the files carry patients.
 *
 * Devices: MIL always trains on the GPU. kNN and the probe run on the CPU
 * (float64, `threads` workers) unless `device` is "gpu", or "auto" with a
 * problem above ~2e9 kNN multiply-adds or ~2e7 probe N·M·c on a hardware
 * adapter (a software adapter such as llvmpipe runs on the same CPU cores as
 * the CPU path, in f32, so auto never picks it).
 *
 * Bad input (unreadable or unsuitable files, a bad combination of options)
 * throws an InputError that names the file or option and the fix.
 */
import { basename, extname } from "node:path";
import { InputError } from "../data/errors.ts";
import {
  type EmbeddingsFile,
  EmbeddingsFileError,
  readEmbeddings,
  requireLabels,
  requirePatients,
} from "../data/embeddings_file.ts";
import { GPU_KNN_WORK, gpuNeighborSearch } from "./gpu_knn.ts";
import { GpuLinearProbe } from "./gpu_probe.ts";
import { KNeighborsClassifier } from "./knn.ts";
import { uniqueSorted } from "./labels.ts";
import { type Matrix, matrix } from "./matrix.ts";
import { type ClassificationMetrics, classificationMetrics } from "./metrics.ts";
import { crossValidateMil, evaluateMil, type MilData, type MilEvalOptions } from "./mil.ts";
import { evaluateEmbeddings } from "./protocols.ts";
import {
  type EvalReport,
  markdownTable,
  perClassTable,
  type ReportRow,
  reportRow,
} from "./report.ts";
import { EvalThreads, threadedNeighborSearch } from "./threads.ts";
import { embeddingModelFromMeta } from "./head_file.ts";
import type { Label } from "./labels.ts";
import type { LogisticRegression } from "./logreg.ts";
import { HeadSaver } from "./saved_heads.ts";
import { type Split, stratifiedKFold, trainTestSplit } from "./split.ts";
import {
  carriedSplit,
  describeSplit,
  rowIds,
  type SplitRecord,
  splitRecord,
  stratifiedOrigin,
  trainTestRecord,
} from "./split_record.ts";
import { getGpu, type Gpu } from "../kernels/runtime.ts";

/** The protocols `runEval` knows. */
export const PROTOCOLS = ["knn", "linear", "mil"] as const;
/** One protocol name. */
export type ProtocolName = typeof PROTOCOLS[number];

/** Where kNN and the probe run (`auto`: a hardware GPU for large problems). */
export const DEVICES = ["cpu", "gpu", "auto"] as const;
/** One of `DEVICES`. */
export type Device = typeof DEVICES[number];

/** Above this size `device: "auto"` runs the probe on a hardware GPU (kNN: GPU_KNN_WORK). */
const GPU_PROBE_WORK = 2e7; // N × M × c per objective evaluation

/** What to evaluate and how. */
export interface EvalOptions {
  /** Training embeddings file (safetensors, npy + sidecar, or csv). */
  train: string;
  /** Test embeddings file; without it: `folds`, or the 80/20 split. */
  test?: string;
  /** Protocols to run; null: knn and linear, plus mil when the files carry patients. */
  protocols: ProtocolName[] | null;
  /** Cross-validate `train` with this many stratified folds (not with `test`). */
  folds?: number;
  /** Ignore the split `train` carries (ingest's) and make eval's own 80/20 split. */
  resplit?: boolean;
  /** Row name in the tables (default: from the file's weights). */
  method?: string;
  /** Table title (default: the file names). */
  title?: string;
  /** CPU worker threads for kNN and the probe. */
  threads: number;
  /** Seed of the split, the folds and MIL training. */
  seed: number;
  device: Device;
  mil: { epochs: number; lr: number; patience: number; valFraction: number };
  /** No progress on stderr. */
  quiet: boolean;
  /** Write every head trained here to this folder (eval/saved_heads.ts). */
  save?: string;
  /** Called with each split's test predictions (figures coloured by prediction). */
  onTestPredictions?: (p: TestPredictions) => void;
}

/** One protocol's predictions of one split's test cells. */
export interface TestPredictions {
  /** Fold index, or null for a single split. */
  fold: number | null;
  protocol: string;
  /** The file the test cells are rows of, and which rows. */
  file: string;
  rows: number[];
  predicted: Label[];
}

/** Throws InputError for options that cannot go together. */
function checkOptions(opts: EvalOptions): void {
  if (opts.folds !== undefined && opts.test !== undefined) {
    throw new InputError(
      "--folds cross-validates the --train file alone; drop --test, or drop --folds to " +
        "evaluate train → test",
    );
  }
  if (opts.resplit && opts.test !== undefined) {
    throw new InputError(
      "--resplit makes eval's own split of the --train file; with --test there is none to " +
        "make: drop one of them",
    );
  }
}

/** One file's data after the checks `eval` needs. */
interface Loaded {
  emb: EmbeddingsFile;
  flag: "--train" | "--test";
}

async function load(path: string, flag: Loaded["flag"]): Promise<Loaded> {
  const emb = await readEmbeddings(path);
  if (emb.rows === 0) {
    throw new EmbeddingsFileError(
      path,
      "features",
      `${flag} holds no embeddings (0 rows)`,
      "embed a non-empty dataset",
    );
  }
  return { emb, flag };
}

/** Rows `idx` of an embeddings file as a matrix, labels and (if any) patients. */
function subset(emb: EmbeddingsFile, idx: readonly number[] | null, what: string) {
  const d = emb.dim;
  if (!idx) {
    return {
      m: matrix(emb.features, emb.rows, d, what),
      labels: emb.labels,
      patients: emb.patients,
    };
  }
  const data = new Float32Array(idx.length * d);
  idx.forEach((r, i) => data.set(emb.features.subarray(r * d, (r + 1) * d), i * d));
  return {
    m: matrix(data, idx.length, d, what),
    labels: emb.labels ? idx.map((r) => emb.labels![r]) : null,
    patients: emb.patients ? idx.map((r) => emb.patients![r]) : null,
  };
}

/** Throws unless the labels hold at least two classes. */
function requireClasses(labels: readonly string[], file: string, flag: string): void {
  const classes = uniqueSorted(labels);
  if (classes.length < 2) {
    throw new EmbeddingsFileError(
      file,
      "labels",
      `every row of ${flag} is labelled ${JSON.stringify(classes[0])}; classification needs at ` +
        "least 2 classes",
      "embed a dataset with several classes",
    );
  }
}

/** The default row name: the checkpoint's file name, else the arch, else the file's. */
function methodName(emb: EmbeddingsFile): string {
  const w = emb.meta.weights;
  if (w) return basename(w, extname(w));
  return emb.meta.arch ?? basename(emb.path, extname(emb.path));
}

/** A logger for progress lines on stderr. */
function logger(quiet: boolean): (line: string) => void {
  const t0 = performance.now();
  return (line) => {
    if (!quiet) console.error(`eval [${((performance.now() - t0) / 1000).toFixed(1)}s] ${line}`);
  };
}

/** Where kNN and the probe run for one problem size. */
interface Devices {
  knn: Gpu | null;
  probe: Gpu | null;
}

async function chooseDevices(
  opts: EvalOptions,
  size: { train: number; test: number; dim: number; classes: number },
  need: { knn: boolean; probe: boolean },
  gpuFor: () => Promise<Gpu>,
): Promise<Devices> {
  if (opts.device === "cpu") return { knn: null, probe: null };
  if (opts.device === "gpu") {
    const gpu = need.knn || need.probe ? await gpuFor() : null;
    return { knn: need.knn ? gpu : null, probe: need.probe ? gpu : null };
  }
  const knnBig = need.knn && size.test * size.train * size.dim >= GPU_KNN_WORK;
  const probeBig = need.probe && size.train * size.dim * size.classes >= GPU_PROBE_WORK;
  if (!knnBig && !probeBig) return { knn: null, probe: null };
  let gpu: Gpu;
  try {
    gpu = await gpuFor();
  } catch {
    return { knn: null, probe: null }; // no adapter: the CPU paths are always there
  }
  // A software adapter runs on the same CPU cores as the CPU paths, without their float64.
  if (gpu.adapter.isFallback) return { knn: null, probe: null };
  return { knn: knnBig ? gpu : null, probe: probeBig ? gpu : null };
}

/** One protocol's outcome on a split: metrics, test predictions, and the probe itself. */
interface ProtocolOutcome {
  protocol: string;
  metrics: ClassificationMetrics;
  predictions: Label[];
  model?: LogisticRegression;
}

/** kNN and/or the probe on one train/test pair: protocol name → metrics. */
async function imageProtocols(
  train: { m: Matrix; labels: string[] },
  test: { m: Matrix; labels: string[] },
  need: { knn: boolean; probe: boolean },
  dev: Devices,
  threads: EvalThreads | undefined,
  log: (s: string) => void,
  probeNotes: string[],
): Promise<ProtocolOutcome[]> {
  const out: ProtocolOutcome[] = [];
  const ks = [1, 20];
  if (need.knn) {
    if (dev.knn) {
      log(`kNN (k = 1, 20) on the GPU: ${train.m.rows} training, ${test.m.rows} test rows`);
      const knn = new KNeighborsClassifier(train.m, train.labels, {
        search: gpuNeighborSearch(dev.knn),
      });
      const preds = await knn.predictMany(test.m, ks);
      ks.forEach((k, i) => {
        out.push({
          protocol: `${k}-NN`,
          metrics: classificationMetrics(test.labels, preds[i]),
          predictions: preds[i],
        });
      });
    } else {
      const r = await evaluateEmbeddings(train.m, train.labels, test.m, test.labels, {
        method: "",
        ks,
        probe: false,
        threads,
        onStage: (s) => log(`${s} on the CPU: ${train.m.rows} training, ${test.m.rows} test rows`),
      });
      out.push(
        ...r.results.map((x) => ({
          protocol: x.protocol,
          metrics: x.metrics,
          predictions: x.predictions,
        })),
      );
    }
  }
  if (need.probe) {
    if (dev.probe) {
      log(`linear probe on the GPU: ${train.m.rows} rows × ${train.m.cols} features`);
      const lr = await GpuLinearProbe.fit(dev.probe, train.m, train.labels);
      probeNotes.push(`${lr.iterations} iterations (${lr.reason})`);
      const pred = lr.predict(test.m);
      out.push({
        protocol: "linear probe",
        metrics: classificationMetrics(test.labels, pred),
        predictions: pred,
        model: lr,
      });
    } else {
      const r = await evaluateEmbeddings(train.m, train.labels, test.m, test.labels, {
        method: "",
        ks: [],
        probe: true,
        threads,
        onStage: (s) => log(`${s} on the CPU: ${train.m.rows} rows × ${train.m.cols} features`),
      });
      const p = r.results[0];
      probeNotes.push(
        `${p.iterations} iterations (${p.converged ? "converged" : "not converged"})`,
      );
      out.push({
        protocol: p.protocol,
        metrics: p.metrics,
        predictions: p.predictions,
        model: p.model,
      });
    }
  }
  return out;
}

/** Runs everything the options ask for and returns the report. */
export async function runEval(opts: EvalOptions): Promise<EvalReport> {
  checkOptions(opts);
  const log = logger(opts.quiet);
  const train = await load(opts.train, "--train");
  log(`read ${opts.train}: ${train.emb.rows} rows × ${train.emb.dim} features`);
  const test = opts.test ? await load(opts.test, "--test") : null;
  if (test) log(`read ${opts.test}: ${test.emb.rows} rows × ${test.emb.dim} features`);
  if (test && test.emb.dim !== train.emb.dim) {
    throw new EmbeddingsFileError(
      opts.test!,
      "features",
      `${test.emb.dim} features per row, but --train ${opts.train} has ${train.emb.dim}`,
      "embed --train and --test with the same model and pooling",
    );
  }
  const hasPatients = train.emb.patients !== null && (!test || test.emb.patients !== null);
  const protocols = opts.protocols ??
    (hasPatients ? ["knn", "linear", "mil"] : ["knn", "linear"]) as ProtocolName[];
  const need = { knn: protocols.includes("knn"), probe: protocols.includes("linear") };
  const mil = protocols.includes("mil");
  const protoLabel = (p: ProtocolName) =>
    p === "knn" ? "kNN" : p === "linear" ? "linear probe" : "MIL";
  for (const f of test ? [train, test] : [train]) {
    for (const p of protocols) requireLabels(f.emb, protoLabel(p));
    if (mil) requirePatients(f.emb, "MIL");
  }
  requireClasses(train.emb.labels!, opts.train, "--train");
  const method = opts.method ?? methodName(train.emb);
  const groups = hasPatients ? train.emb.patients! : undefined;

  const { splits, note: splitNote, record: splitRec } = await chooseSplit(
    opts,
    train,
    test,
    groups,
  );
  log(`split: ${describeSplit(splitRec)}`);
  // Every class of the data, so per-class tables keep those a test set lacks.
  const classes = uniqueSorted([...train.emb.labels!, ...(test?.emb.labels ?? [])]);

  const saver = opts.save
    ? new HeadSaver(
      opts.save,
      embeddingModelFromMeta(train.emb.meta, train.emb.dim),
      {
        train: opts.train,
        test: opts.test ?? null,
        split: splitNote,
        seed: opts.seed,
        split_origin: splitRec.origin,
        split_sha256: splitRec.sha256,
      },
      { folded: (splits?.length ?? 1) > 1 },
    )
    : null;
  await saver?.open();
  let gpu: Gpu | null = null;
  const gpuFor = async () => (gpu ??= await getGpu());
  let threads: EvalThreads | undefined;
  const rows: ReportRow[] = [];
  const probeNotes: string[] = [];
  const milNotes: string[] = [];
  let devices: Devices = { knn: null, probe: null };
  try {
    if (need.knn || need.probe) {
      const trainSizes = splits ? splits.map((s) => s.train.length) : [train.emb.rows];
      if (need.knn && Math.min(...trainSizes) < 20) {
        throw new EmbeddingsFileError(
          opts.train,
          "features",
          `a training set has ${Math.min(...trainSizes)} rows, and 20-NN needs 20 neighbours`,
          "embed more cells, or run --protocol linear",
        );
      }
      const trainRows = splits ? splits[0].train.length : train.emb.rows;
      const testRows = splits ? splits[0].test.length : test!.emb.rows;
      devices = await chooseDevices(
        opts,
        {
          train: trainRows,
          test: testRows,
          dim: train.emb.dim,
          classes: uniqueSorted(train.emb.labels!).length,
        },
        need,
        gpuFor,
      );
      if ((!devices.knn && need.knn) || (!devices.probe && need.probe)) {
        if (opts.threads > 1) threads = EvalThreads.open(opts.threads);
      }
      const perProtocol = new Map<string, ClassificationMetrics[]>();
      // One split's copies at a time: a fold's subsets are as large as the file.
      const runs = splits ?? [null];
      for (const [i, split] of runs.entries()) {
        if (runs.length > 1) log(`fold ${i + 1}/${runs.length}`);
        const tr = subset(train.emb, split?.train ?? null, opts.train);
        const te = split
          ? subset(train.emb, split.test, opts.train)
          : subset(test!.emb, null, opts.test!);
        const got = await imageProtocols(
          { m: tr.m, labels: tr.labels! },
          { m: te.m, labels: te.labels! },
          need,
          devices,
          threads,
          log,
          probeNotes,
        );
        for (const g of got) {
          const list = perProtocol.get(g.protocol) ?? [];
          list.push(g.metrics);
          perProtocol.set(g.protocol, list);
        }
        const fold = runs.length > 1 ? i : null;
        const testFile = split ? opts.train : opts.test!;
        const testRows = split ? split.test : [...te.labels!.keys()];
        for (const g of got) {
          opts.onTestPredictions?.({
            fold,
            protocol: g.protocol,
            file: testFile,
            rows: testRows,
            predicted: g.predictions,
          });
        }
        if (saver) {
          const paths = split ? split.test.map((r) => train.emb.paths[r]) : test!.emb.paths;
          for (const g of got) {
            saver.testPredictions(fold, g.protocol, paths, te.labels!, g.predictions);
            if (g.model) await saver.probe(fold, g.model);
          }
          if (need.knn) {
            const search = threads
              ? threadedNeighborSearch(threads, { screened: true })
              : undefined;
            await saver.knn(fold, tr.m, tr.labels!, search);
          }
        }
      }
      for (const [protocol, runs] of perProtocol) {
        rows.push(reportRow(method, protocol, runs, 0, classes));
      }
    }
    if (mil) {
      rows.push(
        ...await runMil(opts, train, test, splits, method, await gpuFor(), log, milNotes, saver),
      );
    }
    if (saver) {
      const saved = await saver.finish();
      log(`saved ${saved.length} heads in ${opts.save}: ${saved.map((h) => h.file).join(", ")}`);
    }
  } finally {
    threads?.close();
  }
  const meta: Record<string, string | number | boolean> = {
    train: opts.train,
    split: splitNote,
    seed: opts.seed,
    dim: train.emb.dim,
    classes: uniqueSorted(train.emb.labels!).join(", "),
  };
  if (opts.test) meta.test = opts.test;
  for (const k of ["arch", "weights", "pool", "bloom.version"]) {
    if (train.emb.meta[k]) meta[k] = train.emb.meta[k];
  }
  if (need.knn) meta["knn.device"] = devices.knn ? "gpu" : "cpu";
  if (need.probe) {
    meta["probe.device"] = devices.probe ? "gpu" : "cpu";
    meta["probe.solver"] = probeNotes.join("; ");
  }
  if (mil) {
    meta["mil.epochs"] = opts.mil.epochs;
    meta["mil.lr"] = opts.mil.lr;
    meta["mil.patience"] = opts.mil.patience;
    meta["mil.valFraction"] = opts.mil.valFraction;
    meta["mil.training"] = milNotes.join("; ");
  }
  const title = opts.title ??
    (test ? `${basename(opts.train)} → ${basename(opts.test!)}` : basename(opts.train));
  return { title, rows, meta, split: splitRec };
}

/** Which rows train and which test, in words and as a record (origin and membership hash). */
interface SplitChoice {
  /** Row indices of the `--train` file per split; null: `--train` → `--test`. */
  splits: Split[] | null;
  /** One line for the report's metadata. */
  note: string;
  record: SplitRecord;
}

/**
 * The split of an evaluation: `--train` → `--test`; else the split the file
 * carries (ingest's: its test rows are the test set); else, and only then
 * (or with `resplit`, or `folds`), eval's own, which its origin says, with
 * the seed, the fractions and why.
 */
async function chooseSplit(
  opts: EvalOptions,
  train: Loaded,
  test: Loaded | null,
  groups: string[] | undefined,
): Promise<SplitChoice> {
  const emb = train.emb;
  if (test) {
    const record = await splitRecord(
      `files: --train ${opts.train}, --test ${opts.test}`,
      [...rowIds(emb), ...rowIds(test.emb)],
      [...emb.paths.map(() => "train"), ...test.emb.paths.map(() => "test")],
    );
    return { splits: null, note: "train → test", record };
  }
  const carried = emb.splits ? carriedSplit(emb.splits) : null;
  if (carried && opts.folds === undefined && !opts.resplit) {
    const origin = emb.meta["bloom.split"] ?? `the per-row split of ${opts.train}`;
    const record = await splitRecord(origin, rowIds(emb), emb.splits!);
    let note = `the file's own (ingest) split: its train rows → its test rows`;
    if (carried.other.length) {
      note += `; ${carried.other.length} rows of other splits (${
        uniqueSorted(carried.other.map((r) => emb.splits![r])).join(", ")
      }) left out`;
    }
    const whole = emb.meta["bloom.split_sha256"];
    if (whole && whole !== record.sha256) {
      note += `; the file holds part of the ingest (its manifest's split has sha256 ${
        whole.slice(0, 12)
      }: some cells were not embedded)`;
    }
    return { splits: [{ train: carried.train, test: carried.test }], note, record };
  }
  const name = basename(opts.train);
  const why = carried
    ? opts.folds !== undefined ? "--folds: the file's ingest split not used" : "--resplit"
    : emb.splits
    ? `${name} carries no train/test split, only ${uniqueSorted(emb.splits).join(", ")}`
    : `${name} carries no split`;
  let splits: Split[];
  try {
    splits = opts.folds !== undefined
      ? stratifiedKFold(emb.labels!, { folds: opts.folds, shuffle: true, seed: opts.seed, groups })
      : [trainTestSplit(emb.labels!, { trainSize: 0.8, seed: opts.seed, groups })];
  } catch (e) {
    throw new EmbeddingsFileError(
      opts.train,
      "labels",
      `cannot split: ${(e as Error).message}`,
      opts.folds !== undefined
        ? "use fewer --folds, or pass a separate --test file"
        : "pass a separate --test file, or use --folds",
    );
  }
  const byPatient = groups ? ", by patient" : "";
  if (opts.folds !== undefined) {
    const origin = `eval: ${opts.folds}-fold stratified cross-validation, seed ${opts.seed}` +
      `${byPatient} (${why})`;
    // Membership: the fold whose test set holds each row.
    const ids = rowIds(emb);
    const rows = splits.flatMap((s) => s.test);
    const fold = splits.flatMap((s, f) => s.test.map(() => `fold${f + 1}`));
    return {
      splits,
      note: `${opts.folds}-fold stratified cross-validation (seed ${opts.seed})${byPatient}`,
      record: await splitRecord(origin, rows.map((r) => ids[r]), fold),
    };
  }
  const origin = `eval: ${stratifiedOrigin(0.8, opts.seed, Boolean(groups))} (${why})`;
  return {
    splits,
    note: `80/20 stratified split (seed ${opts.seed})${byPatient}`,
    record: await trainTestRecord(origin, rowIds(emb), splits[0]),
  };
}

async function runMil(
  opts: EvalOptions,
  train: Loaded,
  test: Loaded | null,
  splits: Split[] | null,
  method: string,
  gpu: Gpu,
  log: (s: string) => void,
  notes: string[],
  saver: HeadSaver | null,
): Promise<ReportRow[]> {
  let lastLine = performance.now();
  const milOpts: MilEvalOptions = {
    method,
    epochs: opts.mil.epochs,
    lr: opts.mil.lr,
    patience: opts.mil.patience,
    valFraction: opts.mil.valFraction,
    seed: opts.seed,
    onStage: (s) => log(s),
    onTrained: saver
      ? ({ head, fold, model, classes }) =>
        saver.mil(
          opts.folds !== undefined ? fold : null,
          head,
          model.arena,
          model.shape,
          classes,
          { epochs: model.history.length, best_epoch: model.bestEpoch + 1 },
        )
      : undefined,
    onEpoch: (e) => {
      // A line every 10 s at most: runs of 150 epochs take minutes.
      if (performance.now() - lastLine < 10_000) return;
      lastLine = performance.now();
      log(
        `  epoch ${e.epoch + 1}/${opts.mil.epochs}: train loss ${e.trainLoss.toFixed(4)}` +
          (Number.isNaN(e.valLoss) ? "" : `, validation loss ${e.valLoss.toFixed(4)}`),
      );
    },
  };
  const data = (e: EmbeddingsFile, idx: number[] | null, what: string): MilData => {
    const s = subset(e, idx, what);
    return {
      features: s.m.data as Float32Array,
      dim: e.dim,
      labels: s.labels!,
      patients: s.patients!,
      what,
    };
  };
  let out;
  if (test) {
    out = await evaluateMil(
      gpu,
      data(train.emb, null, opts.train),
      data(test.emb, null, opts.test!),
      milOpts,
    );
  } else if (opts.folds !== undefined) {
    out = await crossValidateMil(gpu, data(train.emb, null, opts.train), {
      ...milOpts,
      folds: opts.folds,
    });
  } else {
    const s = splits![0];
    out = await evaluateMil(
      gpu,
      data(train.emb, s.train, `${opts.train} (train split)`),
      data(train.emb, s.test, `${opts.train} (test split)`),
      milOpts,
    );
  }
  for (const r of out.results) {
    const runs = r.runs.map((x) => `${x.epochs} epochs (best ${x.bestEpoch + 1})`).join(", ");
    notes.push(`${r.protocol}: ${runs}`);
  }
  return out.rows;
}

/** The Markdown written to `--markdown`: the paper-style table, then per-class tables. */
export function markdownReport(report: EvalReport): string {
  const parts = [markdownTable(report)];
  for (const r of report.rows) {
    if (r.runs.length !== 1) continue;
    parts.push(`\n**${r.method}, ${r.protocol}: per class**\n\n${perClassTable(r.runs[0])}`);
  }
  return parts.join("");
}

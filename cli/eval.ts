/**
 * `deno task eval --train FILE [--test FILE] [--protocol knn,linear,mil]
 * [--folds K] [--out metrics.json] [--markdown FILE] [--method NAME]
 * [--threads N] [--seed 42] [--device cpu|gpu|auto]`: the paper's
 * protocols (RECIPE §3) on embeddings files written by `embed`.
 *
 * Splits: `--test` evaluates train → test; `--folds K` cross-validates the
 * one file (stratified k-fold, shuffled with `--seed`); neither gives the
 * 80/20 stratified split with seed 42. Whenever the file carries patients,
 * splits and folds keep each patient on one side (patient-level data), for
 * every protocol.
 *
 * Protocols: `knn` (1-NN and 20-NN), `linear` (the probe), `mil` (both MIL
 * heads, patient-level; needs patients and a GPU). Default: knn,linear, plus
 * mil when the files carry patients. Output: the metrics JSON (`--out`,
 * per-class precision/recall/F1 and confusion matrices included), a Markdown
 * table like the paper's on stdout (and in `--markdown`, with per-class
 * tables), progress on stderr. Exit codes: 0 done, 1 bad input file or a
 * failed run, 2 a bad flag.
 *
 * Devices: MIL always trains on the GPU. kNN and the probe run on the CPU
 * (float64, `--threads` workers) unless `--device gpu`, or `--device auto`
 * with a problem above ~2e9 kNN multiply-adds or ~2e7 probe N·M·c on a
 * hardware adapter (a software adapter such as llvmpipe runs on the same
 * CPU cores as the CPU path, in f32, so auto never picks it).
 */
import { basename, extname } from "node:path";
import { numberFlag, type Parsed, parseFlags, runMain, usage, UsageError } from "./args.ts";
import {
  type Embeddings,
  EmbeddingsFileError,
  readEmbeddings,
  requireLabels,
  requirePatients,
} from "../data/embeddings_file.ts";
import { gpuNeighborSearch } from "../eval/gpu_knn.ts";
import { GpuLinearProbe } from "../eval/gpu_probe.ts";
import { KNeighborsClassifier } from "../eval/knn.ts";
import { uniqueSorted } from "../eval/labels.ts";
import { type Matrix, matrix } from "../eval/matrix.ts";
import { type ClassificationMetrics, classificationMetrics } from "../eval/metrics.ts";
import { crossValidateMil, evaluateMil, type MilData, type MilEvalOptions } from "../eval/mil.ts";
import { evaluateEmbeddings } from "../eval/protocols.ts";
import {
  type EvalReport,
  markdownTable,
  perClassTable,
  reportJson,
  type ReportRow,
  reportRow,
} from "../eval/report.ts";
import { EvalThreads } from "../eval/threads.ts";
import { getGpu, type Gpu } from "../kernels/runtime.ts";
import { type Split, stratifiedKFold, trainTestSplit } from "../eval/split.ts";

const SUMMARY = "Evaluate embeddings with the paper's protocols: kNN, linear probe, MIL.";

/** The protocols `--protocol` accepts. */
export const PROTOCOLS = ["knn", "linear", "mil"] as const;
/** One protocol name. */
export type ProtocolName = typeof PROTOCOLS[number];

/** The flags of `deno task eval`. */
export const FLAGS = {
  train: { type: "string", help: "training embeddings (safetensors, npy + sidecar, or csv)" },
  test: { type: "string", help: "test embeddings; without it: --folds, or the 80/20 split" },
  protocol: {
    type: "string",
    help: "comma-separated: knn,linear,mil (default knn,linear; +mil with patients)",
  },
  folds: { type: "string", help: "cross-validate --train with K stratified folds" },
  out: { type: "string", help: "write the metrics JSON here" },
  markdown: { type: "string", help: "write the Markdown tables here" },
  method: { type: "string", help: "row name in the tables (default: from the file's weights)" },
  title: { type: "string", help: "table title (default: the file names)" },
  threads: { type: "string", help: "CPU worker threads for kNN and the probe (default: cores)" },
  seed: { type: "string", default: "42", help: "seed of the split, folds and MIL training" },
  device: { type: "string", default: "auto", help: "cpu|gpu|auto: where kNN and the probe run" },
  "mil-epochs": { type: "string", default: "150", help: "MIL epochs (cosine schedule length)" },
  "mil-lr": { type: "string", default: "0.001", help: "MIL base learning rate" },
  "mil-patience": { type: "string", default: "20", help: "MIL early-stopping patience, epochs" },
  "mil-val": { type: "string", default: "0.2", help: "MIL validation fraction (0: no stopping)" },
  quiet: { type: "boolean", help: "no progress on stderr" },
} as const;

/** Above these sizes `--device auto` runs kNN / the probe on a hardware GPU. */
const GPU_KNN_WORK = 2e9; // queries × train × dim multiply-adds
const GPU_PROBE_WORK = 2e7; // N × M × c per objective evaluation

/** Parsed and checked command-line options. */
export interface EvalCliOptions {
  train: string;
  test?: string;
  protocols: ProtocolName[] | null;
  folds?: number;
  out?: string;
  markdown?: string;
  method?: string;
  title?: string;
  threads: number;
  seed: number;
  device: "cpu" | "gpu" | "auto";
  mil: { epochs: number; lr: number; patience: number; valFraction: number };
  quiet: boolean;
}

/** Turns parsed flags into options; every bad value names its flag. */
export function optionsFromFlags(parsed: Parsed): EvalCliOptions {
  const v = parsed.values;
  const str = (name: string) => (typeof v[name] === "string" ? (v[name] as string) : undefined);
  if (parsed.positionals.length > 0) {
    throw new UsageError(
      `unexpected argument '${parsed.positionals[0]}'; pass files with --train and --test`,
    );
  }
  const train = str("train");
  if (!train) throw new UsageError("--train is required: an embeddings file written by embed");
  let protocols: ProtocolName[] | null = null;
  const rawProtocols = str("protocol");
  if (rawProtocols !== undefined) {
    const names = rawProtocols.split(",").map((s) => s.trim()).filter(Boolean);
    const bad = names.find((n) => !(PROTOCOLS as readonly string[]).includes(n));
    if (bad !== undefined || names.length === 0) {
      throw new UsageError(
        `--protocol: unknown protocol '${bad ?? rawProtocols}'; use a comma-separated list of ` +
          `${PROTOCOLS.join(", ")}`,
      );
    }
    protocols = [...new Set(names)] as ProtocolName[];
  }
  const folds = numberFlag(v, "folds", { integer: true, min: 2 });
  const test = str("test");
  if (folds !== undefined && test !== undefined) {
    throw new UsageError(
      "--folds cross-validates the --train file alone; drop --test, or drop --folds to " +
        "evaluate train → test",
    );
  }
  const device = str("device") ?? "auto";
  if (device !== "cpu" && device !== "gpu" && device !== "auto") {
    throw new UsageError(`--device must be cpu, gpu or auto, got '${device}'`);
  }
  const valFraction = numberFlag(v, "mil-val", { min: 0, max: 0.9 }) ?? 0.2;
  return {
    train,
    test,
    protocols,
    folds,
    out: str("out"),
    markdown: str("markdown"),
    method: str("method"),
    title: str("title"),
    threads: numberFlag(v, "threads", { integer: true, min: 1, max: 1024 }) ??
      (navigator.hardwareConcurrency || 1),
    seed: numberFlag(v, "seed", { integer: true, min: 0, max: 0xffffffff }) ?? 42,
    device,
    mil: {
      epochs: numberFlag(v, "mil-epochs", { integer: true, min: 1 }) ?? 150,
      lr: numberFlag(v, "mil-lr", { min: 1e-12, max: 10 }) ?? 1e-3,
      patience: numberFlag(v, "mil-patience", { integer: true, min: 1 }) ?? 20,
      valFraction,
    },
    quiet: v.quiet === true,
  };
}

/** One file's data after the checks `eval` needs. */
interface Loaded {
  emb: Embeddings;
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
function subset(emb: Embeddings, idx: readonly number[] | null, what: string) {
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
function methodName(emb: Embeddings): string {
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
  opts: EvalCliOptions,
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

/** kNN and/or the probe on one train/test pair: protocol name → metrics. */
async function imageProtocols(
  train: { m: Matrix; labels: string[] },
  test: { m: Matrix; labels: string[] },
  need: { knn: boolean; probe: boolean },
  dev: Devices,
  threads: EvalThreads | undefined,
  log: (s: string) => void,
  probeNotes: string[],
): Promise<{ protocol: string; metrics: ClassificationMetrics }[]> {
  const out: { protocol: string; metrics: ClassificationMetrics }[] = [];
  const ks = [1, 20];
  if (need.knn) {
    if (dev.knn) {
      log(`kNN (k = 1, 20) on the GPU: ${train.m.rows} training, ${test.m.rows} test rows`);
      const knn = new KNeighborsClassifier(train.m, train.labels, {
        search: gpuNeighborSearch(dev.knn),
      });
      const preds = await knn.predictMany(test.m, ks);
      ks.forEach((k, i) => {
        out.push({ protocol: `${k}-NN`, metrics: classificationMetrics(test.labels, preds[i]) });
      });
    } else {
      const r = await evaluateEmbeddings(train.m, train.labels, test.m, test.labels, {
        method: "",
        ks,
        probe: false,
        threads,
        onStage: (s) => log(`${s} on the CPU: ${train.m.rows} training, ${test.m.rows} test rows`),
      });
      out.push(...r.results.map((x) => ({ protocol: x.protocol, metrics: x.metrics })));
    }
  }
  if (need.probe) {
    if (dev.probe) {
      log(`linear probe on the GPU: ${train.m.rows} rows × ${train.m.cols} features`);
      const lr = await GpuLinearProbe.fit(dev.probe, train.m, train.labels);
      probeNotes.push(`${lr.iterations} iterations (${lr.reason})`);
      out.push({
        protocol: "linear probe",
        metrics: classificationMetrics(test.labels, lr.predict(test.m)),
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
      out.push({ protocol: p.protocol, metrics: p.metrics });
    }
  }
  return out;
}

/** Runs everything the options ask for and returns the report. */
export async function runEval(opts: EvalCliOptions): Promise<EvalReport> {
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

  // Splits of the one file (none with --test).
  let splits: Split[] | null = null;
  let splitNote: string;
  if (test) splitNote = "train → test";
  else {
    try {
      splits = opts.folds !== undefined
        ? stratifiedKFold(train.emb.labels!, {
          folds: opts.folds,
          shuffle: true,
          seed: opts.seed,
          groups,
        })
        : [trainTestSplit(train.emb.labels!, { trainSize: 0.8, seed: opts.seed, groups })];
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
    splitNote = opts.folds !== undefined
      ? `${opts.folds}-fold stratified cross-validation (seed ${opts.seed})`
      : `80/20 stratified split (seed ${opts.seed})`;
    if (groups) splitNote += ", by patient";
  }

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
      }
      for (const [protocol, runs] of perProtocol) rows.push(reportRow(method, protocol, runs));
    }
    if (mil) {
      rows.push(...await runMil(opts, train, test, splits, method, await gpuFor(), log, milNotes));
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
  return { title, rows, meta };
}

async function runMil(
  opts: EvalCliOptions,
  train: Loaded,
  test: Loaded | null,
  splits: Split[] | null,
  method: string,
  gpu: Gpu,
  log: (s: string) => void,
  notes: string[],
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
  const data = (e: Embeddings, idx: number[] | null, what: string): MilData => {
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
      data(train.emb, s.train, `${opts.train} (80% split)`),
      data(train.emb, s.test, `${opts.train} (20% split)`),
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

if (import.meta.main) {
  runMain(async () => {
    const parsed = parseFlags("eval", SUMMARY, FLAGS, Deno.args);
    if (parsed === "help") {
      console.log(usage("eval", SUMMARY, FLAGS));
      return 0;
    }
    const opts = optionsFromFlags(parsed);
    const report = await runEval(opts);
    if (opts.out) await Deno.writeTextFile(opts.out, reportJson(report));
    if (opts.markdown) await Deno.writeTextFile(opts.markdown, markdownReport(report));
    console.log(markdownTable(report));
    return 0;
  });
}

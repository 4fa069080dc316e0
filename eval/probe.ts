/**
 * A saved linear probe: the multinomial logistic regression `eval` fits
 * (eval/logreg.ts), with its class names, C, optional feature
 * standardisation and the embedding model it was trained on, written as a
 * head file (eval/head_file.ts) and read back bit for bit.
 *
 * File contents (kind `probe`): tensors `coef` F64 [c, M] and `intercept`
 * F64 [c] (float64, so a loaded probe predicts exactly what the fitted one
 * did); with standardisation, `scaler.mean` and `scaler.scale` F64 [M]
 * (features are mapped to (x − mean) / scale first, scikit-learn's
 * `StandardScaler`). Metadata: `C`, `standardize` (`none` | `z-score`),
 * `solver` (JSON: iterations, converged, stop reason) and `ood.min_confidence`
 * (the top-class probability below which `predict` flags a cell).
 */
import {
  type EmbeddingModel,
  type HeadCommon,
  HeadFileError,
  metaNumber,
  openHeadFile,
  readF64,
  writeHeadFile,
} from "./head_file.ts";
import type { FileSource } from "../data/file.ts";
import type { Label } from "./labels.ts";
import { LogisticRegression, type LogRegOptions } from "./logreg.ts";
import type { Matrix } from "./matrix.ts";
import type { EvalThreads } from "./threads.ts";

/** Default confidence floor: a cell whose most probable class has p below this is flagged. */
export const DEFAULT_MIN_CONFIDENCE = 0.5;

/** Feature standardisation (scikit-learn's StandardScaler: population std, 0 → 1). */
export interface Scaler {
  mean: Float64Array;
  scale: Float64Array;
}

/** Fits a StandardScaler on the rows of `x`: mean and population std per column (0 std → 1). */
export function fitScaler(x: Matrix): Scaler {
  const m = x.cols;
  const mean = new Float64Array(m);
  const scale = new Float64Array(m);
  for (let i = 0; i < x.rows; i++) {
    for (let j = 0; j < m; j++) mean[j] += x.data[i * m + j];
  }
  for (let j = 0; j < m; j++) mean[j] /= Math.max(x.rows, 1);
  for (let i = 0; i < x.rows; i++) {
    for (let j = 0; j < m; j++) {
      const d = x.data[i * m + j] - mean[j];
      scale[j] += d * d;
    }
  }
  for (let j = 0; j < m; j++) {
    const s = Math.sqrt(scale[j] / Math.max(x.rows, 1));
    scale[j] = s === 0 ? 1 : s;
  }
  return { mean, scale };
}

/** `(x − mean) / scale` row by row, as float64. */
export function applyScaler(s: Scaler, x: Matrix): Matrix {
  const m = x.cols;
  const out = new Float64Array(x.rows * m);
  for (let i = 0; i < x.rows; i++) {
    for (let j = 0; j < m; j++) out[i * m + j] = (x.data[i * m + j] - s.mean[j]) / s.scale[j];
  }
  return { data: out, rows: x.rows, cols: m };
}

/** What `Probe.predict` returns. */
export interface ProbePrediction {
  /** The probe's classes (column order of `proba`). */
  classes: Label[];
  /** Predicted class per row (`LogisticRegression.predict`). */
  labels: Label[];
  /** Index into `classes` of each prediction. */
  codes: Int32Array;
  /** [rows, classes] probabilities (`predict_proba`). */
  proba: Float64Array;
  /** The predicted class's probability per row. */
  confidence: Float64Array;
}

/** Options of `Probe.fit`. */
export interface ProbeFitOptions extends LogRegOptions {
  /** Standardise features (z-score) before fitting. Default false (the paper's probe). */
  standardize?: boolean;
  /** Fit with the objective spread over these workers. */
  threads?: EvalThreads;
  /** Provenance recorded in the file. */
  trainedOn?: Record<string, unknown>;
  /** `ood.min_confidence`. Default DEFAULT_MIN_CONFIDENCE. */
  minConfidence?: number;
}

/** A trained linear probe with what `predict` needs to apply it to new cells. */
export class Probe {
  readonly model: LogisticRegression;
  readonly scaler: Scaler | null;
  readonly embedding: EmbeddingModel;
  readonly trainedOn: Record<string, unknown>;
  /** Cells whose top probability is below this are flagged out of distribution. */
  readonly minConfidence: number;

  private constructor(
    model: LogisticRegression,
    scaler: Scaler | null,
    embedding: EmbeddingModel,
    trainedOn: Record<string, unknown>,
    minConfidence: number,
  ) {
    if (embedding.dim !== model.nFeatures) {
      throw new RangeError(
        `Probe: the model has ${model.nFeatures} features but the embedding model is ` +
          `${embedding.dim}-d`,
      );
    }
    if (!(minConfidence >= 0 && minConfidence <= 1)) {
      throw new RangeError(`Probe: minConfidence ${minConfidence} must be in [0, 1]`);
    }
    this.model = model;
    this.scaler = scaler;
    this.embedding = embedding;
    this.trainedOn = trainedOn;
    this.minConfidence = minConfidence;
  }

  /** Class names, in probability-column order. */
  get classes(): Label[] {
    return this.model.classes;
  }

  /** The probe's C. */
  get C(): number {
    return this.model.C;
  }

  /** Wraps a fitted model (e.g. the one `eval` trained). */
  static fromModel(
    model: LogisticRegression,
    embedding: EmbeddingModel,
    opts: { scaler?: Scaler | null; trainedOn?: Record<string, unknown>; minConfidence?: number } =
      {},
  ): Probe {
    return new Probe(
      model,
      opts.scaler ?? null,
      embedding,
      opts.trainedOn ?? {},
      opts.minConfidence ?? DEFAULT_MIN_CONFIDENCE,
    );
  }

  /** Fits a probe on `train` (one label per row), optionally standardised. */
  static async fit(
    train: Matrix,
    labels: readonly Label[],
    embedding: EmbeddingModel,
    opts: ProbeFitOptions = {},
  ): Promise<Probe> {
    const scaler = opts.standardize ? fitScaler(train) : null;
    const x = scaler ? applyScaler(scaler, train) : train;
    const model = opts.threads
      ? await LogisticRegression.fitThreaded(x, labels, opts.threads, opts)
      : LogisticRegression.fit(x, labels, opts);
    return Probe.fromModel(model, embedding, {
      scaler,
      trainedOn: opts.trainedOn,
      minConfidence: opts.minConfidence,
    });
  }

  /** Class probabilities [rows, classes] (`predict_proba`). */
  predictProba(x: Matrix): Float64Array {
    return this.model.predictProba(this.#input(x));
  }

  /** Predicted classes, probabilities and confidences for the rows of `x`. */
  predict(x: Matrix): ProbePrediction {
    const input = this.#input(x);
    const classes = this.classes;
    const c = classes.length;
    // Labels from the logits (LogisticRegression.predict), so they equal the fitted model's
    // exactly even where two probabilities round to the same value.
    const labels = this.model.predict(input);
    const proba = this.model.predictProba(input);
    const index = new Map(classes.map((k, i) => [k, i]));
    const codes = Int32Array.from(labels, (l) => index.get(l)!);
    const confidence = Float64Array.from(codes, (k, i) => proba[i * c + k]);
    return { classes, labels, codes, proba, confidence };
  }

  #input(x: Matrix): Matrix {
    if (x.cols !== this.model.nFeatures) {
      throw new RangeError(
        `Probe: the features have ${x.cols} columns but the probe was trained on ` +
          `${this.model.nFeatures}-d embeddings`,
      );
    }
    return this.scaler ? applyScaler(this.scaler, x) : x;
  }

  /** Writes the probe as a head file (atomically). */
  async save(path: string): Promise<void> {
    const m = this.model;
    const c = m.classes.length;
    const M = m.nFeatures;
    const tensors: Record<string, { dtype: "f64"; shape: number[]; data: Float64Array }> = {
      coef: { dtype: "f64", shape: [c, M], data: m.coef },
      intercept: { dtype: "f64", shape: [c], data: m.intercept },
    };
    if (this.scaler) {
      tensors["scaler.mean"] = { dtype: "f64", shape: [M], data: this.scaler.mean };
      tensors["scaler.scale"] = { dtype: "f64", shape: [M], data: this.scaler.scale };
    }
    const common: HeadCommon = {
      embedding: this.embedding,
      classes: m.classes,
      trainedOn: this.trainedOn,
    };
    await writeHeadFile(path, "probe", common, tensors, {
      C: String(m.C),
      standardize: this.scaler ? "z-score" : "none",
      solver: JSON.stringify({
        iterations: m.iterations,
        evaluations: m.evaluations,
        converged: m.converged,
        reason: m.reason,
        loss: m.loss,
        grad_max: m.gradMax,
      }),
      "ood.min_confidence": String(this.minConfidence),
    });
  }

  /** Reads a probe head file; a wrong kind or a damaged file is a HeadFileError naming it. */
  static async load(source: FileSource): Promise<Probe> {
    const path = typeof source === "string" ? source : source.name;
    const h = await openHeadFile(source, "probe");
    try {
      const M = h.embedding.dim;
      const c = h.classes.length;
      if (c < 2) throw new HeadFileError(path, "classes", `${c} class; a probe needs ≥ 2`);
      const coef = await readF64(h, "coef", [c, M]);
      const intercept = await readF64(h, "intercept", [c]);
      const std = h.meta.standardize ?? "none";
      if (std !== "none" && std !== "z-score") {
        throw new HeadFileError(path, "standardize", `'${std}' is not none|z-score`);
      }
      const scaler = std === "z-score"
        ? {
          mean: await readF64(h, "scaler.mean", [M]),
          scale: await readF64(h, "scaler.scale", [M]),
        }
        : null;
      const C = metaNumber(path, h.meta, "C", (v) => v > 0 && Number.isFinite(v));
      const minConfidence = metaNumber(
        path,
        h.meta,
        "ood.min_confidence",
        (v) => v >= 0 && v <= 1,
      );
      let solver: Record<string, unknown> = {};
      try {
        solver = JSON.parse(h.meta.solver ?? "{}");
      } catch {
        throw new HeadFileError(path, "solver", "is not JSON");
      }
      for (const [name, v] of [["coef", coef], ["intercept", intercept]] as const) {
        const bad = v.findIndex((x) => !Number.isFinite(x));
        if (bad >= 0) {
          throw new HeadFileError(path, name, `value ${bad} is ${v[bad]}`, "the file is damaged");
        }
      }
      const model = LogisticRegression.fromState({
        classes: h.classes,
        nFeatures: M,
        coef,
        intercept,
        C,
        iterations: Number(solver.iterations ?? 0),
        evaluations: Number(solver.evaluations ?? 0),
        converged: Boolean(solver.converged),
        reason: (solver.reason ?? "gtol") as LogisticRegression["reason"],
        loss: Number(solver.loss ?? NaN),
        gradMax: Number(solver.grad_max ?? NaN),
      });
      return new Probe(model, scaler, h.embedding, h.trainedOn ?? {}, minConfidence);
    } finally {
      h.file.close();
    }
  }
}

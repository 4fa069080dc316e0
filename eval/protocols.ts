/**
 * The paper's image-level protocols on precomputed embeddings (docs/evaluation.md):
 * k-NN for k ∈ {1, 20} and the linear probe, each scored with accuracy,
 * balanced accuracy and weighted F1, as report rows ready for
 * `markdownTable` / `reportJson`. The CLI builds on this; it does no I/O.
 */
import { KNeighborsClassifier } from "./knn.ts";
import type { Label } from "./labels.ts";
import { LogisticRegression, type LogRegOptions } from "./logreg.ts";
import type { Matrix } from "./matrix.ts";
import { type ClassificationMetrics, classificationMetrics } from "./metrics.ts";
import { type ReportRow, reportRow } from "./report.ts";
import { type EvalThreads, threadedNeighborSearch } from "./threads.ts";

/** Options of `evaluateEmbeddings`. */
export interface ProtocolOptions {
  /** Row name, e.g. "DinoBloom-S". */
  method: string;
  /** Neighbour counts. Default [1, 20]. */
  ks?: number[];
  /** Run the linear probe. Default true. */
  probe?: boolean;
  /** Probe solver options (C defaults to M·c/100). */
  probeOptions?: LogRegOptions;
  /** Worker threads for the kNN scan and the probe; single-threaded without. */
  threads?: EvalThreads;
  /** Called as each protocol starts, for progress output. */
  onStage?: (stage: string) => void;
}

/** One protocol's predictions and metrics. */
export interface ProtocolResult {
  protocol: string;
  predictions: Label[];
  metrics: ClassificationMetrics;
  /** Probe only: solver iterations and whether it converged. */
  iterations?: number;
  converged?: boolean;
  /** Probe only: the fitted model (`eval --save` keeps it). */
  model?: LogisticRegression;
}

/**
 * Fits on (train, trainLabels), predicts test, scores against testLabels.
 * Returns the per-protocol results and the matching report rows.
 */
export async function evaluateEmbeddings(
  train: Matrix,
  trainLabels: readonly Label[],
  test: Matrix,
  testLabels: readonly Label[],
  opts: ProtocolOptions,
): Promise<{ results: ProtocolResult[]; rows: ReportRow[] }> {
  if (testLabels.length !== test.rows) {
    throw new RangeError(
      `evaluateEmbeddings: ${testLabels.length} labels for ${test.rows} test rows`,
    );
  }
  const ks = opts.ks ?? [1, 20];
  const results: ProtocolResult[] = [];
  if (ks.length > 0) {
    opts.onStage?.(`kNN (k = ${ks.join(", ")})`);
    const knn = new KNeighborsClassifier(train, trainLabels, {
      search: opts.threads ? threadedNeighborSearch(opts.threads) : undefined,
    });
    const preds = await knn.predictMany(test, ks);
    ks.forEach((k, i) => {
      results.push({
        protocol: `${k}-NN`,
        predictions: preds[i],
        metrics: classificationMetrics(testLabels, preds[i]),
      });
    });
  }
  if (opts.probe ?? true) {
    opts.onStage?.("linear probe");
    const lr = opts.threads
      ? await LogisticRegression.fitThreaded(train, trainLabels, opts.threads, opts.probeOptions)
      : LogisticRegression.fit(train, trainLabels, opts.probeOptions);
    const pred = lr.predict(test);
    results.push({
      protocol: "linear probe",
      predictions: pred,
      metrics: classificationMetrics(testLabels, pred),
      iterations: lr.iterations,
      converged: lr.converged,
      model: lr,
    });
  }
  return {
    results,
    rows: results.map((r) => reportRow(opts.method, r.protocol, r.metrics)),
  };
}

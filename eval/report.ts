/**
 * Evaluation reports: one row per (method, protocol) with accuracy, balanced
 * accuracy and weighted F1, as a JSON document and as a Markdown table laid
 * out like the paper's Tables 2–3 (percent, one decimal; "mean ± std" when a
 * row summarises folds). Every report names the split its numbers come
 * from (origin and membership hash, eval/split_record.ts), and per-class
 * tables list every class of the data, those absent from a test set too.
 */
import type { ClassificationMetrics, MeanStd } from "./metrics.ts";
import { meanStd } from "./metrics.ts";
import { type Label, uniqueSorted } from "./labels.ts";
import { describeSplit, type SplitRecord } from "./split_record.ts";

/** The three headline numbers of a row: a single run, or mean ± std over folds. */
export interface RowScores {
  accuracy: MeanStd;
  balancedAccuracy: MeanStd;
  weightedF1: MeanStd;
}

/** One table row. */
export interface ReportRow extends RowScores {
  /** Feature extractor or model, e.g. "DinoBloom-S". */
  method: string;
  /** Evaluation protocol, e.g. "1-NN", "20-NN", "linear probe", "ABMIL". */
  protocol: string;
  /** Per-run metrics behind the row (one entry, or one per fold). */
  runs: RunDetail[];
}

/** What is kept of one run in the JSON report. */
export interface RunDetail {
  n: number;
  accuracy: number;
  balancedAccuracy: number;
  weightedF1: number;
  macroF1: number;
  labels: Label[];
  precision: number[];
  recall: number[];
  f1: number[];
  support: number[];
  /** Rows true, columns predicted, in `labels` order. */
  confusion: number[][];
}

/** A whole report. */
export interface EvalReport {
  /** Dataset or task name, e.g. "Acevedo" or "BMC". */
  title: string;
  rows: ReportRow[];
  /** Free-form provenance: checkpoint, split seed, feature dimension… */
  meta?: Record<string, string | number | boolean>;
  /** The split the rows were measured on: where it came from and its membership hash. */
  split?: SplitRecord;
}

/**
 * The per-class part of a run, over `classes` when given: a class that is in
 * neither the test labels nor the predictions (absent from the test split)
 * gets a row with support 0 (precision, recall and F1 0, scikit-learn's
 * `zero_division=0`) and an empty confusion row and column, instead of
 * vanishing. The run's summary scores stay those of the classes present.
 */
function detail(m: ClassificationMetrics, classes?: readonly Label[]): RunDetail {
  const have = m.perClass.labels;
  const all = classes ? uniqueSorted([...have, ...classes]) : have;
  if (all.length === have.length) return plainDetail(m);
  const at = all.map((l) => have.indexOf(l));
  const pick = (v: number[]) => at.map((i) => (i < 0 ? 0 : v[i]));
  return {
    ...plainDetail(m),
    labels: all,
    precision: pick(m.perClass.precision),
    recall: pick(m.perClass.recall),
    f1: pick(m.perClass.f1),
    support: pick(m.perClass.support),
    confusion: at.map((i) => (i < 0 ? at.map(() => 0) : pick(m.confusion.matrix[i]))),
  };
}

function plainDetail(m: ClassificationMetrics): RunDetail {
  return {
    n: m.n,
    accuracy: m.accuracy,
    balancedAccuracy: m.balancedAccuracy,
    weightedF1: m.weightedF1,
    macroF1: m.macroF1,
    labels: m.perClass.labels,
    precision: m.perClass.precision,
    recall: m.perClass.recall,
    f1: m.perClass.f1,
    support: m.perClass.support,
    confusion: m.confusion.matrix,
  };
}

/**
 * A table row from one run or from several folds (mean ± std over folds,
 * `ddof` as in `meanStd`: population std by default). `classes`: every class
 * of the data, so the per-class details keep those a test set lacks.
 */
export function reportRow(
  method: string,
  protocol: string,
  runs: ClassificationMetrics | readonly ClassificationMetrics[],
  ddof: 0 | 1 = 0,
  classes?: readonly Label[],
): ReportRow {
  const list = Array.isArray(runs) ? runs : [runs as ClassificationMetrics];
  if (list.length === 0) throw new RangeError(`reportRow ${method}/${protocol}: no runs`);
  const stat = (f: (m: ClassificationMetrics) => number): MeanStd =>
    list.length === 1 ? { mean: f(list[0]), std: 0, n: 1 } : meanStd(list.map(f), ddof);
  return {
    method,
    protocol,
    accuracy: stat((m) => m.accuracy),
    balancedAccuracy: stat((m) => m.balancedAccuracy),
    weightedF1: stat((m) => m.weightedF1),
    runs: list.map((m) => detail(m, classes)),
  };
}

/** The report as pretty JSON (stable key order: as built). */
export function reportJson(report: EvalReport): string {
  return JSON.stringify(report, null, 2) + "\n";
}

/** A score in percent with `digits` decimals, plus "± std" for multi-fold rows. */
export function formatScore(s: MeanStd, digits = 1): string {
  const v = (100 * s.mean).toFixed(digits);
  return s.n > 1 ? `${v} ± ${(100 * s.std).toFixed(digits)}` : v;
}

/**
 * Markdown table: rows method/protocol, columns Acc, Bal. acc, weighted F1
 * (percent). Pipes in names are escaped so the table stays intact.
 */
export function markdownTable(report: EvalReport, digits = 1): string {
  const esc = (s: string) => s.replace(/\|/g, "\\|");
  const lines = [
    `**${esc(report.title)}**`,
    "",
    "| Method | Protocol | Acc | Bal. acc | Weighted F1 |",
    "|---|---|---:|---:|---:|",
  ];
  for (const r of report.rows) {
    lines.push(
      `| ${esc(r.method)} | ${esc(r.protocol)} | ${formatScore(r.accuracy, digits)} | ` +
        `${formatScore(r.balancedAccuracy, digits)} | ${formatScore(r.weightedF1, digits)} |`,
    );
  }
  if (report.split) lines.push("", `Split: ${describeSplit(report.split)}`);
  return lines.join("\n") + "\n";
}

/**
 * Per-class Markdown table of one run (scikit-learn's classification_report
 * layout: precision, recall, F1 in percent, and support). A class with no
 * test cell (support 0) shows "–" for recall and F1: there is nothing to
 * recall; its precision is that of its predictions, "–" when never predicted.
 */
export function perClassTable(run: RunDetail, digits = 1): string {
  const pct = (v: number) => (100 * v).toFixed(digits);
  const lines = ["| Class | Precision | Recall | F1 | Support |", "|---|---:|---:|---:|---:|"];
  run.labels.forEach((l, k) => {
    const absent = run.support[k] === 0;
    const predicted = run.confusion.some((row) => row[k] > 0);
    const p = absent && !predicted ? "–" : pct(run.precision[k]);
    const [r, f] = absent ? ["–", "–"] : [pct(run.recall[k]), pct(run.f1[k])];
    lines.push(
      `| ${String(l).replace(/\|/g, "\\|")} | ${p} | ${r} | ${f} | ${run.support[k]} |`,
    );
  });
  return lines.join("\n") + "\n";
}

/**
 * Classification metrics with scikit-learn 1.2's definitions: accuracy,
 * balanced accuracy, per-class precision/recall/F1/support, their weighted
 * and macro averages, and the confusion matrix.
 *
 * The label set is `unique_labels(y_true, y_pred)`: the sorted union, so a
 * class that is only predicted, or never predicted, still has a row.
 * Zero division (a class never predicted: precision 0/0; never true: recall
 * 0/0) gives `zeroDivision`, default 0, which is what scikit-learn's default
 * `zero_division="warn"` returns (we do not warn). F1 is 0 when precision +
 * recall is 0. Balanced accuracy averages recall over the classes present in
 * y_true only, as scikit-learn does.
 */
import { encodeLabels, type Label, uniqueSorted } from "./labels.ts";

/** Options of the per-class metrics. */
export interface MetricOptions {
  /** Value for 0/0 precision or recall: 0 (scikit-learn's "warn" and 0) or 1. */
  zeroDivision?: 0 | 1;
  /** Explicit label order (default: sorted union of y_true and y_pred). */
  labels?: readonly Label[];
}

/** A confusion matrix: rows are true classes, columns predicted, in `labels` order. */
export interface Confusion {
  labels: Label[];
  matrix: number[][];
}

function checkPair(yTrue: readonly Label[], yPred: readonly Label[], op: string): void {
  if (yTrue.length !== yPred.length) {
    throw new RangeError(
      `${op}: y_true has ${yTrue.length} labels but y_pred has ${yPred.length}; ` +
        `they must be paired`,
    );
  }
  if (yTrue.length === 0) throw new RangeError(`${op}: no samples`);
}

/** `confusion_matrix(y_true, y_pred, labels=…)`. */
export function confusionMatrix(
  yTrue: readonly Label[],
  yPred: readonly Label[],
  labels?: readonly Label[],
): Confusion {
  checkPair(yTrue, yPred, "confusionMatrix");
  const cls = labels ? [...labels] : uniqueSorted([...yTrue, ...yPred], "confusionMatrix: labels");
  const t = encodeLabels(yTrue, cls, "confusionMatrix: y_true").codes;
  const p = encodeLabels(yPred, cls, "confusionMatrix: y_pred").codes;
  const matrix = cls.map(() => new Array<number>(cls.length).fill(0));
  for (let i = 0; i < t.length; i++) matrix[t[i]][p[i]]++;
  return { labels: cls, matrix };
}

/** `accuracy_score`: the fraction of exact matches. */
export function accuracy(yTrue: readonly Label[], yPred: readonly Label[]): number {
  checkPair(yTrue, yPred, "accuracy");
  let hit = 0;
  for (let i = 0; i < yTrue.length; i++) if (yTrue[i] === yPred[i]) hit++;
  return hit / yTrue.length;
}

/**
 * `balanced_accuracy_score`: mean recall over the classes present in
 * y_true (classes only predicted have no recall and are left out).
 */
export function balancedAccuracy(yTrue: readonly Label[], yPred: readonly Label[]): number {
  const { matrix } = confusionMatrix(yTrue, yPred);
  let sum = 0;
  let n = 0;
  matrix.forEach((row, k) => {
    const total = row.reduce((a, b) => a + b, 0);
    if (total > 0) {
      sum += row[k] / total;
      n++;
    }
  });
  return sum / n;
}

/** Per-class precision, recall, F1 and support, in `labels` order. */
export interface PerClass {
  labels: Label[];
  precision: number[];
  recall: number[];
  f1: number[];
  /** Number of true samples of each class. */
  support: number[];
  /** Number of predictions of each class. */
  predicted: number[];
}

/** `precision_recall_fscore_support(average=None)` over the sorted union of labels. */
export function precisionRecallF1(
  yTrue: readonly Label[],
  yPred: readonly Label[],
  opts: MetricOptions = {},
): PerClass {
  const zd = opts.zeroDivision ?? 0;
  const { labels, matrix } = confusionMatrix(yTrue, yPred, opts.labels);
  const c = labels.length;
  const precision: number[] = [];
  const recall: number[] = [];
  const f1: number[] = [];
  const support: number[] = [];
  const predicted: number[] = [];
  for (let k = 0; k < c; k++) {
    const tp = matrix[k][k];
    let trueSum = 0;
    let predSum = 0;
    for (let j = 0; j < c; j++) {
      trueSum += matrix[k][j];
      predSum += matrix[j][k];
    }
    const p = predSum === 0 ? zd : tp / predSum;
    const r = trueSum === 0 ? zd : tp / trueSum;
    const denom = p + r;
    precision.push(p);
    recall.push(r);
    f1.push(denom === 0 ? 0 : (2 * p * r) / denom);
    support.push(trueSum);
    predicted.push(predSum);
  }
  return { labels, precision, recall, f1, support, predicted };
}

/** Support-weighted mean of a per-class score (`average="weighted"`). */
function weighted(values: number[], support: number[]): number {
  let num = 0;
  let den = 0;
  values.forEach((v, k) => {
    num += v * support[k];
    den += support[k];
  });
  return num / den;
}

/** `f1_score(average="weighted")`: per-class F1 weighted by true support. */
export function weightedF1(
  yTrue: readonly Label[],
  yPred: readonly Label[],
  opts: MetricOptions = {},
): number {
  const pc = precisionRecallF1(yTrue, yPred, opts);
  return weighted(pc.f1, pc.support);
}

/** Everything one evaluation reports. */
export interface ClassificationMetrics {
  n: number;
  accuracy: number;
  balancedAccuracy: number;
  weightedF1: number;
  macroF1: number;
  perClass: PerClass;
  confusion: Confusion;
}

/** All metrics of one prediction run, from one confusion matrix. */
export function classificationMetrics(
  yTrue: readonly Label[],
  yPred: readonly Label[],
  opts: MetricOptions = {},
): ClassificationMetrics {
  const perClass = precisionRecallF1(yTrue, yPred, opts);
  const confusion = confusionMatrix(yTrue, yPred, perClass.labels);
  return {
    n: yTrue.length,
    accuracy: accuracy(yTrue, yPred),
    balancedAccuracy: balancedAccuracy(yTrue, yPred),
    weightedF1: weighted(perClass.f1, perClass.support),
    macroF1: perClass.f1.reduce((a, b) => a + b, 0) / perClass.f1.length,
    perClass,
    confusion,
  };
}

/** Mean and standard deviation of a list of numbers. */
export interface MeanStd {
  mean: number;
  std: number;
  n: number;
}

/**
 * Mean ± std over folds. `ddof` 0 (default) is the population std, numpy's
 * `np.std` default: the paper does not say which it used, and nothing found
 * says otherwise. `ddof: 1` gives the sample std (pandas' default), larger by
 * sqrt(n / (n − 1)), about 12% for 5 folds.
 */
export function meanStd(values: readonly number[], ddof: 0 | 1 = 0): MeanStd {
  const n = values.length;
  if (n === 0) throw new RangeError("meanStd: no values");
  if (n - ddof <= 0) throw new RangeError(`meanStd: ${n} value(s) is too few for ddof=${ddof}`);
  let mean = 0;
  for (const v of values) mean += v;
  mean /= n;
  let ss = 0;
  for (const v of values) ss += (v - mean) ** 2;
  return { mean, std: Math.sqrt(ss / (n - ddof)), n };
}
